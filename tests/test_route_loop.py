"""Control flow: lg.Route (one branch per row, by a Literal output or a named predicate) and lg.Loop
(a bounded repeat with typed carried state) -- selection, build-time checks, stopping, traces,
save/load, render, prompt previews, the parameter tree and few-shot optimizers inside them, and
examples/agent.py on scripted fakes (and, marked integration, on the embedded model)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import lmgraph as lg
from lmgraph.errors import ArtifactError, DefinitionError, PipelineValidationError, RunError
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import BootstrapFewShot, Compile, LabeledFewShot, diff, format_diff
from lmgraph.testing import FunctionLM, request_text

from helpers import sentiment_fn, sentiment_rows

ROOT = Path(__file__).resolve().parents[1]
SENTIMENT = "sentence -> sentiment: Literal['negative', 'positive']"


def load_agent_example() -> Any:
    spec = importlib.util.spec_from_file_location("agent_example", ROOT / "examples" / "agent.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["agent_example"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


# ---------------------------------------------------------------- small programs

def one_node(name: str, signature: str, node: str = "solve", **predict: Any) -> lg.Program:
    """A one-node sub-program: its inputs are the signature's inputs, its outputs the signature's."""
    p = lg.Pipeline(name)
    sig = lg.Signature.parse(signature)
    types = {f.name: f.annotation for f in sig.inputs}
    handle = p.add(lg.Predict(signature, **predict), node, inputs={n: p.input(n, t) for n, t in types.items()})
    p.output(**{o: handle[o] for o in sig.output_names})
    return p.build()


def branches() -> dict[str, lg.Program]:
    return {"calc": one_node("calc", "question -> answer", instructions="CALC branch."),
            "search": one_node("search", "question -> answer", "lookup", instructions="SEARCH branch.")}


def routed(route: lg.Route | None = None, options: str = "'calc', 'search'") -> lg.Program:
    p = lg.Pipeline("agent")
    q = p.input("question")
    c = p.add(lg.Predict(f"question -> route: Literal[{options}]", instructions="CLASSIFY."), "classify", question=q)
    r = p.add(route or lg.Route(branches=branches()), "route", choice=c.route, question=q)
    p.output(answer=r.answer, route=c.route)
    return p.build()


def pick(values: dict[str, Any]) -> str:
    return "calc" if re.search(r"\d", values["question"]) else "search"


def by_predicate(selector: Any = pick, **kwargs: Any) -> lg.Program:
    p = lg.Pipeline("agent")
    q = p.input("question")
    r = p.add(lg.Route(selector, branches=branches(), **kwargs), "route", question=q)
    p.output(answer=r.answer)
    return p.build()


def branch_fn(route: str = "calc"):  # noqa: ANN201
    """Chat-format fake: the classifier says ``route``; each branch answers with its own name."""
    def fn(req: lg.LMRequest) -> str:
        text = request_text(req)
        if "CLASSIFY." in text:
            return f"Route: {route}"
        if "CALC branch." in text:
            return "Answer: from calc"
        if "SEARCH branch." in text:
            return "Answer: from search"
        return "Answer: ?"
    return fn


def run(prog: lg.Program, fn, **inputs: Any) -> tuple[lg.Prediction, FunctionLM]:  # noqa: ANN001
    lm = FunctionLM(fn)
    return prog.run_sync(lg.RunContext(lm=lm, cache=False), **inputs), lm


# ---------------------------------------------------------------- Route: selection and traces

@pytest.mark.parametrize("route", ["calc", "search"])
def test_route_runs_the_branch_a_literal_output_names(route: str) -> None:
    out, lm = run(routed(), branch_fn(route), question="Who wrote Hamlet?")
    assert out.answer == f"from {route}" and out.route == route
    texts = [request_text(r) for r in lm.calls]
    assert len(texts) == 2 and sum(f"{route.upper()} branch." in t for t in texts) == 1
    other = "search" if route == "calc" else "calc"
    assert not any(f"{other.upper()} branch." in t for t in texts)  # exactly one branch ran
    nt = lg.trace_of(out).node("route")
    assert nt.kind == "route" and nt.meta["branch"] == route
    (child,) = nt.children
    assert child.program == route and child.outputs == {"answer": f"from {route}"}
    assert nt.usage["calls"] == 1  # the branch's call counts towards the node


def test_route_by_predicate_and_by_named_resource() -> None:
    for prog in (by_predicate(), by_predicate(lg.resource("chooser", lambda v: pick(v)))):
        out, _ = run(prog, branch_fn(), question="What is 2 + 3?")
        assert out.answer == "from calc" and lg.trace_of(out).node("route").meta["branch"] == "calc"
        out, _ = run(prog, branch_fn(), question="Who wrote Hamlet?")
        assert out.answer == "from search"
    assert set(by_predicate(lg.resource("chooser", pick)).resources()) == {"chooser"}

    async def async_pick(values: dict[str, Any]) -> str:
        return "search"

    out, _ = run(by_predicate(async_pick), branch_fn(), question="1 + 1")
    assert out.answer == "from search"


def test_route_predicate_giving_no_branch_fails_the_row_or_takes_the_default() -> None:
    with pytest.raises(RunError, match=r"the predicate 'nowhere' returned 'elsewhere', which names no branch") as ei:
        run(by_predicate(lg.resource("nowhere", lambda v: "elsewhere")), branch_fn(), question="q")
    assert ei.value.node == "route"
    out, _ = run(by_predicate(lg.resource("nowhere", lambda v: "elsewhere"), default="search"), branch_fn(),
                 question="q")
    meta = lg.trace_of(out).node("route").meta
    assert out.answer == "from search" and meta == {"branch": "search", "selected": "elsewhere"}

    def broken(values: dict[str, Any]) -> str:
        raise KeyError("oops")

    with pytest.raises(RunError, match="the predicate 'broken' raised KeyError"):
        run(by_predicate(broken), branch_fn(), question="q")


def test_route_default_takes_the_literal_options_without_a_branch() -> None:
    prog = routed(lg.Route(branches=branches(), default="search"), options="'calc', 'search', 'chat'")
    assert prog.module("route").signature.input("choice").annotation is str
    out, _ = run(prog, branch_fn("chat"), question="hello")
    assert out.answer == "from search" and out.route == "chat"
    assert lg.trace_of(out).node("route").meta == {"branch": "search", "selected": "chat"}


# ---------------------------------------------------------------- Route: build-time checks

def test_a_literal_option_without_a_branch_is_a_build_error_naming_it() -> None:
    with pytest.raises(PipelineValidationError) as ei:
        routed(options="'calc', 'search', 'chat'")
    e = ei.value
    assert e.node == "route" and e.field == "choice"
    assert "classify.route may be 'chat', but no branch is called so (branches: 'calc', 'search')" in str(e)
    assert "add a branch for 'chat'" in e.fix and "default=" in e.fix
    # a plain str output cannot pick a branch unless there is a default
    with pytest.raises(PipelineValidationError, match="the selector picks a branch by name, but classify.route is str"):
        p = lg.Pipeline("agent")
        q = p.input("question")
        c = p.add(lg.Predict("question -> route"), "classify", question=q)
        p.add(lg.Route(branches=branches()), "route", choice=c.route, question=q)
        p.output(x=c.route)
        p.build()


def test_branches_must_export_the_same_outputs_with_the_same_types() -> None:
    good = one_node("calc", "question -> answer")
    with pytest.raises(DefinitionError,
                       match=r"branch 'search' exports 'answer' as int, but branch 'calc' as str") as ei:
        lg.Route(branches={"calc": good, "search": one_node("search", "question -> answer: int")})
    assert ei.value.field == "answer" and "same type" in ei.value.fix
    with pytest.raises(DefinitionError, match=r"branch 'search' has no output 'answer'") as ei:
        lg.Route(branches={"calc": good, "search": one_node("search", "question -> reply")})
    assert ei.value.field == "answer" and "search.output(answer=...)" in ei.value.fix
    with pytest.raises(DefinitionError, match=r"branch 'search' exports 'extra'"):
        lg.Route(branches={"calc": good, "search": one_node("search", "question -> answer, extra")})
    with pytest.raises(DefinitionError, match=r"branches 'calc' and 'search' both take 'question', as str and int"):
        lg.Route(branches={"calc": good, "search": one_node("search", "question: int -> answer")})


def test_route_configuration_errors() -> None:
    with pytest.raises(DefinitionError, match="default 'chat' is not a branch"):
        lg.Route(branches=branches(), default="chat")
    with pytest.raises(DefinitionError, match="needs branches="):
        lg.Route("choice")
    with pytest.raises(DefinitionError, match="branch 'calc' must be a Program"):
        lg.Route(branches={"calc": lg.Predict("question -> answer")})
    with pytest.raises(DefinitionError, match="not an identifier"):
        lg.Route(branches={"calc mode": one_node("calc", "question -> answer")})
    with pytest.raises(DefinitionError, match="also an input of branch 'calc'"):
        lg.Route("question", branches=branches())
    with pytest.raises(DefinitionError, match="no name to be saved under"):
        lg.Route(lambda v: "calc", branches=branches())
    # branches given as pipelines are built
    p = lg.Pipeline("calc")
    s = p.add(lg.Predict("question -> answer"), "solve", question=p.input("question"))
    p.output(answer=s.answer)
    assert lg.Route(branches={"calc": p}).branches["calc"].order == ("solve",)
    swapped = lg.Route(branches=branches()).replace(branches={"calc": p, "search": branches()["search"]})
    assert isinstance(swapped.branches["calc"], lg.Program)
    with pytest.raises(DefinitionError,
                       match="node .loop., field .max_iters.: setting max_iters: max_iters must be a positive integer"):
        looped().with_parameters({"loop.max_iters": 0})


# ---------------------------------------------------------------- Loop

def draft_body() -> lg.Program:
    """question, draft -> answer (a rewrite of the draft), ok: bool (a Critique of the answer)."""
    p = lg.Pipeline("body")
    q, draft = p.input("question"), p.input("draft")
    w = p.add(lg.Predict("question, draft -> answer", instructions="WRITE."), "write", question=q, draft=draft)
    j = p.add(lg.Critique("question, answer", format="json"), "judge", question=q, answer=w.answer)
    p.output(answer=w.answer, ok=j.verdict, feedback=j.feedback)
    return p.build()


def looped(loop: lg.Loop | None = None) -> lg.Program:
    p = lg.Pipeline("looped")
    q = p.input("question")
    lp = p.add(loop or lg.Loop(draft_body(), max_iters=3, until="ok", carry={"draft": "answer"}), "loop",
               question=q, draft="")
    p.output(answer=lp.answer, iterations=lp.iterations, ok=lp.ok)
    return p.build()


def loop_fn(accept_at: int | None):  # noqa: ANN001, ANN201
    """Each WRITE call appends '+' to the draft it was given; the judge accepts an answer with
    ``accept_at`` pluses (never, with None)."""
    def fn(req: lg.LMRequest) -> str:
        text = request_text(req)
        if req.json_schema is not None:
            answer = re.findall(r"Answer: (.*)", text)[-1]
            ok = accept_at is not None and answer.count("+") >= accept_at
            return json.dumps({"feedback": "fine" if ok else "longer", "verdict": ok})
        draft = re.findall(r"Draft: (.*)", text)[-1] if "Draft: " in text else ""
        return f"Answer: {draft.strip()}+"
    return fn


def test_loop_stops_when_until_holds_and_carries_the_state() -> None:
    out, lm = run(looped(), loop_fn(2), question="q")
    assert out.answer == "++" and out.iterations == 2 and out.ok is True
    writes = [request_text(r) for r in lm.calls if r.json_schema is None]
    assert len(writes) == 2 and "Draft: +" in writes[1]  # iteration 2 read iteration 1's answer
    nt = lg.trace_of(out).node("loop")
    assert nt.meta["iterations"] == [{"iteration": 1, "done": False}, {"iteration": 2, "done": True}]
    assert [c.outputs["answer"] for c in nt.children] == ["+", "++"]  # every iteration's sub-run
    assert nt.usage["calls"] == 4


def test_loop_stops_at_max_iters() -> None:
    out, lm = run(looped(), loop_fn(None), question="q")
    assert out.answer == "+++" and out.iterations == 3 and out.ok is False
    assert len(lm.calls) == 6
    assert [r["done"] for r in lg.trace_of(out).node("loop").meta["iterations"]] == [False, False, False]
    out, _ = run(looped(lg.Loop(draft_body(), max_iters=1, until="ok", carry={"draft": "answer"})), loop_fn(None),
                 question="q")
    assert out.iterations == 1


def test_loop_until_a_predicate_and_without_a_condition() -> None:
    def long_enough(values: dict[str, Any]) -> bool:
        return len(values["answer"]) >= 2 and values["question"] == "q"

    out, _ = run(looped(lg.Loop(draft_body(), max_iters=5, until=long_enough, carry={"draft": "answer"})),
                 loop_fn(None), question="q")
    assert out.answer == "++" and out.iterations == 2
    out, _ = run(looped(lg.Loop(draft_body(), max_iters=2, carry={"draft": "answer"})), loop_fn(0), question="q")
    assert out.iterations == 2 and out.ok is True  # no until: always max_iters


def test_loop_build_errors() -> None:
    body = draft_body()
    with pytest.raises(DefinitionError, match="max_iters must be a positive integer, got 0") as ei:
        lg.Loop(body, max_iters=0, until="ok")
    assert ei.value.field == "max_iters"
    with pytest.raises(DefinitionError, match="Loop needs max_iters"):
        lg.Loop(body, until="ok")
    with pytest.raises(DefinitionError, match="max_iters must be a positive integer"):
        lg.Loop(body, max_iters=True)
    # carry: types checked, both names checked, the direction explained
    p = lg.Pipeline("counting")
    n = p.add(lg.Predict("text -> count: int"), "count", text=p.input("text"))
    p.output(count=n.count)
    with pytest.raises(DefinitionError, match="carry type mismatch: the body output 'count' is int but the input "
                                              "'text' it feeds is str") as ei:
        lg.Loop(p.build(), max_iters=2, carry={"text": "count"})
    assert ei.value.field == "text" and "text: int" in ei.value.fix
    with pytest.raises(DefinitionError, match="carry names 'answer', which is not an input") as ei:
        lg.Loop(body, max_iters=2, carry={"answer": "draft"})
    assert "carry={'draft': 'answer'}" in ei.value.fix
    with pytest.raises(DefinitionError, match="'nothing', which the body 'body' does not export"):
        lg.Loop(body, max_iters=2, carry={"draft": "nothing"})
    # until: a bool output
    with pytest.raises(DefinitionError, match="until='feedback' is str, not bool"):
        lg.Loop(body, max_iters=2, until="feedback")
    with pytest.raises(DefinitionError, match="until='done', but the body 'body' has no such output"):
        lg.Loop(body, max_iters=2, until="done")
    # the loop node's fields: body inputs and outputs may not share a name
    q = lg.Pipeline("same")
    s = q.add(lg.Predict("question, answer -> reply"), "s", question=q.input("question"), answer=q.input("answer"))
    q.output(answer=s.reply)
    with pytest.raises(DefinitionError, match="both named 'answer'") as ei:
        lg.Loop(q.build(), max_iters=2)
    assert "previous_answer" in ei.value.fix


# ---------------------------------------------------------------- budgets, save/load, render, prompts

def test_estimated_calls_bound_both() -> None:
    one = lg.Predict("question -> answer").estimated_calls()  # a call and its possible repair
    assert routed().estimated_calls() == one + one  # classify + the larger branch
    assert routed().estimated_calls(repairs=False) == 1 + 1
    big = {"calc": lg.Pipeline("calc"), "search": branches()["search"]}
    c = big["calc"]
    cq = c.input("question")
    a = c.add(lg.Predict("question -> x"), "a", question=cq)
    b = c.add(lg.Refine(lg.Predict("question, x -> answer"), max_rounds=2), "b", question=cq, x=a.x)
    c.output(answer=b.answer)
    route = lg.Route(branches=big)
    assert route.estimated_calls() == route.branches["calc"].estimated_calls() == one + 2 * 2 * one
    assert route.estimated_calls(repairs=False) == 1 + 2 * 2
    assert looped().estimated_calls() == 3 * 2 * one  # max_iters x (write + judge)
    assert looped().estimated_calls(repairs=False) == 3 * 2


def everything() -> lg.Program:
    p = lg.Pipeline("flow")
    q = p.input("question")
    c = p.add(lg.Predict("question -> route: Literal['calc', 'search']"), "classify", question=q)
    r1 = p.add(lg.Route(branches=branches(), default="calc"), "by_choice", choice=c.route, question=q)
    r2 = p.add(lg.Route(pick, branches=branches()), "by_predicate", question=q)
    l1 = p.add(lg.Loop(draft_body(), max_iters=2, until="ok", carry={"draft": "answer"}), "loop", question=q,
               draft=r1.answer)
    l2 = p.add(lg.Loop(draft_body(), max_iters=3, until=lg.resource("stop", lambda v: True)), "loop2", question=q,
               draft=r2.answer)
    p.output(a=l1.answer, b=l2.answer, n=l2.iterations)
    return p.build()


def test_save_and_load_keep_the_content_hash(tmp_path: Path) -> None:
    prog = everything()
    assert set(prog.resources()) == {"pick", "stop"}
    again = lg.Program.from_dict(json.loads(prog.to_json()), resources=prog.resources())
    assert again == prog and again.content_hash() == prog.content_hash()
    assert again.module("by_predicate").predicate is pick
    prog.save(tmp_path / "flow.json")
    loaded = lg.Program.load(tmp_path / "flow.json", resources={"pick": pick, "stop": lambda v: False})
    assert loaded.content_hash() == prog.content_hash()
    assert loaded.to_dict()["nodes"][1]["module"]["selector"] == "choice"
    assert loaded.to_dict()["nodes"][2]["module"]["selector"] == {"predicate": "pick"}
    with pytest.raises(ArtifactError, match="needs the route predicate named 'pick'") as ei:
        lg.Program.load(tmp_path / "flow.json", resources={"stop": pick})
    assert "resources={'pick': ...}" in ei.value.fix
    with pytest.raises(ArtifactError, match="the resource 'stop' \\(loop predicate\\) is a str, not a function"):
        lg.Program.load(tmp_path / "flow.json", resources={"pick": pick, "stop": "yes"})


def test_render_shows_the_branches_and_the_loop_body() -> None:
    text = everything().render()
    assert "[by_choice] Route[by choice: calc | search, default=calc]" in text
    assert "[by_predicate] Route[by predicate pick: calc | search]" in text
    assert "branch calc:" in text and "branch search:" in text and "[lookup] Predict" in text
    assert "[loop] Loop[body, max_iters=2, until ok, carry draft <- answer]" in text
    assert "[loop2] Loop[body, max_iters=3, until stop()]" in text
    assert "body:" in text and "[judge] Critique" in text
    mermaid = everything().render("mermaid")
    assert 'subgraph n_by_choice__calc["branch calc"]' in mermaid
    assert 'n_by_choice__calc__solve["solve<br/>' in mermaid
    assert 'n_by_choice -.->|"search"| n_by_choice__search' in mermaid
    assert 'subgraph n_loop__body["loop body (at most 2x, until ok)"]' in mermaid
    assert 'n_loop__body__write -->|"answer → answer"| n_loop__body__judge' in mermaid
    assert 'n_loop__body -.->|"next iteration: draft ← answer"| n_loop' in mermaid
    lines = [line.strip() for line in mermaid.splitlines()]
    assert sum(x.startswith("subgraph ") for x in lines) == lines.count("end") == 6  # 2 + 2 branches, 2 bodies


def test_prompts_preview_the_selected_or_first_branch_and_the_first_iteration() -> None:
    prompts = routed().prompts(lm=FunctionLM(branch_fn()), question="What is 2 + 2?")
    assert [p.node for p in prompts] == ["classify", "route/calc/solve"]
    assert "the first; choice picks one at run time" in prompts.node("route/calc/solve").note
    # the selector known (a pipeline input): the branch it names
    p = lg.Pipeline("chosen")
    mode = p.input("mode", lg.Signature.parse("x -> m: Literal['calc', 'search']").output("m").annotation)
    r = p.add(lg.Route(branches=branches()), "route", choice=mode, question=p.input("question"))
    p.output(answer=r.answer)
    prompts = p.build().prompts(lm=FunctionLM(branch_fn()), mode="search", question="Who?")
    assert [x.node for x in prompts] == ["route/search/lookup"]
    assert "SEARCH branch." in str(prompts) and "picked by choice" in prompts[0].note
    # a predicate with known inputs runs (no model call); the loop shows iteration 1
    prompts = by_predicate().prompts(lm=FunctionLM(branch_fn()), question="Who wrote Hamlet?")
    assert [x.node for x in prompts] == ["route/search/lookup"] and "picked by pick()" in prompts[0].note
    prompts = looped().prompts(lm=FunctionLM(branch_fn()), question="q")
    assert [x.node for x in prompts] == ["loop/write", "loop/judge"]
    assert all("Loop iteration 1 of up to 3" in x.note for x in prompts)
    assert "Question: q\nDraft:" in prompts[0].request.messages[-1].content  # the first iteration's inputs


# ---------------------------------------------------------------- the parameter tree and optimizers

def test_named_parameters_reach_into_branches_and_the_loop_body() -> None:
    params = dict(everything().named_parameters())
    for path in ("by_choice.calc.solve.instructions", "by_choice.search.lookup.demos",
                 "by_predicate.calc.solve.format", "loop.write.demos", "loop.judge.instructions", "loop.max_iters",
                 "loop2.write.instructions"):
        assert path in params, path
    assert params["loop.max_iters"].value == 2
    assert params["by_choice.search.lookup.demos"].signature.shorthand() == "question -> answer"
    prog = everything()
    new = prog.with_parameters({"by_choice.search.lookup.instructions": "Be brief.",
                                "loop.write.demos": [{"question": "q", "draft": "d", "answer": "a"}],
                                "loop.max_iters": 4})
    assert new.module("by_choice.search.lookup").instructions == "Be brief."
    assert new.module("by_choice").branches["search"].module("lookup").instructions == "Be brief."
    assert new.module("loop.write").demos == ({"question": "q", "draft": "d", "answer": "a"},)
    assert new.module("loop").max_iters == 4 and prog.module("loop").max_iters == 2
    back = new.with_parameters({p: prog.parameter(p).value for p in (
        "by_choice.search.lookup.instructions", "loop.write.demos", "loop.max_iters")})
    assert back.content_hash() == prog.content_hash()
    with pytest.raises(DefinitionError, match="no parameter 'by_choice.chat.solve.demos'"):
        prog.with_parameters({"by_choice.chat.solve.demos": []})
    # a nested module can be swapped by path
    swapped = prog.replace_modules({"by_choice.calc.solve": lg.Predict("question -> answer", format="json")})
    assert swapped.parameter("by_choice.calc.solve.format").value == "json"


def sentiment_route() -> lg.Program:
    """Route by a predicate: sentences about films go to branch ``film``, the rest to ``other``."""
    film = one_node("film", SENTIMENT, format="completion")
    other = one_node("other", SENTIMENT, "judge", format="completion", instructions="OTHER.")
    p = lg.Pipeline("routed")
    r = p.add(lg.Route(lg.resource("topic", lambda v: "film" if "film" in v["sentence"] else "other"),
                       branches={"film": film, "other": other}), "route", sentence=p.input("sentence"))
    p.output(label=r.sentiment)
    return p.build()


def sentiment_loop() -> lg.Program:
    body = one_node("body", SENTIMENT, format="completion")
    p = lg.Pipeline("looped")
    lp = p.add(lg.Loop(body, max_iters=2, until=lg.resource("always", lambda v: True)), "loop",
               sentence=p.input("sentence"))
    p.output(label=lp.sentiment)
    return p.build()


TRAIN, VAL = sentiment_rows(40)[:20], sentiment_rows(40)[20:]


@pytest.mark.parametrize("make", [lambda: LabeledFewShot(2), lambda: BootstrapFewShot(2)],
                         ids=["labeled", "bootstrap"])
@pytest.mark.parametrize("build,target", [(sentiment_route, "route.film.solve"), (sentiment_loop, "loop.solve")],
                         ids=["route", "loop"])
def test_few_shot_optimizers_put_demos_inside_and_the_prompt_carries_them(make, build, target) -> None:  # noqa: ANN001
    prog = build()
    new, rep = make().optimize(prog, TRAIN, label_accuracy(), valset=VAL,
                               ctx=lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False))
    assert rep.baseline.mean == 0.5 and rep.best.mean == 1.0 and rep.best.status == "accepted"
    demos = new.module(target).demos
    assert len(demos) == 2 and all(set(d) == {"sentence", "sentiment"} for d in demos)
    lm = FunctionLM(sentiment_fn)
    out = new.run_sync(lg.RunContext(lm=lm, cache=False), sentence="bad film 99")
    assert out.label == "negative"
    (req,) = lm.calls
    for d in demos:
        assert f"Sentence: {d['sentence']}\nSentiment: {d['sentiment']}" in request_text(req)
    inner = target.split(".", 1)[1]
    assert f"    {inner}.demos: 0 -> 2 (+2 -0)" in format_diff(diff(prog, new))  # the diff names the inner path
    if build is sentiment_route and isinstance(make(), BootstrapFewShot):
        assert new.module("route.other.judge").demos == ()  # bootstrapped only where rows ran


def test_compile_tunes_inside_a_route() -> None:
    prog = sentiment_route()
    new, rep = Compile().optimize(prog, TRAIN + VAL, label_accuracy(), budget=lg.Budget(max_calls=300), seed=0,
                                  ctx=lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False))
    assert rep.best.status == "accepted" and rep.best.mean == 1.0
    assert rep.best.changes and all(k.startswith("route.film.solve") for k in rep.best.changes)
    assert new.module("route.film.solve") != prog.module("route.film.solve")


# ---------------------------------------------------------------- examples/agent.py

def agent_fn(judge_rejects_first: bool = True):  # noqa: ANN201
    """A scripted model for the example: routes by digits, calls the calculator with the
    question's expression, reads the corpus, writes an answer from the evidence, and (optionally)
    rejects each question's first answer."""
    judged: dict[str, int] = {}

    def fn(req: lg.LMRequest) -> str:
        text = request_text(req)
        question = re.findall(r"Question: (.*)", text)[-1]
        if "calc if the question asks" in text:
            return "Route: " + ("calc" if re.search(r"\d", question) else "search")
        if "choose one tool by its name" in text:
            done = "Observation" in (req.messages[-1].content if req.messages else text)
            return json.dumps({"thought": "compute it", "tool": "finish" if done else "calculate"})
        if "Write the arguments for the tool" in text:
            return json.dumps({"args": {"expression": re.search(r"[\d\s*+/()-]+\d", question).group().strip()}})
        if "Trajectory:" in text:  # the CallTool's final answer, from the last observation
            return "Result: " + re.findall(r"Observation \d+: (.*)", text)[-1]
        if "produce the fields `result`" in text:
            passages = re.findall(r"William Shakespeare", text)
            return "Result: " + ("William Shakespeare" if passages else "unknown")
        if "Answer the question in one short sentence" in text:
            evidence = re.findall(r"Evidence: (.*)", text)[-1]
            hint = re.findall(r"Hint: (.*)", text)[-1]
            return f"Answer: It is {evidence}" + ("." if "first attempt" not in hint else "")
        if "Judge whether the `answer`" in text:
            judged[question] = judged.get(question, 0) + 1
            ok = not (judge_rejects_first and judged[question] == 1)
            return f"Feedback: {'fine' if ok else 'end with a full stop'}\nVerdict: {'yes' if ok else 'no'}"
        raise AssertionError(f"unexpected request:\n{text}")
    return fn


