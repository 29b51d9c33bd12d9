"""JSON round-trips of pipelines containing every module kind; resources are bound by name."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

import lmgraph as lg
from lmgraph.errors import ArtifactError
from lmgraph.modules import (
    MODULE_KINDS,
    BestOfN,
    CallTool,
    ChainOfThought,
    Critique,
    FunctionRetriever,
    Map,
    Plan,
    Predict,
    Refine,
    Retrieve,
)
from lmgraph.testing import FunctionLM, request_text

DOCS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Rome is in Italy."]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def score(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> float:
    return float(len(outputs["final"]))


def sub_program() -> lg.Program:
    p = lg.Pipeline("answer_step")
    n = p.add(Predict("question, step, passages: list[str] -> note"), question=p.input("question"),
              step=p.input("step"), passages=p.input("passages", list[str]))
    p.output(note=n.note)
    return p.build()


def everything() -> lg.Program:
    p = lg.Pipeline("everything")
    q = p.input("question")
    r = p.add(Retrieve(DOCS, k=2), query=q)
    dense = p.add(Retrieve(FunctionRetriever(lambda q, k: [q], name="dense"), k=1), name="dense", query=q)
    plan = p.add(Plan("question, passages: list[str] -> steps: list[str]", max_steps=3),
                 question=q, passages=r.passages)
    notes = p.add(Map(sub_program(), over="step", concurrency=2), question=q, step=plan.steps,
                  passages=dense.passages)
    tools = p.add(CallTool("question, notes: list[str] -> answer", [add], max_steps=2,
                           demos=[{"question": "q", "notes": ["n"], "answer": "a"}]),
                  question=q, notes=notes.note)
    refine = p.add(Refine(ChainOfThought("question, draft -> answer"), max_rounds=2),
                   question=q, draft=tools.answer)
    best = p.add(BestOfN(Predict("question, answer -> final"), n=2, select="reward", reward=score),
                 question=q, answer=refine.answer)
    judged = p.add(BestOfN(Predict("question -> answer", temperature=0.2), n=3, select="judge"),
                   name="judged", question=q)
    check = p.add(Critique("question, final"), question=q, final=best.final)
    p.output(final=best.final, ok=check.verdict, rounds=refine.rounds, alt=judged.answer)
    return p.build()


def test_every_kind_is_covered() -> None:
    kinds = {n.kind for n in everything().nodes}
    assert kinds >= {"retrieve", "plan", "map", "call_tool", "refine", "critique", "best_of_n"}
    assert kinds <= set(MODULE_KINDS)


def test_round_trip_gives_an_equal_program() -> None:
    prog = everything()
    data = json.loads(prog.to_json())  # really through JSON text
    assert set(prog.resources()) == {"retrieve.corpus", "dense", "add", "score"}  # a list: named after its node
    again = lg.Program.from_dict(data, resources=prog.resources())
    assert again == prog
    assert again.content_hash() == prog.content_hash()
    assert again.to_dict() == prog.to_dict()
    for name in prog.order:
        assert again.module(name) == prog.module(name)
    # plain objects work as resources too: a corpus list, a bare function
    again2 = lg.Program.from_dict(data, resources={**prog.resources(), "retrieve.corpus": DOCS, "add": add})
    assert again2 == prog


def test_round_trip_keeps_tuned_parameters() -> None:
    prog = everything()
    tuned = prog.replace_modules({
        "plan": prog.module("plan").replace(max_steps=5, instructions="Split."),
        "retrieve": prog.module("retrieve").replace(k=1),
        "call_tool": prog.module("call_tool").replace(max_steps=4, format="chat"),
        "refine": prog.module("refine").replace(max_rounds=3),
        "best_of_n": prog.module("best_of_n").replace(n=4, temperature=1.0),
        "map": prog.module("map").replace(concurrency=8),
    })
    assert tuned != prog
    again = lg.Program.from_dict(json.loads(tuned.to_json()), resources=tuned.resources())
    assert again == tuned
    assert again.module("plan").max_steps == 5 and again.module("refine").max_rounds == 3


@pytest.mark.parametrize("missing, what", [("retrieve.corpus", "retriever"), ("dense", "retriever"),
                                            ("add", "tool"), ("score", "reward function")])
def test_missing_resources_name_the_resource(missing: str, what: str) -> None:
    prog = everything()
    resources = {k: v for k, v in prog.resources().items() if k != missing}
    with pytest.raises(ArtifactError, match=f"{what} named '{missing}'"):
        lg.Program.from_dict(prog.to_dict(), resources=resources)


def test_map_resources_inside_the_sub_program_are_needed_too() -> None:
    p = lg.Pipeline("outer")
    inner = lg.Pipeline("inner")
    r = inner.add(Retrieve(DOCS, name="wiki"), query=inner.input("q"))
    inner.output(passages=r.passages)
    node = p.add(Map(inner.build(), over="q"), q=p.input("qs", list[str]))
    p.output(passages=node.passages)
    prog = p.build()
    assert set(prog.resources()) == {"wiki"}
    with pytest.raises(ArtifactError, match="retriever named 'wiki'"):
        lg.Program.from_dict(prog.to_dict())
    again = lg.Program.from_dict(prog.to_dict(), resources={"wiki": DOCS})
    assert again == prog
    out = again.run_sync(lg.RunContext(lm=FunctionLM(lambda r: ""), cache=False), qs=["Italy", "Germany"])
    assert [ps[0] for ps in out.passages] == ["Rome is in Italy.", "Berlin is the capital of Germany."]


def test_render_describes_each_kind() -> None:
    text = everything().render()
    for bit in ("Retrieve[retrieve.corpus, k=2]", "Plan[auto, max_steps=3]", "Map[answer_step over step",
                "CallTool[add; max_steps=2", "Refine[ChainOfThought", "BestOfN[Predict", "reward score",
                "Critique[question, final"):
        assert bit in text, bit
    assert "flowchart" in everything().render("mermaid")


def test_the_whole_pipeline_runs_on_a_fake() -> None:
    def fn(req: lg.LMRequest) -> str:
        t = request_text(req)
        if '"tool"' in t:
            return '{"thought": "enough", "tool": "finish", "args": {}}'
        if "Verdict" in t:
            return "Feedback: fine\nVerdict: yes"
        if "Steps:" in t or ("steps" in t.split("[user]")[0].lower() and "sub-question" in t):
            return "Steps:\n1. a\n2. b\n3. c\n4. d"
        if "Reasoning" in t:
            return "Reasoning: r\nAnswer: Paris"
        if "Note" in t:
            return "Note: n"
        if "Final" in t:
            return "Final: Paris"
        return "Answer: Paris"

    out = everything().run_sync(lg.RunContext(lm=FunctionLM(fn), cache=False), question="Capital of France?")
    assert (out.final, out.ok, out.rounds, out.alt) == ("Paris", True, 1, "Paris")
    assert len(out.trace.node("map").children) == 3  # the plan was truncated to max_steps
