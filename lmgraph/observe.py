"""Observing runs: OpenTelemetry spans (GenAI semantic conventions) and JSONL trace files.

Off by default: a run with no observer pays one ``None`` check per run, node and call. Turn it
on per context, ``RunContext(tracer=...)``, with any of

* an OpenTelemetry ``Tracer`` or ``TracerProvider`` (extra ``[otel]``: ``opentelemetry-api`` and
  ``opentelemetry-sdk``, imported only then), or :class:`OTelObserver` for options;
* :class:`JsonlTraces` (``path``): one JSON line per run;
* a list of these; ``False`` opts a context out of the process-wide observer;

or for every run in the process, :func:`enable_otel` (``tracer_provider=None``: the global one
OpenTelemetry is configured with); :func:`disable_otel` turns it off.

Spans (names and attributes after the OpenTelemetry GenAI semantic conventions, v1.37+):

* a run: ``invoke_workflow {program}`` -- ``gen_ai.operation.name = "invoke_workflow"``,
  ``gen_ai.workflow.name``, the run's token usage, ``lmgraph.latency_s``, ``error.type``;
* a node: ``invoke_agent {node}`` (a Retrieve node: ``retrieval {node}``) -- ``gen_ai.agent.name``,
  ``lmgraph.node.kind``, ``lmgraph.node.format``, the node's usage (its sub-runs included);
* a model call: ``chat {model}`` / ``text_completion {model}`` (span kind CLIENT) --
  ``gen_ai.provider.name`` (``openai``, ``anthropic``, ... from a litellm model string;
  ``llama.cpp`` in process; ``openai`` for OpenAI-compatible servers), ``gen_ai.request.model``,
  ``gen_ai.request.max_tokens`` / ``temperature`` / ``top_p`` / ``seed`` / ``stop_sequences``,
  ``gen_ai.output.type`` (``json`` with a schema, else ``text``), ``gen_ai.response.model``,
  ``gen_ai.response.finish_reasons``, ``gen_ai.usage.input_tokens`` / ``output_tokens``,
  ``lmgraph.cached``, ``lmgraph.format``, ``lmgraph.latency_s``, ``lmgraph.cost_usd``, ``error.type``;
* a tool call (CallTool): ``execute_tool {tool}`` -- ``gen_ai.tool.name``, ``gen_ai.tool.type =
  "function"``, ``error.type`` when the tool failed.

Prompt and completion text are opt-in (``capture_content=True``, or the environment variable
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``): ``gen_ai.input.messages`` /
``gen_ai.output.messages`` (JSON, the conventions' message shape) and the tool's
``gen_ai.tool.call.arguments`` / ``gen_ai.tool.call.result``.

JSONL trace files (:class:`JsonlTraces`, ``--trace FILE`` on the command line): one JSON object
per top-level run (sub-runs are counted in their node), written when the run ends::

    {"schema": "lmgraph.trace/1", "program": "rag", "program_hash": "<sha256 or null>",
     "started": <unix seconds>, "latency_s": 0.52, "inputs": {...}, "outputs": {...} | null,
     "error": "RunError: ..." | null,
     "usage": {"calls": 2, "cache_hits": 0, "prompt_tokens": 120, "completion_tokens": 14},
     "cost": <dollars> | null,
     "nodes": [{"node": "answer", "kind": "chain_of_thought", "latency_s": 0.4, "error": null,
                "formats": ["completion"], "calls": 1, "cache_hits": 0, "prompt_tokens": 120,
                "completion_tokens": 14, "cost": null, "sub_runs": 0,
                "model_calls": [{"model": "...", "format": "completion", "latency_s": 0.39,
                                 "prompt_tokens": 120, "completion_tokens": 14, "cached": false,
                                 "cost": null, "finish_reason": "stop", "error": null,
                                 "parse_error": null}]}]}

A node's ``calls``/tokens/``cost`` include its sub-runs (a Map's items); ``model_calls`` lists its
own calls. With ``content=True`` every model call also has ``prompt`` / ``messages`` /
``completion``. :func:`read_traces` reads a file back, :func:`summarize` and
:func:`format_summary` give what ``lmgraph trace FILE`` prints: per node the calls, tokens, cost,
latency p50/p95 and failures.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DefinitionError

if TYPE_CHECKING:
    from .pipeline.trace import CallRecord, NodeTrace, Trace

__all__ = [
    "SCHEMA",
    "JsonlTraces",
    "OTelObserver",
    "Observer",
    "disable_otel",
    "enable_otel",
    "format_summary",
    "read_traces",
    "summarize",
    "trace_record",
]

SCHEMA = "lmgraph.trace/1"
OTEL_INSTALL = "pip install opentelemetry-api opentelemetry-sdk  (or: pip install 'lmgraph[otel]')"
_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


class Observer:
    """What sees a run: every hook is a context manager around the thing it observes, entered
    before it starts and left after its record (``Trace``, ``NodeTrace``, ``CallRecord``, the tool
    record) is complete. The base class observes nothing; subclass and override what you need."""

    def run(self, program: Any, trace: Trace, *, nested: bool) -> AbstractContextManager[Any]:
        return nullcontext()

    def node(self, nt: NodeTrace) -> AbstractContextManager[Any]:
        return nullcontext()

    def model_call(self, node: str, rec: CallRecord, lm: Any) -> AbstractContextManager[Any]:
        return nullcontext()

    def tool(self, node: str, record: dict[str, Any]) -> AbstractContextManager[Any]:
        return nullcontext()


# --------------------------------------------------------------------------- hooks (the executor's side)


class RunHooks:
    """One run's observers plus, for a streamed run, where its events go."""

    __slots__ = ("emit", "observers")

    def __init__(self, emit: Callable[[Any], None] | None, observers: Sequence[Observer]) -> None:
        self.emit = emit
        self.observers = tuple(observers)

    def _each(self, hook: str, *args: Any, **kwargs: Any) -> AbstractContextManager[Any]:
        if not self.observers:
            return nullcontext()
        if len(self.observers) == 1:
            one: AbstractContextManager[Any] = getattr(self.observers[0], hook)(*args, **kwargs)
            return one
        stack = ExitStack()
        for obs in self.observers:
            stack.enter_context(getattr(obs, hook)(*args, **kwargs))
        return stack

    def run(self, program: Any, trace: Trace, *, nested: bool) -> AbstractContextManager[Any]:
        return self._each("run", program, trace, nested=nested)

    @contextmanager
    def node(self, nt: NodeTrace) -> Iterator[None]:
        emit = self.emit
        if emit is not None:
            from .pipeline.stream import NodeStart

            emit(NodeStart(nt.node))
        try:
            with self._each("node", nt):
                yield
        finally:
            if emit is not None:
                from .pipeline.stream import NodeEnd

                ok = nt.error is None and nt.outputs is not None
                emit(NodeEnd(nt.node, dict(nt.outputs) if ok else None, nt.error))  # type: ignore[arg-type]

    def model_call(self, node: str, rec: CallRecord, lm: Any) -> AbstractContextManager[Any]:
        return self._each("model_call", node, rec, lm)

    def tool(self, node: str, record: dict[str, Any]) -> AbstractContextManager[Any]:
        return self._each("tool", node, record)


