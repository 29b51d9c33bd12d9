"""Does the embedded model's 2,048-token context window cost the demo levers their gain? One grid
configuration (``benchmarks/headroom.py``'s program for it, demos from all labelled rows) is scored
on the same test rows with the embedded model loaded at two context sizes, in process:

    .venv/bin/python benchmarks/context_window.py --task hotpotqa --seed 1 --config "4 nearest demos"

At the default ``n_ctx`` a prompt that does not fit with all its demos is sent with the demos farthest
from the input left out (``ContextFitWarning``; the compile reports count them: "answer: 101 row runs,
112 demos left out" on HotPotQA seed 1); at the larger size every demo is shown whole. The paired
difference says whether the left-out demos were worth the room.

Diagnostic only, like the grid: scored ON THE TEST ROWS and never used for selection. The result is
appended to ``results/headroom/context_window.jsonl`` and ``results/headroom/context_window.md`` is
rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import headroom  # noqa: E402

import lmgraph as lg  # noqa: E402
from lmgraph.errors import ContextFitWarning  # noqa: E402
from lmgraph.evaluation import evaluate_sync, paired_bootstrap  # noqa: E402
from lmgraph.lm.llamacpp import LlamaCppLM  # noqa: E402

from tasks import load  # noqa: E402

OUT = HERE / "results" / "headroom"


def measure(task_name: str, seed: int, config: str, sizes: tuple[int, int], rows: int, test: int) -> dict:
    args = SimpleNamespace(rows=rows, test=test, budget=0, grid=3)
    task = load(task_name)
    train, val, test_rows = headroom.splits(task, seed, args)
    program = task.lmgraph_program()
    labelled = [{**r, task.output: r[task.label_field]} for r in list(train) + list(val)]
    programs = dict(headroom.grid_programs(program, labelled, args.grid, seed, lg.RunContext(max_concurrency=2)))
    if config not in programs:
        raise SystemExit(f"no grid configuration {config!r}; the grid has: {', '.join(programs)}")
    metric = headroom._metric(task)
    scored = {}
    for n_ctx in sizes:
        ctx = lg.RunContext(lm=LlamaCppLM(n_ctx=n_ctx), max_concurrency=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContextFitWarning)  # counted below, from the traces
            res = evaluate_sync(programs[config], test_rows, metric, ctx=ctx, concurrency=2)
        dropped = [sum(n.meta.get("demos_dropped", 0) for n in (r.trace.nodes if r.trace else ()))
                   for r in res.results]
        scored[n_ctx] = {"mean": round(res.mean, 4), "ci": [round(x, 4) for x in res.ci],
                         "calls": res.usage.get("calls"), "rows_with_demos_left_out": sum(1 for d in dropped if d),
                         "demos_left_out": sum(dropped), "scores": [round(s, 4) for s in res.scores]}
        print(f"n_ctx={n_ctx}: {res.mean:.4f} [{res.ci[0]:.3f}, {res.ci[1]:.3f}], "
              f"{sum(dropped)} demos left out", flush=True)
    small, large = sizes
    pb = paired_bootstrap(scored[small]["scores"], scored[large]["scores"])
    return {"task": task_name, "seed": seed, "test_n": len(test_rows), "config": config, "sizes": list(sizes),
            "scored": {str(k): v for k, v in scored.items()},
            "diff": round(pb["diff"], 4), "diff_ci": [round(pb["ci_low"], 4), round(pb["ci_high"], 4)]}


def render(units: list[dict]) -> str:
    lines = ["# Context window: the demos left out at n_ctx 2,048 vs every demo shown whole", "",
             "`.venv/bin/python benchmarks/context_window.py --task <task> --seed <seed> --config <config>` -- "
             "SmolLM2-135M-Instruct Q4_1 (embedded llama.cpp, greedy), the grid's program for the configuration "
             "(`results/headroom/README.md`). Diagnostic only: scored on the TEST rows, never used for selection.", "",
             "| task | seed | test n | configuration | smaller n_ctx [95% CI] (demos left out, rows) | "
             "larger n_ctx [95% CI] (demos left out, rows) | larger - smaller [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for u in units:
        a, b = (u["scored"][str(s)] for s in u["sizes"])
        lines.append(f"| {u['task']} | {u['seed']} | {u['test_n']} | {u['config']} | "
                     f"{u['sizes'][0]}: {a['mean']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] "
                     f"({a['demos_left_out']}, {a['rows_with_demos_left_out']}) | "
                     f"{u['sizes'][1]}: {b['mean']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}] "
                     f"({b['demos_left_out']}, {b['rows_with_demos_left_out']}) | "
                     f"{u['diff']:+.3f} [{u['diff_ci'][0]:+.3f}, {u['diff_ci'][1]:+.3f}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="hotpotqa")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--config", default="4 nearest demos")
    ap.add_argument("--sizes", default="2048,4096", help="the two n_ctx values, smaller first")
    ap.add_argument("--rows", type=int, default=400, help="labelled rows, as in headroom.py")
    ap.add_argument("--test", type=int, default=100)
    args = ap.parse_args()
    small, large = (int(x) for x in args.sizes.split(","))
    unit = measure(args.task, args.seed, args.config, (small, large), args.rows, args.test)
    path = OUT / "context_window.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(unit) + "\n")
    units = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    (OUT / "context_window.md").write_text(render(units))
    print(render(units))


if __name__ == "__main__":
    main()
