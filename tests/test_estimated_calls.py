"""Static model-call estimates: each module kind's ``estimated_calls()`` and the program sum the
budget checks and dry runs use."""

from __future__ import annotations

import pytest

import lmgraph as lg
from lmgraph.modules.map import FAN_OUT_GUESS
from lmgraph.optimizers import decompose_node
from lmgraph.optimizers.session import static_calls_per_example
from lmgraph.testing import FunctionLM, request_text


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def per_item() -> lg.Program:
    p = lg.Pipeline("item")
    a = p.add(lg.Predict("item -> label"), name="label", item=p.input("item"))
    p.output(label=a.label)
    return p.build()


@pytest.mark.parametrize("module, calls", [
    (lg.Predict("question -> answer"), 1),
    (lg.ChainOfThought("question -> answer"), 1),
    (lg.Plan(max_steps=7), 1),
    (lg.Critique("question, answer"), 1),
    (lg.Retrieve(["a text", "another"], k=2), 0),
    (lg.CallTool("question -> answer: int", [add], max_steps=4), 5),
    (lg.Refine(lg.Predict("question -> answer"), max_rounds=3), 6),
    (lg.BestOfN(lg.Predict("question -> answer"), n=3), 3),
    (lg.BestOfN(lg.Predict("question -> answer"), n=3, select="judge"), 6),
    (lg.BestOfN(lg.CallTool("question -> answer: int", [add], max_steps=2), n=2), 6),
    (lg.Map(per_item(), over="item"), FAN_OUT_GUESS),
])
def test_module_estimates(module: lg.Module, calls: int) -> None:
    assert module.estimated_calls() == calls


def _mapped(source: str) -> lg.Program:
    p = lg.Pipeline("outer")
    if source == "plan":
        items = p.add(lg.Plan("task -> steps: list[str]", max_steps=3), name="plan", task=p.input("task")).steps
    elif source == "retrieve":
        items = p.add(lg.Retrieve(["x", "y", "z"], k=2), name="search", query=p.input("task")).passages
    elif source == "const":
        items = lg.const(["a", "b", "c", "d", "e", "f"])
    else:
        items = p.input("items", list[str])
    m = p.add(lg.Map(per_item(), over="item"), name="each", item=items)
    p.output(labels=m.label)
    return p.build()


@pytest.mark.parametrize("source, calls", [
    ("plan", 1 + 3),  # the plan, then one call per step at most
    ("retrieve", 0 + 2),  # the search is free; at most k passages
    ("const", 6),
    ("input", FAN_OUT_GUESS),  # nothing bounds a pipeline input's length: a guess
])
def test_map_fan_out_comes_from_upstream(source: str, calls: int) -> None:
    prog = _mapped(source)
    assert prog.estimated_calls() == calls == static_calls_per_example(prog)


def test_decomposition_counts_its_fan_out() -> None:
    p = lg.Pipeline("adder")
    a = p.add(lg.Predict("numbers -> total: int"), name="add", numbers=p.input("numbers"))
    p.output(total=a.total)
    prog = p.build()
    assert static_calls_per_example(prog) == 1
    # plan + max_steps solver calls + combine
    assert static_calls_per_example(decompose_node(prog, "add", max_steps=3)) == 5


def test_static_count_is_at_least_one() -> None:
    p = lg.Pipeline("search")
    r = p.add(lg.Retrieve(["a", "b"]), name="search", query=p.input("query"))
    p.output(passages=r.passages)
    prog = p.build()
    assert prog.estimated_calls() == 0 and static_calls_per_example(prog) == 1


def test_refine_estimate_is_its_worst_case() -> None:
    def fn(req: lg.LMRequest) -> str:  # the judge never accepts: every round runs
        text = request_text(req)
        if "Verdict" in text or "verdict" in text:
            return "Feedback: try again\nVerdict: no"
        return "Answer: 42"

    p = lg.Pipeline("refine")
    n = p.add(lg.Refine(lg.Predict("question -> answer"), max_rounds=3), name="refine",
              question=p.input("question"))
    p.output(answer=n.answer, rounds=n.rounds)
    prog = p.build()
    lm = FunctionLM(fn)
    out = prog.run_sync(lg.RunContext(lm=lm, cache=False), question="?")
    assert out.rounds == 3 and len(lm.calls) == prog.estimated_calls() == 6
