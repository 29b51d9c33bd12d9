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
         "hotpotqa_multihop-test50-labelled.jsonl", "hotpotqa-budget1600-test100-labelled.jsonl")
# where a task's test rows come from, when not from the pool its labelled rows are cut from: the
# report can only know the labelled rows' distribution
TEST_SOURCE = {"trec": "its own test file", "banking77": "its own test file", "gsm8k": "its own test file",
               "wic": "execute rows, labelled rows from induce", "sentence_similarity":
               "execute rows, labelled rows from induce"}

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
    """The last recorded unit of each task/seed/rows/budget (a report file holds the last run's),
    the default compiler's only: a pilot's units (``options`` set, e.g. ``max_scored_rows``) share
    some of these files but keep their reports under their own names."""
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name in FILES:
        for line in (UNITS / name).read_text().splitlines():
            u = json.loads(line)
            if not u.get("options"):
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
            "z": combined * math.sqrt(w1 + w2), "combined_se": 1 / math.sqrt(w1 + w2), "confirm_diff": dc,
            "confirm_se": sec, "confirm_ci_low": cand["evidence"]["confirm_ci_low"]}


def calibration(units: list[dict[str, Any]]) -> dict[str, Any]:
    """Did the report's figures predict the test? For every unit that took a change: the test
    gain minus the report's expected gain (and minus its held-out confirmation alone), in
    standard errors of the difference (the estimate's and the test's; the test's read off its
    95% CI). Honest figures put 95% of the units within +/-1.96."""
    rows = []
    for u in units:
        ev = u["evidence"]
        se_t = (u["diff_ci"][1] - u["diff_ci"][0]) / (2 * 1.96)
        if ev is None or not ev["accepted"] or se_t <= 0:  # a test diff with no spread: every row tied
            continue
        z = {k: (u["diff"] - ev[k]) / math.sqrt(ev[se] ** 2 + se_t ** 2)
             for k, se in (("combined", "combined_se"), ("confirm_diff", "confirm_se"))}
        rows.append({"task": u["task"], "seed": u["seed"], "budget": u["budget"], "test": u["diff"],
                     "test_se": se_t, "expected": ev["combined"], "confirm": ev["confirm_diff"],
                     "z_expected": z["combined"], "z_confirm": z["confirm_diff"],
                     "test_source": TEST_SOURCE.get(u["task"], "the labelled rows' pool")})
    groups: dict[str, Any] = {}
    for name, keep in (("all", lambda r: True), ("test rows from the labelled rows' pool",
                                                  lambda r: r["task"] not in TEST_SOURCE),
                       ("test rows from elsewhere", lambda r: r["task"] in TEST_SOURCE)):
        sel = [r for r in rows if keep(r)]
        if not sel:
            continue
        groups[name] = {"units": len(sel), **{
            f"{what}_{stat}": val for what, key, z in (("expected", "expected", "z_expected"),
                                                      ("confirm", "confirm", "z_confirm"))
            for stat, val in (("mean_test_minus", sum(r["test"] - r[key] for r in sel) / len(sel)),
                              ("within_1_96", sum(1 for r in sel if abs(r[z]) <= 1.96)))}}
    return {"units": rows, "groups": groups}


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
    out["calibration"] = calibration(units)
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
    cal = out["calibration"]
    lines += ["", "## Did the report's figures predict the test?", "",
              f"Every unit that took a change and whose test diff has a spread ({len(cal['units'])}): the test gain "
              "minus the report's expected gain (search rows, shrunk, pooled with the confirmation) and minus "
              "its held-out confirmation alone, and how many units fall within 1.96 standard errors of the "
              "difference (the estimate's and the test's, read off its 95% CI): 95% of them, for honest figures.", "",
              "| units | n | test - expected gain (mean) | within 1.96 se | test - confirmation (mean) "
              "| within 1.96 se |",
              "|---|---|---|---|---|---|"]
    for name, g in cal["groups"].items():
        lines.append(f"| {name} | {g['units']} | {g['expected_mean_test_minus']:+.3f} | {g['expected_within_1_96']} "
                     f"| {g['confirm_mean_test_minus']:+.3f} | {g['confirm_within_1_96']} |")
    lines += ["", "| task | seed | budget | expected gain (z) | confirmation (z) | test diff | test rows |",
              "|---|---|---|---|---|---|---|"]
    for r in cal["units"]:
        lines.append(f"| {r['task']} | {r['seed']} | {r['budget']} | {r['expected']:+.3f} ({r['z_expected']:+.2f}) | "
                     f"{r['confirm']:+.3f} ({r['z_confirm']:+.2f}) | {r['test']:+.3f} | {r['test_source']} |")
    (HERE / "results" / "acceptance_replay.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
