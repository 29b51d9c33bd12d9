"""Retrying failed model calls like the trusted clients: exponential backoff with full jitter,
``Retry-After`` honoured, a total deadline (re-exported by :mod:`lmgraph.lm.wrappers`)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from ..errors import BudgetExceeded, LMError, OutputParseError
from .base import LM, LMRequest, LMResponse, stream_of
from .faults import count_request
from .faults import reports_requests as _reports_requests

__all__ = ["DEFAULT_RETRY_ON", "RetryLM", "RetryPolicy", "as_retry_policy"]

# --------------------------------------------------------------------------- retry

DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (LMError, ConnectionError, TimeoutError, OSError)
_NEVER_RETRY: tuple[type[BaseException], ...] = (BudgetExceeded, OutputParseError)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How :class:`RetryLM` retries a failed model call (``RunContext(retries=RetryPolicy(...))``).

    At most ``attempts`` tries, all within ``deadline_s`` seconds of the first (None: no
    deadline). Before try *n+1* it waits what the provider asked for (``Retry-After`` /
    ``retry-after-ms``, carried as ``LMError.retry_after_s``) when that is at most
    ``max_retry_after_s``, else a full-jitter exponential backoff: uniform in
    ``[0, min(max_wait, initial_wait * 2**(n-1))]``. A wait that would pass the deadline is not
    taken: the last error is raised instead. Retried: timeouts, connection errors, HTTP
    408/409/429/5xx, truncated or unreadable bodies; never a budget stop, an unparseable answer
    or an error the backend marks ``retryable=False``.
    """

    attempts: int = 6
    initial_wait: float = 0.5
    max_wait: float = 8.0
    deadline_s: float | None = 60.0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts is {self.attempts!r}; it must be a whole number >= 1",
                              field="attempts", fix="e.g. RetryPolicy(attempts=6); 1 turns retries off.")
        for name in ("initial_wait", "max_wait", "max_retry_after_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"RetryPolicy.{name} is {getattr(self, name)!r}; it must be >= 0", field=name,
                                  fix=f"pass {name}= as seconds, e.g. 0.5.")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ConfigError(f"RetryPolicy.deadline_s is {self.deadline_s!r}; it must be > 0 or None",
                              field="deadline_s", fix="e.g. deadline_s=60.0, or None for no deadline.")


def as_retry_policy(retries: int | RetryPolicy | None) -> RetryPolicy | None:
    """A RetryPolicy from ``RunContext.retries`` (an attempt count keeps the default waits)."""
    if retries is None or isinstance(retries, RetryPolicy):
        return retries
    if isinstance(retries, bool) or not isinstance(retries, int):
        from ..errors import ConfigError

        raise ConfigError(f"retries is {retries!r}; it must be a number of attempts or a RetryPolicy",
                          field="retries", fix="e.g. RunContext(retries=6) or retries=RetryPolicy(attempts=6).")
    return RetryPolicy(attempts=max(1, retries))


class RetryLM:
    """Retries transient failures: backoff with full jitter, ``Retry-After`` honoured, under a
    total deadline (see :class:`RetryPolicy`; keyword arguments override the policy's fields).

    The last error is re-raised as is. :class:`BudgetExceeded` and :class:`OutputParseError` are
    never retried, nor errors marked ``retryable=False``. ``retries`` counts the retries made.
    """

    def __init__(self, inner: LM, *, attempts: int | None = None, initial_wait: float | None = None,
                 max_wait: float | None = None, deadline_s: float | EllipsisType | None = ...,
                 policy: RetryPolicy | None = None,
                 retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON) -> None:
        self.inner = inner
        base = policy or RetryPolicy(attempts=3)
        if attempts is not None and attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        if (initial_wait is not None and initial_wait < 0) or (max_wait is not None and max_wait < 0):
            raise ValueError("initial_wait and max_wait must be >= 0")
        self.attempts = base.attempts if attempts is None else attempts
        self.initial_wait = base.initial_wait if initial_wait is None else initial_wait
        self.max_wait = base.max_wait if max_wait is None else max_wait
        self.deadline_s = base.deadline_s if isinstance(deadline_s, EllipsisType) else deadline_s
        self.max_retry_after_s = base.max_retry_after_s
        self.retry_on = tuple(retry_on)
        self.retries = 0
        self._count_attempts = not _reports_requests(inner)
        self._rng = random.Random()

    def _should_retry(self, exc: BaseException) -> bool:
        # backends mark errors no retry can fix (prompt too long, bad request, auth) retryable=False
        return (isinstance(exc, self.retry_on) and not isinstance(exc, _NEVER_RETRY)
                and getattr(exc, "retryable", True) is not False)

    def wait_before(self, retry: int, exc: BaseException) -> float:
        """Seconds to wait before retry number ``retry`` (1-based) after ``exc``."""
        asked = getattr(exc, "retry_after_s", None)
        if isinstance(asked, (int, float)) and 0 <= asked <= self.max_retry_after_s:
            return float(asked)
        cap = min(self.max_wait, self.initial_wait * 2 ** (retry - 1))
        return self._rng.uniform(0, cap) if cap > 0 else 0.0

    async def complete(self, request: LMRequest) -> LMResponse:
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            if self._count_attempts:
                count_request()
            try:
                return await self.inner.complete(request)
            except Exception as exc:
                if attempt >= self.attempts or not self._should_retry(exc):
                    raise
                wait = self.wait_before(attempt, exc)
                if self.deadline_s is not None and time.monotonic() - start + wait > self.deadline_s:
                    raise
                self.retries += 1
            if wait > 0:
                await asyncio.sleep(wait)

    async def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """As :meth:`complete`, streamed; a failure is retried only before the first delta (after
        it, text has been passed on that a new attempt could not take back)."""
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            if self._count_attempts:
                count_request()
            started = False
            try:
                async for item in stream_of(self.inner, request):
                    started = True
                    yield item
                return
            except Exception as exc:
                if started or attempt >= self.attempts or not self._should_retry(exc):
                    raise
                wait = self.wait_before(attempt, exc)
                if self.deadline_s is not None and time.monotonic() - start + wait > self.deadline_s:
                    raise
                self.retries += 1
            if wait > 0:
                await asyncio.sleep(wait)

    @property
    def capabilities(self) -> Any:
        """The inner model's capabilities (None when it declares none)."""
        return getattr(self.inner, "capabilities", None)

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def __repr__(self) -> str:
        return f"RetryLM({self.inner!r})"
