"""The async executor: run ready nodes concurrently, trace everything, fail loudly per node.

One async core (:func:`execute`, :func:`execute_batch`); the sync entry points in
:mod:`lmgraph.pipeline.program` are thin wrappers over it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..context import RunContext
from ..errors import DefinitionError, InputError, LmgraphError, RunError
from ..lm.base import LMRequest, LMResponse
from ..lm.values import invalid_reason, validate_strict
from ..observe import RunHooks, run_hooks
from ..signatures import type_to_str
from .ir import INPUT, Const, Node
from .trace import CallRecord, NodeTrace, Trace

if TYPE_CHECKING:
    from ..modules.base import Module
    from ..signatures import Signature
    from .program import Program


class Prediction(dict[str, Any]):
    """A run's outputs: a dict whose fields are also attributes, plus the run's :class:`Trace`.

    Outputs come first and are never shadowed: ``pred.x`` and ``pred["x"]`` return the output
    ``x`` even when it is called ``items``, ``keys``, ``get``, ``copy`` or ``trace`` (the dict
    methods of the same name then give way on that prediction; ``dict(pred)`` always works).
    The trace: ``pred.trace`` when no output is called ``trace``; :func:`trace_of` always.
    """

    __slots__ = ("_trace",)

    def __init__(self, outputs: Any = (), trace: Trace | None = None) -> None:
        dict.__init__(self, outputs)
        self._trace = trace

    def __getattribute__(self, name: str) -> Any:
        if name[:1] != "_" and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return object.__getattribute__(self, name)

    def __getattr__(self, name: str) -> Any:  # neither an output nor an attribute
        if name.startswith("_") and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        raise AttributeError(f"prediction has no field {name!r}; fields: {', '.join(dict.__iter__(self))}")

    @property
    def trace(self) -> Trace | None:
        """The run's trace (an output called ``trace`` shadows this: use :func:`trace_of`)."""
        return self._trace

    @trace.setter
    def trace(self, value: Trace | None) -> None:
        self._trace = value

    def __reduce__(self) -> tuple[Any, ...]:  # copy/pickle without calling the (shadowable) .items()
        return (Prediction, (dict(self), self._trace))


def trace_of(obj: Any) -> Trace | None:
    """The trace of a :class:`Prediction` (whatever its outputs are called), a batch
    :class:`Result` or a failed run's error; None when it has none."""
    if isinstance(obj, Prediction):
        return obj._trace
    if isinstance(obj, Result):
        return obj.trace
    return getattr(obj, "trace", None) if isinstance(obj, BaseException) else None


