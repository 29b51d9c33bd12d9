"""The suite's record of model answers, and the counting proxy in front of the servers.

* :class:`Journal` -- a unit's checkpoint (every answer it got), so a killed unit resumes where
  it stopped with the counts of an uninterrupted run;
* :class:`SharedAnswers` -- test-set answers shared between the units of one run;
* :class:`JournalLM` -- the journal in front of an in-process model;
* :class:`CountingProxy` -- the HTTP proxy on 127.0.0.1 that balances requests over the
  llama.cpp servers (prefix-affinity routing), counts requests and their tokens, and answers
  journaled and shared requests.

Used by ``suite.py`` (benchmarks/ is on ``sys.path``; not a package).
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- unit journal

class Journal:
    """A unit's checkpoint: every model answer it got, so a killed unit resumes where it stopped.

    Some units run longer than one machine session (DSPy's random search on Banking77 is hours),
    and a unit's counts are only exact if it runs to the end. With greedy decoding on the same
    server and model an answer is a function of the request, so on a rerun the journaled
    requests are answered from here (in recorded order per identical request) and still counted
    as requests with their tokens, as in an uninterrupted run; the unit then goes on where it
    was killed. Each segment (one run of the unit) also notes how long each phase ("compile",
    "test") ran, so the published wall times add up the killed segments' time
    (:meth:`prior_s`; the resumed segment's replay time is included in its own measurement).

    File format (JSON lines): ``{"segment": n}``, ``{"phase": p, "seg": n}``,
    ``{"phase_end": p, "seg": n, "t": s}`` and answers ``{"k", "s", "ct", "d", "seg", "ph", "t"}``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._answers: dict[str, collections.deque[tuple[int, str, str]]] = {}
        ends: dict[tuple[int, str], float] = {}
        last: dict[tuple[int, str], float] = {}
        segments = 0
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a kill
                if "segment" in e:
                    segments = max(segments, int(e["segment"]))
                elif "phase_end" in e:
                    ends[(e["seg"], e["phase_end"])] = float(e["t"])
                elif "k" in e:
                    self._answers.setdefault(e["k"], collections.deque()).append((e["s"], e["ct"], e["d"]))
                    if e.get("ph"):
                        key = (e["seg"], e["ph"])
                        last[key] = max(last.get(key, 0.0), float(e["t"]))
        self.journaled = sum(len(q) for q in self._answers.values())
        self._prior: dict[str, float] = {}
        for (_seg, ph), t in {**last, **ends}.items():  # a finished phase counts whole
            self._prior[ph] = self._prior.get(ph, 0.0) + t
        self.segments_before = segments
        self.segment = segments + 1
        self.replayed = 0
        self.shared = 0  # test answers taken from SharedAnswers in this run
        self._phase: str | None = None
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")
        self._write({"segment": self.segment, "at": round(time.time(), 1)})

    @staticmethod
    def key(*parts: str | bytes | None) -> str:
        h = hashlib.sha256()
        for p in parts:
            b = p.encode() if isinstance(p, str) else (p or b"")
            h.update(len(b).to_bytes(8, "big") + b)
        return h.hexdigest()

    def _write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if self._file.closed:
                return
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()

    def phase(self, name: str) -> None:
        """A phase of the unit starts now (answers are timed from here)."""
        self._phase, self._t0 = name, time.perf_counter()
        self._write({"phase": name, "seg": self.segment})

    @property
    def current_phase(self) -> str | None:
        return self._phase

    def phase_end(self, name: str, wall_s: float) -> None:
        self._write({"phase_end": name, "seg": self.segment, "t": round(wall_s, 3)})
        self._phase = None

    def prior_s(self, phase: str) -> float:
        """Seconds the killed segments spent in ``phase`` (up to their last journaled answer)."""
        return self._prior.get(phase, 0.0)

    def take(self, key: str) -> tuple[int, str, str] | None:
        """The next journaled answer to this request, or None (then it goes to the model)."""
        with self._lock:
            q = self._answers.get(key)
            if not q:
                return None
            self.replayed += 1
            return q.popleft()

    def put(self, key: str, status: int, ctype: str, data: str) -> None:
        self._write({"k": key, "s": status, "ct": ctype, "d": data, "seg": self.segment, "ph": self._phase,
                     "t": round(time.perf_counter() - self._t0, 3)})

    def summary(self) -> dict[str, Any] | None:
        """What a resumed unit's record says about it; None for a unit run in one go."""
        if not self.segments_before:
            return None
        return {"segments": self.segment, "replayed_requests": self.replayed,
                "prior_compile_s": round(self.prior_s("compile"), 1), "prior_test_s": round(self.prior_s("test"), 1)}

    def close(self, *, delete: bool = False) -> None:
        with self._lock:
            self._file.close()
        if delete:
            self.path.unlink(missing_ok=True)


class SharedAnswers:
    """Test-set answers shared between the units of one run.

    Systems that end with the same program (every lmgraph optimizer that accepted nothing
    evaluates the zero-shot program) send the same test requests, and with greedy decoding on
    the same server an answer is a function of the request; the proxy answers such a repeat from
    here and counts it as a request with its tokens. Only the test phase is shared: compile
    calls, requests and compile wall time are each unit's own. A unit's test wall time then is
    not a measurement of its own; its record says how many test answers were shared.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._answers: dict[str, tuple[int, str, str]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    e = json.loads(line)
                    self._answers[e["k"]] = (e["s"], e["ct"], e["d"])
                except (ValueError, KeyError):
                    continue  # a torn last line from a kill
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[int, str, str] | None:
        return self._answers.get(key)

    def put(self, key: str, status: int, ctype: str, data: str) -> None:
        with self._lock:
            if key in self._answers:
                return
            self._answers[key] = (status, ctype, data)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"k": key, "s": status, "ct": ctype, "d": data}, ensure_ascii=False) + "\n")


class JournalLM:
    """An lmgraph LM that journals its inner LM's answers (for the in-process units)."""

    def __init__(self, inner: Any, journal: Journal) -> None:
        from lmgraph.cache.keys import KeyMaker

        self.inner = inner
        self.journal = journal
        self._key = KeyMaker()

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def __getattr__(self, name: str) -> Any:  # preferred_format and the like
        return getattr(self.inner, name)

    async def complete(self, request: Any) -> Any:
        from lmgraph.lm.base import LMResponse

        key = self._key(self.inner.identity(), request)
        hit = self.journal.take(key)
        if hit is not None:
            return LMResponse.from_dict(json.loads(hit[2]))
        resp = await self.inner.complete(request)
        self.journal.put(key, 200, "application/json", json.dumps(resp.to_dict(), ensure_ascii=False))
        return resp


# --------------------------------------------------------------------------- counting proxy

# How the proxy picks a server (see CountingProxy); records of units routed so carry it.
ROUTING = "prefix-affinity + LRU fallback"


def common_prefix_len(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (a binary search of C-speed compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server on loopback that does not print a traceback when a client hangs
    up mid-reply (a stopped or killed run closes its connections; that is not an error)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of one or more OpenAI-compatible servers.

    One request per upstream at a time (a llama.cpp server decodes one request at a time
    anyway). The proxy counts requests and the ``usage`` tokens of the responses: the
    framework-neutral count of what reached the model.

    Routing (``affinity_wait_s`` > 0): a llama.cpp server reuses the KV cache of the longest
    prefix its previous prompt shares with the next one, so a request goes to the upstream
    whose previous request body shares the longest prefix with it; if that upstream is busy, a
    free one whose prefix is within ``slack`` bytes of it is taken, else the request waits for
    it up to ``affinity_wait_s`` seconds (then takes any free one). Without it, a framework that
    alternates two prompt layouts (DSPy's ChatAdapter and its JSONAdapter fallback) re-reads
    its whole ~2,000-token prompt on every request. Routing never changes which requests are
    sent, only where and how fast they are answered.

    Longest prefix alone keeps two alternating layouts on one server once they are there (each
    shares the layouts' common head with the other's last prompt, and an idle server shares
    nothing), so every request re-reads from where the layouts part. Hence: when a recent
    request (the last ``history``) shares more than ``slack`` bytes more with this one than
    the chosen server's prompt does, this request's own layout was evicted, and it goes to
    the free server used least recently, where it evicts the coldest prompt rather than the
    other layout's.
    """

    def __init__(self, upstreams: Sequence[str], *, affinity_wait_s: float = 0.0, slack: int = 1024,
                 history: int = 8) -> None:
        self.upstreams = list(upstreams)
        self.affinity_wait_s = affinity_wait_s
        self.slack = slack
        self._cv = threading.Condition()
        self._busy = {u: False for u in self.upstreams}
        self._last = {u: b"" for u in self.upstreams}
        self._used = {u: 0.0 for u in self.upstreams}  # when each was last taken (monotonic clock)
        self._recent: collections.deque[bytes] = collections.deque(maxlen=history)
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "errors": 0}
        self.journal: Journal | None = None  # the running unit's (answers replayed and recorded)
        self.shared: SharedAnswers | None = None  # test answers shared between units
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _forward(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                status, headers, data = proxy.forward(method, self.path, body,
                                                      self.headers.get("Content-Type"))
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        self._server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def forward(self, method: str, path: str, body: bytes | None,
                ctype: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        journal = self.journal if method == "POST" else None
        key = Journal.key(method, path, body) if journal is not None else ""
        hit = journal.take(key) if journal is not None else None
        testing = journal is not None and self.shared is not None and journal.current_phase == "test"
        if hit is None and testing:
            hit = self.shared.get(key)  # type: ignore[union-attr]
            if hit is not None:
                journal.shared += 1  # type: ignore[union-attr]
        if hit is not None:
            status, rtype, text = hit
            data = text.encode("utf-8")
            self._count(status, data)
            return status, [("Content-Type", rtype)], data
        upstream = self._acquire(body or b"")
        try:
            u = urllib.parse.urlsplit(upstream)
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
            try:
                conn.request(method, path, body=body, headers={"Content-Type": ctype or "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                status, headers = resp.status, resp.getheaders()
            finally:
                conn.close()
        finally:
            self._release(upstream)
        if method == "POST":
            self._count(status, data)
            if journal is not None and status == 200:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    pass  # not journaled: asked again on a resume
                else:
                    rtype = next((v for k, v in headers if k.lower() == "content-type"), "application/json")
                    journal.put(key, status, rtype, text)
                    if testing:
                        self.shared.put(key, status, rtype, text)  # type: ignore[union-attr]
        return status, headers, data

    def _acquire(self, body: bytes) -> str:
        """Take an upstream for ``body`` (see the class docstring); it is busy until released."""
        with self._cv:
            deadline = time.monotonic() + self.affinity_wait_s
            while True:
                free = [u for u in self.upstreams if not self._busy[u]]
                choice = None
                if self.affinity_wait_s > 0 and body:
                    cp = {u: common_prefix_len(self._last[u], body) for u in self.upstreams}
                    best = max(self.upstreams, key=cp.__getitem__)
                    near = [u for u in free if cp[u] >= cp[best] - self.slack]
                    if near:
                        choice = max(near, key=cp.__getitem__)
                    elif free and time.monotonic() >= deadline:
                        choice = max(free, key=cp.__getitem__)
                    if choice is not None:
                        seen = max((common_prefix_len(b, body) for b in self._recent), default=0)
                        if seen > cp[choice] + self.slack:  # its layout was evicted: evict the coldest
                            choice = min(free, key=self._used.__getitem__)
                elif free:
                    choice = free[0]
                if choice is not None:
                    self._busy[choice] = True
                    self._used[choice] = time.monotonic()
                    if body:  # what the server's KV cache now holds (a GET leaves it as it was)
                        self._last[choice] = body
                        self._recent.append(body)
                    return choice
                left = deadline - time.monotonic()
                self._cv.wait(timeout=left if free and left > 0 else None)

    def _release(self, upstream: str) -> None:
        with self._cv:
            self._busy[upstream] = False
            self._cv.notify_all()

    def _count(self, status: int, data: bytes) -> None:
        usage: dict[str, Any] = {}
        try:
            usage = json.loads(data).get("usage") or {}
        except (ValueError, AttributeError):
            pass
        with self._lock:
            self.counts["requests"] += 1
            self.counts["errors"] += int(status >= 400)
            self.counts["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            self.counts["completion_tokens"] += int(usage.get("completion_tokens") or 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: int(after[k]) - int(before.get(k, 0)) for k in after}
