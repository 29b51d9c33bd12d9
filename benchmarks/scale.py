"""Scale-out benchmark: local asyncio vs RayExecutor with 1 and 2 workers.

1,000 rows (one model call each) against a loopback OpenAI-compatible server that answers every
request after 100 ms (tests/fault_server.py, no faults), through OpenAIServerLM, no cache. Each
configuration keeps the same number of rows in flight per process (8), so the ideal throughput
is ``in flight / latency``: 80 rows/s for one process, 160 for two workers. Reported: rows/s,
the ratio to that ideal, the per-row executor overhead (the time a row slot spends beyond the
server's 100 ms: ``(wall - ideal wall) * in flight / rows``) and the workers' start-up time (not
in the rows/s). Without a cache or a budget the workers call the server directly; "budget" rows
pass a hard budget, so every call is admitted by the driver first
(one more round trip per call, the path a compile takes). Then a compile's wall time local vs Ray
(BootstrapRandomSearch on 60 rows, the same server), with whether both wrote the same artifact bytes.

    .venv/bin/python benchmarks/scale.py            # ~2 minutes; writes benchmarks/results/scale.{json,md}
    .venv/bin/python benchmarks/scale.py --rows 200 --out /tmp/scale   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import lmgraph as lg  # noqa: E402
from lmgraph.evaluation import label_accuracy  # noqa: E402
from lmgraph.lm.openai_http import OpenAIServerLM  # noqa: E402
from lmgraph.optimizers import BootstrapRandomSearch, save_artifact  # noqa: E402

from fault_server import FaultServer  # noqa: E402
from helpers import sentiment_program, sentiment_rows  # noqa: E402

LATENCY_S = 0.1
IN_FLIGHT = 8  # rows in flight per process (local: the batch's concurrency; Ray: max_concurrency per worker)


def answer(text: str) -> str:
    """Right when the prompt holds demos, else always 'positive' (what compiling can fix)."""
    has_demo = text.count("Sentence:") > 1
    last = re.findall(r"Sentence: (.*)", text)[-1]
    return " " + (("positive" if "good" in last else "negative") if has_demo else "positive")


def run_batch(url: str, rows: list[dict], executor: object | None, *, budget: bool = False) -> dict:
    lm = OpenAIServerLM(url)
    ctx = lg.RunContext(lm=lm, cache=False, max_concurrency=IN_FLIGHT, executor=executor,
                        budget=lg.Budget(max_calls=10 * len(rows)) if budget else None)
    prog = sentiment_program()
    start_s = 0.0
    if executor is not None:  # start the workers (and load their models) before timing rows
        t = time.perf_counter()
        asyncio.run(executor.worker_info(ctx))  # type: ignore[attr-defined]
        start_s = time.perf_counter() - t
    # warm-up, untimed, in every configuration: imports, connections, the first row's set-up
    prog.batch_sync(sentiment_rows(4 * IN_FLIGHT), ctx=lg.RunContext(lm=lm, cache=False, executor=executor),
                    concurrency=IN_FLIGHT)
    t = time.perf_counter()
    results = prog.batch_sync(rows, ctx=ctx, concurrency=IN_FLIGHT)
    wall = time.perf_counter() - t
    workers = getattr(executor, "workers", 1)
    in_flight = IN_FLIGHT * workers
    ideal_rps = in_flight / LATENCY_S
    ideal_wall = len(rows) / ideal_rps
    return {"rows": len(rows), "ok": sum(r.ok for r in results), "wall_s": round(wall, 2),
            "rows_per_s": round(len(rows) / wall, 1), "ideal_rows_per_s": ideal_rps,
            "ratio_to_ideal": round(len(rows) / wall / ideal_rps, 3),
            "overhead_ms_per_row": round((wall - ideal_wall) * in_flight / len(rows) * 1000, 1),
            "worker_start_s": round(start_s, 2), "in_flight": in_flight,
            "outputs_sha": hashlib.sha256(json.dumps([dict(r.outputs) if r.ok else None for r in results],
                                                     sort_keys=True).encode()).hexdigest()[:16]}


def run_compile(url: str, executor: object | None, path: Path) -> dict:
    lm = OpenAIServerLM(url)
    ctx = lg.RunContext(lm=lm, cache=False, max_concurrency=IN_FLIGHT, executor=executor)
    if executor is not None:
        asyncio.run(executor.worker_info(ctx))  # type: ignore[attr-defined]
    t = time.perf_counter()
    new, rep = BootstrapRandomSearch(2, num_candidates=4).optimize(
        sentiment_program(), sentiment_rows(60, period=3), label_accuracy(), seed=0, ctx=ctx)
    wall = time.perf_counter() - t
    save_artifact(path, new, rep)
    return {"wall_s": round(wall, 2), "calls": int(rep.spent["calls"]), "best_score": round(rep.best.mean, 4),
            "artifact_sha": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import ray

    from lmgraph.executors import RayExecutor

    rows = sentiment_rows(args.rows, period=3)
    out: dict = {"latency_s": LATENCY_S, "rows": args.rows, "in_flight_per_process": IN_FLIGHT,
                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
                             "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
                 "batch": {}, "compile": {}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with FaultServer(answer, latency_s=LATENCY_S) as srv, tempfile.TemporaryDirectory() as tmp:
            for name, n, budget in (("local", 0, False), ("local, budget", 0, True), ("ray-1", 1, False),
                                    ("ray-2", 2, False), ("ray-2, budget", 2, True)):
                if n == 0:
                    out["batch"][name] = run_batch(srv.base_url, rows, None, budget=budget)
                else:
                    with RayExecutor(workers=n, max_concurrency=IN_FLIGHT) as ex:
                        out["batch"][name] = run_batch(srv.base_url, rows, ex, budget=budget)
                print(name, out["batch"][name], flush=True)
            out["compile"]["local"] = run_compile(srv.base_url, None, Path(tmp) / "local.json")
            with RayExecutor(workers=2, max_concurrency=IN_FLIGHT) as ex:
                out["compile"]["ray-2"] = run_compile(srv.base_url, ex, Path(tmp) / "ray.json")
            shas = {c["artifact_sha"] for c in out["compile"].values()}
            out["compile"]["same_artifact"] = len(shas) == 1
            print("compile", out["compile"], flush=True)
    finally:
        ray.shutdown()
    out["batch_outputs_identical"] = len({b["outputs_sha"] for b in out["batch"].values()}) == 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    (args.out / "scale.md").write_text(table(out) + "\n")
    print(table(out))


def table(out: dict) -> str:
    lines = [f"{out['rows']} rows, one call each, loopback server answering after {int(out['latency_s'] * 1000)} ms; "
             f"{out['in_flight_per_process']} rows in flight per process; {out['machine']['cpus']} CPUs "
             f"(load average at start {out['machine']['load_avg_at_start'][0]}), Ray {out['machine']['ray']}.", "",
             "| executor | rows in flight | wall (s) | rows/s | ideal rows/s | ratio to ideal | overhead per row (ms) "
             "| worker start (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, b in out["batch"].items():
        lines.append(f"| {name} | {b['in_flight']} | {b['wall_s']} | {b['rows_per_s']} | {b['ideal_rows_per_s']:.0f} | "
                     f"{b['ratio_to_ideal']:.2f} | {b['overhead_ms_per_row']} | {b['worker_start_s']} |")
    c = out["compile"]
    lines += ["", f"Same outputs in every configuration: {out['batch_outputs_identical']}.", "",
              "| compile (BootstrapRandomSearch, 60 rows) | wall (s) | calls | best score |", "|---|---:|---:|---:|",
              f"| local | {c['local']['wall_s']} | {c['local']['calls']} | {c['local']['best_score']} |",
              f"| Ray, 2 workers | {c['ray-2']['wall_s']} | {c['ray-2']['calls']} | {c['ray-2']['best_score']} |",
              "", f"Same artifact bytes local and Ray: {c['same_artifact']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