class NodeCall:
    """The executor's handle given to ``Module.forward``: model access, tracing, sub-runs.

    ``hooks`` (None unless the run is streamed or observed, see :mod:`lmgraph.observe`) receive
    the node's model and tool calls."""

    __slots__ = ("ctx", "hooks", "module", "node", "trace")

    def __init__(self, node: str, module: Module, ctx: RunContext, trace: NodeTrace,
                 hooks: RunHooks | None = None) -> None:
        self.node = node
        self.module = module
        self.ctx = ctx
        self.trace = trace
        self.hooks = hooks

    @property
    def streaming(self) -> bool:
        """Whether this run streams events (:meth:`stream_generate` then streams the call)."""
        return self.hooks is not None and self.hooks.emit is not None

    def lm(self, name: str | None = None) -> tuple[Any, str]:
        """(model stack, preferred format) for ``name`` (default: the module's ``lm``)."""
        return self.ctx.lm_for(name if name is not None else getattr(self.module, "lm", None))

    def prepare(self, request: LMRequest) -> LMRequest:
        """The request as it is sent: tagged with the node and the context's rollout, with the
        node's cache opt-out applied (shared with :mod:`lmgraph.pipeline.preview`)."""
        ctx_rollout = self.ctx.rollout
        if ctx_rollout or request.node is None:
            request = request.replace(node=self.node, rollout=request.rollout + ctx_rollout)
        if request.use_cache and getattr(self.module, "cache", True) is False:
            request = request.replace(use_cache=False)  # the node opted out of caching
        return request

    def record(self, request: LMRequest, format: str | None = None) -> CallRecord:
        """Add a call to the node's trace. Its format: ``format``, else the one the module
        resolved for this call (modules set ``trace.format`` just before calling), else the
        request's shape."""
        rec = CallRecord(request, format=format or self.trace.format or request.mode)
        self.trace.calls.append(rec)
        return rec

    async def generate(self, request: LMRequest, *, lm: str | None = None,
                       format: str | None = None) -> tuple[LMResponse, CallRecord]:
        """Make one model call through the context's stack and record it in the trace."""
        stack, _ = self.lm(lm)
        request = self.prepare(request)
        rec = self.record(request, format)
        if self.hooks is None:
            return await self._call(stack, request, rec, None), rec
        with self.hooks.model_call(self.node, rec, stack):
            return await self._call(stack, request, rec, None), rec

    async def stream_generate(self, request: LMRequest, sig: Signature, *, lm: str | None = None,
                              format: str | None = None) -> tuple[LMResponse, CallRecord]:
        """:meth:`generate`, with the reply streamed to the run's events as ``sig``'s output fields
        (:mod:`lmgraph.pipeline.stream`) when the run is streamed; else the same as generate."""
        hooks = self.hooks
        if hooks is None or hooks.emit is None:  # not streamed (self.streaming is False)
            return await self.generate(request, lm=lm, format=format)
        stack, _ = self.lm(lm)
        request = self.prepare(request)
        rec = self.record(request, format)
        with hooks.model_call(self.node, rec, stack):
            return await self._call(stack, request, rec, sig), rec

    async def _streamed(self, stack: Any, request: LMRequest, sig: Signature, fmt: str | None) -> LMResponse:
        from contextlib import aclosing

        from ..lm.base import stream_of
        from .stream import reader_for

        emit = self.hooks.emit if self.hooks is not None else None
        assert emit is not None, "_streamed runs only for a streamed run (stream_generate checks)"
        reader = reader_for(fmt, self.node, sig)
        resp: LMResponse | None = None
        async with aclosing(stream_of(stack, request)) as chunks:
            async for item in chunks:
                if isinstance(item, LMResponse):
                    resp = item
                elif reader is not None:
                    for event in reader.feed(item):
                        emit(event)
        if resp is None:
            raise RuntimeError("the model's stream ended without its final response")
        if reader is not None:
            for event in reader.close(resp.text):
                emit(event)
        return resp

    async def _call(self, stack: Any, request: LMRequest, rec: CallRecord, sig: Signature | None) -> LMResponse:
        t0 = time.perf_counter()
        resp: LMResponse
        try:
            if sig is None:
                resp = await stack.complete(request)
            else:
                resp = await self._streamed(stack, request, sig, rec.format)
        except LmgraphError as e:
            rec.error = str(e)
            rec.latency_s = time.perf_counter() - t0
            if isinstance(e, RunError):
                e.locate(self.node)
            raise
        except Exception as e:  # backend bug or unexpected failure: keep the cause
            rec.error = f"{type(e).__name__}: {e}"
            rec.latency_s = time.perf_counter() - t0
            raise RunError(f"model call failed: {type(e).__name__}: {e}", node=self.node) from e
        rec.latency_s = time.perf_counter() - t0
        rec.response = resp
        return resp

    async def run_tool(self, name: str, args: Any, outcome: Awaitable[tuple[str, bool, str | None]]
                       ) -> tuple[str, bool, str | None]:
        """Await a tool call's ``(observation, ok, error)``, observed (a span) when the run is."""
        if self.hooks is None:
            return await outcome
        record: dict[str, Any] = {"tool": name, "args": args}
        with self.hooks.tool(self.node, record):
            got = await outcome
            record.update(observation=got[0], ok=got[1], error=got[2])
        return got

    async def run_program(self, program: Program, inputs: Mapping[str, Any]) -> Prediction:
        """Run a sub-program (Map and friends); its trace becomes a child of this node's."""
        try:
            pred = await execute(program, inputs, self.ctx, nested=True)
        except LmgraphError as e:  # keep the failed sub-run's trace too
            child = getattr(e, "trace", None)
            if child is not None:
                self.trace.children.append(child)
            raise
        if pred._trace is not None:
            self.trace.children.append(pred._trace)
        return pred


def check_inputs(program: Program, inputs: Mapping[str, Any], *, allow_missing: bool = False) -> dict[str, Any]:
    """Validate run inputs against the declared pipeline inputs (before any model call),
    strictly: pydantic's validation, none of the leniency model replies get.

    ``allow_missing``: leave missing inputs out instead of raising (a prompt preview shows them
    as placeholders)."""
    specs = program.input_specs
    extra = [k for k in inputs if k not in specs]
    if extra:
        raise InputError(f"unexpected input {extra[0]!r}; {program.name!r} takes: "
                         f"{', '.join(specs)}. Fix: pass only declared inputs.")
    out = {}
    for name, ann in specs.items():
        if name not in inputs:
            if allow_missing:
                continue
            raise InputError(f"missing input {name!r}; {program.name!r} takes: {', '.join(specs)}. "
                             f"Fix: pass {name}=... .")
        v = inputs[name]
        if ann is str and isinstance(v, str):
            out[name] = v
            continue
        try:
            out[name] = validate_strict(v, ann)
        except Exception as e:  # noqa: BLE001 - any validation failure reads the same
            raise InputError(f"input {name!r} is not valid: {program.name!r} takes a {type_to_str(ann)} "
                             f"({invalid_reason(e, v, ann)}). Fix: pass a value of type {type_to_str(ann)}; run "
                             "inputs are validated as given (no number is read out of text, a Literal takes "
                             "only its options).") from None
    return out


