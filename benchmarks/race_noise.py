"""How many rows would the default compiler's race need to tell its candidates apart? (no model call)

Every committed default-compiler report (the units ``acceptance_replay.py`` reads) keeps each
candidate's per-row scores on the search rows it was raced on. Two candidates scored on the same rows
differ row by row; the spread (standard deviation) of those per-row differences decides how many rows
a race needs before a true difference of a given size stands out from noise. This script measures that
spread on the committed reports -- the median over every pair of candidates that share at least
``MIN_SHARED`` rows -- and turns it into

* the smallest difference a comparison on the race's first round (its screening rows) and on all its
  search rows can detect: two-sided 5% test, 80% power, ``(1.96 + 0.84) * sd / sqrt(n)``;
* the rows a race needs per candidate to detect a difference of 0.05 and of 0.10 that way.

    .venv/bin/python benchmarks/race_noise.py

writes ``results/race_noise.{json,md}``. It reads only labelled rows' scores (the search rows), never
the test split.
"""
from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Any

import acceptance_replay

from lmgraph.optimizers.auto import Compile

HERE = Path(__file__).parent
MIN_SHARED = 15          # pairs of candidates sharing fewer search rows are left out
Z = 1.96 + 0.8416        # two-sided 5% test with 80% power
EFFECTS = (0.05, 0.10)


def detectable(sd: float, n: int) -> float:
    """The smallest true difference a paired comparison on ``n`` rows detects (5% two-sided, 80% power)."""
    return Z * sd / math.sqrt(n) if n > 0 else float("inf")


def rows_needed(sd: float, effect: float) -> int:
    """Rows per candidate for a paired comparison to detect ``effect`` (5% two-sided, 80% power)."""
    return math.ceil((Z * sd / effect) ** 2)


def implied(sd: float, first: int, search: int) -> dict[str, Any]:
    """What a spread ``sd`` means for a race screening on ``first`` rows and searching on ``search``."""
    return {"detectable_screen": round(detectable(sd, first), 3), "detectable_search": round(detectable(sd, search), 3),
            **{f"rows_for_{e:.2f}": rows_needed(sd, e) for e in EFFECTS}}


def pair_spreads(report: dict[str, Any], search_rows: list[int] | None = None) -> list[float]:
    """The standard deviation of the per-row score differences of every pair of raced candidates that
    share at least ``MIN_SHARED`` search rows (the baseline and the confirmed re-runs left out: the
    race compares candidates with each other). ``search_rows``: the report's (:func:`folds`) when given."""
    search = set(folds(report)[0] if search_rows is None else search_rows)
    raced = []
    for c in report["candidates"][1:]:
        if not c.get("rows") or c["label"].endswith("(confirmed)"):
            continue
        raced.append({r: s for r, s in zip(c["rows"], c["scores"]) if r in search})
    out = []
    for a, b in itertools.combinations(raced, 2):
        shared = sorted(set(a) & set(b))
        if len(shared) >= MIN_SHARED:
            out.append(statistics.stdev(a[r] - b[r] for r in shared))
    return out


def compiler(report: dict[str, Any]) -> Compile:
    cfg = report["config"]
    return Compile(min_race_rows=cfg["min_race_rows"], confirm_fraction=cfg["confirm_fraction"])


def folds(report: dict[str, Any]) -> tuple[list[int], list[int]]:
    """The report's (search rows, confirmation rows), cut as its compile cut them (checked against its record)."""
    got = compiler(report).folds(len(report["candidates"][0]["scores"]), report["seed"])
    if (len(got[0]), len(got[1])) != (report["data"]["folds"]["search"], report["data"]["folds"]["confirm"]):
        raise SystemExit(f"report of seed {report['seed']}: folds {len(got[0])}/{len(got[1])} here, "
                         f"{report['data']['folds']} in the report")
    return got


def unit_noise(unit: dict[str, Any]) -> dict[str, Any] | None:
    report = json.loads(acceptance_replay.report_path(unit).read_text())
    search_rows = folds(report)[0]
    spreads = pair_spreads(report, search_rows)
    if not spreads:
        return None
    sd = statistics.median(spreads)
    search = len(search_rows)
    first = compiler(report).rounds(search)[0]
    return {"task": unit["task"], "seed": unit["seed"], "budget": unit["budget"], "pairs": len(spreads),
            "sd": round(sd, 4), "screen_rows": first, "search_rows": search, **implied(sd, first, search)}


