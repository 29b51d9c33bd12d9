"""lmgraph.serve: a real uvicorn on 127.0.0.1 (in a thread, or the CLI in a subprocess) and a real
HTTP client (aiohttp): /invoke (+ ?trace=1), /batch with failing rows, /stream events in order,
/schema, /health, /openapi.json, /docs, 422 naming the field, 429 + Retry-After when saturated,
504 past the deadline, per-request budgets, and a graceful shutdown that finishes in-flight requests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import lmgraph as lg
from lmgraph.errors import LMError
from lmgraph.testing import FunctionLM, request_text

aiohttp = pytest.importorskip("aiohttp")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

import lmgraph.serve as serve  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def qa_program() -> lg.Program:
    """classify(question) -> topic; answer(question, topic, count: int) -> answer."""
    p = lg.Pipeline("qa")
    q, n = p.input("question"), p.input("count", int)
    a = p.add(lg.Predict("question -> topic: Literal['geo', 'math']"), "classify", question=q)
    b = p.add(lg.Predict("question, topic, count: int -> answer"), "answer", question=q, topic=a.topic, count=n)
    p.output(topic=a.topic, answer=b.answer)
    return p.build()


def answer(req: lg.LMRequest) -> str:
    """``boom`` in the question: the provider refuses; ``sleep=S``: the call takes S seconds (below)."""
    text = request_text(req)
    if "boom" in text:
        raise LMError("the provider refused this prompt", retryable=False, status=400)
    return "Topic: geo" if req.node == "classify" else "Answer: Paris"


def _sleep_of(request: lg.LMRequest) -> float:
    m = re.search(r"sleep=([\d.]+)", request_text(request))
    return float(m.group(1)) if m else 0.0


class SleepyLM(FunctionLM):
    """FunctionLM whose call (streamed or not) sleeps the ``sleep=S`` seconds written in the prompt."""

    async def complete(self, request: lg.LMRequest) -> lg.LMResponse:
        await asyncio.sleep(_sleep_of(request))
        return await super().complete(request)

    async def stream(self, request: lg.LMRequest) -> Any:
        await asyncio.sleep(_sleep_of(request))
        async for item in super().stream(request):
            yield item


def make_ctx(**kw: Any) -> lg.RunContext:
    return lg.RunContext(lm=SleepyLM(answer), cache=False, retries=1, **kw)


class Served:
    """``lmgraph.serve.app`` under a real uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, application: Any) -> None:
        self.app = application
        self.sock = serve._bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(application, log_level="warning", lifespan="off",
                                                    timeout_graceful_shutdown=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def state(self) -> Any:
        return self.app.state.lmgraph

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


def served(program: lg.Program | None = None, ctx: lg.RunContext | None = None, **limits: Any) -> Served:
    return Served(serve.app(program or qa_program(), ctx or make_ctx(), **limits))


async def call(method: str, url: str, body: Any = None) -> tuple[int, Any, Any]:
    """(status, parsed JSON or text, headers) of one request with a fresh session."""
    async with aiohttp.ClientSession() as s, s.request(method, url, json=body) as r:
        text = await r.text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = text
        return r.status, data, r.headers


def sync_call(method: str, url: str, body: Any = None) -> tuple[int, Any, Any]:
    return asyncio.run(call(method, url, body))


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.fixture(scope="module")
def server():
    with served(max_calls_per_request=10) as s:
        yield s


# ---------------------------------------------------------------- endpoints

def test_invoke_returns_outputs_and_usage(server):
    status, data, headers = sync_call("POST", server.url + "/invoke", {"question": "capital of France?", "count": 2})
    assert status == 200, data
    assert data["outputs"] == {"topic": "geo", "answer": "Paris"}
    assert data["usage"]["calls"] == 2
    assert "trace" not in data
    assert headers["Server-Timing"].startswith("run;dur=")


def test_invoke_trace_1_adds_the_trace(server):
    status, data, _ = sync_call("POST", server.url + "/invoke?trace=1", {"question": "q", "count": 1})
    assert status == 200
    trace = data["trace"]
    assert [n["node"] for n in trace["nodes"]] == ["classify", "answer"]
    assert trace["nodes"][1]["calls"][0]["completion"] == "Answer: Paris"
    assert trace["outputs"] == data["outputs"]


@pytest.mark.parametrize("body, field, words", [
    ({"question": "q", "count": "three"}, "count", "not valid"),
    ({"question": "q"}, "count", "missing input"),
    ({"question": "q", "count": 1, "colour": "red"}, "colour", "unexpected input"),
    ({"question": 7, "count": 1}, "question", "not valid"),
])
def test_bad_input_is_422_naming_the_field(server, body, field, words):
    status, data, _ = sync_call("POST", server.url + "/invoke", body)
    assert status == 422, data
    assert data["error"] == "InputError"
    assert data["field"] == field
    assert words in data["message"] and repr(field) in data["message"]


def test_body_that_is_not_an_object_or_not_json(server):
    status, data, _ = sync_call("POST", server.url + "/invoke", ["q"])
    assert status == 422 and "not an object" in data["message"] and '"question"' in data["message"]

    async def raw() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.post(server.url + "/invoke", data=b"{not json",
                          headers={"content-type": "application/json"}) as r:
            return r.status, await r.json()

    status, data = asyncio.run(raw())
    assert status == 400 and "not valid JSON" in data["message"]


def test_run_failure_maps_to_a_status(server):
    status, data, _ = sync_call("POST", server.url + "/invoke", {"question": "boom", "count": 1})
    assert status == 502, data  # the model backend failed
    assert data["error"] == "LMError" and data["node"] == "classify" and "refused" in data["message"]


def test_batch_results_in_order_with_failing_rows(server):
    rows = [{"question": "a", "count": 1}, {"question": "b"}, {"question": "boom", "count": 1}, 5,
            {"question": "e", "count": 4}]
    status, data, _ = sync_call("POST", server.url + "/batch", rows)
    assert status == 200, data
    res = data["results"]
    assert [r["index"] for r in res] == [0, 1, 2, 3, 4]
    assert res[0]["outputs"] == res[4]["outputs"] == {"topic": "geo", "answer": "Paris"}
    assert res[1]["error"]["status"] == 422 and res[1]["error"]["field"] == "count"
    assert res[2]["error"]["status"] == 502 and res[2]["error"]["error"] == "LMError"
    assert res[3]["error"]["status"] == 422 and "row 3" in res[3]["error"]["message"]
    assert data["failed"] == 3


def test_batch_body_must_be_a_list_and_not_too_long():
    with served(max_batch_rows=2) as s:
        status, data, _ = sync_call("POST", s.url + "/batch", {"question": "q", "count": 1})
        assert status == 422 and "not a list" in data["message"]
        status, data, _ = sync_call("POST", s.url + "/batch", [{"question": "q", "count": 1}] * 3)
        assert status == 413 and "at most 2" in data["message"]


def test_stream_sends_node_events_in_order_then_outputs(server):
    status, text, headers = sync_call("POST", server.url + "/stream", {"question": "q", "count": 1})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [(e, d) for e, d in parse_sse(text) if e != "token"]
    assert [(e, d.get("node")) for e, d in events] == [
        ("node_start", "classify"), ("node_end", "classify"), ("node_start", "answer"), ("node_end", "answer"),
        ("outputs", None)]
    assert events[1][1]["outputs"] == {"topic": "geo"}
    assert events[-1][1]["outputs"] == {"topic": "geo", "answer": "Paris"}
    assert events[-1][1]["usage"]["calls"] == 2
    # token deltas (the fake model streams in word chunks) sit inside their node's start and end
    names = [(e, d.get("node"), d.get("field")) for e, d in parse_sse(text)]
    tokens = [i for i, n in enumerate(names) if n == ("token", "answer", "answer")]
    assert tokens and names.index(("node_start", "answer", None)) < tokens[0]
    assert tokens[-1] < names.index(("node_end", "answer", None))
    assert "".join(d["text"] for e, d in parse_sse(text) if e == "token" and d["node"] == "answer") == "Paris"


def test_stream_trace_1_adds_the_trace_to_the_outputs_event(server):
    _status, text, _ = sync_call("POST", server.url + "/stream?trace=1", {"question": "q", "count": 1})
    last = parse_sse(text)[-1]
    assert last[0] == "outputs" and [n["node"] for n in last[1]["trace"]["nodes"]] == ["classify", "answer"]


def test_stream_bad_input_is_422_and_a_failed_run_ends_with_an_error_event(server):
    status, data, _ = sync_call("POST", server.url + "/stream", {"question": "q", "count": "x"})
    assert status == 422 and data["field"] == "count"
    status, text, _ = sync_call("POST", server.url + "/stream", {"question": "boom", "count": 1})
    assert status == 200
    events = parse_sse(text)
    assert events[0] == ("node_start", {"node": "classify"})
    assert events[1][0] == "node_end" and "refused" in events[1][1]["error"]
    assert events[-1][0] == "error" and events[-1][1]["error"] == "LMError" and events[-1][1]["status"] == 502


def test_schema_from_the_signatures(server):
    status, data, _ = sync_call("GET", server.url + "/schema")
    assert status == 200
    ins, outs = data["input_schema"], data["output_schema"]
    assert ins["properties"]["question"]["type"] == "string"
    assert ins["properties"]["count"]["type"] == "integer"
    assert ins["required"] == ["question", "count"] and ins["additionalProperties"] is False
    assert outs["properties"]["topic"]["enum"] == ["geo", "math"]
    assert outs["properties"]["answer"]["type"] == "string"
    assert data["content_hash"] == qa_program().content_hash()


class Point(BaseModel):
    x: int
    y: int


class Locate(lg.Signature):
    """Where is it?"""
    place: str = lg.InputField(desc="a place name")
    point: Point = lg.OutputField()
    tags: list[str] = lg.OutputField()


def test_schema_of_structured_outputs_and_described_inputs():
    from lmgraph.serve_schema import openapi, program_schema

    p = lg.Pipeline("geo")
    n = p.add(lg.Predict(Locate), "locate", place=p.input("place"))
    p.output(point=n.point, tags=n.tags)
    program = p.build()
    s = program_schema(program)
    assert s["input_schema"]["properties"]["place"]["description"] == "a place name"
    assert s["output_schema"]["properties"]["point"] == {"$ref": "#/$defs/Point"}
    assert s["output_schema"]["$defs"]["Point"]["required"] == ["x", "y"]
    doc = openapi(program)  # $defs hoisted into components, refs rewritten
    comps = doc["components"]["schemas"]
    assert comps["Outputs"]["properties"]["point"] == {"$ref": "#/components/schemas/Point"}
    assert "Point" in comps and "$defs" not in json.dumps(doc)


def test_health_openapi_and_docs(server):
    status, data, _ = sync_call("GET", server.url + "/health")
    assert status == 200 and data["status"] == "ok" and data["program"] == "qa" and data["in_flight"] == 0
    status, doc, _ = sync_call("GET", server.url + "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) >= {"/invoke", "/batch", "/stream", "/schema", "/health"}
    assert doc["components"]["schemas"]["Inputs"]["properties"]["count"]["type"] == "integer"
    status, page, headers = sync_call("GET", server.url + "/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "classify" in page and "openapi.json" in page
    assert "<script src" not in page and "http://" not in page.replace("http://HOST:PORT", "")  # no CDN


# ---------------------------------------------------------------- limits

def test_per_request_budget_is_fresh_for_every_request():
    # 2 calls a run: with a budget of 2 per request every request succeeds (a shared one would not)
    with served(max_calls_per_request=2) as s:
        for _ in range(3):
            status, data, _ = sync_call("POST", s.url + "/invoke", {"question": "q", "count": 1})
            assert status == 200, data
    with served(max_calls_per_request=1) as s:
        status, data, _ = sync_call("POST", s.url + "/invoke", {"question": "q", "count": 1})
        assert status == 500 and data["error"] == "BudgetExceeded" and data["node"] == "answer"
        assert "1 model calls per run" in data["message"]
        status, data, _ = sync_call("POST", s.url + "/batch", [{"question": "q", "count": 1}] * 2)
        assert [r["error"]["error"] for r in data["results"]] == ["BudgetExceeded", "BudgetExceeded"]
        status, text, _ = sync_call("POST", s.url + "/stream", {"question": "q", "count": 1})
        events = parse_sse(text)
        assert events[-1][0] == "error" and events[-1][1]["error"] == "BudgetExceeded"
        assert ("node_end", "classify") in [(e, d.get("node")) for e, d in events]  # the first call ran


def test_per_request_budget_keeps_one_model_concurrency_limit_for_the_server():
    live, peak = 0, 0
    lock = threading.Lock()

    class Counting(SleepyLM):
        async def complete(self, request: lg.LMRequest) -> lg.LMResponse:
            nonlocal live, peak
            with lock:
                live += 1
                peak = max(peak, live)
            try:
                await asyncio.sleep(0.05)
                return await super().complete(request)
            finally:
                with lock:
                    live -= 1

    ctx = lg.RunContext(lm=Counting(answer), cache=False, retries=1, max_concurrency=2)
    with served(qa_program(), ctx, max_calls_per_request=5, max_concurrency=16) as s:
        async def many() -> list[int]:
            async with aiohttp.ClientSession() as sess:
                async def one(i: int) -> int:
                    async with sess.post(s.url + "/invoke", json={"question": f"q{i}", "count": 1}) as r:
                        return r.status
                return await asyncio.gather(*(one(i) for i in range(8)))

        assert asyncio.run(many()) == [200] * 8
    assert peak == 2  # the context's max_concurrency held across requests, each with its own budget


def test_saturated_server_answers_429_with_retry_after_without_queueing():
    with served(max_concurrency=2) as s:
        async def go() -> tuple[list[int], int, Any, Any]:
            async with aiohttp.ClientSession() as sess:
                async def slow() -> int:
                    async with sess.post(s.url + "/invoke", json={"question": "sleep=1.5", "count": 1}) as r:
                        return r.status
                tasks = [asyncio.ensure_future(slow()) for _ in range(2)]
                while s.state.in_flight < 2:
                    await asyncio.sleep(0.01)
                t0 = time.perf_counter()
                async with sess.post(s.url + "/invoke", json={"question": "q", "count": 1}) as r:
                    third, body, headers = r.status, await r.json(), r.headers
                waited = time.perf_counter() - t0
                return list(await asyncio.gather(*tasks)), third, (body, headers), waited

        firsts, third, (body, headers), waited = asyncio.run(go())
        assert firsts == [200, 200]
        assert third == 429 and body["error"] == "Overloaded" and "2 requests in flight" in body["message"]
        assert int(headers["Retry-After"]) >= 1
        assert waited < 1.0  # turned away at once, not queued behind the slow ones
        assert s.state.stats["rejected"] == 1
        status, _, _ = sync_call("POST", s.url + "/invoke", {"question": "q", "count": 1})
        assert status == 200  # slots come back


def test_timeout_is_504_and_cancels_the_run():
    with served(timeout_s=0.3) as s:
        t0 = time.perf_counter()
        status, data, _ = sync_call("POST", s.url + "/invoke", {"question": "sleep=5", "count": 1})
        assert status == 504 and data["error"] == "Timeout" and "0.3 s" in data["message"]
        assert time.perf_counter() - t0 < 3
        assert s.state.in_flight == 0
        status, data, _ = sync_call("POST", s.url + "/batch", [{"question": "sleep=5", "count": 1},
                                                               {"question": "q", "count": 1}])
        assert [r.get("error", {}).get("status") for r in data["results"]] == [504, None]
        status, text, _ = sync_call("POST", s.url + "/stream", {"question": "sleep=5", "count": 1})
        assert parse_sse(text)[-1][0] == "error" and parse_sse(text)[-1][1]["status"] == 504


def test_graceful_shutdown_finishes_in_flight_requests():
    s = served()
    s.__enter__()

    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as sess:
            async def slow() -> tuple[int, Any]:
                async with sess.post(s.url + "/invoke", json={"question": "sleep=1.0", "count": 1}) as r:
                    return r.status, await r.json()
            task = asyncio.ensure_future(slow())
            while s.state.in_flight < 1:
                await asyncio.sleep(0.01)
            s.server.should_exit = True  # what SIGINT/SIGTERM do
            return await task

    status, data = asyncio.run(go())
    s.thread.join(20)
    s.sock.close()
    assert status == 200 and data["outputs"]["answer"] == "Paris"
    assert not s.thread.is_alive()
    with pytest.raises(aiohttp.ClientConnectionError):
        sync_call("GET", s.url + "/health")


def test_app_argument_errors():
    with pytest.raises(lg.ConfigError, match="max_concurrency"):
        serve.app(qa_program(), make_ctx(), max_concurrency=0)
    with pytest.raises(lg.ConfigError, match="timeout_s"):
        serve.app(qa_program(), make_ctx(), timeout_s=-1)
    with pytest.raises(lg.ConfigError, match="limits are"):
        serve.app(qa_program(), make_ctx(), max_conc=3)
    with pytest.raises(lg.DefinitionError, match="takes a built Program"):
        serve.app(lg.Pipeline("x"), make_ctx())
    with pytest.raises(lg.DefinitionError, match="not a RunContext"):
        serve.app(qa_program(), {"lm": None})


def test_mounted_in_another_app():
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/qa", serve.app(qa_program(), make_ctx()))])
    with Served(outer) as s:
        status, data, _ = sync_call("POST", s.url + "/qa/invoke", {"question": "q", "count": 1})
        assert status == 200 and data["outputs"]["answer"] == "Paris"


# ---------------------------------------------------------------- the command line

def _cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LMGRAPH_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}


def test_cli_serve_needs_resources_from_python(tmp_path):
    from lmgraph.cli import main

    corpus = ["Paris is the capital of France."]
    p = lg.Pipeline("rag")
    q = p.input("question")
    docs = p.add(lg.Retrieve(corpus, k=1), "retrieve", query=q)
    p.output(passages=docs.passages)
    path = p.build().save(tmp_path / "rag.json")
    err_path = tmp_path / "err.txt"
    proc = subprocess.run([sys.executable, "-m", "lmgraph", "serve", str(path), "--port", "0"],
                          capture_output=True, text=True, timeout=60, env=_cli_env(tmp_path))
    err_path.write_text(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert "lmgraph serve" in proc.stderr and "lmgraph.serve.app" in proc.stderr
    assert main(["serve", str(tmp_path / "missing.json")]) == 2


def test_cli_serve_loads_a_compiled_artifact_and_passes_the_limits(tmp_path, monkeypatch):
    from lmgraph.cli import main
    from lmgraph.optimizers import save_artifact

    compiled = qa_program().with_parameters({"classify.instructions": "Name the topic.", "answer.format": "json"})
    path = save_artifact(tmp_path / "qa.compiled.json", compiled)
    got: dict[str, Any] = {}
    monkeypatch.setattr(serve, "run_server", lambda program, ctx, **kw: got.update(program=program, ctx=ctx, **kw))
    assert main(["serve", str(path), "--host", "0.0.0.0", "--port", "9123", "--max-concurrency", "3",
                 "--timeout", "2.5", "--max-calls-per-request", "7", "--model", "http:http://127.0.0.1:9/v1",
                 "--concurrency", "5", "--no-cache"]) == 0
    assert got["program"] == compiled and got["host"] == "0.0.0.0" and got["port"] == 9123
    assert got["options"] == serve.ServeOptions(max_concurrency=3, timeout_s=2.5, max_calls_per_request=7)
    assert got["ctx"].max_concurrency == 5 and got["ctx"].cache is False
    assert type(got["ctx"].lm).__name__ == "OpenAIServerLM"


def test_cli_serve_argument_errors(capsys):
    from lmgraph.cli import main

    for argv in (["serve", "x.json", "--max-concurrency", "0"], ["serve", "x.json", "--timeout", "-2"],
                 ["serve", "x.json", "--max-calls-per-request", "zero"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_cli_serve_examples_trec_over_a_loopback_model(tmp_path):
    """`lmgraph serve examples/trec.json --model http:...` (a fake OpenAI-compatible server) answers
    /invoke, /batch, /stream and /schema; SIGINT stops it after the in-flight request finishes."""
    from fault_server import FaultServer

    with FaultServer(lambda text: " location", latency_s=0.4) as model:
        proc = subprocess.Popen([sys.executable, "-m", "lmgraph", "serve", str(ROOT / "examples" / "trec.json"),
                                 "--model", f"http:{model.base_url}", "--port", "0", "--no-cache", "--quiet",
                                 "--max-calls-per-request", "3", "--timeout", "30"],
                                stderr=subprocess.PIPE, text=True, env=_cli_env(tmp_path))
        try:
            line = proc.stderr.readline()
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            assert m, line + proc.stderr.read() if proc.poll() is not None else line
            url = m.group(1)

            async def go() -> dict[str, Any]:
                out: dict[str, Any] = {}
                async with aiohttp.ClientSession() as sess:
                    async with sess.get(url + "/schema") as r:
                        out["schema"] = await r.json()
                    async with sess.post(url + "/invoke", json={"question": "Where is Paris?"}) as r:
                        out["invoke"] = (r.status, await r.json())
                    async with sess.post(url + "/batch", json=[{"question": "a"}, {"q": "b"}]) as r:
                        out["batch"] = await r.json()
                    async with sess.post(url + "/stream", json={"question": "Where?"}) as r:
                        out["stream"] = parse_sse(await r.text())

                    async def slow() -> int:
                        async with sess.post(url + "/invoke", json={"question": "last one"}) as r:
                            return r.status
                    task = asyncio.ensure_future(slow())
                    await asyncio.sleep(0.2)  # in flight (the model takes 0.4 s)
                    proc.send_signal(signal.SIGINT)
                    out["in_flight"] = await task
                return out

            out = asyncio.run(go())
            code = proc.wait(30)
            tail = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    labels = out["schema"]["output_schema"]["properties"]["label"]["enum"]
    assert "location" in labels and out["schema"]["input_schema"]["required"] == ["question"]
    assert out["invoke"] == (200, {**out["invoke"][1], "outputs": {"label": "location"}})
    assert out["batch"]["results"][0]["outputs"] == {"label": "location"}
    assert out["batch"]["results"][1]["error"]["field"] == "q" and out["batch"]["failed"] == 1
    assert [e for e, _ in out["stream"] if e != "token"] == ["node_start", "node_end", "outputs"]
    assert out["in_flight"] == 200  # the request in flight at SIGINT finished
    assert code == 0, tail
    assert "stopped after 4 requests" in tail  # invoke, batch, stream, the last one


def test_serve_imports_its_web_framework_lazily():
    code = ("import lmgraph, lmgraph.serve, lmgraph.cli, sys; "
            "bad = [m for m in ('starlette', 'uvicorn') if m in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr


def test_responses_do_not_wait_for_a_delayed_ack():
    # the listening socket says it is TCP, so asyncio sets TCP_NODELAY on its connections; a plain
    # socket.socket() (proto 0) made every response wait ~40 ms for the client's delayed ACK
    sock = serve._bind("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    sock.close()
    with served() as s:
        async def times() -> list[float]:
            out = []
            async with aiohttp.ClientSession() as sess:
                for _ in range(15):
                    t0 = time.perf_counter()
                    async with sess.get(s.url + "/health") as r:
                        await r.read()
                    out.append(time.perf_counter() - t0)
            return sorted(out)

        assert times_median(asyncio.run(times())) < 0.030


def times_median(values: list[float]) -> float:
    return values[len(values) // 2]


@pytest.mark.integration
def test_serving_examples_trec_on_the_embedded_model():
    """examples/trec.json on the real embedded model (in-process llama.cpp) behind uvicorn:
    /invoke, /batch and /stream answer, and the stream carries the model's token deltas."""
    pytest.importorskip("llama_cpp")
    from lmgraph.lm.embedded import embedded_model_path
    from lmgraph.lm.llamacpp import LlamaCppLM

    try:
        embedded_model_path()
    except lg.DefinitionError as e:
        pytest.skip(str(e))
    program = lg.Program.load(ROOT / "examples" / "trec.json")
    labels = serve_schema_labels(program)
    ctx = lg.RunContext(lm=LlamaCppLM(n_ctx=1024), cache=False)
    with Served(serve.app(program, ctx, timeout_s=120, max_calls_per_request=3)) as s:
        status, data, _ = sync_call("POST", s.url + "/invoke", {"question": "Where is the Eiffel Tower?"})
        assert status == 200, data
        assert data["outputs"]["label"] in labels and data["usage"]["calls"] >= 1
        status, data, _ = sync_call("POST", s.url + "/batch", [{"question": "Who wrote Hamlet?"},
                                                               {"question": "How many legs has a spider?"}])
        assert [r["outputs"]["label"] in labels for r in data["results"]] == [True, True]
        status, text, _ = sync_call("POST", s.url + "/stream", {"question": "Where is the Eiffel Tower?"})
        events = parse_sse(text)
        assert [e for e, _ in events if e != "token"] == ["node_start", "node_end", "outputs"]
        assert any(e == "token" and d["node"] == "classify" for e, d in events)
        assert events[-1][1]["outputs"]["label"] in labels


def serve_schema_labels(program: lg.Program) -> list[str]:
    from lmgraph.serve_schema import program_schema

    return program_schema(program)["output_schema"]["properties"]["label"]["enum"]


def test_a_stream_the_client_leaves_frees_its_slot_and_stops_the_run():
    with served(max_concurrency=1) as s:
        async def go() -> None:
            async with (aiohttp.ClientSession() as sess,
                        sess.post(s.url + "/stream", json={"question": "sleep=3", "count": 1}) as r):
                first = await r.content.readuntil(b"\n\n")
                assert first.startswith(b"event: node_start")
            # leaving the block with the body unread drops the connection mid-run

        t0 = time.perf_counter()
        asyncio.run(go())
        while s.state.in_flight and time.perf_counter() - t0 < 2.5:
            time.sleep(0.02)
        assert s.state.in_flight == 0, "the stream kept its slot after the client left"
        status, _, _ = sync_call("POST", s.url + "/invoke", {"question": "q", "count": 1})
        assert status == 200
