"""Secrets are never stored or printed.

Credentials are planted through every route -- the ``api_key`` argument, an environment variable
(named, and the default ``OPENAI_API_KEY``), an ``Authorization`` header in litellm's
``extra_headers``, user-info in the URL, a key in the query string -- against a loopback
OpenAI-compatible server that answers normally, except that a prompt containing ``FAIL`` gets a
401 whose body echoes the credentials it received (the Authorization header and the full URL).
A batch, an evaluation and a compile then write a disk cache, traces, a checkpoint, an artifact
and a report to a temporary directory while logs are captured; every file, every printed line,
every log record, every error message and the objects' ``repr``/``identity`` are searched for
each secret (and its encoded forms): 0 hits.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch litellm's price list

import lmgraph as lg
from lmgraph.cache import DiskCache
from lmgraph.errors import LmgraphError
from lmgraph.evaluation import evaluate_sync, label_accuracy
from lmgraph.lm.openai_http import OpenAIServerLM
from lmgraph.optimizers import BootstrapRandomSearch, save_artifact

from helpers import sentiment_program, sentiment_rows

pytestmark = pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")

ARG_KEY = "sk-arg-7Qx2Lm9Pz4Kd"
ENV_KEY = "sk-env-3Vb8Nw1Jc6Ht"
DEFAULT_ENV_KEY = "sk-default-5Gr0Yu2Ea7Ws"
HEADER_KEY = "sk-header-8Tn4Mk6Rf1Dq"
URL_USER, URL_PASSWORD = "alice-4Pq9Zx", "pw-2Lk7Jh5Gf3Sd"
QUERY_KEY = "qk-6Bv1Cx8Nz0Am"


# ----------------------------------------------------------------------------- the loopback server


def _answer(text: str) -> str:
    """The sentiment task's answer: the gold label when the prompt holds a demo, else positive."""
    has_demo = text.count("Sentence:") > 1
    found = re.findall(r"Sentence: (.*)", text)
    last = found[-1] if found else ""
    return " " + (("positive" if "good" in last else "negative") if has_demo else "positive")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.seen.append((auth, self.path))  # type: ignore[attr-defined]
        text = body.get("prompt") or "\n".join(str(m.get("content")) for m in body.get("messages") or ())
        if isinstance(text, list):
            text = "\n".join(map(str, text))
        if "FAIL" in text:  # an echoing 401: the credentials the server got, in the error body
            status = 401
            payload: dict[str, Any] = {"error": {"message": f"Incorrect API key provided: {auth} for {self.path}",
                                                 "type": "invalid_request_error", "code": "invalid_api_key"}}
        elif self.path.split("?")[0].endswith("/chat/completions"):
            status = 200
            payload = {"model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 1},
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": _answer(text)},
                                    "finish_reason": "stop"}]}
        else:
            status = 200
            payload = {"model": "m", "object": "text_completion", "usage": {"prompt_tokens": 5, "completion_tokens": 1},
                       "choices": [{"index": 0, "text": _answer(text), "finish_reason": "stop", "logprobs": None}]}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()  # type: ignore[attr-defined]
    srv.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"  # type: ignore[attr-defined]
    yield srv
    srv.shutdown()
    srv.server_close()


# ----------------------------------------------------------------------------- the routes


def _with_userinfo(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, f"{URL_USER}:{URL_PASSWORD}@{parts.netloc}", parts.path, "", ""))


def _litellm(url: str, **kw: Any) -> Any:
    pytest.importorskip("litellm")
    from lmgraph.lm.litellm import openai_compatible

    return openai_compatible(url, "m", json_mode="none", **kw)


def _litellm_header(url: str) -> Any:
    pytest.importorskip("litellm")
    from lmgraph.lm.litellm import LiteLLM

    return LiteLLM("openai/m", api_base=url, api_key="placeholder-key", json_mode="none",
                   extra={"extra_headers": {"Authorization": f"Bearer {HEADER_KEY}"}})


