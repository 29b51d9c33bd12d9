"""Demos that do not fit the model's context window are left out, farthest from the input first.

Unit tests: a FunctionLM that refuses prompts over a length, as a backend refuses a prompt over
its context window (LMError marked ``context_overflow``), and the wordings of the providers
(an OpenAI-compatible server's answer: ``tests/test_openai_http.py``). Integration: the real
embedded model with a small ``n_ctx``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import lmgraph as lg
from lmgraph.errors import LMError
from lmgraph.evaluation import evaluate_sync
from lmgraph.lm.base import LMRequest, LMResponse
from lmgraph.lm.faults import mark_context_overflow
from lmgraph.testing import FunctionLM, request_text

SIG = "question -> answer"


def limited(limit: int, answer: str = "Answer: forty-two") -> FunctionLM:
    """A model whose context holds ``limit`` characters of prompt."""
    def fn(request: LMRequest) -> str | LMResponse:
        text = request_text(request)
        if len(text) > limit:
            raise LMError(f"Requested tokens ({len(text)}) exceed context window of {limit}",
                          context_overflow=True)
        if request.choices is not None:
            return request.choices[-1].strip()
        if request.json_schema is not None:
            return json.dumps({"answer": answer.split(": ", 1)[-1]})
        return answer
    return FunctionLM(fn)


def one_node(module: lg.Module) -> lg.Program:
    p = lg.Pipeline("qa")
    q = p.input("question")
    node = p.add(module, name="qa", question=q)
    p.output(answer=node.answer)
    return p.build()


def demo(tag: str, size: int = 200) -> dict[str, str]:
    return {"question": f"{tag} " + "x" * size, "answer": tag}


def ctx(lm: Any) -> lg.RunContext:
    return lg.RunContext(lm=lm, cache=False)


def test_demos_that_do_not_fit_are_dropped_first_shown_first_and_the_row_is_answered() -> None:
    demos = [demo(t) for t in ("first", "second", "third", "fourth")]
    lm = limited(650)  # room for two 200-character demos and the question, not for four
    out = one_node(lg.Predict(SIG, demos=demos)).run_sync(ctx(lm), question="What is six times seven?")
    assert out.answer == "forty-two"
    trace = out.trace.node("qa")
    assert trace.meta["demos_dropped"] == 2
    sent = request_text(lm.calls[-1])
    assert "third" in sent and "fourth" in sent  # the demos next to the input stay
    assert "first" not in sent and "second" not in sent
    assert len(lm.calls) == 3  # refused with 4 and 3 demos, answered with 2
    assert [c.error is not None for c in trace.calls] == [True, True, False]  # refusals stay on record


def test_nearest_demos_keep_the_most_similar_when_the_context_is_short() -> None:
    topics = ["capital of France", "boiling point of water", "capital of Spain", "speed of light",
              "largest ocean", "tallest mountain"]
    pool = [{"question": t + " " + "y" * 150, "answer": t.split()[-1]} for t in topics]
    lm = limited(420)
    module = lg.Predict(SIG, demo_pool=pool, knn=3)
    question = "What is the capital of Italy?"
    ranked = module.demos_for({"question": question})  # least similar first, the nearest last
    out = one_node(module).run_sync(ctx(lm), question=question)
    assert out.trace.node("qa").meta["demos_dropped"] == 2
    sent = request_text(lm.calls[-1])
    assert f"Answer: {ranked[-1]['answer']}" in sent  # the nearest is what is left
    assert all(f"Answer: {d['answer']}\n" not in sent for d in ranked[:-1])


def test_a_prompt_that_fits_sends_every_demo_and_records_nothing() -> None:
    lm = limited(10_000)
    out = one_node(lg.Predict(SIG, demos=[demo("a"), demo("b")])).run_sync(ctx(lm), question="q?")
    assert len(lm.calls) == 1 and "demos_dropped" not in out.trace.node("qa").meta


def test_an_input_too_long_without_any_demo_fails_its_row_only_with_the_overflow_message() -> None:
    lm = limited(300)
    prog = one_node(lg.Predict(SIG, demos=[demo("a", 50)]))
    rows = [{"question": "short?", "answer": "forty-two"}, {"question": "z" * 400, "answer": "forty-two"}]
    def exact(ex: Any, pred: Any, trace: Any = None) -> float:
        return float(pred.answer == ex["answer"])
    res = evaluate_sync(prog, rows, exact, ctx=ctx(lm))
    assert res.scores[0] == 1.0 and res.scores[1] == 0.0  # the batch goes on; the long row is recorded
    assert "context window" in str(res.results[1].error)


@pytest.mark.parametrize("decode", ["score", "calibrated"])
def test_scored_and_calibrated_decoding_fit_their_demos_too(decode: str) -> None:
    sig = "question -> answer: Literal['no', 'yes']"
    demos = [{"question": t + " " + "x" * 200, "answer": "yes"} for t in ("one", "two", "three")]

    def fn(request: LMRequest) -> LMResponse:
        text = request_text(request)
        if len(text) > 520:
            raise LMError("Requested tokens exceed context window of 520", context_overflow=True)
        assert request.choices is not None
        items = [{"choice": c, "logprob": -1.0 - i, "tokens": 1} for i, c in enumerate(request.choices)]
        return LMResponse(text=request.choices[0], logprobs=items, model="fake", finish_reason="score")
    lm = FunctionLM(fn)
    out = one_node(lg.Predict(sig, demos=demos, decode=decode)).run_sync(ctx(lm), question="Is it?")
    assert out.answer in ("no", "yes")
    assert out.trace.node("qa").meta["demos_dropped"] == 2
    answered = [c for c in lm.calls if len(request_text(c)) <= 520]
    assert len(answered) == (2 if decode == "calibrated" else 1)  # the prior is scored with the same demo
    assert all("three" in request_text(c) and "two" not in request_text(c) for c in answered)


def test_a_refusal_that_is_not_an_overflow_is_not_retried_with_fewer_demos() -> None:
    def fn(request: LMRequest) -> str:
        raise LMError("bad request: unknown parameter", retryable=False)
    lm = FunctionLM(fn)
    with pytest.raises(LMError, match="unknown parameter"):
        one_node(lg.Predict(SIG, demos=[demo("a"), demo("b")])).run_sync(ctx(lm), question="q?")
    assert len(lm.calls) == 1


@pytest.mark.parametrize("text", [
    "Requested tokens (2301) exceed context window of 2048",  # llama.cpp, llama-cpp-python
    "This model's maximum context length is 2048 tokens, however you requested 2301 tokens",  # vLLM, l-c-p server
    '{"error": {"code": "context_length_exceeded", "message": "too long"}}',  # OpenAI
    "the request exceeds the available context size, try increasing it",  # llama.cpp's llama-server
    "litellm.ContextWindowExceededError: prompt is too long: 250000 tokens > 200000 maximum",  # Anthropic
])
def test_providers_wordings_of_an_overflow_are_recognised(text: str) -> None:
    err = mark_context_overflow(LMError("x", retryable=True), text)
    assert err.context_overflow and not err.retryable


@pytest.mark.parametrize("text", ["rate limit exceeded", "Internal server error", "max_tokens must be positive",
                                  "the context was cancelled"])
def test_other_errors_are_not_overflows(text: str) -> None:
    err = mark_context_overflow(LMError("x", retryable=True), text)
    assert not err.context_overflow and err.retryable


# --------------------------------------------------------------------------- the real model

@pytest.mark.integration
def test_the_embedded_model_answers_with_the_demos_its_context_holds() -> None:
    pytest.importorskip("llama_cpp")
    from lmgraph.lm.llamacpp import LlamaCppLM

    demos = [{"question": f"Fact {i}: " + "the river runs past the old mill and the bridge. " * 12,
              "answer": f"mill {i}"} for i in range(4)]  # ~130 tokens each: 4 do not fit 512
    prog = one_node(lg.Predict(SIG, demos=demos, format="completion", max_tokens=8))
    with LlamaCppLM(n_ctx=512, n_instances=1) as lm:
        first = prog.run_sync(lg.RunContext(lm=lm, cache=False), question="Where does the river run?")
        again = prog.run_sync(lg.RunContext(lm=lm, cache=False), question="Where does the river run?")
    node = first.trace.node("qa")
    assert 1 <= node.meta["demos_dropped"] <= 3
    assert node.calls[-1].error is None and node.calls[0].error is not None
    assert "context window" in node.calls[0].error
    assert isinstance(first.answer, str)
    assert again.answer == first.answer and again.trace.node("qa").meta["demos_dropped"] == node.meta["demos_dropped"]


def test_the_compile_report_says_where_demos_were_left_out_and_what_would_show_them_whole() -> None:
    from lmgraph.optimizers import Compile

    rows = [{"question": f"question {i} " + "about the long passage " * 8, "answer": "forty-two"} for i in range(40)]
    lm = limited(900)  # zero-shot fits; two demos of ~200 characters fit, four do not

    def exact(ex: Any, pred: Any, trace: Any = None) -> float:
        return float(pred.answer == ex["answer"])
    _, report = Compile(decodes=()).optimize(one_node(lg.Predict(SIG)), rows, exact,
                                             budget=lg.Budget(max_calls=600), ctx=ctx(lm))
    fit = report.data["demos_dropped"]["qa"]
    assert fit["rows"] > 0 and fit["demos"] >= fit["rows"]
    note = next(n for n in report.all_notes() if "context window" in n)
    assert "qa:" in note and "n_ctx" in note
    assert report.failures["error"] == 0  # no row was lost to the context window


def test_a_compile_whose_prompts_fit_reports_no_context_note() -> None:
    from lmgraph.optimizers import Compile

    rows = [{"question": f"question {i}", "answer": "forty-two"} for i in range(40)]

    def exact(ex: Any, pred: Any, trace: Any = None) -> float:
        return float(pred.answer == ex["answer"])
    _, report = Compile(decodes=()).optimize(one_node(lg.Predict(SIG)), rows, exact,
                                             budget=lg.Budget(max_calls=600), ctx=ctx(limited(100_000)))
    assert "demos_dropped" not in report.data
    assert not [n for n in report.all_notes() if "context window" in n]


def test_a_node_whose_demos_are_cut_warns_once_naming_the_node_and_the_fix() -> None:
    p = lg.Pipeline("qa")
    q = p.input("question")
    node = p.add(lg.Predict(SIG, demos=[demo(t) for t in ("w1", "w2", "w3")]), name="warned_once", question=q)
    p.output(answer=node.answer)
    prog = p.build()
    with pytest.warns(lg.ContextFitWarning, match="'warned_once'.*n_ctx") as caught:
        for _ in range(3):
            prog.run_sync(ctx(limited(500)), question="q?")
    assert len([w for w in caught if issubclass(w.category, lg.ContextFitWarning)]) == 1
