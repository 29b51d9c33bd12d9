"""Streaming a run: typed events, in order, from ``program.stream(ctx, **inputs)``.

A streamed run is an ordinary run (:func:`lmgraph.pipeline.executor.execute`, one code path)
that also puts events on an :class:`asyncio.Queue`; :func:`stream_run` drains it:

* :class:`NodeStart` ``(node)`` -- a node began;
* :class:`TokenDelta` ``(node, field, text)`` -- text of an output field as the model writes it,
  from the main generation call of a Predict / ChainOfThought node in the ``completion`` or
  ``chat`` format (the "Field:" labels are taken out; the deltas of a field join to its text,
  leading and trailing whitespace left out). A repair or follow-up call does not stream: its
  values arrive with :class:`NodeEnd`. Deltas are a live reading of the reply; the values in
  :class:`NodeEnd` are the parsed ones, which differ when a follow-up call was needed or the
  reply was irregular (unlabelled text that a later label turns out to claim for its field);
* :class:`FieldComplete` ``(node, field, value)`` -- a typed output value of such a call in the
  ``json`` format, as soon as the JSON object has it (each top-level member is read the moment
  it is closed; members not read by then, when the call ends);
* :class:`NodeEnd` ``(node, outputs, error)`` -- the node's outputs (``error`` set instead when
  it failed);
* :class:`Final` ``(outputs, trace)`` -- the run's outputs and trace, last.

A failed run raises its error (a :class:`~lmgraph.errors.RunError` with ``.trace``) after the
events that led to it. Events of nodes running side by side interleave; each node's own events
keep their order. Sub-runs (a Map's items, a Route's branch) are not streamed: their node's
:class:`NodeEnd` carries the result. Every event has ``to_dict()`` (JSON-able, with ``"event"``
naming its type), e.g. for server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import OutputParseError
from ..lm.prompt import get_format, label_plan, validated_output
from ..lm.values import jsonable, norm_label
from ..signatures import Signature

if TYPE_CHECKING:
    from .program import Program
    from .trace import Trace

__all__ = ["Event", "FieldComplete", "Final", "NodeEnd", "NodeStart", "TokenDelta", "stream_run"]


class Event:
    """Base of the stream's events."""

    event: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        data = {"event": self.event}
        data.update({k: jsonable(v) for k, v in self.__dict__.items()})
        return data


@dataclass(frozen=True)
class NodeStart(Event):
    node: str
    event: ClassVar[str] = "node_start"


@dataclass(frozen=True)
class TokenDelta(Event):
    node: str
    field: str
    text: str
    event: ClassVar[str] = "token"


@dataclass(frozen=True)
class FieldComplete(Event):
    node: str
    field: str
    value: Any
    event: ClassVar[str] = "field"


@dataclass(frozen=True)
class NodeEnd(Event):
    node: str
    outputs: dict[str, Any] | None
    error: str | None = None
    event: ClassVar[str] = "node_end"


@dataclass(frozen=True)
class Final(Event):
    outputs: dict[str, Any]
    trace: Trace | None = field(default=None, repr=False)
    event: ClassVar[str] = "final"

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "outputs": jsonable(self.outputs),
                "trace": self.trace.to_dict() if self.trace is not None else None}


# --------------------------------------------------------------------------- reading a call's text


_OPEN_TAIL = re.compile(r"[ \t]*\*?")  # what may still grow into a label's end (its "**", spaces)


class LabelSplitter:
    """Splits a ``completion``/``chat`` reply into per-field deltas as it streams.

    Reads labels as the format's parser does (a label starts a line; the text before the first
    one belongs to the first output, whose label ends a completion prompt). A line that may
    still turn into a label is held back until it can be told apart.
    """

    def __init__(self, node: str, sig: Signature) -> None:
        self.node = node
        self.pattern, self.labels = label_plan(sig)
        self.prefixes = sorted({norm_label(f.label) for f in sig.outputs} | {norm_label(f.name) for f in sig.outputs})
        self.buf = ""
        self.pos = 0
        self.current: str | None = sig.outputs[0].name if sig.outputs else None
        self.done: set[str] = set()
        self.started: set[str] = set()
        self.pending: dict[str, str] = {}

    def _emit(self, field: str | None, text: str, out: list[Event]) -> None:
        if field is None or not text:
            return
        if field not in self.started:
            text = text.lstrip()
        combined = self.pending.get(field, "") + text
        body = combined.rstrip()
        self.pending[field] = combined[len(body):]
        if body:
            self.started.add(field)
            out.append(TokenDelta(self.node, field, body))

    def _may_be_label(self, line: str) -> bool:
        t = norm_label(line.lstrip(" \t*#").rstrip(" \t*"))
        if not t:
            return True
        return any(p.startswith(t) or (t.startswith(p) and not t[len(p):].strip()) for p in self.prefixes)

    def _scan(self, out: list[Event], final: bool) -> None:
        held: int | None = None
        while True:
            m = self.pattern.search(self.buf, self.pos)
            if m is None:
                break
            if not final and _OPEN_TAIL.fullmatch(self.buf, m.end()):  # the label may go on ("Answer: **")
                held = m.start()
                break
            self._emit(self.current, self.buf[self.pos:m.start()], out)
            if self.current is not None and self.current in self.started:
                self.done.add(self.current)
            name = self.labels[norm_label(m.group(1))]
            self.current = name if name not in self.done else None
            self.pos = m.end()
        end = len(self.buf)
        if held is not None:
            end = held
        elif not final:
            nl = self.buf.rfind("\n", max(self.pos - 1, 0))  # a line that starts at pos counts too
            line_start = nl + 1 if nl >= 0 else (0 if self.pos == 0 else None)
            if line_start is not None and self._may_be_label(self.buf[line_start:]):
                end = line_start
        if end > self.pos:
            self._emit(self.current, self.buf[self.pos:end], out)
            self.pos = end

    def feed(self, delta: str) -> list[Event]:
        self.buf += delta
        out: list[Event] = []
        self._scan(out, final=False)
        return out

    def close(self, text: str) -> list[Event]:
        out: list[Event] = []
        self._scan(out, final=True)
        return out


