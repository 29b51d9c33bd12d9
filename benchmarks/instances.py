"""Does ``batch(concurrency>1)`` beat ``concurrency=1`` on the embedded model? Wall time of one batch
of rows through the default ``LlamaCppLM()`` (pooled instances) at several concurrencies.

    .venv/bin/python benchmarks/instances.py [--rows 12] [--repeat 2]

Writes benchmarks/results/instances.json and .md. The cache is off, every call reaches the model;
the same rows run at every setting, and the outputs are checked to be identical across settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import lmgraph as lg
from lmgraph.evaluation import load_trec, sample
from lmgraph.lm.embedded import usable_cpus
from lmgraph.lm.llamacpp import LlamaCppLM

HERE = Path(__file__).resolve().parent


def program() -> lg.Program:
    p = lg.Pipeline("trec")
    q = p.input("question")
    n = p.add(lg.Predict("question -> answer_type: Literal['abbreviation', 'description', 'entity', 'human', "
                         "'location', 'number']", format="completion", max_tokens=4), name="classify", question=q)
    p.output(label=n.answer_type)
    return p.build()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    rows = [{"question": r["question"]} for r in sample(load_trec("test"), args.rows, seed=0)]
    prog = program()
    results, outputs = [], {}
    settings = [("1 instance, concurrency 1", 1, 1), ("1 instance, concurrency 8", 1, 8),
                ("default instances, concurrency 1", None, 1), ("default instances, concurrency 8", None, 8)]
    for label, inst, conc in settings:
        lm = LlamaCppLM(n_instances=inst).load()
        ctx = lg.RunContext(lm=lm, cache=False, max_concurrency=conc)
        prog.batch_sync(rows[:2], ctx=ctx, concurrency=conc)  # warm-up
        walls = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = prog.batch_sync(rows, ctx=ctx, concurrency=conc)
            walls.append(time.perf_counter() - t0)
        outputs[label] = [dict(r.outputs) if r.ok else None for r in res]
        results.append({"setting": label, "n_instances": lm.n_instances, "n_threads": lm.n_threads,
                        "concurrency": conc, "wall_s": [round(w, 2) for w in walls],
                        "best_s": round(min(walls), 2), "rows_per_s": round(len(rows) / min(walls), 2)})
        lm.close()
        print(results[-1], flush=True)
    same = all(o == outputs[settings[0][0]] for o in outputs.values())
    meta = {"rows": len(rows), "repeat": args.repeat, "usable_cpus": usable_cpus(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "python": sys.version.split()[0],
            "command": "python benchmarks/instances.py " + " ".join(sys.argv[1:]), "same_outputs": same}
    out = HERE / "results" / "instances"
    out.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1))
    lines = ["# Embedded model: batch wall time by instances and concurrency", "",
             f"`{meta['command']}` -- {len(rows)} TREC test questions, {meta['usable_cpus']} usable CPUs, "
             f"outputs identical across settings: {same}", "",
             "| setting | instances x threads | best wall (s) | rows/s |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['n_instances']} x {r['n_threads']} | {r['best_s']} | {r['rows_per_s']} |"
              for r in results]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.md; same outputs: {same}")


if __name__ == "__main__":
    main()
