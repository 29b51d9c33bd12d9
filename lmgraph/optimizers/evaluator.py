"""The Evaluator: runs a program on rows through the memo and the checkpoint, under the budget.

Every evaluation is memoised by (kind, program hash, rows hash) and appended to the checkpoint
(:mod:`.checkpoint`), so a killed compile restarted with the same arguments replays completed
evaluations (charging their recorded spend) instead of repeating them, and ends with the same
result. The budget counts *logical* model calls, so cached and uncached runs spend alike; an
evaluation the budget left cannot cover raises :class:`BudgetStop` before any call.

A provider failure is not an answer: rows the provider never answered (after the retry layer's
tries) are re-run, up to ``provider_reruns`` times, and an evaluation is memoised, checkpointed
and used only once every row has a real outcome (right, wrong or unreadable). The logical calls
of a re-run row count once. If rows still fail -- or at once with ``on_provider_failure="stop"``
-- the compile stops with a :class:`~lmgraph.errors.ProviderFailureError`; with a checkpoint it
resumes where it stopped.

:meth:`Evaluator.staged` scores a program on validation rows stage by stage and returns
:class:`Scored` -- per-row scores *with the ids of the rows they are on* -- so whoever compares
them with another candidate's scores can pair them row by row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..context import RunContext
from ..errors import ConfigError, ProviderFailureError
from ..evaluation.datasets import fingerprint
from ..evaluation.evaluate import evaluate
from ..evaluation.metrics import Metric
from ..lm.values import jsonable
from ..pipeline.program import Program
from .checkpoint import Checkpoint, _hash
from .report import Report

if TYPE_CHECKING:
    from ..lm.wrappers import BudgetMeter

PROVIDER_FAILURE_POLICIES = ("retry", "stop")


class BudgetStop(Exception):
    """Raised inside a search when the budget cannot cover the next evaluation."""


def check_provider_policy(on_provider_failure: str, provider_reruns: int) -> None:
    """The optimizer's provider-failure policy must be one it knows (ConfigError otherwise)."""
    if on_provider_failure not in PROVIDER_FAILURE_POLICIES:
        raise ConfigError(f"on_provider_failure is {on_provider_failure!r}; it must be one of "
                          f"{', '.join(map(repr, PROVIDER_FAILURE_POLICIES))}", field="on_provider_failure",
                          fix="'retry' re-runs rows the provider never answered (provider_reruns times) and stops "
                              "if they still fail; 'stop' stops at the first such row.")
    if isinstance(provider_reruns, bool) or not isinstance(provider_reruns, int) or provider_reruns < 0:
        raise ConfigError(f"provider_reruns is {provider_reruns!r}; it must be a whole number >= 0",
                          field="provider_reruns", fix="e.g. provider_reruns=3.")


def static_calls_per_example(program: Program) -> int:
    """A guess of model calls per example before anything was measured: each module's
    ``estimated_calls()`` (a Map's fan-out, Refine's rounds, a tool loop's steps counted), repair
    calls aside (a budget paced by the upper bound would afford half the evaluations it can;
    ``dry_run`` reports the upper bound)."""
    return max(1, program.estimated_calls(repairs=False))


@dataclass
class Scored:
    """Per-row scores of one program with the validation rows they are on (``rows[k]`` is the
    index in the validation set of the row ``scores[k]`` belongs to), the spend, and -- when the
    evaluation stopped before the last stage -- the evidence it stopped on."""

    rows: list[int]
    scores: list[float]
    usage: dict[str, float] = field(default_factory=lambda: {"calls": 0, "prompt_tokens": 0,
                                                             "completion_tokens": 0, "dollars": 0.0})
    evidence: dict[str, float] | None = None
    unparsed: int = 0  # rows whose reply could not be read

    def entry(self) -> dict[str, Any]:
        """The memo-entry view (``scores``, ``usage``, ``unparsed``) a report row is made from."""
        return {"scores": list(self.scores), "usage": dict(self.usage), "unparsed": self.unparsed}


def unparsed_rows(entry: Mapping[str, Any]) -> int:
    """How many of an evaluation's rows got a reply that could not be read (``parse_failure``):
    counted from its per-row outcomes, or the entry's own ``unparsed`` count (a report row's view)."""
    if "unparsed" in entry:
        return int(entry["unparsed"])
    return sum(1 for ex in entry.get("examples") or () if ex.get("status") == "parse_failure")


