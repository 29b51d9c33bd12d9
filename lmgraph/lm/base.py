"""The model interface: one async method, plus plain request/response records.

A backend implements :class:`LM`: ``async complete(request) -> LMResponse`` and an
``identity()`` dict used for cache keys. Wrappers (cache, retry, budget, concurrency)
implement the same protocol around an inner LM.

Streaming is optional (:class:`StreamingLM`): a backend that declares
``capabilities.streaming`` has ``stream(request)``, an async iterator of text deltas (``str``)
followed by exactly one final :class:`LMResponse` -- the same response ``complete`` would give,
its ``text`` the deltas joined. :func:`stream_of` streams any LM: one that cannot answers at
once (the whole text as one delta, then the response).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import DefinitionError


@dataclass(frozen=True, kw_only=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, kw_only=True)
class LMRequest:
    """One model call. Exactly one of ``messages`` (chat) or ``prompt`` (raw completion).

    ``rollout`` distinguishes otherwise identical requests so that optimizers can ask for
    fresh samples without bypassing the cache. ``json_schema`` asks for structured
    (grammar-constrained where the backend supports it) JSON output.

    ``choices`` turns the call into *scoring* (raw ``prompt`` requests only): the backend
    generates nothing, it scores each choice as a continuation of ``prompt`` and returns an
    :class:`LMResponse` whose ``text`` is the best choice (highest total log-probability; ties
    go to the earliest) and whose ``logprobs`` lists ``{"choice", "logprob", "tokens"}`` for
    every choice, in the request's order. Usage counts the prompt once and every choice's
    tokens as completion tokens. Sampling fields (temperature, max_tokens, stop) are ignored.
    """

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0
    top_p: float = 1.0
    json_schema: dict[str, Any] | None = None
    logprobs: bool = False
    rollout: int = 0
    use_cache: bool = True
    node: str | None = None  # for accounting/tracing only; not part of the cache key
    choices: tuple[str, ...] | None = None  # score these continuations instead of generating

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("LMRequest needs exactly one of messages= or prompt=")
        if self.choices is not None:
            self._check_choices()

    def _check_choices(self) -> None:
        choices: Any = self.choices  # as the caller gave it (a list, a string, ...): checked here
        if isinstance(choices, str) or not all(isinstance(c, str) for c in choices or ()):
            raise DefinitionError(f"choices must be a sequence of strings, got {choices!r}.",
                                  fix="pass choices=(' negative', ' positive').")
        if not isinstance(choices, tuple):
            object.__setattr__(self, "choices", tuple(choices))
        if self.messages is not None:
            raise DefinitionError(
                "choices= (log-prob scoring) needs a raw prompt= request; a chat request "
                "cannot be scored.",
                fix="render the prompt in completion format (format='completion').")
        if not self.choices:
            raise DefinitionError("choices= is empty: there is nothing to score.",
                                  fix="pass at least one choice, or choices=None to generate.")
        if any(not c for c in self.choices):
            raise DefinitionError("choices= contains an empty string, which has no tokens to "
                                  "score.", fix="give every choice some text, e.g. ' yes'.")
        if len(set(self.choices)) != len(self.choices):
            raise DefinitionError(f"choices= repeats a choice: {list(self.choices)!r}.",
                                  fix="list every choice once.")

    @property
    def sampling_seed(self) -> int:
        """The seed backends sample with: ``seed`` mixed with ``rollout``, so rollouts differ at T > 0."""
        return (self.seed * 1_000_003 + self.rollout) % (2**31 - 1)

    @property
    def mode(self) -> str:
        return "chat" if self.messages is not None else "completion"

    def replace(self, **changes: Any) -> LMRequest:
        return dataclasses.replace(self, **changes)

    def canonical(self) -> dict[str, Any]:
        """Everything that determines the completion (used for cache keys).

        ``choices`` appears only when set, so keys of generation requests are unchanged.
        """
        data: dict[str, Any] = {
            "messages": [m.to_dict() for m in self.messages] if self.messages is not None else None,
            "prompt": self.prompt,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "seed": self.seed,
            "top_p": self.top_p,
            "json_schema": self.json_schema,
            "logprobs": self.logprobs,
            "rollout": self.rollout,
        }
        if self.choices is not None:
            data["choices"] = list(self.choices)
        return data


@dataclass(frozen=True, kw_only=True)
class Usage:
    """Tokens of one call. ``cached_tokens``: how many of the prompt tokens the provider served from
    its prompt cache, where it says (OpenAI's ``prompt_tokens_details.cached_tokens``); they are part
    of ``prompt_tokens``. It describes that live call: a response replayed from lmgraph's own cache
    (``LMResponse.to_dict``/``from_dict``) does not keep it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                     completion_tokens=self.completion_tokens + other.completion_tokens,
                     cached_tokens=self.cached_tokens + other.cached_tokens)


def _new_usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    obj = object.__new__(Usage)
    obj.__dict__.update(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached_tokens=0)
    return obj


@dataclass(frozen=True, kw_only=True)
class LMResponse:
    """A normalised completion: plain data only, safe to cache as JSON."""

    text: str
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None
    cost: float | None = None  # dollars, where the backend knows a price
    cached: bool = False
    latency_s: float = 0.0

    def replace(self, **changes: Any) -> LMResponse:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "usage": {"prompt_tokens": self.usage.prompt_tokens,
                      "completion_tokens": self.usage.completion_tokens},
            "model": self.model,
            "finish_reason": self.finish_reason,
            "logprobs": self.logprobs,
            "cost": self.cost,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, cached: bool = False) -> LMResponse:
        u = data.get("usage") or {}
        usage = _new_usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)))
        text = data["text"]
        if cls is not LMResponse or type(text) is not str:  # subclasses and odd values: the checked path
            return cls(text=text, usage=usage, model=data.get("model", ""),
                       finish_reason=data.get("finish_reason"), logprobs=data.get("logprobs"),
                       cost=data.get("cost"), cached=cached)
        # Cache hits build one of these per replayed call: fill the frozen instance directly
        # (the generated __init__ sets each field through object.__setattr__, ~4x slower).
        obj = object.__new__(cls)
        obj.__dict__.update(text=text, usage=usage, model=data.get("model", ""),
                            finish_reason=data.get("finish_reason"), logprobs=data.get("logprobs"),
                            cost=data.get("cost"), cached=cached, latency_s=0.0)
        return obj


@runtime_checkable
class LM(Protocol):
    """What every backend and wrapper implements."""

    async def complete(self, request: LMRequest) -> LMResponse: ...

    def identity(self) -> dict[str, Any]:
        """A JSON-able description of the model (backend, endpoint, model identity)."""
        ...


@runtime_checkable
class StreamingLM(LM, Protocol):
    """An LM that can also stream (declared by ``capabilities.streaming``).

    ``stream(request)`` yields text deltas (``str``, in order, none empty) and then one final
    :class:`LMResponse` whose ``text`` is the deltas joined (usage, finish reason and cost as
    ``complete`` reports them). A request that cannot be streamed (scoring ``choices``,
    ``logprobs``) is answered by ``complete`` and yields its whole text at once.
    """

    def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]: ...


def streams(lm: Any) -> bool:
    """Whether ``lm`` streams: it declares ``capabilities.streaming`` and has ``stream()``
    (a wrapper reports its inner model's capabilities)."""
    caps = getattr(lm, "capabilities", None)
    return bool(getattr(caps, "streaming", False)) and callable(getattr(lm, "stream", None))


async def _at_once(lm: LM, request: LMRequest) -> AsyncGenerator[str | LMResponse, None]:
    response = await lm.complete(request)
    if response.text:
        yield response.text
    yield response


def stream_of(lm: Any, request: LMRequest) -> AsyncGenerator[str | LMResponse, None]:
    """Stream ``request`` through ``lm``: its ``stream()`` when it streams, else ``complete()``
    with the whole text as one delta. Always text deltas, then one :class:`LMResponse`; an async
    generator (``aclose()`` ends the model's stream early), as every ``async def stream`` with
    ``yield`` is."""
    if streams(lm):
        stream: AsyncGenerator[str | LMResponse, None] = lm.stream(request)
        return stream
    return _at_once(lm, request)


async def collect(stream: AsyncIterator[str | LMResponse]) -> LMResponse:
    """The final response of a stream (the deltas are dropped); an error if it ends without one."""
    final: LMResponse | None = None
    async for item in stream:
        if isinstance(item, LMResponse):
            final = item
    if final is None:
        raise RuntimeError("a model stream ended without its final LMResponse")
    return final
