"""Racing candidates on validation minibatches (shared by InstructionSearch and JointSearch).

:class:`Race` scores :class:`Arm` s on validation rows through ``session.run`` and compares each
with the incumbent *on the same rows* (a paired delta), so arms seen on different rows stay
comparable; :func:`successive_halving` keeps the better half round by round; :func:`confirm`
hands the finalists to ``session.consider`` (the session's acceptance policy). :func:`record`
and :func:`settle` keep every arm's report row, with the rows its scores are on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..pipeline.program import Program
from .evaluator import unparsed_rows
from .report import Candidate
from .session import BudgetStop, CompileSession


def record(session: CompileSession, label: str, changes: Mapping[str, Any], scores: Sequence[float],
           calls: int, tokens: int, reason: str, status: str = "pending", *,
           rows: Sequence[int] | None = None, unparsed: int = 0) -> Candidate:
    """Add a minibatch-scored candidate to the report (``rows``: the validation rows ``scores`` are
    on; ``unparsed``: how many of them got a reply that could not be read); its status is settled
    once its fate is known (:func:`confirm`, :func:`settle`)."""
    entry = {"scores": scores, "usage": {"calls": calls, "prompt_tokens": tokens, "completion_tokens": 0},
             "unparsed": unparsed}
    return session.new_candidate(label, changes, entry, rows=rows, status=status, reason=reason)


def settle(arms: Sequence[Arm], *, stopped: bool) -> None:
    """Final statuses of the arms' report rows still pending: ``incumbent`` (the program so far),
    ``stopped`` (alive when the budget ran out) or ``dropped`` (went no further)."""
    for a in arms:
        c = a.candidate
        if c is not None and c.status == "pending":
            c.reason = a.reason or c.reason
            c.status = "incumbent" if a.free and a.alive else "stopped" if a.alive and stopped else "dropped"
            c.reason += "; the budget ran out before it could go further" if c.status == "stopped" else ""


def _rounds(r: int) -> str:
    return f"{r} round{'s' if r != 1 else ''}"


def halving_cost(n_arms: int, n_variants: int, n_val: int, minibatch: int, confirm_top: int) -> tuple[int, int]:
    """Worst case of :func:`successive_halving` in examples scored: (on minibatches, confirming)."""
    if n_val <= minibatch:
        return 0, (n_arms + n_variants) * n_val
    live, seen, r, mini, variants = n_arms, 0, 0, 0, n_variants
    while live > confirm_top or variants:
        target = min(minibatch * 2 ** r, n_val)
        if target >= n_val:
            break
        mini += live * (target - seen)
        seen = target
        if variants:
            mini += variants * seen
            live, variants = live + variants, 0
        live = min(live, max(confirm_top, math.ceil(live / 2)))
        r += 1
    return mini, min(live, confirm_top) * n_val


@dataclass(eq=False)
class Arm:
    """One candidate in a race: its program and its scores on validation rows (by index)."""

    idx: int
    label: str
    program: Program
    changes: dict[str, Any] = field(default_factory=dict)
    free: bool = False                      # the incumbent: scores come from its validation run
    rows: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    calls: int = 0
    tokens: int = 0
    unparsed: int = 0                       # scored rows whose reply could not be read
    alive: bool = True
    reason: str = ""
    candidate: Candidate | None = None
    payload: Any = None                     # what the optimizer needs back (instruction text, config)

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0


class Race:
    """Scores arms on validation rows through ``session.run`` and compares each with the
    incumbent *on the same rows* (paired delta), so arms seen on different rows stay comparable."""

    def __init__(self, session: CompileSession) -> None:
        self.session = session
        self.inc_scores = session.incumbent_scores()  # by validation row, in valset order

    async def score(self, arm: Arm, idx: Sequence[int]) -> None:
        have = set(arm.rows)
        idx = [i for i in idx if i not in have]
        if not idx:
            return
        if arm.free:
            arm.scores += [self.inc_scores[i] for i in idx]
        else:
            entry = await self.session.run(arm.program, [self.session.valset[i] for i in idx])
            arm.scores += list(entry["scores"])
            u = entry["usage"]
            arm.calls += u["calls"]
            arm.tokens += u["prompt_tokens"] + u["completion_tokens"]
            arm.unparsed += unparsed_rows(entry)
        arm.rows += idx
        if arm.candidate is not None:  # keep its report row in step
            c = arm.candidate
            c.scores, c.calls, c.tokens, c.unparsed = list(arm.scores), arm.calls, arm.tokens, arm.unparsed
            self.session.ledger.set_rows(arm.candidate, arm.rows)

    def reference(self, arm: Arm) -> float:
        return sum(self.inc_scores[i] for i in arm.rows) / len(arm.rows) if arm.rows else 0.0

    def delta(self, arm: Arm) -> float:
        return arm.mean - self.reference(arm) if arm.rows else 0.0

    def key(self, arm: Arm) -> tuple[float, int]:
        return (-self.delta(arm), arm.idx)

    def describe(self, arm: Arm) -> str:
        return (f"{arm.mean:.3f} on {len(arm.rows)} rows vs {self.reference(arm):.3f} for the program so far on "
                f"the same rows ({self.delta(arm):+.3f})")


async def successive_halving(race: Race, arms: list[Arm], perm: Sequence[int], start: int, confirm_top: int, *,
                             what: str = "", after_first: Any = None) -> tuple[list[Arm], int]:
    """Race ``arms`` on growing slices of the validation rows ``perm``: round r scores every live
    arm on ``perm[:start * 2**r]``, then keeps the better half (at least ``confirm_top``); stops
    when ``confirm_top`` arms are left or the next slice would be the whole validation set (the
    full set is for ``session.consider``), or when the budget left only covers confirming
    ``confirm_top`` arms. ``after_first(ranked) -> new arms`` may add arms after round 1 (they are
    scored on the same rows). Returns (the best ``confirm_top`` live arms, rows used)."""
    session = race.session
    n_val = len(perm)
    seen, r = 0, 0
    pending = after_first is not None
    while True:
        live = [a for a in arms if a.alive]
        if not live or (len(live) <= confirm_top and not pending):
            break
        target = min(start * 2 ** r, n_val)
        if target >= n_val:
            break
        inc = perm[seen:target]
        if any(a.rows for a in live):  # with evidence in hand, keep the budget for confirmation
            need = sum(len(set(inc) - set(a.rows)) for a in live if not a.free) + confirm_top * n_val
            if not session.can_afford(live[0].program, need):
                session.report.add_stopped(
                    f"{what}" + ("no race on more rows" if r == 0 else f"the race stopped after {_rounds(r)}")
                    + ": the budget left is kept for confirming the leader on the full validation set")
                break
        session.reporter.phase(f"{what}race round {r + 1}: {len(live)} candidates on {target} rows")
        for a in live:
            await race.score(a, inc)
        seen = target
        if pending:
            pending = False
            new = await after_first(sorted(live, key=race.key))
            for a in new:
                arms.append(a)
                await race.score(a, perm[:seen])
            live = [a for a in arms if a.alive]
        ranked = sorted(live, key=race.key)
        keep = max(confirm_top, math.ceil(len(live) / 2))
        for rank, a in enumerate(ranked[keep:], keep + 1):
            a.alive = False
            a.reason = (f"dropped in round {r + 1} of the race: {race.describe(a)}; ranked {rank} of {len(live)}, "
                        f"the best {keep} went on")
        r += 1
    live = sorted((a for a in arms if a.alive), key=race.key)
    for rank, a in enumerate(live[confirm_top:], confirm_top + 1):
        a.alive = False
        where = "on its minibatch" if r == 0 else f"after {_rounds(r)} of the race"
        a.reason = (f"{race.describe(a)}; ranked {rank} of {len(live)} {where}: only the best {confirm_top} "
                    "went on to the full validation set")
    return live[:confirm_top], seen


async def confirm(race: Race, finalists: Sequence[Arm], label: Any) -> None:
    """Evaluate the finalists that beat the incumbent on their rows on the full validation set
    (``session.consider``: paired-bootstrap acceptance); their report rows say what happened."""
    race.session.reporter.phase("confirming on the full validation set")
    for a in finalists:
        if a.free:
            a.reason, status = f"came through the race ({race.describe(a)}): it is the program so far", "incumbent"
        elif race.delta(a) <= 0:
            a.alive, status = False, "dropped"
            a.reason = (f"came through the race but was not better than the program so far on its rows: "
                        f"{race.describe(a)}; not scored further")
        else:
            a.reason, status = f"came through the race: {race.describe(a)}", "advanced"
        if a.candidate is not None:
            a.candidate.reason, a.candidate.status = a.reason, status
    for a in finalists:
        if a.free or not a.alive:
            continue
        try:
            cand = await race.session.consider(a.program, label(a), a.changes)
        except BudgetStop:
            if a.candidate is not None:
                a.candidate.status = "stopped"
                a.candidate.reason += "; the budget ran out before it could be scored on the full validation set"
            raise
        a.reason += f"; confirmed as #{cand.id} on the full validation set: {cand.status}"
        if a.candidate is not None:
            a.candidate.reason = a.reason


__all__ = ["Arm", "Race", "confirm", "halving_cost", "record", "settle", "successive_halving"]
