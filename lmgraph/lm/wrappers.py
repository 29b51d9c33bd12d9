"""LM wrappers: caching, retries, concurrency limits, hard budgets and usage metering.

Each wrapper implements the :class:`~lmgraph.lm.base.LM` protocol around an inner LM and
reports the inner LM's ``identity()``. :func:`build_stack` composes them in the standard
order, outermost first::

    MeteredLM -> BudgetLM -> CachedLM -> RetryLM -> ConcurrencyLimitedLM -> backend

The budget sits outside the cache (cache hits are free unless asked otherwise), and the
retry sits outside the concurrency limit (a request waiting out its backoff holds no slot).

Every wrapper also streams (``stream(request)``, see :class:`~lmgraph.lm.base.StreamingLM`)
when the model under it does, and reports that model's ``capabilities``: a cache hit streams
the cached text at once, the budget and usage count a streamed call as they count
``complete()``, a retry happens only before the first delta, and a concurrency slot is held
until the stream ends.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..cache import Cache
from ..cache.keys import KeyMaker
from ..errors import BudgetExceeded
from .base import LM, LMRequest, LMResponse, stream_of
from .faults import end_tally, start_tally
from .faults import reports_requests as _reports_requests
from .retry import DEFAULT_RETRY_ON, RetryLM, RetryPolicy, as_retry_policy
from .usage import UNNAMED_NODE, UsageMeter  # noqa: F401 - re-exported (moved to keep this file small)

__all__ = [
    "DEFAULT_RETRY_ON",
    "Budget",
    "BudgetLM",
    "BudgetMeter",
    "CachedLM",
    "ConcurrencyLimitedLM",
    "MeteredLM",
    "RetryLM",
    "RetryPolicy",
    "UsageMeter",
    "as_retry_policy",
    "build_stack",
]


class _Wrapper:
    """Shared plumbing: keeps the inner LM and forwards ``identity()``."""

    def __init__(self, inner: LM) -> None:
        self.inner = inner

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    @property
    def capabilities(self) -> Any:
        """The inner model's capabilities (None when it declares none)."""
        return getattr(self.inner, "capabilities", None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


# --------------------------------------------------------------------------- cache


class _Flight:
    """One in-progress backend call that identical concurrent requests wait on."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.result: dict[str, Any] | None = None
        self.error: Exception | None = None


class CachedLM(_Wrapper):
    """Answers repeated requests from ``cache``; identical concurrent misses share one call.

    Requests with ``use_cache=False`` go straight to the inner LM (no read, no write).
    Responses served from the cache, or from another request's in-flight call, come back
    with ``cached=True`` and ``latency_s=0.0``.
    """

    def __init__(self, inner: LM, cache: Cache) -> None:
        super().__init__(inner)
        self.cache = cache
        self._key = KeyMaker()
        self._flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Flight]] = (
            weakref.WeakKeyDictionary())
        self._flights_lock = threading.Lock()

    def _loop_flights(self) -> dict[str, _Flight]:
        loop = asyncio.get_running_loop()
        with self._flights_lock:
            flights = self._flights.get(loop)
            if flights is None:
                flights = self._flights[loop] = {}
            return flights

    @staticmethod
    def _hit(data: dict[str, Any]) -> LMResponse:
        return LMResponse.from_dict(data, cached=True)

    async def complete(self, request: LMRequest) -> LMResponse:
        if not request.use_cache:
            return await self.inner.complete(request)
        key = self._key(self.inner.identity(), request)
        data = self.cache.get(key)
        if data is not None:  # the common replay case: no flight bookkeeping
            return self._hit(data)
        flights = self._loop_flights()
        while True:
            flight = flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.result is not None:
                return self._hit(flight.result)
            if flight.error is not None:
                raise flight.error
            # The leading call was cancelled: look again, and lead if nobody else does.
            data = self.cache.get(key)
            if data is not None:
                return self._hit(data)

        flight = flights[key] = _Flight()
        try:
            response = await self.inner.complete(request)
            data = response.to_dict()
            self.cache.set(key, data)
            flight.result = data
            return response
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            if flights.get(key) is flight:
                del flights[key]
            flight.done.set()

    async def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """As :meth:`complete`, streamed: a hit (or another request's finished flight) yields the
        cached text at once; a miss streams the inner model and caches the final response."""
        if not request.use_cache:
            async for item in stream_of(self.inner, request):
                yield item
            return
        key = self._key(self.inner.identity(), request)
        data = self.cache.get(key)
        flights = self._loop_flights() if data is None else {}
        while data is None:
            flight = flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.result is not None:
                data = flight.result
            elif flight.error is not None:
                raise flight.error
            else:  # the leading call was cancelled: look again, and lead if nobody else does
                data = self.cache.get(key)
        if data is not None:
            hit = self._hit(data)
            if hit.text:
                yield hit.text
            yield hit
            return
        flight = flights[key] = _Flight()
        try:
            response: LMResponse | None = None
            async for item in stream_of(self.inner, request):
                if isinstance(item, LMResponse):
                    response = item
                else:
                    yield item
            if response is None:
                raise RuntimeError(f"{self.inner!r} ended a stream without its final response")
            data = response.to_dict()
            self.cache.set(key, data)
            flight.result = data
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            if flights.get(key) is flight:
                del flights[key]
            flight.done.set()
        yield response


# --------------------------------------------------------------------------- concurrency


class _Gate:
    """A minimal asyncio semaphore (one event loop): a free-slot counter and a FIFO of waiters.

    asyncio.Semaphore costs several microseconds per acquire on CPython 3.11 (its ``locked()``
    scans the waiters); this is on the hot path of every model call.
    """

    __slots__ = ("free", "waiters")

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut  # on wake-up the releasing task handed its slot to us
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot but are leaving: pass it on
            else:
                try:
                    self.waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class ConcurrencyLimitedLM(_Wrapper):
    """At most ``max_concurrency`` calls in flight at once (per event loop)."""

    def __init__(self, inner: LM, max_concurrency: int) -> None:
        super().__init__(inner)
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gate] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._last: tuple[Any, _Gate] | None = None

    def _gate(self) -> _Gate:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        with self._lock:
            gate = self._gates.get(loop)
            if gate is None:
                gate = self._gates[loop] = _Gate(self.max_concurrency)
            self._last = (weakref.ref(loop), gate)
            return gate

    async def complete(self, request: LMRequest) -> LMResponse:
        gate = self._gate()
        await gate.acquire()
        try:
            return await self.inner.complete(request)
        finally:
            gate.release()

    async def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """Streams the inner model, holding a slot until the stream ends (or is closed)."""
        gate = self._gate()
        await gate.acquire()
        try:
            async for item in stream_of(self.inner, request):
                yield item
        finally:
            gate.release()


# --------------------------------------------------------------------------- budget


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Hard limits on model spend; ``None`` means unlimited. Tokens are prompt + completion.

    ``max_calls`` limits *logical* model calls: one per answer a module asked for, however many
    requests the retries took (those are counted apart, as ``BudgetMeter.requests``)."""

    max_calls: int | None = None
    max_tokens: int | None = None
    max_dollars: float | None = None

    def __post_init__(self) -> None:
        from ..errors import ConfigError  # a DefinitionError that is also a ValueError

        for name in ("max_calls", "max_tokens", "max_dollars"):
            value = getattr(self, name)
            kind = "a number" if name == "max_dollars" else "a whole number"
            ok = isinstance(value, (int, float)) if name == "max_dollars" else isinstance(value, int)
            if value is not None and (isinstance(value, bool) or not ok or value < 0):
                raise ConfigError(f"Budget.{name} is {value!r}; it must be None (no limit) or {kind} >= 0",
                                  field=name, fix=f"pass e.g. Budget({name}={100 if kind != 'a number' else 1.0}).")


class BudgetMeter:
    """Thread-safe spend counters checked against a :class:`Budget`.

    ``calls`` counts *logical* model calls (one per answer a module asked for, however many
    tries it took; with ``count_cache_hits`` cache hits too) and is what ``max_calls`` limits;
    ``requests`` counts every request that reached the provider, retries included (what the
    provider bills and rate-limits). Calls can be reserved (:meth:`reserve`) so concurrent
    callers can never exceed ``max_calls``. Token and dollar limits are checked before a call,
    so the call that crosses such a limit completes and only later calls are refused.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.dollars = 0.0
        self.cache_hits = 0
        self.requests = 0
        self._reserved = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def _problem(self) -> str | None:
        b = self.budget
        calls = self.calls + self._reserved
        if b.max_calls is not None and calls >= b.max_calls:
            return f"call budget spent: {calls}/{b.max_calls} calls used"
        if b.max_tokens is not None and self.total_tokens >= b.max_tokens:
            return f"token budget spent: {self.total_tokens}/{b.max_tokens} tokens used"
        if b.max_dollars is not None and self.dollars >= b.max_dollars:
            return f"dollar budget spent: ${self.dollars:.4f}/${b.max_dollars:.4f} used"
        return None

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` if any limit is already reached."""
        with self._lock:
            problem = self._problem()
        if problem is not None:
            raise BudgetExceeded(problem)

    @contextmanager
    def reserve(self) -> Iterator[None]:
        """Check the budget and hold one call slot for the duration of the block.

        Record the response inside the block so the slot turns into a counted call
        without a window in which another caller could slip past the limit.
        """
        with self._lock:
            problem = self._problem()
            if problem is None:
                self._reserved += 1
        if problem is not None:
            raise BudgetExceeded(problem)
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= 1

    def record(self, response: LMResponse) -> None:
        """Count one model call and its tokens and cost."""
        with self._lock:
            self.calls += 1
            self.prompt_tokens += response.usage.prompt_tokens
            self.completion_tokens += response.usage.completion_tokens
            if response.cost is not None:
                self.dollars += response.cost

    def record_requests(self, n: int) -> None:
        """Count ``n`` requests that reached the provider (retries included)."""
        if n:
            with self._lock:
                self.requests += n

    def charge(self, *, calls: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0,
               dollars: float = 0.0, cache_hits: int = 0) -> None:
        """Add spend recorded elsewhere (a resumed compile replaying a checkpointed evaluation); a
        negative amount gives back logical calls that were made again (a row re-run after a
        provider failure counts its calls once)."""
        with self._lock:
            self.calls += calls
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.dollars += dollars
            self.cache_hits += cache_hits

    def record_cache_hit(self) -> None:
        """Count a response served from the cache (free under the budget)."""
        with self._lock:
            self.cache_hits += 1

    def remaining(self) -> dict[str, float | int | None]:
        """What is left of each limit (``None`` for unlimited), never below zero."""
        b = self.budget
        with self._lock:
            return {
                "calls": None if b.max_calls is None else max(0, b.max_calls - self.calls - self._reserved),
                "tokens": None if b.max_tokens is None else max(0, b.max_tokens - self.total_tokens),
                "dollars": None if b.max_dollars is None else max(0.0, b.max_dollars - self.dollars),
            }

    @property
    def exhausted(self) -> bool:
        """True once any limit is reached (the next :meth:`check` would raise)."""
        with self._lock:
            return self._problem() is not None

    def snapshot(self) -> dict[str, float | int]:
        """The counters as a plain dict."""
        with self._lock:
            return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
                    "dollars": self.dollars, "cache_hits": self.cache_hits, "requests": self.requests}

    def __repr__(self) -> str:
        return f"BudgetMeter({self.budget!r}, used={self.snapshot()!r})"


class BudgetLM(_Wrapper):
    """Refuses calls once ``meter``'s budget is spent and records every call made.

    Cache hits (``response.cached``) only count as ``cache_hits`` unless
    ``count_cache_hits=True``, in which case they are charged like real calls.
    """

    def __init__(self, inner: LM, meter: BudgetMeter, *, count_cache_hits: bool = False) -> None:
        super().__init__(inner)
        self.meter = meter
        self.count_cache_hits = count_cache_hits
        # requests: HTTP backends count their own; a RetryLM below counts each try of the others;
        # else each call that was not a cache hit is one request
        self._fallback_count = not _reports_requests(inner) and not _has_retry(inner)

    async def complete(self, request: LMRequest) -> LMResponse:
        tally, token = start_tally()
        response: LMResponse | None = None
        try:
            with self.meter.reserve():
                response = await self.inner.complete(request)
                if response.cached:
                    self.meter.record_cache_hit()
                if not response.cached or self.count_cache_hits:
                    self.meter.record(response)
        finally:
            end_tally(token)
            n = tally.n
            if self._fallback_count and n == 0 and (response is None or not response.cached):
                n = 1
            self.meter.record_requests(n)
        return response

    async def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """As :meth:`complete`: one call slot reserved for the whole stream, the final response
        recorded (tokens, cost) before it is passed on."""
        tally, token = start_tally()
        response: LMResponse | None = None
        try:
            with self.meter.reserve():
                async for item in stream_of(self.inner, request):
                    if isinstance(item, LMResponse):
                        response = item
                        if item.cached:
                            self.meter.record_cache_hit()
                        if not item.cached or self.count_cache_hits:
                            self.meter.record(item)
                    yield item
        finally:
            try:
                end_tally(token)
            except ValueError:  # closed from another context (a garbage-collected stream)
                pass
            n = tally.n
            if self._fallback_count and n == 0 and (response is None or not response.cached):
                n = 1
            self.meter.record_requests(n)


def _has_retry(lm: Any) -> bool:
    while hasattr(lm, "inner"):
        if isinstance(lm, RetryLM):
            return True
        lm = lm.inner
    return False


# --------------------------------------------------------------------------- usage

class MeteredLM(_Wrapper):
    """Records every request's outcome in a :class:`UsageMeter`."""

    def __init__(self, inner: LM, usage_meter: UsageMeter) -> None:
        super().__init__(inner)
        self.usage_meter = usage_meter

    async def complete(self, request: LMRequest) -> LMResponse:
        try:
            response = await self.inner.complete(request)
        except Exception:
            self.usage_meter.record_error(request)
            raise
        self.usage_meter.record(request, response)
        return response

    async def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """As :meth:`complete`: the final response recorded, a failure counted as an error."""
        try:
            async for item in stream_of(self.inner, request):
                if isinstance(item, LMResponse):
                    self.usage_meter.record(request, item)
                yield item
        except Exception:
            self.usage_meter.record_error(request)
            raise


# --------------------------------------------------------------------------- composition


def build_stack(backend: LM, *, cache: Cache | None = None, retry_attempts: int | RetryPolicy | None = 3,
                max_concurrency: int | None = None, budget_meter: BudgetMeter | None = None,
                usage_meter: UsageMeter | None = None, count_cache_hits: bool = False) -> LM:
    """Wrap ``backend`` in the standard order, skipping layers not asked for.

    Outermost first: Metered -> Cache -> Budget -> Retry -> ConcurrencyLimit -> backend.
    The budget sits inside the cache: cache hits are free and stay available after the
    budget is spent (a resumed compile replays its cached calls without new spending).
    Retries are skipped when ``retry_attempts`` is None or <= 1; it is a number of attempts (with
    :class:`RetryPolicy`'s default waits and deadline) or a :class:`RetryPolicy`.

    ``count_cache_hits=True`` puts the budget outside the cache and charges hits like calls:
    the budget then counts *logical* calls, so a compile spends the same budget whether or not
    its calls were cached (what makes a resumed or re-run compile reproduce its result).
    """
    lm: LM = backend
    if max_concurrency is not None:
        lm = ConcurrencyLimitedLM(lm, max_concurrency)
    policy = as_retry_policy(retry_attempts)
    if policy is not None and policy.attempts > 1:
        lm = RetryLM(lm, policy=policy)
    if budget_meter is not None and not count_cache_hits:
        lm = BudgetLM(lm, budget_meter)
    if cache is not None:
        lm = CachedLM(lm, cache)
    if budget_meter is not None and count_cache_hits:
        lm = BudgetLM(lm, budget_meter, count_cache_hits=True)
    if usage_meter is not None:
        lm = MeteredLM(lm, usage_meter)
    return lm
