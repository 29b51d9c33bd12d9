"""A lean client for OpenAI-compatible servers (llama.cpp server, vLLM, Ollama, LM Studio).

:class:`OpenAIServerLM` posts ``/chat/completions`` and ``/completions`` itself over a pooled
:mod:`aiohttp` session (keep-alive connections, one session per event loop). It does what
:class:`~lmgraph.lm.litellm.LiteLLM` does for such a server at a fraction of the CPU per call
(litellm spends milliseconds of Python per request on provider mapping, logging and pricing),
which is what bounds throughput at high concurrency against a fast local server
(``benchmarks/scheduling.py`` measures both). Use litellm for hosted providers; use this for
servers that speak the OpenAI API.

``aiohttp`` is an optional dependency (``pip install 'lmgraph[http]'``), imported on the first
call. Every failure surfaces as :class:`~lmgraph.errors.LMError`; errors that retrying cannot
fix (4xx other than 408/409/429, a malformed answer) carry ``retryable = False``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
import urllib.parse
import weakref
from typing import Any

from ..cache.keys import strip_credentials
from ..errors import DefinitionError, LMError
from .base import LMRequest, LMResponse
from .llamacpp import openai_response

__all__ = ["OpenAIServerLM", "HTTP_INSTALL_COMMAND"]

HTTP_INSTALL_COMMAND = "pip install 'aiohttp>=3.9'  (or: pip install 'lmgraph[http]')"
_JSON_MODES = frozenset({"json_schema", "json_object"})
_RETRYABLE_STATUS = frozenset({408, 409, 429})


def _import_aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError as exc:
        raise DefinitionError("OpenAIServerLM needs the optional package aiohttp, which is not installed.",
                              fix=f"run `{HTTP_INSTALL_COMMAND}`.") from exc
    return aiohttp


def _is_loopback(host: str | None) -> bool:
    if host in ("localhost", None):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class OpenAIServerLM:
    """A model served by an OpenAI-compatible HTTP server.

    ``base_url`` is the API root including ``/v1`` (e.g. ``LlamaServer().base_url``,
    ``http://127.0.0.1:8000/v1`` for vLLM, ``http://127.0.0.1:11434/v1`` for Ollama); ``model``
    the name the server expects. ``json_mode`` says how ``request.json_schema`` is sent:
    ``"json_schema"`` (OpenAI structured outputs; vLLM, Ollama) or ``"json_object"``
    (``{"type": "json_object", "schema": ...}``, which llama-cpp-python's server needs).
    ``max_connections`` bounds the keep-alive pool (per event loop); ``timeout`` is the whole
    request's limit in seconds. Proxies from the environment are ignored for loopback servers
    (``trust_env=None``) and used otherwise. ``extra`` is merged into every request body.
    """

    def __init__(self, base_url: str, model: str = "local", *, api_key: str | None = None,
                 timeout: float = 60.0, json_mode: str = "json_schema", top_logprobs: int = 5,
                 max_connections: int = 256, trust_env: bool | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        parsed = urllib.parse.urlsplit(base_url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise DefinitionError(f"OpenAIServerLM needs an http(s) base URL, got {base_url!r}.",
                                  fix="pass the API root including /v1, e.g. 'http://127.0.0.1:8080/v1'.")
        if not model or not isinstance(model, str):
            raise DefinitionError(f"OpenAIServerLM needs a model name, got {model!r}.",
                                  fix="pass the name the server serves (llama.cpp's server accepts any).")
        if json_mode not in _JSON_MODES:
            raise DefinitionError(f"json_mode must be one of {sorted(_JSON_MODES)}, got {json_mode!r}.",
                                  fix="use 'json_schema' (OpenAI, vLLM, Ollama) or 'json_object' "
                                      "(llama-cpp-python's server).")
        if timeout <= 0 or max_connections < 1:
            raise DefinitionError("timeout must be > 0 and max_connections >= 1",
                                  fix="e.g. timeout=60.0, max_connections=256.")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout = float(timeout)
        self.json_mode = json_mode
        self.top_logprobs = int(top_logprobs)
        self.max_connections = int(max_connections)
        self.trust_env = (not _is_loopback(parsed.hostname)) if trust_env is None else bool(trust_env)
        self.extra = dict(extra or {})
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        # Never the API key: identities end up in cache keys, traces and artifacts. The same
        # fields as LiteLLM's openai_compatible() would give a different backend name on purpose:
        # the two clients may send slightly different bodies.
        ident: dict[str, Any] = {"backend": "openai-http", "model": self.model, "api_base": self.base_url}
        if self.extra:  # body fields such as sampling settings change the completion
            ident["extra"] = strip_credentials(self.extra)
        return ident

    def __repr__(self) -> str:
        return f"OpenAIServerLM({self.base_url!r}, model={self.model!r})"

    # ---- sessions: one per event loop (an aiohttp session is bound to the loop that made it)
    def _session(self) -> Any:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            aiohttp = _import_aiohttp()
            with self._lock:
                self._drop_dead_loops()
                session = self._sessions.get(loop)
                if session is None or session.closed:
                    connector = aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300)
                    session = aiohttp.ClientSession(
                        connector=connector, trust_env=self.trust_env, headers=self._headers,
                        timeout=aiohttp.ClientTimeout(total=self.timeout),
                        json_serialize=json.dumps)
                    self._sessions[loop] = session
                    _register(self)
        return session

    async def aclose(self) -> None:
        """Close this event loop's connection pool (it is reopened on the next call)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - called outside a loop
            return
        session = self._sessions.pop(loop, None)
        if session is not None and not session.closed:
            await session.close()

    def close(self) -> None:
        """Close the pools of loops that are not running (sync code, interpreter exit)."""
        for loop, session in list(self._sessions.items()):
            if session.closed:
                self._sessions.pop(loop, None)
            elif loop.is_closed():
                self._sessions.pop(loop, None)
                _discard(session)
            elif not loop.is_running():
                loop.run_until_complete(session.close())
                self._sessions.pop(loop, None)

    def __del__(self) -> None:
        # The client is going away with its pools (``asyncio.run(OpenAIServerLM(url).complete(r))``):
        # mark those of closed loops closed, or aiohttp reports each as a leak when it is freed.
        try:
            self._drop_dead_loops()
        except Exception:  # pragma: no cover - best effort, e.g. at interpreter exit
            pass

    def _drop_dead_loops(self) -> None:
        """Forget the pools of event loops that have closed (``asyncio.run`` per call): their
        sockets died with the loop; marking them closed keeps aiohttp from reporting a leak."""
        for loop, session in list(self._sessions.items()):
            if loop.is_closed():
                self._sessions.pop(loop, None)
                _discard(session)

    # ---- requests
    def _body(self, request: LMRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "temperature": float(request.temperature),
                                "max_tokens": int(request.max_tokens), "top_p": float(request.top_p)}
        if request.sampling_seed is not None:
            body["seed"] = request.sampling_seed
        if request.stop:
            body["stop"] = list(request.stop)
        if request.json_schema is not None:
            if self.json_mode == "json_schema":
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "output", "schema": request.json_schema}}
            else:
                body["response_format"] = {"type": "json_object", "schema": request.json_schema}
        if request.messages is not None:
            body["messages"] = [m.to_dict() for m in request.messages]
            if request.logprobs:
                body.update(logprobs=True, top_logprobs=self.top_logprobs)
            path = "/chat/completions"
        else:
            body["prompt"] = request.prompt
            if request.logprobs:
                body["logprobs"] = self.top_logprobs
            path = "/completions"
        body.update(self.extra)
        return self.base_url + path, body

    def _error(self, msg: str, retryable: bool) -> LMError:
        err = LMError(msg)
        err.retryable = retryable  # type: ignore[attr-defined]
        return err

    async def complete(self, request: LMRequest) -> LMResponse:
        if request.choices is not None:
            raise self._error(
                f"{self.model} at {self.base_url}: scoring choices (decode='score') needs the "
                "log-probabilities of given continuation tokens, which an OpenAI-compatible server does "
                "not return. Use the in-process llama.cpp backend (LlamaCppLM) for scoring, or "
                "decode='generate' with this model.", retryable=False)
        url, body = self._body(request)
        session = self._session()
        aiohttp = _import_aiohttp()
        start = time.perf_counter()
        try:
            async with session.post(url, data=json.dumps(body, ensure_ascii=False).encode("utf-8")) as resp:
                status = resp.status
                raw = await resp.read()
        except asyncio.TimeoutError:
            raise self._error(f"{self.model} at {self.base_url} timed out after {self.timeout:g} s.", True) from None
        except aiohttp.ClientConnectorError as exc:
            raise self._error(f"could not connect to {self.base_url} (is the server running?): {exc}", True) from exc
        except aiohttp.ClientError as exc:
            raise self._error(f"{self.model} at {self.base_url} failed ({type(exc).__name__}): {exc}", True) from exc
        latency = time.perf_counter() - start
        if status >= 400:
            raise self._error(f"{self.model} at {url} answered HTTP {status}: {_error_text(raw)}",
                              status in _RETRYABLE_STATUS or status >= 500)
        try:
            data = json.loads(raw)
            # cost stays None: a self-hosted server has no price
            return openai_response(data, request, model=str(data.get("model") or self.model), latency_s=latency)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise self._error(f"{self.model} at {url} returned no completion: {raw[:200]!r}", False) from None


