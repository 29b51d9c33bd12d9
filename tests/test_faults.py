"""Provider faults never change a result (issue 20 items 1-3).

Unit tests with fake models: Retry-After parsing, the retry policy (Retry-After honoured, full
jitter, the deadline), requests vs logical calls in the budget, the AIMD rate limiter, per-row
statuses in evaluate, and a compile that re-runs rows the provider never answered (or stops).
Then the loopback fault-injection server (tests/fault_server.py) behind both HTTP backends: every
fault is retried, a compile at 20% faults writes the same artifact bytes as a fault-free one, and
a 300-row batch at concurrency 64 behind a 50 req/s limiter loses no row; the budget's request
count equals what the server received.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
import warnings
from pathlib import Path

import pytest

import lmgraph as lg
from lmgraph.cache import MemoryCache
from lmgraph.errors import ConfigError, LMError, OutputParseError, ProviderFailureError, ProviderWarning
from lmgraph.evaluation import label_accuracy
from lmgraph.evaluation.evaluate import evaluate_sync, row_status
from lmgraph.lm.faults import AdaptiveRateLimiter, is_provider_failure, reset_rate_limiters, retry_after
from lmgraph.lm.wrappers import Budget, BudgetMeter, RetryLM, RetryPolicy, build_stack
from lmgraph.optimizers import BootstrapFewShot, BootstrapRandomSearch, save_artifact
from lmgraph.testing import FunctionLM, request_text

from helpers import sentiment_fn, sentiment_program, sentiment_rows

# --------------------------------------------------------------------------- Retry-After


def test_retry_after_reads_seconds_dates_and_milliseconds() -> None:
    assert retry_after({"Retry-After": "3"}) == 3.0
    assert retry_after({"retry-after": "0.5"}) == 0.5
    assert retry_after({"Retry-After": "1", "retry-after-ms": "250"}) == 0.25  # ms wins, as in OpenAI's SDK
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= retry_after({"Retry-After": date}, now=now) <= 31
    assert retry_after({"Retry-After": email.utils.formatdate(now - 60, usegmt=True)}, now=now) == 0.0
    assert retry_after({"Retry-After": "soon"}) is None and retry_after({}) is None and retry_after(None) is None
    assert retry_after({"Retry-After": "-4"}) == 0.0


# --------------------------------------------------------------------------- retry policy


class Flaky:
    """Fails the first ``failures`` calls with ``error``, then answers 'ok'."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def identity(self) -> dict:
        return {"backend": "flaky"}

    async def complete(self, request: lg.LMRequest) -> lg.LMResponse:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return lg.LMResponse(text="ok")


def _request() -> lg.LMRequest:
    return lg.LMRequest(prompt="hi")


def _waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record RetryLM's sleeps instead of sleeping."""
    import lmgraph.lm.retry as retry_mod

    waits: list[float] = []

    async def fake_sleep(s: float) -> None:
        waits.append(s)

    monkeypatch.setattr(retry_mod.asyncio, "sleep", fake_sleep)
    return waits


def test_retry_waits_what_the_provider_asked_for(monkeypatch) -> None:  # noqa: ANN001
    waits = _waits(monkeypatch)
    backend = Flaky(2, LMError("429", status=429, retry_after_s=1.5))
    lm = RetryLM(backend, policy=RetryPolicy(attempts=3, initial_wait=0.0))
    assert asyncio.run(lm.complete(_request())).text == "ok"
    assert waits == [1.5, 1.5] and backend.calls == 3 and lm.retries == 2


