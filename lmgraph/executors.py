"""Executors: where a batch's rows run.

Every batch -- ``Program.batch``, :func:`~lmgraph.evaluation.evaluate`, and through them every
optimizer's evaluations and demo bootstrapping -- goes through one call,
``executor.run_batch(program, rows, ctx, ...)``. The executor is ``batch(executor=...)`` /
``evaluate(executor=...)``, else the context's (``RunContext(executor=...)``: a compile made with
that context evaluates on it), else :class:`LocalExecutor`.

* :class:`LocalExecutor` (the default): the rows run in this process, on its event loop.
* :class:`RayExecutor` (extra ``lmgraph[ray]``): the rows run on Ray actors, each holding its own
  model stack. The driver (this process) keeps what must be global: the cache, the hard budget,
  the usage meter -- every model call a worker's node makes is admitted by the driver's stack
  (the same wrapper classes as a local run), so outputs, order, spend and compiled artifacts are
  those of a local run. A worker that dies mid-batch has its unfinished rows run again elsewhere.

``import lmgraph`` never imports Ray; ``RayExecutor`` imports it when it starts.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import DefinitionError, UsageError
from .lm.base import LMRequest, LMResponse

if TYPE_CHECKING:
    from .context import RunContext
    from .pipeline.executor import Result
    from .pipeline.program import Program

__all__ = ["Executor", "LocalExecutor", "RayExecutor"]


class Executor:
    """Runs a batch of rows; subclasses implement :meth:`run_batch` (same contract as
    :func:`lmgraph.pipeline.executor.execute_batch`: one :class:`Result` per row, in row order;
    ``on_result`` called as each row finishes; failures recorded, DefinitionErrors raised)."""

    async def run_batch(self, program: Program, rows: list[Mapping[str, Any]], ctx: RunContext, *,
                        concurrency: int, progress: Any, on_result: Callable[[Result], None] | None,
                        return_exceptions: Any) -> list[Result]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (workers, a cluster it started)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """In-process asyncio execution (the default; what runs when no executor is given)."""

    async def run_batch(self, program: Program, rows: list[Mapping[str, Any]], ctx: RunContext, *,
                        concurrency: int, progress: Any, on_result: Callable[[Result], None] | None,
                        return_exceptions: Any) -> list[Result]:
        from .pipeline.executor import execute_batch_local

        return await execute_batch_local(program, rows, ctx, concurrency=concurrency, progress=progress,
                                         on_result=on_result, return_exceptions=return_exceptions)

    def __repr__(self) -> str:
        return "LocalExecutor()"


# --------------------------------------------------------------------------- driver-side relay

# the worker call being served: (actor, call id, futures for the worker's "executed" messages)
_SERVING: contextvars.ContextVar[tuple[Any, int, dict[int, asyncio.Future[Any]]] | None] = (
    contextvars.ContextVar("lmgraph_ray_serving", default=None))


class _Relay:
    """The bottom of the driver's stack for Ray calls: makes the call on the worker that asked.

    It sits where the backend sits in a local stack (under the usage meter, the cache and the
    budget), reports the worker's request count to the budget, and raises the worker's error."""

    reports_requests = True  # the worker counts them (see LinkLM._execute)

    def __init__(self, identity: dict[str, Any], capabilities: Any) -> None:
        self._identity = identity
        self.capabilities = capabilities

    def identity(self) -> dict[str, Any]:
        return self._identity

    async def complete(self, request: LMRequest) -> LMResponse:
        from .lm.faults import count_request

        serving = _SERVING.get()
        assert serving is not None, "a Ray relay call outside a worker's call"
        actor, cid, futures = serving
        fut = futures[cid] = asyncio.get_running_loop().create_future()
        actor.reply.remote(cid, ("execute",))
        response: LMResponse
        _, _, response, error, n = await fut
        count_request(n)
        if error is not None:
            raise error
        return response


class _WorkerLost(Exception):
    """A worker died with this row unfinished (the row is run again). ``restarting``: Ray said the
    worker is restarting (ActorUnavailableError) -- the row met a worker on its way back, not a
    new death."""

    def __init__(self, message: str, *, restarting: bool = False) -> None:
        super().__init__(message)
        self.restarting = restarting


class RayExecutor(Executor):
    """Run batches on Ray actors: ``RayExecutor(address=None | "auto" | "ray://...", workers=2,
    max_concurrency=8)``.

    ``address``: None starts a local Ray instance when none is running (``init_kwargs`` go to
    ``ray.init``; :meth:`close` stops it), ``"auto"`` joins a running cluster. ``workers`` actors
    each run up to ``max_concurrency`` rows at once (None: the batch's ``concurrency`` each); each
    rebuilds the context's models once, from their description (an in-process llama.cpp model is
    loaded from its file; other models are copied with fresh locks and sessions), or from
    ``lm_factory()`` when given (a function returning a model or ``{None: model, name: model}``).
    ``num_cpus``: the Ray CPUs each worker reserves (0: none, for I/O-bound HTTP backends).

    What stays in the driver: the cache, the hard budget and the usage meter. Each model call a
    worker's node makes is sent to the driver, which answers it from its cache or reserves one call
    in its budget (``BudgetMeter.reserve``, as a local call does) before telling the worker to make
    it, and records the response; so the calls made never exceed ``Budget.max_calls``, however many
    workers run. A worker killed mid-batch loses only its unfinished rows: they are run again on a
    live (or restarted) worker, each row's result is kept once; the calls the lost rows made stay
    counted (they were made).
    """

    def __init__(self, address: str | None = None, *, workers: int = 2, max_concurrency: int | None = 8,
                 lm_factory: Callable[[], Any] | None = None, num_cpus: float = 0,
                 max_restarts: int = 3, init_kwargs: Mapping[str, Any] | None = None) -> None:
        if workers < 1 or (max_concurrency is not None and max_concurrency < 1):
            raise DefinitionError("RayExecutor needs workers >= 1 and max_concurrency >= 1",
                                  fix="pass e.g. RayExecutor(workers=2, max_concurrency=8).")
        self.address = address
        self.workers = int(workers)
        self.max_concurrency = max_concurrency
        self.lm_factory = lm_factory
        self.num_cpus = num_cpus
        self.max_restarts = max_restarts
        self.init_kwargs = dict(init_kwargs or {})
        self._started_ray = False
        self._pools: dict[str, tuple[Any, list[Any]]] = {}
        self.max_pools = 2  # sets of workers kept (one per set of model objects used)
        self._lock = threading.Lock()
        self.rows_rerun = 0  # rows run again because their worker died
        self._ready: set[int] = set()

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, workers={self.workers}, max_concurrency={self.max_concurrency})"

    # ---- cluster and workers
    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as e:
            raise UsageError("RayExecutor needs Ray, which is not installed",
                             fix="pip install 'lmgraph[ray]' (or pip install ray).") from e
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            ray.init(address=self.address, **kwargs)
            self._started_ray = True
        return ray

    def _backends(self, ctx: RunContext) -> dict[str | None, Any]:
        backends: dict[str | None, Any] = {None: ctx.lm}
        backends.update(ctx.lms)
        return backends

    def _pool(self, ctx: RunContext) -> list[Any]:
        """The workers for this context's models (started once per set of models)."""
        from ._canonical import canonical_json
        from ._ray_worker import actor_class, lm_recipe

        backends = self._backends(ctx)
        # the same model objects (a compile's every evaluation) share workers; two objects with the
        # same identity may still answer differently (two fake models), so the objects are the key
        key = canonical_json({str(n): [id(lm), lm.identity() if lm is not None else None]
                              for n, lm in backends.items()})
        with self._lock:
            got = self._pools.get(key)
            if got is not None:
                self._pools[key] = self._pools.pop(key)  # most recently used last
                return got[1]
            ray = self._ray()
            recipes = {} if self.lm_factory is not None else {n: lm_recipe(lm, n) for n, lm in backends.items()}
            per_worker = self.max_concurrency or 64
            cls = ray.remote(num_cpus=self.num_cpus, max_restarts=self.max_restarts, max_task_retries=0,
                             concurrency_groups={"rows": per_worker, "control": 1000})(actor_class())
            pool = [cls.remote(recipes, self.lm_factory) for _ in range(self.workers)]
            self._pools[key] = (backends, pool)  # the models kept alive: their ids stay theirs
            while len(self._pools) > self.max_pools:  # workers of models no longer used
                _, (_, old) = next(iter(self._pools.items()))
                del self._pools[next(iter(self._pools))]
                for actor in old:
                    ray.kill(actor)
            return pool

    async def worker_info(self, ctx: RunContext) -> list[dict[str, Any]]:
        """Each worker's process id and model identities (waits for the workers to start)."""
        return [await a.info.remote() for a in await self._ready_pool(ctx)]

    async def _ready_pool(self, ctx: RunContext) -> list[Any]:
        """:meth:`_pool`, once its workers have built their models (a UsageError if they cannot)."""
        pool = self._pool(ctx)
        if id(pool) in self._ready:
            return pool
        try:
            await asyncio.gather(*(a.info.remote() for a in pool))
        except Exception as e:
            with self._lock:
                self._pools = {k: v for k, v in self._pools.items() if v[1] is not pool}
            cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise UsageError(f"Ray workers could not build the context's model(s): {cause}",
                             fix="make the model's code importable in the workers (Ray's runtime_env, e.g. "
                                 "ray.init(runtime_env={'env_vars': {'PYTHONPATH': ...}})), or pass "
                                 "RayExecutor(lm_factory=...) building the models there.") from e
        self._ready.add(id(pool))
        return pool

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, {}
        if not pools and not self._started_ray:
            return
        import ray

        for _, pool in pools.values():
            for actor in pool:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    # ---- the driver's stacks
    def _driver_stack(self, ctx: RunContext, name: str | None) -> Any:
        """The cache / budget / usage layers of ``ctx`` over a relay to the workers, kept with the
        context's own stacks (so contexts that share a budget share these too)."""
        key = ("lmgraph.ray", name)
        got = ctx._stacks.get(key)
        if got is not None:
            return got[0]
        from .context import default_cache, default_lm
        from .lm.wrappers import build_stack

        backend = ctx.lm if name is None else ctx.lms.get(name)
        if backend is None and name is None:
            backend = default_lm()
        if backend is None:
            raise DefinitionError(f"no model named {name!r} in the run context",
                                  fix=f"pass RunContext(lms={{{name!r}: model}}).")
        cache = default_cache() if ctx.cache is True else (
            None if ctx.cache is None or ctx.cache is False else ctx.cache)
        stack = build_stack(_Relay(backend.identity(), getattr(backend, "capabilities", None)), cache=cache,
                            retry_attempts=None, budget_meter=ctx.budget_meter, usage_meter=ctx.usage,
                            count_cache_hits=ctx.budget_counts_cache_hits)
        ctx._stacks[key] = (stack, getattr(backend, "preferred_format", "chat"))
        return stack

    async def _serve(self, ctx: RunContext, actor: Any, cid: int, name: str | None, request: LMRequest,
                     futures: dict[int, asyncio.Future[Any]]) -> None:
        token = _SERVING.set((actor, cid, futures))
        try:
            stack = self._driver_stack(ctx, name)
            try:
                msg: tuple[Any, ...] = ("done", await stack.complete(request))
            except Exception as e:  # noqa: BLE001 - raised in the worker's node, as a local call's error
                msg = ("error", e)
            actor.reply.remote(cid, msg)
        finally:
            _SERVING.reset(token)

    # ---- rows
    async def _run_row(self, ctx: RunContext, actor: Any, phash: str, box: list[Any],
                       settings: dict[str, Any], inputs: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        import ray

        futures: dict[int, asyncio.Future[Any]] = {}
        serving: set[asyncio.Task[None]] = set()
        gen = actor.run_row.options(num_returns="streaming").remote(phash, box, settings, inputs)
        try:
            async for ref in gen:
                msg = await ref
                if msg[0] == "call":
                    task = asyncio.ensure_future(self._serve(ctx, actor, msg[1], msg[2], msg[3], futures))
                    serving.add(task)
                    task.add_done_callback(serving.discard)
                elif msg[0] == "executed":
                    fut = futures.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                else:
                    return msg[1], msg[2], msg[3]
            raise _WorkerLost("the worker's stream ended without a result")
        except _lost_errors(ray) as e:
            raise _WorkerLost(str(e), restarting=type(e).__name__ == "ActorUnavailableError") from e
        finally:
            # calls still in the driver's stack for a lost row: cancelled (their budget slot freed,
            # identical requests of other rows take over the cache flight)
            for task in list(serving):
                task.cancel()
            if serving:
                await asyncio.gather(*serving, return_exceptions=True)

    async def run_batch(self, program: Program, rows: list[Mapping[str, Any]], ctx: RunContext, *,
                        concurrency: int, progress: Any, on_result: Callable[[Result], None] | None,
                        return_exceptions: Any) -> list[Result]:
        from .context import default_cache
        from .modules.base import MODULE_KINDS
        from .pipeline.executor import Prediction, Result

        rows = list(rows)
        results: list[Result | None] = [None] * len(rows)
        if not rows:
            return []
        import ray

        pool = await self._ready_pool(ctx)
        for name in {getattr(n.module, "lm", None) for n in program.nodes}:
            if isinstance(name, str) and name not in ctx.lms:
                ctx.lm_for(name)  # a DefinitionError naming the model, before any row runs
        kinds = [c for c in MODULE_KINDS.values() if not c.__module__.startswith("lmgraph.")]
        box = [ray.put((program.to_dict(), program.resources(), kinds))]
        phash = program.content_hash()
        # with neither a cache nor a budget there is nothing to admit: the workers call their models
        # directly and the usage meter is replayed here from each row's trace (the calls it recorded)
        direct = ctx.budget_meter is None and (ctx.cache is False or ctx.cache is None or (
            ctx.cache is True and default_cache() is None))
        settings = {"retries": ctx.retries, "max_concurrency": ctx.max_concurrency,
                    "max_parallel_nodes": ctx.max_parallel_nodes, "default_format": ctx.default_format,
                    "rollout": ctx.rollout, "direct": direct}
        names = program.input_specs
        bar = None
        if progress is not False and progress is not None:
            from .progress import row_progress

            bar = row_progress(progress, total=len(rows), label=program.name)
        per_worker = self.max_concurrency or max(1, concurrency)
        todo: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(rows)):
            todo.put_nowait(i)
        remaining = [len(rows)]
        lost: dict[int, int] = {}   # row -> times its worker died under it
        waits: dict[int, int] = {}  # row -> times it met a worker still restarting
        all_done = asyncio.Event()

        def finish(i: int, inputs: Mapping[str, Any], outputs: Any, error: Any, trace: Any) -> None:
            if direct and trace is not None:
                _replay_usage(ctx.usage, trace)
            if error is None:
                results[i] = Result(i, inputs, Prediction(outputs, trace), None, trace)
            else:
                if isinstance(error, DefinitionError) or not isinstance(error, return_exceptions):
                    raise error
                if trace is not None and getattr(error, "trace", None) is None:
                    try:
                        error.trace = trace
                    except AttributeError:
                        pass
                results[i] = Result(i, inputs, None, error, trace)
            if bar is not None:
                bar.row(error is None)
            if on_result is not None:
                on_result(results[i])  # type: ignore[arg-type]
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

        async def slot(actor: Any) -> None:
            backoff = 0.0
            while not todo.empty():
                if backoff:  # this slot's worker was lost: let the live workers' slots take the row first
                    await asyncio.sleep(backoff)
                    if todo.empty():
                        break
                i = todo.get_nowait()
                row = rows[i]
                inputs = {k: row[k] for k in names if k in row} if isinstance(row, Mapping) else row
                try:
                    outputs, error, trace = await self._run_row(ctx, actor, phash, box, settings, inputs)
                except _WorkerLost as e:
                    # a worker still restarting (slow under load) is waited for, up to ~3 minutes of
                    # back-off per row; a worker that died again counts toward max_restarts
                    tally = waits if e.restarting else lost
                    tally[i] = tally.get(i, 0) + 1
                    if tally[i] > (25 if e.restarting else self.max_restarts + 1):
                        raise RuntimeError(f"row {i} was lost with its worker {tally[i]} times (last: {e}); "
                                           "the workers keep dying -- see Ray's logs (/tmp/ray/session_latest/"
                                           "logs)") from e
                    self.rows_rerun += 1
                    todo.put_nowait(i)  # another slot (or this worker, restarted) runs it again
                    # a restarting worker answers "unavailable" at once: back off (0.5 s doubling to
                    # 8 s) instead of losing the same row to it again and again
                    backoff = min(8.0, max(0.5, 2 * backoff))
                    continue
                backoff = 0.0
                finish(i, inputs, outputs, error, trace)

        tasks = [asyncio.ensure_future(slot(actor)) for actor in pool for _ in range(per_worker)]
        waiter = asyncio.ensure_future(all_done.wait())
        try:
            while not all_done.is_set():
                done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not waiter and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if all(t.done() for t in tasks) and not all_done.is_set():
                    if todo.empty():  # pragma: no cover - every row is either queued or finished
                        raise RuntimeError("RayExecutor lost track of rows")
                    tasks = [asyncio.ensure_future(slot(actor)) for actor in pool for _ in range(per_worker)]
        finally:
            waiter.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, waiter, return_exceptions=True)
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors for a call whose actor died or is restarting (the second is newer than 2.30)."""
    names = ("RayActorError", "ActorUnavailableError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def _replay_usage(usage: Any, trace: Any) -> None:
    """Record a worker's row in the driver's usage meter as its MeteredLM would have: one entry
    per model call in the trace (nested runs too), an error for a call that raised."""
    for node in trace.nodes:
        for call in node.calls:
            if call.response is not None:
                usage.record(call.request, call.response)
            elif call.error is not None:
                usage.record_error(call.request)
        for child in node.children:
            _replay_usage(usage, child)


def as_executor(executor: Any) -> Executor | None:
    """``executor`` checked: None, or an object with ``run_batch``."""
    if executor is None or hasattr(executor, "run_batch"):
        checked: Executor | None = executor
        return checked
    raise UsageError("executor must be an lmgraph Executor (LocalExecutor, RayExecutor), "
                     f"got {type(executor).__name__}",
                     fix="pass executor=lmgraph.executors.RayExecutor(workers=2) or leave it out.")

