"""The optimizer protocol: a pure pass ``program -> (better program, report)`` under a hard budget.

Subclasses implement :meth:`Optimizer.search` (propose candidates and hand them to
``session.consider``) and :meth:`Optimizer.estimate` (calls a run would need, for ``dry_run``).
The base class checks the inputs before any model call, splits a validation set off the
training set when none is given, evaluates the baseline, stops cleanly when the budget is spent
(returning the best program found so far, saying so in the report) and never mutates the
program it was given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..context import RunContext
from ..errors import BudgetError, DefinitionError
from ..evaluation.datasets import split
from ..evaluation.metrics import Metric, check_metric
from ..lm.wrappers import Budget
from ..pipeline.program import Program, _run_sync
from .acceptance import AcceptancePolicy
from .report import Report
from .session import BudgetStop, CompileSession, check_provider_policy, static_calls_per_example


@dataclass(frozen=True)
class CostEstimate:
    """What a compile would spend at most (from ``dry_run``), before it starts."""

    calls: int
    tokens: int
    breakdown: dict[str, int]
    notes: tuple[str, ...] = ()  # what the plan leaves out, in plain words (and what would cover it)

    def __str__(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in self.breakdown.items())
        return f"<= {self.calls} model calls, ~{self.tokens} tokens ({parts})" + "".join(
            f"\nnote: {n}" for n in self.notes)

    def within(self, max_calls: int | None) -> CostEstimate:
        """This plan cut at ``max_calls``: the phases in order, each with what is left (a compile
        that stops when its budget is spent); tokens scale with the calls kept."""
        if max_calls is None or self.calls <= max_calls:
            return self
        left, capped = max_calls, {}
        for phase, calls in self.breakdown.items():
            capped[phase] = min(calls, left)
            left -= capped[phase]
        total = sum(capped.values())
        return CostEstimate(total, round(self.tokens * total / max(1, self.calls)), capped, self.notes)


def check_rows(program: Program, rows: Sequence[Mapping[str, Any]], name: str) -> None:
    """Every row must be a mapping with the program's inputs (checked before any model call)."""
    if not rows:
        raise DefinitionError(f"the {name} is empty", fix=f"pass at least one example as {name}.")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DefinitionError(f"{name} row {i} is a {type(row).__name__}, not a mapping",
                                  fix="pass rows as dicts of field -> value.")
        missing = [k for k in program.input_specs if k not in row]
        if missing:
            raise DefinitionError(f"{name} row {i} lacks the program input {missing[0]!r}",
                                  field=missing[0],
                                  fix=f"every row needs {', '.join(program.input_specs)} (plus the labels "
                                      "your metric reads).")


def check_budget_covers_baseline(program: Program, valset: Sequence[Mapping[str, Any]],
                                 budget: Budget | None) -> None:
    """A call budget that cannot cover scoring the program as given on the validation set once is a
    BudgetError naming the minimum, raised before any model call."""
    if budget is None or budget.max_calls is None:
        return
    per = static_calls_per_example(program)
    need = len(valset) * per
    if budget.max_calls < need:
        raise BudgetError(f"the budget cannot even cover the baseline evaluation: max_calls={budget.max_calls}, "
                          f"but scoring the program as given on {len(valset)} validation rows takes at least "
                          f"{need} calls ({per} per row)", field="max_calls",
                          fix=f"raise the budget to at least {need} calls, plus room for the candidates "
                              "(dry_run() estimates the whole compile), or pass a smaller valset.")


def _prompt_tokens_guess(program: Program, row: Mapping[str, Any]) -> int:
    """Rough prompt size per example: instructions, demos and inputs at ~4 characters a token."""
    chars = sum(len(str(v)) for v in row.values())
    for n in program.nodes:
        m = n.module
        chars += len(getattr(m, "instructions", "") or "")
        chars += sum(len(str(d)) for d in getattr(m, "demos", ()) or ())
    return chars // 4 + 32 * len(program.nodes)


def _usage_since(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]
                 ) -> dict[str, dict[str, Any]]:
    """Per-node usage counters added between two ``UsageMeter.by_node()`` snapshots."""
    out = {}
    for node, now in after.items():
        was = before.get(node, {})
        delta = {k: round(v - was.get(k, 0), 6) if isinstance(v, float) else v - was.get(k, 0) for k, v in now.items()}
        if any(delta.values()):
            out[node] = delta
    return out


