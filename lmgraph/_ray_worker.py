"""The worker side of :class:`lmgraph.executors.RayExecutor` (imported only inside Ray workers and
by the executor itself, never by ``import lmgraph``).

A worker is an async Ray actor holding its own model stack: the backend rebuilt once per worker
from a portable recipe (:func:`lm_recipe`), under the retry and concurrency layers of a local run
(:func:`~lmgraph.lm.wrappers.build_stack`). The layers that must be global -- the cache, the hard
budget and the usage meter -- are not here: every model call a node makes goes to the driver
first (a ``("call", ...)`` message on the row's stream). The driver answers it from its cache, or
reserves a call in its budget and asks this worker to make it (``("execute",)``); the worker then
sends the response back (``("executed", ...)``) and waits for the driver's final answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .errors import DefinitionError, UsageError
from .lm.base import LMRequest, LMResponse

# --------------------------------------------------------------------------- portable models

_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


def portable_dumps(obj: Any) -> bytes:
    """``obj`` pickled (cloudpickle) with its per-process parts, at any depth, replaced by fresh
    ones on loading: locks, conditions, weak maps (per-event-loop sessions), asyncio primitives."""
    import io

    import ray.cloudpickle as cloudpickle

    fresh: dict[type, Any] = {**{t: t for t in (weakref.WeakKeyDictionary, weakref.WeakValueDictionary, asyncio.Lock,
                               asyncio.Event, asyncio.Semaphore)},
             type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock,
             threading.Condition: threading.Condition}

    class Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, o: Any) -> Any:
            make = fresh.get(type(o))
            if make is not None:
                return (make, ())
            return super().reducer_override(o)  # type: ignore[no-untyped-call]  # cloudpickle is unannotated

    buf = io.BytesIO()
    Pickler(buf, protocol=5).dump(obj)  # type: ignore[no-untyped-call]  # cloudpickle is unannotated
    return buf.getvalue()


def lm_recipe(lm: Any, name: str | None) -> tuple[str, Any]:
    """How a worker rebuilds ``lm``: ``("default", None)`` (the embedded model), ``("llamacpp",
    kwargs)`` (an in-process llama.cpp model, reloaded from its file), or ``("pickled", bytes)``:
    the object with its per-process parts (locks, per-event-loop sessions) recreated fresh.
    Raises a UsageError naming the model when it cannot travel."""
    if lm is None:
        return ("default", None)
    from .lm.llamacpp import LlamaCppLM

    if isinstance(lm, LlamaCppLM):
        kwargs = {"model_path": str(lm.model_path), "n_ctx": lm.n_ctx, "n_threads": lm.n_threads,
                  "n_instances": lm.n_instances, "chat_format": lm.chat_format, "verbose": lm.verbose,
                  "top_logprobs": lm.top_logprobs}
        for opt in ("n_gpu_layers", "main_gpu", "tensor_split"):
            if hasattr(lm, opt):
                kwargs[opt] = getattr(lm, opt)
        return ("llamacpp", kwargs)
    try:
        recipe = ("pickled", portable_dumps(lm))
    except Exception as e:  # noqa: BLE001 - any pickling failure reads the same
        label = "the context's model" if name is None else f"model {name!r}"
        raise UsageError(f"{label} ({type(lm).__name__}) cannot be sent to Ray workers: {type(e).__name__}: {e}",
                         fix="pass RayExecutor(lm_factory=make_models), a function that builds the model(s) in "
                             "each worker (returns a model, or a dict {None: default, 'name': model}).") from e
    return recipe


def build_lm(recipe: tuple[str, Any]) -> Any:
    kind, data = recipe
    if kind == "default":
        from .context import default_lm

        return default_lm()
    if kind == "llamacpp":
        from .lm.llamacpp import LlamaCppLM

        return LlamaCppLM(**data)
    import ray.cloudpickle as cloudpickle

    return cloudpickle.loads(data)


# --------------------------------------------------------------------------- the link to the driver

# the row being run: (its message queue, the worker's pending replies)
_ROW: contextvars.ContextVar[tuple[asyncio.Queue[Any], dict[int, asyncio.Future[Any]]] | None] = (
    contextvars.ContextVar("lmgraph_ray_row", default=None))
_IDS = itertools.count(1)


class LinkLM:
    """The top of a worker's model stack: asks the driver for each call (cache, budget, usage)
    and makes the call with ``inner`` (retries, concurrency limit, backend) when told to."""

    def __init__(self, inner: Any, name: str | None) -> None:
        self.inner = inner
        self.name = name
        from .lm.faults import reports_requests
        from .lm.wrappers import _has_retry

        # the request count a local BudgetLM would make of a call (see BudgetLM.__init__)
        self._fallback_count = not reports_requests(inner) and not _has_retry(inner)

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = self.inner.identity()
        return identity

    @property
    def capabilities(self) -> Any:
        return getattr(self.inner, "capabilities", None)

    async def complete(self, request: LMRequest) -> LMResponse:
        row = _ROW.get()
        if row is None:  # not inside a row sent by the driver: a plain local call
            response: LMResponse = await self.inner.complete(request)
            return response
        queue, pending = row
        loop = asyncio.get_running_loop()
        cid = next(_IDS)
        fut = pending[cid] = loop.create_future()
        await queue.put(("call", cid, self.name, request))
        while True:
            msg = await fut
            if msg[0] == "done":
                done: LMResponse = msg[1]
                return done
            if msg[0] == "error":
                raise msg[1]
            # "execute": the driver reserved the call; make it and report what happened
            fut = pending[cid] = loop.create_future()
            await queue.put(("executed", cid, *(await self._execute(request))))

    async def _execute(self, request: LMRequest) -> tuple[Any, Any, int]:
        from .lm.faults import end_tally, start_tally

        tally, token = start_tally()
        response = error = None
        try:
            response = await self.inner.complete(request)
        except Exception as e:  # noqa: BLE001 - sent to the driver's stack, which raises it there
            error = e
        finally:
            end_tally(token)
        n = tally.n
        if self._fallback_count and n == 0:
            n = 1
        return response, error, n


# --------------------------------------------------------------------------- the actor


class Worker:
    """One Ray worker (wrapped by ``ray.remote`` in :func:`actor_class`)."""

    def __init__(self, recipes: Mapping[str | None, tuple[str, Any]], factory: Any = None) -> None:
        if factory is not None:
            made = factory()
            self.backends = dict(made) if isinstance(made, Mapping) else {None: made}
        else:
            self.backends = {name: build_lm(r) for name, r in recipes.items()}
        self.programs: OrderedDict[str, Any] = OrderedDict()
        self.contexts: dict[Any, Any] = {}
        self.pending: dict[int, asyncio.Future[Any]] = {}

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(),
                "identities": {name: lm.identity() for name, lm in self.backends.items()}}

    async def reply(self, cid: int, msg: tuple[Any, ...]) -> None:
        """The driver's answer to call ``cid`` (runs in another concurrency group: another thread)."""
        fut = self.pending.pop(cid, None)
        if fut is not None:
            fut.get_loop().call_soon_threadsafe(_resolve, fut, msg)

    def _program(self, phash: str, box: list[Any]) -> Any:
        prog = self.programs.get(phash)
        if prog is not None:
            self.programs.move_to_end(phash)
            return prog
        import ray

        from .pipeline.program import Program

        data, resources, kinds = ray.get(box[0])
        try:
            prog = Program.from_dict(data, resources=resources)
        except DefinitionError:
            prog = Program.from_dict(data, resources=resources, kinds=kinds)
        if prog.content_hash() != phash:
            raise DefinitionError(f"program {prog.name!r} rebuilt in a Ray worker differs from the driver's "
                                  f"(content hash {prog.content_hash()[:12]} != {phash[:12]})",
                                  fix="make the program round-trip through Program.to_dict()/from_dict().")
        self.programs[phash] = prog
        while len(self.programs) > 64:
            self.programs.popitem(last=False)
        return prog

    def _context(self, settings: Mapping[str, Any]) -> Any:
        key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
        ctx = self.contexts.get(key)
        if ctx is None:
            from .context import RunContext
            from .lm.wrappers import build_stack

            stacks: dict[Any, tuple[Any, str]] = {}
            for name, backend in self.backends.items():
                bottom = build_stack(backend, retry_attempts=settings["retries"],
                                     max_concurrency=settings["max_concurrency"])
                stacks[name] = (LinkLM(bottom, name), getattr(backend, "preferred_format", "chat"))
            lms = {n: b for n, b in self.backends.items() if n is not None}
            options = {k: v for k, v in settings.items() if k != "direct"}
            ctx = RunContext(lm=self.backends.get(None), lms=lms, cache=False, _stacks=stacks, **options)
            self.contexts[key] = ctx
        return ctx

    async def run_row(self, phash: str, box: list[Any], settings: Mapping[str, Any],
                      inputs: Mapping[str, Any]) -> AsyncIterator[tuple[Any, ...]]:
        """Run one row; yields the model calls it asks the driver for, then
        ``("result", outputs | None, error | None, trace)``."""
        from .pipeline.executor import execute

        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def body() -> tuple[Any, ...]:
            if not settings.get("direct"):  # calls go through the driver (cache, budget, usage)
                _ROW.set((queue, self.pending))
            try:
                program = self._program(phash, box)
                pred = await execute(program, inputs, self._context(settings))
            except Exception as e:  # noqa: BLE001 - the driver decides what is raised and what recorded
                return ("result", None, e, getattr(e, "trace", None))
            return ("result", dict(pred), None, pred.trace)

        task = asyncio.ensure_future(body())
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    yield get.result()
                    continue
                get.cancel()
                while not queue.empty():
                    yield queue.get_nowait()
                yield task.result()
                return
        finally:
            if not task.done():
                task.cancel()


def _resolve(fut: asyncio.Future[Any], msg: Any) -> None:
    if not fut.done():
        fut.set_result(msg)


_ACTOR: Any = None


def actor_class() -> Any:
    """``Worker`` as a Ray actor class: rows in one concurrency group, the driver's replies in
    another (so replies are never queued behind rows waiting for them)."""
    global _ACTOR
    if _ACTOR is None:
        import ray

        cls = type("LmgraphWorker", (Worker,), {
            "run_row": ray.method(concurrency_group="rows")(Worker.run_row),
            "reply": ray.method(concurrency_group="control")(Worker.reply),
            "info": ray.method(concurrency_group="control")(Worker.info),
        })
        cls.__module__ = __name__
        _ACTOR = cls
    return _ACTOR
