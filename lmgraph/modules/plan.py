"""Plan: a Predict whose output is a short list of sub-steps / sub-questions.

The steps are asked for as a JSON list of strings -- the instructions, the field's type hint and
the JSON format all say the same thing. With ``format="auto"`` a Plan uses the ``json`` format
(a list is structured output): the request carries a JSON schema (``{"steps": [string, ...]}``,
at most ``max_steps`` non-empty items), which llama.cpp turns into a grammar and servers with
structured outputs enforce, so the reply is a well-formed list. Any other reply -- another
format, a backend that ignores the schema, a list cut off by ``max_tokens`` -- is read by
:func:`parse_steps`: JSON arrays (complete or cut off), JSON objects holding the list, numbered
or bulleted lines; items come back as clean strings (no brackets, quotes or numbering), empty
and repeated items dropped. At most ``max_steps`` are kept (the rest counted in the trace's
``meta["truncated_steps"]``).
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError, OutputParseError
from ..lm.prompt import get_format
from ..lm.values import json_object
from ..signatures import FieldSpec, Signature, ensure_signature
from .predict import Predict, fitting_demos

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall

__all__ = ["PLAN_INSTRUCTIONS", "PLAN_MAX_TOKENS", "Plan", "parse_steps"]

PLAN_INSTRUCTIONS = ("Break the task into a few short, self-contained sub-questions that together "
                     "solve it, in the order they should be answered. Do not answer them. Write them "
                     'as a JSON list of strings, e.g. ["first sub-question", "second sub-question"].')
#: the default token limit of a plan: a few short sub-questions fit; a degenerate list stops early
PLAN_MAX_TOKENS = 192


def is_default_instructions(sig: Signature) -> bool:
    """True when the signature's instructions are the generated 'Given the fields ...' text."""
    return sig.instructions == Signature(sig.inputs, sig.outputs).instructions


def _list_field(sig: Signature) -> str | None:
    for f in sig.outputs:
        if typing.get_origin(f.annotation) in (list, tuple) or f.annotation in (list, tuple):
            return f.name
    return None


def _text_items(annotation: Any) -> bool:
    """Whether a list annotation holds text (``list[str]``, bare ``list``): what parse_steps reads."""
    args = typing.get_args(annotation)
    return not args or args[0] in (str, Any)


# --------------------------------------------------------------------------- reading a list

_MARKER = re.compile(r"^\s*(?:[-*\u2022+]\s+|\(?\d+[.):]\s*|\[\d+\]\s*|#\d+[.):]?\s+"
                     r"|(?:step|sub-?question|question)\s*\d+\s*[.):-]\s*)", re.IGNORECASE)
_EDGE = " \t\r\n,;[]\"'`"
_FILLER = re.compile(r"^[\s.\u2026,;:!?\-_*]*$")  # "...", "…", ",", "-": no content


def clean_item(value: Any) -> str:
    """One list item as clean text: scalars as text; no surrounding brackets, quotes, commas,
    list markers ("1.", "-", "[2]") or whitespace; "" when nothing is left."""
    if isinstance(value, dict):
        texts = [v for v in value.values() if isinstance(v, str)]
        value = texts[0] if len(texts) == 1 else json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        value = " ".join(clean_item(v) for v in value)
    elif value is None:
        return ""
    text = str(value)
    for _ in range(3):  # markers inside quotes inside brackets: peel a few layers
        text = _MARKER.sub("", text.strip()).strip(_EDGE)
    return "" if _FILLER.match(text) else text


def _bracket_items(text: str) -> tuple[list[str], bool, str]:
    """The items of a JSON-like list starting at ``text[0] == "["``: (raw items, closed?, text after).

    Commas split items only outside strings and nested brackets, so ``["a, b", "c"]`` is two
    items; a list cut off by the token limit is read up to where it stops (its unfinished last
    item is dropped when an earlier one exists).
    """
    items: list[str] = []
    depth, in_str, escaped, start = 0, False, False, 1
    for i in range(1, len(text)):
        ch = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
        elif ch in "}]":
            if depth == 0:
                items.append(text[start:i])
                return items, True, text[i + 1:]
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    last = text[start:]
    if (last.strip() and not (in_str or depth)) or not items:
        items.append(last)  # a complete last item, or the only (partial) one
    return items, False, ""