def by_task(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and budget: the median spread over its units (seeds), and what it implies."""
    out = []
    for task, budget in dict.fromkeys((u["task"], u["budget"]) for u in units):
        mine = [u for u in units if (u["task"], u["budget"]) == (task, budget)]
        sd = statistics.median(u["sd"] for u in mine)
        search = round(statistics.median(u["search_rows"] for u in mine))
        first = mine[0]["screen_rows"]
        out.append({"task": task, "budget": budget, "units": len(mine), "sd": round(sd, 4), "screen_rows": first,
                    "search_rows": search, **implied(sd, first, search)})
    return out


def blind_choice(tasks: list[dict[str, Any]], headroom_units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Diagnostic, on the oracle grid's TEST scores (``results/headroom/units.jsonl``; never used to choose):
    per task, the share of the grid's headroom a compile would recover if it picked blindly among the
    configurations (zero-shot included) within the race's detectable difference of the grid's best -- those
    its search rows cannot tell from the best -- beside the share the compile recovered. Means over seeds."""
    det = {(t["task"], t["budget"]): t["detectable_search"] for t in tasks}
    out: dict[str, dict[str, Any]] = {}
    for u in headroom_units:
        d = det.get((u["task"], u["budget"]))
        if d is None:
            continue
        scores = [g["mean"] for g in u["grid"]] + [u["zero_shot"]]
        near = [x for x in scores if x >= u["oracle"] - d]
        t = out.setdefault(u["task"], {"task": u["task"], "budget": u["budget"], "detectable": d, "seeds": 0,
                                       "near": [], "blind": 0.0, "compiled": 0.0, "headroom": 0.0})
        t["seeds"] += 1
        t["near"].append(f"{len(near)} of {len(scores)}")
        t["blind"] += sum(near) / len(near) - u["zero_shot"]
        t["compiled"] += u["compiled"] - u["zero_shot"]
        t["headroom"] += u["headroom"]
    for t in out.values():
        h = t["headroom"]
        t.update({k: round(t[k] / t["seeds"], 4) for k in ("blind", "compiled", "headroom")})
        t["blind_share"] = round(t["blind"] / t["headroom"], 3) if h > 0 else None
        t["compiled_share"] = round(t["compiled"] / t["headroom"], 3) if h > 0 else None
    return list(out.values())


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def main() -> None:
    units = [n for n in (unit_noise(u) for u in acceptance_replay.latest_units()) if n is not None]
    tasks = by_task(units)
    grid = [json.loads(line) for line in (HERE / "results" / "headroom" / "units.jsonl").read_text().splitlines()]
    blind = blind_choice(tasks, grid)
    (HERE / "results" / "race_noise.json").write_text(
        json.dumps({"tasks": tasks, "units": units, "blind_choice": blind}, indent=1) + "\n")
    head = ("| rows per candidate to detect 0.05 | to detect 0.10 |")
    lines = ["# How many rows the race needs to tell candidates apart (no model call)", "",
             "`.venv/bin/python benchmarks/race_noise.py` -- from the committed default-compiler reports' "
             "per-row scores on their search rows (labelled rows; no test row). sd: the median, over every pair "
             f"of raced candidates sharing at least {MIN_SHARED} search rows, of the standard deviation of their "
             "per-row score differences. Detectable: the smallest true difference a paired comparison on that many "
             "rows finds with 80% power at a two-sided 5% level, (1.96 + 0.84) sd / sqrt(n).", "",
             "| task | budget | units | sd of per-row differences | screening rows | detectable there | search rows "
             "| detectable there " + head, "|---|---|---|---|---|---|---|---|---|---|"]
    for t in tasks:
        lines.append(f"| {t['task']} | {t['budget']} | {t['units']} | {t['sd']:.3f} | {t['screen_rows']} "
                     f"| {t['detectable_screen']:.2f} | {t['search_rows']} | {t['detectable_search']:.2f} "
                     f"| {t['rows_for_0.05']} | {t['rows_for_0.10']} |")
    lines += ["", "## Against the oracle grid (its TEST scores: a diagnostic, never used to choose)", "",
              "Configurations of the grid (`results/headroom/units.jsonl`; zero-shot included) within the race's "
              "detectable difference on its search rows of the grid's best cannot be told from the best by the "
              "race: the share of the headroom a blind pick among them recovers (mean gain over seeds / mean "
              "headroom), beside the compile's share (`results/headroom/README.md`).", "",
              "| task | budget | detectable on the search rows | within it of the best, per seed | blind pick's share "
              "| the compile's share |", "|---|---|---|---|---|---|"]
    for b in blind:
        lines.append(f"| {b['task']} | {b['budget']} | {b['detectable']:.2f} | {', '.join(b['near'])} | "
                     f"{_pct(b['blind_share'])} | {_pct(b['compiled_share'])} |")
    lines += ["", "## Units", "", "| task | seed | budget | pairs | sd | detectable on screening rows "
              "| detectable on search rows (n) |", "|---|---|---|---|---|---|---|"]
    for u in units:
        lines.append(f"| {u['task']} | {u['seed']} | {u['budget']} | {u['pairs']} | {u['sd']:.3f} | "
                     f"{u['detectable_screen']:.2f} | {u['detectable_search']:.2f} ({u['search_rows']}) |")
    (HERE / "results" / "race_noise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8 + len(tasks)]))


if __name__ == "__main__":
    main()
