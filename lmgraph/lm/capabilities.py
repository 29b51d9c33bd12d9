"""What a backend can do (:class:`Capabilities`), and JSON-mode negotiation with
OpenAI-compatible servers (:class:`JsonModeNegotiator`).

Servers that speak the OpenAI API differ in how they take a JSON schema:

* ``"json_schema"``: OpenAI's structured outputs, ``{"type": "json_schema", "json_schema":
  {"name": ..., "schema": ...}}`` (OpenAI, vLLM, Ollama, llama.cpp's C++ ``llama-server``);
* ``"json_object"``: ``{"type": "json_object", "schema": ...}``, what llama-cpp-python's server
  takes (it rejects ``json_schema`` with ``HTTP 500 ... response_format.type: Input should be
  'text' or 'json_object'``);
* ``"none"``: no ``response_format`` at all; the schema is written into the prompt instead.

With ``json_mode="auto"`` (the default of :class:`~lmgraph.lm.openai_http.OpenAIServerLM`,
:class:`~lmgraph.lm.litellm.LiteLLM` and :func:`~lmgraph.lm.litellm.openai_compatible`) the
first request that carries a schema tries the richest mode; when the server answers 4xx/5xx
with a body that names ``response_format``, the same request is sent once more in the next
mode (and so on down the list). The mode that worked is remembered on the client and, for the
process, per endpoint (base URL without credentials + model), so later requests, and later
clients of the same endpoint, make no failed attempt. While no mode has worked yet, requests
with a schema wait for the one that is negotiating (a batch does not fail N times at once).

Accounting: negotiation happens inside one ``complete()`` call, so a rejected attempt is never
a result (the caller gets the answer of the mode that worked, or the last error) and the
:class:`~lmgraph.lm.wrappers.Budget` counts the whole exchange as **one** call; the rejected
requests are counted on the client (``negotiation_failures``). An explicit ``json_mode=``
(anything but ``"auto"``) skips negotiation.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import DefinitionError, LMError
from .base import LMRequest, LMResponse

# how a JSON mode shapes a request lives with the other OpenAI request fields (re-exported here)
from .openai_compat import response_format, schema_in_prompt

__all__ = [
    "JSON_MODES",
    "JSON_MODE_CHOICES",
    "Capabilities",
    "JsonModeNegotiator",
    "NegotiatedJsonMode",
    "check_json_mode",
    "forget_json_modes",
    "names_response_format",
    "remembered_json_mode",
    "response_format",
    "schema_in_prompt",
]

#: JSON modes, richest first: the order negotiation tries them in.
JSON_MODES: tuple[str, ...] = ("json_schema", "json_object", "none")
#: What ``json_mode=`` / ``--json-mode`` accept.
JSON_MODE_CHOICES: tuple[str, ...] = ("auto", *JSON_MODES)


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a backend can do.

    ``json_modes``: the ways it can take a JSON schema, richest first (``"json_schema"``: the
    schema constrains decoding -- a grammar in process, structured outputs on a server;
    ``"json_object"``: llama-cpp-python's ``{"type": "json_object", "schema": ...}``;
    ``"none"``: the schema goes into the prompt). ``json_mode``: the mode in use, or None while
    an OpenAI-compatible endpoint has not been negotiated yet. ``logprobs``: returns token
    log-probabilities of generated text. ``scoring``: can score given continuations
    (``LMRequest(choices=...)``, ``decode="score"``). ``streaming``: streams tokens.
    """

    json_modes: tuple[str, ...] = ("none",)
    json_mode: str | None = "none"
    logprobs: bool = False
    scoring: bool = False
    streaming: bool = False


def check_json_mode(json_mode: Any, *, owner: str) -> str:
    if json_mode not in JSON_MODE_CHOICES:
        raise DefinitionError(
            f"{owner}: json_mode must be one of {', '.join(JSON_MODE_CHOICES)}; got {json_mode!r}.",
            fix="leave json_mode='auto' to negotiate with the server, or pick one: 'json_schema' "
                "(OpenAI, vLLM, Ollama), 'json_object' (llama-cpp-python's server), 'none' "
                "(schema in the prompt).")
    return str(json_mode)


def names_response_format(status: int | None, text: str) -> bool:
    """A rejection of the JSON mode: a 4xx/5xx whose body names ``response_format``."""
    return (status is None or status >= 400) and "response_format" in text.lower()


# (endpoint: base URL without credentials, model, route: "chat" | "completion") -> the mode that
# worked, or the next one to try after a rejection
_REMEMBERED: dict[tuple[str, str, str], str] = {}
_REMEMBERED_LOCK = threading.Lock()


def remembered_json_mode(endpoint: str, model: str, route: str = "chat") -> str | None:
    """The JSON mode this process negotiated with ``endpoint`` for ``model`` on ``route``
    (``"chat"``: ``/chat/completions``; ``"completion"``: ``/completions``), if any."""
    return _REMEMBERED.get((endpoint, model, route))


def forget_json_modes() -> None:
    """Forget every negotiated JSON mode (tests; a server that was replaced by another)."""
    with _REMEMBERED_LOCK:
        _REMEMBERED.clear()


class _Route:
    """Negotiation state of one route (servers differ per route: llama-cpp-python's
    ``/completions`` ignores ``response_format`` while its ``/chat/completions`` validates it)."""

    __slots__ = ("confirmed", "mode")

    def __init__(self, mode: str | None, confirmed: bool) -> None:
        self.mode = mode
        self.confirmed = confirmed


