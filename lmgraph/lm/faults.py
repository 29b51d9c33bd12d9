"""Provider faults: telling them from answers, reading how long to wait, counting requests, and
an adaptive per-endpoint rate limiter.

* :func:`is_provider_failure` -- is an error a failure to get an answer (timeout, 5xx, 429,
  a reset connection, a truncated or unreadable body: something a later try may not meet), as
  opposed to an answer (even an unparseable one) or a mistake no retry fixes?
* :func:`retry_after` -- ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms``
  response headers, as seconds.
* :func:`mark_context_overflow` -- marks an error whose text says the prompt did not fit the
  model's context window (llama.cpp, llama-cpp-python's server, vLLM, OpenAI and litellm
  wordings), so Predict can drop demos and ask again instead of losing the row.
* :func:`count_request` -- backends that speak HTTP call it once per request that reached the
  provider; :class:`~lmgraph.lm.wrappers.BudgetLM` adds those to its meter's ``requests``.
* :class:`AdaptiveRateLimiter` / :func:`endpoint_limiter` -- AIMD on 429: unlimited until the
  provider first says "too many requests", then paced at half the rate it was answering, raised
  a little with every success and halved again on the next 429. One limiter per endpoint per
  process, so every client and every batch talking to one server share it.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import email.utils
import math
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..errors import BudgetExceeded, LMError, OutputParseError

__all__ = [
    "RETRYABLE_STATUS",
    "AdaptiveRateLimiter",
    "count_request",
    "endpoint_limiter",
    "is_provider_failure",
    "mark_context_overflow",
    "reset_rate_limiters",
    "retry_after",
]

# HTTP statuses worth another try: request timeout, conflict (a lock), rate limited, and 5xx
RETRYABLE_STATUS = frozenset({408, 409, 429})
_TRANSIENT = (ConnectionError, TimeoutError, asyncio.TimeoutError, OSError)


# how backends say a prompt is longer than the context window: llama.cpp / llama-cpp-python
# ("Requested tokens (N) exceed context window of M"), vLLM and OpenAI ("maximum context length is
# N tokens", "context_length_exceeded"), llama.cpp's C++ server ("exceeds the available context
# size"), Anthropic ("prompt is too long"), litellm (ContextWindowExceededError)
_OVERFLOW = re.compile(r"exceeds? (the )?(available )?context (window|size)|maximum context length|"
                       r"context[_ ]length[_ ]exceeded|prompt is too long|ContextWindowExceeded", re.IGNORECASE)


def mark_context_overflow(err: LMError, text: str) -> LMError:
    """``err`` marked ``context_overflow`` (and not retryable) when ``text`` -- the provider's
    error message or exception -- says the prompt did not fit the context window."""
    if _OVERFLOW.search(text):
        err.context_overflow = True
        err.retryable = False
    return err


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not e for e in seen):
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def is_provider_failure(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an error it was raised from) is a failure to get an answer that a
    later try may not meet: a retryable :class:`LMError`, a connection error or a timeout.

    Never true for a budget stop, an unparseable answer (the model answered: that is a wrong
    answer) or an LMError marked ``retryable=False`` (a bad request, a prompt too long)."""
    if exc is None:
        return False
    for e in _chain(exc):
        if isinstance(e, (BudgetExceeded, OutputParseError)):
            return False
        if isinstance(e, LMError):
            return getattr(e, "retryable", True) is not False
        if isinstance(e, _TRANSIENT):
            return True
    return False


# --------------------------------------------------------------------------- Retry-After


