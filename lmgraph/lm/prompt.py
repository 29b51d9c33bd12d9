"""Prompt formats: render (signature + instructions + demos + inputs) into a request, parse back.

Formats (a per-module parameter an optimizer may change):

* ``completion`` -- one raw text: instructions, then demos and the input as "Field: value" blocks;
  the prompt ends with the first output label and the model continues. Measured to help small
  local models most when demos are present.
* ``chat`` -- system message with instructions and the output format; demos as user/assistant
  turns; the reply is "Field: value" lines.
* ``json`` -- chat, but outputs are one JSON object constrained by the output schema
  (grammar-constrained on llama.cpp).
"""

from __future__ import annotations

import functools
import json
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from ..errors import OutputParseError
from ..signatures import FieldSpec, Signature, literal_options, type_to_str
from .base import LMRequest, Message
from .values import (
    close_json_object,
    coerce,
    extract_json,
    format_value,
    json_object,
    jsonable,
    norm_label,
    validate_value,
)

__all__ = ["FORMATS", "ChatFormat", "CompletionFormat", "JSONFormat", "PromptFormat", "coerce",
           "format_value", "get_format", "jsonable", "validate_value"]

FORMATS = ("chat", "completion", "json")

Demo = Mapping[str, Any]


# --------------------------------------------------------------------------- field docs

def _type_hint(f: FieldSpec) -> str:
    opts = literal_options(f.annotation)
    if opts is not None:
        return "one of: " + ", ".join(str(o) for o in opts)
    if f.annotation is str:
        return ""
    if f.annotation in (int, float):
        return "a number"
    if f.annotation is bool:
        return "yes or no"
    return f"JSON {type_to_str(f.annotation)}"


def _field_doc(f: FieldSpec, *, output: bool) -> str:
    bits = [b for b in (f.desc, _type_hint(f) if output else "") if b]
    return f"{f.label}: {'; '.join(bits)}" if bits else ""


@functools.lru_cache(maxsize=1024)
def _header(sig: Signature, instructions: str) -> str:
    docs = [d for d in ([_field_doc(f, output=False) for f in sig.inputs]
                        + [_field_doc(f, output=True) for f in sig.outputs]) if d]
    if docs:
        return instructions.strip() + "\n\n" + "\n".join(docs)
    return instructions.strip()


