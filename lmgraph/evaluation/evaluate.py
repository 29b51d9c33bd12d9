"""evaluate(): run a program over a dataset concurrently and score it, with a 95% bootstrap CI."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..context import RunContext
from .metrics import Metric, mean, score_value

if TYPE_CHECKING:
    from ..pipeline.executor import Result
    from ..pipeline.program import Program


def bootstrap_ci(scores: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over examples (deterministic for a seed)."""
    if not scores:
        return (0.0, 0.0)
    import numpy as np

    arr = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arr), size=(n_resamples, len(arr)))
    means = arr[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of mean(b) - mean(a) over the same examples.

    Returns the observed difference, its 95% CI and ``p_better``: the share of resamples in
    which b beats a (1 - p_better is a one-sided p-value for "b is not better").
    """
    if len(a) != len(b):
        raise ValueError("paired bootstrap needs scores on the same examples")
    if not a:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_better": 0.0}
    import numpy as np

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(axis=1)
    return {"diff": float(d.mean()), "ci_low": float(np.quantile(means, 0.025)),
            "ci_high": float(np.quantile(means, 0.975)), "p_better": float((means > 0).mean())}


@dataclass
class EvalResult:
    """Scores per example, the mean with its 95% CI, failures and what it cost."""

    scores: list[float]
    feedback: list[str | None]
    results: list["Result"]
    wall_s: float
    usage: dict[str, int] = field(default_factory=dict)
    cost: float | None = None

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return mean(self.scores)

    @property
    def ci(self) -> tuple[float, float]:
        return bootstrap_ci(self.scores)

    @property
    def failures(self) -> list["Result"]:
        return [r for r in self.results if not r.ok]

    @property
    def parse_failure_rate(self) -> float:
        from ..errors import OutputParseError

        bad = sum(1 for r in self.results if isinstance(r.error, OutputParseError))
        return bad / len(self.results) if self.results else 0.0

    def summary(self) -> dict[str, Any]:
        lo, hi = self.ci
        return {"n": self.n, "mean": round(self.mean, 4), "ci95": [round(lo, 4), round(hi, 4)],
                "failures": len(self.failures), "parse_failure_rate": round(self.parse_failure_rate, 4),
                "wall_s": round(self.wall_s, 3), **self.usage,
                **({"cost": self.cost} if self.cost is not None else {})}

    def __str__(self) -> str:
        lo, hi = self.ci
        return (f"{self.mean:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={self.n}, failures={len(self.failures)}, "
                f"calls={self.usage.get('calls', 0)}, cache_hits={self.usage.get('cache_hits', 0)}, "
                f"tokens={self.usage.get('prompt_tokens', 0) + self.usage.get('completion_tokens', 0)}, "
                f"{self.wall_s:.1f}s)")


async def evaluate(program: "Program", dataset: Sequence[Mapping[str, Any]], metric: Metric, *,
                   ctx: RunContext | None = None, concurrency: int = 8, progress: bool = False) -> EvalResult:
    """Run ``program`` on every example and score it; failed runs score 0 and are kept."""
    t0 = time.perf_counter()
    results = await program.batch(dataset, ctx=ctx, concurrency=concurrency, progress=progress)
    scores: list[float] = []
    feedback: list[str | None] = []
    usage = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
    costs = []
    for ex, res in zip(dataset, results):
        if res.ok:
            s, fb = score_value(metric(ex, res.outputs, res.trace))
        else:
            s, fb = 0.0, f"run failed: {res.error}"
        scores.append(s)
        feedback.append(fb)
        if res.trace is not None:
            for k, v in res.trace.usage.items():
                usage[k] = usage.get(k, 0) + v
            c = res.trace.cost
            if c is not None:
                costs.append(c)
    return EvalResult(scores, feedback, results, time.perf_counter() - t0, usage,
                      sum(costs) if costs else None)


def evaluate_sync(program: "Program", dataset: Sequence[Mapping[str, Any]], metric: Metric, **kwargs: Any
                  ) -> EvalResult:
    from ..pipeline.program import _run_sync

    return _run_sync(evaluate(program, dataset, metric, **kwargs))
