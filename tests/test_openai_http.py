"""OpenAIServerLM against a scripted OpenAI-compatible server on 127.0.0.1 (stdlib, no network)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("aiohttp")

import lmgraph as lg
from lmgraph.errors import DefinitionError, LMError
from lmgraph.lm.base import LMRequest, Message
from lmgraph.lm.openai_http import OpenAIServerLM
from lmgraph.lm.wrappers import RetryLM


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args):  # noqa: ANN002
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.bodies.append(body)
            srv.paths.append(self.path)
            srv.auth.append(self.headers.get("Authorization"))
            status, payload = srv.script.pop(0) if srv.script else (200, None)
        time.sleep(srv.latency)
        if payload is None:
            if self.path.endswith("/chat/completions"):
                text = "echo: " + body["messages"][-1]["content"]
                payload = {"model": "served-model", "usage": {"prompt_tokens": 7, "completion_tokens": 3},
                           "choices": [{"message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop",
                                        "logprobs": {"content": [{"token": "echo", "logprob": -0.5,
                                                                  "top_logprobs": [{"token": "echo",
                                                                                    "logprob": -0.5}]}]}}]}
            else:
                payload = {"usage": {"prompt_tokens": 4, "completion_tokens": 2},
                           "choices": [{"text": " done", "finish_reason": "length",
                                        "logprobs": {"tokens": [" done"], "token_logprobs": [-0.1],
                                                     "top_logprobs": [{" done": -0.1}]}}]}
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
            pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the stdlib's 5 would make concurrent connects wait for SYN retries


@pytest.fixture()
def fake():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.bodies, srv.paths, srv.auth, srv.script = [], [], [], []
    srv.connections, srv.latency = 0, 0.0
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()


def run(lm, *requests: LMRequest, client: OpenAIServerLM | None = None):  # noqa: ANN001
    """Send ``requests`` concurrently through ``lm`` on a fresh loop; close the client's pool after."""
    async def go():
        try:
            return await asyncio.gather(*(lm.complete(r) for r in requests))
        finally:
            await (client or lm).aclose()

    return asyncio.run(go())


def chat(text: str, **kw) -> LMRequest:  # noqa: ANN003
    return LMRequest(messages=(Message(role="user", content=text),), **kw)


def test_chat_roundtrip_sends_the_openai_body(fake) -> None:
    lm = OpenAIServerLM(fake.base_url, "m", json_mode="json_object")
    (r,) = run(lm, chat("hi", max_tokens=9, stop=("\n",), json_schema={"type": "object"}, logprobs=True))
    assert r.text == "echo: hi" and r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 3
    assert r.finish_reason == "stop" and r.model == "served-model" and r.cost is None and r.latency_s > 0
    assert r.logprobs == [{"token": "echo", "logprob": -0.5, "top": {"echo": -0.5}}]
    (body,) = fake.bodies
    assert fake.paths == ["/v1/chat/completions"]
    assert body["model"] == "m" and body["max_tokens"] == 9 and body["stop"] == ["\n"]
    assert body["temperature"] == 0.0 and body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["response_format"] == {"type": "json_object", "schema": {"type": "object"}}
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and "seed" in body


def test_completion_roundtrip_and_json_schema_mode(fake) -> None:
    lm = OpenAIServerLM(fake.base_url, api_key="sk-secret")
    (r,) = run(lm, LMRequest(prompt="Q:", logprobs=True, json_schema={"type": "object"}))
    assert r.text == " done" and r.finish_reason == "length"
    assert r.logprobs == [{"token": " done", "logprob": -0.1, "top": {" done": -0.1}}]
    (body,) = fake.bodies
    assert fake.paths == ["/v1/completions"] and body["prompt"] == "Q:" and body["logprobs"] == 5
    assert body["response_format"]["type"] == "json_schema"
    assert fake.auth == ["Bearer sk-secret"]
    assert "sk-secret" not in json.dumps(lm.identity())


def test_concurrent_requests_overlap_and_reuse_connections(fake) -> None:
    fake.latency = 0.2
    lm = OpenAIServerLM(fake.base_url, max_connections=16)

    async def go():
        try:
            t0 = time.perf_counter()
            await asyncio.gather(*(lm.complete(chat(f"q{i}")) for i in range(16)))
            first = time.perf_counter() - t0
            await asyncio.gather(*(lm.complete(chat(f"again{i}")) for i in range(16)))
            return first
        finally:
            await lm.aclose()

    first = asyncio.run(go())
    assert first < 0.2 * 4  # 16 requests at 0.2 s each did not run one after another
    assert len(fake.bodies) == 32 and fake.connections <= 16  # the second round reused the pool


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (400, False),
                                                  (404, False)])
