"""How much each prompt lever moves a task on the embedded model: a grid of fixed configurations.

For one task and split seed, every configuration of the grid (decoding x format x demo source x
instruction) is scored on one evaluation set with the same seeded demos:

* ``--on dev``  -- rows of the task's *training* file outside its train/val split: for designing
  the compiler's search space without touching test data;
* ``--on test`` -- the task's test rows: the **oracle grid** (diagnostic only; a compiler must never
  select on it). The headroom it shows is the yardstick for "how much of the available gain did
  an optimizer recover" in ``benchmarks/compile_quality.py``-style tables.

Demos are drawn (seeded) from the task's train+val rows only, labelled, label-balanced; nearest-
neighbour demos use those rows as their pool. Results (per configuration: mean, 95% CI, paired
difference with zero-shot and its CI, calls) go to ``benchmarks/results/levers/<task>-<on>-seed<k>.{json,md}``.

    .venv/bin/python benchmarks/levers.py --task trec --on dev --seed 0 [--n 100]
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lmgraph as lg  # noqa: E402
from lmgraph.evaluation import evaluate_sync, paired_bootstrap  # noqa: E402
from lmgraph.modules.verbalizer import Verbalizer, normalise_verbalizer, plain_words  # noqa: E402
from lmgraph.optimizers.auto import balanced, signature_instruction  # noqa: E402
from lmgraph.signatures import literal_options  # noqa: E402

from tasks import Sizes, load  # noqa: E402


def dev_rows(task, seed: int, sizes: Sizes, n: int) -> list[dict]:
    """Training-file rows outside the task's train/val split (seeded)."""
    train, val, _ = task.splits(seed, sizes)
    used = {json.dumps(r, sort_keys=True, default=str) for r in train + val}
    everything, _, _ = task.splits(seed + 1000, Sizes(len(train) + len(val) + 4 * n, 0, 1))
    return [r for r in everything if json.dumps(r, sort_keys=True, default=str) not in used][:n]