def _decode(raw: str) -> Any:
    raw = raw.strip()
    try:
        return json.loads(raw, strict=False)
    except json.JSONDecodeError:
        return raw


def _strip_label(text: str, labels: tuple[str, ...]) -> str:
    for label in labels:
        m = re.match(rf"\s*[*#]*\s*{re.escape(label)}\s*[*]*\s*:\s*[*]*", text, re.IGNORECASE)
        if m:
            return text[m.end():]
    return text


def parse_steps(text: str, field: str = "steps", label: str | None = None, *, cut_off: bool = False) -> list[str]:
    """The list a model wrote, as clean non-empty strings, in order, without repeats.

    Reads a JSON object holding the list under ``field`` (complete or cut off), a JSON array
    (complete or cut off; ``[1, 2, 3`` gives "1", "2", "3"), or one item per line (numbered,
    bulleted or plain); a leading ``Steps:`` label (``label`` or ``field``) is skipped.
    ``cut_off``: the reply stopped at the token limit, so its last line / open list's last item
    is unfinished and dropped (unless it is the only one).
    """
    body = text.strip()
    if body.startswith("```"):
        body = re.sub(r"^```[a-zA-Z]*\n?|```\s*$", "", body).strip()
    body = _strip_label(body, tuple(x for x in (label, field) if x)).strip()
    raw: list[Any] | None = None
    if body.startswith("{"):
        try:
            data = json.loads(body, strict=False)
        except json.JSONDecodeError:  # cut off: read the list itself, up to where it stops
            start = re.search(rf'"{re.escape(field)}"\s*:\s*(?=\[)', body) or re.search(r":\s*(?=\[)", body)
            data = None if start else json_object(body)
            if start:
                body = body[start.end():]
        if isinstance(data, dict):
            value = data.get(field)
            if not isinstance(value, list):
                lists = [v for v in data.values() if isinstance(v, list)]
                value = lists[0] if len(lists) == 1 else value
            if isinstance(value, list):
                raw = value
            elif isinstance(value, str):
                body = value  # the list written as one string: read its lines below
    if raw is None and body.startswith("["):
        items, closed, after = _bracket_items(body)
        if not (closed and after.strip()):  # "[1] first\n[2] second" is a numbered list, not JSON
            raw = [_decode(x) for x in items]
            if cut_off and not closed and len(raw) > 1 and not items[-1].strip().startswith('"'):
                raw = raw[:-1]  # an unquoted last item may be cut inside (a quoted one was closed)
    if raw is None:
        lines = [ln for ln in body.splitlines() if ln.strip()]
        # "Here are the sub-questions:" above the list is a heading, not a step
        raw = [ln for ln in lines if not ln.rstrip().endswith(":")] if len(lines) > 1 else lines
        if cut_off and len(raw) > 1:
            raw = raw[:-1]
    out: list[str] = []
    seen: set[str] = set()
    for value in raw:
        item = clean_item(value)
        key = item.casefold()
        if item and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def steps_schema(schema: Mapping[str, Any], field: str, max_steps: int) -> dict[str, Any]:
    """``schema`` (a request's output schema) with the list bounded: 1..max_steps non-empty strings."""
    props = dict(schema.get("properties", {}))
    props[field] = {"type": "array", "items": {"type": "string", "minLength": 1},
                    "minItems": 1, "maxItems": max_steps}
    return {**schema, "properties": props}


# --------------------------------------------------------------------------- the module