def _discard(session: Any) -> None:
    """Mark a pool whose event loop has closed as closed, without that loop (no coroutine can
    run on it any more). aiohttp has no public call for this; where its internals differ, the
    worst outcome is its "Unclosed client session" notice."""
    connector = session.connector
    close_now = getattr(connector, "_close", None)
    if callable(close_now):
        try:
            close_now()  # marks the connector closed; on a closed loop it touches no transport
        except Exception:  # pragma: no cover - other aiohttp versions
            return
    session.detach()


def _error_text(raw: bytes) -> str:
    """The server's error message (OpenAI style ``{"error": {"message": ...}}``), else the body."""
    try:
        data = json.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else err
        return str(msg or data)[:500]
    except ValueError:
        return raw[:500].decode("utf-8", "replace")


# Sessions still open at interpreter exit are closed where their loop allows (no
# "Unclosed client session" noise from aiohttp's finalizers).
_LIVE: weakref.WeakSet[OpenAIServerLM] = weakref.WeakSet()
_REGISTERED = False


def _register(lm: OpenAIServerLM) -> None:
    global _REGISTERED
    _LIVE.add(lm)
    if not _REGISTERED:
        import atexit

        atexit.register(_close_all)
        _REGISTERED = True


def _close_all() -> None:
    for lm in list(_LIVE):
        try:
            lm.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass
