"""OpenAI-shaped requests and responses, built and read in one place.

Three backends speak the OpenAI chat/completions shapes: the lean HTTP client
(:mod:`lmgraph.lm.openai_http`), litellm (:mod:`lmgraph.lm.litellm`) and llama-cpp-python in
process (:mod:`lmgraph.lm.llamacpp`), whose ``create_chat_completion`` / ``create_completion``
take and return the same shapes. This module builds their request fields and reads their
answers:

* **requests** -- the input (``messages`` for a chat, ``prompt`` for a raw completion), the
  sampling fields (``temperature``, ``max_tokens``, ``top_p``, ``seed``, ``stop``), the JSON mode
  (``response_format`` for ``"json_schema"`` and ``"json_object"``; for ``"none"`` the schema is
  written into the prompt, :func:`schema_in_prompt`) and log-probabilities (a chat asks
  ``logprobs: true, top_logprobs: n``, a raw completion ``logprobs: n``);
  :func:`request_body` is the whole body an OpenAI-compatible server gets.
* **responses** -- :func:`parse_completion`: ``choices[0]``'s text (``message.content`` of a chat,
  ``text`` of a completion), ``finish_reason``, ``usage`` (missing: zero; ``prompt_tokens_details.
  cached_tokens`` when the server reports a prompt-cache hit) and log-probabilities normalised to
  ``[{"token", "logprob", "top": {token: logprob}}]``. Dicts (parsed JSON, llama-cpp-python) and
  objects (litellm's pydantic responses) are read alike. A body that is not a completion raises
  :class:`MalformedResponse` (a ``ValueError``), which each backend turns into its
  :class:`~lmgraph.errors.LMError`.
"""

from __future__ import annotations

import json
from typing import Any

from .base import LMRequest, LMResponse, Message, Usage

__all__ = [
    "CHAT_PATH",
    "COMPLETION_PATH",
    "STREAM_FIELDS",
    "MalformedResponse",
    "as_dict",
    "completion_text",
    "endpoint_path",
    "error_text",
    "field",
    "input_fields",
    "json_mode_fields",
    "logprob_fields",
    "normalise_logprobs",
    "parse_completion",
    "parse_usage",
    "request_body",
    "response_format",
    "sampling_fields",
    "schema_in_prompt",
    "stream_delta",
]

CHAT_PATH = "/chat/completions"
COMPLETION_PATH = "/completions"
#: what a streamed request adds to its body (usage in the last event, where the server can)
STREAM_FIELDS: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}

# JSON values that have no fields: reading one where an object belongs means the body is not a completion
_NOT_OBJECTS = (str, bytes, int, float, bool, list, tuple)


class MalformedResponse(ValueError):
    """An answer that is not a completion (no choice, a choice or usage that is not an object,
    unreadable token counts or log-probabilities). Its text says what was wrong."""


# ---------------------------------------------------------------- requests

