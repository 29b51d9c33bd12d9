"""benchmarks/pilot_compare.py: a compile option's headroom table against the default's, unit by unit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import pilot_compare  # noqa: E402


def _unit(task: str, seed: int, compiled: float, chosen: str, calls: int, headroom: float = 0.2,
          zero: float = 0.3) -> dict:
    d = round(compiled - zero, 3)
    return {"task": task, "seed": seed, "test_n": 100, "rows": 400, "budget": 800, "zero_shot": zero,
            "compiled": compiled, "diff": d, "diff_ci": [d - 0.1, d + 0.1], "chosen": chosen,
            "compile_calls": calls, "headroom": headroom}


def _table(folder: Path, units: list[dict]) -> None:
    folder.mkdir()
    (folder / "units.jsonl").write_text("".join(json.dumps(u) + "\n" for u in units) + '{"task": "tr')


def test_units_are_matched_compared_and_summed_over_units(monkeypatch, tmp_path):
    monkeypatch.setattr(pilot_compare.compile_default, "HERE", tmp_path)  # the compile reports: these only
    reports = tmp_path / "results" / "compile_default" / "reports"
    reports.mkdir(parents=True)
    (reports / "sst2-seed0-rows400-budget800-scoredmeasured.json").write_text(json.dumps(
        {"data": {"folds": {"search": 118, "confirm": 78}},
         "notes": ["the baseline took 1.02 calls a row on the first 50 rows: 196 rows scored"]}))
    (reports / "sst2-seed0-rows400-budget800.json").write_text(json.dumps(
        {"data": {"folds": {"search": 60, "confirm": 40}}, "notes": []}))
    _table(tmp_path / "base", [_unit("trec", 0, 0.6, "json", 700), _unit("sst2", 0, 0.4, "json", 750),
                               _unit("sst2", 1, 0.5, "json", 740), _unit("gsm8k", 0, 0.3, "unchanged", 780)])
    _table(tmp_path / "opt", [_unit("sst2", 0, 0.5, "8 demos", 743), _unit("trec", 0, 0.6, "json", 700),
                              _unit("sst2", 1, 0.45, "json", 760)])  # gsm8k not measured: left out
    units = pilot_compare.matched([(tmp_path / "base", tmp_path / "opt")])
    assert [(a["task"], a["seed"]) for a, _ in units] == [("trec", 0), ("sst2", 0), ("sst2", 1)]
    assert pilot_compare.same_unit(*units[0]) and not pilot_compare.same_unit(*units[1])
    assert pilot_compare.scored_rows(units[1][1], "-scoredmeasured") == (196, 1.02)
    assert pilot_compare.scored_rows(units[1][0]) == (100, None)
    assert pilot_compare.scored_rows(units[0][0]) == (None, None)  # no report
    md = pilot_compare.render(units, "measured", "cmd")
    rows = {line.split(" | ")[0] + line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| ")}
    assert "same unit" in rows["| trec0"] and "| +0.000 |" in rows["| trec0"]
    assert "100 -> 196 (1.02)" in rows["| sst20"] and "| +0.100 |" in rows["| sst20"]
    assert "50% -> 100%" in rows["| sst20"]  # 0.1 and 0.2 of a 0.2 headroom
    # sst2: mean gain 0.15 -> 0.175 of a 0.2 headroom: 75% (no) -> 88% (yes)
    assert "| +0.150 -> +0.175 | +0.200 | 75% -> 88% | no / yes | 0 of 2 |" in md
    no_room = [dict(a, grid=[{"mean": 0.31, "diff_ci": [-0.05, 0.07]}]) for a, _ in units[1:]]
    md2 = pilot_compare.render([(a, b) for a, (_, b) in zip(no_room, units[1:])], "measured", "cmd")
    assert "| 75% -> 88% | - (no seed's headroom beyond noise) |" in md2  # the grid's best is within noise
    assert "3 units:" in md and "per-unit difference +0.017" in md
    assert "higher on 1, lower on 1, equal on 1 (1 of them the same unit)" in md