def test_retry_backoff_is_full_jitter_capped(monkeypatch) -> None:  # noqa: ANN001
    waits = _waits(monkeypatch)
    backend = Flaky(5, ConnectionError("reset"))
    lm = RetryLM(backend, policy=RetryPolicy(attempts=6, initial_wait=1.0, max_wait=3.0, deadline_s=None))
    asyncio.run(lm.complete(_request()))
    caps = [1.0, 2.0, 3.0, 3.0, 3.0]
    assert len(waits) == 5 and all(0 <= w <= c for w, c in zip(waits, caps))
    # a Retry-After longer than max_retry_after_s is not waited for: the backoff applies
    waits.clear()
    lm = RetryLM(Flaky(1, LMError("x", retry_after_s=600)), policy=RetryPolicy(initial_wait=0.5, max_retry_after_s=60))
    asyncio.run(lm.complete(_request()))
    assert len(waits) == 1 and waits[0] <= 0.5


def test_retry_gives_up_when_the_wait_would_pass_the_deadline(monkeypatch) -> None:  # noqa: ANN001
    waits = _waits(monkeypatch)
    backend = Flaky(5, LMError("overloaded", status=503, retry_after_s=30))
    lm = RetryLM(backend, policy=RetryPolicy(attempts=6, deadline_s=10))
    with pytest.raises(LMError, match="overloaded"):
        asyncio.run(lm.complete(_request()))
    assert waits == [] and backend.calls == 1  # no 30-s wait inside a 10-s deadline


def test_retry_policy_is_a_run_context_setting() -> None:
    ctx = lg.RunContext(lm=FunctionLM(lambda r: "x"), cache=False, retries=RetryPolicy(attempts=5, deadline_s=3))
    stack, _ = ctx.lm_for(None)
    retry = stack
    while not isinstance(retry, RetryLM):
        retry = retry.inner
    assert retry.attempts == 5 and retry.deadline_s == 3
    with pytest.raises(ConfigError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError, match="deadline_s"):
        RetryPolicy(deadline_s=-1)


# --------------------------------------------------------------------------- budget: calls vs requests


def test_budget_counts_requests_next_to_logical_calls(monkeypatch) -> None:  # noqa: ANN001
    _waits(monkeypatch)
    backend = Flaky(2, ConnectionError("reset"))
    meter = BudgetMeter(Budget(max_calls=10))
    lm = build_stack(backend, cache=MemoryCache(), retry_attempts=RetryPolicy(attempts=4), budget_meter=meter,
                     count_cache_hits=True)

    async def go() -> None:
        await lm.complete(_request())
        await lm.complete(_request())  # a cache hit: a logical call, no request

    asyncio.run(go())
    snap = meter.snapshot()
    assert backend.calls == 3 and snap["requests"] == 3 and snap["calls"] == 2 and snap["cache_hits"] == 1


def test_budget_counts_one_request_per_call_without_retries() -> None:
    meter = BudgetMeter(Budget())
    lm = build_stack(FunctionLM(lambda r: "x"), retry_attempts=1, budget_meter=meter)
    asyncio.run(lm.complete(_request()))
    assert meter.snapshot()["requests"] == 1 and meter.snapshot()["calls"] == 1


# --------------------------------------------------------------------------- rate limiter


def test_rate_limiter_halves_on_429_once_per_round_and_grows_on_success() -> None:
    lim = AdaptiveRateLimiter(decrease=0.5, increase=4.0, window_s=1.0)

    async def burst(n: int) -> list[float]:
        return [await lim.acquire() for _ in range(n)]

    sent = asyncio.run(burst(40))
    assert lim.rate is None  # unlimited until the provider complains
    for _ in range(40):
        lim.success()
    lim.throttle(sent[-1], retry_after_s=None)
    assert lim.rate == pytest.approx(20.0)  # half of the 40 answered in the last second
    lim.throttle(sent[-2], retry_after_s=None)  # sent before the cut: not a new signal
    assert lim.rate == pytest.approx(20.0) and lim.cuts == 1 and lim.throttled == 2
    lim.success()
    assert lim.rate == pytest.approx(20.2)
    async def together(n: int) -> list[float]:
        return list(await asyncio.gather(*(lim.acquire() for _ in range(n))))

    t0 = time.monotonic()
    starts = sorted(asyncio.run(together(5)))  # slots are handed out 1/rate apart
    assert starts[-1] - starts[0] == pytest.approx(4 / lim.rate, rel=0.01) and time.monotonic() - t0 >= 0.19


