"""LM wrappers: cache, retry, concurrency limit, budget, usage metering and the stack."""

from __future__ import annotations

import asyncio

import pytest

from lmgraph.cache import DiskCache, MemoryCache
from lmgraph.errors import BudgetExceeded, LMError, OutputParseError
from lmgraph.lm.base import LM, LMRequest, LMResponse, Message, Usage
from lmgraph.lm.wrappers import (
    Budget,
    BudgetLM,
    BudgetMeter,
    CachedLM,
    ConcurrencyLimitedLM,
    MeteredLM,
    RetryLM,
    UsageMeter,
    build_stack,
)
from lmgraph.testing import FunctionLM, ScriptedLM


def chat(text: str = "hello", **kw: object) -> LMRequest:
    return LMRequest(messages=(Message(role="user", content=text),), **kw)  # type: ignore[arg-type]


def echo(request: LMRequest) -> str:
    assert request.messages is not None
    return "echo " + request.messages[-1].content


class Flaky:
    """Fails with ``error`` for the first ``failures`` calls, then answers."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def identity(self) -> dict[str, str]:
        return {"backend": "flaky"}

    async def complete(self, request: LMRequest) -> LMResponse:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return LMResponse(text="ok", usage=Usage(prompt_tokens=1, completion_tokens=1))


# --------------------------------------------------------------------------- cache


def test_cached_lm_hit_and_miss() -> None:
    backend = FunctionLM(echo)
    lm = CachedLM(backend, MemoryCache())

    async def go() -> tuple[LMResponse, LMResponse, LMResponse]:
        return (await lm.complete(chat("a")), await lm.complete(chat("a", node="x")),
                await lm.complete(chat("b")))

    first, second, third = asyncio.run(go())
    assert len(backend.calls) == 2
    assert not first.cached and second.cached and not third.cached
    assert second.text == first.text == "echo a"
    assert second.usage == first.usage
    assert second.latency_s == 0.0
    assert lm.identity() == backend.identity()
    assert isinstance(lm, LM)


def test_cached_lm_use_cache_false_bypasses() -> None:
    backend = ScriptedLM(["one", "two", "three"])
    cache = MemoryCache()
    lm = CachedLM(backend, cache)

    async def go() -> list[str]:
        r1 = await lm.complete(chat(use_cache=False))  # not written
        r2 = await lm.complete(chat())  # miss, written
        r3 = await lm.complete(chat(use_cache=False))  # not read
        r4 = await lm.complete(chat())  # hit
        return [r1.text, r2.text, r3.text, r4.text]

    assert asyncio.run(go()) == ["one", "two", "three", "two"]
    assert len(backend.calls) == 3
    assert len(cache) == 1


def test_cached_lm_rollout_gets_fresh_sample() -> None:
    backend = ScriptedLM(["x", "y"])
    lm = CachedLM(backend, MemoryCache())

    async def go() -> list[str]:
        return [(await lm.complete(chat(rollout=r))).text for r in (0, 1, 0, 1)]

    assert asyncio.run(go()) == ["x", "y", "x", "y"]


def test_cached_lm_coalesces_concurrent_identical_requests() -> None:
    backend = FunctionLM(echo, latency_s=0.02)
    lm = CachedLM(backend, MemoryCache())

    async def go() -> list[LMResponse]:
        return await asyncio.gather(*(lm.complete(chat("same")) for _ in range(8)),
                                    lm.complete(chat("other")))

    out = asyncio.run(go())
    assert len(backend.calls) == 2
    assert [r.text for r in out] == ["echo same"] * 8 + ["echo other"]
    assert sum(not r.cached for r in out[:8]) == 1


def test_cached_lm_coalesced_waiters_see_leader_error() -> None:
    backend = Flaky(failures=1, error=LMError("boom"))
    lm = CachedLM(backend, MemoryCache())

    async def slow_fail(request: LMRequest) -> LMResponse:
        await asyncio.sleep(0.01)
        return await Flaky.complete(backend, request)

    backend.complete = slow_fail  # type: ignore[method-assign]

    async def go() -> list[object]:
        return await asyncio.gather(*(lm.complete(chat()) for _ in range(3)), return_exceptions=True)

    out = asyncio.run(go())
    assert backend.calls == 1
    assert all(isinstance(r, LMError) for r in out)
    # nothing cached: the next request calls the backend and succeeds
    assert asyncio.run(lm.complete(chat())).text == "ok"
    assert backend.calls == 2


def test_cached_lm_survives_leader_cancellation() -> None:
    backend = FunctionLM(echo, latency_s=0.05)
    lm = CachedLM(backend, MemoryCache())

    async def go() -> LMResponse:
        leader = asyncio.ensure_future(lm.complete(chat()))
        await asyncio.sleep(0)
        follower = asyncio.ensure_future(lm.complete(chat()))
        await asyncio.sleep(0.01)
        leader.cancel()
        return await follower

    resp = asyncio.run(go())
    assert resp.text == "echo hello"
    assert len(backend.calls) == 2


def test_cached_lm_works_across_event_loops() -> None:
    backend = FunctionLM(echo)
    lm = CachedLM(backend, MemoryCache())
    assert asyncio.run(lm.complete(chat())).cached is False
    assert asyncio.run(lm.complete(chat())).cached is True
    assert len(backend.calls) == 1


def test_disk_cache_survives_restart(tmp_path) -> None:
    d = tmp_path / "calls"
    first_backend = FunctionLM(echo)
    cache1 = DiskCache(d)
    r1 = asyncio.run(CachedLM(first_backend, cache1).complete(chat("persist")))
    cache1.close()

    second_backend = FunctionLM(echo)
    cache2 = DiskCache(d)
    r2 = asyncio.run(CachedLM(second_backend, cache2).complete(chat("persist")))
    assert second_backend.calls == []
    assert r2.cached and r2.text == r1.text and r2.usage == r1.usage
    assert cache2.stats()["disk_hits"] == 1
    cache2.close()


# --------------------------------------------------------------------------- retry


def test_retry_succeeds_after_transient_failures() -> None:
    backend = Flaky(failures=2, error=ConnectionError("reset"))
    lm = RetryLM(backend, attempts=3, initial_wait=0)
    assert asyncio.run(lm.complete(chat())).text == "ok"
    assert backend.calls == 3
    assert lm.identity() == {"backend": "flaky"}


def test_retry_gives_up_and_reraises() -> None:
    err = LMError("down")
    backend = Flaky(failures=10, error=err)
    lm = RetryLM(backend, attempts=4, initial_wait=0)
    with pytest.raises(LMError) as info:
        asyncio.run(lm.complete(chat()))
    assert info.value is err
    assert backend.calls == 4


@pytest.mark.parametrize("error", [BudgetExceeded("spent"), OutputParseError("bad"), ValueError("bug")])
def test_retry_does_not_retry_permanent_errors(error: Exception) -> None:
    backend = Flaky(failures=10, error=error)
    lm = RetryLM(backend, attempts=5, initial_wait=0, retry_on=(Exception,))
    with pytest.raises(type(error)):
        asyncio.run(lm.complete(chat()))
    assert backend.calls == (5 if isinstance(error, ValueError) else 1)


def test_retry_default_ignores_unlisted_errors() -> None:
    backend = Flaky(failures=10, error=ValueError("bug"))
    with pytest.raises(ValueError):
        asyncio.run(RetryLM(backend, initial_wait=0).complete(chat()))
    assert backend.calls == 1


def test_retry_validates_attempts() -> None:
    with pytest.raises(ValueError):
        RetryLM(FunctionLM(echo), attempts=0)


# --------------------------------------------------------------------------- concurrency


class Tracking:
    """Records the peak number of calls in flight."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.in_flight = 0
        self.peak = 0
        self.calls = 0

    def identity(self) -> dict[str, str]:
        return {"backend": "tracking"}

    async def complete(self, request: LMRequest) -> LMResponse:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return LMResponse(text="ok")


