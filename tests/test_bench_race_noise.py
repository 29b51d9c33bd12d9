"""benchmarks/race_noise.py: the spread of candidates' per-row differences on the search rows, read
from the committed compile reports (no model call)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import acceptance_replay  # noqa: E402
import race_noise  # noqa: E402

from lmgraph.optimizers.auto import Compile  # noqa: E402


def _report(n: int = 40, seed: int = 0) -> dict:
    search, conf = Compile().folds(n, seed)
    half = search[:10]

    def cand(label: str, rows: list[int], score) -> dict:  # noqa: ANN001
        return {"label": label, "rows": rows, "scores": [score(r) for r in rows]}

    return {"seed": seed, "config": {"min_race_rows": 20, "confirm_fraction": 0.4},
            "data": {"folds": {"search": len(search), "confirm": len(conf)}},
            "candidates": [{"label": "baseline", "rows": None, "scores": [0.0] * n},
                           cand("a", search, lambda r: 1.0),
                           cand("b", search + conf, lambda r: float(r % 2)),   # its confirmation rows don't count
                           cand("c", half, lambda r: 0.5),                     # shares 10 rows only: no pair
                           cand("b (confirmed)", search + conf, lambda r: 0.0)]}


def test_pairs_share_search_rows_only_and_the_spread_is_their_differences_sd() -> None:
    rep = _report()
    search = Compile().folds(40, 0)[0]
    got = race_noise.pair_spreads(rep)
    assert got == [pytest.approx(statistics.stdev(1.0 - r % 2 for r in search))]  # a vs b; c and the re-run left out


def test_folds_that_do_not_match_the_report_are_refused() -> None:
    rep = _report()
    rep["data"]["folds"]["confirm"] += 1
    with pytest.raises(SystemExit, match="folds"):
        race_noise.pair_spreads(rep)


def test_detectable_and_rows_needed_are_inverse() -> None:
    for sd in (0.2, 0.33, 0.7):
        for n in (20, 60, 334):
            assert race_noise.rows_needed(sd, race_noise.detectable(sd, n)) in (n, n + 1)  # ceil of a float
    assert race_noise.rows_needed(0.326, 0.05) == 334  # (2.80 * 0.326 / 0.05) ** 2 = 333.1
    assert race_noise.detectable(0.5, 0) == float("inf")


def test_the_committed_table_reproduces_from_the_committed_reports() -> None:
    units = [u for u in (race_noise.unit_noise(u) for u in acceptance_replay.latest_units()) if u is not None]
    committed = json.loads((BENCH / "results" / "race_noise.json").read_text())
    assert race_noise.by_task(units) == committed["tasks"]
    grid = [json.loads(line) for line in (BENCH / "results" / "headroom" / "units.jsonl").read_text().splitlines()]
    assert race_noise.blind_choice(committed["tasks"], grid) == committed["blind_choice"]
    for u in units:
        assert 0 <= u["sd"] < 1.5 and u["rows_for_0.05"] >= u["rows_for_0.10"] >= 0  # 0: every pair tied on every row
    assert any(u["sd"] == 0 for u in units if u["task"] == "gsm8k")  # the model's floor: nothing to tell apart


def test_a_blind_pick_averages_the_configurations_the_race_cannot_tell_from_the_best() -> None:
    tasks = [{"task": "t", "budget": 800, "detectable_search": 0.10}]
    units = [{"task": "t", "budget": 800, "seed": s, "zero_shot": 0.2, "oracle": 0.5, "headroom": 0.3,
              "compiled": c, "grid": [{"mean": 0.5}, {"mean": 0.42}, {"mean": 0.3}]} for s, c in ((0, 0.44), (1, 0.5))]
    units.append({**units[0], "task": "other"})  # a task the noise table lacks: left out
    (b,) = race_noise.blind_choice(tasks, units)
    assert b["near"] == ["2 of 4", "2 of 4"]  # 0.5 and 0.42 are within 0.10 of 0.5; 0.3 and zero-shot are not
    assert b["blind_share"] == pytest.approx(((0.5 + 0.42) / 2 - 0.2) / 0.3, abs=1e-3)
    assert b["compiled_share"] == pytest.approx(0.27 / 0.3, abs=1e-3)