def response_format(mode: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` body field for ``mode`` (None for ``"none"``)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


def schema_in_prompt(request: LMRequest) -> LMRequest:
    """``request`` with its JSON schema written into the prompt (mode ``"none"``): appended to
    the last user message of a chat, put before a raw prompt (whose end is the answer's cue)."""
    assert request.json_schema is not None
    note = ("Answer with one JSON object that matches this JSON schema: "
            + json.dumps(request.json_schema, ensure_ascii=False, separators=(",", ":")))
    if request.messages is not None:
        msgs = list(request.messages)
        for i in range(len(msgs) - 1, -1, -1):
            if msgs[i].role == "user":
                msgs[i] = Message(role="user", content=msgs[i].content.rstrip() + "\n\n" + note)
                break
        else:
            msgs.append(Message(role="user", content=note))
        return request.replace(messages=tuple(msgs))
    assert request.prompt is not None
    return request.replace(prompt=note + "\n\n" + request.prompt)


def endpoint_path(request: LMRequest) -> str:
    """``/chat/completions`` for a chat request, ``/completions`` for a raw prompt."""
    return CHAT_PATH if request.messages is not None else COMPLETION_PATH


def input_fields(request: LMRequest) -> dict[str, Any]:
    """``{"messages": [...]}`` of a chat request, ``{"prompt": ...}`` of a raw one."""
    if request.messages is not None:
        return {"messages": [m.to_dict() for m in request.messages]}
    return {"prompt": request.prompt}


def sampling_fields(request: LMRequest) -> dict[str, Any]:
    """``temperature``, ``max_tokens``, ``top_p``, ``seed`` (the request's sampling seed: seed
    mixed with rollout) and ``stop`` when there are stop strings, as a server takes them."""
    fields: dict[str, Any] = {"temperature": float(request.temperature), "max_tokens": int(request.max_tokens),
                              "top_p": float(request.top_p)}
    if request.sampling_seed is not None:
        fields["seed"] = request.sampling_seed
    if request.stop:
        fields["stop"] = list(request.stop)
    return fields


def json_mode_fields(request: LMRequest, mode: str | None) -> dict[str, Any]:
    """``{"response_format": ...}`` for a request with a JSON schema in mode ``"json_schema"`` or
    ``"json_object"``; nothing for ``"none"`` (the schema goes in the prompt: :func:`schema_in_prompt`),
    without a mode, or without a schema."""
    if request.json_schema is None or mode is None:
        return {}
    fmt = response_format(mode, request.json_schema)
    return {} if fmt is None else {"response_format": fmt}


def logprob_fields(request: LMRequest, top_logprobs: int) -> dict[str, Any]:
    """What asks for log-probabilities (with ``top_logprobs`` alternatives per token): a chat takes
    ``logprobs: true, top_logprobs: n``, a raw completion ``logprobs: n``; nothing when not asked."""
    if not request.logprobs:
        return {}
    if request.messages is not None:
        return {"logprobs": True, "top_logprobs": top_logprobs}
    return {"logprobs": top_logprobs}


def request_body(request: LMRequest, *, model: str, mode: str | None, top_logprobs: int,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body an OpenAI-compatible server gets for ``request``: model, sampling fields, the JSON
    mode's ``response_format``, the messages or prompt, log-probabilities, then ``extra`` (which
    may override any of them). ``request`` is already in ``mode`` (for ``"none"``, its schema is in
    the prompt)."""
    body: dict[str, Any] = {"model": model, **sampling_fields(request), **json_mode_fields(request, mode),
                            **input_fields(request), **logprob_fields(request, top_logprobs)}
    if extra:
        body.update(extra)
    return body


# ---------------------------------------------------------------- responses

def field(obj: Any, key: str, default: Any = None) -> Any:
    """``obj[key]`` of a dict, ``obj.key`` of an object (litellm's pydantic responses), ``default``
    when absent or ``obj`` is None; :class:`MalformedResponse` when ``obj`` is a JSON value without
    fields (a string, number, list) where an object belongs."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    if isinstance(obj, _NOT_OBJECTS):
        raise MalformedResponse(f"{key!r} asked of {type(obj).__name__} {_short(obj)}, which is not an object")
    return getattr(obj, key, default)


def as_dict(obj: Any) -> Any:
    """A dict of a pydantic-like object (``model_dump``, ``dict`` or ``to_dict``); dicts, None and
    plain JSON values as they are; None for an object that cannot be turned into one."""
    if obj is None or isinstance(obj, (dict, *_NOT_OBJECTS)):
        return obj
    for name in ("model_dump", "dict", "to_dict"):
        fn = getattr(obj, name, None)
        if callable(fn):
            try:
                return fn()
            except Exception:  # pragma: no cover - odd objects
                continue
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _count(value: Any, what: str) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise MalformedResponse(f"usage.{what} is {_short(value)}, not a token count") from None


def parse_usage(usage: Any) -> Usage:
    """Token counts of an OpenAI ``usage`` (dict or object); zero where missing. ``cached_tokens``
    comes from ``prompt_tokens_details.cached_tokens`` when the server reports one."""
    if not usage:
        return Usage()
    if isinstance(usage, _NOT_OBJECTS):
        raise MalformedResponse(f"usage that is not an object: {_short(usage)}")
    details = field(usage, "prompt_tokens_details")
    cached = 0
    if details and not isinstance(details, _NOT_OBJECTS):  # informational: an odd value counts as none
        try:
            cached = max(0, int(field(details, "cached_tokens") or 0))
        except (TypeError, ValueError):
            cached = 0
    return Usage(prompt_tokens=_count(field(usage, "prompt_tokens"), "prompt_tokens"),
                 completion_tokens=_count(field(usage, "completion_tokens"), "completion_tokens"),
                 cached_tokens=cached)


def normalise_logprobs(raw: Any) -> list[dict[str, Any]] | None:
    """Completion- or chat-style logprobs -> ``[{"token", "logprob", "top": {tok: lp}}]``."""
    if not raw:
        return None
    entries: list[dict[str, Any]] = []
    if "content" in raw:  # chat style
        for item in raw.get("content") or []:
            top = {t["token"]: float(t["logprob"]) for t in item.get("top_logprobs") or []}
            entries.append({"token": item.get("token"), "logprob": _float(item.get("logprob")),
                            "top": top})
        return entries
    tokens = raw.get("tokens") or []
    lps = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or []
    for i, token in enumerate(tokens):
        top = tops[i] if i < len(tops) and tops[i] else {}
        entries.append({"token": token, "logprob": _float(lps[i] if i < len(lps) else None),
                        "top": {k: float(v) for k, v in top.items()}})
    return entries


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _first_choice(data: Any) -> Any:
    choices = None if isinstance(data, _NOT_OBJECTS) else field(data, "choices")
    if not choices:
        raise MalformedResponse("no choices")
    if not isinstance(choices, (list, tuple)):
        raise MalformedResponse(f"choices that are not a list: {_short(choices)}")
    choice = choices[0]
    if choice is None or isinstance(choice, _NOT_OBJECTS):
        raise MalformedResponse(f"a choice that is not an object: {_short(choice)}")
    return choice


def completion_text(choice: Any, request: LMRequest) -> Any:
    """The generated text of one choice: ``message.content`` of a chat, ``text`` of a raw completion
    ("" when absent)."""
    if request.messages is not None:
        message = field(choice, "message")
        if message and isinstance(message, _NOT_OBJECTS):
            raise MalformedResponse(f"a message that is not an object: {_short(message)}")
        return (field(message, "content") if message else None) or ""
    return field(choice, "text") or ""


def parse_completion(data: Any, request: LMRequest, *, model: str, reported_model: bool = False,
                     latency_s: float = 0.0, cost: float | None = None) -> LMResponse:
    """An OpenAI-shaped completion (``choices[0]``, ``usage``; a dict or an object) -> LMResponse.

    ``model`` names the model; with ``reported_model=True`` the response's own ``model`` field wins
    where it has one. Log-probabilities are read only when the request asked for them. Raises
    :class:`MalformedResponse` when ``data`` is not a completion."""
    try:
        choice = _first_choice(data)
        text = completion_text(choice, request)
        usage = parse_usage(field(data, "usage"))
        logprobs = normalise_logprobs(as_dict(field(choice, "logprobs"))) if request.logprobs else None
        name = str(field(data, "model") or model) if reported_model else model
        finish = field(choice, "finish_reason")
    except MalformedResponse:
        raise
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedResponse(f"an unreadable completion ({type(exc).__name__}: {exc})") from None
    return LMResponse(text=text, usage=usage, model=name, finish_reason=finish, logprobs=logprobs,
                      cost=cost, latency_s=latency_s)


def stream_delta(choice: Any, request: LMRequest) -> Any:
    """The text one streamed choice adds: ``delta.content`` of a chat, ``text`` of a raw completion."""
    if request.messages is not None:
        delta = field(choice, "delta")
        if delta and isinstance(delta, _NOT_OBJECTS):
            raise MalformedResponse(f"a delta that is not an object: {_short(delta)}")
        return field(delta, "content") if delta else None
    return field(choice, "text")


def error_text(raw: bytes) -> str:
    """A server's error message (OpenAI style ``{"error": {"message": ...}}``), else the body."""
    try:
        data = json.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else err
        return str(msg or data)[:500]
    except ValueError:
        return raw[:500].decode("utf-8", "replace")