_GLOBAL: list[Observer] = []
_GLOBAL_LOCK = threading.Lock()


def _as_observer(obj: Any) -> Observer:
    if isinstance(obj, Observer):
        return obj
    if callable(getattr(obj, "start_as_current_span", None)):  # an OpenTelemetry Tracer
        return OTelObserver(obj)
    if callable(getattr(obj, "get_tracer", None)):  # a TracerProvider
        return OTelObserver(tracer_provider=obj)
    raise ConfigError(f"RunContext(tracer=...) got {type(obj).__name__} {obj!r}, which observes nothing",
                      field="tracer", fix="pass an OpenTelemetry Tracer or TracerProvider, "
                      "lmgraph.observe.JsonlTraces(path), an lmgraph.observe.Observer, or a list of these.")


def observers_of(tracer: Any) -> list[Observer]:
    """The observers ``RunContext(tracer=...)`` names (checked), the process-wide ones included
    unless ``tracer`` is False."""
    if tracer is False:
        return []
    out = list(_GLOBAL)
    if tracer is None or tracer is True:
        return out
    for item in (tracer if isinstance(tracer, (list, tuple)) else (tracer,)):
        out.append(_as_observer(item))
    return out


def check_tracer(tracer: Any) -> None:
    """Raise ConfigError unless ``tracer`` is something :func:`observers_of` understands."""
    observers_of(tracer)