# route -> (make(url) -> lm, the secrets planted, what the server must have received)
ROUTES: dict[str, tuple[Callable[[str], Any], list[str], Callable[[str | None, str], bool]]] = {
    "http-api_key": (lambda u: OpenAIServerLM(u, "m", api_key=ARG_KEY, json_mode="none"), [ARG_KEY],
                     lambda auth, path: auth == f"Bearer {ARG_KEY}"),
    "http-api_key_env": (lambda u: OpenAIServerLM(u, "m", api_key_env="LMG_TEST_KEY", json_mode="none"), [ENV_KEY],
                         lambda auth, path: auth == f"Bearer {ENV_KEY}"),
    "http-default-env": (lambda u: OpenAIServerLM(u, "m", json_mode="none"), [DEFAULT_ENV_KEY],
                         lambda auth, path: auth == f"Bearer {DEFAULT_ENV_KEY}"),
    "http-userinfo": (lambda u: OpenAIServerLM(_with_userinfo(u), "m", json_mode="none"), [URL_USER, URL_PASSWORD],
                      lambda auth, path: auth is not None and auth.startswith("Basic ")),
    "http-query": (lambda u: OpenAIServerLM(u + f"?api_key={QUERY_KEY}", "m", json_mode="none"), [QUERY_KEY],
                   lambda auth, path: QUERY_KEY in path),
    "litellm-api_key": (lambda u: _litellm(u, api_key=ARG_KEY), [ARG_KEY],
                        lambda auth, path: auth == f"Bearer {ARG_KEY}"),
    "litellm-api_key_env": (lambda u: _litellm(u, api_key_env="LMG_TEST_KEY"), [ENV_KEY],
                            lambda auth, path: auth == f"Bearer {ENV_KEY}"),
    "litellm-default-env": (lambda u: _litellm(u), [DEFAULT_ENV_KEY],
                            lambda auth, path: auth == f"Bearer {DEFAULT_ENV_KEY}"),
    "litellm-userinfo": (lambda u: _litellm(_with_userinfo(u)), [URL_USER, URL_PASSWORD],
                         lambda auth, path: auth is not None and auth.startswith("Basic ")),
    "litellm-extra-header": (_litellm_header, [HEADER_KEY], lambda auth, path: auth == f"Bearer {HEADER_KEY}"),
}


def _forms(secret: str) -> list[str]:
    """A secret and the ways it may be written down: URL-quoted, in JSON, base64 (basic auth)."""
    forms = {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}
    if secret in (URL_PASSWORD, URL_USER):
        forms.add(base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode())
    return sorted(forms)


def _all_text(root: Path) -> dict[str, str]:
    """Every file under ``root``, as text (binary files -- the cache's SQLite -- decoded leniently)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes().decode("utf-8", "replace")
    return out


@pytest.mark.parametrize("route", list(ROUTES))
def test_no_secret_is_stored_or_printed(route: str, server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LMG_TEST_KEY", ENV_KEY)
    if route.endswith("default-env"):
        monkeypatch.setenv("OPENAI_API_KEY", DEFAULT_ENV_KEY)
    else:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG, logger="lmgraph")
    caplog.set_level(logging.DEBUG)
    make, secrets, received = ROUTES[route]
    server.seen.clear()
    lm = make(server.url)
    texts: list[str] = [repr(lm), json.dumps(lm.identity())]
    cache = DiskCache(tmp_path / "cache")
    ctx = lg.RunContext(lm=lm, cache=cache, retries=1)
    texts.append(repr(ctx))
    program = sentiment_program()

    # a batch, some rows failing with the echoing 401: outputs, errors and traces written out
    rows = sentiment_rows(6) + [{"sentence": f"FAIL film {i}", "label": "negative"} for i in range(2)]
    results = program.batch_sync([{"sentence": r["sentence"]} for r in rows], ctx=ctx, concurrency=4)
    assert sum(r.ok for r in results) == 6 and sum(not r.ok for r in results) == 2
    traces = [r.trace.to_dict() for r in results if r.trace is not None]
    (tmp_path / "traces.json").write_text(json.dumps(traces, default=str))
    texts += [repr(r) for r in results] + [f"{type(r.error).__name__}: {r.error}" for r in results if r.error]
    texts += [repr(getattr(r.error, "__cause__", None)) for r in results if r.error]

    # an evaluation
    res = evaluate_sync(program, rows, label_accuracy(), ctx=ctx)
    texts += [str(res), json.dumps(res.summary(), default=str)]

    # a compile with a checkpoint, then its artifact and report (failing rows in the valset too)
    train, val = sentiment_rows(12), [*sentiment_rows(8), {"sentence": "FAIL film x", "label": "negative"}]
    try:
        new, rep = BootstrapRandomSearch(2, num_candidates=2, checkpoint=tmp_path / "ckpt.jsonl").optimize(
            program, train, label_accuracy(), valset=val, ctx=ctx, seed=0)
    except LmgraphError as e:  # a compile may refuse to go on with provider failures: its message counts too
        texts.append(f"{type(e).__name__}: {e}")
    else:
        save_artifact(tmp_path / "artifact.json", new, rep)
        (tmp_path / "report.json").write_text(json.dumps(rep.to_dict(), default=str))
        (tmp_path / "report.txt").write_text(rep.table())
    cache.close()

    # the secrets really went out (so the test planted them), and then went nowhere else
    assert server.seen and all(received(auth, path) for auth, path in server.seen), server.seen[:2]
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text] + [r.getMessage() for r in caplog.records]
    files = _all_text(tmp_path)
    assert {"traces.json"} <= files.keys() and any(k.startswith("cache") for k in files)
    hits = [(where, form) for form in (f for s in secrets for f in _forms(s))
            for where, text in [*files.items(), *(("output", t) for t in texts)] if form in text]
    assert hits == [], hits
