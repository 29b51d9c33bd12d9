"""CompileSession: the one path every optimizer evaluates through (a thin facade).

It joins three parts:

* the :class:`~.evaluator.Evaluator` -- runs a program on rows through the memo and the
  checkpoint under the compile's hard budget (logical model calls, so cached and uncached runs
  spend alike), re-runs rows the provider never answered, and raises :class:`BudgetStop` before
  an evaluation the budget cannot cover;
* the :class:`~.acceptance.AcceptancePolicy` -- whether a candidate replaces the incumbent (by
  default a paired bootstrap over validation rows, :class:`~.acceptance.PairedBootstrap`);
* the :class:`~.ledger.Ledger` -- the report's candidate rows and the validation rows each one's
  scores are on.

The incumbent (the program so far and its report row) changes only through
:meth:`CompileSession.set_incumbent`, which keeps the incumbent's scores by validation row id and
refuses a candidate whose scores do not cover every row (an internal
:class:`~.ledger.IncumbentError`), so later comparisons always pair the right rows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cache.keys import strip_credentials
from ..context import RunContext
from ..evaluation.datasets import fingerprint
from ..evaluation.metrics import Metric
from ..lm.wrappers import Budget
from ..pipeline.program import Program
from .acceptance import AcceptancePolicy, PairedBootstrap
from .checkpoint import CHECKPOINT_VERSION, _hash
from .evaluator import PROVIDER_FAILURE_POLICIES, BudgetStop, Evaluator, check_provider_policy, static_calls_per_example
from .ledger import IncumbentError, Ledger
from .progress import CompileProgress
from .report import Candidate, Report


class CompileSession:
    def __init__(self, *, optimizer: str, config: Mapping[str, Any], program: Program,
                 trainset: Sequence[Mapping[str, Any]], valset: Sequence[Mapping[str, Any]], metric: Metric,
                 ctx: RunContext | None, budget: Budget | None, seed: int, checkpoint: str | Path | None,
                 concurrency: int, accept_confidence: float, progress: bool, data_note: str = "",
                 early_stop: bool = True, early_stop_min: int = 8, on_provider_failure: str = "retry",
                 provider_reruns: int = 3, acceptance: AcceptancePolicy | None = None) -> None:
        check_provider_policy(on_provider_failure, provider_reruns)
        base = ctx if ctx is not None else RunContext()
        self.ctx = base.replace(budget=budget or Budget(), budget_counts_cache_hits=True)
        self.metric = metric
        self.trainset = list(trainset)
        self.valset = list(valset)
        self.seed = seed
        self.rng = random.Random(seed)
        self.concurrency = concurrency
        self.accept_confidence = accept_confidence
        self.acceptance: AcceptancePolicy = acceptance if acceptance is not None else PairedBootstrap(accept_confidence)
        self.progress = progress
        self.early_stop = early_stop
        self.early_stop_min = max(1, early_stop_min)
        # the order in which validation rows are scored when a candidate is evaluated in stages: a
        # seeded permutation of its own (a valset sorted by label must not make a stage one-sided)
        self._stage_perm = list(range(len(self.valset)))
        random.Random(f"stages:{seed}").shuffle(self._stage_perm)
        self._val_fp = fingerprint(self.valset)
        data: dict[str, Any] = {"train": {"n": len(self.trainset), "sha256_16": fingerprint(self.trainset)},
                "val": {"n": len(self.valset), "sha256_16": self._val_fp}}
        if data_note:
            data["note"] = data_note
        b = budget or Budget()
        self.report = Report(optimizer=optimizer, seed=seed, config=dict(config),
                             budget={"max_calls": b.max_calls, "max_tokens": b.max_tokens,
                                     "max_dollars": b.max_dollars},
                             data=data)
        # the models are arguments too: a memo made with another model must not be replayed
        models = {"lm": strip_credentials(base.lm.identity()) if base.lm is not None else "default",
                  "lms": {k: strip_credentials(v.identity()) for k, v in sorted(base.lms.items())}}
        self._fingerprint = _hash({"optimizer": optimizer, "config": config, "seed": seed,
                                   "program": program.content_hash(), "data": data, "models": models,
                                   "budget": self.report.budget, "metric": getattr(metric, "__name__", "")})
        self.ledger = Ledger(self.report, len(self.valset))
        self.evaluator = Evaluator(ctx=self.ctx, metric=metric, report=self.report, concurrency=concurrency,
                                   checkpoint=checkpoint, fingerprint=self._fingerprint,
                                   on_provider_failure=on_provider_failure, provider_reruns=provider_reruns)
        self._incumbent: Program = program
        self._incumbent_candidate: Candidate | None = None
        self._inc_scores: dict[int, float] = {}  # the incumbent's scores by validation row id
        # the live status line (drawn only when progress is on); optimizers may label phases on it
        self.reporter = CompileProgress(self, progress, optimizer=optimizer, baseline=program)
        self.evaluator.reporter = self.reporter

    # ---- the evaluator's state, as optimizers and the base class read it
    @property
    def meter(self) -> Any:
        return self.evaluator.meter

    @property
    def memo(self) -> dict[str, dict[str, Any]]:
        return self.evaluator.memo

    @property
    def replayed(self) -> int:
        return self.evaluator.replayed

    @property
    def observed_calls(self) -> float | None:
        return self.evaluator.observed_calls

    @property
    def faults(self) -> dict[str, int]:
        return self.evaluator.faults

    @property
    def checkpoint(self) -> Path | None:
        return self.evaluator.checkpoint.path if self.evaluator.checkpoint is not None else None

    @property
    def on_provider_failure(self) -> str:
        return self.evaluator.on_provider_failure

    @property
    def provider_reruns(self) -> int:
        return self.evaluator.provider_reruns

    def remember(self, key: str, entry: dict[str, Any]) -> None:
        """Memoise ``entry`` under ``key`` and append it to the checkpoint (durably, before returning)."""
        self.evaluator.remember(key, entry)

    def recall(self, key: str) -> dict[str, Any] | None:
        """A memoised non-evaluation entry (charged its recorded spend), or None."""
        return self.evaluator.recall(key)

    # ---- budget
    def remaining_calls(self) -> int | None:
        return self.evaluator.remaining_calls()

    def calls_per_example(self, program: Program) -> float:
        return self.evaluator.calls_per_example(program)

    def can_afford(self, program: Program, n_rows: int) -> bool:
        return self.evaluator.can_afford(program, n_rows)

    # ---- evaluation (memoised, checkpointed)
    async def run(self, program: Program, rows: Sequence[Mapping[str, Any]], *, kind: str = "eval",
                  per_row: float | None = None) -> dict[str, Any]:
        """Evaluate ``program`` on ``rows``: per-example scores, outputs and node I/O, and spend.

        Raises BudgetStop (before any call) when the remaining budget can't cover it -- at
        ``per_row`` calls a row where the caller knows what rows of this shape take, else at the
        most any evaluation so far took.
        """
        return await self.evaluator.run(program, rows, kind=kind, per_row=per_row)

    # ---- the incumbent
    @property
    def incumbent(self) -> Program:
        """The program so far (change it with :meth:`set_incumbent`)."""
        return self._incumbent

    @incumbent.setter
    def incumbent(self, value: Program) -> None:
        raise AttributeError("session.incumbent is changed only by session.set_incumbent(program, candidate), "
                             "which checks that the candidate's scores cover the validation rows")

    @property
    def incumbent_candidate(self) -> Candidate | None:
        """The report row of the program so far (None before the baseline)."""
        return self._incumbent_candidate

    @incumbent_candidate.setter
    def incumbent_candidate(self, value: Candidate | None) -> None:
        raise AttributeError("session.incumbent_candidate is changed only by session.set_incumbent(program, "
                             "candidate), which checks that the candidate's scores cover the validation rows")

    def set_incumbent(self, program: Program, candidate: Candidate, *, partial: bool = False) -> None:
        """Make ``program`` (with its report row ``candidate``) the program so far -- the one way
        the incumbent changes. The candidate's scores are placed by validation row id (the ledger
        knows which rows they are on, in whatever order they were scored). Unless ``partial`` (a
        final choice made on other evidence, which nothing is compared with afterwards), they must
        cover every validation row. IncumbentError (an internal error) otherwise."""
        scores = self.ledger.aligned(candidate)
        n = len(self.valset)
        if not partial and len(scores) != n:
            raise IncumbentError(
                f"internal error: candidate #{candidate.id} ({candidate.label!r}) is scored on {len(scores)} of the "
                f"{n} validation rows, and the program so far needs a score on every row (later candidates are "
                "compared with it row by row)",
                fix="score it on every validation row before it replaces the incumbent (a staged evaluation that "
                    "stopped early is a rejection), or pass partial=True for a final choice nothing is compared with.")
        self._incumbent, self._incumbent_candidate, self._inc_scores = program, candidate, scores

    def incumbent_scores(self, rows: Sequence[int] | None = None) -> list[float]:
        """The incumbent's scores on validation rows ``rows`` (ids, in that order; default: every
        row in valset order). IncumbentError when it has no score on one of them."""
        inc = self._incumbent_candidate
        if inc is None:
            raise IncumbentError("internal error: the incumbent has no scores before the baseline is evaluated",
                                 fix="await session.baseline() first.")
        want = range(len(self.valset)) if rows is None else rows
        missing = [i for i in want if i not in self._inc_scores]
        if missing:
            raise IncumbentError(
                f"internal error: the program so far (candidate #{inc.id}, {inc.label!r}) has scores on "
                f"{len(self._inc_scores)} of the {len(self.valset)} validation rows; not on row(s) "
                f"{', '.join(map(str, missing[:8]))}{', ...' if len(missing) > 8 else ''}, so a candidate cannot be "
                "compared with it there", fix="compare on the rows it was scored on.")
        return [self._inc_scores[i] for i in want]

    # ---- candidates
    def new_candidate(self, label: str, changes: Mapping[str, Any], entry: Mapping[str, Any], *,
                      rows: Sequence[int] | None = None, status: str = "pending", reason: str = "") -> Candidate:
        """A new report row for an evaluation ``entry``; ``rows``: the validation rows its scores
        are on, when not all of them in order (see :class:`~.ledger.Ledger`)."""
        return self.ledger.add(label, changes, entry, rows=rows, status=status, reason=reason)

    _new_candidate = new_candidate  # the name optimizers used before the ledger

    def narrow_valset(self, n: int) -> None:
        """Keep only the first ``n`` validation rows -- before the baseline is recorded (an optimizer
        that measured what its rows take, and scores fewer of them than it was given: ``Compile``
        with ``max_scored_rows="measured"``). The checkpoint's fingerprint stays the one of the rows
        given, so a resumed run narrows the same way."""
        if self._incumbent_candidate is not None or self.report.candidates:
            raise RuntimeError("narrow_valset() comes before the baseline is recorded")
        self.valset = self.valset[:n]
        self._stage_perm = [i for i in self._stage_perm if i < n]
        self._val_fp = fingerprint(self.valset)
        self.report.data["val"] = {"n": len(self.valset), "sha256_16": self._val_fp}
        self.ledger = Ledger(self.report, len(self.valset))

    async def baseline(self) -> Candidate:
        entry = await self.run(self._incumbent, self.valset)
        c = self.new_candidate("baseline (the program as given)", {}, entry, rows=range(len(self.valset)))
        c.status, c.reason = "baseline", "starting point"
        self.set_incumbent(self._incumbent, c)
        self.reporter.phase("searching")
        return c

    def stages(self) -> list[int]:
        """How many validation rows (of the stage permutation) are scored before each look:
        a quarter, a half, then all -- one stage when the valset is too small to look early."""
        n = len(self.valset)
        if not self.early_stop or n < 2 * self.early_stop_min:
            return [n]
        ends = sorted({max(self.early_stop_min, math.ceil(n / 4)), max(self.early_stop_min, math.ceil(n / 2)), n})
        return [e for e in ends if e <= n]

    async def consider(self, program: Program, label: str, changes: Mapping[str, Any], *,
                       rows: Sequence[Mapping[str, Any]] | None = None, early_stop: bool = True,
                       policy: AcceptancePolicy | None = None) -> Candidate:
        """Evaluate a candidate on the validation set; it replaces the incumbent only when the
        acceptance policy (``policy``, default the session's) accepts it.

        With the session's ``early_stop`` (and ``early_stop=True`` here) the candidate is scored
        in stages (a quarter of the rows, half, all) and rejected as soon as the policy finds it
        clearly worse than the incumbent on the rows scored so far; its report row then holds the
        partial scores. ``rows``: score on these rows instead (not compared unless they are the
        validation set).
        """
        policy = policy if policy is not None else self.acceptance
        inc = self.incumbent_candidate
        assert inc is not None, "session.baseline() comes first"
        n = len(self.valset)
        row_ids: Sequence[int] | None = range(n)
        if rows is None and early_stop and len(self.stages()) > 1:
            def look(seen: Sequence[int], scores: Sequence[float]) -> dict[str, float] | None:
                ev = policy.evidence(self.incumbent_scores(seen), scores, seed=self.seed)
                return ev if policy.stop_early(ev) else None

            scored = await self.evaluator.staged(program, self.valset, self._stage_perm, self.stages(), look)
            if scored.evidence is not None:
                cand = self.new_candidate(label, changes, scored.entry(), rows=scored.rows)
                cand.evidence = scored.evidence
                cand.status = "rejected"
                cand.reason = policy.stop_reason(scored.evidence, incumbent_id=inc.id, scored=len(scored.rows),
                                                 n_rows=n)
                return cand
            entry, row_ids = scored.entry(), scored.rows
        else:
            entry = await self.run(program, self.valset if rows is None else rows)
            if rows is not None and (len(rows) != n or fingerprint(rows) != self._val_fp):
                row_ids = None
        cand = self.new_candidate(label, changes, entry, rows=row_ids)
        if row_ids is None:
            cand.status = "minibatch"
            cand.reason = (f"scored on a minibatch of {len(rows)} of the {n} validation rows; not compared"  # type: ignore[arg-type]
                           if len(rows) != n else  # type: ignore[arg-type]
                           f"scored on {n} rows that are not the validation rows; not compared")
            return cand
        ev = policy.evidence(self.incumbent_scores(row_ids), cand.scores, seed=self.seed)
        cand.evidence = ev
        verdict = policy.decide(ev, incumbent_id=inc.id, n_rows=len(cand.scores))
        cand.status, cand.reason = ("accepted" if verdict.accepted else "rejected"), verdict.reason
        if verdict.accepted:
            self.set_incumbent(program, cand)
        return cand

    def best_by_mean(self) -> Candidate:
        """The best-scoring candidate evaluated on the full validation set (ties: earliest)."""
        return self.ledger.best_by_mean()


__all__ = [
    "CHECKPOINT_VERSION",
    "PROVIDER_FAILURE_POLICIES",
    "BudgetStop",
    "CompileSession",
    "IncumbentError",
    "check_provider_policy",
    "static_calls_per_example",
]
