"""The default compiler's search-row estimates against the oracle grid's test scores, per configuration.

Every headroom unit (``results/headroom/units.jsonl``) holds a compile report -- each raced
candidate's per-row scores on the search rows it reached -- and a grid that scored the same
configurations (demos from all labelled rows) on the test rows. For each configuration in both,
this compares the paired gain over the baseline the compiler saw (on 20, 40 or 60 search rows)
with the gain on test: how far apart they are by the number of search rows, how often the
configuration best on test was dropped, and after how many rows. No model calls: it reads the
committed files. Diagnostic only -- the grid's test scores are never used for selection.

    .venv/bin/python benchmarks/search_vs_test.py

writes ``results/search_vs_test.{json,md}``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import compile_default

HERE = Path(__file__).parent
UNITS = HERE / "results" / "headroom" / "units.jsonl"


def pairs(unit: dict[str, Any]) -> list[dict[str, Any]]:
    """(configuration, search-row gain, rows, status, test gain) for the unit's configurations that
    the compile raced under the grid's label. Labelled-demo configurations are left out: the grid's
    draw of labelled demos and the compile's are different demo sets under one label; the other
    levers (format, decoding, instruction, nearest demos) build the same prompts from the same
    rows, but for the nearest demos' pool (the compile's lacks its confirmation rows)."""
    path = compile_default.report_path(unit["task"], unit["seed"], unit["rows"], unit["budget"])
    report = json.loads(path.read_text())
    base = report["candidates"][0]["scores"]
    grid = {g["config"]: g for g in unit["grid"]}
    out = []
    for c in report["candidates"][1:]:
        if c["label"] not in grid or not c["scores"] or "labelled demos" in c["label"]:
            continue
        gain = sum(c["scores"]) / len(c["scores"]) - sum(base[i] for i in c["rows"]) / len(c["rows"])
        out.append({"config": c["label"], "search_gain": round(gain, 4), "rows": len(c["scores"]),
                    "status": c["status"], "test_gain": grid[c["label"]]["diff"]})
    return out


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else float("nan")


def main() -> None:
    units = [json.loads(line) for line in UNITS.read_text().splitlines()]
    rows_out, by_n = [], {}
    for u in units:
        ps = pairs(u)
        if len(ps) < 3:
            continue
        best = max(ps, key=lambda p: p["test_gain"])
        rho = spearman([p["search_gain"] for p in ps], [p["test_gain"] for p in ps])
        rows_out.append({"task": u["task"], "seed": u["seed"], "configs": len(ps), "spearman": round(rho, 3),
                         "test_best": best, "chosen": u["chosen"], "pairs": ps})
        for p in ps:
            n = 20 if p["rows"] < 30 else 40 if p["rows"] < 50 else 60
            by_n.setdefault(n, []).append(abs(p["search_gain"] - p["test_gain"]))
    dropped = [r for r in rows_out if r["test_best"]["status"] == "dropped"]
    at_20 = [r for r in dropped if r["test_best"]["rows"] < 30]
    summary = {"units": len(rows_out), "test_best_dropped": len(dropped), "test_best_dropped_at_20_rows": len(at_20),
               "mean_abs_gap_by_search_rows": {str(n): round(sum(v) / len(v), 3) for n, v in sorted(by_n.items())},
               "pairs_by_search_rows": {str(n): len(v) for n, v in sorted(by_n.items())}}
    (HERE / "results" / "search_vs_test.json").write_text(json.dumps({"summary": summary, "units": rows_out},
                                                                     indent=1) + "\n")
    lines = ["# Search-row estimates vs test scores, per configuration (no model calls)", "",
             "`.venv/bin/python benchmarks/search_vs_test.py` -- the compile report's paired gain of each "
             "configuration on the search rows it reached, against the oracle grid's paired gain of the same "
             "configuration on the test rows (diagnostic: never used for selection). Labelled-demo configurations "
             "are left out (the grid's draw and the compile's are different demo sets).", "",
             f"Units: {summary['units']}. The configuration best on test was dropped by the race in "
             f"{len(dropped)} of them, {len(at_20)} after its first 20 search rows. Mean |search gain - test gain| "
             "by the search rows a configuration reached: "
             + ", ".join(f"{n} rows {g:.3f} ({summary['pairs_by_search_rows'][n]} configurations)"
                         for n, g in summary["mean_abs_gap_by_search_rows"].items()) + ".", "",
             "| task | seed | configurations | rank correlation (search vs test) | best on test: configuration, "
             "test gain, search gain on rows, fate | chosen |", "|---|---|---|---|---|---|"]
    for r in rows_out:
        b = r["test_best"]
        lines.append(f"| {r['task']} | {r['seed']} | {r['configs']} | {r['spearman']:+.2f} | {b['config']}: "
                     f"{b['test_gain']:+.2f}, {b['search_gain']:+.3f} on {b['rows']}, {b['status']} | {r['chosen']} |")
    (HERE / "results" / "search_vs_test.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
