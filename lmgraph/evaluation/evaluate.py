"""evaluate(): run a program over a dataset concurrently and score it, with a 95% bootstrap CI."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..context import RunContext
from ..errors import BudgetExceeded, MetricError, MetricWarning, OutputParseError, ProviderWarning
from ..lm.faults import is_provider_failure
from .metrics import Metric, check_metric, describe_row, mean, metric_name, row_id, score_value

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


# what happened to a row: the model answered (ok), answered unreadably (parse_failure: a wrong
# answer, scored by the metric like any other), the run failed otherwise (error: a tool or module
# bug, a request no retry can fix; scored 0), or no answer came: the provider kept failing
# (provider_failure) or the budget was spent (budget). Rows without an answer are not scored.
ROW_STATUSES = ("ok", "parse_failure", "error", "provider_failure", "budget")
NO_ANSWER = ("provider_failure", "budget")


def row_status(error: BaseException | None) -> str:
    """The :data:`ROW_STATUSES` entry for a row that ended with ``error`` (None: ok)."""
    if error is None:
        return "ok"
    seen: list[BaseException] = []
    cur: BaseException | None = error
    while cur is not None and all(cur is not e for e in seen):
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any(isinstance(e, BudgetExceeded) for e in seen):
        return "budget"
    if is_provider_failure(error):
        return "provider_failure"
    if any(isinstance(e, OutputParseError) for e in seen):
        return "parse_failure"
    return "error"


@dataclass(frozen=True)
class MetricFailure:
    """The metric raised on one row (the row was scored 0)."""

    index: int
    row_id: Any
    metric: str
    error_type: str
    message: str

    def __str__(self) -> str:
        rid = f" (id {self.row_id!r})" if self.row_id is not None else ""
        return f"row {self.index}{rid}: {self.error_type}: {self.message}"


@dataclass
class EvalResult:
    """Scores per example, the mean with its 95% CI, failures and what it cost.

    ``feedback`` holds, per row, the text a metric returned as ``(score, feedback)`` (or why the row
    scored 0); ``metric_errors`` the rows on which the metric itself raised (scored 0).
    ``statuses`` says per row what happened (:data:`ROW_STATUSES`). A row the provider never
    answered (``provider_failure``, after retries) or that the budget stopped (``budget``) has no
    score: its entry in ``scores`` is a 0.0 placeholder, left out of ``mean`` and ``ci`` and
    counted in ``no_answer``; re-run those rows (``provider_failures``) before trusting the mean."""

    scores: list[float]
    feedback: list[str | None]
    results: list[Result]
    wall_s: float
    usage: dict[str, int] = field(default_factory=dict)
    cost: float | None = None
    metric_errors: list[MetricFailure] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.statuses:
            self.statuses = [row_status(r.error) for r in self.results]

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def scored(self) -> list[float]:
        """The scores of the rows that got an answer (every row but provider failures and budget stops)."""
        if not self.statuses:
            return list(self.scores)
        return [s for s, st in zip(self.scores, self.statuses) if st not in NO_ANSWER]

    @property
    def mean(self) -> float:
        return mean(self.scored)

    @property
    def ci(self) -> tuple[float, float]:
        return bootstrap_ci(self.scored)

    @property
    def status_counts(self) -> dict[str, int]:
        """Rows per status (only statuses that occur)."""
        out: dict[str, int] = {}
        for st in self.statuses:
            out[st] = out.get(st, 0) + 1
        return out

    @property
    def no_answer(self) -> int:
        """Rows without an answer (provider failures and budget stops): not scored."""
        return sum(1 for st in self.statuses if st in NO_ANSWER)

    @property
    def complete(self) -> bool:
        """Every row got an answer (right, wrong or unreadable): the mean covers all of them."""
        return self.no_answer == 0

    @property
    def provider_failures(self) -> list[Result]:
        """The rows the provider never answered (after retries), to re-run."""
        return [r for r, st in zip(self.results, self.statuses) if st == "provider_failure"]

    @property
    def failures(self) -> list[Result]:
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
                "metric_errors": len(self.metric_errors), "statuses": self.status_counts,
                "no_answer": self.no_answer,
                "wall_s": round(self.wall_s, 3), **self.usage,
                **({"cost": self.cost} if self.cost is not None else {})}

    def __str__(self) -> str:
        lo, hi = self.ci
        errs = f"metric_errors={len(self.metric_errors)}, " if self.metric_errors else ""
        if self.no_answer:
            errs += f"no answer={self.no_answer} (not scored), "
        return (f"{self.mean:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={self.n}, failures={len(self.failures)}, {errs}"
                f"calls={self.usage.get('calls', 0)}, cache_hits={self.usage.get('cache_hits', 0)}, "
                f"tokens={self.usage.get('prompt_tokens', 0) + self.usage.get('completion_tokens', 0)}, "
                f"{self.wall_s:.1f}s)")


async def evaluate(program: Program, dataset: Sequence[Mapping[str, Any]], metric: Metric, *,
                   ctx: RunContext | None = None, concurrency: int = 8, progress: Any = False,
                   strict: bool = False, provider_warning: bool = True, executor: Any = None) -> EvalResult:
    """Run ``program`` on every example and score it; failed runs score 0 and are kept -- except rows
    that got no answer at all (the provider kept failing after retries, or the budget ran out):
    those have status ``provider_failure``/``budget`` in ``EvalResult.statuses``, are left out of
    the mean, and provider failures are reported in one :class:`~lmgraph.errors.ProviderWarning`.
    An unparseable answer is an answer (status ``parse_failure``), scored by the metric as usual.

    Before any model call the metric is checked (its arity; a 2-argument ``(example, prediction)``
    function is adapted) and every row is checked for the fields the metric declares. A metric
    that raises on a row scores that row 0, is recorded in ``EvalResult.metric_errors`` and
    reported in one warning -- unless ``strict=True``, which raises a :class:`MetricError` naming the
    row (the metric's exception chained). A metric returning something that is not a score is
    always a MetricError.

    Rows are scored as they finish. ``progress=True`` shows a live display on stderr when it is a
    terminal (rows done of total, failures, the running mean); ``"always"`` draws it even when
    stderr is not a terminal; False (the default) is quiet. ``provider_warning=False`` leaves the
    provider-failure warning to a caller that handles those rows itself (a compile re-runs them).
    ``executor``: where the rows run (:mod:`lmgraph.executors`; default the context's, else here)."""
    from ..progress import row_progress

    t0 = time.perf_counter()
    dataset = list(dataset)
    ready = check_metric(metric, dataset, program=program)
    name = metric_name(metric)
    n = len(dataset)
    scored: list[tuple[float, str | None] | None] = [None] * n
    statuses: list[str] = ["ok"] * n
    errors: list[MetricFailure] = []
    shown = row_progress(progress, total=n, label=f"evaluating {program.name}")

    def score(res: Result) -> None:  # called as each row finishes
        i, ex = res.index, dataset[res.index]
        failed = not res.ok
        statuses[i] = status = row_status(res.error)
        if res.ok:
            try:
                raw = ready(ex, res.outputs, res.trace)
            except BudgetExceeded:  # a model-judged metric ran out of budget: a stop, not a metric bug
                raise
            except Exception as e:  # noqa: BLE001 - any failure of user code is recorded per row
                if strict:
                    raise MetricError(f"raised {type(e).__name__} on {describe_row(i, ex)}: {e}", metric=name,
                                      row=i, fix="fix the metric for this row, or pass strict=False to score "
                                                 "such rows 0 and carry on.") from e
                errors.append(MetricFailure(i, row_id(ex), name, type(e).__name__, str(e)))
                scored[i] = (0.0, f"metric failed: {type(e).__name__}: {e}")
                failed = True
            else:
                scored[i] = score_value(raw, metric=name, row=i)
        elif status in NO_ANSWER:
            scored[i] = (0.0, f"no answer ({status.replace('_', ' ')}, not scored): {res.error}")
        else:
            scored[i] = (0.0, f"run failed: {res.error}")
        if shown is not None:
            shown.row(not failed, scored[i][0])  # type: ignore[index]

    try:
        results = await program.batch(dataset, ctx=ctx, concurrency=concurrency, on_result=score,
                                      executor=executor)
    finally:
        if shown is not None:
            shown.close()
    scores = [s for s, _ in scored]  # type: ignore[misc]
    feedback = [fb for _, fb in scored]  # type: ignore[misc]
    errors.sort(key=lambda e: e.index)
    usage = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
    costs = []
    for res in results:
        if res.trace is not None:
            for k, v in res.trace.usage.items():
                usage[k] = usage.get(k, 0) + v
            c = res.trace.cost
            if c is not None:
                costs.append(c)
    if errors:
        listed = "; ".join(str(e) for e in errors[:3]) + ("; ..." if len(errors) > 3 else "")
        warnings.warn(f"metric {name!r} raised on {len(errors)} of {len(dataset)} rows (scored 0): {listed}. "
                      "See EvalResult.metric_errors; pass strict=True to raise instead.", MetricWarning,
                      stacklevel=2)
    lost = [i for i, st in enumerate(statuses) if st == "provider_failure"]
    if lost and provider_warning:
        last = results[lost[-1]].error
        warnings.warn(f"{len(lost)} of {len(dataset)} rows got no answer from the provider after retries "
                      f"(rows {', '.join(map(str, lost[:5]))}{', ...' if len(lost) > 5 else ''}; last error: {last}). "
                      "They are not scored: the mean covers the other rows. Re-run them "
                      "(EvalResult.provider_failures), or give retries more room: "
                      "RunContext(retries=RetryPolicy(attempts=..., deadline_s=...)).", ProviderWarning, stacklevel=2)
    return EvalResult(scores, feedback, results, time.perf_counter() - t0, usage,
                      sum(costs) if costs else None, errors, statuses)


def evaluate_sync(program: Program, dataset: Sequence[Mapping[str, Any]], metric: Metric, **kwargs: Any
                  ) -> EvalResult:
    from ..pipeline.program import _run_sync

    return _run_sync(evaluate(program, dataset, metric, **kwargs))