class JsonModeNegotiator:
    """Picks and remembers the JSON mode of one client (see the module's docstring)."""

    def __init__(self, json_mode: str, *, endpoint: str, model: str, owner: str) -> None:
        self.requested = check_json_mode(json_mode, owner=owner)
        self.explicit = self.requested != "auto"
        self._endpoint, self._model = endpoint, model
        self._routes: dict[str, _Route] = {}
        self.failures = 0  # rejected requests (each a request the server received; never a result)
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = \
            weakref.WeakKeyDictionary()
        self._thread_lock = threading.Lock()

    def _route(self, route: str) -> _Route:
        state = self._routes.get(route)
        if state is None:
            if self.explicit:
                state = _Route(self.requested, True)
            else:
                known = remembered_json_mode(self._endpoint, self._model, route)
                state = _Route(known, known is not None)
            state = self._routes.setdefault(route, state)
        return state

    def mode(self, route: str = "chat") -> str | None:
        """The mode in use on ``route``; None until a request with a schema has succeeded there."""
        state = self._route(route)
        return state.mode if state.confirmed else None

    def candidates(self, route: str = "chat") -> tuple[str, ...]:
        """The modes still possible on ``route``, richest first."""
        state = self._route(route)
        start = JSON_MODES.index(state.mode) if state.mode else 0
        return JSON_MODES[start:]

    def negotiated(self) -> dict[str, str]:
        """Route -> mode, for the routes whose mode is known."""
        return {r: s.mode for r, s in self._routes.items() if s.confirmed and s.mode}

    def _lock(self, route: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._thread_lock:
            locks = self._locks.get(loop)
            if locks is None:
                locks = self._locks[loop] = {}
            lock = locks.get(route)
            if lock is None:
                lock = locks[route] = asyncio.Lock()
        return lock

    async def complete(self, request: LMRequest,
                       send: Callable[[LMRequest, str | None], Awaitable[LMResponse]]) -> LMResponse:
        """Answer ``request`` through ``send(request, mode)``; ``mode`` is None when the request
        carries no schema, and for ``"none"`` the schema is already in the prompt."""
        if request.json_schema is None:
            return await send(request, None)
        state = self._route(request.mode)
        if self.explicit:
            return await self._send(request, state.mode, send)  # type: ignore[arg-type]
        if state.confirmed:
            return await self._negotiate(request, state, send)
        async with self._lock(request.mode):  # the first requests with a schema wait for one
            return await self._negotiate(request, state, send)

    async def _negotiate(self, request: LMRequest, state: _Route,
                         send: Callable[[LMRequest, str | None], Awaitable[LMResponse]]) -> LMResponse:
        key = (self._endpoint, self._model, request.mode)
        while True:
            mode = state.mode or JSON_MODES[0]
            try:
                response = await self._send(request, mode, send)
            except LMError as exc:
                if not getattr(exc, "json_mode_rejected", False) or mode == JSON_MODES[-1]:
                    raise
                # a rejection, even of a mode that worked before: move on to the next one
                self.failures += 1
                state.mode, state.confirmed = JSON_MODES[JSON_MODES.index(mode) + 1], False
                with _REMEMBERED_LOCK:  # later clients of this endpoint skip the rejected mode
                    _REMEMBERED[key] = state.mode
                continue
            if not state.confirmed:
                state.mode, state.confirmed = mode, True
                with _REMEMBERED_LOCK:
                    _REMEMBERED[key] = mode
            return response

    async def _send(self, request: LMRequest, mode: str,
                    send: Callable[[LMRequest, str | None], Awaitable[LMResponse]]) -> LMResponse:
        try:
            return await send(schema_in_prompt(request) if mode == "none" else request, mode)
        except LMError as exc:
            if getattr(exc, "json_mode_rejected", False):
                exc.retryable = False  # the same body fails again
                if self.explicit:
                    others = ", ".join(repr(m) for m in JSON_MODE_CHOICES if m != mode)
                    exc.args = (f"{exc.args[0]} (the server rejected json_mode={mode!r}; pass "
                                f"json_mode= (--json-mode) {others})", *exc.args[1:])
            raise


def mark_json_mode_rejection(err: LMError, status: int | None, text: str, mode: str | None) -> LMError:
    """Flag ``err`` as the server rejecting ``response_format`` (only when one was sent)."""
    if mode in ("json_schema", "json_object") and names_response_format(status, text):
        err.json_mode_rejected = True  # type: ignore[attr-defined]
    return err


class NegotiatedJsonMode:
    """What an OpenAI-compatible client says of its JSON modes (it holds a ``JsonModeNegotiator``
    as ``self._json``): shared by the lean HTTP client and the litellm route."""

    _json: JsonModeNegotiator

    @property
    def json_mode(self) -> str:
        """The JSON mode of chat requests: the one passed, else the negotiated one, else
        ``"auto"`` (raw-prompt requests are negotiated on their own: :attr:`negotiated_json_modes`)."""
        return self._json.mode("chat") or self._json.requested

    @property
    def negotiated_json_modes(self) -> dict[str, str]:
        """``{"chat" | "completion": mode}`` for the routes whose JSON mode is known."""
        return self._json.negotiated()

    @property
    def negotiation_failures(self) -> int:
        """Requests the provider rejected while negotiating the JSON mode (never results)."""
        return self._json.failures

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(json_modes=self._json.candidates("chat"), json_mode=self._json.mode("chat"),
                            logprobs=True, scoring=False, streaming=True)

    @staticmethod
    def _streamable(request: LMRequest, mode: str | None) -> bool:
        """Whether ``request`` can be streamed: not a scoring or log-probability request, and a schema
        request only once the endpoint's JSON mode (``mode``) is known."""
        return request.choices is None and not request.logprobs and (request.json_schema is None or mode is not None)

    async def _complete_as_stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """A request that is not streamed, answered as a stream: its whole text, then the response."""
        response = await self.complete(request)  # type: ignore[attr-defined]
        if response.text:
            yield response.text
        yield response