async def _run_node(node: Node, values: dict[str, dict[str, Any]], ctx: RunContext, trace: Trace,
                    hooks: RunHooks | None = None) -> None:
    kwargs = {f: (b.value if isinstance(b, Const) else values[b.node][b.field]) for f, b in node.bindings}
    nt = NodeTrace(node.name, node.module.kind, kwargs, started=time.time())
    trace.nodes.append(nt)
    if hooks is None:
        out = await _forward(node, kwargs, ctx, nt, None)
    else:
        with hooks.node(nt):
            out = await _forward(node, kwargs, ctx, nt, hooks)
    values[node.name] = dict(out)


async def _forward(node: Node, kwargs: dict[str, Any], ctx: RunContext, nt: NodeTrace,
                   hooks: RunHooks | None) -> Mapping[str, Any]:
    t0 = time.perf_counter()
    try:
        out = await node.module.forward(kwargs, NodeCall(node.name, node.module, ctx, nt, hooks))
        missing = [f for f in node.module.signature.output_names if not isinstance(out, Mapping) or f not in out]
        if missing:  # a module bug: fail here, naming it, not with a KeyError in a later node
            raise RunError(f"{type(node.module).__name__}.forward returned no value for output "
                           f"{missing[0]!r} (got {sorted(out) if isinstance(out, Mapping) else type(out).__name__})",
                           node=node.name)
    except RunError as e:
        e.locate(node.name)
        nt.error = f"{type(e).__name__}: {e}"
        raise
    except LmgraphError as e:
        nt.error = f"{type(e).__name__}: {e}"
        raise
    except asyncio.CancelledError:
        nt.error = "cancelled"
        raise
    except Exception as e:  # a bug in a tool or custom module: wrap, keep the cause
        nt.error = f"{type(e).__name__}: {e}"
        raise RunError(f"{type(e).__name__}: {e}", node=node.name) from e
    finally:
        nt.latency_s = time.perf_counter() - t0
    nt.outputs = dict(out)
    return out


async def execute(program: Program, inputs: Mapping[str, Any], ctx: RunContext, *,
                  events: Callable[[Any], None] | None = None, nested: bool = False) -> Prediction:
    """Run ``program`` once. Raises RunError (with ``.trace``) if any node fails.

    ``events`` receives the run's stream events (:mod:`lmgraph.pipeline.stream`); observers of
    the context (``RunContext(tracer=...)``, :func:`lmgraph.observe.enable_otel`) see the run,
    its nodes, model and tool calls; ``nested``: a sub-run of a node (no trace line of its own)."""
    trace = Trace(program.name, dict(inputs))
    hooks = run_hooks(ctx, events)
    if hooks is None:
        return await _execute(program, inputs, ctx, trace, None)
    with hooks.run(program, trace, nested=nested):
        return await _execute(program, inputs, ctx, trace, hooks)


async def _execute(program: Program, inputs: Mapping[str, Any], ctx: RunContext, trace: Trace,
                   hooks: RunHooks | None) -> Prediction:
    t0 = time.perf_counter()
    try:
        values: dict[str, dict[str, Any]] = {INPUT: check_inputs(program, inputs)}
        _check_models(program, ctx)
        await _schedule(program, values, ctx, trace, hooks)
        outputs = {name: values[ref.node][ref.field] for name, ref in program.output_refs}
    except BaseException as e:
        trace.error = f"{type(e).__name__}: {e}"
        trace.latency_s = time.perf_counter() - t0
        if isinstance(e, LmgraphError):
            e.trace = trace  # type: ignore[attr-defined]
        raise
    trace.outputs = outputs
    trace.latency_s = time.perf_counter() - t0
    return Prediction(outputs, trace)


def _check_models(program: Program, ctx: RunContext) -> None:
    """Fail before any model call when a node asks for a model the context does not name."""
    for node in program.nodes:
        name = getattr(node.module, "lm", None)
        if isinstance(name, str) and name not in ctx.lms:
            ctx.lm_for(name)  # raises DefinitionError naming the model and the fix