def test_concurrency_limit_honored_across_loops() -> None:
    backend = Tracking()
    lm = ConcurrencyLimitedLM(backend, 3)

    async def go() -> None:
        await asyncio.gather(*(lm.complete(chat(str(i))) for i in range(12)))

    asyncio.run(go())
    assert backend.peak == 3
    asyncio.run(go())  # a second event loop gets its own semaphore
    assert backend.peak == 3 and backend.calls == 24


def test_concurrency_limit_with_function_lm() -> None:
    in_flight = 0
    peak = 0

    class Counting(FunctionLM):
        async def complete(self, request: LMRequest) -> LMResponse:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await super().complete(request)
            finally:
                in_flight -= 1

    backend = Counting(echo, latency_s=0.01)
    lm = ConcurrencyLimitedLM(backend, 2)

    async def go() -> None:
        await asyncio.gather(*(lm.complete(chat(str(i))) for i in range(8)))

    asyncio.run(go())
    assert peak == 2 and len(backend.calls) == 8


def test_concurrency_limit_validates() -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimitedLM(FunctionLM(echo), 0)


# --------------------------------------------------------------------------- budget


def test_budget_stops_calls_exactly_at_limit() -> None:
    backend = FunctionLM(echo)
    meter = BudgetMeter(Budget(max_calls=3))
    lm = BudgetLM(backend, meter)

    async def go() -> None:
        for i in range(3):
            await lm.complete(chat(str(i)))
        assert meter.exhausted
        with pytest.raises(BudgetExceeded, match=r"3/3"):
            await lm.complete(chat("4"))

    asyncio.run(go())
    assert len(backend.calls) == 3
    assert meter.remaining() == {"calls": 0, "tokens": None, "dollars": None}
    assert meter.snapshot()["calls"] == 3


