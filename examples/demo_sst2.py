"""Demo: SST-2 sentiment on the embedded SmolLM2-135M model (in-process llama.cpp, offline).

Runs the same one-node pipeline twice on a seeded sample of the SST-2 test sentences:
zero-shot, then with a few labelled demos (drawn, seeded, from the *dev* split, never test),
and prints accuracy with a 95% bootstrap CI, model calls, tokens and wall time.

    python examples/demo_sst2.py [--n 100] [--shots 4] [--no-cache]
"""

from __future__ import annotations

import argparse
import time

import lmgraph as lg
from lmgraph.cache import MemoryCache
from lmgraph.evaluation import evaluate_sync, label_accuracy, load_sst2, sample


def build(demos: list[dict] | None = None) -> lg.Program:
    p = lg.Pipeline("sst2")
    sentence = p.input("sentence", str)
    clf = p.add(
        lg.Predict(lg.Signature.parse("sentence -> sentiment: Literal['negative', 'positive']",
                                      instructions="Classify the sentiment of the movie review sentence."),
                   format="completion", max_tokens=4, demos=demos or ()),
        name="classify", sentence=sentence)
    p.output(label=clf.sentiment)
    return p.build()


def pick_demos(k: int, seed: int) -> list[dict]:
    """k demos from the dev split, balanced by label, full sentences only (seeded)."""
    dev = [r for r in load_sst2("dev") if len(r["sentence"].split()) >= 6]
    per = {lab: [r for r in dev if r["label"] == lab] for lab in ("negative", "positive")}
    picked = []
    for i, lab in zip(range(k), ["positive", "negative"] * k):
        picked.append(sample(per[lab], i // 2 + 1, seed=seed)[i // 2])
    return [{"sentence": r["sentence"], "sentiment": r["label"]} for r in picked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="test sentences (seeded sample)")
    ap.add_argument("--shots", type=int, default=4, help="labelled demos for the few-shot run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cache", action="store_true", help="don't use the on-disk call cache")
    args = ap.parse_args()

    test = sample(load_sst2("test"), args.n, seed=args.seed)
    ctx = lg.RunContext(cache=MemoryCache() if args.no_cache else True, max_concurrency=2)
    metric = label_accuracy("label", "label")
    t_load = time.perf_counter()
    backend, _ = ctx.lm_for(None)
    print(f"model: {backend.identity().get('model')}  (stack built in "
          f"{time.perf_counter() - t_load:.2f}s; weights load on first call)")
    print(f"task: SST-2 test, n={len(test)} (seed {args.seed}); metric: label accuracy\n")

    zero = build()
    print(zero.render())
    for name, program in (("zero-shot", zero), (f"{args.shots}-shot", build(pick_demos(args.shots, args.seed)))):
        res = evaluate_sync(program, test, metric, ctx=ctx, concurrency=4)
        print(f"\n{name:>10}: accuracy {res}")
        print(f"{'':>10}  parse failures: {res.parse_failure_rate:.1%}")
    print("\nUsage by node:", ctx.usage.by_node())


if __name__ == "__main__":
    main()
