"""benchmarks/acceptance_replay.py on the committed compile units: every report's per-row scores
reproduce its evidence, and the replayed default rule takes exactly the units the compiler changed.
No model calls (the committed reports are the input)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import acceptance_replay  # noqa: E402


def test_each_committed_unit_replays_to_the_choice_it_recorded() -> None:
    units = acceptance_replay.latest_units()
    assert len(units) >= 30
    for u in units:
        ev = acceptance_replay.evidence(u)  # raises when the report's scores and evidence disagree
        changed = not u["chosen"].startswith("unchanged")
        assert (ev is not None and ev["accepted"] == 1.0) == changed, (u["task"], u["seed"], u["budget"])
        if changed:
            assert ev is not None and ev["combined"] > 0 and ev["confirm_diff"] >= 0
        # the floor note: on GSM8K (every program 0.00-0.05) and on no other committed report
        assert (acceptance_replay.rebuilt(u).at_floor() is not None) == (u["task"] == "gsm8k"), u["task"]


def test_a_rule_that_rejects_a_unit_scores_it_as_given() -> None:
    rules = acceptance_replay.RULES
    ev = {"accepted": 1.0, "combined": 0.01, "z": 0.3, "confirm_diff": 0.0, "confirm_ci_low": -0.1}
    assert rules["as run: expected gain > 0 (min_gain=0, the default)"](ev)
    assert not rules["min_gain=0.02"](ev)
    assert not rules["expected gain >= 0.5 standard errors"](ev)
    assert not rules["confirmation significant (95% CI above 0)"](ev)