def test_budget_call_limit_holds_under_concurrency() -> None:
    backend = FunctionLM(echo, latency_s=0.01)
    meter = BudgetMeter(Budget(max_calls=3))
    lm = BudgetLM(backend, meter)

    async def go() -> list[object]:
        return await asyncio.gather(*(lm.complete(chat(str(i))) for i in range(10)),
                                    return_exceptions=True)

    out = asyncio.run(go())
    assert len(backend.calls) == 3
    assert sum(isinstance(r, BudgetExceeded) for r in out) == 7


def test_token_budget() -> None:
    backend = FunctionLM(lambda r: LMResponse(text="x", usage=Usage(prompt_tokens=30, completion_tokens=20)))
    meter = BudgetMeter(Budget(max_tokens=120))
    lm = BudgetLM(backend, meter)

    async def go() -> None:
        for _ in range(3):  # 50, 100, 150 tokens: the call crossing the limit completes
            await lm.complete(chat())
        with pytest.raises(BudgetExceeded, match=r"token budget spent: 150/120"):
            await lm.complete(chat())

    asyncio.run(go())
    assert len(backend.calls) == 3
    snap = meter.snapshot()
    assert snap["prompt_tokens"] == 90 and snap["completion_tokens"] == 60
    assert meter.remaining()["tokens"] == 0


def test_dollar_budget() -> None:
    backend = FunctionLM(lambda r: LMResponse(text="x", cost=0.25))
    meter = BudgetMeter(Budget(max_dollars=0.5))
    lm = BudgetLM(backend, meter)

    async def go() -> None:
        await lm.complete(chat())
        await lm.complete(chat())
        with pytest.raises(BudgetExceeded, match="dollar"):
            await lm.complete(chat())

    asyncio.run(go())
    assert len(backend.calls) == 2
    assert meter.snapshot()["dollars"] == pytest.approx(0.5)


def test_budget_does_not_count_cache_hits() -> None:
    backend = FunctionLM(echo)
    meter = BudgetMeter(Budget(max_calls=2))
    lm = BudgetLM(CachedLM(backend, MemoryCache()), meter)

    async def go() -> None:
        for _ in range(5):
            await lm.complete(chat("same"))
        await lm.complete(chat("other"))
        with pytest.raises(BudgetExceeded):
            await lm.complete(chat("third"))

    asyncio.run(go())
    assert len(backend.calls) == 2
    snap = meter.snapshot()
    assert snap["calls"] == 2 and snap["cache_hits"] == 4


def test_budget_can_count_cache_hits() -> None:
    backend = FunctionLM(echo)
    meter = BudgetMeter(Budget(max_calls=2))
    lm = BudgetLM(CachedLM(backend, MemoryCache()), meter, count_cache_hits=True)

    async def go() -> None:
        await lm.complete(chat())
        await lm.complete(chat())
        with pytest.raises(BudgetExceeded):
            await lm.complete(chat())

    asyncio.run(go())
    assert len(backend.calls) == 1
    assert meter.snapshot()["calls"] == 2 and meter.snapshot()["cache_hits"] == 1


def test_budget_failed_call_releases_reservation() -> None:
    meter = BudgetMeter(Budget(max_calls=1))
    lm = BudgetLM(Flaky(failures=1, error=LMError("x")), meter)
    with pytest.raises(LMError):
        asyncio.run(lm.complete(chat()))
    assert not meter.exhausted
    assert asyncio.run(lm.complete(chat())).text == "ok"
    assert meter.exhausted


