"""RunContext: everything a run needs, passed explicitly (no global mutable settings).

The default model (embedded SmolLM2 via llama.cpp) and default disk cache are created lazily,
the first time a run needs them -- nothing happens at import.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DefinitionError, UsageError
from .lm.base import LM
from .lm.wrappers import Budget, BudgetMeter, RetryPolicy, UsageMeter, build_stack

_default_lock = threading.Lock()
_defaults: dict[str, Any] = {}


def default_lm() -> LM:
    """The embedded model (SmolLM2-135M-Instruct, in-process llama.cpp), created once."""
    with _default_lock:
        if "lm" not in _defaults:
            from .lm.llamacpp import LlamaCppLM

            _defaults["lm"] = LlamaCppLM()
        lm: LM = _defaults["lm"]
        return lm


def default_cache() -> Any:
    """The on-disk cache (``LMGRAPH_CACHE_DIR``, default ~/.cache/lmgraph/calls); None if LMGRAPH_CACHE=0."""
    if os.environ.get("LMGRAPH_CACHE", "1").lower() in ("0", "false", "off", "no"):
        return None
    with _default_lock:
        if "cache" not in _defaults:
            from .cache import DiskCache
            from .cache.disk import default_cache_dir

            _defaults["cache"] = DiskCache(default_cache_dir())
        return _defaults["cache"]


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """How to run: models, cache, budget, concurrency, prompt-format default, sampling rollout.

    ``lm`` is the default model; ``lms`` names other models a node may ask for with
    ``lm="name"``. ``cache=True`` uses the default disk cache, ``False`` disables caching, or
    pass a cache object. ``budget`` is a hard limit shared by every run made with this
    context (and contexts derived from it with :meth:`replace`). ``tracer`` observes runs
    (off by default): an OpenTelemetry Tracer or TracerProvider, ``lmgraph.observe.JsonlTraces(path)``,
    an ``lmgraph.observe.Observer`` or a list of these; False opts out of ``lmgraph.observe.enable_otel``.
    ``executor`` runs batches, evaluations and a compile's evaluations (``lmgraph.executors``:
    ``RayExecutor(workers=2)``); None runs them in this process.
    """

    lm: LM | None = None
    lms: Mapping[str, LM] = field(default_factory=dict)
    cache: Any = True
    budget: Budget | None = None
    max_concurrency: int = 8          # concurrent model calls
    max_parallel_nodes: int = 16      # concurrently running nodes within one run
    retries: int | RetryPolicy = 3    # attempts per model call, or a RetryPolicy (waits, deadline)
    default_format: str = "auto"
    rollout: int = 0
    budget_counts_cache_hits: bool = False  # compiles count logical calls (reproducible under a cache)
    budget_meter: BudgetMeter | None = None
    usage: UsageMeter = field(default_factory=UsageMeter)
    tracer: Any = None                # observers of runs (lmgraph.observe); None: off
    executor: Any = None              # where batches run (lmgraph.executors); None: this process
    _stacks: dict[Any, tuple[LM, str]] = field(default_factory=dict, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget_meter is None:
            object.__setattr__(self, "budget_meter", BudgetMeter(self.budget))
        if self.max_concurrency < 1 or self.max_parallel_nodes < 1:
            raise DefinitionError("concurrency limits must be >= 1",
                                  fix="pass max_concurrency=/max_parallel_nodes= of at least 1.")
        if self.tracer is not None:
            from .observe import check_tracer

            check_tracer(self.tracer)

    def replace(self, **changes: Any) -> RunContext:
        """A derived context; it shares the budget meter, usage meter and model stacks."""
        if "budget" in changes and "budget_meter" not in changes:
            changes["budget_meter"] = None
        rebuild = {"lm", "lms", "cache", "budget", "retries", "max_concurrency", "budget_meter",
                   "budget_counts_cache_hits"}
        changes.setdefault("_stacks", self._stacks if not (rebuild & changes.keys()) else {})
        return dataclasses.replace(self, **changes)

    def lm_for(self, name: str | None) -> tuple[LM, str]:
        """The wrapped model stack for a node's ``lm`` name, and its preferred prompt format."""
        got = self._stacks.get(name)
        if got is not None:
            return got
        with self._lock:
            got = self._stacks.get(name)
            if got is None:
                if name is None:
                    backend = self.lm if self.lm is not None else default_lm()
                elif name in self.lms:
                    backend = self.lms[name]
                else:
                    raise DefinitionError(f"no model named {name!r} in the run context",
                                          fix=f"pass RunContext(lms={{{name!r}: model}}); known: "
                                              f"{', '.join(self.lms) or 'none'}.")
                # `is` checks: an empty cache object is falsy (it has __len__) but must still be used
                cache = default_cache() if self.cache is True else (
                    None if self.cache is None or self.cache is False else self.cache)
                stack = build_stack(backend, cache=cache, retry_attempts=self.retries,
                                    max_concurrency=self.max_concurrency,
                                    budget_meter=self.budget_meter, usage_meter=self.usage,
                                    count_cache_hits=self.budget_counts_cache_hits)
                got = (stack, getattr(backend, "preferred_format", "chat"))
                self._stacks[name] = got
            return got


def check_context(ctx: Any) -> RunContext:
    """``ctx`` if it is a RunContext; anything else (typically a dict of inputs passed positionally,
    ``program.run_sync(row)``) is a UsageError saying how to pass inputs."""
    if isinstance(ctx, RunContext):
        return ctx
    if isinstance(ctx, Mapping):
        raise UsageError(f"a {type(ctx).__name__} was passed as the first positional argument of "
                         "program.run_sync()/run(); the first positional argument is the RunContext",
                         fix="pass inputs as keywords: program.run_sync(**row) (or program.run_sync(ctx, **row)).")
    raise UsageError(f"a {type(ctx).__name__} was passed where program.run_sync()/run()/batch() take the "
                     "RunContext", fix="pass ctx=lmgraph.RunContext(...) (or nothing, for the defaults) and the "
                                       "inputs as keywords: program.run_sync(ctx, **inputs).")
