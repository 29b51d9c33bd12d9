"""Reflect's credit assignment on a graph task: which step do the reflections go to, and does it
matter? Multi-hop HotPotQA (retrieve -> generate_query -> retrieve -> answer) compiled by
``Reflect`` with a GEPA-style feedback metric that says which step went wrong -- the second-hop
search query missed the gold passage it should have found (the row's ``search_query`` label, the
gold title hop 1 missed), or the passages held the answer and the answer step missed it -- once
with ``select="blame"`` (the default: the node the failing rows' traces point at) and once with
``select="round_robin"`` (each node in turn), everything else equal; ``--selects blame+tagged`` runs
blame with the same feedback given per step (``{"generate_query": ...}`` / ``{"answer": ...}``),
which can accuse the answer step too:

    .venv/bin/python benchmarks/reflect_credit.py --seed 0 --rows 200 --test 50 --budget 400

The embedded SmolLM2-135M is the task model and the reflection model (no bigger one is on this
machine; a 135M model writes poor reflections, so the gain is not the point: where the
reflections go is). Each run's test score (F1, paired against zero-shot), its compile calls and
the nodes its reflections went to are appended to ``results/reflect_credit.jsonl``;
``results/reflect_credit.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import headroom  # noqa: E402

import lmgraph as lg  # noqa: E402
from lmgraph.evaluation import evaluate_sync, paired_bootstrap  # noqa: E402
from lmgraph.optimizers import Reflect  # noqa: E402

from tasks import load  # noqa: E402
from tasks.hotpotqa_multihop import retriever  # noqa: E402

OUT = HERE / "results"


def feedback_metric(task, tagged: bool = False):  # noqa: ANN001, ANN201
    """F1 on the answer, with feedback naming the step at fault (the search query, or the answer) --
    in words, or (``tagged``) as feedback per step, ``{node: text}``."""
    def metric(example, pred, trace=None):  # noqa: ANN001, ANN202
        score = task.score(dict(example), dict(pred))
        if score >= 1.0:
            return score, "correct"
        target = str(example.get("search_query") or "")
        query = str(pred.get("search_query") or "")
        found = [str(getattr(p, "title", "")) for p in retriever().search(query, 2)] if query else []
        if target and target not in found:
            text = (f"the search query {query!r} did not find the passage '{target}', which holds the second "
                    "fact; the query should name it")
            return score, ({"generate_query": text} if tagged else text)
        text = f"the passages held the second fact, but the answer {pred.get('answer')!r} does not match " \
               f"{example.get('answer')!r}"
        return score, ({"answer": text} if tagged else text)
    return metric


def run(seed: int, select: str, args: argparse.Namespace) -> dict:
    tagged = select.endswith("+tagged")  # "blame+tagged": the metric's feedback per step
    select = select.removesuffix("+tagged")
    task = load("hotpotqa_multihop")
    train, val, test = headroom.splits(task, seed, SimpleNamespace(rows=args.rows, test=args.test))
    program = task.lmgraph_program()
    ctx = lg.RunContext(max_concurrency=2)
    metric = feedback_metric(task, tagged)
    plain = headroom._metric(task)
    t0 = time.perf_counter()
    opt = Reflect(max_iterations=args.iterations, minibatch_size=4, select=select)
    compiled, report = opt.optimize(program, train, metric, valset=val[:args.val], ctx=ctx, seed=seed,
                                    budget=lg.Budget(max_calls=args.budget))
    compile_s = time.perf_counter() - t0
    zero = evaluate_sync(program, test, plain, ctx=ctx, concurrency=2)
    comp = evaluate_sync(compiled, test, plain, ctx=ctx, concurrency=2)
    pb = paired_bootstrap(zero.scores, comp.scores)
    props = [c for c in report.candidates if c.label.startswith("iteration")]
    went = Counter(c.label.split(": ", 1)[1].split(" of pool", 1)[0] for c in props)
    by_traces = sum(1 for c in props if "chosen from the traces" in c.reason)
    select = select + ("+tagged" if tagged else "")
    print(f"seed {seed} {select}: {zero.mean:.3f} -> {comp.mean:.3f}, reflections {dict(went)}", flush=True)
    return {"seed": seed, "select": select, "rows": args.rows, "val": len(val[:args.val]), "test_n": len(test),
            "budget": args.budget, "iterations": args.iterations, "zero_shot": round(zero.mean, 4),
            "compiled": round(comp.mean, 4), "diff": round(pb["diff"], 4),
            "diff_ci": [round(pb["ci_low"], 4), round(pb["ci_high"], 4)], "chosen": report.best.label,
            "compile_calls": report.spent.get("calls"), "compile_s": round(compile_s, 1),
            "stopped": report.stopped, "reflections": dict(went), "chosen_from_traces": by_traces,
            "kept": sum(1 for c in props if c.status == "pool"),
            "changed": sorted(report.best.changes) if report.best.changes else []}


def render(units: list[dict]) -> str:
    lines = ["# Reflect's credit assignment on multi-hop HotPotQA", "",
             "`.venv/bin/python benchmarks/reflect_credit.py --seed <seed> --rows 200 --test 50 --budget 400` -- "
             "SmolLM2-135M-Instruct Q4_1 in process (greedy) as task and reflection model; a feedback metric that "
             "names the step at fault (the second-hop search query missed the gold passage, or the answer step "
             "missed an answer the passages held) -- in words, or per step (`{node: text}`) where the select says "
             "`+tagged`; test F1 on the oracle grid's 50 test rows, paired against zero-shot.", "",
             "| seed | select | zero-shot | compiled | paired diff [95% CI] | reflections by node (chosen from the "
             "traces) | kept in the pool | chosen | compile calls |", "|---|---|---|---|---|---|---|---|---|"]
    for u in units:
        went = ", ".join(f"{n} {k}" for n, k in sorted(u["reflections"].items()))
        lines.append(f"| {u['seed']} | {u['select']} | {u['zero_shot']:.3f} | {u['compiled']:.3f} | "
                     f"{u['diff']:+.3f} [{u['diff_ci'][0]:+.3f}, {u['diff_ci'][1]:+.3f}] | {went} "
                     f"({u['chosen_from_traces']}) | {u['kept']} | {u['chosen']} | {u['compile_calls']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--val", type=int, default=20, help="validation rows Reflect scores pool candidates on")
    ap.add_argument("--budget", type=int, default=400)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--selects", default="blame,round_robin",
                    help='"blame", "round_robin"; "+tagged" (e.g. "blame+tagged"): the metric gives feedback per '
                         "step ({node: text}) instead of in words")
    args = ap.parse_args()
    path = OUT / "reflect_credit.jsonl"
    for select in args.selects.split(","):
        done = {(u["seed"], u["select"], u["test_n"]) for u in headroom.read_lines(path)}
        if (args.seed, select, args.test) in done:
            continue
        headroom.append_line(path, run(args.seed, select, args))
        (OUT / "reflect_credit.md").write_text(render(headroom.read_lines(path)))
    print(render(headroom.read_lines(path)))


if __name__ == "__main__":
    main()
