"""Field values <-> prompt text: render a value into a prompt, read a typed value back.

The format-independent half of reading a reply: :func:`coerce` turns one field's text into its
declared type (numbers out of prose, labels matched to a Literal's options, JSON out of fences
or cut-off objects); :func:`validate_value` checks a value given in Python. Values entering a
program (run inputs, constants, demos) go through :func:`validate_strict` instead: pydantic's
validation alone, no number fished out of prose, no label matched loosely. The prompt formats
(:mod:`lmgraph.lm.prompt`) split a reply into fields and call these.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import pydantic

from ..errors import LmgraphError
from ..signatures import literal_options, type_adapter, type_to_str


class CoercionError(LmgraphError, ValueError):
    """A model's text could not be read as the declared type (no JSON in it, no number, not one
    of the options, nested too deeply...). Also a ``ValueError``: the prompt formats turn it into
    an :class:`~lmgraph.errors.OutputParseError` naming the field."""


def _loads(text: str) -> Any:
    """``json.loads``; JSON nested past Python's recursion limit is a CoercionError, not a crash.

    Raw control characters (a newline) inside a string are read as written (``strict=False``):
    llama-cpp-python's server, given a JSON schema, lets the model write them, and strict JSON
    would reject the whole reply (GSM8K chain of thought in the JSON format, SmolLM2-135M over that
    server: 6 of 30 validation rows "not JSON" for a newline inside the answer string)."""
    try:
        return json.loads(text, strict=False)
    except RecursionError:
        raise CoercionError("the JSON is nested too deeply to read") from None


def format_value(value: Any, *, as_input: bool = True) -> str:
    """Render one field value as prompt text."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    if isinstance(value, (list, tuple)):
        if as_input and all(isinstance(v, str) for v in value):
            return "\n".join(f"[{i}] {v.strip()}" for i, v in enumerate(value, 1)) or "(none)"
        return json.dumps(jsonable(value), ensure_ascii=False)
    if isinstance(value, dict):
        return json.dumps(jsonable(value), ensure_ascii=False)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "value") and not isinstance(value, (int, float)):  # Enum
        return str(value.value)
    return str(value)


