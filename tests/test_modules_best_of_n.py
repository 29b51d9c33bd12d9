"""BestOfN: n samples with distinct rollouts, selected by vote, judge or a reward function."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError, OutputParseError
from lmgraph.modules import BestOfN, ChainOfThought, Critique, Map, Predict, Retrieve
from lmgraph.modules.best_of_n import vote_key
from lmgraph.testing import FunctionLM, request_text


def by_rollout(answers: list[str], judge: Callable[[str], str] | None = None) -> FunctionLM:
    def fn(req: lg.LMRequest) -> str:
        t = request_text(req)
        if "Verdict" in t and judge is not None:
            return judge(t)
        return answers[req.rollout % len(answers)]

    return FunctionLM(fn)


def best_program(module: BestOfN) -> lg.Program:
    p = lg.Pipeline("best")
    node = p.add(module, question=p.input("question"))
    p.output(answer=node.answer, votes=node.votes)
    return p.build()


def test_vote_picks_the_majority_with_distinct_rollouts() -> None:
    lm = by_rollout(["Answer: Lyon", "Answer: paris.", "Answer: Paris", "Answer: Nice", "Answer: PARIS"])
    out = best_program(BestOfN(Predict("question -> answer"), n=5)).run_sync(
        lg.RunContext(lm=lm, cache=False), question="Capital of France?")
    assert (out.answer, out.votes) == ("paris.", 3)  # the first Paris sample is returned
    assert sorted(r.rollout for r in lm.calls) == [0, 1, 2, 3, 4]
    assert {r.temperature for r in lm.calls} == {0.7}
    meta = out.trace.node("best_of_n").meta["best_of_n"]
    assert meta["picked"] == 1 and meta["candidates"].count("paris") == 3


def test_ties_go_to_the_first_sample_and_outer_rollouts_do_not_overlap() -> None:
    lm = by_rollout(["Answer: A", "Answer: B"])
    prog = best_program(BestOfN(Predict("question -> answer"), n=2, temperature=1.0))
    out = prog.run_sync(lg.RunContext(lm=lm, cache=False), question="q")
    assert (out.answer, out.votes) == ("A", 1)
    lm.calls.clear()
    prog.run_sync(lg.RunContext(lm=lm, cache=False, rollout=1), question="q")
    assert sorted(r.rollout for r in lm.calls) == [2, 3]


def test_samples_are_cached_per_rollout() -> None:
    from lmgraph.cache import MemoryCache

    lm = by_rollout(["Answer: x", "Answer: y", "Answer: x"])
    ctx = lg.RunContext(lm=lm, cache=MemoryCache())
    prog = best_program(BestOfN(Predict("question -> answer"), n=3))
    assert prog.run_sync(ctx, question="q").answer == "x"
    assert prog.run_sync(ctx, question="q").answer == "x"
    assert len(lm.calls) == 3  # the second run is served from the cache


def test_chain_of_thought_votes_on_the_answer_not_the_reasoning() -> None:
    lm = by_rollout(["Reasoning: a\nAnswer: 4", "Reasoning: b\nAnswer: 5", "Reasoning: c\nAnswer: 4"])
    m = BestOfN(ChainOfThought("question -> answer: int"), n=3)
    assert m.vote_field == "answer"
    out = best_program(m).run_sync(lg.RunContext(lm=lm, cache=False), question="2+2")
    assert (out.answer, out.votes) == (4, 2)


def test_judge_picks_the_first_accepted_sample() -> None:
    lm = by_rollout(["Answer: Lyon", "Answer: Lyon", "Answer: Paris"],
                    judge=lambda t: "Feedback: ok\nVerdict: " + ("yes" if "Answer: Paris" in t else "no"))
    m = BestOfN(Predict("question -> answer"), n=3, select="judge")
    assert isinstance(m.judge, Critique) and m.judge.signature.input_names == ("question", "answer")
    out = best_program(m).run_sync(lg.RunContext(lm=lm, cache=False), question="Capital of France?")
    assert (out.answer, out.votes) == ("Paris", 1)
    # no accepted sample: fall back to the vote
    lm2 = by_rollout(["Answer: Lyon", "Answer: Lyon", "Answer: Paris"], judge=lambda t: "Feedback: no\nVerdict: no")
    out = best_program(m).run_sync(lg.RunContext(lm=lm2, cache=False), question="Capital of France?")
    assert (out.answer, out.votes) == ("Lyon", 2)


def test_reward_picks_the_highest_score() -> None:
    def longest(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> float:
        return len(outputs["answer"])

    lm = by_rollout(["Answer: ab", "Answer: abcd", "Answer: abc"])
    m = BestOfN(Predict("question -> answer"), n=3, select="reward", reward=longest)
    out = best_program(m).run_sync(lg.RunContext(lm=lm, cache=False), question="q")
    assert out.answer == "abcd"
    assert m.resources() == {"longest": longest}


def test_failed_samples_are_skipped_unless_all_fail() -> None:
    lm = by_rollout(["", "Answer: ok", ""])
    out = best_program(BestOfN(Predict("question -> answer"), n=3)).run_sync(
        lg.RunContext(lm=lm, cache=False), question="q")
    assert out.answer == "ok"
    with pytest.raises(OutputParseError):
        best_program(BestOfN(Predict("question -> answer"), n=2)).run_sync(
            lg.RunContext(lm=by_rollout([""]), cache=False), question="q")


def test_vote_key() -> None:
    assert vote_key("  Paris. ") == vote_key("paris") == "paris"
    assert vote_key({"b": 1, "a": [2]}) == vote_key({"a": [2], "b": 1})


@pytest.mark.parametrize("make", [
    lambda: BestOfN(Predict("q -> a"), n=0),
    lambda: BestOfN(Predict("q -> a"), select="best"),
    lambda: BestOfN(Predict("q -> a"), select="reward"),
    lambda: BestOfN(Predict("q -> a"), select="reward", reward=lambda i, o: 1.0),
    lambda: BestOfN(Predict("q -> a"), judge=Critique("q, a")),
    lambda: BestOfN(Predict("q -> a"), select="judge", judge=Critique("q, b")),
    lambda: BestOfN(Predict("q -> a, votes: int")),
    lambda: BestOfN(Predict("q -> a"), vote_on="b"),
    lambda: BestOfN(Retrieve(["doc"])),
    lambda: BestOfN(Map(best_program(BestOfN(Predict("question -> answer"))), over="question")),
])
def test_bad_config(make: Callable[[], object]) -> None:
    with pytest.raises(DefinitionError, match="Fix:"):
        make()
