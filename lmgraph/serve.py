"""Serve a program over HTTP (optional extra ``[serve]``: Starlette + uvicorn).

``lmgraph.serve.app(program, ctx)`` is an ASGI application; mount it in your own app or run it
with uvicorn (``lmgraph serve PROGRAM.json`` does). Endpoints, LangServe-style:

* ``POST /invoke`` -- a JSON object of inputs -> ``{"outputs": {...}, "usage": {...}, "latency_s"}``;
  ``?trace=1`` adds ``"trace"`` (``Trace.to_dict()``).
* ``POST /batch`` -- a JSON list of input objects -> ``{"results": [...], "failed": n}``, one result
  per row in order (``{"index", "outputs"}`` or ``{"index", "error"}``); a failing row (bad input,
  a model error, a timeout) is recorded in its row and never fails the batch.
* ``POST /stream`` -- server-sent events from ``program.stream``: ``node_start``, ``token`` (text
  deltas of an output field as the model writes it), ``field`` (a JSON-format output as soon as it
  closes), ``node_end`` per node, then ``outputs`` (or ``error``, with the status ``/invoke`` would
  have answered).
* ``GET /schema`` -- JSON Schemas of the inputs and outputs; ``GET /health``; ``GET /openapi.json``
  and ``GET /docs`` (a self-contained page).

Bad input is a 422 naming the field (the program's own input validation). Each request gets its
own budget (``max_calls_per_request``) and deadline (``timeout_s``: 504 when it passes, the run is
cancelled). At most ``max_concurrency`` requests run at once; the next gets 429 with
``Retry-After`` at once, without queueing. Shutting down (uvicorn's SIGINT/SIGTERM) stops taking
connections and lets in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import RunContext
from .errors import BudgetExceeded, ConfigError, DefinitionError, InputError, LMError, LmgraphError, RunError
from .serve_http import bind_socket as _bind
from .serve_http import read_json, sse

if TYPE_CHECKING:
    from .pipeline.program import Program

__all__ = ["SERVE_INSTALL_COMMAND", "ServeOptions", "app", "run_server"]

SERVE_INSTALL_COMMAND = "pip install 'lmgraph[serve]'"
log = logging.getLogger("lmgraph.serve")


def _need_starlette() -> Any:
    try:
        import starlette  # noqa: F401
    except ImportError:
        raise DefinitionError("serving needs the optional package starlette, which is not installed",
                              fix=f"install the extra: {SERVE_INSTALL_COMMAND}") from None


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """Limits of a served program (all per server, except the per-request ones).

    ``max_concurrency``: requests running at once (a batch or a stream counts as one); the next
    one gets 429 + Retry-After. ``timeout_s``: a run's deadline (per row of a batch), None for none.
    ``max_calls_per_request``: a fresh ``Budget(max_calls=...)`` for every run (every batch row).
    ``batch_concurrency``: rows of one batch run at once. ``max_batch_rows``: larger batches get 413.
    ``max_body_bytes``: larger bodies get 413."""

    max_concurrency: int = 16
    timeout_s: float | None = None
    max_calls_per_request: int | None = None
    batch_concurrency: int = 8
    max_batch_rows: int = 1000
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "batch_concurrency", "max_batch_rows", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} is {value!r}; it must be a whole number >= 1", field=name,
                                  fix=f"pass {name}=N with N >= 1.")
        mc = self.max_calls_per_request
        if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
            raise ConfigError(f"max_calls_per_request is {mc!r}; it must be None or a whole number >= 1",
                              field="max_calls_per_request", fix="pass e.g. max_calls_per_request=20.")
        t = self.timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0
                              or math.isinf(t)):
            raise ConfigError(f"timeout_s is {t!r}; it must be None or a number of seconds > 0",
                              field="timeout_s", fix="pass e.g. timeout_s=30.")


class _SharedLM:
    """A model every request shares: one concurrency gate for the whole server (the context's
    ``max_concurrency``) and the context's own budget, if it has one, around the backend. Other
    attributes (``preferred_format``...) are the backend's. Per-request contexts wrap this in their
    own stack (cache, per-request budget, retries), so per-request budgets don't multiply the
    number of model calls the server makes at once."""

    def __init__(self, backend: Any, slots: int, meter: Any) -> None:
        from .lm.wrappers import BudgetLM, ConcurrencyLimitedLM

        inner = BudgetLM(backend, meter) if meter is not None else backend
        self.inner = ConcurrencyLimitedLM(inner, slots)
        self._backend = backend

    async def complete(self, request: Any) -> Any:
        return await self.inner.complete(request)

    def stream(self, request: Any) -> Any:  # through the gate and budget too (when the backend streams)
        return self.inner.stream(request)

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = self._backend.identity()
        return identity

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._backend, name)

    def __repr__(self) -> str:
        return f"_SharedLM({self._backend!r})"


class _Overloaded(Exception):
    pass


class _Deadline(Exception):
    """A run outlived the server's ``timeout_s`` (and was cancelled)."""