def test_budget_validation_and_unlimited() -> None:
    with pytest.raises(ValueError):
        Budget(max_calls=-1)
    with pytest.raises(TypeError):
        Budget(3)  # type: ignore[misc]
    meter = BudgetMeter(Budget())
    meter.check()
    assert not meter.exhausted
    assert meter.remaining() == {"calls": None, "tokens": None, "dollars": None}
    zero = BudgetMeter(Budget(max_calls=0))
    with pytest.raises(BudgetExceeded):
        zero.check()


# --------------------------------------------------------------------------- usage / stack


def test_usage_meter_per_node() -> None:
    backend = FunctionLM(lambda r: LMResponse(text="a b", usage=Usage(prompt_tokens=3, completion_tokens=2),
                                              cost=0.01))
    usage = UsageMeter()
    lm = MeteredLM(CachedLM(backend, MemoryCache()), usage)

    async def go() -> None:
        await lm.complete(chat("q1", node="retrieve"))
        await lm.complete(chat("q2", node="answer"))
        await lm.complete(chat("q2", node="answer"))  # cache hit
        await lm.complete(chat("q3"))

    asyncio.run(go())
    nodes = usage.by_node()
    assert set(nodes) == {"retrieve", "answer", "<unnamed>"}
    assert nodes["answer"]["calls"] == 1 and nodes["answer"]["cache_hits"] == 1
    assert nodes["answer"]["requests"] == 2
    assert nodes["answer"]["prompt_tokens"] == 3 and nodes["answer"]["completion_tokens"] == 2
    assert nodes["retrieve"]["dollars"] == pytest.approx(0.01)
    total = usage.total()
    assert total["calls"] == 3 and total["cache_hits"] == 1 and total["prompt_tokens"] == 9
    assert total["dollars"] == pytest.approx(0.03)


def test_usage_meter_counts_errors() -> None:
    usage = UsageMeter()
    lm = MeteredLM(Flaky(failures=1, error=LMError("x")), usage)
    with pytest.raises(LMError):
        asyncio.run(lm.complete(chat(node="n")))
    assert usage.by_node()["n"]["errors"] == 1 and usage.by_node()["n"]["calls"] == 0


def test_build_stack_order_and_behaviour() -> None:
    backend = Flaky(failures=1, error=ConnectionError("reset"))
    meter = BudgetMeter(Budget(max_calls=5))
    usage = UsageMeter()
    lm = build_stack(backend, cache=MemoryCache(), retry_attempts=3, max_concurrency=2,
                     budget_meter=meter, usage_meter=usage)
    layers = []
    cur: object = lm
    while hasattr(cur, "inner"):
        layers.append(type(cur).__name__)
        cur = cur.inner  # type: ignore[attr-defined]
    assert layers == ["MeteredLM", "CachedLM", "BudgetLM", "RetryLM", "ConcurrencyLimitedLM"]
    assert cur is backend
    assert lm.identity() == backend.identity()

    # Patch the retry wait out so the transient failure is retried instantly.
    retry = lm.inner.inner.inner.inner  # type: ignore[attr-defined]
    retry.initial_wait = 0

    async def go() -> None:
        assert (await lm.complete(chat(node="n"))).text == "ok"
        assert (await lm.complete(chat(node="n"))).cached

    asyncio.run(go())
    assert backend.calls == 2  # one failure + one success; the second request was a hit
    # the budget sits inside the cache: the hit never reaches it and costs nothing
    assert meter.snapshot()["calls"] == 1 and meter.snapshot()["cache_hits"] == 0
    assert usage.total()["calls"] == 1 and usage.total()["cache_hits"] == 1


def test_build_stack_skips_layers() -> None:
    backend = FunctionLM(echo)
    assert build_stack(backend, retry_attempts=None) is backend
    assert build_stack(backend, retry_attempts=1) is backend
    assert isinstance(build_stack(backend), RetryLM)


def test_no_retry_when_backend_marks_error_not_retryable() -> None:
    err = LMError("prompt too long for n_ctx")
    err.retryable = False  # type: ignore[attr-defined]
    backend = Flaky(failures=5, error=err)
    lm = RetryLM(backend, attempts=4, initial_wait=0)
    with pytest.raises(LMError):
        asyncio.run(lm.complete(chat()))
    assert backend.calls == 1
