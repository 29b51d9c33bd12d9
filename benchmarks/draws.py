"""How much of the oracle grid's headroom is the luck of one demo draw? Each grid configuration whose
program depends on the random demo draw (labelled, label-balanced demos) is scored again on the same
test rows with other draws, in process on the embedded model.

    .venv/bin/python benchmarks/draws.py --tasks hotpotqa --seeds 1,0,2 --draws 4

``benchmarks/headroom.py`` scores one draw of each configuration (draw 0) and takes the best
configuration's score as the oracle: a maximum over noisy scores, and for a demo configuration one
draw of a random demo set. Here draws 1..K-1 are drawn (``random.Random("grid:<seed>:draw<j>")``) and
scored; a configuration's *draw mean* (over draw 0 and the new draws) estimates what the lever gives on
these test rows with a demo set drawn at random -- which is what the compiler's own draw is. The
draw-averaged oracle is the best configuration by draw mean (configurations that draw nothing count
with their one score), and the compile's gain is set against it beside the single-draw oracle.

Diagnostic only, like the grid: scored ON THE TEST ROWS and never used for selection. Each scored draw
goes to ``results/headroom/draws.jsonl`` at once (a killed run keeps it, a rerun skips it);
``results/headroom/draws.md`` is rewritten after each; the zero-shot scores the paired differences
need are kept in ``results/headroom/draws-zero/`` (scored once per task, seed and runtime revision).
Needs the (task, seed) unit in ``units.jsonl``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import headroom  # noqa: E402

import lmgraph as lg  # noqa: E402
from lmgraph.evaluation import evaluate_sync, paired_bootstrap  # noqa: E402

import compile_default  # noqa: E402
from tasks import load  # noqa: E402

OUT = headroom.OUT


def drawn_configs(grids: list[list[tuple[str, str]]]) -> set[str]:
    """The configurations whose program differs between draws (``grids``: per draw, (label, program
    hash) pairs): those that draw a random demo set."""
    hashes: dict[str, set[str]] = {}
    for grid in grids:
        for label, h in grid:
            hashes.setdefault(label, set()).add(h)
    return {label for label, hs in hashes.items() if len(hs) > 1}


def summarise(unit: dict, draws: list[dict]) -> dict:
    """Per configuration, its scores over draws and their mean; the draw-averaged oracle; the compile's
    share of it. ``unit`` is the headroom unit (its grid is draw 0); ``draws`` its scored new draws."""
    configs: dict[str, list[float]] = {g["config"]: [g["mean"]] for g in unit["grid"]}
    for d in sorted(draws, key=lambda d: d["draw"]):
        configs.setdefault(d["config"], []).append(d["mean"])
    drawn = {d["config"] for d in draws}
    rows = [{"config": c, "scores": s, "mean": statistics.fmean(s), "drawn": c in drawn} for c, s in configs.items()]
    best = max(rows, key=lambda r: r["mean"], default=None)
    zero = unit["zero_shot"]
    oracle = max(best["mean"], zero) if best else zero
    headroom_avg = oracle - zero
    gain = unit["compiled"] - zero
    return {"task": unit["task"], "seed": unit["seed"], "zero_shot": zero, "compiled": unit["compiled"],
            "chosen": unit["chosen"], "oracle": unit["oracle"], "oracle_config": unit["oracle_config"],
            "headroom": unit["headroom"], "configs": rows,
            "oracle_avg": round(oracle, 4), "oracle_avg_config": best["config"] if best and best["mean"] > zero
            else "zero-shot", "headroom_avg": round(headroom_avg, 4),
            "recovered": unit["recovered"],
            "recovered_avg": round(gain / headroom_avg, 3) if headroom_avg > 0 else None}


def write_md(out: Path, summaries: list[dict], command: str) -> None:
    lines = ["# Demo draws: how much of the oracle grid's best is one lucky draw", "",
             f"`{command}` -- {headroom.MODEL}. Diagnostic only: scored on the TEST rows, never used for "
             "selection. Draw 0 is the grid's own (`results/headroom/README.md`); a configuration that draws "
             "no random demo set has one score.", "",
             "| task | seed | zero-shot | compiled | oracle, one draw (config) | recovered "
             "| oracle, draw mean (config) | recovered |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        rec = "-" if s["recovered"] is None else f"{100 * s['recovered']:.0f}%"
        rec_avg = "-" if s["recovered_avg"] is None else f"{100 * s['recovered_avg']:.0f}%"
        lines.append(f"| {s['task']} | {s['seed']} | {s['zero_shot']:.3f} | {s['compiled']:.3f} | {s['oracle']:.3f} "
                     f"({s['oracle_config']}) | {rec} | {s['oracle_avg']:.3f} ({s['oracle_avg_config']}) | {rec_avg} |")
    lines += ["", "## Mean over seeds", "", "| task | seeds | mean gain | mean headroom, one draw | recovered "
              "| mean headroom, draw mean | recovered |", "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(s["task"] for s in summaries):
        ss = [s for s in summaries if s["task"] == name]
        g = statistics.fmean(s["compiled"] - s["zero_shot"] for s in ss)
        h = statistics.fmean(s["headroom"] for s in ss)
        ha = statistics.fmean(s["headroom_avg"] for s in ss)
        lines.append(f"| {name} | {', '.join(str(s['seed']) for s in ss)} | {g:+.3f} | {h:+.3f} | "
                     f"{'-' if h <= 0 else f'{100 * g / h:.0f}%'} | {ha:+.3f} | "
                     f"{'-' if ha <= 0 else f'{100 * g / ha:.0f}%'} |")
    lines += ["", "## Configurations that draw a demo set", ""]
    for s in summaries:
        lines += [f"### {s['task']} seed {s['seed']} (zero-shot {s['zero_shot']:.3f}; compiled {s['compiled']:.3f}, "
                  f"{s['chosen']})", "", "| configuration | test score per draw (draw 0 first) | draw mean | spread |",
                  "|---|---|---|---|"]
        for r in s["configs"]:
            if r["drawn"]:
                lines.append(f"| {r['config']} | {', '.join(f'{x:.3f}' for x in r['scores'])} | {r['mean']:.3f} | "
                             f"{min(r['scores']):.3f}-{max(r['scores']):.3f} |")
        lines.append("")
    (out / "draws.md").write_text("\n".join(lines) + "\n")


def run_unit(name: str, seed: int, unit: dict, k: int, args: argparse.Namespace, done: list[dict]) -> None:
    task = load(name)
    a = SimpleNamespace(rows=unit["rows"], test=unit["test_n"])
    train, val, test = headroom.splits(task, seed, a)
    program = task.lmgraph_program()
    ctx = lg.RunContext(max_concurrency=2)
    metric = headroom._metric(task)
    rows = [{**r, task.output: r[task.label_field]} for r in list(train) + list(val)]  # as headroom.py
    tag = compile_default.runtime_tag()
    zpath = Path(args.out) / "draws-zero" / f"{name}-seed{seed}-test{len(test)}-runtime{tag}.json"
    zero = compile_default.zero_shot(program, test, metric, ctx, zpath)
    if abs(zero.mean - unit["zero_shot"]) > 1e-4:
        raise RuntimeError(f"{name} seed {seed}: zero-shot {zero.mean:.4f} here vs {unit['zero_shot']} in units.jsonl "
                           "-- not the model/code that measured the grid")
    grids = {j: headroom.grid_programs(program, rows, args.grid, seed, ctx, draw=j) for j in range(k)}
    drawn = drawn_configs([[(label, p.content_hash()) for label, p in g] for g in grids.values()])
    for j in range(1, k):
        for label, prog in grids[j]:
            if label not in drawn:
                continue
            if any((d["task"], d["seed"], d["test_n"], d["draw"], d["config"]) == (name, seed, len(test), j, label)
                   for d in done):
                continue
            res = evaluate_sync(prog, test, metric, ctx=ctx, concurrency=4)
            pb = paired_bootstrap(zero.scores, res.scores)
            line = {"task": name, "seed": seed, "test_n": len(test), "draw": j, "config": label,
                    "mean": round(res.mean, 4), "diff": round(pb["diff"], 4),
                    "diff_ci": [round(pb["ci_low"], 4), round(pb["ci_high"], 4)], "calls": res.usage.get("calls"),
                    "program_hash": prog.content_hash(), "runtime": compile_default.RUNTIME_REV}
            done.append(line)
            headroom.append_line(Path(args.out) / "draws.jsonl", line)
            print(f"  {name} seed {seed} draw {j}: {label:<50} {res.mean:.3f}  {pb['diff']:+.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="hotpotqa")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--draws", type=int, default=4, help="draws per configuration, the grid's own included")
    ap.add_argument("--grid", type=int, default=6, help="as headroom.py --grid")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--render", action="store_true", help="only write draws.md again (no model call)")
    args = ap.parse_args()
    out = Path(args.out)
    units = {(u["task"], u["seed"]): u for u in headroom.read_lines(out / "units.jsonl")}
    done = [d for d in headroom.read_lines(out / "draws.jsonl") if d.get("runtime") == compile_default.RUNTIME_REV]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    command = f"python benchmarks/draws.py --tasks {args.tasks} --seeds {args.seeds} --draws {args.draws}"
    for name in tasks:
        for seed in seeds:
            if (name, seed) not in units:
                raise SystemExit(f"{name} seed {seed}: no headroom unit in {out / 'units.jsonl'} -- run "
                                 f"benchmarks/headroom.py --tasks {name} --seeds {seed} first")
            if not args.render:
                run_unit(name, seed, units[(name, seed)], args.draws, args, done)
            summaries = [summarise(units[(t, s)], [d for d in done if (d["task"], d["seed"]) == (t, s)
                                                   and d["draw"] < args.draws])
                         for t in tasks for s in seeds if (t, s) in units
                         and any((d["task"], d["seed"]) == (t, s) for d in done)]
            write_md(out, summaries, command)


if __name__ == "__main__":
    main()