class _Server:
    """The state behind the routes: the program, contexts, the in-flight counter and stats."""

    def __init__(self, program: Program, ctx: RunContext | None, options: ServeOptions) -> None:
        from .pipeline.program import Program

        if not isinstance(program, Program):
            raise DefinitionError(f"lmgraph.serve.app() takes a built Program, got {type(program).__name__}",
                                  fix="pass pipeline.build() or Program.load(path, resources={...}).")
        if ctx is not None and not isinstance(ctx, RunContext):
            raise DefinitionError(f"lmgraph.serve.app(program, ctx): ctx is a {type(ctx).__name__}, "
                                  "not a RunContext", fix="pass lmgraph.RunContext(...) or nothing.")
        self.program = program
        self.ctx = ctx if ctx is not None else RunContext()
        self.options = options
        self.in_flight = 0
        self.started = time.time()
        self.stats = {"requests": 0, "rejected": 0, "timeouts": 0, "failed": 0}
        self._avg_s = 1.0  # moving average of request durations: the Retry-After estimate
        self._shared_ctx: RunContext | None = None
        self._schema: dict[str, Any] | None = None

    # ---- contexts
    def run_ctx(self) -> RunContext:
        """The context of one run: the server's, or with a fresh per-request budget."""
        n = self.options.max_calls_per_request
        if n is None:
            return self.ctx
        if self._shared_ctx is None:
            from .context import default_lm

            c = self.ctx
            slots = c.max_concurrency
            lm = _SharedLM(c.lm if c.lm is not None else default_lm(), slots, c.budget_meter)
            lms = {k: _SharedLM(v, slots, c.budget_meter) for k, v in c.lms.items()}
            self._shared_ctx = c.replace(lm=lm, lms=lms, budget=None)
        from .lm.wrappers import Budget

        return self._shared_ctx.replace(budget=Budget(max_calls=n))

    # ---- admission: no queue beyond max_concurrency
    def admit(self) -> None:
        if self.in_flight >= self.options.max_concurrency:
            self.stats["rejected"] += 1
            raise _Overloaded()
        self.in_flight += 1
        self.stats["requests"] += 1

    def release(self, t0: float) -> None:
        self.in_flight -= 1
        self._avg_s = 0.8 * self._avg_s + 0.2 * (time.perf_counter() - t0)

    def retry_after(self) -> int:
        return max(1, math.ceil(self._avg_s))

    # ---- running
    async def run(self, inputs: Mapping[str, Any]) -> Any:
        """Run once under the per-request budget and deadline (``_Deadline`` past it)."""
        coro = self.program.run(self.run_ctx(), **inputs)
        if self.options.timeout_s is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, self.options.timeout_s)
        except asyncio.TimeoutError:  # the deadline's own: wait_for cancelled the run
            raise _Deadline() from None

    def schema(self) -> dict[str, Any]:
        if self._schema is None:
            from .serve_schema import program_schema

            self._schema = program_schema(self.program)
        return self._schema


# ---------------------------------------------------------------- errors -> (status, body)

def input_field(program: Program, inputs: Mapping[str, Any]) -> str | None:
    """The input field the program's validation refuses first (as ``check_inputs`` reports it:
    an unexpected name, else the first declared input that is missing or invalid)."""
    from .pipeline.executor import check_inputs

    extra = [k for k in inputs if k not in program.input_specs]
    if extra:
        return extra[0]
    for name in program.input_specs:
        if name not in inputs:
            return name
        try:
            check_inputs(program, {name: inputs[name]}, allow_missing=True)
        except InputError:
            return name
    return None


def _error_body(e: BaseException, *, field: str | None = None) -> dict[str, Any]:
    return {"error": type(e).__name__, "message": str(e), "field": field, "node": getattr(e, "node", None)}


