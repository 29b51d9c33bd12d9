"""Serving under load: 2,000 requests at concurrency 64 through a real uvicorn on loopback.

The server (a subprocess: ``lmgraph.serve.app`` under uvicorn, as ``lmgraph serve`` runs it) serves
a one-node program (``question -> answer``, chat format) on a scripted model,
``lmgraph.testing.FunctionLM`` with a fixed latency per call (``--latency-ms``, 20 by default), that
answers with the number in the question -- so every response is checked against its own request.
The client (aiohttp, this process) keeps 64 requests in flight until 2,000 have been answered,
after 100 warm-up requests. Two server configurations: the defaults, and with a per-request budget
and timeout (``--max-calls-per-request 4 --timeout 10``: a fresh budget per run); and 300 requests
one at a time (concurrency 1), the cost of a request when none queues behind another.

Reported per configuration: lost requests (no answer, a non-200 or a wrong answer; 429s are
counted apart and would be lost too), requests/s, client latency p50/p99, and the **added
latency** = client latency - model time (the scripted latency: one call per request), split into
the HTTP layer (client latency - the run's duration the server reports in ``Server-Timing``) and
lmgraph's run (the run's duration - model time).

    .venv/bin/python benchmarks/serve.py         # about 30 s; writes benchmarks/results/serve.{json,md}

Client and server share this machine's cores (2 here, with other work on them): the figures
include that contention.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


# ---------------------------------------------------------------- the server (a subprocess)

def serve_main(latency_ms: float, max_concurrency: int, max_calls: int | None, timeout: float | None) -> None:
    import uvicorn

    import lmgraph as lg
    from lmgraph.serve import _bind, app
    from lmgraph.testing import FunctionLM, request_text

    def answer(req: lg.LMRequest) -> str:
        n = re.findall(r"question (\d+)", request_text(req))[-1]
        return f"Answer: {n}"

    p = lg.Pipeline("echo")
    node = p.add(lg.Predict("question -> answer", format="chat"), "answer", question=p.input("question"))
    p.output(answer=node.answer)
    ctx = lg.RunContext(lm=FunctionLM(answer, latency_s=latency_ms / 1000), cache=False, max_concurrency=256)
    application = app(p.build(), ctx, max_concurrency=max_concurrency, max_calls_per_request=max_calls,
                      timeout_s=timeout)
    sock = _bind("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(application, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=None)
    uvicorn.Server(config).run(sockets=[sock])


# ---------------------------------------------------------------- the client

def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


async def load(url: str, total: int, concurrency: int, offset: int = 0) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    runs: list[float] = []
    lost: list[str] = []
    busy = 0
    queue = iter(range(offset, offset + total))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            nonlocal busy
            for i in queue:
                t0 = time.perf_counter()
                try:
                    async with session.post(url + "/invoke", json={"question": f"question {i}"}) as r:
                        body = await r.json()
                        status, timing = r.status, r.headers.get("Server-Timing", "")
                except Exception as e:  # noqa: BLE001 - a lost request
                    lost.append(f"#{i}: {type(e).__name__}: {e}")
                    continue
                dt = time.perf_counter() - t0
                if status == 429:
                    busy += 1
                if status != 200 or body.get("outputs") != {"answer": str(i)}:
                    lost.append(f"#{i}: {status} {json.dumps(body)[:200]}")
                    continue
                latencies.append(dt)
                m = re.search(r"dur=([\d.]+)", timing)
                if m:
                    runs.append(float(m.group(1)) / 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "runs": runs, "lost": lost, "busy": busy, "wall_s": wall}


def measure(name: str, args: argparse.Namespace, extra: list[str], *, requests: int | None = None,
            concurrency: int | None = None) -> dict[str, Any]:
    requests, concurrency = requests or args.requests, concurrency or args.concurrency
    cmd = [sys.executable, __file__, "--server", "--latency-ms", str(args.latency_ms),
           "--max-concurrency", str(args.concurrency), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        asyncio.run(load(url, 100, concurrency, offset=10**6))  # warm-up, not counted
        res = asyncio.run(load(url, requests, concurrency))
    finally:
        proc.terminate()
        proc.wait(30)
    model_s = args.latency_ms / 1000
    lat, runs = res["latencies"], res["runs"]
    added = [x - model_s for x in lat]
    http = [a - b for a, b in zip(lat, runs)]
    run_added = [b - model_s for b in runs]
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {
        "config": name, "server_flags": extra, "requests": requests, "concurrency": concurrency,
        "model_latency_ms": args.latency_ms, "answered": len(lat), "lost": len(res["lost"]),
        "lost_examples": res["lost"][:5], "http_429": res["busy"], "wall_s": round(res["wall_s"], 3),
        "requests_per_s": round(requests / res["wall_s"], 1),
        "ideal_requests_per_s": round(concurrency / model_s, 1),
        "latency_ms": {"p50": ms(pct(lat, 50)), "p99": ms(pct(lat, 99)), "mean": ms(statistics.fmean(lat))},
        "added_ms": {"p50": ms(pct(added, 50)), "p99": ms(pct(added, 99))},
        "http_layer_ms": {"p50": ms(pct(http, 50)), "p99": ms(pct(http, 99))} if http else None,
        "lmgraph_run_ms": {"p50": ms(pct(run_added, 50)), "p99": ms(pct(run_added, 99))} if runs else None,
    }


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# Serving under load (benchmarks/serve.py)", "",
             f"Command: `.venv/bin/python benchmarks/serve.py` ({meta['date']}, {meta['cpus']} cores shared with "
             "other work, Python " + meta["python"] + f", uvicorn {meta['uvicorn']} on asyncio + h11, "
             f"starlette {meta['starlette']}).", "",
             f"{results[0]['requests']} requests at concurrency {results[0]['concurrency']} (after 100 warm-up "
             f"requests; the last row: {results[-1]['requests']}, one at a time) to `POST /invoke` of a one-node "
             "program on a scripted model answering after "
             f"{results[0]['model_latency_ms']:g} ms; every answer checked against its request. Added latency = "
             "client latency - model time; HTTP layer = client latency - the run's duration (Server-Timing); "
             "lmgraph run = the run's duration - model time.", "",
             "| server | requests x concurrency | lost | 429s | requests/s | latency p50 / p99 ms | added p50 / p99 ms "
             "| HTTP layer p50 / p99 ms | lmgraph run p50 / p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        flags = " ".join(r["server_flags"]) or "defaults"
        h, g = r["http_layer_ms"] or {"p50": "-", "p99": "-"}, r["lmgraph_run_ms"] or {"p50": "-", "p99": "-"}
        lines.append(f"| `{flags}` | {r['requests']} x {r['concurrency']} | {r['lost']} | {r['http_429']} | "
                     f"{r['requests_per_s']} "
                     f"(ideal {r['ideal_requests_per_s']}) | {r['latency_ms']['p50']} / {r['latency_ms']['p99']} | "
                     f"{r['added_ms']['p50']} / {r['added_ms']['p99']} | {h['p50']} / {h['p99']} | "
                     f"{g['p50']} / {g['p99']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve"))
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--max-concurrency", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--max-calls-per-request", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        serve_main(args.latency_ms, args.max_concurrency, args.max_calls_per_request, args.timeout)
        return
    import starlette
    import uvicorn

    results = [measure("defaults", args, []),
               measure("per-request budget + timeout", args, ["--max-calls-per-request", "4", "--timeout", "10"]),
               # one request at a time: the cost of a request without queueing behind the others
               measure("defaults, one at a time", args, [], requests=300, concurrency=1)]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "python": platform.python_version(),
            "uvicorn": uvicorn.__version__, "starlette": starlette.__version__}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    if any(r["lost"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
