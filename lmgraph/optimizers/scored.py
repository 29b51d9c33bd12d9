"""How many labelled rows the default compiler scores (a mixin of :class:`~.auto.Compile`).

Every scored row costs a baseline run before any candidate is raced, so under a call budget the
compiler scores as many rows as a quarter of the budget covers and keeps the rest as demo sources
only. ``max_scored_rows`` says how that quarter is counted:

* ``"auto"``: at a row's upper-bound cost (every model call followed by a repair call) -- a plan
  made before any call, so a program whose answers mostly parse is scored on about half the rows
  the quarter would cover;
* ``"measured"``: the baseline is run on the first :data:`PROBE` rows of the seeded order, and then
  on as many more as the quarter covers at the calls a row those took (a free-text answer of a
  small model that parses needs no repair call). More rows scored means more rows behind every
  racing decision; the race and the confirmation get what is left, as always;
* a whole number: that many rows.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..lm.wrappers import Budget
from ..pipeline.program import Program
from .candidates import _per_row
from .session import CompileSession

#: rows of the seeded order the baseline is run on before ``"measured"`` decides how many to score
PROBE = 50


class ScoredRows:
    """The scored/demo-only split of :class:`~.auto.Compile` (needs ``max_scored_rows``)."""

    max_scored_rows: int | str

    def n_scored(self, program: Program, n: int, budget: Budget | None, *, most: bool = False) -> int:
        """How many of ``n`` labelled rows are scored (the others only feed demos): all of them
        without a call budget; with ``max_scored_rows="auto"``, as many as a baseline using a
        quarter of the budget can score at a row's upper-bound cost (never fewer than 50);
        ``"measured"`` plans the same (its run measures, see :meth:`run_baseline`), and with
        ``most`` gives the most it can score: the quarter at a row's cost without repair calls."""
        if isinstance(self.max_scored_rows, int):
            return max(1, min(n, self.max_scored_rows))
        if budget is None or budget.max_calls is None:
            return n
        per = max(1, program.estimated_calls(repairs=False)) if most else _per_row(program)
        return min(n, max(PROBE, int(budget.max_calls / (4 * per))))

    def scored_split(self, program: Program, rows: Sequence[Mapping[str, Any]], budget: Budget | None,
                     seed: int, *, most: bool = False) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        """(rows scored by the compile, rows used only as demo sources): a seeded choice; every
        smaller count takes a prefix of the same order."""
        k = self.n_scored(program, len(rows), budget, most=most)
        if k >= len(rows):
            return list(rows), []
        perm = list(range(len(rows)))
        random.Random(f"scored:{seed}").shuffle(perm)
        return [rows[i] for i in perm[:k]], [rows[i] for i in perm[k:]]

    async def run_baseline(self, session: CompileSession) -> None:
        """With ``max_scored_rows="measured"``: the baseline on the first :data:`PROBE` validation
        rows, then on as many more as a quarter of the budget covers at the calls a row those took
        (and the budget left allows at the upper bound); the session keeps those rows, the rest
        join the demo-only rows. Otherwise the baseline on every validation row."""
        budget = session.ctx.budget
        if self.max_scored_rows != "measured" or budget is None or budget.max_calls is None:
            await session.baseline()
            return
        rows, prog = session.valset, session.incumbent
        first = rows[:PROBE]
        head = await session.run(prog, first)
        rate = head["usage"]["calls"] / max(1, len(first))
        k = len(rows) if rate <= 0 else min(len(rows), max(len(first), int(budget.max_calls / (4 * rate))))
        rem = session.remaining_calls()
        if rem is not None:  # the rest must be affordable at the evaluator's (upper-bound) rate
            k = min(k, len(first) + int(rem / session.evaluator.calls_per_example(prog, rate)))
        if k > len(first):
            tail = await session.run(prog, rows[len(first):k], per_row=rate)
            session.evaluator.join(prog, [(first, head), (rows[len(first):k], tail)])
        dropped = rows[k:]
        session.narrow_valset(k)
        self._pool_only: list[Mapping[str, Any]] = [*dropped, *getattr(self, "_pool_only", [])]
        self._scored_plan = (k, len(self._pool_only), rate if rate > 0 else 1.0)
        session.report.notes.append(
            f"the baseline took {rate:.2f} calls a row on the first {len(first)} rows: {k} rows scored "
            f"(a quarter of the {budget.max_calls}-call budget at that rate), {len(self._pool_only)} demo sources only")
        await session.baseline()


__all__ = ["PROBE", "ScoredRows"]
