"""Demo: compile a TREC question classifier on the embedded SmolLM2-135M model (offline, CPU).

1. declare a one-node pipeline (question -> one of 6 answer types) and validate it;
2. score it zero-shot on a seeded sample of the TREC test questions;
3. compile it with lmgraph's default compiler (``lmgraph.optimizers.Compile``: train and
   validation rows pooled, candidate decodings / formats / demo sets / instructions raced on a
   search fold, the winner confirmed on a held-out fold) under a hard budget (rows drawn from the
   TREC training file -- the compiler never sees the test rows);
4. score the compiled program on the same test rows and print both with 95% CIs, the paired
   difference, model calls, tokens and wall time; save the compiled artifact.

    python examples/demo.py [--test 200] [--train 340] [--val 60] [--budget 800] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lmgraph as lg
from lmgraph.evaluation import evaluate_sync, label_accuracy, load_trec, paired_bootstrap, sample, split
from lmgraph.evaluation.datasets import TREC_COARSE
from lmgraph.optimizers import Compile, diff, format_diff, save_artifact


def build() -> lg.Program:
    labels = ", ".join(repr(v) for v in TREC_COARSE.values())
    p = lg.Pipeline("trec")
    question = p.input("question")
    node = p.add(lg.Predict(lg.Signature.parse(f"question -> answer_type: Literal[{labels}]",
                                               instructions="What kind of answer does the question ask for?"),
                            format="completion", max_tokens=4),
                 name="classify", question=question)
    p.output(label=node.answer_type)
    return p.build()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", type=int, default=200, help="test questions (seeded sample)")
    ap.add_argument("--train", type=int, default=340, help="labelled rows from the TREC training file")
    ap.add_argument("--val", type=int, default=60, help="more labelled rows (the compiler pools train and val)")
    ap.add_argument("--budget", type=int, default=800, help="hard limit on compile model calls")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main() -> None:
    args = parser().parse_args()

    program = build()
    print(program.render(), "\n")
    train, val = split(load_trec("train"), [args.train, args.val], seed=args.seed)
    test = sample(load_trec("test"), args.test, seed=args.seed)
    ctx = lg.RunContext(max_concurrency=2)
    metric = label_accuracy("label", "label")
    print(f"model: {ctx.lm_for(None)[0].identity()['model']} (in-process llama.cpp, greedy)")
    print(f"data: TREC coarse, train {len(train)} / val {len(val)} (train file), test {len(test)} (test file), "
          f"seed {args.seed}\n")

    # candidates (decoding, format, demo sets, instructions) raced on a search fold of the pooled
    # train+val rows, in waves planned to fit the budget; the winner confirmed on a held-out fold
    opt = Compile(max_demos=4, progress=True)  # a live status line on a terminal
    print(f"compile plan: {opt.dry_run(program, train, val, budget=lg.Budget(max_calls=args.budget))}")

    zero = evaluate_sync(program, test, metric, ctx=ctx, concurrency=4, progress=True)
    print(f"zero-shot  test accuracy: {zero}")
    print(f"           parse failures: {zero.parse_failure_rate:.1%}\n")

    t0 = time.perf_counter()
    compiled, report = opt.optimize(program, train, metric, valset=val, budget=lg.Budget(max_calls=args.budget),
                                    seed=args.seed, ctx=ctx)
    print(f"compiled in {time.perf_counter() - t0:.1f}s\n{report.table()}\n")
    print("what changed:\n" + format_diff(diff(program, compiled)) + "\n")

    comp = evaluate_sync(compiled, test, metric, ctx=ctx, concurrency=4, progress=True)
    print(f"compiled   test accuracy: {comp}")
    print(f"           parse failures: {comp.parse_failure_rate:.1%}")
    pb = paired_bootstrap(zero.scores, comp.scores)
    print(f"paired difference: {pb['diff']:+.3f} (95% CI {pb['ci_low']:+.3f}..{pb['ci_high']:+.3f})")
    out = save_artifact(Path(".lmgraph-demo") / "trec.compiled.json", compiled, report)
    print(f"artifact: {out}  (load with lmgraph.optimizers.load_artifact)")


if __name__ == "__main__":
    try:
        main()
    except lg.DefinitionError as e:  # a mistake in the arguments (e.g. --budget too small): one line, exit 2
        print(f"demo: error: {e}", file=sys.stderr)
        sys.exit(2)
