"""``lg.call(module, **inputs)`` / ``module(**inputs)``: one synchronous, in-process run of one module."""

from __future__ import annotations

import pytest

import lmgraph as lg
from lmgraph.modules.base import call
from lmgraph.testing import FunctionLM, ScriptedLM, request_text


def ctx_of(lm: lg.LM) -> lg.RunContext:
    return lg.RunContext(lm=lm, cache=False)


def test_call_runs_a_module_once_and_returns_the_prediction() -> None:
    lm = ScriptedLM(["Answer: Paris"])
    m = lg.Predict("question -> answer", format="completion")
    out = lg.call(m, question="What is the capital of France?", ctx=ctx_of(lm))
    assert isinstance(out, lg.Prediction) and out.answer == "Paris"
    assert out.trace.usage["calls"] == 1 and [n.node for n in out.trace.nodes] == ["predict"]
    assert "What is the capital of France?" in request_text(lm.calls[0])
    assert lg.call is call and "call" in lg.__all__


def test_calling_a_module_is_the_same() -> None:
    m = lg.ChainOfThought("question -> answer: int", format="completion")
    lm = FunctionLM(lambda r: "Reasoning: two and two.\nAnswer: 4")
    out = m(question="2 + 2?", ctx=ctx_of(lm))
    assert out.answer == 4 and out.reasoning == "two and two."
    assert m(ctx_of(lm), question="2 + 2?").answer == 4  # the context may come positionally


def test_call_works_for_kinds_without_a_model_and_for_composites() -> None:
    found = lg.call(lg.Retrieve(["Paris is in France.", "Rome is in Italy."], k=1), query="Rome",
                    ctx=ctx_of(ScriptedLM([])))
    assert found.passages == ["Rome is in Italy."]
    lm = FunctionLM(lambda r: "Feedback: fine\nVerdict: yes" if "Verdict" in request_text(r) else "Answer: 4")
    refined = lg.call(lg.Refine(lg.Predict("question -> answer", format="completion")), question="2 + 2?",
                      ctx=ctx_of(lm))
    assert refined.answer == "4" and refined.verdict is True and refined.rounds == 1


def test_an_input_called_ctx_is_an_input() -> None:
    m = lg.Predict("ctx -> answer", format="completion")
    lm = FunctionLM(lambda r: "Answer: seen")
    out = lg.call(m, ctx_of(lm), ctx="the context text")
    assert out.answer == "seen" and "the context text" in request_text(lm.calls[0])


def test_misuse_is_a_clear_error() -> None:
    with pytest.raises(lg.UsageError, match="runs a module"):
        lg.call("question -> answer", question="q")  # type: ignore[arg-type]
    with pytest.raises(lg.UsageError, match="ctx given twice"):
        lg.call(lg.Predict("question -> answer"), ctx_of(ScriptedLM([])), ctx=ctx_of(ScriptedLM([])), question="q")
    with pytest.raises(lg.LmgraphError, match="question"):
        lg.call(lg.Predict("question -> answer"), ctx=ctx_of(ScriptedLM([])))  # a missing input
