"""A lean client for OpenAI-compatible servers (llama.cpp server, vLLM, Ollama, LM Studio).

:class:`OpenAIServerLM` posts ``/chat/completions`` and ``/completions`` itself over a pooled
:mod:`aiohttp` session (keep-alive connections, one session per event loop). It does what
:class:`~lmgraph.lm.litellm.LiteLLM` does for such a server at a fraction of the CPU per call
(litellm spends milliseconds of Python per request on provider mapping, logging and pricing),
which is what bounds throughput at high concurrency against a fast local server
(``benchmarks/scheduling.py`` measures both). Use litellm for hosted providers; use this for
servers that speak the OpenAI API.

``aiohttp`` is an optional dependency (``pip install 'lmgraph[http]'``), imported on the first
call. Every failure surfaces as :class:`~lmgraph.errors.LMError` with the HTTP ``status`` and the
wait the server asked for (``retry_after_s``, from ``Retry-After`` or ``retry-after-ms``); errors
that retrying cannot fix (4xx other than 408/409/429) carry ``retryable = False``, while
timeouts, connection errors, 5xx and a 200 whose body is cut off or not a completion are
retryable. Requests to one server are paced by its process-wide
:class:`~lmgraph.lm.faults.AdaptiveRateLimiter` (AIMD on 429s; ``rate_limit=False`` opts out).

:meth:`OpenAIServerLM.stream` sends ``"stream": true`` and reads the server-sent events
(``data: {...}`` lines up to ``data: [DONE]``), yielding each content delta. Usage comes from the
last event (``stream_options.include_usage``); a server that reports none (llama-cpp-python's)
gets its completion tokens counted as the content events it sent, and no prompt tokens. A
request with a JSON schema streams once the server's JSON mode is known (until then, and for
``logprobs``/``choices``, it is answered by ``complete``, all at once).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
import urllib.parse
import weakref
from collections.abc import AsyncIterator
from typing import Any

from ..cache.keys import strip_credentials
from ..errors import DefinitionError, LMError
from .base import LMRequest, LMResponse, Usage
from .capabilities import JsonModeNegotiator, NegotiatedJsonMode, mark_json_mode_rejection
from .credentials import Secrets, extra_secrets, redact_url, resolve_api_key, split_userinfo, url_secrets
from .faults import count_request, endpoint_limiter, mark_context_overflow, retry_after, retryable_status
from .openai_compat import (
    STREAM_FIELDS,
    MalformedResponse,
    endpoint_path,
    error_text,
    field,
    parse_completion,
    parse_usage,
    request_body,
    schema_in_prompt,
    stream_delta,
)

__all__ = ["HTTP_INSTALL_COMMAND", "OpenAIServerLM"]

HTTP_INSTALL_COMMAND = "pip install 'aiohttp>=3.9'  (or: pip install 'lmgraph[http]')"


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


class OpenAIServerLM(NegotiatedJsonMode):
    """A model served by an OpenAI-compatible HTTP server.

    ``base_url`` is the API root including ``/v1`` (e.g. ``LlamaServer().base_url``,
    ``http://127.0.0.1:8000/v1`` for vLLM, ``http://127.0.0.1:11434/v1`` for Ollama); ``model``
    the name the server expects. ``json_mode`` says how ``request.json_schema`` is sent:
    ``"auto"`` (default) negotiates it with the server (``"json_schema"`` first, then
    ``"json_object"``, then ``"none"``; see :mod:`lmgraph.lm.capabilities`), or one of
    ``"json_schema"`` (OpenAI structured outputs; vLLM, Ollama), ``"json_object"``
    (``{"type": "json_object", "schema": ...}``, which llama-cpp-python's server needs) and
    ``"none"`` (the schema in the prompt) skips negotiation.

    The API key is ``api_key``, else the environment variable ``api_key_env`` names, else
    ``$OPENAI_API_KEY`` if set, sent as ``Authorization: Bearer``; user-info in the URL
    (``http://user:pass@host/v1``) is sent as basic authentication and key-like query parameters
    (``?api_key=...``) go with every request. No key appears in ``repr()``, ``identity()``,
    ``base_url`` or an error message.

    ``max_connections`` bounds the keep-alive pool (per event loop); ``timeout`` is the whole
    request's limit in seconds. Proxies from the environment are ignored for loopback servers
    (``trust_env=None``) and used otherwise. ``extra`` is merged into every request body.
    ``rate_limit=True`` paces requests by the server's 429s (one limiter per server, shared by
    every client in the process). Each request sent is counted for the budget's ``requests``.
    """

    reports_requests = True  # counts each HTTP request for the budget itself (lmgraph.lm.faults)

    def __init__(self, base_url: str, model: str = "local", *, api_key: str | None = None,
                 api_key_env: str | None = None, timeout: float = 60.0, json_mode: str = "auto",
                 top_logprobs: int = 5, max_connections: int = 256, trust_env: bool | None = None,
                 extra: dict[str, Any] | None = None, rate_limit: bool = True) -> None:
        try:
            parsed = urllib.parse.urlsplit(base_url or "") if isinstance(base_url, str) else None
        except ValueError:  # e.g. an unclosed IPv6 bracket
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            shown = redact_url(base_url) if isinstance(base_url, str) else base_url
            raise DefinitionError(f"OpenAIServerLM needs an http(s) base URL, got {shown!r}.",
                                  fix="pass the API root including /v1, e.g. 'http://127.0.0.1:8080/v1'.")
        if not model or not isinstance(model, str):
            raise DefinitionError(f"OpenAIServerLM needs a model name, got {model!r}.",
                                  fix="pass the name the server serves (llama.cpp's server accepts any).")
        if timeout <= 0 or max_connections < 1:
            raise DefinitionError("timeout must be > 0 and max_connections >= 1",
                                  fix="e.g. timeout=60.0, max_connections=256.")
        userinfo = parsed.netloc.rpartition("@")[0] if "@" in parsed.netloc else ""
        if userinfo and (api_key is not None or api_key_env is not None):
            raise DefinitionError("OpenAIServerLM got credentials twice: in the URL (user:password@) "
                                  "and as api_key/api_key_env.",
                                  fix="pass the key once: api_key= (sent as a bearer token), or in the URL.")
        key = None if userinfo else resolve_api_key(api_key, api_key_env, owner="OpenAIServerLM")
        host = parsed.netloc.rpartition("@")[2]
        # where requests go: no user-info (sent as a header), the query after each path
        self._root = urllib.parse.urlunsplit((parsed.scheme, host, parsed.path.rstrip("/"), "", ""))
        self._query = ("?" + parsed.query) if parsed.query else ""
        self.base_url = redact_url(base_url.rstrip("/"))  # what repr, identity and errors show
        self._secrets = Secrets([key, *url_secrets(base_url), *extra_secrets(extra)])
        self.model = model
        self.timeout = float(timeout)
        self._json = JsonModeNegotiator(json_mode, endpoint=self.base_url, model=model,
                                        owner="OpenAIServerLM")
        self.top_logprobs = int(top_logprobs)
        self.max_connections = int(max_connections)
        self.trust_env = (not _is_loopback(parsed.hostname)) if trust_env is None else bool(trust_env)
        self.extra = dict(extra or {})
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        elif userinfo:
            basic = split_userinfo(base_url)[1]
            self._headers["Authorization"] = basic  # type: ignore[assignment]
            self._secrets.add(basic.split()[1])  # type: ignore[union-attr]
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.rate_limiter = endpoint_limiter(self._root) if rate_limit else None

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
    def _body(self, request: LMRequest, mode: str | None = None) -> tuple[str, dict[str, Any]]:
        """The URL and body of ``request`` (already in JSON mode ``mode``; see :mod:`.openai_compat`)."""
        if request.json_schema is not None:
            mode = mode or self._json.candidates(request.mode)[0]
        body = request_body(request, model=self.model, mode=mode, top_logprobs=self.top_logprobs, extra=self.extra)
        return self._root + endpoint_path(request) + self._query, body

    def _error(self, msg: str, retryable: bool, *, status: int | None = None,
               retry_after_s: float | None = None) -> LMError:
        return LMError(self._secrets.scrub(msg), retryable=retryable, status=status, retry_after_s=retry_after_s)

    async def complete(self, request: LMRequest) -> LMResponse:
        if request.choices is not None:
            raise self._error(
                f"{self.model} at {self.base_url}: scoring choices (decode='score') needs the "
                "log-probabilities of given continuation tokens, which an OpenAI-compatible server does "
                "not return. Use the in-process llama.cpp backend (LlamaCppLM) for scoring, or "
                "decode='generate' with this model.", retryable=False)
        return await self._json.complete(request, self._post)

    async def _post(self, request: LMRequest, mode: str | None) -> LMResponse:
        url, body = self._body(request, mode)
        shown = redact_url(url)
        session = self._session()
        aiohttp = _import_aiohttp()
        limiter = self.rate_limiter
        sent = await limiter.acquire() if limiter is not None else 0.0
        start = time.perf_counter()
        counted = False
        try:
            async with session.post(url, data=json.dumps(body, ensure_ascii=False).encode("utf-8")) as resp:
                counted = True
                count_request()  # the server has the request (it answered, at least with headers)
                status = resp.status
                headers = resp.headers
                ctype = resp.content_type
                raw = await resp.read()
        except asyncio.TimeoutError:
            if not counted:
                count_request()  # sent, not answered in time
            raise self._error(f"{self.model} at {self.base_url} timed out after {self.timeout:g} s.", True) from None
        except aiohttp.ClientConnectorError as exc:  # never reached the server: not a request
            # the cause goes along unless the URL held a secret (its text would show it)
            raise self._error(f"could not connect to {self.base_url} (is the server running?): {exc}",
                              True) from (None if self._secrets else exc)
        except aiohttp.ClientError as exc:  # reset, disconnected, a body cut off mid-way
            if not counted:
                count_request()
            raise self._error(f"{self.model} at {self.base_url} failed ({type(exc).__name__}): {exc}",
                              True) from (None if self._secrets else exc)
        latency = time.perf_counter() - start
        if status >= 400:
            text = error_text(raw)
            wait = retry_after(headers)
            if status == 429 and limiter is not None:
                limiter.throttle(sent, wait)
            err = self._error(f"{self.model} at {shown} answered HTTP {status}: {text}",
                              retryable_status(status), status=status, retry_after_s=wait)
            raise mark_json_mode_rejection(mark_context_overflow(err, text), status, text, mode)
        if limiter is not None:
            limiter.success()
        try:
            # cost stays None: a self-hosted server has no price
            return parse_completion(json.loads(raw), request, model=self.model, reported_model=True,
                                    latency_s=latency)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):  # MalformedResponse is a ValueError
            # a 200 that is cut off or not a completion (an HTML error page from a proxy, a
            # reset mid-body): the server failed to answer, another try may well succeed
            raise self._error(f"{self.model} at {shown} returned no completion (HTTP {status}, "
                              f"{ctype or 'no content type'}, {len(raw)} bytes): {raw[:200]!r}", True,
                              status=status) from None


    async def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """Content deltas of a ``"stream": true`` request, then the final response (see the module
        docstring); failures as :meth:`complete` raises them."""
        mode = self._json.mode(request.mode) if request.json_schema is not None else None
        if not self._streamable(request, mode):
            async for item in self._complete_as_stream(request):
                yield item
            return
        url, body = self._body(schema_in_prompt(request) if mode == "none" else request, mode)
        body.update(STREAM_FIELDS)
        shown = redact_url(url)
        session = self._session()
        aiohttp = _import_aiohttp()
        limiter = self.rate_limiter
        sent = await limiter.acquire() if limiter is not None else 0.0
        start = time.perf_counter()
        counted = False
        parts: list[str] = []
        usage: dict[str, Any] | None = None
        finish: str | None = None
        model = self.model
        try:
            async with session.post(url, data=json.dumps(body, ensure_ascii=False).encode("utf-8")) as resp:
                counted = True
                count_request()
                if resp.status >= 400:
                    text = error_text(await resp.read())
                    wait = retry_after(resp.headers)
                    if resp.status == 429 and limiter is not None:
                        limiter.throttle(sent, wait)
                    raise mark_json_mode_rejection(mark_context_overflow(
                        self._error(f"{self.model} at {shown} answered HTTP {resp.status}: {text}",
                                    retryable_status(resp.status), status=resp.status, retry_after_s=wait),
                        text), resp.status, text, mode)
                if limiter is not None:
                    limiter.success()
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise self._error(f"{self.model} at {shown} sent an event that is not JSON: {data[:200]!r}",
                                          True) from None
                    if isinstance(event.get("error"), (dict, str)):
                        raise self._error(f"{self.model} at {shown} failed mid-stream: {error_text(data)}", True)
                    usage = event.get("usage") or usage
                    model = str(event.get("model") or model)
                    for choice in event.get("choices") or []:
                        try:
                            piece = stream_delta(choice, request)
                            finish = field(choice, "finish_reason") or finish
                        except MalformedResponse as exc:
                            raise self._error(f"{self.model} at {shown} sent an event that is not a completion "
                                              f"chunk ({exc}): {data[:200]!r}", True) from None
                        if piece:
                            parts.append(piece)
                            yield piece
        except asyncio.TimeoutError:
            if not counted:
                count_request()
            raise self._error(f"{self.model} at {self.base_url} timed out after {self.timeout:g} s.", True) from None
        except aiohttp.ClientConnectorError as exc:
            raise self._error(f"could not connect to {self.base_url} (is the server running?): {exc}",
                              True) from (None if self._secrets else exc)
        except aiohttp.ClientError as exc:
            if not counted:
                count_request()
            raise self._error(f"{self.model} at {self.base_url} failed ({type(exc).__name__}): {exc}",
                              True) from (None if self._secrets else exc)
        if usage:
            try:
                got = parse_usage(usage)
            except MalformedResponse as exc:
                raise self._error(f"{self.model} at {shown} sent unreadable usage ({exc}).", True) from None
        else:  # the server reports no usage on a stream: one token per content event
            got = Usage(prompt_tokens=0, completion_tokens=len(parts))
        yield LMResponse(text="".join(parts), usage=got, model=model, finish_reason=finish,
                         latency_s=time.perf_counter() - start)


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
