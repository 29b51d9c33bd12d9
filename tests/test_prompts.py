"""Program.prompts() / ``lmgraph show --prompts``: the prompts shown are the ones the model receives.

Each test renders a program's prompts without a model call, then runs the same program with the
same inputs on a recording fake model and compares request for request (a downstream node's
placeholder replaced by the upstream output the run produced).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

import lmgraph as lg
from lmgraph import cli
from lmgraph.errors import DefinitionError, InputError
from lmgraph.evaluation import label_accuracy
from lmgraph.lm.base import LMRequest, Message
from lmgraph.lm.values import format_value
from lmgraph.optimizers import LabeledFewShot
from lmgraph.pipeline.preview import Placeholder, PromptList, PromptPreview
from lmgraph.testing import FunctionLM

from helpers import sentiment_fn, sentiment_program, sentiment_rows

Q = "Who wrote Hamlet?"
LABEL = {"answer_type": "Answer type", "reasoning": "Reasoning", "answer": "Answer", "facts": "Facts",
         "sentiment": "Sentiment", "steps": "Steps", "result": "Result", "feedback": "Feedback",
         "verdict": "Verdict", "thought": "Thought", "tool": "Tool", "args": "Args", "label": "Label"}
REPLIES = {
    "classify": {"answer_type": "person"},
    "answer": {"reasoning": "He wrote plays.", "answer": "Shakespeare"},
    "extract": {"facts": {"author": "Shakespeare"}},
    "reply": {"answer": "Shakespeare"},
    "clf": {"sentiment": "positive"},
    "plan": {"steps": ["find the author", "name him"]},
    "solve": {"result": "done"},
    "combine": {"answer": "Shakespeare"},
}


def reply(req: LMRequest) -> str:
    """A well-formed answer for the node's outputs, in the request's format."""
    text = "\n".join(m.content for m in req.messages) if req.messages is not None else (req.prompt or "")
    if req.node == "judge" or "Verdict" in text:
        out = {"feedback": "fine", "verdict": True}
    elif req.node == "agent":
        out = ({"thought": "enough", "tool": "finish", "args": {}} if "Tool" in text
               else {"answer": "3"})
    else:
        out = REPLIES[req.node]
    if req.json_schema is not None:
        return json.dumps(out)
    lines = [f"{LABEL[k]}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in out.items()]
    if req.prompt is not None:  # completion: the prompt ends with the first label
        lines[0] = " " + lines[0].split(": ", 1)[1]
    return "\n".join(lines)


def fake(preferred: str | None = None) -> FunctionLM:
    lm = FunctionLM(reply)
    if preferred is not None:
        lm.preferred_format = preferred  # type: ignore[attr-defined]
    return lm


def run(prog: lg.Program, lm: FunctionLM, **inputs):  # noqa: ANN003, ANN201
    return prog.run_sync(lg.RunContext(lm=lm, cache=False), **inputs)


def first_call(lm: FunctionLM, node: str) -> LMRequest:
    return next(r for r in lm.calls if r.node == node)


def substitute(req: LMRequest, placeholder: str, value: object) -> LMRequest:
    """The request with a placeholder replaced by the value as a prompt shows it."""
    text = value if isinstance(value, str) else format_value(value)
    if req.prompt is not None:
        return req.replace(prompt=req.prompt.replace(placeholder, text))
    return req.replace(messages=tuple(Message(role=m.role, content=m.content.replace(placeholder, text))
                                      for m in req.messages or ()))


def qa_program(fmt: str = "auto") -> lg.Program:
    p = lg.Pipeline("qa")
    q = p.input("question")
    c = p.add(lg.Predict("question -> answer_type: Literal['person', 'place']", format=fmt),
              name="classify", question=q)
    a = p.add(lg.ChainOfThought("question, answer_type -> answer", format=fmt), name="answer",
              question=q, answer_type=c.answer_type)
    p.output(answer=a.answer, answer_type=c.answer_type)
    return p.build()


# ---------------------------------------------------------------- formats: completion, chat, json

@pytest.mark.parametrize(("preferred", "fmt", "expected"), [
    ("completion", "auto", "completion"),  # in-process llama.cpp prefers completion
    (None, "auto", "chat"),                # API models (no preference declared): chat
    ("completion", "json", "json"),
])
def test_prompts_equal_what_the_model_receives(preferred, fmt, expected) -> None:  # noqa: ANN001
    prog = qa_program(fmt)
    lm = fake(preferred)
    shown = prog.prompts(lm=lm, question=Q)
    assert lm.calls == []  # no model call
    assert isinstance(shown, PromptList) and [p.node for p in shown] == ["classify", "answer"]
    assert [p.format for p in shown] == [expected, expected]
    assert all(isinstance(p, PromptPreview) for p in shown)

    out = run(prog, lm, question=Q)
    assert out.answer == "Shakespeare"
    assert shown.node("classify").request == first_call(lm, "classify")
    answer = shown.node("answer")
    assert answer.placeholders == ("<classify.answer_type>",)
    assert answer.request != first_call(lm, "answer")
    assert substitute(answer.request, "<classify.answer_type>", out.answer_type) == first_call(lm, "answer")
    # the same format a run records in its trace
    assert [n.format for n in out.trace.nodes] == [expected, expected]


def test_auto_picks_json_for_structured_outputs_even_on_a_completion_model() -> None:
    p = lg.Pipeline("facts")
    q = p.input("question")
    e = p.add(lg.Predict("question -> facts: dict[str, str]"), name="extract", question=q)
    r = p.add(lg.Predict("question, facts: dict[str, str] -> answer"), name="reply", question=q, facts=e.facts)
    p.output(answer=r.answer)
    prog = p.build()
    lm = fake("completion")
    shown = prog.prompts(lm=lm, question=Q)
    assert [(x.node, x.format) for x in shown] == [("extract", "json"), ("reply", "completion")]
    assert shown.node("extract").messages is not None and shown.node("extract").settings["json_schema"]
    assert shown.node("reply").prompt is not None and "Facts: <extract.facts>" in shown.node("reply").prompt
    out = run(prog, lm, question=Q)
    assert shown.node("extract").request == first_call(lm, "extract")
    assert substitute(shown.node("reply").request, "<extract.facts>", {"author": "Shakespeare"}) \
        == first_call(lm, "reply")
    assert out.trace.node("extract").formats == ["json"] and out.trace.node("reply").formats == ["completion"]


@pytest.mark.parametrize("fmt", ["completion", "chat", "json"])
def test_prompts_before_and_after_labeled_fewshot(fmt) -> None:  # noqa: ANN001
    rows = sentiment_rows(40)
    prog = sentiment_program()
    compiled, rep = LabeledFewShot(2).optimize(prog, rows[:20], label_accuracy(), valset=rows[20:],
                                               ctx=lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False))
    assert rep.best.status == "accepted" and len(compiled.module("clf").demos) == 2
    before, after = (p.replace_modules({"clf": p.module("clf").replace(format=fmt)}) for p in (prog, compiled))
    for program, n_demos in ((before, 0), (after, 2)):
        lm = fake()
        shown = program.prompts(lm=lm, sentence="a good film")
        assert [p.format for p in shown] == [fmt]
        text = shown[0].prompt if shown[0].prompt is not None else "\n".join(m["content"] for m in shown[0].messages)
        assert text.count("Sentence:") == n_demos + 1  # the demos show
        for demo in compiled.module("clf").demos[:n_demos]:
            assert demo["sentence"] in text
        run(program, lm, sentence="a good film")
        assert lm.calls == [shown[0].request]


def test_instructions_of_a_compiled_program_show() -> None:
    prog = qa_program()
    new = prog.replace_modules({"classify": prog.module("classify").replace(instructions="Say person or place.")})
    shown = new.prompts(lm=fake("completion"), question=Q)
    assert shown.node("classify").prompt.startswith("Say person or place.")
    assert not prog.prompts(lm=fake("completion"), question=Q).node("classify").prompt.startswith("Say")


# ---------------------------------------------------------------- placeholders and inputs

def test_missing_inputs_are_placeholders_and_bad_inputs_are_refused() -> None:
    prog = qa_program()
    shown = prog.prompts(lm=fake())
    assert shown.node("classify").placeholders == ("<question>",)
    assert "Question: <question>" in shown.node("classify").messages[-1]["content"]
    assert shown.node("answer").placeholders == ("<question>", "<classify.answer_type>")
    with pytest.raises(InputError, match="unexpected input 'query'"):
        prog.prompts(lm=fake(), query="x")
    p = lg.Pipeline("typed")
    n = p.add(lg.Predict("k: int -> answer"), name="n", k=p.input("k", int))
    p.output(answer=n.answer)
    with pytest.raises(InputError, match="input 'k' is not valid"):
        p.build().prompts(lm=fake(), k="seven")
    with pytest.raises(DefinitionError, match="takes a model object"):
        prog.prompts(lm="gpt-4o-mini")


def test_a_model_name_the_context_lacks_fails_as_in_a_run() -> None:
    p = lg.Pipeline("named")
    n = p.add(lg.Predict("question -> answer", lm="big"), name="n", question=p.input("question"))
    p.output(answer=n.answer)
    prog = p.build()
    with pytest.raises(DefinitionError, match="no model named 'big'"):
        prog.prompts(lm=fake(), question=Q)
    small, big = fake(), fake("completion")
    shown = prog.prompts(ctx=lg.RunContext(lm=small, lms={"big": big}), question=Q)
    assert shown.node("n").format == "completion"  # the node's own model decides its format


def test_retrieve_runs_for_real_and_its_passages_show() -> None:
    corpus = ["Hamlet is a tragedy by William Shakespeare.", "Paris is the capital of France.",
              "Macbeth was written by Shakespeare."]
    p = lg.Pipeline("rag")
    q = p.input("question")
    docs = p.add(lg.Retrieve(corpus, k=2), name="retrieve", query=q)
    a = p.add(lg.ChainOfThought("context: list[str], question -> answer"), name="answer",
              context=docs.passages, question=q)
    p.output(answer=a.answer)
    prog = p.build()
    lm = fake()
    shown = prog.prompts(lm=lm, question=Q)
    assert [x.node for x in shown] == ["answer"] and shown[0].placeholders == ()
    assert "Hamlet is a tragedy" in shown[0].messages[-1]["content"]
    run(prog, lm, question=Q)
    assert lm.calls == [shown[0].request]
    # without the question, the retriever cannot run: its passages are a placeholder
    shown = prog.prompts(lm=fake())
    assert shown[0].placeholders == ("<retrieve.passages>", "<question>")


# ---------------------------------------------------------------- composite modules: their first call

def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.mark.parametrize("kind", ["best_of_n", "refine", "call_tool", "plan", "score", "critique"])
def test_composite_modules_show_their_first_call(kind) -> None:  # noqa: ANN001
    p = lg.Pipeline(kind)
    q = p.input("question")
    if kind == "best_of_n":
        m = lg.BestOfN(lg.Predict("question -> answer"), n=3)
        node, out = "answer", "answer"
    elif kind == "refine":
        m = lg.Refine(lg.Predict("question -> answer", format="chat"),
                      judge=lg.Critique("question, answer", format="json"))
        node, out = "answer", "answer"
    elif kind == "call_tool":
        m = lg.CallTool("question -> answer", tools=[add], max_steps=3)
        node, out = "agent", "answer"
    elif kind == "plan":
        m = lg.Plan("question -> steps: list[str]")
        node, out = "plan", "steps"
    elif kind == "score":
        m = lg.Predict("question -> label: Literal['person', 'place']", decode="score")
        node, out = "classify", "label"
    else:
        m = lg.Critique("question")
        node, out = "judge", "verdict"
    n = p.add(m, name=node, question=q)
    p.output(out=getattr(n, out))
    prog = p.build()
    lm = FunctionLM(lambda r: " person" if r.choices else reply(r))
    shown = prog.prompts(lm=lm, question=Q)
    assert lm.calls == [] and [x.node for x in shown] == [node]
    run(prog, lm, question=Q)
    assert shown[0].request == lm.calls[0]
    if kind == "best_of_n":
        assert shown[0].settings["temperature"] == 0.7 and "sample 1 of 3" in shown[0].note
        assert len(lm.calls) == 3 and {r.rollout for r in lm.calls} == {0, 1, 2}
    if kind == "refine":
        assert shown[0].format == "chat" and "first draft" in shown[0].note
    if kind == "call_tool":
        assert "(no steps yet)" in str(shown[0]) and "- add: Add two integers." in str(shown[0])
        assert "step 1" in shown[0].note
    if kind == "score":
        assert shown[0].format == "completion" and shown[0].settings["choices"] == [" person", " place"]
        assert "scores the choices" in str(shown[0])


def test_map_shows_its_sub_program_for_the_first_item() -> None:
    sub = lg.Pipeline("step")
    s = sub.add(lg.Predict("task -> result"), name="solve", task=sub.input("task"))
    sub.output(result=s.result)
    p = lg.Pipeline("decomposed")
    q = p.input("question")
    plan = p.add(lg.Plan("question -> steps: list[str]"), name="plan", question=q)
    each = p.add(lg.Map(sub.build(), over="task", concurrency=1), name="map", task=plan.steps)
    comb = p.add(lg.Predict("question, results: list[str] -> answer"), name="combine", question=q,
                 results=each.result)
    p.output(answer=comb.answer)
    prog = p.build()
    lm = fake()
    shown = prog.prompts(lm=lm, question=Q)
    assert [x.node for x in shown] == ["plan", "map/solve", "combine"]
    assert shown.node("map/solve").placeholders == ("<plan.steps[0]>",) and "first item" in shown.node("map/solve").note
    out = run(prog, lm, question=Q)
    assert out.answer == "Shakespeare"
    assert shown.node("plan").request == first_call(lm, "plan")
    assert substitute(shown.node("map/solve").request, "<plan.steps[0]>", "find the author") \
        == first_call(lm, "solve")
    # a multi-line value starts on the line after its label; the one-line placeholder sits on it
    assert substitute(shown.node("combine").request, " <map.result>", "\n" + format_value(["done", "done"])) \
        == first_call(lm, "combine")
    # a known list: the first item's real value, "item 1 of N"
    direct = lg.Pipeline("direct")
    d = direct.add(lg.Map(sub.build(), over="task"), name="map", task=direct.input("tasks", list[str]))
    direct.output(result=d.result)
    shown = direct.build().prompts(lm=fake(), tasks=["a", "b"])
    assert shown[0].placeholders == () and "item 1 of 2" in shown[0].note and "Task: a" in str(shown[0])


# ---------------------------------------------------------------- traces: the format of every call

def test_traces_record_the_format_of_every_call() -> None:
    p = lg.Pipeline("refined")
    n = p.add(lg.Refine(lg.Predict("question -> answer", format="chat"),
                        judge=lg.Critique("question, answer", format="json")), name="answer",
              question=p.input("question"))
    p.output(answer=n.answer)
    out = run(p.build(), fake(), question=Q)
    nt = out.trace.node("answer")
    assert nt.formats == ["chat", "json"] and nt.format == "json"  # the old field: the last call's
    d = out.trace.to_dict()["nodes"][0]
    assert d["formats"] == ["chat", "json"] and [c["format"] for c in d["calls"]] == ["chat", "json"]


def test_a_repair_call_keeps_its_calls_format_in_the_trace() -> None:
    prog = qa_program("completion")
    answers = iter([" banana", '{"answer_type": "person"}', " x\nAnswer: Shakespeare"])
    lm = FunctionLM(lambda r: next(answers))
    out = run(prog, lm, question=Q)
    assert out.trace.node("classify").formats == ["completion", "completion"]
    assert lm.calls[1].json_schema is not None  # it was the repair call


# ---------------------------------------------------------------- the default model, async use

def test_the_default_model_shows_completion_without_loading_weights() -> None:
    from lmgraph.lm.embedded import embedded_model_path
    from lmgraph.lm.llamacpp import LlamaCppLM

    try:
        embedded_model_path()
    except DefinitionError:
        pytest.skip("the embedded model is not installed")
    prog = qa_program()
    assert [x.format for x in prog.prompts(question=Q)] == ["completion", "completion"]
    lm = LlamaCppLM()
    shown = prog.prompts(ctx=lg.RunContext(lm=lm), question=Q)
    assert [x.format for x in shown] == ["completion", "completion"]
    assert lm._pool.loaded == 0 and lm.load_seconds is None  # no weights loaded


def test_prompts_inside_a_running_loop() -> None:
    async def main() -> PromptList:
        return qa_program().prompts(lm=fake("completion"), question=Q)

    assert [x.format for x in asyncio.run(main())] == ["completion", "completion"]


def test_str_and_to_dict_are_readable() -> None:
    shown = qa_program().prompts(lm=fake("completion"), question=Q)
    text = str(shown)
    assert "=== classify (predict, format=completion) ===" in text
    assert "--- prompt ---\nGiven the fields `question`" in text and "Answer type: <classify.answer_type>" in text
    assert "max_tokens=256" in text
    d = shown.to_dict()
    assert json.loads(json.dumps(d)) == d and d["prompts"][0]["settings"]["stop"] == ["\n\n", "\nQuestion:"]
    assert isinstance(Placeholder("<x>"), str)
    assert dataclasses.is_dataclass(shown[0])


# ---------------------------------------------------------------- CLI

def test_cli_show_prompts(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    specs: list[str] = []
    lm = fake("completion")

    def make_lm(spec: str, *a, **kw) -> FunctionLM:  # noqa: ANN002, ANN003
        specs.append(spec)
        return lm

    monkeypatch.setattr(cli, "make_lm", make_lm)
    prog = qa_program()
    path = str(prog.save(tmp_path / "prog.json"))
    assert cli.main(["show", path, "--prompts", "--inputs", json.dumps({"question": Q})]) == 0
    assert capsys.readouterr().out == str(prog.prompts(lm=lm, question=Q)) + "\n"
    assert specs == ["embedded"] and lm.calls == []
    assert cli.main(["show", path, "--prompts", "--json", "--model", "litellm:x"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["node"] for p in data["prompts"]] == ["classify", "answer"] and specs[-1] == "litellm:x"
    assert data["prompts"][0]["placeholders"] == ["<question>"]
    assert cli.main(["show", path]) == 0 and "Program 'qa'" in capsys.readouterr().out
    for bad, needle in (("[1]", "not an object"), ("{", "not valid JSON"), ('{"query": 1}', "unexpected input")):
        assert cli.main(["show", path, "--prompts", "--inputs", bad]) == 2
        assert needle in capsys.readouterr().err


def test_cli_show_prompts_of_a_program_with_unbound_resources(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setattr(cli, "make_lm", lambda spec, *a, **kw: fake())
    p = lg.Pipeline("rag")
    q = p.input("question")
    docs = p.add(lg.Retrieve(["a doc"], k=1, name="corpus"), name="retrieve", query=q)
    a = p.add(lg.Predict("context: list[str], question -> answer"), name="answer", context=docs.passages, question=q)
    p.output(answer=a.answer)
    path = str(p.build().save(tmp_path / "rag.json"))
    assert cli.main(["show", path, "--prompts", "--inputs", json.dumps({"question": Q})]) == 0
    out = capsys.readouterr().out
    assert "Context: <retrieve.passages>" in out and "retrieve: not run" in out and "not bound" in out


# ---------------------------------------------------------------- the real embedded model

class Recording:
    """Wraps a backend and records every request it receives."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.calls: list[LMRequest] = []
        self.preferred_format = inner.preferred_format

    def identity(self) -> dict:
        return self.inner.identity()

    async def complete(self, request: LMRequest):  # noqa: ANN201
        self.calls.append(request)
        return await self.inner.complete(request)


@pytest.mark.integration
def test_default_embedded_model_prompts_equal_what_llamacpp_receives() -> None:
    pytest.importorskip("llama_cpp")
    from lmgraph.context import default_lm
    from lmgraph.lm.embedded import embedded_model_path

    try:
        embedded_model_path()
    except DefinitionError as e:
        pytest.skip(str(e))
    p = lg.Pipeline("qa")
    q = p.input("question")
    c = p.add(lg.Predict("question -> answer_type: Literal['person', 'place']", decode="score"),
              name="classify", question=q)
    a = p.add(lg.Predict("question, answer_type -> answer", max_tokens=12), name="answer",
              question=q, answer_type=c.answer_type)
    p.output(answer=a.answer, answer_type=c.answer_type)
    prog = p.build()
    shown = prog.prompts(question=Q)  # no model given: the context's default, the embedded model
    assert [(x.node, x.format) for x in shown] == [("classify", "completion"), ("answer", "completion")]
    rec = Recording(default_lm())
    out = prog.run_sync(lg.RunContext(lm=rec, cache=False), question=Q)
    assert [r.node for r in rec.calls] == ["classify", "answer"]
    assert shown.node("classify").request == rec.calls[0]
    assert substitute(shown.node("answer").request, "<classify.answer_type>", out.answer_type) == rec.calls[1]