def retry_after(headers: Mapping[str, Any] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``Retry-After`` (delta-seconds or an HTTP
    date); None when absent or unreadable. Never negative."""
    if not headers:
        return None
    get = getattr(headers, "get", None)
    if get is None:
        return None

    def header(name: str) -> Any:
        value = get(name)
        if value is None and not hasattr(headers, "getall"):  # a plain dict: match the case too
            lower = name.lower()
            value = next((v for k, v in headers.items() if str(k).lower() == lower), None)
        return value

    ms = header("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value):
                return max(0.0, value)
        except (TypeError, ValueError):
            pass
    raw = header("retry-after")
    if raw is None:
        return None
    text = str(raw).strip()
    try:
        value = float(text)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --------------------------------------------------------------------------- request counting


class _Tally:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


_TALLY: contextvars.ContextVar[_Tally | None] = contextvars.ContextVar("lmgraph_request_tally", default=None)


def count_request(n: int = 1) -> None:
    """Count ``n`` requests that reached the provider, for the budget of the call in progress
    (a no-op outside a budgeted call). HTTP backends call it once per request they send."""
    tally = _TALLY.get()
    if tally is not None:
        tally.n += n


def start_tally() -> tuple[_Tally, contextvars.Token[_Tally | None]]:
    tally = _Tally()
    return tally, _TALLY.set(tally)


def end_tally(token: contextvars.Token[_Tally | None]) -> None:
    _TALLY.reset(token)


def reports_requests(lm: Any) -> bool:
    """Whether the backend at the bottom of a wrapper chain counts its own requests."""
    while hasattr(lm, "inner"):
        lm = lm.inner
    return bool(getattr(lm, "reports_requests", False))


# --------------------------------------------------------------------------- rate limiting


class AdaptiveRateLimiter:
    """A client-side pace for one endpoint, adapted to the provider's 429s (AIMD).

    Unlimited until the first 429. Then requests start at most ``rate`` per second: ``rate``
    begins at ``decrease`` times the successes of the last ``window_s`` seconds, grows by
    ``increase / rate`` with each success (about ``increase`` requests/s per second) and is
    multiplied by ``decrease`` on a 429 -- once per round: a 429 of a request sent before the
    last cut does not cut again. A ``Retry-After`` pauses every request to the endpoint until
    it has passed. Thread-safe; usable from any event loop.
    """

    def __init__(self, *, decrease: float = 0.5, increase: float = 4.0, min_rate: float = 1.0,
                 window_s: float = 1.0, max_pause_s: float = 60.0) -> None:
        if not 0 < decrease < 1 or increase < 0 or min_rate <= 0 or window_s <= 0:
            raise ValueError("AdaptiveRateLimiter: need 0 < decrease < 1, increase >= 0, min_rate > 0, "
                             "window_s > 0")
        self.decrease, self.increase, self.min_rate = decrease, increase, min_rate
        self.window_s, self.max_pause_s = window_s, max_pause_s
        self.rate: float | None = None   # requests per second; None = unlimited
        self.throttled = 0               # 429s seen
        self.cuts = 0                    # times the rate was cut
        self._next = 0.0                 # monotonic time the next request may start
        self._paused_until = 0.0
        self._last_cut = -math.inf
        # recent success and send times (bounded; appends are atomic, no lock on the hot path)
        self._ok: collections.deque[float] = collections.deque(maxlen=8192)
        self._sent: collections.deque[float] = collections.deque(maxlen=8192)
        self._lock = threading.Lock()

    def _recent(self, q: collections.deque[float], now: float) -> float:
        """Events per second in the last window."""
        n = 0
        for t in reversed(q.copy()):
            if t < now - self.window_s:
                break
            n += 1
        return n / self.window_s

    async def acquire(self) -> float:
        """Wait for this request's turn; returns the time it is sent (for :meth:`throttle`)."""
        now = time.monotonic()
        if self.rate is None and now >= self._paused_until:  # the common, unthrottled case
            self._sent.append(now)
            return now
        with self._lock:
            start = max(now, self._paused_until)
            if self.rate is not None:
                start = max(start, self._next)
                self._next = start + 1.0 / self.rate
        self._sent.append(start)
        if start > now:
            await asyncio.sleep(start - now)
        return start

    def success(self) -> None:
        """A request was answered (not throttled)."""
        self._ok.append(time.monotonic())
        if self.rate is not None:
            with self._lock:
                if self.rate is not None:
                    self.rate += self.increase / self.rate

    def throttle(self, sent_at: float, retry_after_s: float | None = None) -> None:
        """A 429 for a request sent at ``sent_at``: cut the rate (once per round) and pause."""
        now = time.monotonic()
        with self._lock:
            self.throttled += 1
            if retry_after_s is not None and retry_after_s > 0:
                self._paused_until = max(self._paused_until, now + min(retry_after_s, self.max_pause_s))
            if sent_at <= self._last_cut:
                return  # this request went out before the last cut: it says nothing new
            ok = self._recent(self._ok, now)
            if self.rate is None:  # the first 429: half of what the provider was answering
                base = ok if ok > 0 else max(self._recent(self._sent, now), 2 * self.min_rate)
            else:
                base = self.rate
            self.rate = max(self.min_rate, self.decrease * base)
            self._next = now
            self._last_cut = now
            self.cuts += 1

    def snapshot(self) -> dict[str, Any]:
        return {"rate": None if self.rate is None else round(self.rate, 3), "throttled": self.throttled,
                "cuts": self.cuts}

    def __repr__(self) -> str:
        return f"AdaptiveRateLimiter({self.snapshot()})"


_LIMITERS: dict[str, AdaptiveRateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def endpoint_limiter(endpoint: str) -> AdaptiveRateLimiter:
    """The process-wide limiter of ``endpoint`` (a base URL without credentials)."""
    key = endpoint.rstrip("/")
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = AdaptiveRateLimiter()
        return limiter


def reset_rate_limiters() -> None:
    """Forget every endpoint's learned rate (tests; a provider whose limit was raised)."""
    with _LIMITERS_LOCK:
        _LIMITERS.clear()
