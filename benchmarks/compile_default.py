"""Does the default compiler (``lg.compile`` / ``Compile``) help on the benchmark tasks? Zero-shot vs
compiled on the same seeded test rows, in process on the embedded model, per task and split seed.

    .venv/bin/python benchmarks/compile_default.py --tasks trec,sst2 --seeds 0,1,2 [--test 100]
        [--rows 400] [--budget 800] [--name STEM] [--stratify] [--verbalize] [--min-race-rows N]
        [--max-scored-rows N] [--knn-match text]

For every (task, seed): the task's zero-shot program is scored on ``--test`` test rows, compiled
with ``Compile()`` under ``--budget`` calls on ``--rows`` labelled rows (the task's train+val split;
the compiler never sees test rows) and scored again on the same test rows; the paired difference
and its 95% CI are reported. The compile keeps a checkpoint of its finished evaluations in
``benchmarks/results/compile_default/checkpoints/`` while it runs (removed once the unit is recorded):
a unit longer than a machine session (Banking77, GSM8K: hours on 2 cores) is resumed on the next
machine from the committed checkpoint, replaying what it finished with the same spend and result.
Each finished unit is appended to ``benchmarks/results/compile_default/<tasks>.jsonl`` at once (a
killed run keeps what it finished; a rerun skips finished units), and ``.md`` is rewritten after
each. The compile's report (every candidate raced, with its per-row scores, and the notes) goes to
``benchmarks/results/compile_default/reports/<task>-seed<seed>-rows<rows>-budget<budget>.json``.
``--stratify`` compiles with ``Compile(stratify=True)`` (the race's rows in an order as hard for the
baseline as the whole search fold): its units carry ``"options": {"stratify": true}``, its reports and
checkpoints a ``-stratified`` suffix, so they never mix with the default's. ``--verbalize`` likewise
compiles with ``Compile(verbalize=True)`` (labels that read as identifiers also tried as plain
words; ``"options": {"verbalize": true}``, suffix ``-verbalized``), and ``--min-race-rows N`` with
``Compile(min_race_rows=N)`` (no candidate dropped on fewer than N search rows; suffix ``-raceN``),
``--max-scored-rows N`` with ``Compile(max_scored_rows=N)`` (N labelled rows scored, the rest demo
sources only, instead of what a quarter of the budget covers at a row's upper-bound cost; suffix
``-scoredN``; ``measured``: as many as the quarter covers at the calls the baseline's first rows
took, suffix ``-scoredmeasured``); ``--knn-match text`` with ``Compile(knn_match="text")`` (nearest
demos matched on a node's text inputs where it also sees lists of passages; suffix ``-knntext``).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lmgraph as lg  # noqa: E402
from lmgraph.evaluation import EvalResult, evaluate_sync, paired_bootstrap  # noqa: E402
from lmgraph.optimizers import Compile  # noqa: E402

from tasks import Sizes, load  # noqa: E402

# which version of the compiler's search a unit measured: units of another revision are never
# reused (benchmarks/headroom.py checks it)
COMPILER_REV = ("single-lever screening, finalists, waves that pass over what the budget cannot cover, "
                "new demo draws with the budget left, race planned at the calls rows took (2026-12-04)")
# which version of how a program runs: a change that can move a score (a prompt that did not fit the
# context window used to fail its row; now its farthest demos are dropped) makes earlier units stale
RUNTIME_REV = "demos that do not fit the context window are dropped, farthest first (2026-12-04)"


CHECKPOINTS = HERE / "results" / "compile_default" / "checkpoints"
DEFAULT_MIN_RACE_ROWS = inspect.signature(Compile).parameters["min_race_rows"].default


def runtime_tag() -> str:
    """The short hash of RUNTIME_REV that names a unit's kept files: a file another runtime wrote is not reused."""
    return hashlib.sha256(RUNTIME_REV.encode()).hexdigest()[:8]


def checkpoint_path(task_name: str, seed: int, rows: int, budget: int, suffix: str = "") -> Path:
    """Where the compile of (task, seed, rows, budget) keeps its finished evaluations while it runs.
    The name carries the runtime revision: evaluations recorded by another runtime are not replayed
    (the checkpoint's own fingerprint covers the program, data, seed, budget and settings)."""
    return CHECKPOINTS / f"{task_name}-seed{seed}-rows{rows}-budget{budget}{suffix}-runtime{runtime_tag()}.jsonl"


def current(unit: dict) -> bool:
    """Was ``unit`` measured by this revision of the compiler and of the runtime?"""
    return unit.get("compiler") == COMPILER_REV and unit.get("runtime") == RUNTIME_REV


