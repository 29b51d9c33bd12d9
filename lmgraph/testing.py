"""Fake models for tests, shipped with the library (no network, no weights).

* :class:`ScriptedLM` answers from a fixed list of completions, in order (or cycling).
* :class:`FunctionLM` answers with ``fn(request) -> str | LMResponse``; the function sees the
  whole request, so a test can answer correctly only when a given instruction/demo is present.
  A scoring request (``request.choices`` set, from ``Predict(decode="score")``) is answered like
  a real backend by returning ``LMResponse(text=<best choice>, logprobs=[{"choice": c,
  "logprob": lp, "tokens": n}, ...])``; plain text naming an option works too.

Both count calls and report token usage as whitespace-separated word counts. Both stream
(``stream(request)``, what ``program.stream`` uses): the same answer as ``complete``, yielded in
word chunks (``"Paris is "`` -> ``"Paris "``, ``"is "``), then the final response;
``streaming=False`` makes a fake that cannot stream (it then answers at once), and
``chunk_latency_s`` waits between chunks. ``streamed`` counts the requests answered by streaming.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from .lm.base import LMRequest, LMResponse, Usage
from .lm.capabilities import Capabilities


def request_text(request: LMRequest) -> str:
    """The full prompt text of a request (chat messages joined), for assertions in tests."""
    if request.prompt is not None:
        return request.prompt
    return "\n".join(f"[{m.role}] {m.content}" for m in request.messages or ())


def _words(text: str) -> int:
    return len(text.split())


def word_chunks(text: str) -> list[str]:
    """``text`` cut after each word's trailing whitespace: the chunks join back to ``text``."""
    return re.findall(r"\s*\S+\s*|\s+", text)


class _FakeBase:
    name = "fake"

    def __init__(self, *, latency_s: float = 0.0, streaming: bool = True, chunk_latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.chunk_latency_s = chunk_latency_s
        self.streaming = bool(streaming)
        self.calls: list[LMRequest] = []
        self.streamed = 0
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        return {"backend": "testing", "model": self.name}

    @property
    def capabilities(self) -> Capabilities:
        """Streams unless made with ``streaming=False``; scores when ``supports_scoring`` is set."""
        return Capabilities(streaming=self.streaming, scoring=bool(getattr(self, "supports_scoring", False)))

    def _answer(self, request: LMRequest) -> str | LMResponse:  # pragma: no cover - abstract
        raise NotImplementedError

    async def complete(self, request: LMRequest) -> LMResponse:
        with self._lock:
            self.calls.append(request)
            out = self._answer(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return self._response(request, out)

    def _response(self, request: LMRequest, out: str | LMResponse) -> LMResponse:
        if isinstance(out, LMResponse):
            return out
        return LMResponse(text=out, model=self.name, finish_reason="stop",
                          usage=Usage(prompt_tokens=_words(request_text(request)),
                                      completion_tokens=_words(out)))

    async def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """The answer :meth:`complete` gives, in word chunks, then the response itself."""
        with self._lock:
            self.calls.append(request)
            self.streamed += 1
            out = self._answer(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        response = self._response(request, out)
        for chunk in word_chunks(response.text):
            if self.chunk_latency_s:
                await asyncio.sleep(self.chunk_latency_s)
            yield chunk
        yield response


class ScriptedLM(_FakeBase):
    """Returns ``responses`` in order; raises when they run out unless ``cycle=True``."""

    name = "scripted"

    def __init__(self, responses: Sequence[str], *, cycle: bool = False, latency_s: float = 0.0,
                 streaming: bool = True, chunk_latency_s: float = 0.0) -> None:
        super().__init__(latency_s=latency_s, streaming=streaming, chunk_latency_s=chunk_latency_s)
        self.responses = list(responses)
        self.cycle = cycle
        self._i = 0

    def _answer(self, request: LMRequest) -> str:
        if self._i >= len(self.responses):
            if not self.cycle or not self.responses:
                raise RuntimeError(f"ScriptedLM ran out of responses after {self._i} calls")
            self._i = 0
        out = self.responses[self._i]
        self._i += 1
        return out


class FunctionLM(_FakeBase):
    """Answers with ``fn(request)``; ``fn`` may return text or a full :class:`LMResponse`."""

    name = "function"

    def __init__(self, fn: Callable[[LMRequest], str | LMResponse], *, latency_s: float = 0.0,
                 name: str | None = None, streaming: bool = True, chunk_latency_s: float = 0.0) -> None:
        super().__init__(latency_s=latency_s, streaming=streaming, chunk_latency_s=chunk_latency_s)
        self.fn = fn
        if name:
            self.name = name

    def _answer(self, request: LMRequest) -> str | LMResponse:
        return self.fn(request)