class Optimizer:
    """Base class of every optimizer (a pure pass; see the module docstring)."""

    name: ClassVar[str] = "optimizer"

    def __init__(self, *, accept_confidence: float = 0.95, concurrency: int = 8,
                 checkpoint: str | Path | None = None, progress: bool = False, val_fraction: float = 0.5,
                 early_stop: bool = True, on_provider_failure: str = "retry", provider_reruns: int = 3,
                 acceptance: AcceptancePolicy | None = None) -> None:
        if not 0.5 <= accept_confidence < 1:
            raise DefinitionError("accept_confidence must be in [0.5, 1)",
                                  fix="0.95 accepts a candidate when 95% of paired bootstrap resamples favour it.")
        self.accept_confidence = accept_confidence
        self.concurrency = concurrency
        self.checkpoint = checkpoint
        self.progress = progress
        self.val_fraction = val_fraction
        # score candidates on the valset in stages (1/4, 1/2, all) and drop one as soon as it is
        # clearly worse than the incumbent: fewer calls, same acceptance rule for the survivors
        self.early_stop = early_stop
        # rows the provider never answered: re-run them ("retry", provider_reruns times) or stop at
        # once ("stop"); never scored (see CompileSession). Not part of config(): it cannot change a result
        check_provider_policy(on_provider_failure, provider_reruns)
        self.on_provider_failure = on_provider_failure
        self.provider_reruns = provider_reruns
        # whether a candidate replaces the program so far (None: the paired bootstrap at accept_confidence)
        if acceptance is not None and not callable(getattr(acceptance, "decide", None)):
            raise DefinitionError(f"acceptance must be an AcceptancePolicy, got {type(acceptance).__name__}",
                                  fix="subclass lmgraph.optimizers.acceptance.AcceptancePolicy and define decide().")
        self.acceptance = acceptance

    # ---- subclass API
    def config(self) -> dict[str, Any]:
        """JSON-able settings (recorded in the report; part of the checkpoint fingerprint)."""
        out: dict[str, Any] = {"accept_confidence": self.accept_confidence, "early_stop": self.early_stop}
        if self.acceptance is not None:  # a custom policy is part of what the compile was run with
            out["acceptance"] = self.acceptance.describe()
        return out

    async def search(self, session: CompileSession) -> None:
        raise NotImplementedError

    def estimate(self, program: Program, n_train: int, n_val: int) -> dict[str, int]:
        """Upper bound of model calls per phase (for ``dry_run``)."""
        raise NotImplementedError

    # ---- public API
    def dry_run(self, program: Program, trainset: Sequence[Mapping[str, Any]],
                valset: Sequence[Mapping[str, Any]] | None = None, *, budget: Budget | None = None,
                ctx: RunContext | None = None) -> CostEstimate:
        """What the compile would spend at most, before any model call. With a call ``budget``: what
        it would spend within it (the phases in order, each with what the budget has left: this
        optimizer stops when the budget is spent); a budget that cannot cover scoring the program as
        given is a BudgetError naming the minimum. ``ctx`` is accepted for the optimizers whose plan
        depends on the context's models (:class:`~lmgraph.optimizers.Compile`)."""
        train, val, _ = self._split(program, trainset, valset, seed=0)
        check_budget_covers_baseline(program, val, budget)
        per = static_calls_per_example(program)
        breakdown = {"baseline": len(val) * per, **self.estimate(program, len(train), len(val))}
        if program.estimated_calls() > program.estimated_calls(repairs=False):
            # some model call (also inside Refine, BestOfN, Map, CallTool) may be followed by one
            # repair call, and none by more: double for a true upper bound
            breakdown = {k: 2 * v for k, v in breakdown.items()}
        calls = sum(breakdown.values())
        tokens = calls * (_prompt_tokens_guess(program, train[0]) // max(1, per) + 64)
        full = CostEstimate(calls, tokens, breakdown)
        return full if budget is None else full.within(budget.max_calls)

    def _split(self, program: Program, trainset: Sequence[Mapping[str, Any]],
               valset: Sequence[Mapping[str, Any]] | None, seed: int
               ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], str]:
        check_rows(program, trainset, "trainset")
        if valset is not None:
            check_rows(program, valset, "valset")
            return list(trainset), list(valset), ""
        if len(trainset) < 2:
            raise DefinitionError("need at least 2 training examples to split off a validation set",
                                  fix="pass more examples or an explicit valset=.")
        n_val = max(1, min(len(trainset) - 1, round(len(trainset) * self.val_fraction)))
        val, train = split(trainset, [n_val, len(trainset) - n_val], seed=seed)
        return train, val, f"no valset given: {n_val} of {len(trainset)} training examples held out (seed {seed})"

    async def aoptimize(self, program: Program, trainset: Sequence[Mapping[str, Any]], metric: Metric, *,
                        valset: Sequence[Mapping[str, Any]] | None = None, budget: Budget | None = None,
                        seed: int = 0, ctx: RunContext | None = None) -> tuple[Program, Report]:
        if not isinstance(program, Program):
            raise DefinitionError("optimize() takes a built Program", fix="call pipeline.build() first.")
        if not callable(metric):
            raise DefinitionError("metric must be callable (example, prediction, trace) -> float")
        train, val, note = self._split(program, trainset, valset, seed)
        for rows, what in ((train, "trainset"), (val, "valset")):  # labels present, arity usable
            check_metric(metric, rows, program=program, name=what)
        check_budget_covers_baseline(program, val, budget)
        t0 = time.perf_counter()
        session = CompileSession(optimizer=self.name, config=self.config(), program=program, trainset=train,
                                 valset=val, metric=metric, ctx=ctx, budget=budget, seed=seed,
                                 checkpoint=self.checkpoint, concurrency=self.concurrency,
                                 accept_confidence=self.accept_confidence, progress=self.progress,
                                 data_note=note, early_stop=self.early_stop,
                                 on_provider_failure=self.on_provider_failure, provider_reruns=self.provider_reruns,
                                 acceptance=self.acceptance)
        report = session.report
        misses_before = int(session.ctx.usage.total()["calls"])
        nodes_before = session.ctx.usage.by_node()
        try:
            await self.run_baseline(session)
            await self.search(session)
        except BudgetStop as e:
            report.stopped = str(e)
        if not report.candidates:
            report.stopped = report.stopped or "no evaluation was possible"
            raise DefinitionError(f"the budget cannot even cover the baseline evaluation ({report.stopped})",
                                  fix="raise the budget or pass a smaller valset.")
        inc = session.incumbent_candidate
        report.best_id = inc.id if inc is not None else 0
        if inc is not None and inc.id != report.baseline.id:
            what = "; ".join(f"{node}: " + ", ".join(f"{k}={v}" for k, v in ch.items())
                             for node, ch in inc.changes.items()) or inc.label
            base, where = report.baseline_on(inc)
            report.notes.append(f"what made the difference: candidate #{inc.id} ({inc.label}) -- {what}; "
                                f"validation {base:.3f} -> {inc.mean:.3f}{where}")
        elif inc is not None:
            report.notes.append("no candidate beat the baseline with enough evidence; the program is unchanged")
        snap = session.meter.snapshot()
        report.spent = {"calls": snap["calls"], "tokens": snap["total_tokens"],
                        "dollars": round(snap["dollars"], 6)}
        report.runtime = {"cache_misses": int(session.ctx.usage.total()["calls"]) - misses_before,
                          "replayed_evaluations": session.replayed,
                          # per node: requests answered (cache hits included), calls that reached the model,
                          # their tokens; what this process ran (a resumed compile's replayed runs are not here)
                          "nodes": _usage_since(nodes_before, session.ctx.usage.by_node())}
        report.wall_s = time.perf_counter() - t0
        return session.incumbent, report

    async def run_baseline(self, session: CompileSession) -> None:
        """Score the program as given on the validation rows (an optimizer may first measure what
        rows take and keep fewer: :meth:`CompileSession.narrow_valset`)."""
        await session.baseline()

    def optimize(self, program: Program, trainset: Sequence[Mapping[str, Any]], metric: Metric, *,
                 valset: Sequence[Mapping[str, Any]] | None = None, budget: Budget | None = None,
                 seed: int = 0, ctx: RunContext | None = None) -> tuple[Program, Report]:
        """Sync wrapper of :meth:`aoptimize`."""
        return _run_sync(self.aoptimize(program, trainset, metric, valset=valset, budget=budget, seed=seed,
                                        ctx=ctx))
