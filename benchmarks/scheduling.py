"""Scheduling against a fixed-latency OpenAI-compatible server: parallel branches and throughput.

A tiny fake server (stdlib ``ThreadingHTTPServer``, a thread per connection, bound to
127.0.0.1, run in a child process so its CPU use does not share the client's GIL) answers
``/v1/chat/completions`` and ``/v1/completions`` after sleeping a fixed latency per request.
Requests are never serialised: 64 concurrent requests sleep concurrently. ``GET /stats``
reports the number of requests and the most that were in flight at once.

Two measurements, for lmgraph (cache off) and, when installed, DSPy 3.4.1, each run three ways:
with in-process fake models that sleep the latency (lmgraph ``FunctionLM(latency_s=...)``,
a DummyLM subclass for DSPy: the scheduler alone), then over HTTP to the fake server at 100 ms
and at 1 s per request: lmgraph through its lean aiohttp client (``OpenAIServerLM``) and through
litellm (``openai_compatible``), DSPy through litellm (``dspy.LM(engine="litellm")``):

* **parallel branches**: 4 branches of 2 chained nodes each, then a join node (9 calls;
  critical path 3 calls). Median wall time of several runs after a warm-up run.
  Target: wall time <= 1.1 x (3 x latency).
* **throughput**: a 1-node program over 1,000 examples at concurrency 64. Ideal throughput
  is 64 / latency requests per second; we report the achieved fraction (target >= 0.9), the
  client's CPU time per request and the ceiling that alone implies on one core (an asyncio
  client runs on one core; DSPy's threads share one GIL). ``litellm.acompletion`` on its own
  at the same concurrency is measured too: the ceiling for any litellm-based client.

Run alone, or through ``overhead.py`` (which runs every overhead/scheduling figure)::

    benchmarks/.work/venv/bin/python benchmarks/scheduling.py [--latency 0.1 1.0] [--json out.json]

The server on its own: ``python benchmarks/scheduling.py --serve --latency 0.1`` (prints
``PORT <n>``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

from answers import QuietHTTPServer  # benchmarks/answers.py

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

BRANCHES = 4
DEPTH = 2
CRITICAL_PATH_CALLS = DEPTH + 1  # a branch, then the join
ANSWER = "ok"

# --------------------------------------------------------------------------- the fake server


def _reply_text(body: dict[str, Any]) -> str:
    """A canned answer in the format the request asks for (every benchmark node outputs `answer`).

    DSPy's ChatAdapter asks for ``[[ ## answer ## ]]`` sections; a JSON response format gets
    a JSON object; lmgraph's chat format reads ``answer: ...`` lines; a raw completion prompt
    (lmgraph's completion format ends with the label) gets the bare value.
    """
    if "messages" not in body:
        return f" {ANSWER}"
    text = "\n".join(str(m.get("content", "")) for m in body["messages"])
    if "[[ ## completed ## ]]" in text:
        return f"[[ ## answer ## ]]\n{ANSWER}\n\n[[ ## completed ## ]]"
    if body.get("response_format"):
        return json.dumps({"answer": ANSWER})
    return f"answer: {ANSWER}"


class _FakeOpenAI(QuietHTTPServer):
    request_queue_size = 512  # the listen backlog; the default (5) drops bursts of connects

    def __init__(self, latency_s: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0

    def enter(self) -> None:
        with self._lock:
            self.requests += 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)

    def leave(self) -> None:
        with self._lock:
            self.inflight -= 1

    def stats(self, reset: bool) -> dict[str, int]:
        with self._lock:
            out = {"requests": self.requests, "max_inflight": self.max_inflight}
            if reset:
                self.requests = self.max_inflight = 0
            return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server would allow
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/stats"):
            self._send(200, self.server.stats(reset="reset" in self.path))
        elif self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "local", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._send(400, {"error": {"message": "body is not JSON"}})
            return
        path = self.path.rstrip("/")
        if not (path.endswith("/chat/completions") or path.endswith("/completions")):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        self.server.enter()
        try:
            time.sleep(self.server.latency_s)
        finally:
            self.server.leave()
        text = _reply_text(body)
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        created = int(time.time())
        model = str(body.get("model", "local"))
        if path.endswith("/chat/completions"):
            self._send(200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": created,
                             "model": model, "usage": usage,
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}]})
        else:
            self._send(200, {"id": "cmpl-fake", "object": "text_completion", "created": created,
                             "model": model, "usage": usage,
                             "choices": [{"index": 0, "finish_reason": "stop", "text": text,
                                          "logprobs": None}]})


def serve(latency_s: float) -> None:
    """Run the fake server in this process until killed; prints ``PORT <n>`` first."""
    server = _FakeOpenAI(latency_s)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


class FakeServer:
    """A handle on the fake server running in a child process."""

    def __init__(self, proc: subprocess.Popen[str], port: int, latency_s: float) -> None:
        self.proc = proc
        self.port = port
        self.latency_s = latency_s
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stats(self, reset: bool = False) -> dict[str, int]:
        import urllib.request

        url = f"http://127.0.0.1:{self.port}/stats" + ("?reset" if reset else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())


@contextmanager
def fake_server(latency_s: float) -> Iterator[FakeServer]:
    """Start the fake server (child process, 127.0.0.1, a free port); stop it on exit."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve",
                             "--latency", str(latency_s)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake server did not start (said {line!r})")
        yield FakeServer(proc, int(line.split()[1]), latency_s)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- measurements

Runner = Callable[[], None]
BatchRunner = Callable[[int], int]  # runs n rows, returns how many failed
StatsFn = Callable[[bool], dict[str, int]]


def _measure(run_branches: Runner, run_batch: BatchRunner, *, latency_s: float, repeats: int,
             examples: int, concurrency: int, stats: StatsFn | None) -> dict[str, Any]:
    """Median wall time of the branch pipeline, then one timed batch (after a warm-up batch)."""
    def server_stats() -> dict[str, int] | None:
        return stats(True) if stats is not None else None

    run_branches()  # warm up: litellm import, HTTP clients, connections, thread pools
    gc.collect()  # start each timed part from the same heap state (GC stays enabled while timing)
    server_stats()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_branches()
        walls.append(time.perf_counter() - t0)
    branch_stats = server_stats()
    bound = CRITICAL_PATH_CALLS * latency_s
    wall = statistics.median(walls)
    parallel = {"wall_s": wall, "walls_s": walls, "critical_path_s": bound,
                "ratio_wall_over_critical_path": wall / bound,
                "all_sequential_s": (BRANCHES * DEPTH + 1) * latency_s, "server": branch_stats}

    run_batch(concurrency)  # warm up: one full wave of connections / threads
    gc.collect()
    server_stats()
    c0, t0 = time.process_time(), time.perf_counter()
    failed = run_batch(examples)
    wall_b, cpu_b = time.perf_counter() - t0, time.process_time() - c0
    ideal = concurrency / latency_s
    achieved = examples / wall_b
    throughput = {"examples": examples, "concurrency": concurrency, "wall_s": wall_b,
                  "ideal_wall_s": examples / ideal, "requests_per_s": achieved,
                  "ideal_requests_per_s": ideal, "fraction_of_ideal": achieved / ideal,
                  "client_cpu_ms_per_request": cpu_b / examples * 1000,
                  # one core can do 1 / (CPU per request) requests per second, whatever the scheduler
                  "cpu_bound_ceiling": min(1.0, examples / cpu_b / ideal) if cpu_b > 0 else 1.0,
                  "failed_rows": failed, "server": server_stats()}
    return {"parallel_branches": parallel, "throughput": throughput}


def _check_failures(who: str, failed: int, n: int, first: object) -> None:
    """A rare failed row is recorded (``failed_rows``); more than 1% means something is broken.

    (DSPy's threaded litellm client occasionally reports "Connection error" for one row in a
    few thousand against this server: the client resets a kept-alive connection.)
    """
    if failed > n // 100:
        raise RuntimeError(f"{failed} of {n} {who} batch rows failed, first: {first!r}")


# --------------------------------------------------------------------------- lmgraph


def _lmgraph_programs() -> tuple[Any, Any]:
    """The branch pipeline (4 x 2 chained Predicts, then a join) and a 1-node program."""
    import lmgraph as lg

    p = lg.Pipeline("branches")
    q = p.input("question")
    tails = []
    for b in range(BRANCHES):
        prev = q
        for d in range(DEPTH):
            node = p.add(lg.Predict("question -> answer", format="chat",
                                    instructions=f"Branch {b}, step {d}: answer briefly."),
                         name=f"b{b}_{d}", question=prev)
            prev = node.answer
        tails.append(prev)
    join = p.add(lg.Predict("a, b, c, d -> answer", format="chat"), name="join",
                 **dict(zip("abcd", tails)))
    p.output(answer=join.answer)

    one = lg.Pipeline("one")
    q1 = one.input("question")
    n1 = one.add(lg.Predict("question -> answer", format="chat"), question=q1)
    one.output(answer=n1.answer)
    return p.build(), one.build()


def bench_lmgraph(lm: Any, *, latency_s: float, repeats: int, examples: int, concurrency: int,
                  stats: StatsFn | None = None) -> dict[str, Any]:
    """lmgraph with ``lm``, cache off; ``max_concurrency`` and the batch concurrency both 64."""
    import lmgraph as lg

    branches, one = _lmgraph_programs()
    ctx = lg.RunContext(lm=lm, cache=False, retries=1, max_concurrency=concurrency)

    def run_branches() -> None:
        out = branches.run_sync(ctx, question="What is the capital of France?")
        if out.answer != ANSWER:
            raise RuntimeError(f"unexpected answer {out.answer!r}")

    def run_batch(n: int) -> int:
        rows = [{"question": f"Question number {i}?"} for i in range(n)]
        failed = [r for r in one.batch_sync(rows, ctx=ctx, concurrency=concurrency) if not r.ok]
        _check_failures("lmgraph", len(failed), n, failed[0].error if failed else None)
        return len(failed)

    out = _measure(run_branches, run_batch, latency_s=latency_s, repeats=repeats,
                   examples=examples, concurrency=concurrency, stats=stats)
    out["how"] = (f"Program.run_sync / Program.batch_sync(concurrency={concurrency}), "
                  f"RunContext(cache=False, max_concurrency={concurrency})")
    return out


# --------------------------------------------------------------------------- DSPy


def bench_dspy(lm: Any, *, latency_s: float, repeats: int, examples: int, concurrency: int,
               stats: StatsFn | None = None) -> dict[str, Any]:
    """DSPy with ``lm``: branches through dspy.Parallel, the batch through Predict.batch."""
    import dspy

    class Chain(dspy.Module):
        def __init__(self, branch: int) -> None:
            super().__init__()
            self.steps = [dspy.Predict(dspy.Signature("question -> answer",
                                                      f"Branch {branch}, step {d}: answer briefly."))
                          for d in range(DEPTH)]

        def forward(self, question: str) -> Any:
            for step in self.steps:
                question = step(question=question).answer
            return dspy.Prediction(answer=question)

    class Branches(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.chains = [Chain(b) for b in range(BRANCHES)]
            self.parallel = dspy.Parallel(num_threads=BRANCHES, disable_progress_bar=True)
            self.join = dspy.Predict("a, b, c, d -> answer")

        def forward(self, question: str) -> Any:
            ex = dspy.Example(question=question).with_inputs("question")
            outs = self.parallel([(chain, ex) for chain in self.chains])
            return self.join(**{k: o.answer for k, o in zip("abcd", outs)})

    branches = Branches()
    one = dspy.Predict("question -> answer")

    def run_branches() -> None:
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            out = branches(question="What is the capital of France?")
        if out.answer != ANSWER:
            raise RuntimeError(f"unexpected answer {out.answer!r}")

    def run_batch(n: int) -> int:
        rows = [dspy.Example(question=f"Question number {i}?").with_inputs("question")
                for i in range(n)]
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            _, failed, errors = one.batch(rows, num_threads=concurrency, disable_progress_bar=True,
                                          return_failed_examples=True)
        _check_failures("DSPy", len(failed), n, errors[0] if errors else None)
        return len(failed)

    out = _measure(run_branches, run_batch, latency_s=latency_s, repeats=repeats,
                   examples=examples, concurrency=concurrency, stats=stats)
    out["how"] = (f"dspy.Parallel(num_threads={BRANCHES}) over the 4 chains, then the join; "
                  f"Predict.batch(num_threads={concurrency})")
    return out


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _sleepy_dummy_lm(latency_s: float) -> Any:
    """DSPy's DummyLM answering ``answer: ok`` after a blocking sleep (DSPy calls LMs from threads)."""
    from dspy.utils.dummies import DummyLM

    # DSPy 3.4 deprecates custom forward(); it still supports it, and it is the simplest fake
    warnings.filterwarnings("ignore", message="Implementing custom LMs through BaseLM.forward",
                            category=DeprecationWarning)

    class SleepyDummyLM(DummyLM):
        def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
            time.sleep(latency_s)
            return super().forward(prompt=prompt, messages=messages, **kwargs)

    return SleepyDummyLM({"": {"answer": ANSWER}})  # "" is in every prompt: always answers


# --------------------------------------------------------------------------- entry points


def bench_raw_litellm(base_url: str, *, latency_s: float, examples: int,
                      concurrency: int) -> dict[str, Any]:
    """``litellm.acompletion`` alone, ``concurrency`` at a time: the ceiling for any litellm client."""
    from lmgraph.lm.litellm import _import_litellm

    litellm = _import_litellm()
    kwargs = {"model": "openai/local", "api_base": base_url, "api_key": "sk-local",
              "temperature": 0.0, "max_tokens": 256, "num_retries": 0}

    async def batch(n: int) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                await litellm.acompletion(
                    messages=[{"role": "user", "content": f"Question number {i}?"}], **kwargs)

        await asyncio.gather(*(one(i) for i in range(n)))

    async def measure() -> tuple[float, float]:
        await batch(concurrency)  # warm up
        c0, t0 = time.process_time(), time.perf_counter()
        await batch(examples)
        return time.perf_counter() - t0, time.process_time() - c0

    wall, cpu = asyncio.run(measure())
    ideal = concurrency / latency_s
    return {"examples": examples, "concurrency": concurrency, "wall_s": wall,
            "requests_per_s": examples / wall, "fraction_of_ideal": examples / wall / ideal,
            "client_cpu_ms_per_request": cpu / examples * 1000,
            "how": f"asyncio.gather of litellm.acompletion behind asyncio.Semaphore({concurrency})"}


def _settle(seconds: float = 1.5) -> None:
    """Let litellm's background threads (success callbacks, logging) finish the last batch's work,
    so that it does not bleed into the next measurement's CPU and wall time."""
    time.sleep(seconds)


def run(*, latencies: Sequence[float] = (0.1, 1.0), in_process_latency: float | None = 0.1,
        repeats: int = 5, examples: int = 1000, concurrency: int = 64,
        dspy: bool = True) -> dict[str, Any]:
    """Every measurement: with in-process fake models first, then over HTTP at each latency."""
    from lmgraph.lm.litellm import openai_compatible
    from lmgraph.lm.openai_http import OpenAIServerLM
    from lmgraph.testing import FunctionLM

    dspy = dspy and _installed("dspy")
    kw = {"repeats": repeats, "examples": examples, "concurrency": concurrency}
    out: dict[str, Any] = {"branches": BRANCHES, "depth": DEPTH,
                           "critical_path_calls": CRITICAL_PATH_CALLS, **kw}
    if in_process_latency is not None:
        lat = in_process_latency
        entry: dict[str, Any] = {"latency_s": lat, "lmgraph": bench_lmgraph(
            FunctionLM(lambda req: f"answer: {ANSWER}", latency_s=lat), latency_s=lat, **kw)}
        if dspy:
            entry["dspy"] = bench_dspy(_sleepy_dummy_lm(lat), latency_s=lat, **kw)
        out["in_process"] = entry
    out["http"] = []
    for latency in latencies:
        with fake_server(latency) as server:
            entry = {"latency_s": latency}
            if _installed("aiohttp"):
                lean = OpenAIServerLM(server.base_url, "local", max_connections=concurrency)
                entry["lmgraph_http"] = bench_lmgraph(lean, latency_s=latency, stats=server.stats, **kw)
                entry["lmgraph_http"]["how"] += "; OpenAIServerLM (lmgraph's aiohttp client)"
                lean.close()
            lm = openai_compatible(server.base_url, "local")
            entry["lmgraph"] = bench_lmgraph(lm, latency_s=latency, stats=server.stats, **kw)
            _settle()
            if dspy:
                import dspy as dspy_mod

                dlm = dspy_mod.LM("openai/local", api_base=server.base_url, api_key="x",
                                  engine="litellm", cache=False, num_retries=0)
                entry["dspy"] = bench_dspy(dlm, latency_s=latency, stats=server.stats, **kw)
                _settle()
            out["http"].append(entry)
    if latencies:
        # Last: it runs on its own event loop, and litellm's process-wide logging worker then
        # gets orphaned ("Task was destroyed but it is pending!") if lmgraph's loop used it after.
        first = out["http"][0]
        with fake_server(first["latency_s"]) as server:
            first["raw_litellm"] = bench_raw_litellm(server.base_url, latency_s=first["latency_s"],
                                                     examples=examples, concurrency=concurrency)
    return out


def report_lines(res: dict[str, Any]) -> list[str]:
    entries = ([("in-process fake", res["in_process"])] if res.get("in_process") else [])
    entries += [("HTTP", e) for e in res["http"]]
    lines = []
    for where, entry in entries:
        ms = entry["latency_s"] * 1000
        for name in ("lmgraph_http", "lmgraph", "dspy"):
            r = entry.get(name)
            if not r:
                continue
            pb, tp = r["parallel_branches"], r["throughput"]
            label = name if where != "HTTP" else {"lmgraph_http": "lmgraph (OpenAIServerLM)",
                                                  "lmgraph": "lmgraph (litellm)"}.get(name, name)
            lines.append(f"{label} {where} {ms:.0f} ms: {BRANCHES}x{DEPTH} branches + join "
                         f"{pb['wall_s'] * 1000:.0f} ms = {pb['ratio_wall_over_critical_path']:.3f} x "
                         f"critical path (target <= 1.1)")
            lines.append(f"{'':8s} {tp['examples']} rows @ {tp['concurrency']}: "
                         f"{tp['requests_per_s']:.0f}/{tp['ideal_requests_per_s']:.0f} req/s = "
                         f"{tp['fraction_of_ideal']:.3f} of ideal (target >= 0.9); client CPU "
                         f"{tp['client_cpu_ms_per_request']:.2f} ms/request (one core's ceiling "
                         f"{tp['cpu_bound_ceiling']:.2f})"
                         + (f"; server max in flight {tp['server']['max_inflight']}"
                            if tp["server"] else "")
                         + (f"; {tp['failed_rows']} rows failed" if tp["failed_rows"] else ""))
        raw = entry.get("raw_litellm")
        if raw:
            lines.append(f"raw litellm.acompletion {where} {ms:.0f} ms: {raw['requests_per_s']:.0f} req/s = "
                         f"{raw['fraction_of_ideal']:.3f} of ideal; client CPU "
                         f"{raw['client_cpu_ms_per_request']:.2f} ms/request")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="parallel branches and throughput vs a fake server")
    ap.add_argument("--serve", action="store_true", help="only run the fake server")
    ap.add_argument("--latency", type=float, nargs="+", default=[0.1, 1.0],
                    help="seconds per request (the server: the first)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--no-dspy", action="store_true")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.latency[0])
        return
    res = run(latencies=args.latency, repeats=args.repeats, examples=args.examples,
              concurrency=args.concurrency, dspy=not args.no_dspy)
    print("\n".join(report_lines(res)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