def test_rate_limiter_pauses_for_retry_after() -> None:
    lim = AdaptiveRateLimiter()
    lim.throttle(time.monotonic(), retry_after_s=0.3)
    t0 = time.monotonic()
    asyncio.run(lim.acquire())
    assert time.monotonic() - t0 >= 0.25


# --------------------------------------------------------------------------- statuses


def test_row_status_tells_failures_from_answers() -> None:
    assert row_status(None) == "ok"
    assert row_status(OutputParseError("no label")) == "parse_failure"
    assert row_status(lg.BudgetExceeded("spent")) == "budget"
    assert row_status(LMError("HTTP 503")) == "provider_failure"
    assert row_status(LMError("prompt too long", retryable=False)) == "error"
    wrapped = lg.RunError("model call failed")
    wrapped.__cause__ = ConnectionResetError("reset")
    assert row_status(wrapped) == "provider_failure" and is_provider_failure(wrapped)
    assert row_status(RuntimeError("a tool bug")) == "error"


def _down_for(word: str):  # noqa: ANN202
    def fn(req: lg.LMRequest) -> str:
        if word in request_text(req).rsplit("Sentence:", 1)[-1]:
            raise LMError("HTTP 503: overloaded", status=503)
        return sentiment_fn(req)
    return fn


def test_evaluate_reports_rows_without_an_answer_instead_of_scoring_them_zero() -> None:
    rows = sentiment_rows(6)  # 'bad film 0/2/4' are negative: the demo-less fake gets them wrong
    ctx = lg.RunContext(lm=FunctionLM(_down_for("film 1")), cache=False, retries=1)
    with pytest.warns(ProviderWarning, match="1 of 6 rows got no answer"):
        res = evaluate_sync(sentiment_program(), rows, label_accuracy(), ctx=ctx)
    assert res.statuses == ["ok", "provider_failure", "ok", "ok", "ok", "ok"]
    assert res.no_answer == 1 and not res.complete and len(res.provider_failures) == 1
    assert res.mean == pytest.approx(2 / 5)  # over the 5 answered rows, not 2/6
    assert res.summary()["statuses"] == {"ok": 5, "provider_failure": 1}
    assert "no answer" in res.feedback[1]


# --------------------------------------------------------------------------- compile with fake faults


def _flaky_once(seen: dict) -> FunctionLM:
    """The sentiment fake; every third distinct prompt fails the first time it is asked."""
    def fn(req: lg.LMRequest) -> str:
        text = request_text(req)
        n = seen.setdefault(text, [len(seen), 0])
        n[1] += 1
        if n[0] % 3 == 0 and n[1] == 1:
            raise LMError("HTTP 502: bad gateway", status=502)
        return sentiment_fn(req)
    return FunctionLM(fn)


def _compile(lm, tmp: Path, name: str, **opt) -> tuple[bytes, lg.optimizers.Report]:  # noqa: ANN001
    rows = sentiment_rows(24, period=3)
    ctx = lg.RunContext(lm=lm, cache=MemoryCache(), retries=1)  # no retry layer: faults reach the session
    new, rep = BootstrapFewShot(2, concurrency=4, checkpoint=tmp / f"{name}.ckpt", **opt).optimize(
        sentiment_program(), rows[:12], label_accuracy(), valset=rows[12:], ctx=ctx, budget=lg.Budget(max_calls=400))
    path = save_artifact(tmp / f"{name}.json", new, rep)
    return path.read_bytes(), rep


