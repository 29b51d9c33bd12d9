"""Critique (judge) and Refine (bounded generate -> judge -> revise loop)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError
from lmgraph.modules import ChainOfThought, Critique, Predict, Refine
from lmgraph.testing import FunctionLM, request_text


def test_critique_signature_is_forced() -> None:
    c = Critique("question, answer")
    assert c.signature.shorthand() == "question, answer -> feedback, verdict: bool"
    assert Critique("question, answer -> verdict").signature.output("verdict").annotation is bool
    c2 = Critique("question, answer -> score: int")
    assert c2.signature.output_names == ("score", "feedback", "verdict")
    assert "`answer`" in c.instructions
    assert Critique("q, a", instructions="Be strict.").instructions == "Be strict."
    with pytest.raises(DefinitionError, match="Fix:"):
        Critique("question, feedback")


def test_critique_runs_as_a_node() -> None:
    lm = FunctionLM(lambda r: "Feedback: fine\nVerdict: yes")
    p = lg.Pipeline("judge")
    node = p.add(Critique("question, answer"), question=p.input("question"), answer=p.input("answer"))
    p.output(ok=node.verdict, why=node.feedback)
    out = p.build().run_sync(lg.RunContext(lm=lm, cache=False), question="q", answer="a")
    assert out.ok is True and out.why == "fine"


def test_critique_is_bounded_stopped_and_loops_are_collapsed() -> None:
    # issue 19: on the embedded model Critique wrote "no, no, no, ..." for 256 tokens
    from lmgraph.modules.critique import CRITIQUE_MAX_TOKENS, collapse_repeats

    assert Critique("question, answer").max_tokens == CRITIQUE_MAX_TOKENS <= 128
    assert Critique("q, a", max_tokens=300).max_tokens == 300
    loop = ", ".join(["no"] * 60)
    lm = FunctionLM(lambda r: f"Feedback: {loop}\nVerdict: no")
    p = lg.Pipeline("judge")
    node = p.add(Critique("question, answer", format="completion"), name="judge",
                 question=p.input("question"), answer=p.input("answer"))
    p.output(ok=node.verdict, why=node.feedback)
    out = p.build().run_sync(lg.RunContext(lm=lm, cache=False), question="q", answer="a")
    assert (out.ok, out.why) == (False, "no")
    assert out.trace.node("judge").meta["feedback_repeats_collapsed"] is True
    req = lm.calls[0]
    assert req.max_tokens == CRITIQUE_MAX_TOKENS
    assert {"\nQuestion:", "\nAnswer:", "\n\n"} <= set(req.stop)  # an invented next record stops it
    assert collapse_repeats("The answer is wrong. The answer is wrong. The answer is wrong. "
                            "The answer is wrong.") == "The answer is wrong."
    assert collapse_repeats("very very good; no no") == "very very good; no no"


def refine_program(module: Refine) -> lg.Program:
    p = lg.Pipeline("refined")
    node = p.add(module, question=p.input("question"))
    p.output(answer=node.answer, verdict=node.verdict, rounds=node.rounds)
    return p.build()


def fake(verdicts: list[str]) -> tuple[FunctionLM, list[str]]:
    texts: list[str] = []
    v = iter(verdicts)
    count = {"gen": 0}

    def fn(req: lg.LMRequest) -> str:
        t = request_text(req)
        texts.append(t)
        if "Verdict" in t:
            return f"Feedback: try harder {len(texts)}\nVerdict: {next(v)}"
        count["gen"] += 1
        return f"Answer: draft {count['gen']}"

    return FunctionLM(fn), texts


def test_refine_stops_early_on_a_passing_verdict() -> None:
    lm, _texts = fake(["yes"])
    out = refine_program(Refine(Predict("question -> answer"), max_rounds=3)).run_sync(
        lg.RunContext(lm=lm, cache=False), question="q?")
    assert (out.answer, out.verdict, out.rounds) == ("draft 1", True, 1)
    assert len(lm.calls) == 2


@pytest.mark.parametrize("max_rounds", [1, 2, 3])
def test_refine_is_bounded_on_failing_verdicts(max_rounds: int) -> None:
    lm, texts = fake(["no"] * 10)
    out = refine_program(Refine(Predict("question -> answer"), max_rounds=max_rounds)).run_sync(
        lg.RunContext(lm=lm, cache=False), question="q?")
    assert len(lm.calls) == 2 * max_rounds
    assert (out.answer, out.verdict, out.rounds) == (f"draft {max_rounds}", False, max_rounds)
    assert len(out.trace.node("refine").meta["rounds"]) == max_rounds
    if max_rounds > 1:  # the revision sees the previous attempt and the judge's feedback
        assert "draft 1" in texts[2] and "try harder 2" in texts[2]


def test_refine_with_chain_of_thought_and_custom_judge() -> None:
    verdicts = iter(["no", "yes"])

    def fn(req: lg.LMRequest) -> str:
        t = request_text(req)
        if "Verdict" in t:
            assert "Reasoning" not in t.split("[user]")[-1]  # the judge reads only answer + question
            return f"Feedback: check units\nVerdict: {next(verdicts)}"
        return "Reasoning: think\nAnswer: 42"

    gen = ChainOfThought("question -> answer", demos=[{"question": "q0", "reasoning": "r0", "answer": "a0"}])
    m = Refine(gen, judge=Critique("question, answer", instructions="Is it right?"), max_rounds=2)
    out = refine_program(m).run_sync(lg.RunContext(lm=FunctionLM(fn), cache=False), question="q?")
    assert (out.answer, out.verdict, out.rounds) == ("42", True, 2)
    assert m.signature.output_names == ("reasoning", "answer", "verdict", "rounds")
    assert set(m.submodules()) == {"generator", "judge"}
    assert m.replace(max_rounds=1).max_rounds == 1


@pytest.mark.parametrize("make", [
    lambda: Refine(Critique("a, b"), max_rounds=0),
    lambda: Refine("question -> answer"),
    lambda: Refine(Predict("question -> answer"), judge=Critique("question, summary")),
    lambda: Refine(Predict("question, feedback -> answer")),
    lambda: Refine(Predict("question -> answer, verdict")),
    lambda: Refine(Predict("question -> answer"), judge=Predict("question -> verdict")),
])
def test_refine_bad_config(make: Callable[[], object]) -> None:
    with pytest.raises(DefinitionError, match="Fix:"):
        make()