def run_hooks(ctx: Any, events: Callable[[Any], None] | None) -> RunHooks | None:
    """The hooks of one run: None (the fast path) when nothing observes it and it is not streamed."""
    tracer = getattr(ctx, "tracer", None)
    if tracer is None and not _GLOBAL and events is None:
        return None
    observers = observers_of(tracer)
    if not observers and events is None:
        return None
    return RunHooks(events, observers)


def enable_otel(tracer_provider: Any = None, *, capture_content: bool | None = None) -> OTelObserver:
    """Trace every run in this process with OpenTelemetry (``tracer_provider=None``: the global
    provider); returns the observer. Replaces an earlier :func:`enable_otel`."""
    obs = OTelObserver(tracer_provider=tracer_provider, capture_content=capture_content)
    with _GLOBAL_LOCK:
        _GLOBAL[:] = [o for o in _GLOBAL if not isinstance(o, OTelObserver)] + [obs]
    return obs


def disable_otel() -> None:
    """Undo :func:`enable_otel`."""
    with _GLOBAL_LOCK:
        _GLOBAL[:] = [o for o in _GLOBAL if not isinstance(o, OTelObserver)]


# --------------------------------------------------------------------------- OpenTelemetry


def _import_otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise DefinitionError("OpenTelemetry tracing needs the optional package opentelemetry-api, which is not "
                              "installed.", fix=f"run `{OTEL_INSTALL}`.") from exc
    return trace


def provider_name(identity: Mapping[str, Any]) -> str:
    """``gen_ai.provider.name`` for a model identity: a litellm model's provider prefix
    (``anthropic/claude-...`` -> ``anthropic``), ``openai`` for OpenAI-compatible servers,
    ``llama.cpp`` in process, else the backend's name."""
    backend = str(identity.get("backend") or "unknown")
    if backend == "litellm":
        model = str(identity.get("model") or "")
        prefix = model.partition("/")[0] if "/" in model else ""
        return prefix or "litellm"
    if backend == "openai-http":
        return "openai"
    return backend