def unit(task_name: str, seed: int, args: argparse.Namespace) -> dict:
    task = load(task_name)
    n_val = args.rows * 15 // 100
    train, val, test = task.splits(seed, Sizes(args.rows - n_val, n_val, args.test))
    # the labelled rows carry the program's output name (as a user's rows do, and as suite.py gives
    # every optimizer): without it the compiler sees no labels and draws demos only from the
    # baseline's passing runs (the table of commit d16c619 ran that way)
    train, val = ([{**r, task.output: r[task.label_field]} for r in part] for part in (train, val))
    program = task.lmgraph_program()
    ctx = lg.RunContext(max_concurrency=2)

    def metric(ex, pred, trace=None):  # noqa: ANN001, ANN202
        return task.score(dict(ex), dict(pred))

    zero = zero_shot(program, test, metric, ctx, zero_path(task_name, seed, len(test)))
    t0 = time.perf_counter()
    options = unit_options(args)
    suffix = option_suffix(options)
    ckpt = checkpoint_path(task_name, seed, args.rows, args.budget, suffix)
    compiled, report = Compile(checkpoint=ckpt, **options).optimize(program, train, metric, valset=val,
                                                                    budget=lg.Budget(max_calls=args.budget), seed=seed,
                                                                    ctx=ctx)
    compile_s = time.perf_counter() - t0
    comp = evaluate_sync(compiled, test, metric, ctx=ctx, concurrency=4)
    pb = paired_bootstrap(zero.scores, comp.scores)
    # the compile's report (every candidate raced, per-row scores, notes), for reading why it chose
    path = report_path(task_name, seed, args.rows, args.budget, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(report.to_dict(timing=False), indent=1) + "\n")
    best = report.best
    return {"task": task_name, "seed": seed, "test_n": len(test), "rows": len(train) + len(val),
            "budget": args.budget, "zero_shot": round(zero.mean, 4), "zero_ci": [round(x, 4) for x in zero.ci],
            "compiled": round(comp.mean, 4), "compiled_ci": [round(x, 4) for x in comp.ci],
            "diff": round(pb["diff"], 4), "diff_ci": [round(pb["ci_low"], 4), round(pb["ci_high"], 4)],
            # per test row, in the split's order: a share of the oracle's headroom gets a paired interval
            "zero_scores": [round(x, 4) for x in zero.scores], "compiled_scores": [round(x, 4) for x in comp.scores],
            "chosen": best.label if best.id != report.baseline.id else "unchanged (program as given)",
            "expected_gain": round(best.evidence.get("expected_gain", 0.0), 4),
            "compile_calls": report.spent.get("calls"), "compile_s": round(compile_s, 1),
            "stopped": report.stopped, "labels": True, "compiler": COMPILER_REV, "runtime": RUNTIME_REV,
            "lever_effects": report.data.get("lever_effects"),
            # evaluations replayed from a checkpoint an earlier (killed) run of this unit left: the same
            # result and spend as one uninterrupted run; its compile_s is this run's time only
            "replayed_evaluations": report.runtime.get("replayed_evaluations", 0),
            **({"options": options} if options else {})}


def unit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The non-default ``Compile`` options a unit is compiled with (none: the default compiler)."""
    got: dict[str, Any] = {k: True for k in ("stratify", "verbalize") if getattr(args, k, False)}
    if getattr(args, "min_race_rows", None) not in (None, DEFAULT_MIN_RACE_ROWS):
        got["min_race_rows"] = args.min_race_rows
    if getattr(args, "max_scored_rows", None) is not None:
        got["max_scored_rows"] = args.max_scored_rows
    if getattr(args, "knn_match", "all") != "all":
        got["knn_match"] = args.knn_match
    return got


def option_suffix(options: dict[str, Any]) -> str:
    """What names the files of a unit compiled with non-default options (none for the default's)."""
    return (("-stratified" if options.get("stratify") else "") + ("-verbalized" if options.get("verbalize") else "")
            + (f"-race{options['min_race_rows']}" if options.get("min_race_rows") else "")
            + (f"-scored{options['max_scored_rows']}" if options.get("max_scored_rows") else "")
            + (f"-knn{options['knn_match']}" if options.get("knn_match") else ""))


def report_path(task_name: str, seed: int, rows: int, budget: int, suffix: str = "") -> Path:
    """Where a unit's compile report (every candidate raced, per-row scores, notes) is kept."""
    name = f"{task_name}-seed{seed}-rows{rows}-budget{budget}{suffix}.json"
    return HERE / "results" / "compile_default" / "reports" / name


def zero_path(task_name: str, seed: int, test_n: int) -> Path:
    """Where the zero-shot scores on the test rows of (task, seed) are kept while a unit runs."""
    return CHECKPOINTS / f"{task_name}-seed{seed}-test{test_n}-runtime{runtime_tag()}.zero.json"


def zero_shot(program: lg.Program, test: list[dict], metric, ctx: lg.RunContext,  # noqa: ANN001
              path: Path) -> EvalResult:
    """The zero-shot program scored on the test rows, kept at ``path`` (committed with the checkpoint)
    while the unit runs: a unit resumed on the next machine, and headroom.py's grid after the compile,
    do not score it again (minutes each time on 2 cores for Banking77 or GSM8K). Reused only for the
    same program, test rows, runtime revision and llama-cpp-python version."""
    from importlib.metadata import version
    key = hashlib.sha256(json.dumps([program.content_hash(), test, RUNTIME_REV, version("llama_cpp_python")],
                                    sort_keys=True, default=str).encode()).hexdigest()
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError:  # cut off by a kill mid-write: score it again
            saved = {}
        if saved.get("key") == key:
            n = len(saved["scores"])
            return EvalResult(saved["scores"], [None] * n, [], 0.0, statuses=saved["statuses"])
    zero = evaluate_sync(program, test, metric, ctx=ctx, concurrency=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "scores": zero.scores, "statuses": zero.statuses}) + "\n")
    tmp.replace(path)
    return zero