def test_compile_re_runs_rows_without_an_answer_and_ends_as_without_faults(tmp_path: Path) -> None:
    clean, clean_rep = _compile(FunctionLM(sentiment_fn), tmp_path, "clean")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProviderWarning)  # the session handles them: no warning
        faulty, rep = _compile(_flaky_once({}), tmp_path, "faulty")
    assert faulty == clean
    assert rep.faults["rows_without_answer"] > 0 and rep.faults["reruns"] > 0
    assert rep.spent == clean_rep.spent and rep.failures == clean_rep.failures
    assert rep.failures["provider_failure"] == 0
    assert json.loads(faulty)["report"]["failures"] == {"parse_failure": 0, "error": 0, "provider_failure": 0}
    assert "502" not in (tmp_path / "faulty.ckpt").read_text()  # no failure was checkpointed


def test_compile_stops_with_a_clear_error_when_the_provider_stays_down(tmp_path: Path) -> None:
    lm = FunctionLM(_down_for("film 13"))
    with pytest.raises(ProviderFailureError, match=r"1 of 12 rows got no answer .* after 2 re-runs.*"
                                                    r"last error: LMError: .*HTTP 503") as info:
        _compile(lm, tmp_path, "down", provider_reruns=2)
    assert info.value.failed == 1 and info.value.total == 12
    calls = [c for c in lm.calls if "film 13" in request_text(c).rsplit("Sentence:", 1)[-1]]
    assert len(calls) == 3  # the first try and two re-runs
    ckpt = tmp_path / "down.ckpt"
    assert not ckpt.exists() or "503" not in ckpt.read_text()


def test_a_stopped_compile_resumes_from_its_checkpoint_to_the_fault_free_artifact(tmp_path: Path) -> None:
    clean, _ = _compile(FunctionLM(sentiment_fn), tmp_path, "clean")
    state = {"down": True}

    def fn(req: lg.LMRequest) -> str:
        if state["down"] and "film 5" in request_text(req).rsplit("Sentence:", 1)[-1]:
            raise LMError("HTTP 503: overloaded", status=503)
        return sentiment_fn(req)

    with pytest.raises(ProviderFailureError):
        _compile(FunctionLM(fn), tmp_path, "resumed", provider_reruns=1)
    assert (tmp_path / "resumed.ckpt").read_text().count("\n") >= 2  # finished evaluations were kept
    state["down"] = False  # the provider is back: the same command picks up where it stopped
    resumed, rep = _compile(FunctionLM(fn), tmp_path, "resumed")
    assert resumed == clean and rep.runtime["replayed_evaluations"] >= 1


def test_compile_stop_policy_stops_at_the_first_row_without_an_answer(tmp_path: Path) -> None:
    lm = FunctionLM(_down_for("film 13"))
    with pytest.raises(ProviderFailureError, match="on_provider_failure='stop'"):
        _compile(lm, tmp_path, "stop", on_provider_failure="stop")
    assert sum("film 13" in request_text(c).rsplit("Sentence:", 1)[-1] for c in lm.calls) == 1
    with pytest.raises(ConfigError, match="on_provider_failure"):
        BootstrapFewShot(2, on_provider_failure="ignore")
    with pytest.raises(ConfigError, match="provider_reruns"):
        BootstrapFewShot(2, provider_reruns=-1)


# --------------------------------------------------------------------------- the fault-injection server

pytest.importorskip("aiohttp")

from fault_server import FAULTS, FaultServer  # noqa: E402


def sentiment_answer(text: str) -> str:
    """The server's canned answers: what helpers.sentiment_fn answers, from the prompt text."""
    has_demo = text.count("Sentence:") > 1
    last = re.findall(r"Sentence: (.*)", text)[-1]
    gold = "positive" if "good" in last else "negative"
    return " " + (gold if has_demo else "positive")


def http_lm(kind: str, url: str, timeout: float = 5.0):  # noqa: ANN201
    if kind == "http":
        from lmgraph.lm.openai_http import OpenAIServerLM

        return OpenAIServerLM(url, timeout=timeout)
    pytest.importorskip("litellm")
    from lmgraph.lm.litellm import openai_compatible

    return openai_compatible(url, timeout=timeout)


