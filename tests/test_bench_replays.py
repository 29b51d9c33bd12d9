"""benchmarks/acceptance_replay.py and search_vs_test.py on the committed compile units: every report's per-row scores
reproduce its evidence, and the replayed default rule takes exactly the units the compiler changed.
No model calls (the committed reports are the input)."""

from __future__ import annotations

import json
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
        report = json.loads(acceptance_replay.report_path(u).read_text())
        best = next(c for c in report["candidates"] if c["id"] == report["best_id"])
        assert (best["label"] if changed else "unchanged (program as given)") == u["chosen"], u  # its own report
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


def test_search_vs_test_pairs_same_configurations_and_ranks_with_ties() -> None:
    import search_vs_test

    assert abs(search_vs_test.spearman([1, 2, 3], [10, 20, 30]) - 1) < 1e-9
    assert abs(search_vs_test.spearman([1, 2, 3], [3, 2, 1]) + 1) < 1e-9
    assert abs(search_vs_test.spearman([1, 1, 2], [1, 2, 3]) - 0.866) < 1e-3  # tied ranks share their mean
    units = [json.loads(line) for line in search_vs_test.UNITS.read_text().splitlines()]
    for u in units:
        grid = {g["config"] for g in u["grid"]}
        for p in search_vs_test.pairs(u):
            assert p["config"] in grid and "labelled demos" not in p["config"] and p["rows"] >= 1
