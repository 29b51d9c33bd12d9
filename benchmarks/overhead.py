"""Framework overhead and scheduling, side by side with DSPy: every figure of benchmarks/README.md §1.

One command measures all of them and writes ``benchmarks/results/overhead.json``::

    benchmarks/.work/venv/bin/python benchmarks/overhead.py --json benchmarks/results/overhead.json

(about 2.5 minutes; ``--quick``: fewer repeats and the HTTP rows at 100 ms only, about 1.5;
``bash benchmarks/setup.sh`` creates that venv with DSPy 3.4.1 and litellm; DSPy is not an
lmgraph dependency. Another script can ``import overhead`` with benchmarks/ on ``sys.path``
and call :func:`run_all`.)

1. **Per-node overhead.** A one-field Predict ("question -> answer") against a zero-latency
   fake model in the same process: lmgraph with ``lmgraph.testing.FunctionLM``, DSPy with
   ``dspy.utils.dummies.DummyLM`` (chat adapter). Caches off on both sides so every call
   renders, "calls" the model and parses. Median of several repeats of N calls.
2. **Cache-hit replay.** Evaluate the same 1-node program over 500 examples once to fill a
   cache in a fresh temporary directory, then time full evaluations that are all cache hits:
   from the in-memory front (same process) and from disk (a new cache object on the same
   directory). lmgraph: ``evaluate`` with a ``DiskCache``; DSPy: ``dspy.Evaluate`` with
   ``dspy.configure_cache`` and a DummyLM whose responses DSPy caches. Both verified to make
   zero model calls during replay.
3. **Parallel branches** and 4. **throughput** against a loopback fake OpenAI server with a
   fixed latency per request: see ``scheduling.py``.
5. **``import lmgraph``** in fresh processes (``import dspy`` alongside).

Both frameworks run in the same process, one after the other, so background load (this
machine has 2 cores and often another benchmark on one of them) affects both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import scheduling  # noqa: E402  (benchmarks/ is not a package)

# Targets from issue 4 ("Overhead and scheduling").
TARGET_NODE_RATIO = 10.0        # DSPy per-call overhead / lmgraph's, at least
TARGET_REPLAY_RATIO = 10.0      # DSPy cache-hit replay time / lmgraph's, at least
TARGET_CRITICAL_PATH = 1.1      # parallel-branch wall time / critical-path bound, at most
TARGET_THROUGHPUT = 0.9         # achieved / ideal throughput at concurrency 64, at least
TARGET_IMPORT_S = 0.3           # `import lmgraph`, at most


def _median_us(fn: Callable[[int], None], calls: int, repeats: int) -> float:
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
    predict = dspy.Predict("question -> answer")

    def loop(n: int) -> None:
        for _ in range(n):
            predict(question="What is the capital of France?")

    # dspy.context, not dspy.configure: a script importing this module keeps its own settings
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        predict_us = _median_us(loop, calls, repeats)
    return {"predict_us": predict_us, "version": dspy.__version__}  # type: ignore[dict-item]


def import_time(module: str, repeats: int = 7) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    vals = [float(subprocess.check_output([sys.executable, "-c", code], env=env, text=True))
            for _ in range(repeats)]
    return statistics.median(vals)


# --------------------------------------------------------------------------- cache-hit replay

QUESTION = "What is the capital of France?"


def _replay_rows(n: int) -> list[dict[str, str]]:
    return [{"question": f"{QUESTION} (variant {i})", "answer": "Paris"} for i in range(n)]


def bench_replay_lmgraph(examples: int, concurrency: int, repeats: int,
                         cache_dir: str) -> dict[str, Any]:
    """Fill a DiskCache with one evaluation, then time all-hit evaluations (memory, then disk)."""
    import lmgraph as lg
    from lmgraph.cache import DiskCache
    from lmgraph.evaluation import evaluate_sync
    from lmgraph.evaluation.metrics import exact_match
    from lmgraph.testing import FunctionLM

    lm = FunctionLM(lambda req: "Answer: Paris")
    p = lg.Pipeline("one")
    q = p.input("question")
    node = p.add(lg.Predict("question -> answer", format="chat"), question=q)
    p.output(answer=node.answer)
    program = p.build()
    rows = _replay_rows(examples)
    metric = exact_match()

    def evaluation(cache: DiskCache) -> float:
        ctx = lg.RunContext(lm=lm, cache=cache, retries=1, max_concurrency=concurrency)
        gc.collect()  # the same heap state for every timed evaluation (GC stays enabled)
        t0 = time.perf_counter()
        res = evaluate_sync(program, rows, metric, ctx=ctx, concurrency=concurrency)
        wall = time.perf_counter() - t0
        if res.mean != 1.0 or res.failures:
            raise RuntimeError(f"lmgraph evaluation went wrong: {res}")
        return wall

    cache = DiskCache(cache_dir, memory_size=max(4096, examples))
    fill_s = evaluation(cache)
    fill_calls = len(lm.calls)
    lm.calls.clear()
    memory = [evaluation(cache) for _ in range(repeats)]
    memory_calls = len(lm.calls)
    cache.close()
    disk = []
    for _ in range(repeats):  # a new cache object each time: an empty memory front, hits from disk
        # opened before the clock starts, as DSPy's configure_cache() opens its store (untimed)
        fresh = DiskCache(cache_dir, memory_size=max(4096, examples)).open()
        disk.append(evaluation(fresh))
        stats = fresh.stats()
        fresh.close()
        if stats["disk_hits"] != examples or stats["misses"]:
            raise RuntimeError(f"lmgraph disk replay was not all disk hits: {stats}")
    if fill_calls != examples or memory_calls or lm.calls:
        raise RuntimeError(f"lmgraph replay made model calls: fill {fill_calls}, "
                           f"replay {memory_calls + len(lm.calls)}")
    return {"fill_s": fill_s, "fill_model_calls": fill_calls, "replay_memory_s": statistics.median(memory),
            "replay_disk_s": statistics.median(disk), "replay_model_calls": 0,
            "how": f"lmgraph.evaluation.evaluate(concurrency={concurrency}) with a DiskCache"}


def bench_replay_dspy(examples: int, threads: int, repeats: int,
                      cache_dir: str) -> dict[str, Any] | None:
    """The same with dspy.Evaluate and DSPy's own cache (memory LRU in front of diskcache)."""
    try:
        import dspy
        from dspy.utils.dummies import DummyLM
    except ImportError:
        return None
    logging.getLogger("dspy.evaluate.evaluate").setLevel(logging.WARNING)  # no per-run score lines

    class CachedDummyLM(DummyLM):
        """DummyLM opts out of DSPy's response cache; this one opts back in and counts calls."""

        def __init__(self) -> None:
            super().__init__({"": {"answer": "Paris"}})  # "" is in every prompt: always "Paris"
            self._cache_responses = True
            self.model_calls = 0
            engine = self._engine_spec
            answer = engine._complete_messages

            def counted(messages: Any) -> Any:
                self.model_calls += 1
                return answer(messages)

            engine._complete_messages = counted

    lm = CachedDummyLM()
    program = dspy.Predict("question -> answer")
    devset = [dspy.Example(**row).with_inputs("question") for row in _replay_rows(examples)]

    def metric(example: Any, pred: Any, trace: Any = None) -> bool:
        return bool(pred.answer == example.answer)

    evaluator = dspy.Evaluate(devset=devset, metric=metric, num_threads=threads,
                              display_progress=False, display_table=False)

    def evaluation() -> float:
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            gc.collect()
            t0 = time.perf_counter()
            res = evaluator(program)
            wall = time.perf_counter() - t0
        if res.score != 100.0:
            raise RuntimeError(f"DSPy evaluation went wrong: score {res.score}")
        return wall

    def fresh_cache() -> None:
        dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True,
                             disk_cache_dir=cache_dir)

    previous = dspy.__dict__.get("cache")
    try:
        fresh_cache()
        fill_s = evaluation()
        fill_calls = lm.model_calls
        lm.model_calls = 0
        memory = [evaluation() for _ in range(repeats)]
        memory_calls = lm.model_calls
        disk = []
        for _ in range(repeats):  # a new Cache object: empty memory LRU, hits from disk
            fresh_cache()
            disk.append(evaluation())
    finally:
        with dspy._cache_lock:  # put DSPy's global cache back as it was
            if previous is None:
                dspy.__dict__.pop("cache", None)
            else:
                dspy.cache = previous
    if fill_calls != examples or memory_calls or lm.model_calls:
        raise RuntimeError(f"DSPy replay made model calls: fill {fill_calls}, "
                           f"replay {lm.model_calls}")
    return {"fill_s": fill_s, "fill_model_calls": fill_calls, "replay_memory_s": statistics.median(memory),
            "replay_disk_s": statistics.median(disk), "replay_model_calls": 0,
            "how": f"dspy.Evaluate(num_threads={threads}) with dspy.configure_cache(disk_cache_dir=tmp)",
            "version": dspy.__version__}