class JsonFieldReader:
    """Reads the top-level members of a streamed JSON object as each one closes, and emits a
    :class:`FieldComplete` for each output field whose value validates."""

    def __init__(self, node: str, sig: Signature) -> None:
        self.node = node
        self.sig = sig
        self.fields = {f.name: f for f in sig.outputs}
        self.emitted: set[str] = set()
        self.buf = ""
        self.i = 0
        self.depth = 0
        self.in_str = False
        self.esc = False
        self.phase = "start"  # start | key | colon | value | end
        self.key_start = 0
        self.key: str | None = None
        self.value_start = 0

    def _finish(self, end: int, out: list[Event]) -> None:
        key, self.key = self.key, None
        f = self.fields.get(key or "")
        if f is None or f.name in self.emitted:
            return
        raw = self.buf[self.value_start:end].strip()
        try:
            value = validated_output(f, json.loads(raw, strict=False), raw)
        except (ValueError, OutputParseError):
            return
        self.emitted.add(f.name)
        out.append(FieldComplete(self.node, f.name, value))

    def feed(self, delta: str) -> list[Event]:
        self.buf += delta
        out: list[Event] = []
        buf = self.buf
        while self.i < len(buf) and self.phase != "end":
            c = buf[self.i]
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif c == "\\":
                    self.esc = True
                elif c == '"':
                    self.in_str = False
                    if self.phase == "key" and self.depth == 1:
                        try:
                            self.key = json.loads(buf[self.key_start:self.i + 1], strict=False)
                        except ValueError:
                            self.key = None
                        self.phase = "colon"
            elif self.phase == "start":
                if c == "{":
                    self.depth, self.phase = 1, "key"
            elif c == '"':
                self.in_str = True
                if self.phase == "key" and self.depth == 1:
                    self.key_start = self.i
            elif c == ":" and self.phase == "colon" and self.depth == 1:
                self.phase, self.value_start = "value", self.i + 1
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    if self.phase == "value":
                        self._finish(self.i, out)
                    self.phase = "end"
            elif c == "," and self.depth == 1 and self.phase == "value":
                self._finish(self.i, out)
                self.phase = "key"
            self.i += 1
        return out

    def close(self, text: str) -> list[Event]:
        """Fields the stream did not close: from the whole reply, when it parses."""
        try:
            values = get_format("json").parse(self.sig, text)
        except OutputParseError:
            return []
        out: list[Event] = []
        for name, value in values.items():
            if name not in self.emitted:
                self.emitted.add(name)
                out.append(FieldComplete(self.node, name, value))
        return out


def reader_for(fmt: str | None, node: str, sig: Signature) -> LabelSplitter | JsonFieldReader | None:
    """What turns a streamed call in format ``fmt`` into events (None: no events)."""
    if fmt in ("completion", "chat"):
        return LabelSplitter(node, sig)
    if fmt == "json":
        return JsonFieldReader(node, sig)
    return None


# --------------------------------------------------------------------------- the run


_DONE = object()


async def stream_run(program: Program, inputs: Mapping[str, Any], ctx: Any) -> AsyncGenerator[Event, None]:
    """Run ``program`` once, yielding its events as they happen, :class:`Final` last; a failed run
    raises its error after its events. Closing the iterator early cancels the run."""
    from .executor import execute

    queue: asyncio.Queue[Any] = asyncio.Queue()
    emit: Callable[[Event], None] = queue.put_nowait
    task = asyncio.ensure_future(execute(program, inputs, ctx, events=emit))
    task.add_done_callback(lambda _: queue.put_nowait(_DONE))
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            yield item
        pred = task.result()  # raises the run's error
        yield Final(dict(pred), pred.trace)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