def test_http_errors_carry_the_server_message_and_retryability(fake, status, retryable) -> None:
    fake.script.append((status, {"error": {"message": f"scripted failure {status}"}}))
    with pytest.raises(LMError, match=f"HTTP {status}: scripted failure {status}") as ei:
        run(OpenAIServerLM(fake.base_url), chat("x"))
    assert ei.value.retryable is retryable


def test_retry_layer_recovers_from_a_transient_server_error(fake) -> None:
    fake.script.append((502, {"error": {"message": "warming up"}}))
    lm = OpenAIServerLM(fake.base_url)
    (r,) = run(RetryLM(lm, attempts=3, initial_wait=0.01, max_wait=0.02), chat("hi"), client=lm)
    assert r.text == "echo: hi" and len(fake.bodies) == 2


def test_malformed_answer_is_retryable(fake) -> None:
    # a 200 that is not a completion (a proxy's error page, a body cut off) is the server failing
    # to answer: another try may succeed (issue 20: it used to be final)
    fake.script.append((200, b"<html>not json</html>"))
    with pytest.raises(LMError, match="returned no completion") as ei:
        run(OpenAIServerLM(fake.base_url), chat("x"))
    assert ei.value.retryable is True and ei.value.status == 200


def test_closed_port_and_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LMError, match="could not connect") as ei:
        run(OpenAIServerLM(f"http://127.0.0.1:{port}/v1"), chat("x"))
    assert ei.value.retryable is True


def test_timeout(fake) -> None:
    fake.latency = 1.0
    with pytest.raises(LMError, match="timed out after 0.2 s"):
        run(OpenAIServerLM(fake.base_url, timeout=0.2), chat("x"))


def test_scoring_choices_fails_before_any_request(fake) -> None:
    with pytest.raises(LMError, match="scoring choices") as ei:
        run(OpenAIServerLM(fake.base_url), LMRequest(prompt="x", choices=("a", "b")))
    assert ei.value.retryable is False and fake.bodies == []


@pytest.mark.parametrize("kwargs", [{"base_url": "127.0.0.1:8080"}, {"base_url": "http://h/v1", "model": ""},
                                    {"base_url": "http://h/v1", "json_mode": "grammar"},
                                    {"base_url": "http://h/v1", "timeout": 0}])
def test_bad_settings_fail_at_construction(kwargs) -> None:
    with pytest.raises(DefinitionError):
        OpenAIServerLM(**kwargs)


def test_proxies_ignored_for_loopback_only() -> None:
    assert OpenAIServerLM("http://127.0.0.1:1/v1").trust_env is False
    assert OpenAIServerLM("http://localhost:1/v1").trust_env is False
    assert OpenAIServerLM("https://api.example.com/v1").trust_env is True


def test_a_program_runs_through_it_from_sync_code_repeatedly(fake) -> None:
    p = lg.Pipeline("echo")
    n = p.add(lg.Predict("question -> answer", format="completion"), question=p.input("question"))
    p.output(answer=n.answer)
    prog = p.build()
    lm = OpenAIServerLM(fake.base_url)
    ctx = lg.RunContext(lm=lm, cache=False)
    rows = [{"question": f"q{i}"} for i in range(6)]
    first = prog.batch_sync(rows, ctx=ctx, concurrency=3)
    second = prog.batch_sync(rows, ctx=ctx, concurrency=3)  # same thread loop: the pool is reused
    assert all(r.ok for r in first + second) and len(fake.bodies) == 12
    assert fake.connections <= 3
    lm.close()
    assert not lm._sessions