def bench_replay(examples: int, concurrency: int, repeats: int, dspy: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lmgraph-replay-") as tmp:
        lg_res = bench_replay_lmgraph(examples, concurrency, repeats, os.path.join(tmp, "lmgraph"))
        ds_res = (bench_replay_dspy(examples, concurrency, repeats, os.path.join(tmp, "dspy"))
                  if dspy else None)
    out: dict[str, Any] = {"examples": examples, "concurrency": concurrency, "repeats": repeats,
                           "lmgraph": lg_res, "dspy": ds_res}
    if ds_res is not None:
        out["ratio_dspy_over_lmgraph_memory"] = ds_res["replay_memory_s"] / lg_res["replay_memory_s"]
        out["ratio_dspy_over_lmgraph_disk"] = ds_res["replay_disk_s"] / lg_res["replay_disk_s"]
    return out


# --------------------------------------------------------------------------- everything


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    """Each issue-4 target with the measured figure and whether it is met."""
    def entry(value: float | None, target: float, at_least: bool) -> dict[str, Any]:
        met = None if value is None else (value >= target if at_least else value <= target)
        return {"value": value, "target": (">= " if at_least else "<= ") + f"{target:g}", "met": met}

    sched = out["scheduling"]
    # the first (shortest) latency is the headline; lmgraph's own client for OpenAI-compatible
    # servers where aiohttp is installed (the litellm path is reported beside it)
    first = sched["http"][0]
    http = first.get("lmgraph_http") or first["lmgraph"]
    replay = [v for rep in out["replay"].values() if isinstance(rep, dict)
              for k, v in rep.items() if k.startswith("ratio_")]
    return {
        "node_overhead_ratio": entry(out.get("ratio_dspy_over_lmgraph"), TARGET_NODE_RATIO, True),
        # the worst of memory/disk replay at concurrency 1 and 8
        "replay_ratio": entry(min(replay) if replay else None, TARGET_REPLAY_RATIO, True),
        "parallel_branches_wall_over_critical_path": entry(
            http["parallel_branches"]["ratio_wall_over_critical_path"], TARGET_CRITICAL_PATH, False),
        "throughput_fraction_of_ideal": entry(
            http["throughput"]["fraction_of_ideal"], TARGET_THROUGHPUT, True),
        "parallel_branches_via_litellm": entry(
            first["lmgraph"]["parallel_branches"]["ratio_wall_over_critical_path"], TARGET_CRITICAL_PATH, False),
        "throughput_fraction_via_litellm": entry(
            first["lmgraph"]["throughput"]["fraction_of_ideal"], TARGET_THROUGHPUT, True),
        "import_lmgraph_s": entry(out["import"]["lmgraph_s"], TARGET_IMPORT_S, False),
    }


def run_all(quick: bool = False, *, dspy: bool = True, calls: int | None = None,
            repeats: int | None = None, chain: int = 5) -> dict[str, Any]:
    """Measure every overhead and scheduling figure; returns what ``--json`` writes.

    ``quick`` uses fewer repeats (the same example counts) and measures the HTTP scheduling
    figures at the headline latency (100 ms) only, not also at 1 s; ``dspy=False`` skips DSPy.
    """
    calls = calls if calls is not None else (1000 if quick else 2000)
    repeats = repeats if repeats is not None else (3 if quick else 5)
    t0 = time.perf_counter()
    lg_res = bench_lmgraph(calls, repeats, chain)
    ds_res = bench_dspy(calls, repeats) if dspy else None
    out: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "cpus": os.cpu_count(), "quick": quick, "calls": calls,
                           "repeats": repeats, "chain": chain, "lmgraph": lg_res, "dspy": ds_res}
    if ds_res is not None:
        out["ratio_dspy_over_lmgraph"] = ds_res["predict_us"] / lg_res["async_run_us"]
        out["ratio_dspy_over_lmgraph_sync"] = ds_res["predict_us"] / lg_res["run_sync_us"]
    out["replay"] = {"concurrency_8": bench_replay(500, 8, repeats, dspy),
                     "concurrency_1": bench_replay(500, 1, repeats, dspy)}
    # headline ratios, copied up: concurrency / threads 8 (lmgraph evaluate()'s default)
    out["replay"].update({k: v for k, v in out["replay"]["concurrency_8"].items()
                          if k.startswith("ratio_")})
    latencies = (0.1,) if quick else (0.1, 1.0)  # the 1 s rows are ~90 s of waiting on 2 cores
    out["scheduling"] = scheduling.run(latencies=latencies, repeats=repeats, examples=1000,
                                       concurrency=64, dspy=dspy)
    imp = {"lmgraph_s": import_time("lmgraph")}
    if ds_res is not None:
        imp["dspy_s"] = import_time("dspy", repeats=3)
    out["import"] = imp
    out["targets"] = _targets(out)
    out["command"] = ("benchmarks/.work/venv/bin/python benchmarks/overhead.py"
                      + (" --quick" if quick else "") + " --json benchmarks/results/overhead.json")
    out["wall_s"] = time.perf_counter() - t0
    out["load_average_1min"] = os.getloadavg()[0]
    from provenance import git_commit  # benchmarks/provenance.py

    out["lmgraph_commit"] = git_commit()
    return out