def error_status(e: BaseException) -> int:
    """The HTTP status of a failed run: 422 bad input, 504 past the deadline, 502 the model backend
    failed, 500 any other failure (a budget spent, an unreadable reply, a bug)."""
    if isinstance(e, InputError):
        return 422
    if isinstance(e, _Deadline):
        return 504
    if isinstance(e, LMError):
        return 502
    return 500


def describe_failure(server: _Server, e: BaseException, inputs: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    status = error_status(e)
    if isinstance(e, _Deadline):
        server.stats["timeouts"] += 1
        return status, {"error": "Timeout", "field": None, "node": None,
                        "message": f"the run took longer than {server.options.timeout_s:g} s (the server's "
                                   "timeout) and was cancelled"}
    server.stats["failed"] += 1
    if isinstance(e, InputError):
        return status, _error_body(e, field=input_field(server.program, inputs))
    if isinstance(e, BudgetExceeded):
        body = _error_body(e)
        body["message"] += (f" (this server allows {server.options.max_calls_per_request} model calls per run)"
                            if server.options.max_calls_per_request is not None else "")
        return status, body
    if isinstance(e, (RunError, LmgraphError)):
        return status, _error_body(e, field=getattr(e, "field", None))
    log.exception("unexpected error while serving %s", server.program.name, exc_info=e)
    return 500, {"error": "InternalError", "message": f"{type(e).__name__}: {e}", "field": None, "node": None}


# ---------------------------------------------------------------- the ASGI app

def app(program: Program, ctx: RunContext | None = None, *, options: ServeOptions | None = None,
        **limits: Any) -> Any:
    """The ASGI application serving ``program`` with ``ctx`` (default: ``RunContext()``).

    Limits are :class:`ServeOptions` fields, given as ``options=`` or as keywords
    (``app(program, ctx, max_concurrency=32, timeout_s=30, max_calls_per_request=20)``). Mount it
    in your own Starlette/FastAPI app (``Mount("/classify", lmgraph.serve.app(program, ctx))``) or run
    it: ``uvicorn.run(lmgraph.serve.app(program, ctx))``. Resources (retrievers, tools) are bound
    when the program is loaded, so a program that needs them is served from Python this way."""
    _need_starlette()
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    if options is not None and limits:
        raise DefinitionError("app() got options= and limit keywords", fix="pass one or the other.")
    try:
        options = options or ServeOptions(**limits)
    except TypeError as e:
        raise ConfigError(f"lmgraph.serve.app(): {e}", fix="limits are: max_concurrency, timeout_s, "
                          "max_calls_per_request, batch_concurrency, max_batch_rows, max_body_bytes.") from None
    server = _Server(program, ctx, options)

    def jsonr(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Any:
        return JSONResponse(body, status_code=status, headers=dict(headers or {}))

    def busy() -> Any:
        n = options.max_concurrency
        return jsonr({"error": "Overloaded", "field": None, "node": None,
                      "message": f"{n} request{'s' if n != 1 else ''} in flight, the most this server runs at "
                                 f"once; retry after {server.retry_after()} s"},
                     429, {"Retry-After": str(server.retry_after())})

    async def body_of(request: Any) -> Any:
        """The JSON body, or the error response to send instead."""
        try:
            return await read_json(request, options.max_body_bytes)
        except OverflowError as e:
            return jsonr({"error": "TooLarge", "message": str(e), "field": None, "node": None}, 413)
        except ValueError as e:
            return jsonr({"error": "BadRequest", "message": str(e), "field": None, "node": None}, 400)

    def not_object(body: Any, what: str) -> Any:
        return jsonr({"error": "InputError", "field": None, "node": None,
                      "message": f"{what} is a JSON {_json_type(body)}, not an object of the program's inputs "
                                 f"({', '.join(server.program.input_specs)}). Fix: send e.g. "
                                 f"{json.dumps(_example(server.program), ensure_ascii=False)}."}, 422)

    async def invoke(request: Any) -> Any:
        try:
            server.admit()
        except _Overloaded:
            return busy()
        t0 = time.perf_counter()
        try:
            body = await body_of(request)
            if isinstance(body, JSONResponse):
                return body
            if not isinstance(body, dict):
                return not_object(body, "the body")
            want_trace = _flag(request, "trace")
            try:
                pred = await server.run(body)
            except Exception as e:  # noqa: BLE001 - every failure becomes a response
                status, err = describe_failure(server, e, body)
                trace = getattr(e, "trace", None)
                if want_trace and trace is not None:
                    err["trace"] = trace.to_dict()
                return jsonr(err, status)
            out = _result(pred, want_trace)
            return jsonr(out, headers={"Server-Timing": f"run;dur={out['latency_s'] * 1000:.3f}"})
        finally:
            server.release(t0)

    async def batch(request: Any) -> Any:
        try:
            server.admit()
        except _Overloaded:
            return busy()
        t0 = time.perf_counter()
        try:
            body = await body_of(request)
            if isinstance(body, JSONResponse):
                return body
            if not isinstance(body, list):
                example = json.dumps(_example(server.program), ensure_ascii=False)
                return jsonr({"error": "InputError", "field": None, "node": None,
                              "message": f"the body is a JSON {_json_type(body)}, not a list of input objects. "
                                         f"Fix: send [{example}, ...]."},
                             422)
            if len(body) > options.max_batch_rows:
                return jsonr({"error": "TooLarge", "field": None, "node": None,
                              "message": f"{len(body)} rows; this server takes at most {options.max_batch_rows} "
                                         "per batch. Fix: split the batch."}, 413)
            results = await _run_batch(server, body, _flag(request, "trace"))
            return jsonr({"results": results, "failed": sum(1 for r in results if "error" in r)})
        finally:
            server.release(t0)

    async def stream(request: Any) -> Any:
        try:
            server.admit()
        except _Overloaded:
            return busy()
        t0 = time.perf_counter()
        handed_over = False
        try:
            body = await body_of(request)
            if isinstance(body, JSONResponse):
                return body
            if not isinstance(body, dict):
                return not_object(body, "the body")
            try:  # bad input is a 422 before the stream starts
                from .pipeline.executor import check_inputs

                check_inputs(server.program, body)
            except InputError as e:
                server.stats["failed"] += 1
                return jsonr(_error_body(e, field=input_field(server.program, body)), 422)

            async def events() -> AsyncIterator[bytes]:
                try:
                    async for name, data in run_events(server, body, want_trace=_flag(request, "trace")):
                        yield sse(name, data)
                finally:
                    server.release(t0)

            handed_over = True  # the stream releases the slot when it ends (or the client leaves)
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        finally:
            if not handed_over:
                server.release(t0)

    async def schema(request: Any) -> Any:
        return jsonr(server.schema())

    async def health(request: Any) -> Any:
        return jsonr({"status": "ok", "program": server.program.name,
                      "content_hash": server.program.content_hash(), "in_flight": server.in_flight,
                      "max_concurrency": options.max_concurrency,
                      "uptime_s": round(time.time() - server.started, 3), **server.stats})

    async def openapi(request: Any) -> Any:
        from .serve_schema import openapi as doc

        return jsonr(doc(server.program))

    async def docs(request: Any) -> Any:
        from .serve_schema import docs_page

        return HTMLResponse(docs_page(server.program))

    routes_ = [
        Route("/invoke", invoke, methods=["POST"]),
        Route("/batch", batch, methods=["POST"]),
        Route("/stream", stream, methods=["POST"]),
        Route("/schema", schema, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
    application = Starlette(routes=routes_)
    application.state.lmgraph = server  # for tests and operators: stats, options, the program
    return application


def run_server(program: Program, ctx: RunContext | None = None, *, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info", options: ServeOptions | None = None, **limits: Any) -> None:
    """Serve ``program`` with uvicorn until SIGINT/SIGTERM; in-flight requests finish first."""
    _need_starlette()
    try:
        import uvicorn
    except ImportError:
        raise DefinitionError("serving needs the optional package uvicorn, which is not installed",
                              fix=f"install the extra: {SERVE_INSTALL_COMMAND}") from None
    application = app(program, ctx, options=options, **limits)
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"lmgraph serve: {program.name!r} on http://{shown}:{sock.getsockname()[1]} "
          "(POST /invoke /batch /stream; GET /schema /health /docs); Ctrl-C stops after in-flight requests",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(application, host=host, port=sock.getsockname()[1], log_level=log_level,
                            timeout_graceful_shutdown=None, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on, after the in-flight requests
        if not server.should_exit:
            raise
    finally:
        sock.close()
    stats = application.state.lmgraph.stats
    print(f"lmgraph serve: stopped after {stats['requests']} requests ({stats['rejected']} turned away with 429)",
          file=sys.stderr, flush=True)


def _flag(request: Any, name: str) -> bool:
    return request.query_params.get(name, "0").lower() in ("1", "true", "yes", "on")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _example(program: Program) -> dict[str, Any]:
    from .serve_schema import example_inputs

    return example_inputs(program)


def _result(pred: Any, want_trace: bool) -> dict[str, Any]:
    from .lm.values import jsonable

    trace = pred._trace
    out: dict[str, Any] = {"outputs": jsonable(dict(pred)), "usage": trace.usage if trace else None,
                           "latency_s": round(trace.latency_s, 6) if trace else None}
    if want_trace and trace is not None:
        out["trace"] = trace.to_dict()
    return out


async def _run_batch(server: _Server, rows: list[Any], want_trace: bool) -> list[dict[str, Any]]:
    """Every row, ``batch_concurrency`` at a time, each under its own budget and deadline; a failing
    row (bad input included) is recorded in its result, in order."""
    results: list[dict[str, Any]] = [{} for _ in rows]
    pending = iter(range(len(rows)))

    async def one(i: int) -> dict[str, Any]:
        row = rows[i]
        if not isinstance(row, dict):
            server.stats["failed"] += 1
            return {"index": i, "error": {"error": "InputError", "field": None, "node": None, "status": 422,
                                          "message": f"row {i} is a JSON {_json_type(row)}, not an object of "
                                                     f"the program's inputs ({', '.join(server.program.input_specs)})"}}
        try:
            pred = await server.run(row)
        except Exception as e:  # noqa: BLE001 - recorded in the row, never failing the batch
            status, err = describe_failure(server, e, row)
            rec: dict[str, Any] = {"index": i, "error": {**err, "status": status}}
            trace = getattr(e, "trace", None)
            if want_trace and trace is not None:
                rec["trace"] = trace.to_dict()
            return rec
        return {"index": i, **_result(pred, want_trace)}

    async def worker() -> None:
        for i in pending:
            results[i] = await one(i)

    workers = [asyncio.ensure_future(worker()) for _ in range(min(server.options.batch_concurrency, len(rows)))]
    try:
        await asyncio.gather(*workers)
    finally:  # the client left (or a bug): stop the other rows too
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return results


async def run_events(server: _Server, inputs: Mapping[str, Any], *,
                     want_trace: bool = False) -> AsyncIterator[tuple[str, Any]]:
    """The (event, data) pairs ``POST /stream`` sends for one run (``program.stream``, under the
    per-request budget and deadline): ``node_start``, ``token`` (text deltas), ``field`` (JSON
    outputs as each closes), ``node_end``; then ``outputs`` (``{"outputs", "usage", "latency_s"}``)
    or ``error`` (the body ``/invoke`` would answer, with its ``status``); ``want_trace``: with the
    run's trace."""
    from .lm.values import jsonable
    from .pipeline.stream import Final

    t0 = time.perf_counter()
    timeout = server.options.timeout_s
    deadline = None if timeout is None else time.monotonic() + timeout
    events = server.program.stream(server.run_ctx(), **inputs)  # an async generator: its own iterator
    try:
        while True:
            try:
                step = events.__anext__()
                ev = await (step if deadline is None else asyncio.wait_for(step, max(0.0, deadline - time.monotonic())))
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                if deadline is None or time.monotonic() < deadline:
                    raise
                raise _Deadline() from None
            if isinstance(ev, Final):
                trace = ev.trace
                final = {"outputs": jsonable(ev.outputs), "usage": trace.usage if trace else None,
                         "latency_s": round(time.perf_counter() - t0, 6)}
                if want_trace and trace is not None:
                    final["trace"] = trace.to_dict()
                yield "outputs", final
                continue
            data = ev.to_dict()
            data.pop("event", None)
            yield ev.event, data
    except Exception as e:  # noqa: BLE001 - the stream ends with an error event
        status, err = describe_failure(server, e, inputs)
        trace = getattr(e, "trace", None)
        if want_trace and trace is not None:
            err["trace"] = trace.to_dict()
        yield "error", {**err, "status": status}
    finally:
        await events.aclose()  # cancels the run if it is still going (the client left, a timeout)