FAST_RETRY = RetryPolicy(attempts=6, initial_wait=0.01, max_wait=0.1, deadline_s=30)
BACKENDS = ["http", "litellm"]


@pytest.fixture(autouse=True)
def _fresh_limiters():  # noqa: ANN202
    reset_rate_limiters()  # a port reused by an earlier server must not inherit its learned rate
    yield
    reset_rate_limiters()


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("fault", FAULTS)
def test_every_fault_is_retried_and_every_request_counted(kind: str, fault: str) -> None:
    with FaultServer(sentiment_answer, faults=(fault,), fail_first=1, stall_s=2.0) as srv:
        lm = http_lm(kind, srv.base_url, timeout=1.0)
        ctx = lg.RunContext(lm=lm, cache=False, budget=lg.Budget(), retries=FAST_RETRY)
        out = sentiment_program().run_sync(ctx, sentence="good film")
        assert out.label == "positive"
        assert srv.outcomes == {fault: 1, "ok": 1}
        snap = ctx.budget_meter.snapshot()
        assert snap["calls"] == 1 and snap["requests"] == srv.received == 2


def _http_compile(kind: str, srv: FaultServer, tmp: Path, name: str) -> tuple[bytes, lg.optimizers.Report]:
    rows = sentiment_rows(30, period=3)
    # two tries per call: some rows still fail and the session re-runs them -- both layers at work
    retries = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.05)
    ctx = lg.RunContext(lm=http_lm(kind, srv.base_url, timeout=0.5), cache=MemoryCache(), retries=retries)
    opt = BootstrapRandomSearch(2, num_candidates=4, concurrency=8, checkpoint=tmp / f"{name}.ckpt")
    new, rep = opt.optimize(sentiment_program(), rows[:14], label_accuracy(), valset=rows[14:], ctx=ctx,
                            budget=lg.Budget(max_calls=600))
    return save_artifact(tmp / f"{name}.json", new, rep).read_bytes(), rep


@pytest.mark.parametrize("kind", BACKENDS)
def test_compile_at_20_percent_faults_writes_the_fault_free_artifact(kind: str, tmp_path: Path) -> None:
    with FaultServer(sentiment_answer, seed=1, stall_s=1.0) as srv:
        clean, clean_rep = _http_compile(kind, srv, tmp_path, "clean")
        assert srv.received == clean_rep.faults["requests"]
        srv.reset_counts()
        srv.fault_rate = 0.2
        faulty, rep = _http_compile(kind, srv, tmp_path, "faulty")
    assert faulty == clean  # byte-identical
    faults = sum(v for k, v in srv.outcomes.items() if k != "ok")
    assert faults >= 10 and rep.faults["requests"] == srv.received  # the budget saw every request
    assert rep.faults["rows_without_answer"] > 0  # the session re-ran rows the retries could not save
    assert rep.spent == clean_rep.spent and json.loads(faulty)["report"]["failures"]["provider_failure"] == 0
    text = (tmp_path / "faulty.ckpt").read_text()
    assert "LMError" not in text and "timed out" not in text


def test_a_batch_behind_a_rate_limit_loses_no_row() -> None:
    with FaultServer(sentiment_answer, rate_limit=50) as srv:
        lm = http_lm("http", srv.base_url)
        ctx = lg.RunContext(lm=lm, cache=False, max_concurrency=64, budget=lg.Budget())
        results = sentiment_program().batch_sync(sentiment_rows(300), ctx=ctx, concurrency=64)
    assert [r.index for r in results if not r.ok] == []
    assert srv.outcomes["ok"] == 300 and srv.outcomes["rate-limited"] > 0
    snap = ctx.budget_meter.snapshot()
    assert snap["calls"] == 300 and snap["requests"] == srv.received
    assert lm.rate_limiter.cuts >= 1 and lm.rate_limiter.rate is not None