def report_lines(out: dict[str, Any]) -> list[str]:
    lg_res, ds_res, chain = out["lmgraph"], out["dspy"], out["chain"]
    lines = [f"lmgraph  Program.run (async, 1 node):    {lg_res['async_run_us']:8.1f} us/call",
             f"lmgraph  Program.run_sync (1 node):      {lg_res['run_sync_us']:8.1f} us/call",
             f"lmgraph  per node in a {chain}-node chain:     {lg_res['chain_per_node_us']:8.1f} us/node"]
    if ds_res is not None:
        lines += [f"DSPy {ds_res['version']} Predict + DummyLM:       {ds_res['predict_us']:8.1f} us/call",
                  f"ratio DSPy / lmgraph: {out['ratio_dspy_over_lmgraph']:.1f}x (async), "
                  f"{out['ratio_dspy_over_lmgraph_sync']:.1f}x (run_sync)   target >= 10x"]
    for key, rep in out["replay"].items():
        if not key.startswith("concurrency_"):
            continue
        lg, ds = rep["lmgraph"], rep["dspy"]
        line = (f"replay of {rep['examples']} cached examples ({key.replace('_', ' ')}): lmgraph "
                f"{lg['replay_memory_s'] * 1000:.0f} ms (memory) / {lg['replay_disk_s'] * 1000:.0f} ms (disk)")
        if ds is not None:
            line += (f"; DSPy {ds['replay_memory_s'] * 1000:.0f} / {ds['replay_disk_s'] * 1000:.0f} ms; "
                     f"ratio {rep['ratio_dspy_over_lmgraph_memory']:.1f}x / "
                     f"{rep['ratio_dspy_over_lmgraph_disk']:.1f}x   target >= 10x")
        lines.append(line)
    lines += scheduling.report_lines(out["scheduling"])
    imp = out["import"]
    lines.append(f"import lmgraph: {imp['lmgraph_s'] * 1000:.0f} ms (target <= 300 ms)"
                 + (f"; import dspy: {imp['dspy_s'] * 1000:.0f} ms" if "dspy_s" in imp else ""))
    lines.append("targets: " + ", ".join(f"{k} {'met' if t['met'] else 'NOT met'}"
                                          for k, t in out["targets"].items() if t["met"] is not None))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description="lmgraph vs DSPy: framework overhead and scheduling")
    ap.add_argument("--quick", action="store_true",
                    help="fewer repeats, HTTP rows at 100 ms only (about half the time)")
    ap.add_argument("--calls", type=int, help="calls per repeat for per-node overhead")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--chain", type=int, default=5)
    ap.add_argument("--no-dspy", action="store_true", help="lmgraph only")
    ap.add_argument("--json", help="write results here (e.g. benchmarks/results/overhead.json)")
    args = ap.parse_args()
    out = run_all(args.quick, dspy=not args.no_dspy, calls=args.calls, repeats=args.repeats,
                  chain=args.chain)
    out["command"] = " ".join(["benchmarks/.work/venv/bin/python", "benchmarks/overhead.py",
                               *sys.argv[1:]])
    print("\n".join(report_lines(out)))
    print(f"({out['wall_s']:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