def grid(program: lg.Program, pool: list[dict], k: int, seed: int, *,
         verbalize: bool = False) -> list[tuple[str, lg.Program]]:
    node = program.order[0]
    m = program.module(node)
    sig = m.signature
    fields = [f.name for f in (*sig.inputs, *sig.outputs)]
    demos_pool = [{f: r[f] if f in r else r["label"] for f in fields} for r in pool]
    picked = [d for _, d in balanced(list(enumerate(demos_pool)), sig, k, random.Random(seed))]
    instr = signature_instruction(sig)
    out = [("zero-shot (as given)", {})]
    for dec in ("generate", "score", "calibrated"):
        for fmt in (("completion", "json", "chat") if dec == "generate" else ("completion",)):
            for demo_label, extra in (("zero-shot", {}), (f"{k} labelled demos", {"demos": picked}),
                                      (f"{k} nearest demos", {"knn": k, "demo_pool": demos_pool})):
                for ins_label, ins in (("", {}), (" + signature instruction", {"instructions": instr})):
                    if ins and demo_label == "zero-shot" and dec == "generate" and fmt != "completion":
                        continue
                    params = {"format": fmt, **extra, **ins}
                    if dec != "generate":
                        params["decode"] = dec
                    label = f"{dec}/{fmt}, {demo_label}{ins_label}"
                    out.append((label, params))
                    words = plain_words(literal_options(sig.outputs[0].annotation) or ()) if verbalize else {}
                    if words:  # the same configuration with the labels shown as plain words
                        if ins:
                            verbal_sig = Verbalizer.of(normalise_verbalizer(words, sig), sig).signature(sig)
                            params = {**params, "instructions": signature_instruction(verbal_sig)}
                        out.append((f"{label} + plain-word labels", {**params, "verbalizer": words}))
    progs = []
    for label, params in out:
        try:
            progs.append((label, program.replace_modules({node: m.replace(**params)}) if params else program))
        except lg.DefinitionError:  # e.g. scoring a node whose output is not a label
            continue
    return progs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="trec")
    ap.add_argument("--on", choices=("dev", "test"), default="dev")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=100, help="evaluation rows")
    ap.add_argument("--pool", type=int, default=100, help="train+val rows the demos come from")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--only", default="",
                    help="substrings separated by |: run only the configurations whose name contains one")
    ap.add_argument("--verbalize", action="store_true",
                    help="add each configuration with the labels shown as plain words (identifier labels only)")
    args = ap.parse_args()

    task = load(args.task)
    sizes = Sizes(args.pool * 6 // 10, args.pool - args.pool * 6 // 10, args.n)
    train, val, test = task.splits(args.seed, sizes)
    rows = test if args.on == "test" else dev_rows(task, args.seed, sizes, args.n)
    program = task.lmgraph_program()
    ctx = lg.RunContext(max_concurrency=2)

    def metric(ex, pred, trace=None):  # noqa: ANN001, ANN202
        return task.score(ex, dict(pred))

    results, zero, scores = [], None, {}
    configs = grid(program, train + val, args.k, args.seed, verbalize=args.verbalize)
    if args.only:
        keep = [s.strip() for s in args.only.split("|")]
        configs = [c for c in configs if c[0] == "zero-shot (as given)" or any(s in c[0] for s in keep)]
    for label, prog in configs:
        t0 = time.perf_counter()
        res = evaluate_sync(prog, rows, metric, ctx=ctx, concurrency=2)
        row = {"config": label, "mean": res.mean, "ci": list(res.ci), "calls": res.usage.get("calls"),
               "wall_s": round(time.perf_counter() - t0, 1)}
        if zero is None:
            zero = res.scores
        else:
            pb = paired_bootstrap(zero, res.scores)
            row["diff"], row["diff_ci"] = pb["diff"], [pb["ci_low"], pb["ci_high"]]
        scores[label] = res.scores
        twin = label.removesuffix(" + plain-word labels")
        if twin != label and twin in scores:  # the labels as words vs the same configuration without
            pb = paired_bootstrap(scores[twin], res.scores)
            row["vs_twin"], row["vs_twin_ci"] = pb["diff"], [pb["ci_low"], pb["ci_high"]]
        results.append(row)
        print(f"{label:<60} {res.mean:.3f} [{res.ci[0]:.3f},{res.ci[1]:.3f}]"
              + (f"  diff {row['diff']:+.3f} [{row['diff_ci'][0]:+.3f},{row['diff_ci'][1]:+.3f}]"
                 if "diff" in row else "")
              + (f"  vs without {row['vs_twin']:+.3f} [{row['vs_twin_ci'][0]:+.3f},{row['vs_twin_ci'][1]:+.3f}]"
                 if "vs_twin" in row else ""),
              flush=True)
    tag = ("" if args.pool == 100 else f"-pool{args.pool}") + ("-verbalize" if args.verbalize else "")
    out = HERE / "results" / "levers" / f"{args.task}-{args.on}-seed{args.seed}{tag}"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": args.task, "on": args.on, "seed": args.seed, "n": len(rows), "pool": len(train + val),
            "k": args.k, "model": "SmolLM2-135M-Instruct Q4_1 (embedded, greedy)",
            "command": "python benchmarks/levers.py " + shlex.join(sys.argv[1:]),
            "note": ("ORACLE GRID on the test split: a diagnostic of the available headroom, never used for selection"
                     if args.on == "test" else "dev rows from the training file, outside the train/val split")}
    out.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1))
    lines = [f"# Levers: {args.task}, {meta['note']}", "", f"`{meta['command']}` -- {meta['model']}, n={len(rows)}", "",
             "| configuration | mean [95% CI] | vs zero-shot [95% CI] | calls |"
             + (" vs the same without plain-word labels [95% CI] |" if args.verbalize else ""),
             "|---|---|---|---|" + ("---|" if args.verbalize else "")]
    for r in results:
        d = f"{r['diff']:+.3f} [{r['diff_ci'][0]:+.3f}, {r['diff_ci'][1]:+.3f}]" if "diff" in r else "-"
        t = f" {r['vs_twin']:+.3f} [{r['vs_twin_ci'][0]:+.3f}, {r['vs_twin_ci'][1]:+.3f}] |" if "vs_twin" in r else (
            " - |" if args.verbalize else "")
        mean = f"{r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        lines.append(f"| {r['config']} | {mean} | {d} | {r['calls']} |{t}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