class Plan(Predict):
    """Decompose a task: ``task -> steps: list[str]``, at most ``max_steps`` items.

    ``format="auto"`` means ``json`` (a schema-constrained list, see the module docstring).
    """

    kind = "plan"
    config_model = "PlanConfig"
    tunable = (*Predict.tunable, "max_steps")

    def __init__(self, signature: str | Signature | type[Signature] = "task -> steps: list[str]", *,
                 max_steps: int = 5, instructions: str | None = None, max_tokens: int = PLAN_MAX_TOKENS,
                 types: Mapping[str, Any] | None = None, **predict_kwargs: Any) -> None:
        sig = ensure_signature(signature, types=dict(types or {}))
        if instructions is None and is_default_instructions(sig):
            instructions = PLAN_INSTRUCTIONS
        self.max_steps = max_steps
        super().__init__(sig, instructions=instructions, types=types, max_tokens=max_tokens, **predict_kwargs)

    def _check(self) -> None:
        super()._check()
        if self.steps_field is None:
            raise DefinitionError(f"Plan needs a list output, got {self.base_signature.shorthand()!r}",
                                  fix="declare one, e.g. 'task -> steps: list[str]'.")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise DefinitionError(f"max_steps must be a positive integer, got {self.max_steps!r}",
                                  fix="pass max_steps=5 (or another positive integer).")

    @property
    def steps_field(self) -> str | None:
        """The list output that is truncated (the first list-typed output)."""
        return _list_field(self.base_signature)

    def _reads_steps_itself(self) -> bool:
        """One text-list output in generate mode: the plan's own request and list reader."""
        sig = self.signature
        return len(sig.outputs) == 1 and _text_items(sig.outputs[0].annotation) and self.decode == "generate"

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        name = self.steps_field
        assert name is not None
        if self._reads_steps_itself():
            steps = await self._plan(inputs, call)
            out: dict[str, Any] = {name: steps}
        else:  # extra outputs or typed items: the Predict call, then the items cleaned
            out = await super().forward(inputs, call)
            items = out[name] or []
            steps = [s for s in (clean_item(x) if isinstance(x, str) else x for x in items) if s != ""]
        if len(steps) > self.max_steps:
            call.trace.meta["truncated_steps"] = len(steps) - self.max_steps
        out[name] = steps[: self.max_steps]
        return out

    def _request_format(self) -> str:
        return "json" if self.format == "auto" else self.format

    async def _plan(self, inputs: dict[str, Any], call: NodeCall) -> list[str]:
        """Render, call, read the list; one repair call when the reply holds no item."""
        sig = self.signature
        field: FieldSpec = sig.outputs[0]
        fmt_name = self._request_format()
        fmt = get_format(fmt_name)
        call.trace.format = fmt_name

        async def send(shown: tuple[Mapping[str, Any], ...]) -> tuple[Any, Any, Any]:
            request = self._bounded(fmt.render(sig, self.instructions, shown, inputs,
                                               temperature=self.temperature, max_tokens=self.max_tokens,
                                               node=call.node), fmt_name)
            return request, *(await call.generate(request, lm=self.lm))

        request, resp, rec = await fitting_demos(call, self.demos, send)  # demos that fit the context
        steps = parse_steps(resp.text, field.name, field.label, cut_off=resp.finish_reason == "length")
        if steps:
            return steps
        error = OutputParseError(f"no {field.label.lower()} in the model output (expected a JSON list of "
                                 "strings)", field=field.name, raw=resp.text)
        rec.parse_error = str(error)
        if not self.repair:
            raise error.locate(call.node)
        second = self._bounded(fmt.repair(request, resp.text, error, sig), fmt_name)
        resp2, rec2 = await call.generate(second, lm=self.lm)
        steps = parse_steps(resp2.text, field.name, field.label, cut_off=resp2.finish_reason == "length")
        if steps:
            return steps
        rec2.parse_error = str(error)
        raise OutputParseError(str(error), field=field.name, raw=resp2.text).locate(call.node)

    def _bounded(self, request: Any, fmt_name: str) -> Any:
        """The request with the list bounded in its schema, and stopped at a repeated label."""
        sig = self.signature
        name = sig.outputs[0].name
        if request.json_schema is not None:
            request = request.replace(json_schema=steps_schema(request.json_schema, name, self.max_steps))
        if request.prompt is not None and fmt_name == "completion":
            # the prompt ends with "Steps:": the model writing a label again is a new, invented record
            extra = ["\n" + f.label + ":" for f in (*sig.inputs, *sig.outputs)]
            request = request.replace(stop=tuple(dict.fromkeys((*request.stop, *extra))))
        return request

    def max_items(self, field: str) -> int | None:
        return self.max_steps if field == self.steps_field else None

    def describe(self) -> str:
        extra = f", {len(self.demos)} demos" if self.demos else ""
        return f"Plan[{self.format}, max_steps={self.max_steps}{extra}]"
