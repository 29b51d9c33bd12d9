"""A loopback OpenAI-compatible server that injects provider faults, deterministically by seed.

It answers ``POST /v1/chat/completions`` and ``POST /v1/completions`` with canned correct answers
(``answer(text) -> str``, where ``text`` is the prompt or the chat messages joined) and, for a
share ``fault_rate`` of requests, one of these faults instead:

* ``"429"``          -- HTTP 429 with ``retry-after-ms`` (and ``Retry-After: 1``, as OpenAI sends both)
* ``"429-date"``     -- HTTP 429 with ``Retry-After`` as an HTTP date (about now)
* ``"500"``, ``"503"`` -- a server error with an OpenAI-style error body
* ``"reset"``        -- the connection is dropped with no answer
* ``"stall"``        -- the answer comes after ``stall_s`` seconds (past the client's timeout)
* ``"truncated"``    -- a 200 whose JSON body is cut off (a complete HTTP message, unreadable JSON)
* ``"cut"``          -- a 200 announcing the full body but closing the connection half-way
* ``"content-type"`` -- a 200 ``text/html`` error page instead of JSON

Which requests fail is decided by ``sha256(seed, request body, how often this body was seen)``,
so a run sees the same faults in the same places whatever the timing (``fail_first=k`` instead
faults the first k occurrences of every body, cycling through ``faults``). ``rate_limit=N`` adds a
token bucket of N requests/s (burst N): a request over it gets 429 with ``Retry-After: 1``.
``received`` counts every request the server read (faulted, limited or answered); ``outcomes``
counts them by what happened.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

FAULTS = ("429", "429-date", "500", "503", "reset", "stall", "truncated", "cut", "content-type")


def request_text(body: dict[str, Any]) -> str:
    """The prompt of a completions body, or the chat messages joined (as lmgraph.testing does)."""
    if "prompt" in body:
        return str(body["prompt"])
    return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in body.get("messages") or ())


class FaultServer:
    """Start with ``with FaultServer(...) as srv:`` (or ``start()``/``stop()``); ``srv.base_url``
    is the API root including ``/v1``."""

    def __init__(self, answer: Callable[[str], str], *, seed: int = 0, fault_rate: float = 0.0,
                 faults: Sequence[str] = FAULTS, rate_limit: float | None = None, stall_s: float = 2.0,
                 retry_after_ms: int = 20, latency_s: float = 0.0, model: str = "fault-model",
                 fail_first: int = 0) -> None:
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
        self.answer = answer
        self.seed = seed
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.rate_limit = rate_limit
        self.stall_s = stall_s
        self.retry_after_ms = retry_after_ms
        self.latency_s = latency_s
        self.model = model
        self.fail_first = fail_first
        self.received = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._seen: collections.Counter[str] = collections.Counter()
        self._tokens = float(rate_limit or 0)
        self._refilled = time.monotonic()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self.port = 0

    # ---- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultServer:
        from aiohttp import web

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        loop = self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                app = web.Application()
                app.router.add_post("/v1/chat/completions", self._handle)
                app.router.add_post("/v1/completions", self._handle)
                self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
                loop.run_until_complete(self._runner.setup())
                loop.run_until_complete(web.SockSite(self._runner, sock, backlog=512).start())
            except BaseException as e:  # pragma: no cover - reported to start()
                errors.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fault-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self._lock:
            self.received = 0
            self.outcomes.clear()
            self._seen.clear()

    # ---- decisions
    def fault_for(self, raw: bytes) -> str | None:
        """The fault for this body's next occurrence (or None): a function of seed, body, count."""
        digest = hashlib.sha256(raw).hexdigest()
        with self._lock:
            k = self._seen[digest]
            self._seen[digest] += 1
        if k < self.fail_first and self.faults:
            return self.faults[k % len(self.faults)]
        if not self.fault_rate or not self.faults:
            return None
        h = hashlib.sha256(f"{self.seed}:{digest}:{k}".encode()).digest()
        if int.from_bytes(h[:4], "big") / 2 ** 32 >= self.fault_rate:
            return None
        return self.faults[int.from_bytes(h[4:8], "big") % len(self.faults)]

    def _over_limit(self) -> bool:
        if not self.rate_limit:
            return False
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.rate_limit), self._tokens + (now - self._refilled) * self.rate_limit)
            self._refilled = now
            if self._tokens >= 1:
                self._tokens -= 1
                return False
            return True

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    # ---- answers
    def completion(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        text = self.answer(request_text(body))
        usage = {"prompt_tokens": len(request_text(body).split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if path.endswith("/chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                      "logprobs": None}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            kind = "text_completion"
        return {"id": "cmpl-fault", "object": kind, "created": 0, "model": self.model, "choices": [choice],
                "usage": usage}

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        raw = await request.read()
        with self._lock:
            self.received += 1
        if self._over_limit():
            self._count("rate-limited")
            return web.json_response({"error": {"message": "rate limit exceeded", "type": "rate_limit"}},
                                     status=429, headers={"Retry-After": "1"})
        fault = self.fault_for(raw)
        body = json.loads(raw)
        self._count(fault or "ok")
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "429":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=429,
                                     headers={"retry-after-ms": str(self.retry_after_ms), "Retry-After": "1"})
        if fault == "429-date":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=429,
                                     headers={"Retry-After": email.utils.formatdate(time.time(), usegmt=True)})
        if fault in ("500", "503"):
            return web.json_response({"error": {"message": f"injected {fault}", "type": "server_error"}},
                                     status=int(fault))
        if fault == "reset":
            request.transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        if fault == "stall":
            await asyncio.sleep(self.stall_s)
        payload = json.dumps(self.completion(request.path, body)).encode()
        if fault == "truncated":
            return web.Response(body=payload[: len(payload) // 2], content_type="application/json")
        if fault == "content-type":
            return web.Response(text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")
        if fault == "cut":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            request.transport.abort()
            return resp
        return web.Response(body=payload, content_type="application/json")
