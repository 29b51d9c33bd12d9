"""Framework overhead per node call, side by side with DSPy, plus `import lmgraph` time.

Both frameworks run a one-field Predict ("question -> answer") against a zero-latency fake
model in the same process: lmgraph with ``lmgraph.testing.FunctionLM``, DSPy 3.4.1 with
``dspy.utils.dummies.DummyLM`` (chat adapter). Caches are off on both sides so every call
renders, "calls" the model and parses. We report the median of several repeats of N calls.

    benchmarks/.work/venv/bin/python benchmarks/overhead.py [--calls 2000] [--json out.json]

(`bash benchmarks/setup.sh` creates that venv with DSPy; DSPy is not an lmgraph dependency.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def _median_us(fn, calls: int, repeats: int) -> float:
    fn(min(200, calls))  # warm up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(calls)
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(runs)


def bench_lmgraph(calls: int, repeats: int, chain: int) -> dict[str, float]:
    import lmgraph as lg
    from lmgraph.testing import FunctionLM

    lm = FunctionLM(lambda req: "Answer: Paris")
    ctx = lg.RunContext(lm=lm, cache=False, retries=1)

    p = lg.Pipeline("one")
    q = p.input("question")
    node = p.add(lg.Predict("question -> answer", format="chat"), question=q)
    p.output(answer=node.answer)
    one = p.build()

    c = lg.Pipeline("chain")
    prev = c.input("question")
    for i in range(chain):
        prev = c.add(lg.Predict("question -> answer", format="chat"), name=f"n{i}", question=prev).answer
    c.output(answer=prev)
    chained = c.build()

    def async_loop(program):
        def go(n: int) -> None:
            async def inner() -> None:
                for _ in range(n):
                    await program.run(ctx, question="What is the capital of France?")
            asyncio.run(inner())
            lm.calls.clear()
        return go

    def sync_loop(n: int) -> None:
        for _ in range(n):
            one.run_sync(ctx, question="What is the capital of France?")
        lm.calls.clear()

    return {
        "async_run_us": _median_us(async_loop(one), calls, repeats),
        "run_sync_us": _median_us(sync_loop, calls, repeats),
        "chain_per_node_us": _median_us(async_loop(chained), calls // chain, repeats) / chain,
    }


def bench_dspy(calls: int, repeats: int) -> dict[str, float] | None:
    try:
        import dspy
        from dspy.utils.dummies import DummyLM
    except ImportError:
        return None

    lm = DummyLM([{"answer": "Paris"}] * (calls * (repeats + 2) + 400))
    dspy.configure(lm=lm, adapter=dspy.ChatAdapter())
    predict = dspy.Predict("question -> answer")

    def loop(n: int) -> None:
        for _ in range(n):
            predict(question="What is the capital of France?")

    return {"predict_us": _median_us(loop, calls, repeats), "version": dspy.__version__}  # type: ignore[dict-item]


def import_time(module: str, repeats: int = 7) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    vals = [float(subprocess.check_output([sys.executable, "-c", code], env=env, text=True))
            for _ in range(repeats)]
    return statistics.median(vals)


def main() -> None:
    ap = argparse.ArgumentParser(description="lmgraph vs DSPy framework overhead")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chain", type=int, default=5)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()

    lg_res = bench_lmgraph(args.calls, args.repeats, args.chain)
    ds_res = bench_dspy(args.calls, args.repeats)
    imp = {"lmgraph_s": import_time("lmgraph")}
    if ds_res is not None:
        imp["dspy_s"] = import_time("dspy", repeats=3)
    out = {"python": platform.python_version(), "machine": platform.machine(), "calls": args.calls,
           "repeats": args.repeats, "lmgraph": lg_res, "dspy": ds_res, "import": imp}
    if ds_res is not None:
        out["ratio_dspy_over_lmgraph"] = ds_res["predict_us"] / lg_res["async_run_us"]
        out["ratio_dspy_over_lmgraph_sync"] = ds_res["predict_us"] / lg_res["run_sync_us"]

    print(f"lmgraph  Program.run (async, 1 node):    {lg_res['async_run_us']:8.1f} us/call")
    print(f"lmgraph  Program.run_sync (1 node):      {lg_res['run_sync_us']:8.1f} us/call")
    print(f"lmgraph  per node in a {args.chain}-node chain:     {lg_res['chain_per_node_us']:8.1f} us/node")
    if ds_res is not None:
        print(f"DSPy {ds_res['version']} Predict + DummyLM:       {ds_res['predict_us']:8.1f} us/call")
        print(f"ratio DSPy / lmgraph: {out['ratio_dspy_over_lmgraph']:.1f}x (async), "
              f"{out['ratio_dspy_over_lmgraph_sync']:.1f}x (run_sync)   target >= 10x")
    print(f"import lmgraph: {imp['lmgraph_s'] * 1000:.0f} ms (target <= 300 ms)"
          + (f"; import dspy: {imp['dspy_s'] * 1000:.0f} ms" if "dspy_s" in imp else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