def _block(fields: Sequence[FieldSpec], values: Mapping[str, Any], *, as_input: bool) -> str:
    lines = []
    for f in fields:
        if not as_input and f.name not in values:  # an optional demo output (CoT reasoning)
            continue
        v = format_value(values[f.name], as_input=as_input)
        sep = "\n" if "\n" in v or (as_input and isinstance(values[f.name], (list, tuple))) else " "
        lines.append(f"{f.label}:{sep}{v}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- formats

class PromptFormat:
    name = "base"

    def render(self, sig: Signature, instructions: str, demos: Sequence[Demo],
               inputs: Mapping[str, Any], **params: Any) -> LMRequest:
        raise NotImplementedError

    def parse(self, sig: Signature, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def continuation(self, request: LMRequest, text: str, sig: Signature) -> tuple[LMRequest, str] | None:
        """When the output stopped before some fields, a request that continues it.

        Returns (request, prefix): :meth:`parse_continuation` reads ``prefix`` and the next
        completion. None when not applicable.
        """
        return None

    def parse_continuation(self, sig: Signature, prefix: str, text: str) -> dict[str, Any]:
        """Parse the answer to :meth:`continuation`'s request (by default: ``prefix + text``)."""
        return self.parse(sig, prefix + text)

    def repair(self, request: LMRequest, text: str, error: Exception, sig: Signature) -> LMRequest:
        """One follow-up request that shows the model its unparseable output and the rule."""
        wanted = ", ".join(f"'{f.label}:'" + (f" ({_type_hint(f)})" if _type_hint(f) else "")
                           for f in sig.outputs)
        note = f"The previous answer could not be read ({error}). Answer again, giving {wanted} each on its own line."
        if request.messages is not None:
            msgs = (*request.messages, Message(role="assistant", content=text),
                    Message(role="user", content=note))
            return request.replace(messages=msgs)
        assert request.prompt is not None  # an LMRequest has messages or a prompt
        return request.replace(prompt=request.prompt + text.rstrip() + "\n\n" + note + "\n"
                               + sig.outputs[0].label + ":")

    def parse_repair(self, sig: Signature, text: str) -> dict[str, Any]:
        """Parse the answer to :meth:`repair`'s request (by default like any answer)."""
        return self.parse(sig, text)


@functools.lru_cache(maxsize=512)
def label_plan(sig: Signature) -> tuple[re.Pattern[str], dict[str, str]]:
    """Per-signature regex matching any output label at a line start (cached: hot path)."""
    labels = {norm_label(f.label): f.name for f in sig.outputs}
    labels.update({norm_label(f.name): f.name for f in sig.outputs})
    pattern = re.compile(
        r"^[ \t*#]*(" + "|".join(re.escape(f.label) for f in sig.outputs)
        + "|" + "|".join(re.escape(f.name) for f in sig.outputs) + r")[ \t*]*:(?:[ \t]*\*\*)?[ \t]*",
        re.IGNORECASE | re.MULTILINE)
    return pattern, labels


def _split_labels(sig: Signature, text: str, first: FieldSpec | None) -> dict[str, str]:
    """Split "Label: value" sections. ``first`` = field whose label was prefilled."""
    pattern, labels = label_plan(sig)
    sections: dict[str, str] = {}
    pos = 0
    current = first.name if first is not None else None
    for m in pattern.finditer(text):
        # a blank section stays open: " Answer: Paris" after a prefilled "Answer:" repeats the label
        if current is not None and current not in sections and text[pos:m.start()].strip():
            sections[current] = text[pos:m.start()]
        name = labels[norm_label(m.group(1))]
        current = name if name not in sections else None
        pos = m.end()
    if current is not None and current not in sections:
        sections[current] = text[pos:]
    return {k: v.strip() for k, v in sections.items()}


def _chat_sections(sig: Signature, text: str) -> dict[str, str]:
    """Labelled sections of a chat answer; text before the first label stands for the first
    output when that one is free text and never labelled (a chat model that starts its
    reasoning straight away, as in ``"First, 3 + 4 = 7 ... Answer: 7"``)."""
    sections = _split_labels(sig, text, None)
    first = sig.outputs[0] if sig.outputs else None
    if first is None or len(sig.outputs) < 2 or first.name in sections or first.annotation is not str:
        return sections
    m = label_plan(sig)[0].search(text)
    lead = (text if m is None else text[:m.start()]).strip()
    return {first.name: lead, **sections} if lead else sections


def validated_output(f: FieldSpec, value: Any, text: str) -> Any:
    """A JSON value for output field ``f``, validated; OutputParseError names the field."""
    if f.annotation is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # {"answer": 42} for a text field
    try:
        return validate_value(value, f.annotation)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise OutputParseError(f"{where + ': ' if where else ''}{err['msg']}", field=f.name,
                               raw=text) from None
    except ValueError as e:
        raise OutputParseError(str(e).splitlines()[0], field=f.name, raw=text) from None


def _typed(sig: Signature, sections: Mapping[str, str], text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in sig.outputs:
        if f.name not in sections:
            if len(sig.outputs) == 1 and text.strip():
                data = json_object(text) if text.lstrip()[:1] in ("{", "`") else None
                if data is not None and f.name in data:
                    # a JSON answer ({"answer": ...}) in a label format: its value, not the syntax
                    out[f.name] = validated_output(f, data[f.name], text)
                    continue
                raw = text.strip()
            elif type(None) in typing.get_args(f.annotation):  # an Optional field may be left out
                out[f.name] = None
                continue
            else:
                raise OutputParseError(f"missing '{f.label}:' in the model output", field=f.name, raw=text)
        else:
            raw = sections[f.name]
        if f.annotation is str and not raw.strip():
            raise OutputParseError(f"'{f.label}:' is empty in the model output", field=f.name, raw=text)
        try:
            out[f.name] = coerce(raw, f.annotation)
        except ValueError as e:
            raise OutputParseError(str(e), field=f.name, raw=text) from None
    return out


class CompletionFormat(PromptFormat):
    name = "completion"

    def render(self, sig: Signature, instructions: str, demos: Sequence[Demo],
               inputs: Mapping[str, Any], **params: Any) -> LMRequest:
        parts = [_header(sig, instructions)]
        for d in demos:
            parts.append(_block(sig.inputs, d, as_input=True) + "\n" + _block(sig.outputs, d, as_input=False))
        parts.append(_block(sig.inputs, inputs, as_input=True) + "\n" + sig.outputs[0].label + ":")
        stop = ["\n\n"]
        if sig.inputs:
            stop.append("\n" + sig.inputs[0].label + ":")
        return LMRequest(prompt="\n\n".join(parts), stop=tuple(stop), **params)

    def parse(self, sig: Signature, text: str) -> dict[str, Any]:
        return _typed(sig, _split_labels(sig, text, sig.outputs[0]), text)

    def continuation(self, request: LMRequest, text: str, sig: Signature) -> tuple[LMRequest, str] | None:
        # Small models often write the first field (e.g. the reasoning) and stop. Rather than a
        # repair note, append the next missing label to the prompt and let the model go on.
        if request.prompt is None or not text.strip():
            return None
        sections = _split_labels(sig, text, sig.outputs[0])
        missing = [f for f in sig.outputs if f.name not in sections]
        if not missing or len(missing) == len(sig.outputs):
            return None
        prefix = text.rstrip() + "\n" + missing[0].label + ":"
        return request.replace(prompt=request.prompt + prefix), prefix

    def repair(self, request: LMRequest, text: str, error: Exception, sig: Signature) -> LMRequest:
        """Ask again for a JSON object under the output schema (a grammar, in-process): a small
        model that missed the label layout cannot miss again (see :meth:`ChatFormat.repair`)."""
        assert request.prompt is not None
        keys = ", ".join(f'"{f.name}"' for f in sig.outputs)
        note = (f"The previous answer could not be read ({error}). The answer as one JSON object "
                f"with the keys {keys}:")
        return request.replace(prompt=request.prompt + text.rstrip() + "\n\n" + note + "\n", stop=(),
                               json_schema=_output_schema(sig),
                               max_tokens=request.max_tokens + 12 * len(sig.outputs))

    def parse_repair(self, sig: Signature, text: str) -> dict[str, Any]:
        return _parse_json_or_labels(self, sig, text)


def _missing_after_written(sig: Signature, written: Mapping[str, Any]) -> list[FieldSpec] | None:
    """The outputs a reply stopped before: the later ones, when the leading ones were written. None
    when nothing was written, nothing is missing, or a written field follows a missing one (a
    reply that is not a cut-off prefix: the ordinary repair's case)."""
    present = [f.name in written for f in sig.outputs]
    if not any(present) or all(present) or present.index(False) < sum(present):
        return None
    return [f for f in sig.outputs if f.name not in written]


@functools.lru_cache(maxsize=1024)
def _chat_system(sig: Signature, instructions: str) -> str:
    return _header(sig, instructions) + "\n\nReply with " + ", then ".join(
        f"'{f.label}: ...'" for f in sig.outputs) + (", each on its own line." if len(sig.outputs) > 1 else ".")


class ChatFormat(PromptFormat):
    name = "chat"

    def render(self, sig: Signature, instructions: str, demos: Sequence[Demo],
               inputs: Mapping[str, Any], **params: Any) -> LMRequest:
        msgs = [Message(role="system", content=_chat_system(sig, instructions))]
        for d in demos:
            msgs.append(Message(role="user", content=_block(sig.inputs, d, as_input=True)))
            msgs.append(Message(role="assistant", content=_block(sig.outputs, d, as_input=False)))
        msgs.append(Message(role="user", content=_block(sig.inputs, inputs, as_input=True)))
        return LMRequest(messages=tuple(msgs), **params)

    def parse(self, sig: Signature, text: str) -> dict[str, Any]:
        return _typed(sig, _chat_sections(sig, text), text)

    def continuation(self, request: LMRequest, text: str, sig: Signature) -> tuple[LMRequest, str] | None:
        """Keep the leading fields the model wrote; ask only for the missing later ones.

        Small chat models asked for ``Reasoning: ... / Answer: ...`` often write their reasoning
        without any label and stop (or run out of tokens) before the answer. That text is the
        first field (see :func:`_chat_sections`); the follow-up shows it back as the assistant
        turn and asks for the missing fields alone: one field as ``Label: ...`` in plain text,
        several as one JSON object under their schema. A whole-object JSON repair instead makes
        the model rewrite its reasoning inside a JSON string, where SmolLM2-135M runs out of
        tokens; and a JSON-only follow-up for the answer got code and JSON fragments in the
        string (GSM8K, 20 validation rows: 0 correct; in plain text 1 correct, the replies
        mostly "The answer is N."). The prefix carries the kept fields as labelled text.
        """
        if request.messages is None or len(sig.outputs) < 2 or not text.strip():
            return None
        sections = _chat_sections(sig, text)
        missing = _missing_after_written(sig, sections)
        if missing is None:
            return None
        msgs = (*request.messages, Message(role="assistant", content=text))
        if len(missing) == 1:
            hint = _type_hint(missing[0])
            note = f"Now reply with only '{missing[0].label}: ...'" + (f" ({hint})." if hint else ".")
            req = request.replace(messages=(*msgs, Message(role="user", content=note)))
        else:
            keys = ", ".join(f'"{f.name}"' for f in missing)
            note = f"Now reply with only one JSON object with the keys {keys}."
            rest = Signature(sig.inputs, missing, sig.instructions)
            req = request.replace(messages=(*msgs, Message(role="user", content=note)),
                                  json_schema=_output_schema(rest), max_tokens=request.max_tokens + 12 * len(missing))
        prefix = "\n".join(f"{f.label}: {sections[f.name]}" for f in sig.outputs if f.name in sections)
        return req, prefix

    def parse_continuation(self, sig: Signature, prefix: str, text: str) -> dict[str, Any]:
        sections = _split_labels(sig, prefix, None)
        kept = [f for f in sig.outputs if f.name in sections]
        rest = [f for f in sig.outputs if f.name not in sections]
        out = _typed(Signature(sig.inputs, kept, sig.instructions), sections, prefix)
        out.update(_parse_json_or_labels(self, Signature(sig.inputs, rest, sig.instructions), text))
        return {f.name: out[f.name] for f in sig.outputs}

    def repair(self, request: LMRequest, text: str, error: Exception, sig: Signature) -> LMRequest:
        """Ask again for a JSON object, with the output schema attached (``json_schema``).

        Servers with structured outputs (llama.cpp's grammar, vLLM, OpenAI) then cannot answer
        with anything unreadable -- what rescues small models that ignore the label layout. A
        backend that ignores the schema may still answer with labels: :meth:`parse_repair`
        reads both.
        """
        assert request.messages is not None
        keys = ", ".join(f'"{f.name}"' for f in sig.outputs)
        note = (f"The previous answer could not be read ({error}). Reply with only one JSON object "
                f"with the keys {keys}.")
        return request.replace(messages=(*request.messages, Message(role="assistant", content=text),
                                         Message(role="user", content=note)),
                               json_schema=_output_schema(sig),
                               max_tokens=request.max_tokens + 12 * len(sig.outputs))

    def parse_repair(self, sig: Signature, text: str) -> dict[str, Any]:
        return _parse_json_or_labels(self, sig, text)


@functools.lru_cache(maxsize=512)
def _output_schema(sig: Signature) -> dict[str, Any]:
    return sig.output_json_schema()


def _parse_json_or_labels(fmt: PromptFormat, sig: Signature, text: str) -> dict[str, Any]:
    """A repair answer: JSON (as asked), else the format's own labels (a backend that ignored
    the schema). When neither reads, the more telling error is raised."""
    try:
        return _FORMATS["json"].parse(sig, text)
    except OutputParseError as json_error:
        try:
            return fmt.parse(sig, text)
        except OutputParseError as label_error:
            # no JSON at all: the label reading names the missing field; else JSON's complaint
            raise (label_error if json_error.field is None else json_error) from None


class JSONFormat(PromptFormat):
    name = "json"

    def render(self, sig: Signature, instructions: str, demos: Sequence[Demo],
               inputs: Mapping[str, Any], **params: Any) -> LMRequest:
        keys = ", ".join(f'"{f.name}"' for f in sig.outputs)
        system = _header(sig, instructions) + f"\n\nReply with one JSON object with the keys {keys}."
        msgs = [Message(role="system", content=system)]
        for d in demos:
            msgs.append(Message(role="user", content=_block(sig.inputs, d, as_input=True)))
            msgs.append(Message(role="assistant", content=json.dumps(
                {f.name: jsonable(d[f.name]) for f in sig.outputs if f.name in d}, ensure_ascii=False)))
        msgs.append(Message(role="user", content=_block(sig.inputs, inputs, as_input=True)))
        # the JSON syntax itself costs tokens: allow ~12 per key on top of the value budget
        params["max_tokens"] = params.get("max_tokens", 256) + 12 * len(sig.outputs)
        return LMRequest(messages=tuple(msgs), json_schema=_output_schema(sig), **params)

    def parse(self, sig: Signature, text: str) -> dict[str, Any]:
        try:
            data = extract_json(text)
        except ValueError:
            data = close_json_object(text)  # cut off by max_tokens: keep what was written
            if data is None:
                raise OutputParseError("the output is not JSON", raw=text) from None
        if not isinstance(data, dict):
            raise OutputParseError("expected a JSON object", raw=text)
        out = {}
        for f in sig.outputs:
            if f.name not in data:
                raise OutputParseError(f"missing key {f.name!r}", field=f.name, raw=text)
            out[f.name] = validated_output(f, data[f.name], text)
        return out

    def continuation(self, request: LMRequest, text: str, sig: Signature) -> tuple[LMRequest, str] | None:
        """An object cut off by ``max_tokens`` before its later keys: keep the leading fields it
        has, ask for the missing ones alone.

        A chain-of-thought object (``{"reasoning": ..., "answer": ...}``) is where this happens: a
        small model's reasoning runs past the token limit inside the JSON string, and the object
        never reaches ``"answer"`` (GSM8K, SmolLM2-135M in-process, JSON format: 5 of 30 validation
        rows; ``benchmarks/results/cot_followup/``). A repair that asks for the whole object again
        makes the model rewrite the same reasoning and run out again; this follow-up shows the kept
        fields back as the assistant's (closed) object and asks for one JSON object with the missing
        keys under their schema, so the grammar still guarantees a readable answer. The prefix is
        the kept object as JSON.
        """
        if request.messages is None or len(sig.outputs) < 2:
            return None
        try:
            extract_json(text)
            return None  # a complete object: missing keys are a repair's business
        except ValueError:
            data = close_json_object(text)
        if not isinstance(data, dict):
            return None
        missing = _missing_after_written(sig, data)
        if missing is None:
            return None
        kept = {f.name: data[f.name] for f in sig.outputs if f.name in data}
        prefix = json.dumps(kept, ensure_ascii=False)
        keys = ", ".join(f'"{f.name}"' for f in missing)
        note = f"Now reply with only one JSON object with the keys {keys}."
        rest = Signature(sig.inputs, missing, sig.instructions)
        msgs = (*request.messages, Message(role="assistant", content=prefix), Message(role="user", content=note))
        return request.replace(messages=msgs, json_schema=_output_schema(rest)), prefix

    def parse_continuation(self, sig: Signature, prefix: str, text: str) -> dict[str, Any]:
        kept = json_object(prefix)
        if kept is None:
            raise OutputParseError("the kept fields are not a JSON object", raw=prefix)
        rest = [f for f in sig.outputs if f.name not in kept]
        out = {f.name: validated_output(f, kept[f.name], prefix) for f in sig.outputs if f.name in kept}
        out.update(self.parse(Signature(sig.inputs, rest, sig.instructions), text))
        return {f.name: out[f.name] for f in sig.outputs}

    def repair(self, request: LMRequest, text: str, error: Exception, sig: Signature) -> LMRequest:
        assert request.messages is not None
        note = f"The previous answer was not valid ({error}). Reply with only the JSON object."
        return request.replace(messages=(*request.messages, Message(role="assistant", content=text),
                                         Message(role="user", content=note)))


_FORMATS: dict[str, PromptFormat] = {f.name: f for f in (CompletionFormat(), ChatFormat(), JSONFormat())}


def get_format(name: str) -> PromptFormat:
    try:
        return _FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; choose one of {', '.join(FORMATS)}") from None