def _messages_json(rec: CallRecord) -> str:
    r = rec.request
    msgs = ([m.to_dict() for m in r.messages] if r.messages is not None
            else [{"role": "user", "content": r.prompt or ""}])
    return json.dumps([{"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]} for m in msgs],
                      ensure_ascii=False)


def _err_type(text: str | None) -> str | None:
    return text.partition(":")[0].strip() or "error" if text else None


class OTelObserver(Observer):
    """OpenTelemetry spans for runs, nodes, model calls and tool calls (see the module docstring).

    ``tracer`` (an OpenTelemetry ``Tracer``), else one from ``tracer_provider``, else from the
    global provider. ``capture_content``: record prompts, completions and tool arguments/results
    (default: the environment variable ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``)."""

    def __init__(self, tracer: Any = None, *, tracer_provider: Any = None,
                 capture_content: bool | None = None) -> None:
        otel = _import_otel()
        if tracer is None:
            provider = tracer_provider if tracer_provider is not None else otel.get_tracer_provider()
            from . import __version__

            tracer = provider.get_tracer("lmgraph", __version__)
        self.tracer = tracer
        self._kind = otel.SpanKind
        self._status = otel.Status
        self._code = otel.StatusCode
        if capture_content is None:
            capture_content = os.environ.get(_CONTENT_ENV, "").strip().lower() in ("1", "true", "yes")
        self.capture_content = bool(capture_content)

    def _span(self, name: str, attrs: dict[str, Any], client: bool = False) -> AbstractContextManager[Any]:
        span: AbstractContextManager[Any] = self.tracer.start_as_current_span(
            name, kind=self._kind.CLIENT if client else self._kind.INTERNAL,
            attributes={k: v for k, v in attrs.items() if v is not None})
        return span

    def _fail(self, span: Any, error: str | None, kind: str | None = None) -> None:
        if error:
            span.set_attribute("error.type", kind or _err_type(error) or "error")
            span.set_status(self._status(self._code.ERROR, error[:500]))

    @staticmethod
    def _usage(span: Any, usage: Mapping[str, int]) -> None:
        span.set_attribute("gen_ai.usage.input_tokens", int(usage.get("prompt_tokens", 0)))
        span.set_attribute("gen_ai.usage.output_tokens", int(usage.get("completion_tokens", 0)))
        span.set_attribute("lmgraph.calls", int(usage.get("calls", 0)))
        span.set_attribute("lmgraph.cache_hits", int(usage.get("cache_hits", 0)))

    @contextmanager
    def run(self, program: Any, trace: Trace, *, nested: bool) -> Iterator[None]:
        with self._span(f"invoke_workflow {program.name}",
                        {"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": program.name,
                         "lmgraph.nested": nested}) as span:
            try:
                yield
            finally:
                self._usage(span, trace.usage)
                span.set_attribute("lmgraph.latency_s", float(trace.latency_s))
                if trace.cost is not None:
                    span.set_attribute("lmgraph.cost_usd", float(trace.cost))
                self._fail(span, trace.error)

    @contextmanager
    def node(self, nt: NodeTrace) -> Iterator[None]:
        op = "retrieval" if nt.kind == "retrieve" else "invoke_agent"
        with self._span(f"{op} {nt.node}", {"gen_ai.operation.name": op, "gen_ai.agent.name": nt.node,
                                            "lmgraph.node.name": nt.node, "lmgraph.node.kind": nt.kind}) as span:
            try:
                yield
            finally:
                self._usage(span, nt.usage)
                span.set_attribute("lmgraph.latency_s", float(nt.latency_s))
                if nt.format:
                    span.set_attribute("lmgraph.node.format", nt.format)
                self._fail(span, nt.error)

    @contextmanager
    def model_call(self, node: str, rec: CallRecord, lm: Any) -> Iterator[None]:
        r = rec.request
        identity = lm.identity()
        model = str(identity.get("model") or "unknown")
        op = "chat" if r.messages is not None else "text_completion"
        attrs = {"gen_ai.operation.name": op, "gen_ai.provider.name": provider_name(identity),
                 "gen_ai.request.model": model, "gen_ai.request.max_tokens": int(r.max_tokens),
                 "gen_ai.request.temperature": float(r.temperature), "gen_ai.request.top_p": float(r.top_p),
                 "gen_ai.request.seed": int(r.sampling_seed),
                 "gen_ai.request.stop_sequences": list(r.stop) or None,
                 "gen_ai.output.type": "json" if r.json_schema is not None else "text",
                 "lmgraph.node.name": node, "lmgraph.format": rec.format}
        if r.choices is not None:
            attrs["lmgraph.scored_choices"] = list(r.choices)
        if self.capture_content:
            attrs["gen_ai.input.messages"] = _messages_json(rec)
        with self._span(f"{op} {model}", attrs, client=True) as span:
            kind: str | None = None
            try:
                yield
            except Exception as e:
                kind = type(e).__name__
                raise
            finally:
                resp = rec.response
                span.set_attribute("lmgraph.latency_s", float(rec.latency_s))
                if resp is not None:
                    if resp.model:
                        span.set_attribute("gen_ai.response.model", resp.model)
                    if resp.finish_reason:
                        span.set_attribute("gen_ai.response.finish_reasons", [resp.finish_reason])
                    span.set_attribute("gen_ai.usage.input_tokens", resp.usage.prompt_tokens)
                    span.set_attribute("gen_ai.usage.output_tokens", resp.usage.completion_tokens)
                    span.set_attribute("lmgraph.cached", bool(resp.cached))
                    if resp.cost is not None:
                        span.set_attribute("lmgraph.cost_usd", float(resp.cost))
                    if self.capture_content:
                        span.set_attribute("gen_ai.output.messages", json.dumps(
                            [{"role": "assistant", "parts": [{"type": "text", "content": resp.text}],
                              "finish_reason": resp.finish_reason or "stop"}], ensure_ascii=False))
                self._fail(span, rec.error, kind)

    @contextmanager
    def tool(self, node: str, record: dict[str, Any]) -> Iterator[None]:
        name = str(record.get("tool"))
        attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "gen_ai.tool.type": "function",
                 "lmgraph.node.name": node}
        if self.capture_content:
            attrs["gen_ai.tool.call.arguments"] = json.dumps(record.get("args"), ensure_ascii=False, default=str)
        with self._span(f"execute_tool {name}", attrs) as span:
            try:
                yield
            finally:
                if "ok" in record:
                    span.set_attribute("lmgraph.tool.ok", bool(record["ok"]))
                    if self.capture_content:
                        span.set_attribute("gen_ai.tool.call.result", str(record.get("observation")))
                    if not record["ok"]:
                        span.set_attribute("error.type", "ToolError")
                        span.set_status(self._status(self._code.ERROR, str(record.get("error") or "")[:500]))


# --------------------------------------------------------------------------- JSONL trace files


def _cost_of(nt: NodeTrace) -> float | None:
    costs = [c.response.cost for c in nt.calls if c.response is not None and c.response.cost is not None]
    costs += [x for x in (ch.cost for ch in nt.children) if x is not None]
    return sum(costs) if costs else None


def _call_record(rec: CallRecord, content: bool) -> dict[str, Any]:
    resp = rec.response
    out: dict[str, Any] = {
        "model": resp.model if resp is not None else None, "format": rec.format,
        "latency_s": round(rec.latency_s, 6),
        "prompt_tokens": resp.usage.prompt_tokens if resp is not None else 0,
        "completion_tokens": resp.usage.completion_tokens if resp is not None else 0,
        "cached": bool(resp is not None and resp.cached), "cost": resp.cost if resp is not None else None,
        "finish_reason": resp.finish_reason if resp is not None else None,
        "error": rec.error, "parse_error": rec.parse_error}
    if content:
        r = rec.request
        out["prompt"] = r.prompt
        out["messages"] = [m.to_dict() for m in r.messages] if r.messages is not None else None
        out["completion"] = resp.text if resp is not None else None
    return out


def trace_record(program: Any, trace: Trace, *, content: bool = False) -> dict[str, Any]:
    """One run as the JSON object a trace file holds (the schema is in the module docstring)."""
    from .lm.values import jsonable

    try:
        digest: str | None = program.content_hash()
    except Exception:  # noqa: BLE001 - a custom module that cannot be saved has no hash
        digest = None
    nodes = []
    for nt in trace.nodes:
        usage = nt.usage
        node: dict[str, Any] = {
            "node": nt.node, "kind": nt.kind, "latency_s": round(nt.latency_s, 6), "error": nt.error,
            "formats": nt.formats, **usage, "cost": _cost_of(nt), "sub_runs": len(nt.children),
            "model_calls": [_call_record(c, content) for c in nt.calls]}
        if content:
            node["inputs"], node["outputs"] = jsonable(nt.inputs), jsonable(nt.outputs)
        nodes.append(node)
    return {"schema": SCHEMA, "program": trace.program, "program_hash": digest, "started": trace.started,
            "latency_s": round(trace.latency_s, 6), "inputs": jsonable(trace.inputs),
            "outputs": jsonable(trace.outputs), "error": trace.error, "usage": trace.usage, "cost": trace.cost,
            "nodes": nodes}


class JsonlTraces(Observer):
    """Writes one JSON line per top-level run to ``path`` (schema: the module docstring), flushed
    as each run ends. ``mode="a"`` appends, ``"w"`` starts the file afresh; ``content=True`` adds
    prompts and completions. Safe to share between concurrent runs and threads."""

    def __init__(self, path: str | os.PathLike[str], *, content: bool = False, mode: str = "a") -> None:
        if mode not in ("a", "w"):
            raise ConfigError(f"JsonlTraces mode must be 'a' or 'w', got {mode!r}", field="mode",
                              fix="mode='a' appends to the file, mode='w' replaces it.")
        self.path = Path(path)
        self.content = content
        self._lock = threading.Lock()
        self._file = open(self.path, mode, encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.runs = 0

    @contextmanager
    def run(self, program: Any, trace: Trace, *, nested: bool) -> Iterator[None]:
        try:
            yield
        finally:
            if not nested:
                self.write(program, trace)

    def write(self, program: Any, trace: Trace) -> None:
        line = json.dumps(trace_record(program, trace, content=self.content), ensure_ascii=False, default=str)
        with self._lock:
            if self._file.closed:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._file.write(line + "\n")
            self._file.flush()
            self.runs += 1

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> JsonlTraces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JsonlTraces({str(self.path)!r})"


def read_traces(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The runs of a trace file; a line that is not a trace record is a DefinitionError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise DefinitionError(f"cannot read trace file {path}: {e.strerror or e}",
                              fix="pass a file written by --trace FILE (or JsonlTraces).") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DefinitionError(f"{path}:{i} is not valid JSON ({e.msg})",
                                  fix="pass a file written by --trace FILE (one JSON object per run).") from None
        if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
            raise DefinitionError(f"{path}:{i} is not an lmgraph trace record (no \"schema\": \"{SCHEMA}\")",
                                  fix="pass a file written by --trace FILE (or JsonlTraces).")
        out.append(rec)
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per program and per node: runs, failures, calls, cache hits, tokens, cost, latency p50/p95."""
    nodes: dict[str, dict[str, Any]] = {}
    lat: dict[str, list[float]] = {}
    run_lat: list[float] = []
    total: dict[str, Any] = {"runs": 0, "failed": 0, "calls": 0, "cache_hits": 0, "prompt_tokens": 0,
                             "completion_tokens": 0, "cost": None}
    programs: set[str] = set()
    for rec in records:
        programs.add(str(rec.get("program")))
        total["runs"] += 1
        total["failed"] += rec.get("error") is not None
        run_lat.append(float(rec.get("latency_s") or 0.0))
        for k in ("calls", "cache_hits", "prompt_tokens", "completion_tokens"):
            total[k] += int((rec.get("usage") or {}).get(k, 0))
        if rec.get("cost") is not None:
            total["cost"] = (total["cost"] or 0.0) + float(rec["cost"])
        for n in rec.get("nodes") or []:
            name = str(n.get("node"))
            e = nodes.setdefault(name, {"node": name, "kind": n.get("kind"), "runs": 0, "failures": 0,
                                        "calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                        "cost": None, "call_errors": 0, "parse_errors": 0})
            e["runs"] += 1
            e["failures"] += n.get("error") is not None
            for k in ("calls", "cache_hits", "prompt_tokens", "completion_tokens"):
                e[k] += int(n.get(k) or 0)
            if n.get("cost") is not None:
                e["cost"] = (e["cost"] or 0.0) + float(n["cost"])
            for c in n.get("model_calls") or []:
                e["call_errors"] += c.get("error") is not None
                e["parse_errors"] += c.get("parse_error") is not None
            lat.setdefault(name, []).append(float(n.get("latency_s") or 0.0))
    for name, e in nodes.items():
        e["latency_p50_s"], e["latency_p95_s"] = _pct(lat[name], 0.5), _pct(lat[name], 0.95)
    total["latency_p50_s"], total["latency_p95_s"] = _pct(run_lat, 0.5), _pct(run_lat, 0.95)
    return {"programs": sorted(programs), "total": total, "nodes": list(nodes.values())}


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a text table (what ``lmgraph trace FILE`` prints)."""
    t = summary["total"]

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}s"

    def money(v: float | None) -> str:
        return "-" if v is None else f"${v:.4f}"

    lines = [f"program: {', '.join(summary['programs']) or '-'}",
             f"runs: {t['runs']} ({t['failed']} failed); calls {t['calls']} (cache hits {t['cache_hits']}); "
             f"tokens {t['prompt_tokens']} in / {t['completion_tokens']} out; cost {money(t['cost'])}; "
             f"latency p50 {secs(t['latency_p50_s'])} p95 {secs(t['latency_p95_s'])}", ""]
    head = ("node", "kind", "runs", "calls", "cached", "tokens in", "tokens out", "cost", "p50", "p95", "failures")
    rows = [head]
    for n in summary["nodes"]:
        fails = str(n["failures"])
        extra = [f"{n['call_errors']} call errors" if n["call_errors"] else "",
                 f"{n['parse_errors']} unparsed" if n["parse_errors"] else ""]
        if any(extra):
            fails += " (" + ", ".join(x for x in extra if x) + ")"
        rows.append((n["node"], str(n["kind"]), str(n["runs"]), str(n["calls"]), str(n["cache_hits"]),
                     str(n["prompt_tokens"]), str(n["completion_tokens"]), money(n["cost"]),
                     secs(n["latency_p50_s"]), secs(n["latency_p95_s"]), fails))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)