async def _schedule(program: Program, values: dict[str, dict[str, Any]], ctx: RunContext, trace: Trace,
                    hooks: RunHooks | None = None) -> None:
    nodes = program.node_map
    if program.is_chain:  # no two nodes can ever run together: skip task machinery
        for name in program.order:
            await _run_node(nodes[name], values, ctx, trace, hooks)
        return
    waiting = {n: len(deps) for n, deps in program.deps.items()}
    ready = [n for n in program.order if waiting[n] == 0]
    running: dict[asyncio.Task[None], str] = {}
    limit = ctx.max_parallel_nodes
    try:
        while ready or running:
            while ready and len(running) < limit:
                name = ready.pop(0)
                running[asyncio.ensure_future(_run_node(nodes[name], values, ctx, trace, hooks))] = name
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                name = running.pop(task)
                task.result()  # re-raises the node's error
                for child in program.dependents[name]:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        ready.append(child)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


class Result:
    """One example's outcome in a batch: outputs or the recorded error, plus the trace."""

    __slots__ = ("error", "index", "inputs", "outputs", "trace")

    def __init__(self, index: int, inputs: Mapping[str, Any], outputs: Prediction | None,
                 error: BaseException | None, trace: Trace | None) -> None:
        self.index = index
        self.inputs = inputs
        self.outputs = outputs
        self.error = error
        self.trace = trace

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        state = f"outputs={dict(self.outputs or {})!r}" if self.ok else f"error={self.error!r}"
        return f"Result(#{self.index}, {state})"


async def execute_batch(program: Program, rows: Iterable[Mapping[str, Any]], ctx: RunContext, *,
                        concurrency: int = 8, progress: Any = False,
                        on_result: Callable[[Result], None] | None = None,
                        return_exceptions: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                        executor: Any = None) -> list[Result]:
    """Run many examples; a failing example is recorded in its Result, never raised.

    Row keys that are not pipeline inputs (labels, ids) are ignored. ``on_result(result)`` is
    called as each row finishes (in finishing order; ``result.index`` is the row's position);
    ``progress`` takes the settings of :mod:`lmgraph.progress` (True: a live bar on a terminal).
    ``executor`` (else ``ctx.executor``; None: this process) runs the rows (:mod:`lmgraph.executors`).
    """
    executor = executor if executor is not None else ctx.executor
    if executor is not None:
        from ..executors import as_executor

        return await as_executor(executor).run_batch(  # type: ignore[union-attr]
            program, list(rows), ctx, concurrency=concurrency, progress=progress, on_result=on_result,
            return_exceptions=return_exceptions)
    return await execute_batch_local(program, rows, ctx, concurrency=concurrency, progress=progress,
                                     on_result=on_result, return_exceptions=return_exceptions)


async def execute_batch_local(program: Program, rows: Iterable[Mapping[str, Any]], ctx: RunContext, *,
                              concurrency: int = 8, progress: Any = False,
                              on_result: Callable[[Result], None] | None = None,
                              return_exceptions: type[BaseException] | tuple[type[BaseException], ...] = Exception
                              ) -> list[Result]:
    """:func:`execute_batch` in this process (what :class:`lmgraph.executors.LocalExecutor` runs)."""
    rows = list(rows)
    names = program.input_specs
    results: list[Result | None] = [None] * len(rows)
    bar = None
    if progress is not False and progress is not None:
        from ..progress import row_progress

        bar = row_progress(progress, total=len(rows), label=program.name)
    # ``concurrency`` workers take the next row as they finish one: no task (or semaphore wake-up)
    # per row, and rows answered without waiting (cache hits) run back to back.
    pending = iter(range(len(rows)))

    async def worker() -> None:
        for i in pending:
            row = rows[i]
            inputs = {k: row[k] for k in names if k in row} if isinstance(row, Mapping) else row
            try:
                pred = await execute(program, inputs, ctx)
                results[i] = Result(i, inputs, pred, None, pred._trace)
            except DefinitionError:  # a mistake in the program or context, the same for every row
                raise
            except return_exceptions as e:  # recorded, not raised
                results[i] = Result(i, inputs, None, e, getattr(e, "trace", None))
            if bar is not None:
                bar.row(results[i].ok)  # type: ignore[union-attr]
            if on_result is not None:
                on_result(results[i])  # type: ignore[arg-type]

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(max(1, concurrency), len(rows)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # on an error or cancellation, stop the other rows too
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if bar is not None:
            bar.close()
    return results  # type: ignore[return-value]
