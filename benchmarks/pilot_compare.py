"""A compile option's pilot against the default compiler, unit by unit: is it worth making the default?

    .venv/bin/python benchmarks/pilot_compare.py [--option measured]
        [--pair results/headroom:results/headroom-scoredmeasured ...] [--out FILE]

Reads finished headroom tables (``benchmarks/headroom.py``; no model call): for every (task, seed,
test rows, budget) unit in both the default's table and the option's, the two compiles' paired test gains
over zero-shot, what each chose, the labelled rows each scored (from the compile reports), and the
oracle grid's headroom. Then, per task, the mean gain and the share of the mean headroom each recovers,
and over all matched units the mean per-unit difference (option minus default) with a 95% bootstrap CI
over units -- the units are the independent draws here (task, split seed); the test rows of one unit are
shared by both compiles, but only their scores, not the rows' outcomes, are kept, so the CI is over
units, not rows. A unit where both chose the same program with the same test score and compile calls is
marked "same unit": the option changed nothing there (on TREC and GSM8K the measured rows are the
default's rows).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from headroom import TABLE_ORDER, _headroom_significant, read_lines  # noqa: E402

from lmgraph.evaluation import bootstrap_ci  # noqa: E402

import compile_default  # noqa: E402

PAIRS = ("results/headroom:results/headroom-scored{option}",
         "results/headroom-unseen:results/headroom-unseen-scored{option}")
#: what a task must recover of its mean headroom to count toward issue 23's "4 of the 5 visible tasks"
GOAL = 0.8
_RATE = re.compile(r"the baseline took ([0-9.]+) calls a row")


def _key(u: dict) -> tuple:
    return u["task"], u["seed"], u["test_n"], u["budget"]


def scored_rows(u: dict, suffix: str = "") -> tuple[int | None, float | None]:
    """(labelled rows the unit's compile scored, calls a row its baseline took when it measured them)
    from the compile's report; (None, None) without a report."""
    path = compile_default.report_path(u["task"], u["seed"], u["rows"], u["budget"], suffix)
    if not path.exists():
        return None, None
    rep = json.loads(path.read_text())
    folds = rep.get("data", {}).get("folds") or {}
    n = (folds.get("search", 0) + folds.get("confirm", 0)) or None
    rate = next((float(m.group(1)) for note in rep.get("notes", []) if (m := _RATE.search(note))), None)
    return n, rate


def same_unit(a: dict, b: dict) -> bool:
    """Both compiles returned the same choice with the same test score and compile calls."""
    return (a["chosen"], a["compiled"], a.get("compile_calls")) == (b["chosen"], b["compiled"], b.get("compile_calls"))


def matched(pairs: list[tuple[Path, Path]]) -> list[tuple[dict, dict]]:
    """(default unit, option unit) for every unit both tables finished, in table order."""
    got = []
    for base_dir, pilot_dir in pairs:
        pilot = {_key(u): u for u in read_lines(pilot_dir / "units.jsonl")}
        got += [(u, pilot[_key(u)]) for u in read_lines(base_dir / "units.jsonl") if _key(u) in pilot]
    order = {t: i for i, t in enumerate(TABLE_ORDER)}
    return sorted(got, key=lambda p: (order.get(p[0]["task"], len(order)), p[0]["task"], p[0]["seed"], p[0]["budget"]))


def _gain(u: dict) -> float:
    return u["compiled"] - u["zero_shot"]


def _ci(u: dict) -> str:
    return f"{u['diff']:+.3f} [{u['diff_ci'][0]:+.3f}, {u['diff_ci'][1]:+.3f}]"


def _share(gain: float, headroom: float) -> str:
    return f"{100 * gain / headroom:.0f}%" if headroom > 0 else "-"


def render(units: list[tuple[dict, dict]], option: str, command: str) -> str:
    suffix = compile_default.option_suffix({"max_scored_rows": option})
    lines = [f"# `Compile(max_scored_rows={option!r})` against the default compiler, unit by unit", "",
             f"`{command}` -- from the finished headroom tables (no model call). Gains are paired test-score "
             "differences over zero-shot on the unit's test rows; headroom is the oracle grid's (scored on test: "
             "diagnostic only, never used for selection).", "",
             "| task | seed | budget | rows scored, default -> option (calls a row) | default: gain [95% CI], chosen | "
             "option: gain [95% CI], chosen | option - default | headroom | recovered, default -> option |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a, b in units:
        na, _ = scored_rows(a)
        nb, rate = scored_rows(b, suffix)
        rows = f"{na or '?'} -> {nb or '?'}" + (f" ({rate:.2f})" if rate is not None else "")
        right = "same unit" if same_unit(a, b) else f"{_ci(b)}, {b['chosen']}"
        lines.append(f"| {a['task']} | {a['seed']} | {a['budget']} | {rows} | {_ci(a)}, {a['chosen']} | {right} | "
                     f"{_gain(b) - _gain(a):+.3f} | {a['headroom']:+.3f} | "
                     f"{_share(_gain(a), a['headroom'])} -> {_share(_gain(b), b['headroom'])} |")
    lines += ["", "## By task", "", "| task | budget | units | mean gain, default -> option | mean headroom | "
              f"recovered, default -> option | >= {100 * GOAL:.0f}%, default / option | significantly worse "
              "than zero-shot (option) |", "|---|---|---|---|---|---|---|---|"]
    for task, budget in dict.fromkeys((a["task"], a["budget"]) for a, _ in units):
        us = [(a, b) for a, b in units if (a["task"], a["budget"]) == (task, budget)]
        ga = sum(_gain(a) for a, _ in us) / len(us)
        gb = sum(_gain(b) for _, b in us) / len(us)
        h = sum(a["headroom"] for a, _ in us) / len(us)
        meets = " / ".join("yes" if h > 0 and g / h >= GOAL else "no" for g in (ga, gb))
        if all("grid" in a and not _headroom_significant(a) for a, _ in us):
            meets = "- (no seed's headroom beyond noise)"
        worse = sum(b["diff_ci"][1] < 0 for _, b in us)
        lines.append(f"| {task} | {budget} | {len(us)} | {ga:+.3f} -> {gb:+.3f} | {h:+.3f} | "
                     f"{_share(ga, h)} -> {_share(gb, h)} | {meets} | {worse} of {len(us)} |")
    d = [_gain(b) - _gain(a) for a, b in units]
    lo, hi = bootstrap_ci(d)
    up, down = sum(x > 1e-9 for x in d), sum(x < -1e-9 for x in d)
    same = sum(same_unit(a, b) for a, b in units)
    lines += ["", "## Over all matched units", "",
              f"{len(units)} units: mean gain {sum(_gain(a) for a, _ in units) / max(1, len(units)):+.3f} (default) "
              f"-> {sum(_gain(b) for _, b in units) / max(1, len(units)):+.3f} (option); per-unit difference "
              f"{sum(d) / max(1, len(d)):+.3f}, 95% bootstrap CI over units [{lo:+.3f}, {hi:+.3f}]; "
              f"higher on {up}, lower on {down}, equal on {len(d) - up - down} ({same} of them the same unit).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--option", default="measured", help="the max_scored_rows value of the pilot tables")
    ap.add_argument("--pair", action="append", default=None,
                    help="DEFAULT_DIR:OPTION_DIR, relative to benchmarks/ (repeatable; default: the visible "
                         "and the unseen tables)")
    ap.add_argument("--out", default=None, help="the markdown file (default: results/pilot-<option>-vs-default.md)")
    args = ap.parse_args()
    specs = args.pair or [p.format(option=args.option) for p in PAIRS]
    pairs = [tuple(HERE / part for part in spec.split(":", 1)) for spec in specs]
    if any(len(p) != 2 for p in pairs):
        ap.error("--pair takes DEFAULT_DIR:OPTION_DIR")
    command = "python benchmarks/pilot_compare.py" + (f" --option {args.option}" if args.option != "measured" else "")
    command += "".join(f" --pair {s}" for s in (args.pair or []))
    out = Path(args.out) if args.out else HERE / "results" / f"pilot-{args.option}-vs-default.md"
    units = matched([(a, b) for a, b in pairs])  # type: ignore[misc]
    if not units:
        sys.exit(f"no unit is in both tables of {specs}: run benchmarks/headroom.py for both first")
    out.write_text(render(units, args.option, command))
    print(out.read_text())


if __name__ == "__main__":
    main()
