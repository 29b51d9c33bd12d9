"""Staged validation: a candidate clearly worse than the incumbent is dropped after a stage."""

from __future__ import annotations

import lmgraph as lg
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import BootstrapRandomSearch, LabeledFewShot
from lmgraph.testing import FunctionLM

from helpers import request_text, sentiment_fn, sentiment_program, sentiment_rows

ROWS = sentiment_rows(80)
TRAIN, VAL = ROWS[:40], ROWS[40:]


def demos_hurt(req: lg.LMRequest) -> str:
    """Zero-shot: always right. With any demo in the prompt: always 'negative' (half wrong)."""
    import re

    text = request_text(req)
    last = re.findall(r"Sentence: (.*)", text)[-1]
    if text.count("Sentence:") > 1:
        return " negative"
    return " " + ("positive" if "good" in last else "negative")


def ctx(fn) -> lg.RunContext:  # noqa: ANN001
    return lg.RunContext(lm=FunctionLM(fn), cache=False)


def test_a_clearly_worse_candidate_is_dropped_after_the_first_stage() -> None:
    prog = sentiment_program()
    new, rep = LabeledFewShot(2).optimize(prog, TRAIN, label_accuracy(), valset=VAL, ctx=ctx(demos_hurt))
    assert new == prog
    cand = rep.candidates[1]
    assert cand.status == "rejected" and len(cand.scores) == 10
    assert cand.reason.startswith("stopped early after 10 of 40 validation rows")
    assert cand.evidence["ci_high"] < 0 and cand.calls == 10
    assert rep.spent["calls"] == 40 + 10
    # the same compile without early stopping pays for the whole valset, and ends the same
    new2, rep2 = LabeledFewShot(2, early_stop=False).optimize(prog, TRAIN, label_accuracy(), valset=VAL,
                                                             ctx=ctx(demos_hurt))
    assert new2 == new and rep2.spent["calls"] == 80 and len(rep2.candidates[1].scores) == 40


def test_stages_follow_a_seeded_permutation_not_the_valset_order() -> None:
    # negatives first: the first quarter in valset order would hold only rows the candidate gets right
    val = sorted(VAL, key=lambda r: r["label"])
    assert {r["label"] for r in val[:10]} == {"negative"}
    _, rep = LabeledFewShot(2).optimize(sentiment_program(), TRAIN, label_accuracy(), valset=val,
                                        ctx=ctx(demos_hurt))
    assert rep.candidates[1].reason.startswith("stopped early after 10 of 40")


def test_random_search_saves_calls_and_finds_the_same_program() -> None:
    def first_two_hurt(req: lg.LMRequest) -> str:
        # demos help (sentiment_fn) unless the prompt holds more than two of them
        return " negative" if request_text(req).count("Sentence:") > 3 else sentiment_fn(req)

    runs = {}
    for early in (True, False):
        runs[early] = BootstrapRandomSearch(4, num_candidates=6, early_stop=early).optimize(
            sentiment_program(), TRAIN, label_accuracy(), valset=VAL, ctx=ctx(first_two_hurt))
    (new, rep), (new_full, rep_full) = runs[True], runs[False]
    assert new == new_full and rep.best.mean == rep_full.best.mean == 1.0
    stopped = [c for c in rep.candidates if c.reason.startswith("stopped early")]
    assert stopped and all(len(c.scores) < len(VAL) for c in stopped)
    assert rep.spent["calls"] < rep_full.spent["calls"]
    # survivors are scored on every row, in valset order (the same scores as a plain evaluation)
    assert rep.best.scores == rep_full.best.scores


def test_accepted_candidates_have_full_scores_and_small_valsets_are_one_stage() -> None:
    small_val = VAL[:12]  # < 2 x 8 rows: no early look
    _, rep = LabeledFewShot(2).optimize(sentiment_program(), TRAIN, label_accuracy(), valset=small_val,
                                        ctx=ctx(demos_hurt))
    assert len(rep.candidates[1].scores) == 12 and not rep.candidates[1].reason.startswith("stopped early")
    _, rep = LabeledFewShot(2).optimize(sentiment_program(), TRAIN, label_accuracy(), valset=VAL,
                                        ctx=ctx(sentiment_fn))
    assert rep.best.status == "accepted" and len(rep.best.scores) == 40 and rep.best.mean == 1.0
