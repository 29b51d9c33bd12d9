"""How much of the available headroom does the default compiler recover? Zero-shot, compiled and an
ORACLE GRID on the same seeded test rows, per task and split seed, in process on the embedded model.

    .venv/bin/python benchmarks/headroom.py --tasks trec,sst2,banking77,hotpotqa,gsm8k --seeds 0,1,2
        [--test 100] [--rows 400] [--budget 800] [--grid 6] [--max-scored-rows measured [--grids DIR]]

Per (task, seed):

* **compiled**: ``Compile()`` under ``--budget`` calls on ``--rows`` labelled rows (train+val; it never
  sees test rows), scored on ``--test`` test rows -- the unit of ``benchmarks/compile_default.py``; a
  unit (rows with labels) already in ``results/compile_default/*-labelled.jsonl`` with the same task, seed,
  sizes and budget is reused, not re-run (the compiler is deterministic: greedy decoding, seeded folds).
* **oracle grid** (diagnostic only: it is scored ON THE TEST ROWS and never used for selection): every
  single-lever candidate of the compiler's own search space and its first ``--grid`` combinations, in
  its order of prior promise (bootstrapped-demo candidates left out), built from all the labelled rows
  (labelled, label-balanced demos; nearest-neighbour demos over all labelled rows; for a node whose
  inputs a model-free upstream node computes -- HotPotQA's retrieved context -- the demos carry what
  that node really sees), each scored on the test rows.

Headroom = best grid score - zero-shot (the max of several noisy test scores: biased upward, so
"recovered" understates); recovered = (compiled - zero-shot) / headroom. Units are appended to
``results/headroom/units.jsonl`` at once (a killed run keeps what it finished; a rerun skips them);
``results/headroom/README.md`` is rewritten after each. A unit longer than a machine session (Banking77,
GSM8K: hours on 2 cores) spans sessions: its compile keeps a checkpoint of finished evaluations
(``results/compile_default/checkpoints/``) and its grid each scored configuration
(``results/headroom/grid-progress.jsonl``); commit them, and the same command on the next machine
resumes the unit where it stopped, with the same result. Units measured with an earlier revision of the
compiler or of the runtime (``compile_default.current``) are moved to
``results/headroom/units-superseded.jsonl``; their grid scores (keyed by the program's content hash)
are reused when measured by the same runtime revision, since the grid does not depend on the
compiler's search.

``--max-scored-rows measured`` (or a number) makes a table of ``Compile(max_scored_rows=...)`` instead of
the default compiler (``results/headroom-scored<value>/``): its compile units are those made with exactly
that option, and its grids are the default table's (``--grids``, results/headroom unless told), found by
program hash -- a table whose every grid configuration was measured before costs only its compiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lmgraph as lg  # noqa: E402
from lmgraph.evaluation import evaluate_sync, paired_bootstrap  # noqa: E402
from lmgraph.optimizers import Compile  # noqa: E402
from lmgraph.optimizers.fewshot import labeled_demos_computed  # noqa: E402

import compile_default  # noqa: E402
from tasks import Sizes, load  # noqa: E402

OUT = HERE / "results" / "headroom"
MODEL = "SmolLM2-135M-Instruct Q4_1 (embedded llama.cpp, greedy)"


def _metric(task):  # noqa: ANN001, ANN202
    def metric(ex, pred, trace=None):  # noqa: ANN001, ANN202
        return task.score(dict(ex), dict(pred))
    return metric


def splits(task, seed: int, args: argparse.Namespace):  # noqa: ANN001, ANN201
    n_val = args.rows * 15 // 100  # the same cut as compile_default.py
    return task.splits(seed, Sizes(args.rows - n_val, n_val, args.test))


def compile_args(args: argparse.Namespace) -> SimpleNamespace:
    """What compile_default.unit is given: the sizes, the budget and the non-default Compile options."""
    return SimpleNamespace(rows=args.rows, test=args.test, budget=args.budget,
                           max_scored_rows=getattr(args, "max_scored_rows", None))


def compile_unit(name: str, seed: int, args: argparse.Namespace) -> dict:
    """The compile_default unit for (task, seed): reused from any results/compile_default/*.jsonl
    compiled with the same options (none: the default compiler's; a unit compiled with other options,
    e.g. --stratify, is not it)."""
    cargs = compile_args(args)
    options = compile_default.unit_options(cargs)
    for path in sorted((HERE / "results" / "compile_default").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            u = json.loads(line)
            if u.get("labels") and compile_default.current(u) and (u.get("options") or {}) == options and \
                    (u["task"], u["seed"], u["test_n"], u["rows"], u["budget"]) == (
                    name, seed, args.test, args.rows, args.budget):
                return {**u, "source": f"{path.relative_to(HERE.parent)}"}
    u = compile_default.unit(name, seed, cargs)
    # kept at once: a run stopped in the (long) grid reuses the compile next time
    path = HERE / "results" / "compile_default" / "headroom-compiles.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(u) + "\n")
    compile_default.finished(name, seed, args.rows, args.budget, compile_default.option_suffix(options))
    return {**u, "source": f"{path.relative_to(HERE.parent)}"}


def grid_programs(program: lg.Program, rows: list[dict], k_grid: int, seed: int,
                  ctx: lg.RunContext, draw: int = 0) -> list[tuple[str, lg.Program]]:
    """Compile's single-lever candidates and its first ``k_grid`` combinations (in its order of
    prior promise), demos from all labelled rows; bootstrapped-demo candidates are left out (they
    need the program's own passing runs: the labelled-demo candidates stand for them). ``draw`` > 0
    draws the random demo sets again (``benchmarks/draws.py``); draw 0 is the grid's own."""
    opt = Compile()
    demos, _ = asyncio.run(labeled_demos_computed(program, rows, len(rows), None, ctx, nested=True))
    if not demos:
        raise RuntimeError("no labelled demos: the rows lack the program's output names")
    pool = {node: list(enumerate(ds)) for node, ds in demos.items()}
    rng = random.Random(f"grid:{seed}" + (f":draw{draw}" if draw else ""))
    specs = [s for s in opt._specs(program, pool, pool, ctx, rng)
             if not s.levers & {"boot", "boot2k"}]
    picked = [s for s in specs if len(s.levers) == 1] + [s for s in specs if len(s.levers) > 1][:k_grid]
    return [(s.label, s.program) for s in picked]


PROGRESS = "grid-progress.jsonl"  # grid configurations of units not finished yet, one per line


def _measured(name: str, seed: int, test_n: int, out: Path, grids: Path | None = None) -> dict[str, dict]:
    """Grid scores measured before for (task, seed, test rows), by program content hash: a program
    scored on the same test rows by the same greedy model scores the same (reused, not re-run).
    Read from finished units and from ``grid-progress.jsonl``, where a unit's configurations go as
    each is scored -- so a unit longer than a machine session resumes its grid on the next machine."""
    found: dict[str, dict] = {}
    # the default table's grids (``grids``; results/headroom unless told) serve a table of other options too
    folders = list(dict.fromkeys((grids or OUT, out)))
    lines = [line for folder in folders for path in (folder / "units-superseded.jsonl", folder / "units.jsonl")
             if path.exists() for line in path.read_text().splitlines()]
    for line in lines:
        u = json.loads(line)
        if (u["task"], u["seed"], u["test_n"]) == (name, seed, test_n):
            found.update({g["program_hash"]: g for g in u["grid"] if g.get("program_hash")
                          and g.get("runtime") == compile_default.RUNTIME_REV})
    for g in (g for folder in folders for g in _progress(folder)):
        same = (g["task"], g["seed"], g["test_n"]) == (name, seed, test_n)
        if same and g.get("runtime") == compile_default.RUNTIME_REV:
            found[g["program_hash"]] = {k: v for k, v in g.items() if k not in ("task", "seed", "test_n")}
    return found


def read_lines(path: Path) -> list[dict]:
    """The JSON lines of a results file written as work finishes (none if it is missing; a torn last
    line from a kill is skipped)."""
    if not path.exists():
        return []
    got = []
    for line in path.read_text().splitlines():
        try:
            got.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a kill
    return got


def append_line(path: Path, line: dict) -> None:
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a") as f:  # after a torn last line (a kill mid-write), start on a line of its own
        f.write(("\n" if torn else "") + json.dumps(line) + "\n")


def _progress(out: Path) -> list[dict]:
    return read_lines(out / PROGRESS)


def _append_progress(out: Path, line: dict) -> None:
    append_line(out / PROGRESS, line)


def _unit_done(out: Path, name: str, seed: int, test_n: int) -> None:
    """A finished unit holds its grid: its lines leave the progress file."""
    left = [g for g in _progress(out) if (g["task"], g["seed"], g["test_n"]) != (name, seed, test_n)]
    path = out / PROGRESS
    if left:
        path.write_text("".join(json.dumps(g) + "\n" for g in left))
    else:
        path.unlink(missing_ok=True)


def grid_unit(name: str, seed: int, args: argparse.Namespace, zero_mean: float | None = None) -> dict:
    """The oracle grid of (task, seed). ``zero_mean``: the zero-shot score the compile unit measured on
    the same test rows -- with it, a grid whose every configuration was measured before costs no call
    (the zero-shot scores are run only when a configuration must be scored against them)."""
    task = load(name)
    train, val, test = splits(task, seed, args)
    program = task.lmgraph_program()
    ctx = lg.RunContext(max_concurrency=2)
    metric = _metric(task)
    t0 = time.perf_counter()
    zero = None if zero_mean is not None else compile_default.zero_shot(
        program, test, metric, ctx, compile_default.zero_path(name, seed, len(test)))
    configs = []
    rows = [{**r, task.output: r[task.label_field]} for r in list(train) + list(val)]  # as compile_default
    before = _measured(name, seed, args.test, Path(args.out), Path(getattr(args, "grids", None) or OUT))
    for label, prog in grid_programs(program, rows, args.grid, seed, ctx):
        h = prog.content_hash()
        if h in before:
            configs.append({**before[h], "config": label})
            print(f"  {name} seed {seed} grid: {label:<55} {before[h]['mean']:.3f}  (measured before)", flush=True)
            continue
        if zero is None:
            zero = compile_default.zero_shot(program, test, metric, ctx,
                                             compile_default.zero_path(name, seed, len(test)))
        res = evaluate_sync(prog, test, metric, ctx=ctx, concurrency=4)
        pb = paired_bootstrap(zero.scores, res.scores)
        configs.append({"config": label, "mean": round(res.mean, 4), "ci": [round(x, 4) for x in res.ci],
                        "diff": round(pb["diff"], 4), "diff_ci": [round(pb["ci_low"], 4), round(pb["ci_high"], 4)],
                        "calls": res.usage.get("calls"), "program_hash": h,
                        "runtime": compile_default.RUNTIME_REV, "scores": [round(x, 4) for x in res.scores]})
        _append_progress(Path(args.out), {"task": name, "seed": seed, "test_n": args.test, **configs[-1]})
        print(f"  {name} seed {seed} grid: {label:<55} {res.mean:.3f}  {pb['diff']:+.3f}", flush=True)
    return {"zero_shot": round(zero.mean, 4) if zero is not None else zero_mean, "grid": configs,
            "grid_s": round(time.perf_counter() - t0, 1)}


def unit(name: str, seed: int, args: argparse.Namespace) -> dict:
    c = compile_unit(name, seed, args)
    # the default table's grid is measured with its own zero-shot run (the check below); a table of other
    # compile options reuses those grids against its compile unit's zero-shot score
    g = grid_unit(name, seed, args, c["zero_shot"] if getattr(args, "max_scored_rows", None) else None)
    if abs(g["zero_shot"] - c["zero_shot"]) > 1e-9:  # same rows, same program, greedy: must agree
        raise RuntimeError(f"{name} seed {seed}: zero-shot {g['zero_shot']} here vs {c['zero_shot']} in "
                           f"{c['source']} -- the reused compile unit is not from this model/code")
    best = max(g["grid"], key=lambda r: r["mean"], default=None)
    oracle = max(best["mean"], g["zero_shot"]) if best else g["zero_shot"]
    headroom = oracle - g["zero_shot"]
    gain = c["compiled"] - c["zero_shot"]
    return {"task": name, "seed": seed, "test_n": c["test_n"], "rows": c["rows"], "budget": c["budget"],
            "zero_shot": c["zero_shot"], "compiled": c["compiled"], "diff": c["diff"], "diff_ci": c["diff_ci"],
            "chosen": c["chosen"], "compile_calls": c["compile_calls"], "compile_source": c["source"],
            "compiler": c.get("compiler"), "runtime": c.get("runtime"), "lever_effects": c.get("lever_effects"),
            "oracle": round(oracle, 4), "oracle_config": best["config"] if best and best["mean"] > g["zero_shot"]
            else "zero-shot", "headroom": round(headroom, 4),
            "recovered": round(gain / headroom, 3) if headroom > 0 else None, "grid": g["grid"],
            "grid_s": g["grid_s"], **({"options": c["options"]} if c.get("options") else {}),
            **{k: c[k] for k in ("zero_scores", "compiled_scores") if k in c}}


def _headroom_significant(u: dict) -> bool:
    """Whether the oracle's best grid configuration beats zero-shot with a paired 95% CI above 0 (where
    it does not, the headroom is within noise and "recovered" says little)."""
    best = max(u["grid"], key=lambda r: r["mean"], default=None)
    return bool(best and best["mean"] > u["zero_shot"] and best["diff_ci"][0] > 0)


def recovered_interval(us: list[dict], draws: int = 20000) -> tuple[float, float, str] | None:
    """A 95% interval for the share recovered over seeds (mean gain / mean headroom), and how it was
    made. Where every unit keeps its per-row test scores (zero-shot, compiled, the oracle's
    configuration), a paired bootstrap: the test rows of each seed resampled together, 2,000 seeded
    times. Otherwise an approximation: each seed's paired gain and its oracle's paired headroom taken
    as normal with the standard error their 95% CIs imply, independent of each other (they share the
    zero-shot scores, so the true interval is narrower: this one errs wide). Either way the ratio's
    2.5th and 97.5th percentiles (``inf`` where the headroom reaches 0), the oracle held at the
    configuration that scored best (its upward bias as the best of several noisy scores is not
    corrected). None without a positive headroom."""
    best = [max(u["grid"], key=lambda r: r["mean"], default=None) for u in us]
    if any(b is None for b in best):
        return None
    g = sum(u["compiled"] - u["zero_shot"] for u in us) / len(us)
    h = sum(u["headroom"] for u in us) / len(us)
    if h <= 0:
        return None
    rows = [(u.get("zero_scores"), u.get("compiled_scores"), b.get("scores") if b else None) for u, b in zip(us, best)]
    if all(z and c and o and len(z) == len(c) == len(o) for z, c, o in rows):
        rng, ratios = random.Random(0), []
        for _ in range(2000):
            gs, hs = 0.0, 0.0
            for z, c, o in rows:
                idx = [rng.randrange(len(z)) for _ in z]
                zm = sum(z[i] for i in idx)
                gs += (sum(c[i] for i in idx) - zm) / len(idx)
                hs += max(0.0, (sum(o[i] for i in idx) - zm) / len(idx))
            ratios.append(gs / hs if hs > 0 else math.inf)
        return (*_middle95(ratios), "paired bootstrap")

    def se(ci: list[float]) -> float:
        return (ci[1] - ci[0]) / 3.92

    g_se = math.sqrt(sum(se(u["diff_ci"]) ** 2 for u in us)) / len(us)
    h_se = math.sqrt(sum(se(b["diff_ci"]) ** 2 for b in best if b)) / len(us)
    rng = random.Random(0)
    ratios = []
    for _ in range(draws):
        gg, hh = rng.gauss(g, g_se), rng.gauss(h, h_se)
        ratios.append(gg / hh if hh > 0 else math.inf)
    return (*_middle95(ratios), "approx.")


def _middle95(values: list[float]) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of ``values`` (sorted in place)."""
    values.sort()
    return values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]


def _share(x: float) -> str:
    return "unbounded" if math.isinf(x) else f"{100 * x:.0f}%"


def chosen_on_grid(u: dict) -> str:
    """The grid's test score for the configuration the compile chose ("-" where the grid has none: the
    program as given, bootstrapped demos, or a combination past the grid's first ones)."""
    label = u["chosen"].removesuffix(" (confirmed)")
    hit = next((r for r in u.get("grid", []) if r["config"] == label), None)
    return "-" if hit is None else f"{hit['mean']:.3f}"


TABLE_ORDER = ("trec", "sst2", "hotpotqa", "banking77", "gsm8k")  # the table's rows: by task, then seed


def write_md(out: Path, units: list[dict], command: str) -> None:
    units = sorted(units, key=lambda u: (TABLE_ORDER.index(u["task"]) if u["task"] in TABLE_ORDER
                                         else len(TABLE_ORDER), u["seed"]))
    options = next((u["options"] for u in units if u.get("options")), None)
    who = f"`Compile({', '.join(f'{k}={v!r}' for k, v in options.items())})`" if options else "the default compiler"
    lines = [f"# Headroom: zero-shot, {who}, and an oracle grid on test", "",
             f"`{command}` -- {MODEL}. The command resumes: each (task, seed) unit is kept in `units.jsonl` "
             "as it finishes and skipped by the next run, so the table may have been filled by several runs of it.",
             "",
             "The oracle grid is scored on the TEST rows: a diagnostic of the headroom available in the compiler's own "
             "search space, never used for selection. Its best is the max of several noisy scores (biased upward).",
             "", "\"Chosen, on the grid\": the grid's score for the configuration the compile chose, built from all "
             "the labelled rows (its own demo draw, and a nearest-demo pool that includes the compile's confirmation "
             "rows): where it is far from the compiled score, the gap is the demos, not the choice.",
             "", "| task | seed | zero-shot | compiled | paired diff [95% CI] | chosen | chosen, on the grid | "
             "oracle (best grid config) | headroom | recovered |", "|---|---|---|---|---|---|---|---|---|---|"]
    for u in units:
        rec = "-" if u["recovered"] is None else f"{100 * u['recovered']:.0f}%"
        lines.append(f"| {u['task']} | {u['seed']} | {u['zero_shot']:.3f} | {u['compiled']:.3f} | {u['diff']:+.3f} "
                     f"[{u['diff_ci'][0]:+.3f}, {u['diff_ci'][1]:+.3f}] | {u['chosen']} | {chosen_on_grid(u)} | "
                     f"{u['oracle']:.3f} ({u['oracle_config']}) | {u['headroom']:+.3f} | {rec} |")
    lines += ["", "## Mean over seeds", "", "| task | seeds | mean gain | mean headroom | recovered (mean gain / mean "
              "headroom) | 95% interval of the share | never significantly worse | seeds whose oracle beats "
              "zero-shot significantly |", "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(u["task"] for u in units):
        us = [u for u in units if u["task"] == name]
        g = sum(u["compiled"] - u["zero_shot"] for u in us) / len(us)
        h = sum(u["headroom"] for u in us) / len(us)
        worse = any(u["diff_ci"][1] < 0 for u in us)
        real = sum(_headroom_significant(u) for u in us)
        rec = f"{100 * g / h:.0f}%" if h > 0 else "no headroom"
        if h > 0 and not real:  # a share of a headroom no seed shows beyond noise says nothing
            rec += " (headroom within noise on every seed)"
        iv = recovered_interval(us) if h > 0 else None
        span = f"[{_share(iv[0])}, {_share(iv[1])}] ({iv[2]})" if iv else "-"
        lines.append(f"| {name} | {', '.join(str(u['seed']) for u in us)} | {g:+.3f} | {h:+.3f} | {rec} | {span} | "
                     f"{'NO' if worse else 'yes'} | {real} of {len(us)} |")
    lines += ["", "Where the oracle's best configuration does not beat zero-shot with a paired 95% CI above 0, the "
              "headroom is within noise and the share recovered says little about the compiler.", "",
              "The share's 95% interval (`recovered_interval`): \"paired bootstrap\" where the units keep their "
              "per-row test scores (each seed's test rows resampled together); \"approx.\" where they do not "
              "(units measured before 2026-12-08): each seed's paired gain and its oracle's paired headroom taken "
              "as independent normals with the standard errors their 95% CIs imply, the ratio's percentiles over "
              "20,000 seeded draws -- both differences share the zero-shot scores, so the true interval is "
              "narrower (this one errs wide). Neither corrects the oracle's upward bias (best of several noisy "
              "scores).", "", "## Grids", ""]
    for u in units:
        lines += [f"### {u['task']} seed {u['seed']} (zero-shot {u['zero_shot']:.3f}, n={u['test_n']})", "",
                  "| configuration | test mean [95% CI] | vs zero-shot [95% CI] | calls |", "|---|---|---|---|"]
        for r in u["grid"]:
            lines.append(f"| {r['config']} | {r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['diff']:+.3f} "
                         f"[{r['diff_ci'][0]:+.3f}, {r['diff_ci'][1]:+.3f}] | {r['calls']} |")
        lines.append("")
    (out / "README.md").write_text("\n".join(lines) + "\n")


DEFAULT_TASKS = "trec,sst2,banking77,hotpotqa,gsm8k"


def default_out(max_scored_rows: int | str | None) -> Path:
    """A table's folder unless --out says otherwise: the default compiler's, or one per compile option."""
    return OUT if max_scored_rows is None else OUT.parent / f"headroom-scored{max_scored_rows}"


def table_command(args: argparse.Namespace, tasks: list[str], seeds: list[int]) -> str:
    """The command that fills a whole table: its tasks and seeds (those in it and this run's), and every
    setting that is not the default's."""
    names = list(dict.fromkeys(tasks))
    task_arg = DEFAULT_TASKS if set(names) <= set(DEFAULT_TASKS.split(",")) else ",".join(names)
    seed_arg = ",".join(str(s) for s in sorted(set(seeds) | {0, 1, 2}))
    own = default_out(args.max_scored_rows)
    return (f"python benchmarks/headroom.py --tasks {task_arg} --seeds {seed_arg}"
            + "".join(f" --{k} {getattr(args, k)}" for k, d in (("test", 100), ("rows", 400), ("budget", 800),
                                                                ("grid", 6)) if getattr(args, k) != d)
            + (f" --max-scored-rows {args.max_scored_rows}" if args.max_scored_rows is not None else "")
            + (f" --out {Path(args.out).resolve().relative_to(HERE.parent)}"
               if Path(args.out).resolve() != own.resolve() else "")
            + (f" --grids {Path(args.grids).resolve().relative_to(HERE.parent)}"
               if args.grids and Path(args.grids).resolve() != OUT.resolve() else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="trec,sst2,banking77,hotpotqa,gsm8k")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--budget", type=int, default=800)
    ap.add_argument("--grid", type=int, default=6,
                    help="combinations in the grid (the compiler's first N), beside every single lever")
    ap.add_argument("--order", choices=("seed", "task"), default="seed",
                    help="seed: every task on a seed before the next seed; task: every seed of a task first")
    ap.add_argument("--max-scored-rows", default=None,
                    help="compile with Compile(max_scored_rows=...) ('measured' or a number) instead of the "
                         "default; the table goes to results/headroom-scored<value>/ unless --out is given, and "
                         "reuses the default table's grids")
    ap.add_argument("--out", default=None, help="results folder (default: results/headroom)")
    ap.add_argument("--grids", default=None,
                    help="with --max-scored-rows: the folder of the default table whose grids are reused "
                         "(default: results/headroom; e.g. results/headroom-unseen)")
    ap.add_argument("--render", action="store_true",
                    help="only write README.md again from the finished units in units.jsonl (no model call)")
    args = ap.parse_args()
    if args.max_scored_rows not in (None, "measured"):
        args.max_scored_rows = int(args.max_scored_rows)
    if args.out is None:
        args.out = str(default_out(args.max_scored_rows))
    out = Path(args.out)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "units.jsonl"
    done = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    # the table is of one revision of the compiler and runtime: units of another move to units-superseded.jsonl
    # (their grid scores are still reused) and are measured again when their (task, seed) is run
    stale = [u for u in done if not compile_default.current(u)]
    if stale:
        with (out / "units-superseded.jsonl").open("a") as f:
            f.writelines(json.dumps(u) + "\n" for u in stale)
        done = [u for u in done if compile_default.current(u)]
        jsonl.write_text("".join(json.dumps(u) + "\n" for u in done))
        print(f"{len(stale)} units of another compiler or runtime revision moved to units-superseded.jsonl", flush=True)
    # the command that fills the whole table (a run of a subset of it resumes the same table)
    mine = ([], []) if args.render else (tasks, seeds)  # a re-render: the table's own tasks and seeds
    command = table_command(args, [u["task"] for u in done] + mine[0], [u["seed"] for u in done] + mine[1])
    if args.render:
        write_md(out, done, command)
        return
    plan = [(t, s) for t in tasks for s in seeds] if args.order == "task" else [(t, s) for s in seeds for t in tasks]
    for name, seed in plan:
        if any((u["task"], u["seed"], u["test_n"], u["budget"]) == (name, seed, args.test, args.budget) for u in done):
            continue
        u = unit(name, seed, args)
        done.append(u)
        with jsonl.open("a") as f:
            f.write(json.dumps(u) + "\n")
        _unit_done(out, name, seed, args.test)
        compile_default.drop_zero(name, seed, args.test)
        write_md(out, done, command)
        print(json.dumps({k: v for k, v in u.items() if k != "grid"}), flush=True)


if __name__ == "__main__":
    main()
