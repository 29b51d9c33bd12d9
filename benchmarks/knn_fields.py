"""Which inputs should the nearest demos be matched on? HotPotQA's answer node, on labelled rows only.

The answer node of ``tasks/hotpotqa.py`` sees ``context`` (3 retrieved passages, a few hundred words)
and ``question`` (a dozen). BM25 over both -- ``Predict(knn=4)``'s default -- is decided by the
passages; ``knn_fields=("question",)`` matches on the question alone (questions of the same kind:
comparisons, yes/no, "which year"), the shape a small model copies.

For each split seed the 400 labelled rows of the benchmark's cut (the rows a compile sees; never
the test rows) are cut again, seeded: 300 form the demo pool (each with the passages the retriever
gives its question) and the other 100 are scored -- zero-shot, 4 nearest demos on every input, 4
nearest demos by question -- with paired bootstrap differences. A diagnostic for designing the
search space, like ``levers.py --on dev``; no compile, no test row.

    .venv/bin/python benchmarks/knn_fields.py --seeds 0,1,2

writes ``results/knn_fields.{jsonl,md}`` (one line per seed, kept as it finishes: the command resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import headroom  # noqa: E402

import lmgraph as lg  # noqa: E402
from lmgraph.evaluation import evaluate_sync, paired_bootstrap  # noqa: E402
from lmgraph.optimizers.fewshot import labeled_demos_computed  # noqa: E402

from tasks import load  # noqa: E402

OUT = HERE / "results" / "knn_fields"
CONFIGS = ("zero-shot (as given)", "4 nearest demos (every input)", "4 nearest demos (by question)")


def labelled_cut(seed: int, rows: int = 400, pool: int = 300) -> tuple[list[dict], list[dict]]:
    """(pool rows, scored rows): the benchmark's labelled rows for ``seed``, cut again (seeded)."""
    task = load("hotpotqa")
    train, val, _ = headroom.splits(task, seed, argparse.Namespace(rows=rows, test=100))
    labelled = [{**r, task.output: r[task.label_field]} for r in list(train) + list(val)]
    order = list(range(len(labelled)))
    random.Random(f"knn_fields:{seed}").shuffle(order)
    return [labelled[i] for i in order[:pool]], [labelled[i] for i in order[pool:]]


def programs(pool_rows: list[dict], ctx: lg.RunContext) -> list[tuple[str, lg.Program]]:
    program = load("hotpotqa").lmgraph_program()
    demos, _ = asyncio.run(labeled_demos_computed(program, pool_rows, len(pool_rows), None, ctx))
    pool = demos["answer"]
    every = program.with_parameters({"answer.knn": 4, "answer.demo_pool": pool})
    by_question = every.with_parameters({"answer.knn_fields": ("question",)})
    return list(zip(CONFIGS, (program, every, by_question)))


def unit(seed: int) -> dict:
    task = load("hotpotqa")
    ctx = lg.RunContext(max_concurrency=2)
    pool_rows, scored = labelled_cut(seed)
    metric = headroom._metric(task)
    t0 = time.perf_counter()
    results = {}
    for label, prog in programs(pool_rows, ctx):
        results[label] = evaluate_sync(prog, scored, metric, ctx=ctx, concurrency=4)
        print(f"  hotpotqa seed {seed}: {label:<32} {results[label].mean:.3f}", flush=True)
    zero, every, by_q = (results[c] for c in CONFIGS)
    out = {"task": "hotpotqa", "seed": seed, "pool": len(pool_rows), "scored": len(scored), "configs": []}
    for label in CONFIGS:
        r = results[label]
        vs_zero = paired_bootstrap(zero.scores, r.scores)
        out["configs"].append({"config": label, "mean": round(r.mean, 4), "ci": [round(x, 4) for x in r.ci],
                               "vs_zero": [round(vs_zero[k], 4) for k in ("diff", "ci_low", "ci_high")],
                               "calls": r.usage.get("calls")})
    d = paired_bootstrap(every.scores, by_q.scores)
    out["by_question_vs_every"] = [round(d[k], 4) for k in ("diff", "ci_low", "ci_high")]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _cell(x: dict) -> str:
    return f"{x['mean']:.3f} [{x['vs_zero'][0]:+.3f}, CI {x['vs_zero'][1]:+.3f}..{x['vs_zero'][2]:+.3f}]"


def write_md(units: list[dict]) -> None:
    lines = ["# Nearest demos matched on every input vs on the question (HotPotQA, labelled rows only)", "",
             "`.venv/bin/python benchmarks/knn_fields.py --seeds 0,1,2` -- SmolLM2-135M-Instruct Q4_1 (embedded "
             "llama.cpp, greedy). Per seed: the benchmark's 400 labelled rows cut into a 300-row demo pool and "
             "100 scored rows (F1); no test row.", "",
             "| seed | zero-shot | 4 nearest (every input) [vs zero-shot] | 4 nearest (by question) [vs zero-shot] "
             "| by question - every input [95% CI] |", "|---|---|---|---|---|"]
    for u in units:
        c = {x["config"]: x for x in u["configs"]}
        every, by_q = (_cell(c[label]) for label in CONFIGS[1:])
        d = u["by_question_vs_every"]
        lines.append(f"| {u['seed']} | {c[CONFIGS[0]]['mean']:.3f} | {every} | {by_q} | "
                     f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] |")
    if len(units) > 1:
        mean = sum(u["by_question_vs_every"][0] for u in units) / len(units)
        lines += ["", f"Mean over {len(units)} seeds of (by question - every input): {mean:+.3f}."]
    (OUT.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    path = OUT.with_suffix(".jsonl")
    done = {u["seed"]: u for u in headroom.read_lines(path)}
    for seed in (int(s) for s in args.seeds.split(",")):
        if seed not in done:
            done[seed] = unit(seed)
            with path.open("a") as f:
                f.write(json.dumps(done[seed]) + "\n")
    write_md([done[s] for s in sorted(done)])


if __name__ == "__main__":
    main()
