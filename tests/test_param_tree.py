"""The parameter tree: Program.named_parameters / with_parameters over nested modules (Refine's
generator, a Map's sub-program, CallTool's choose call), and the few-shot optimizers filling the
nested demos -- checked on the prompts the fake model receives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError
from lmgraph.evaluation import label_accuracy
from lmgraph.modules import CallTool, Critique, Map, Refine
from lmgraph.modules.base import Param
from lmgraph.optimizers import BootstrapFewShot, LabeledFewShot, diff, format_diff, load_artifact, save_artifact
from lmgraph.optimizers.fewshot import demo_nodes, labeled_demos, with_demos
from lmgraph.testing import FunctionLM, request_text

from helpers import sentiment_fn, sentiment_rows

SENTIMENT = "sentence -> sentiment: Literal['negative', 'positive']"


def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


# ---------------------------------------------------------------- programs with nested modules

def refine_program() -> lg.Program:
    """``refine``: Refine(Predict) with a JSON judge; output ``label``."""
    p = lg.Pipeline("refined")
    gen = lg.Predict(SENTIMENT, format="completion")
    r = p.add(Refine(gen, judge=Critique("sentence, sentiment", format="json")), name="refine",
              sentence=p.input("sentence"))
    p.output(label=r.sentiment)
    return p.build()


def map_program() -> lg.Program:
    """``each``: Map over a sub-program whose node ``solve`` classifies one sentence; output ``labels``."""
    sub = lg.Pipeline("per_item")
    solve = sub.add(lg.Predict(SENTIMENT, format="completion"), name="solve", sentence=sub.input("sentence"))
    sub.output(sentiment=solve.sentiment)
    p = lg.Pipeline("mapped")
    each = p.add(Map(sub.build(), over="sentence"), name="each", sentence=p.input("sentences", list[str]))
    p.output(labels=each.sentiment)
    return p.build()


def agent_program() -> lg.Program:
    p = lg.Pipeline("agent")
    a = p.add(CallTool("question -> result: int", [add]), name="agent", question=p.input("question"))
    p.output(result=a.result)
    return p.build()


def mixed_program() -> lg.Program:
    p = lg.Pipeline("mixed")
    q = p.input("question")
    r = p.add(Refine(lg.Predict("question -> answer")), name="refine", question=q)
    sub = lg.Pipeline("per_item")
    s = sub.add(lg.Predict("question -> answer"), name="solve", question=sub.input("question"))
    sub.output(answer=s.answer)
    m = p.add(Map(sub.build(), over="question"), name="answer_each", question=p.input("questions", list[str]))
    a = p.add(CallTool("question -> result: int", [add]), name="agent", question=q)
    p.output(answer=r.answer, answers=m.answer, result=a.result)
    return p.build()


# ---------------------------------------------------------------- fakes

def judge_or(fn):  # noqa: ANN001, ANN201
    """The JSON judge accepts every answer; other calls go to ``fn``."""
    def answer(req: lg.LMRequest) -> str:
        if req.json_schema is not None and "verdict" in req.json_schema.get("properties", {}):
            return json.dumps({"feedback": "fine", "verdict": True})
        return fn(req)
    return answer


def agent_fn(req: lg.LMRequest) -> str:
    """Uses the tool when its choose prompt shows step demos, or when the first number is even;
    otherwise finishes at once and answers 0. The final answer is the last observation."""
    text = request_text(req)
    current = req.messages[-1].content if req.messages else text
    if "choose one tool by its name" in text:
        if "Observation" in current:
            return json.dumps({"thought": "done", "tool": "finish"})
        first = int(re.findall(r"\d+", current)[0])
        if len(req.messages or ()) > 2 or first % 2 == 0:
            return json.dumps({"thought": "add the numbers", "tool": "add"})
        return json.dumps({"thought": "I know it", "tool": "finish"})
    if "Write the arguments for the tool" in text:
        a, b = (int(x) for x in re.findall(r"\d+", current.split("Trajectory")[0])[:2])
        return json.dumps({"args": {"a": a, "b": b}})
    seen = re.findall(r"Observation \d+: (-?\d+)", current)
    value = int(seen[-1]) if seen else 0
    return json.dumps({"result": value}) if req.json_schema is not None else f"Result: {value}"


def agent_rows(n: int) -> list[dict]:
    return [{"question": f"What is {i + 3} + {2 * i}?", "result": 3 * i + 3} for i in range(n)]


def result_match(example, pred, trace=None) -> float:  # noqa: ANN001
    return float(pred is not None and pred["result"] == example["result"])


def labels_match(example, pred, trace=None) -> float:  # noqa: ANN001
    return float(pred is not None and list(pred["labels"]) == list(example["labels"]))


def map_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        word, label = ("good", "positive") if i % 2 else ("bad", "negative")
        rows.append({"sentences": [f"{word} film {i}a", f"{word} film {i}b"], "labels": [label, label]})
    return rows


def ctx(fn) -> lg.RunContext:  # noqa: ANN001
    return lg.RunContext(lm=FunctionLM(fn), cache=False)


# ---------------------------------------------------------------- the tree

def test_named_parameters_list_the_nested_modules() -> None:
    params = dict(mixed_program().named_parameters())
    for path in ("refine.max_rounds", "refine.generator.instructions", "refine.generator.demos",
                 "refine.judge.demos", "answer_each.concurrency", "answer_each.solve.instructions",
                 "answer_each.solve.demos", "agent.instructions", "agent.demos", "agent.step.demos",
                 "agent.max_steps", "agent.format"):
        assert path in params, path
    assert all(isinstance(p, Param) for p in params.values())
    gen = params["refine.generator.demos"]
    assert gen.kind == "demos" and gen.value == () and gen.signature.shorthand() == "question -> answer"
    step = params["agent.step.demos"]
    assert step.kind == "demos" and step.name == "step.demos"
    assert step.signature.input_names == ("question", "trajectory")
    assert step.signature.output_names == ("thought", "tool")
    assert params["agent.demos"].signature.shorthand() == "question -> result: int"
    assert params["refine.max_rounds"] == Param("max_rounds", "max_rounds", 2)
    # the old protocol saw none of these: no top-level demos for Refine or Map
    assert demo_nodes(mixed_program()) == ["agent"]
    assert demo_nodes(mixed_program(), nested=True) == ["refine.generator", "refine.judge", "answer_each.solve",
                                                        "agent", "agent.step"]


def test_with_parameters_round_trips_and_leaves_the_original_alone() -> None:
    prog = mixed_program()
    step_demo = {"question": "What is 1 + 2?", "trajectory": "(no steps yet)", "thought": "add", "tool": "add"}
    new = prog.with_parameters({
        "refine.generator.instructions": "Answer in one word.",
        "answer_each.solve.demos": [{"question": "q1", "answer": "a1"}],
        "agent.step.demos": [step_demo],
        "refine.max_rounds": 3,
    })
    assert new.module("refine.generator").instructions == "Answer in one word."
    assert new.module("refine").max_rounds == 3
    assert new.module("answer_each.solve").demos == ({"question": "q1", "answer": "a1"},)
    assert new.module("agent").step_demos == (step_demo,)
    assert new.parameter("agent.step.demos").value == (step_demo,)
    # the input program is untouched, and setting the old values back gives it again (same hash)
    assert prog.module("refine.generator").demos == () and prog.module("answer_each.solve").demos == ()
    old = {p: prog.parameter(p).value for p in ("refine.generator.instructions", "answer_each.solve.demos",
                                                "agent.step.demos", "refine.max_rounds")}
    back = new.with_parameters(old)
    assert back == prog and back.content_hash() == prog.content_hash()
    # nested modules can be swapped by path too
    swapped = prog.replace_modules({"answer_each.solve": lg.Predict("question -> answer", format="json")})
    assert swapped.parameter("answer_each.solve.format").value == "json"


def test_with_parameters_validates_values_and_paths() -> None:
    prog = mixed_program()
    with pytest.raises(DefinitionError, match="lacks field 'answer'") as ei:
        prog.with_parameters({"answer_each.solve.demos": [{"question": "q"}]})
    assert ei.value.node == "answer_each" and "solve" in str(ei.value)
    with pytest.raises(DefinitionError, match="unknown prompt format"):
        prog.with_parameters({"refine.generator.format": "yaml"})
    with pytest.raises(DefinitionError, match="setting step.demos: .*expected one of add, finish"):
        prog.with_parameters({"agent.step.demos": [{"question": "q", "trajectory": "", "thought": "t",
                                                    "tool": "multiply"}]})
    # unknown paths name the path and the close matches
    with pytest.raises(DefinitionError, match=r"no parameter 'refine\.generator\.demo'") as ei:
        prog.with_parameters({"refine.generator.demo": []})
    assert "'refine.generator.demos'" in str(ei.value)
    with pytest.raises(DefinitionError, match=r"'answer_each\.solve\.demos'"):
        prog.with_parameters({"answer_each.solver.demos": []})
    with pytest.raises(DefinitionError, match="no parameter 'nowhere.demos'") as ei:
        prog.with_parameters({"nowhere.demos": []})
    assert "nodes: refine" in str(ei.value) or "did you mean" in str(ei.value)
    with pytest.raises(DefinitionError, match="no parameter 'refine'"):
        prog.with_parameters({"refine": 3})
    with pytest.raises(DefinitionError, match="has no child module 'critic'"):
        prog.module("refine.critic")
    with pytest.raises(DefinitionError, match="no parameter"):
        prog.parameter("agent.step.instructions")


# ---------------------------------------------------------------- optimizers fill nested demos

TRAIN, VAL = sentiment_rows(40)[:20], sentiment_rows(40)[20:]


def generator_requests(lm: FunctionLM) -> list[str]:
    return [request_text(r) for r in lm.calls if r.json_schema is None]


@pytest.mark.parametrize("make", [lambda: LabeledFewShot(2), lambda: BootstrapFewShot(2)],
                         ids=["labeled", "bootstrap"])
def test_refine_generator_gets_demos_and_its_prompt_carries_them(make) -> None:  # noqa: ANN001
    prog = refine_program()
    new, rep = make().optimize(prog, TRAIN, label_accuracy(), valset=VAL, ctx=ctx(judge_or(sentiment_fn)))
    assert rep.baseline.mean == 0.5 and rep.best.mean == 1.0 and rep.best.status == "accepted"
    demos = new.module("refine.generator").demos
    assert len(demos) == 2 and all(set(d) == {"sentence", "sentiment"} for d in demos)
    assert new.module("refine.judge").demos == ()  # a judge's fields do not map and are not bootstrapped
    assert rep.best.changes == {"refine.generator": {"demos": 2}}
    # the inner prompt the model receives carries them
    lm = FunctionLM(judge_or(sentiment_fn))
    out = new.run_sync(lg.RunContext(lm=lm, cache=False), sentence="good film 99")
    assert out.label == "positive"
    (prompt,) = generator_requests(lm)
    for d in demos:
        assert f"Sentence: {d['sentence']}\nSentiment: {d['sentiment']}" in prompt
    # diff and its text show the nested change by path
    d = diff(prog, new)
    assert d["changed"] == {"refine": {"generator.demos": {"before": 0, "after": 2, "added": 2, "removed": 0}}}
    assert "    generator.demos: 0 -> 2 (+2 -0)" in format_diff(d)


@pytest.mark.parametrize("make", [lambda: LabeledFewShot(2), lambda: BootstrapFewShot(2)],
                         ids=["labeled", "bootstrap"])
def test_map_sub_program_node_gets_demos_and_its_prompt_carries_them(make) -> None:  # noqa: ANN001
    prog = map_program()
    rows = map_rows(24)
    new, rep = make().optimize(prog, rows[:12], labels_match, valset=rows[12:], ctx=ctx(sentiment_fn))
    assert rep.baseline.mean == 0.5 and rep.best.mean == 1.0 and rep.best.status == "accepted"
    demos = new.module("each.solve").demos
    assert len(demos) == 2
    for d in demos:  # one demo per item: (sentence, its own label)
        assert d["sentiment"] == ("positive" if d["sentence"].startswith("good") else "negative")
    assert rep.best.changes == {"each.solve": {"demos": 2}}
    lm = FunctionLM(sentiment_fn)
    out = new.run_sync(lg.RunContext(lm=lm, cache=False), sentences=["bad film x", "good film y"])
    assert out.labels == ["negative", "positive"]
    assert len(lm.calls) == 2
    for req in lm.calls:
        for d in demos:
            assert f"Sentence: {d['sentence']}\nSentiment: {d['sentiment']}" in request_text(req)
    assert "generator" not in format_diff(diff(prog, new))
    assert "    solve.demos: 0 -> 2 (+2 -0)" in format_diff(diff(prog, new))


def test_labeled_demos_for_a_map_node_come_one_per_item() -> None:
    rows = map_rows(3)
    got = labeled_demos(map_program(), rows, 3, nested=True)
    assert got == {"each.solve": [{"sentence": "bad film 0a", "sentiment": "negative"},
                                  {"sentence": "bad film 0b", "sentiment": "negative"},
                                  {"sentence": "good film 1a", "sentiment": "positive"}]}
    assert labeled_demos(map_program(), rows, 3) == {}  # top-level only by default (old callers)


def test_calltool_step_demos_are_bootstrapped_from_passing_trajectories() -> None:
    prog = agent_program()
    rows = agent_rows(24)
    new, rep = BootstrapFewShot(2).optimize(prog, rows[:12], result_match, valset=rows[12:], ctx=ctx(agent_fn))
    assert rep.baseline.mean == 0.5 and rep.best.mean == 1.0 and rep.best.status == "accepted"
    steps = new.module("agent").step_demos
    assert steps and {d["tool"] for d in steps} <= {"add", "finish"}
    first = next(d for d in steps if d["tool"] == "add")
    assert first["trajectory"] == "(no steps yet)" and first["thought"] == "add the numbers"
    done = [d for d in steps if d["tool"] == "finish"]
    assert all("Observation 1:" in d["trajectory"] for d in done)
    assert "agent.step" in rep.best.changes
    # the choose call of the compiled program shows them (as demo turns before the question)
    lm = FunctionLM(agent_fn)
    out = new.run_sync(lg.RunContext(lm=lm, cache=False), question="What is 5 + 4?")
    assert out.result == 9
    choose = [r for r in lm.calls if "choose one tool by its name" in request_text(r)]
    assert len(choose[0].messages) == 2 + 2 * len(steps)
    assert first["question"] in request_text(choose[0])
    assert "    step.demos: 0 -> " in format_diff(diff(prog, new))


def test_nested_demos_survive_save_and_load(tmp_path: Path) -> None:
    prog = with_demos(mixed_program(), {
        "refine.generator": [{"question": "q", "answer": "a"}],
        "answer_each.solve": [{"question": "q2", "answer": "a2"}],
        "agent.step": [{"question": "What is 1 + 2?", "trajectory": "(no steps yet)", "thought": "t",
                        "tool": "add"}]})
    path = save_artifact(tmp_path / "c.json", prog)
    back, _ = load_artifact(path, resources={"add": add})
    assert back.content_hash() == prog.content_hash() and back == prog
    for target in ("refine.generator", "answer_each.solve", "agent.step"):
        assert back.parameter(f"{target}.demos").value == prog.parameter(f"{target}.demos").value
    # a program without step demos saves as before (no new key)
    assert "step_demos" not in json.dumps(mixed_program().to_dict())
    # diff from saved files shows nested changes by path
    plain = mixed_program().save(tmp_path / "p.json")
    d = diff(plain, path)
    assert set(d["changed"]) == {"refine", "answer_each", "agent"}
    assert d["changed"]["agent"] == {"step.demos": {"before": 0, "after": 1, "added": 1, "removed": 0}}
    assert d["changed"]["answer_each"] == {"solve.demos": {"before": 0, "after": 1, "added": 1, "removed": 0}}


def test_instruction_search_tunes_a_nested_generator() -> None:
    from lmgraph.optimizers import InstructionSearch

    good = "Write the opposite of the word."
    antonyms = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "old": "new", "wet": "dry",
                "high": "low", "rich": "poor"}
    rows = [{"word": w, "antonym": a} for w, a in antonyms.items()] * 4

    def task(req: lg.LMRequest) -> str:
        text = request_text(req)
        word = text.rsplit("Word:", 1)[-1].split("\n", 1)[0].strip()
        return " " + (antonyms.get(word, word) if "opposite of" in text else word)

    def proposer(req: lg.LMRequest) -> str:
        return ["Repeat the word.", good, "Spell the word."][req.rollout % 3]

    p = lg.Pipeline("antonyms")
    gen = lg.Predict("word -> antonym", format="completion")
    r = p.add(Refine(gen, judge=Critique("word, antonym", format="json")), name="refine", word=p.input("word"))
    p.output(antonym=r.antonym)
    prog = p.build()
    c = lg.RunContext(lm=FunctionLM(judge_or(task)), lms={"proposer": FunctionLM(proposer)}, cache=False)
    new, rep = InstructionSearch(3, proposer_lm="proposer", nodes=["refine.generator"], minibatch_size=4).optimize(
        prog, rows[:16], lambda ex, pred, trace=None: float(pred["antonym"] == ex["antonym"]), valset=rows[16:], ctx=c)
    assert new.module("refine.generator").instructions == good and rep.best.mean == 1.0
    assert new.module("refine.judge") == prog.module("refine.judge")
    assert diff(prog, new)["changed"]["refine"]["generator.instructions"]["after"] == good


def test_the_session_records_nested_io_only_for_nested_modules(tmp_path: Path) -> None:
    def entries(prog: lg.Program, fn, name: str) -> list[dict]:  # noqa: ANN001
        ck = tmp_path / f"{name}.ckpt.json"
        BootstrapFewShot(2, checkpoint=ck).optimize(prog, TRAIN, label_accuracy(), valset=VAL, ctx=ctx(fn))
        return [json.loads(line)["entry"] for line in ck.read_text().splitlines()[1:]]

    from helpers import sentiment_program

    plain = entries(sentiment_program(), sentiment_fn, "plain")
    assert all("params_io" not in ex for e in plain for ex in e["examples"])  # entries as before
    nested = entries(refine_program(), judge_or(sentiment_fn), "refine")
    ok = [ex for e in nested for ex in e["examples"] if ex["ok"]]
    assert ok and all(set(ex["params_io"]) == {"refine.generator"} for ex in ok)
    io = ok[0]["params_io"]["refine.generator"][0]
    assert set(io["inputs"]) == {"sentence"} and set(io["outputs"]) == {"sentiment"}


def test_best_of_n_children_and_the_judge_are_in_the_tree() -> None:
    p = lg.Pipeline("b")
    b = p.add(lg.BestOfN(lg.Predict("question -> answer"), n=3, select="judge"), name="best",
              question=p.input("question"))
    p.output(answer=b.answer)
    prog = p.build()
    paths = [path for path, _ in prog.named_parameters()]
    assert paths[:2] == ["best.n", "best.temperature"]
    assert "best.module.demos" in paths and "best.judge.instructions" in paths
    new = prog.with_parameters({"best.judge.instructions": "Be strict.", "best.module.format": "json", "best.n": 5})
    assert new.module("best.judge").instructions == "Be strict." and new.module("best").n == 5
    assert new.module("best.module").format == "json" and prog.module("best.module").format == "auto"