def jsonable(value: Any) -> Any:
    """Convert a value to plain JSON data (pydantic models, enums, tuples)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "value"):
        return jsonable(value.value)
    return str(value)


_NUM = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def norm_label(s: str) -> str:
    """A label or option compared loosely: lower case, no edge punctuation, runs of space/_/- as one space."""
    return re.sub(r"[\s_\-]+", " ", s.strip().strip("\"'`*.,;:!()[]{}").lower()).strip()


def _strip_fence(text: str) -> str:
    """``text`` without a Markdown code fence around it (```json ... ```), stripped."""
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```[a-zA-Z]*\n?|```\s*$", "", text).strip()
    return text


def extract_json(text: str) -> Any:
    """The JSON value in a reply (fenced, or the outermost object/array in prose); raises
    :class:`CoercionError` (a ValueError) when there is none."""
    text = _strip_fence(text)
    try:
        return _loads(text)
    except json.JSONDecodeError:
        pass
    for open_, close in (("{", "}"), ("[", "]")):
        i, j = text.find(open_), text.rfind(close)
        if i != -1 and j > i:
            try:
                return _loads(text[i:j + 1])
            except json.JSONDecodeError:
                continue
    raise CoercionError("no JSON value found")


def close_json_object(text: str) -> dict[str, Any] | None:
    """An object the model began but did not finish -- out of tokens inside a JSON answer,
    e.g. ``{"answer": "The Eiffel To`` -- closed and read; None when ``text`` is no such prefix.

    The open string and brackets are closed at the end or, failing that (cut inside a key or
    an escape), at the last comma between members, dropping the unfinished member.
    """
    text = _strip_fence(text)
    if not text.startswith("{"):
        return None
    stack: list[str] = []
    in_str = escaped = False
    cuts: list[tuple[int, str]] = []  # (position of a member comma, the closers needed there)
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return None  # a complete value: not a truncated one (json.loads had its say)
        elif ch == ",":
            cuts.append((i, "".join(reversed(stack))))
    end = text[:-1] if escaped else text
    tries = [end + ('"' if in_str else "") + "".join(reversed(stack))]
    tries += [text[:i] + closers for i, closers in reversed(cuts)]
    for attempt in tries:
        try:
            data = json.loads(attempt, strict=False)
        except (json.JSONDecodeError, RecursionError):
            continue
        return data if isinstance(data, dict) else None
    return None


def json_object(text: str) -> dict[str, Any] | None:
    """The reply read as a JSON object, complete or cut off by the token limit; else None."""
    try:
        data = extract_json(text)
    except ValueError:
        return close_json_object(text)
    return data if isinstance(data, dict) else None


def coerce(text: str, annotation: Any) -> Any:
    """Parse model text into ``annotation``; raises :class:`CoercionError` (a ValueError) with a reason."""
    try:
        return _coerce(text, annotation)
    except CoercionError:
        raise
    except pydantic.ValidationError as e:
        raise CoercionError(f"does not match {type_to_str(annotation)}: {e.errors()[0]['msg']}") from None
    except ValueError as e:
        raise CoercionError(str(e)) from None
    except RecursionError:
        raise CoercionError(f"the value is nested too deeply to read as {type_to_str(annotation)}") from None


def _coerce(text: str, annotation: Any) -> Any:
    if annotation is str or annotation is Any:
        return text.strip()
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        if norm_label(text) in ("", "none", "null", "n/a") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(text, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    options = literal_options(annotation)
    if options is not None:
        value = _match_option(text, options)
        return annotation(value) if isinstance(annotation, type) else value
    if annotation is bool:
        m = re.match(r"[a-z0-9]+", norm_label(text))  # first word, without its punctuation ("Yes, ...")
        n = m.group(0) if m else ""
        if n in ("yes", "true", "1", "y", "correct", "pass"):
            return True
        if n in ("no", "false", "0", "n", "incorrect", "fail"):
            return False
        raise ValueError(f"expected yes/no, got {text.strip()[:60]!r}")
    if annotation in (int, float):
        m = _NUM.search(text)
        if not m:
            raise ValueError(f"expected a number, got {text.strip()[:60]!r}")
        num = float(m.group(0).replace(",", "").replace("$", ""))
        if annotation is int:
            if not num.is_integer():
                raise ValueError(f"expected an integer, got {m.group(0)}")
            return int(num)
        return num
    if origin in (list, tuple) or annotation in (list, tuple):
        item = args[0] if args else str
        try:
            data = extract_json(text)
            if not isinstance(data, list):
                raise ValueError
            raw_items = data
        except ValueError:
            # strip bullets / numbering ("- a", "1. a", "[1] a") but not a value's own "-5" or "3.5"
            lines = [re.sub(r"^\s*(?:[-*\u2022]\s+|\d+[.)]\s+|\[\d+\]\s*)", "", ln).strip()
                     for ln in text.strip().splitlines()]
            raw_items = [ln for ln in lines if ln]
            if len(raw_items) == 1 and "," in raw_items[0]:  # "a, b, c" on one line
                raw_items = [p.strip() for p in raw_items[0].split(",") if p.strip()]
        items = [_coerce(v, item) if isinstance(v, str) else v for v in raw_items]
        return type_adapter(annotation).validate_python(items)
    # dicts, pydantic models, anything else: JSON
    try:
        data = extract_json(text)
    except ValueError:
        raise ValueError(f"expected JSON for {type_to_str(annotation)}, got {text.strip()[:80]!r}") from None
    try:
        return type_adapter(annotation).validate_python(data)
    except pydantic.ValidationError as e:
        raise ValueError(f"JSON does not match {type_to_str(annotation)}: {e.errors()[0]['msg']}") from None


def _match_option(text: str, options: Sequence[Any]) -> Any:
    if options and all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in options):
        m = _NUM.search(text)  # numeric options compare as numbers ("-1" is not "1")
        if m:
            num = float(m.group(0).replace(",", "").replace("$", ""))
            for o in options:
                if o == num:
                    return o
        raise ValueError(f"expected one of {', '.join(map(str, options))}; got {text.strip()[:60]!r}")
    t = norm_label(text)
    normed = [(norm_label(str(o)), o) for o in options]
    for n, o in normed:
        if t == n:
            return o
    first_line = norm_label(text.strip().splitlines()[0]) if text.strip() else ""
    for n, o in sorted(normed, key=lambda x: -len(x[0])):
        if first_line.startswith(n) and (len(first_line) == len(n) or not first_line[len(n)].isalnum()):
            return o
    found = [o for n, o in normed if re.search(rf"(?<![a-z0-9]){re.escape(n)}(?![a-z0-9])", t)]
    if len(found) == 1:
        return found[0]
    raise ValueError(f"expected one of {', '.join(map(str, options))}; got {text.strip()[:60]!r}")


def validate_value(value: Any, annotation: Any) -> Any:
    """Validate an already-typed value (e.g. a demo or a JSON field)."""
    if annotation is str and isinstance(value, str):
        return value
    if annotation is Any:
        return value
    if isinstance(value, str) and annotation is not str:
        return coerce(value, annotation)
    return type_adapter(annotation).validate_python(value)


_ADAPTERS: dict[Any, pydantic.TypeAdapter[Any]] = {}


def validate_strict(value: Any, annotation: Any) -> Any:
    """Validate a value given in Python -- a run input, a bound constant, a demo -- with pydantic
    and nothing else: ``"3"`` is an int but ``"I have 3 apples"`` is not, a Literal takes only
    its options. (Leniency is for model replies: :func:`coerce`.) Raises pydantic's
    ValidationError."""
    if annotation is Any or (annotation is str and isinstance(value, str)):
        return value
    try:
        adapter = _ADAPTERS.get(annotation)
    except TypeError:  # an unhashable annotation
        return type_adapter(annotation).validate_python(value)
    if adapter is None:
        if len(_ADAPTERS) > 512:  # types rebuilt per load: keep the cache bounded
            _ADAPTERS.clear()
        adapter = _ADAPTERS[annotation] = type_adapter(annotation)
    return adapter.validate_python(value)


def invalid_reason(error: Exception, value: Any, annotation: Any) -> str:
    """One line saying why ``value`` failed :func:`validate_strict` (pydantic's first error, or
    the options of a Literal/Enum)."""
    options = literal_options(annotation)
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    if options is not None:
        return f"expected one of {', '.join(map(str, options))}; got {shown}"
    if isinstance(error, pydantic.ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{first['msg']}{f' (at {where})' if where else ''}; got {shown}"
    return f"{error}; got {shown}"