def test_pools_of_closed_loops_are_dropped_without_leak_reports(fake) -> None:
    import gc
    import warnings

    gc.collect()  # what earlier tests left unclosed is reported now, not inside the check below
    lm = OpenAIServerLM(fake.base_url)
    sessions, ours = [], []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for i in range(3):  # asyncio.run per call, never aclose(): a common way to call it
            assert asyncio.run(lm.complete(chat(f"q{i}"))).text == f"echo: q{i}"
            sessions.append(next(iter(lm._sessions.values())))
            ours += [repr(sessions[-1]), repr(sessions[-1].connector)]
        assert len(lm._sessions) == 1  # the pools of the two closed loops were dropped ...
        assert sessions[0].closed and sessions[1].closed  # ... and marked closed
        lm.close()  # the last loop is closed too
        assert not lm._sessions and sessions[2].closed
        del sessions
        gc.collect()
    # aiohttp names the object in its report; count only this test's sessions and connectors (an
    # automatic gc pass inside the block may also collect another test's garbage)
    leaks = [str(w.message) for w in seen if "Unclosed" in str(w.message)]
    assert not [m for m in leaks if any(r in m for r in ours)], leaks


def test_a_client_dropped_after_asyncio_run_leaves_no_leak_report(fake) -> None:
    """``asyncio.run(OpenAIServerLM(url).complete(...))`` in a script: the client and its pool
    die together once the loop has closed, without aiohttp's "Unclosed client session"."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert asyncio.run(OpenAIServerLM(fake.base_url).complete(chat("q"))).text == "echo: q"
        gc.collect()
    assert not [w for w in seen if "Unclosed" in str(w.message)]


def test_extra_body_fields_are_sent_and_part_of_the_identity(fake) -> None:
    """Fields in ``extra`` change the completion: they go in every body and into the identity
    (so a cache never mixes answers decoded differently); credential-like ones never do."""
    from lmgraph.cache.keys import cache_key
    from lmgraph.lm.litellm import LiteLLM

    plain = OpenAIServerLM(fake.base_url)
    parity = OpenAIServerLM(fake.base_url, extra={"repeat_penalty": 1.0, "top_k": 0})
    run(parity, LMRequest(prompt="Q:"))
    assert fake.bodies[0]["repeat_penalty"] == 1.0 and fake.bodies[0]["top_k"] == 0
    assert "extra" not in plain.identity()  # keys of clients without extra are unchanged
    req = LMRequest(prompt="Q:")
    assert cache_key(plain.identity(), req) != cache_key(parity.identity(), req)
    assert cache_key(parity.identity(), req) != cache_key(
        OpenAIServerLM(fake.base_url, extra={"repeat_penalty": 1.1, "top_k": 0}).identity(), req)
    secret = OpenAIServerLM(fake.base_url, extra={"api_key": "sk-x", "headers": {"Authorization": "Bearer sk-y"}})
    assert "sk-" not in json.dumps(secret.identity())
    a = LiteLLM("openai/local", api_base=fake.base_url, extra={"extra_body": {"repeat_penalty": 1.0}})
    b = LiteLLM("openai/local", api_base=fake.base_url)
    assert a.identity()["extra"] == {"extra_body": {"repeat_penalty": 1.0}} and "extra" not in b.identity()
    assert "sk-z" not in json.dumps(LiteLLM("openai/x", extra={"api_key": "sk-z"}).identity())


def test_a_servers_context_overflow_answer_makes_predict_drop_a_demo_without_retrying(fake) -> None:
    """llama-cpp-python's server answers HTTP 400 "This model's maximum context length is ..." for a
    prompt over n_ctx: the client marks it, no retry repeats it, and Predict asks again with the
    demo farthest from the input left out."""
    fake.script = [(400, {"error": {"message": "This model's maximum context length is 512 tokens. However, you "
                                    "requested 700 tokens (690 in the messages, 10 in the completion).",
                                    "type": "invalid_request_error"}}),
                   (200, {"model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 2},
                          "choices": [{"message": {"role": "assistant", "content": "Answer: ok"},
                                       "finish_reason": "stop"}]})]
    lm = OpenAIServerLM(fake.base_url, model="m")
    p = lg.Pipeline("qa")
    q = p.input("question")
    node = p.add(lg.Predict("question -> answer", format="chat",
                            demos=[{"question": "first demo?", "answer": "a"}, {"question": "second demo?",
                                                                                 "answer": "b"}]),
                 name="qa", question=q)
    p.output(answer=node.answer)

    async def go():
        try:
            return await p.build().run(lg.RunContext(lm=RetryLM(lm), cache=False), question="q?")
        finally:
            await lm.aclose()
    out = asyncio.run(go())
    assert out.answer == "ok" and out.trace.node("qa").meta["demos_dropped"] == 1
    assert len(fake.bodies) == 2  # the 400 was not retried
    sent = json.dumps(fake.bodies[1]["messages"])
    assert "second demo?" in sent and "first demo?" not in sent