# look(rows scored so far, their scores) -> evidence to stop on, or None to go on
StageLook = Callable[[Sequence[int], Sequence[float]], "dict[str, float] | None"]


class Evaluator:
    """Runs programs on rows: memoised, checkpointed, budgeted, provider faults handled."""

    def __init__(self, *, ctx: RunContext, metric: Metric, report: Report, concurrency: int,
                 checkpoint: str | Path | None, fingerprint: str, on_provider_failure: str = "retry",
                 provider_reruns: int = 3) -> None:
        check_provider_policy(on_provider_failure, provider_reruns)
        self.ctx = ctx
        meter = ctx.budget_meter
        assert meter is not None, "the session's context carries a budget"
        self.meter: BudgetMeter = meter
        self.metric = metric
        self.report = report  # where row outcomes (failures) and provider faults are written
        self.concurrency = concurrency
        self.on_provider_failure = on_provider_failure
        self.provider_reruns = provider_reruns
        self.reporter: Any = None  # the session's CompileProgress (set once the session has one)
        self.observed_calls: float | None = None
        self.replayed = 0
        # provider faults seen (run to run these differ; the result must not): rows that got no
        # answer and were re-run, re-run passes, and rows still without one when the compile stopped
        self.faults: dict[str, int] = {"rows_without_answer": 0, "reruns": 0, "stopped": 0}
        self._counted: set[str] = set()  # memo keys whose outcomes are in report.failures
        self._charged: set[str] = set()  # memo keys already paid for in this process
        self.checkpoint = Checkpoint(checkpoint, fingerprint) if checkpoint else None
        self.memo: dict[str, dict[str, Any]] = self.checkpoint.load() if self.checkpoint else {}

    # ---- memo
    def remember(self, key: str, entry: dict[str, Any]) -> None:
        """Memoise ``entry`` under ``key`` and append it to the checkpoint (durably, before returning)."""
        self.memo[key] = entry
        if self.checkpoint is not None:
            self.checkpoint.append(key, entry)

    def join(self, program: Program, parts: Sequence[tuple[Sequence[Mapping[str, Any]], Mapping[str, Any]]],
             kind: str = "eval") -> None:
        """Memoise ``program``'s evaluation on the rows of ``parts`` (each ``(rows, entry)``, already
        run and paid for), one part after another, as the parts' entries joined: a later run on all
        those rows is a memo hit that costs nothing more. Not checkpointed (the parts are)."""
        rows = [r for rs, _ in parts for r in rs]
        key = _hash({"kind": kind, "program": program.content_hash(), "rows": fingerprint(rows)})
        usage = {k: sum(e["usage"].get(k, 0) for _, e in parts)
                 for k in ("calls", "prompt_tokens", "completion_tokens", "dollars")}
        self.memo[key] = {"scores": [x for _, e in parts for x in e["scores"]],
                          "examples": [x for _, e in parts for x in e["examples"]], "usage": usage}
        self._charged.add(key)
        self._counted.add(key)  # the parts' outcomes are counted already

    def recall(self, key: str) -> dict[str, Any] | None:
        """A memo entry that is not an evaluation (a proposer's text): charged its recorded spend
        (every time: like a run, a recalled call counts), None when absent."""
        hit = self.memo.get(key)
        if hit is not None:
            u = hit["usage"]
            self.meter.charge(calls=u["calls"], prompt_tokens=u["prompt_tokens"],
                              completion_tokens=u["completion_tokens"], dollars=u.get("dollars", 0.0))
            self.replayed += 1
        return hit

    # ---- budget
    def remaining_calls(self) -> int | None:
        return self.meter.remaining()["calls"]  # type: ignore[return-value]

    def calls_per_example(self, program: Program, per_row: float | None = None) -> float:
        """Calls a row of ``program`` is expected to take: its static count, or the caller's estimate
        for this program (``per_row``, e.g. what rows of the same shape took), else the most any
        evaluation so far took a row."""
        static = static_calls_per_example(program)
        return max(static, per_row if per_row is not None else self.observed_calls or 0.0)

    def can_afford(self, program: Program, n_rows: int, per_row: float | None = None) -> bool:
        rem = self.remaining_calls()
        if self.meter.exhausted:
            return False
        return rem is None or n_rows * self.calls_per_example(program, per_row) <= rem

    # ---- evaluation
    async def run(self, program: Program, rows: Sequence[Mapping[str, Any]], *, kind: str = "eval",
                  per_row: float | None = None) -> dict[str, Any]:
        """Evaluate ``program`` on ``rows``: per-example scores, outputs and node I/O, and spend
        (``per_row``: the caller's estimate of its calls a row, for the affordability check).

        Raises BudgetStop (before any call) when the remaining budget can't cover it.
        """
        key = _hash({"kind": kind, "program": program.content_hash(), "rows": fingerprint(rows)})
        if self.reporter is not None:
            self.reporter.evaluating(program, kind)
        hit = self.memo.get(key)
        if hit is not None:
            self._count_outcomes(key, hit)
            if key not in self._charged:  # replayed from a checkpoint: charge what it cost then
                u = hit["usage"]
                self.meter.charge(calls=u["calls"], prompt_tokens=u["prompt_tokens"],
                                  completion_tokens=u["completion_tokens"], dollars=u.get("dollars", 0.0))
                self._charged.add(key)
                self.replayed += 1
                if kind != "propose" and hit.get("scores") is not None:
                    # same state as the original run: later can_afford() decisions must match
                    self.observed_calls = max(self.observed_calls or 0.0, u["calls"] / max(1, len(rows)))
            return hit
        if not self.can_afford(program, len(rows), per_row):
            rem = self.remaining_calls()
            raise BudgetStop(f"budget left ({rem} calls) cannot cover evaluating {len(rows)} examples "
                             f"at ~{self.calls_per_example(program, per_row):.1f} calls each")
        before = self.meter.snapshot()
        results, scores, feedback, statuses = await self._evaluate_all(program, rows, kind)
        after = self.meter.snapshot()
        usage = {k: after[k] - before[k] for k in ("calls", "prompt_tokens", "completion_tokens", "dollars")}
        examples = []
        for r, s, fb, st in zip(results, scores, feedback, statuses):
            # fb: the metric's text, if any; status: ok / parse_failure / error (never a provider failure)
            ex: dict[str, Any] = {"score": s, "ok": r.ok, "feedback": fb, "status": st}
            if r.ok:
                ex["outputs"] = jsonable(dict(r.outputs))
                ex["nodes"] = {n.node: {"inputs": jsonable(n.inputs), "outputs": jsonable(n.outputs)}
                               for n in r.trace.nodes} if r.trace else {}
                nested = program.nested_io(r.trace) if r.trace else {}
                if nested:  # nested modules' I/O by path (Refine's generator, a Map's sub-nodes...)
                    ex["params_io"] = jsonable(nested)
            else:
                ex["error"] = f"{type(r.error).__name__}: {r.error}"
            dropped = {n.node: n.meta["demos_dropped"] for n in (r.trace.nodes if r.trace else ())
                       if n.meta.get("demos_dropped")}
            if dropped:  # the prompt did not fit the context window with every demo (see modules.predict)
                ex["demos_dropped"] = dropped
            examples.append(ex)
        entry = {"scores": scores, "examples": examples, "usage": usage}
        per_ex = usage["calls"] / max(1, len(rows))
        self.observed_calls = max(self.observed_calls or 0.0, per_ex)
        self.remember(key, entry)
        self._charged.add(key)
        self._count_outcomes(key, entry)
        return entry

    async def staged(self, program: Program, valset: Sequence[Mapping[str, Any]], order: Sequence[int],
                     ends: Sequence[int], look: StageLook) -> Scored:
        """Score ``program`` on the validation rows in stages: stage j runs the rows
        ``order[ends[j-1]:ends[j]]`` (each stage one memoised evaluation). After every stage but
        the last, ``look(rows so far, their scores)`` may return evidence to stop on; the result
        then holds the rows scored so far in stage order. A full result is in valset order."""
        scored = Scored(rows=[], scores=[])
        start = 0
        for end in ends:
            idx = list(order[start:end])
            entry = await self.run(program, [valset[i] for i in idx])
            scored.rows += idx
            scored.scores += entry["scores"]
            scored.unparsed += unparsed_rows(entry)
            for k in scored.usage:
                scored.usage[k] += entry["usage"].get(k, 0)
            start = end
            if end < len(valset):
                ev = look(scored.rows, scored.scores)
                if ev is not None:
                    scored.evidence = ev
                    return scored
        at = {i: k for k, i in enumerate(scored.rows)}
        scored.scores = [scored.scores[at[i]] for i in range(len(valset))]  # back in valset order
        scored.rows = list(range(len(valset)))
        return scored

    async def _evaluate_all(self, program: Program, rows: Sequence[Mapping[str, Any]], kind: str
                            ) -> tuple[list[Any], list[float], list[str | None], list[str]]:
        """Evaluate ``program`` on ``rows`` until every row has a real outcome: rows the provider
        never answered are re-run (``provider_reruns`` times at most; their calls are given back to
        the budget first, so a re-run row counts its logical calls once). BudgetStop when the budget
        ran out mid-way; ProviderFailureError when rows still have no answer."""
        res = await self._evaluate(program, rows, kind)
        results, scores = list(res.results), list(res.scores)
        feedback, statuses = list(res.feedback), list(res.statuses)
        reruns = 0
        while True:
            if "budget" in statuses:
                raise BudgetStop("budget spent during an evaluation (it is not used)")
            lost = [i for i, st in enumerate(statuses) if st == "provider_failure"]
            if not lost:
                return results, scores, feedback, statuses
            self._give_back([results[i] for i in lost])
            self.faults["rows_without_answer"] += len(lost)
            last = results[lost[-1]].error
            if self.on_provider_failure == "stop" or reruns >= self.provider_reruns:
                self.faults["stopped"] = len(lost)
                self._faults_to_report()
                tries = (f"after {reruns} re-run{'s' if reruns != 1 else ''} of the failed rows"
                         if self.on_provider_failure == "retry" else "(on_provider_failure='stop')")
                raise ProviderFailureError(
                    f"{len(lost)} of {len(rows)} rows got no answer from the provider {tries}, each after "
                    f"the retry layer's tries; last error: {type(last).__name__}: {last}. Nothing failed was "
                    "scored, memoised or checkpointed. Fix: check the server/provider, then run the compile again "
                    "(with checkpoint= it resumes where it stopped); give retries more room with "
                    "RunContext(retries=RetryPolicy(attempts=..., deadline_s=...)) or the optimizer more "
                    "re-runs (provider_reruns=...).", failed=len(lost), total=len(rows),
                    last_error=f"{type(last).__name__}: {last}") from last
            reruns += 1
            self.faults["reruns"] += 1
            sub = await self._evaluate(program, [rows[i] for i in lost], kind)
            for j, i in enumerate(lost):
                results[i], scores[i] = sub.results[j], sub.scores[j]
                feedback[i], statuses[i] = sub.feedback[j], sub.statuses[j]
            self._faults_to_report()

    def _evaluate(self, program: Program, rows: Sequence[Mapping[str, Any]], kind: str) -> Awaitable[Any]:
        progress = (self.reporter.rows(len(rows), kind) if self.reporter is not None else None) or False
        return evaluate(program, rows, self.metric, ctx=self.ctx, concurrency=self.concurrency,
                        progress=progress, provider_warning=False)

    def _give_back(self, failed: Sequence[Any]) -> None:
        """Return to the budget the logical calls (and their tokens) that rows without an answer
        made before failing: their re-run makes them again, and counts them then."""
        calls = hits = prompt = completion = 0
        dollars = 0.0
        for r in failed:
            if r.trace is None:
                continue
            u = r.trace.usage
            calls += u.get("calls", 0)
            hits += u.get("cache_hits", 0)
            prompt += u.get("prompt_tokens", 0)
            completion += u.get("completion_tokens", 0)
            dollars += r.trace.cost or 0.0
        if calls:
            self.meter.charge(calls=-calls, prompt_tokens=-prompt, completion_tokens=-completion,
                              dollars=-dollars, cache_hits=-hits)

    def _count_outcomes(self, key: str, entry: Mapping[str, Any]) -> None:
        """Add an evaluation's row outcomes to ``report.failures`` (once per evaluation)."""
        if key in self._counted or entry.get("examples") is None:
            return
        self._counted.add(key)
        fails = self.report.failures
        for ex in entry["examples"]:
            st = ex.get("status") or ("ok" if ex.get("ok") else "error")
            if st != "ok":
                fails[st] = fails.get(st, 0) + 1
            for node, n in (ex.get("demos_dropped") or {}).items():
                fit = self.report.data.setdefault("demos_dropped", {})
                got = fit.setdefault(node, {"rows": 0, "demos": 0})
                got["rows"] += 1
                got["demos"] += int(n)
        self._faults_to_report()

    def _faults_to_report(self) -> None:
        self.report.faults = {**self.faults, "requests": int(self.meter.snapshot().get("requests", 0))}


__all__ = [
    "PROVIDER_FAILURE_POLICIES",
    "BudgetStop",
    "Evaluator",
    "Scored",
    "check_provider_policy",
    "static_calls_per_example",
    "unparsed_rows",
]