def finished(task_name: str, seed: int, rows: int, budget: int, suffix: str = "") -> None:
    """The unit is recorded: its checkpoint has served its purpose (its zero-shot scores leave with
    :func:`drop_zero`, once whatever else uses them -- headroom.py's grid -- is done too)."""
    checkpoint_path(task_name, seed, rows, budget, suffix).unlink(missing_ok=True)


def drop_zero(task_name: str, seed: int, test_n: int) -> None:
    zero_path(task_name, seed, test_n).unlink(missing_ok=True)


def write_md(path: Path, units: list[dict], command: str) -> None:
    lines = ["# The default compiler vs zero-shot (in process, SmolLM2-135M, greedy)", "", f"`{command}`", "",
             "| task | seed | test n | zero-shot [95% CI] | compiled [95% CI] | paired diff [95% CI] | chosen | "
             "compile calls |", "|---|---|---|---|---|---|---|---|"]
    for u in units:
        lines.append(f"| {u['task']} | {u['seed']} | {u['test_n']} | {u['zero_shot']:.3f} [{u['zero_ci'][0]:.3f}, "
                     f"{u['zero_ci'][1]:.3f}] | {u['compiled']:.3f} [{u['compiled_ci'][0]:.3f}, "
                     f"{u['compiled_ci'][1]:.3f}] | {u['diff']:+.3f} [{u['diff_ci'][0]:+.3f}, {u['diff_ci'][1]:+.3f}] "
                     f"| {u['chosen']} | {u['compile_calls']} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="trec,sst2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--budget", type=int, default=800)
    ap.add_argument("--stratify", action="store_true",
                    help="compile with Compile(stratify=True): race rows as hard for the baseline as the fold")
    ap.add_argument("--verbalize", action="store_true",
                    help="compile with Compile(verbalize=True): identifier labels also tried as plain words")
    ap.add_argument("--min-race-rows", type=int, default=DEFAULT_MIN_RACE_ROWS,
                    help="compile with Compile(min_race_rows=N): no candidate dropped on fewer search rows "
                         f"(default {DEFAULT_MIN_RACE_ROWS}, the compiler's)")
    ap.add_argument("--max-scored-rows", type=lambda v: v if v == "measured" else int(v), default=None,
                    help="compile with Compile(max_scored_rows=N): N labelled rows scored, the others demo "
                         "sources only, or 'measured': as many as a quarter of the budget covers at the calls "
                         "the baseline's rows take (default: the compiler's, at a row's upper-bound cost)")
    ap.add_argument("--knn-match", choices=("all", "text"), default="all",
                    help="compile with Compile(knn_match='text'): nearest demos matched on a node's text inputs "
                         "where it also sees lists (retrieved passages); default: on every input")
    ap.add_argument("--name", default=None,
                    help="results file stem (default: the tasks joined by '-', then -test<n>-labelled)")
    args = ap.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    stem = args.name or ("-".join(tasks) + f"-test{args.test}-labelled")
    out = HERE / "results" / "compile_default" / stem
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    done = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    command = "python benchmarks/compile_default.py " + " ".join(sys.argv[1:])
    options = unit_options(args)
    for seed in seeds:
        for name in tasks:
            if any((u["task"], u["seed"], u["test_n"], u["rows"], u["budget"], u.get("options", {})) == (
                    name, seed, args.test, args.rows, args.budget, options) for u in done):
                continue
            u = unit(name, seed, args)
            done.append(u)
            with jsonl.open("a") as f:
                f.write(json.dumps(u) + "\n")
            finished(name, seed, args.rows, args.budget, option_suffix(options))
            drop_zero(name, seed, args.test)
            write_md(out.with_suffix(".md"), done, command)
            print(json.dumps(u), flush=True)


if __name__ == "__main__":
    main()