@pytest.mark.parametrize("router", ["model", "rule"])
def test_the_agent_example_on_scripted_fakes(router: str) -> None:
    agent = load_agent_example()
    assert agent.calculate("17 * 23") == "391" and agent.calculate("(2 + 3) ** 2") == "25"
    for bad in ("__import__('os')", "2 ** 1000", "1 / 0", "open('x')", "True + 1", "'ab' * 3", "[1] * 3",
                "9 ** 9 ** 9", "0 ** -1", "1e400"):
        with pytest.raises(ValueError):
            agent.calculate(bad)
    prog = agent.build_agent(router=router)
    lm = FunctionLM(agent_fn())
    results = prog.batch_sync([{"question": "What is 17 * 23?"}, {"question": "Who wrote Hamlet?"}],
                              ctx=lg.RunContext(lm=lm, cache=False))
    assert all(r.ok for r in results), [r.error for r in results]
    calc, search = (r.outputs for r in results)
    assert calc["answer"] == "It is 391." and calc["passed"] is True
    assert calc["iterations"] == 2  # the judge rejected the first answer; the hint carried its feedback
    assert search["answer"] == "It is William Shakespeare." and search["iterations"] == 2
    trace = results[0].trace
    route = trace.node("route")
    assert route.meta["branch"] == "calc" and route.children[0].node("solve").meta["steps"][0]["tool"] == "calculate"
    loop = trace.node("refine")
    assert [c.inputs["hint"] for c in loop.children] == ["none yet (first attempt)", "end with a full stop"]
    assert results[1].trace.node("route").meta["branch"] == "search"
    assert prog.estimated_calls() >= trace.usage["calls"]
    # the same program saves and loads (the calculator, corpus and rule are resources) with its hash
    again = lg.Program.from_dict(json.loads(prog.to_json()), resources=prog.resources())
    assert again.content_hash() == prog.content_hash()
    assert {"route.calc.solve.step.demos", "route.search.read.demos", "refine.judge.demos"} <= \
        {p for p, _ in prog.named_parameters()}
    if router == "rule":
        assert "looks_like_arithmetic" in prog.resources() and "classify" not in prog.node_map


@pytest.mark.integration
def test_the_agent_example_on_the_embedded_model() -> None:
    """Structure only: the rule router sends each question down its branch; a small model's
    answers and verdicts are whatever they are."""
    agent = load_agent_example()
    prog = agent.build_agent(router="rule")
    results = prog.batch_sync([{"question": "What is 17 * 23?"}, {"question": "Who wrote Hamlet?"}],
                              ctx=lg.RunContext(cache=False), concurrency=1)
    for result, branch in zip(results, ("calc", "search")):
        trace = result.trace
        assert trace is not None and trace.node("route").meta["branch"] == branch
        assert 2 <= trace.usage["calls"] <= prog.estimated_calls()
        if result.ok:  # a small model may still write an unreadable reply; the structure is what is checked
            out = result.outputs
            assert isinstance(out["answer"], str) and isinstance(out["passed"], bool)
            assert 1 <= out["iterations"] <= 2 and len(trace.node("refine").children) == out["iterations"]
        else:
            assert isinstance(result.error, lg.RunError)
    calc_route = results[0].trace.node("route")
    assert calc_route.children and calc_route.children[0].node("solve").kind == "call_tool"
