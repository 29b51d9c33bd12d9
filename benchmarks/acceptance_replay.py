"""Replay the default compiler's acceptance rule, and stricter ones, on the committed compile units.

The default compiler (``lg.compile``) confirms the best candidate of its race on held-out rows and
takes it when the combined expected gain (search rows, shrunk, pooled with the confirmation by
inverse variance) is positive and the confirmation did not go the other way. A stricter rule --
asking the expected gain to clear a multiple of its own standard error, a significant confirmation,
or a minimum gain -- would have kept the program as given in some units. This script answers, without
a model call, what that would have done to the test scores already measured: every unit of
``results/compile_default/`` whose report is committed carries the baseline's and the confirmed
candidate's per-row scores, so each rule's decision is recomputed from them, and a unit the rule
would reject scores the program as given on test (paired diff 0).

A replay can only test rules stricter than the one that ran: a candidate the compiler rejected was
never scored on test.

    .venv/bin/python benchmarks/acceptance_replay.py

writes ``results/acceptance_replay.{json,md}``. It also lists which units' reports, rebuilt from
their committed JSON, get the report's floor note (``Report.at_floor()``: no program scored 0.10).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmgraph.optimizers.report import Candidate, Report
from lmgraph.optimizers.selection import paired_stats

import compile_default

HERE = Path(__file__).parent
UNITS = HERE / "results" / "compile_default"
FILES = ("headroom-compiles.jsonl", "hover-wic-sentence_similarity-test100-labelled.jsonl",
         "unseen-budget1600-test100-labelled.jsonl", "bfcl-test50-labelled.jsonl",
         "hotpotqa_multihop-test50-labelled.jsonl")

Evidence = dict[str, float]
RULES: dict[str, Callable[[Evidence], bool]] = {
    "as run: expected gain > 0 (min_gain=0, the default)": lambda e: True,
    "min_gain=0.02": lambda e: e["combined"] >= 0.02,
    "min_gain=0.05": lambda e: e["combined"] >= 0.05,
    "expected gain >= 0.5 standard errors": lambda e: e["z"] >= 0.5,
    "expected gain >= 1 standard error": lambda e: e["z"] >= 1.0,
    "expected gain >= 2 standard errors": lambda e: e["z"] >= 2.0,
    "confirmation significant (95% CI above 0)": lambda e: e["confirm_ci_low"] > 0,
}


def latest_units() -> list[dict[str, Any]]:
    """The last recorded unit of each task/seed/rows/budget (a report file holds the last run's)."""
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name in FILES:
        for line in (UNITS / name).read_text().splitlines():
            u = json.loads(line)
            last[(u["task"], u["seed"], u["rows"], u["budget"])] = u
    return list(last.values())


def report_path(unit: dict[str, Any]) -> Path:
    return compile_default.report_path(unit["task"], unit["seed"], unit["rows"], unit["budget"])


def rebuilt(unit: dict[str, Any]) -> Report:
    """The unit's report rebuilt from its committed JSON (candidates with their per-row scores)."""
    d = json.loads(report_path(unit).read_text())
    keys = set(Candidate.__dataclass_fields__)
    return Report(optimizer=d["optimizer"], seed=d["seed"], config=d["config"], budget=d["budget"],
                  data=d["data"], candidates=[Candidate(**{k: v for k, v in c.items() if k in keys})
                                              for c in d["candidates"]], best_id=d["best_id"])


def evidence(unit: dict[str, Any]) -> Evidence | None:
    """The confirmed candidate's evidence, recomputed from the report's per-row scores."""
    path = report_path(unit)
    report = json.loads(path.read_text())
    confirmed = [c for c in report["candidates"] if "confirm_diff" in (c.get("evidence") or {})]
    if not confirmed:  # nothing reached the confirmation: nothing for a stricter rule to reject
        return None
    cand = confirmed[-1]
    base = report["candidates"][0]["scores"]
    n_conf = report["data"]["folds"]["confirm"]
    rows, scores = cand["rows"], cand["scores"]
    s_rows, c_rows = rows[:-n_conf], rows[-n_conf:]
    d, se = paired_stats([base[i] for i in s_rows], scores[:-n_conf])
    dc, sec = paired_stats([base[i] for i in c_rows], scores[-n_conf:])
    est = cand["evidence"]["search_shrunk"]
    w1, w2 = 1 / max(se, 1e-9) ** 2, 1 / max(sec, 1e-9) ** 2
    combined = (est * w1 + dc * w2) / (w1 + w2)
    for what, mine, theirs in (("search-row gain", d, cand["evidence"]["search_diff"]),
                               ("confirmation gain", dc, cand["evidence"]["confirm_diff"]),
                               ("expected gain", combined, cand["evidence"]["expected_gain"])):
        if abs(mine - theirs) > 1e-4:
            raise SystemExit(f"{path.name}: recomputed {what} {mine:+.4f} != reported {theirs:+.4f}: "
                             "the report's per-row scores and its evidence disagree")
    return {"accepted": float(cand["status"] == "accepted"), "combined": combined,
            "z": combined * math.sqrt(w1 + w2), "confirm_diff": dc,
            "confirm_ci_low": cand["evidence"]["confirm_ci_low"]}


def main() -> None:
    units = []
    for u in latest_units():
        ev = evidence(u)
        units.append({"task": u["task"], "seed": u["seed"], "rows": u["rows"], "budget": u["budget"],
                      "test_n": u["test_n"], "diff": u["diff"], "diff_ci": u["diff_ci"],
                      "chosen": u["chosen"], "evidence": ev, "floor_note": rebuilt(u).at_floor() is not None})
    out: dict[str, Any] = {"units": units, "rules": {}}
    for name, rule in RULES.items():
        diffs, changed = [], []
        for u in units:
            ev = u["evidence"]
            keep = ev is not None and bool(ev["accepted"]) and rule(ev)
            took = ev is not None and bool(ev["accepted"])
            diffs.append(u["diff"] if keep or not took else 0.0)
            if took and not keep:
                changed.append(f"{u['task']} s{u['seed']} b{u['budget']} ({u['diff']:+.3f})")
        sig_kept = sum(1 for u, x in zip(units, diffs) if x != 0 and u["diff_ci"][0] > 0)
        worse = sum(1 for x in diffs if x < 0)
        out["rules"][name] = {"mean_diff": sum(diffs) / len(diffs), "significant_gains": sig_kept,
                              "units_below_zero_shot": worse, "kept_as_given": changed}
    (HERE / "results" / "acceptance_replay.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["# The acceptance rule replayed on the committed compile units (no model calls)", "",
             "`.venv/bin/python benchmarks/acceptance_replay.py`", "",
             f"{len(units)} units (the last run of each task/seed/rows/budget in "
             f"{', '.join('`' + f + '`' for f in FILES)}); a rule that rejects a unit's accepted "
             "candidate scores that unit's program as given on test (paired diff 0).", "",
             "| rule | mean paired test diff | significant test gains kept | units below zero-shot (point) "
             "| units it would keep as given (their test diff as run) |", "|---|---|---|---|---|"]
    for name, r in out["rules"].items():
        lines.append(f"| {name} | {r['mean_diff']:+.4f} | {r['significant_gains']} | "
                     f"{r['units_below_zero_shot']} | {'; '.join(r['kept_as_given']) or '-'} |")
    lines += ["", "| task | seed | budget | chosen | expected gain | z | confirmation diff | test diff [95% CI] |",
              "|---|---|---|---|---|---|---|---|"]
    for u in units:
        ev = u["evidence"]
        e = (f"{ev['combined']:+.3f} | {ev['z']:.2f} | {ev['confirm_diff']:+.3f}" if ev
             else "- | - | -")
        lines.append(f"| {u['task']} | {u['seed']} | {u['budget']} | {u['chosen']} | {e} | "
                     f"{u['diff']:+.3f} [{u['diff_ci'][0]:+.3f}, {u['diff_ci'][1]:+.3f}] |")
    floor = [f"{u['task']} s{u['seed']} b{u['budget']}" for u in units if u["floor_note"]]
    lines += ["", f"Floor note (`Report.at_floor()`, no program scored 0.10 on its rows) on {len(floor)} of "
              f"{len(units)} reports: {', '.join(floor) or 'none'}."]
    (HERE / "results" / "acceptance_replay.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
