"""The Ledger: the report's candidate rows, and which validation rows each row's scores are on.

Every candidate a compile evaluates becomes one :class:`~.report.Candidate` in ``report.candidates``
(in the order they were made; a candidate's id is its position). The ledger also keeps, per
candidate, the ids of the validation rows its ``scores`` are on -- ``scores[k]`` belongs to row
``rows[k]`` -- which the report shows only where the default compiler set ``Candidate.rows``
itself. :meth:`Ledger.aligned` turns a candidate's scores into scores by row id, so that an
incumbent's scores are never paired with the wrong rows (see ``CompileSession.set_incumbent``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import LmgraphError
from .evaluator import unparsed_rows
from .report import Candidate, Report


class IncumbentError(LmgraphError):
    """Internal error: a candidate's scores cannot stand for the incumbent's on the rows asked for
    (scored on other rows, on part of them, or on rows nobody recorded). A bug in an optimizer, not
    in the user's program or data."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.fix = fix
        super().__init__(message + (f" Fix: {fix}" if fix else ""))


class Ledger:
    """The candidate records of one compile (``report.candidates``) with their row ids."""

    def __init__(self, report: Report, n_rows: int) -> None:
        self.report = report
        self.n_rows = n_rows  # validation rows
        self._rows: dict[int, tuple[int, ...] | None] = {}  # candidate id -> row ids (None: unknown)

    @property
    def candidates(self) -> list[Candidate]:
        return self.report.candidates

    def add(self, label: str, changes: Mapping[str, Any], entry: Mapping[str, Any], *,
            rows: Sequence[int] | None = None, status: str = "pending", reason: str = "") -> Candidate:
        """A new report row for an evaluation ``entry`` (``scores`` and ``usage``: calls and
        prompt/completion tokens; its per-row ``examples`` or an ``unparsed`` count give the rows whose
        reply could not be read). ``rows``: the validation rows the scores are on, in order
        (None: not validation rows, or not known -- such a row can never become the incumbent)."""
        u = entry["usage"]
        c = Candidate(id=len(self.report.candidates), label=label, changes=dict(changes),
                      scores=list(entry["scores"]), calls=u["calls"],
                      tokens=u["prompt_tokens"] + u["completion_tokens"], status=status, reason=reason,
                      unparsed=unparsed_rows(entry))
        self.report.candidates.append(c)
        self.set_rows(c, rows)
        return c

    def set_rows(self, cand: Candidate, rows: Sequence[int] | None) -> None:
        """Record which validation rows ``cand.scores`` are on (None: not known)."""
        self._rows[cand.id] = tuple(rows) if rows is not None else None

    def rows_of(self, cand: Candidate) -> tuple[int, ...] | None:
        """The validation rows ``cand.scores`` are on, in order; None when nobody recorded them.
        A report row made outside the ledger with one score per validation row and no
        ``Candidate.rows`` is taken to be in valset order."""
        known = self.report.candidates
        mine = cand.id < len(known) and known[cand.id] is cand and cand.id in self._rows
        if mine and self._rows[cand.id] is not None:
            return self._rows[cand.id]
        if cand.rows is not None:
            return tuple(cand.rows)
        if not mine and len(cand.scores) == self.n_rows:
            return tuple(range(self.n_rows))
        return None

    def aligned(self, cand: Candidate) -> dict[int, float]:
        """``cand``'s scores by validation row id; IncumbentError when they cannot be placed."""
        rows = self.rows_of(cand)
        where = f"candidate #{cand.id} ({cand.label!r})"
        if rows is None:
            raise IncumbentError(f"internal error: {where} has {len(cand.scores)} scores but no record of which of "
                                 f"the {self.n_rows} validation rows they are on, so they cannot be paired with "
                                 "another candidate's", fix="make its report row through the session "
                                 "(session.new_candidate(..., rows=row ids)) and score it on every row.")
        if len(rows) != len(cand.scores) or len(set(rows)) != len(rows) \
                or any(not 0 <= i < self.n_rows for i in rows):
            raise IncumbentError(f"internal error: {where} has {len(cand.scores)} scores recorded on rows "
                                 f"{_show(rows)}, which are not distinct rows of the {self.n_rows} validation rows",
                                 fix="record one validation row id per score.")
        return dict(zip(rows, cand.scores))

    def best_by_mean(self) -> Candidate:
        """The best-scoring candidate evaluated on the full validation set (ties: earliest)."""
        n = self.n_rows
        full = [c for c in self.report.candidates
                if c.status in ("baseline", "accepted", "rejected") and len(c.scores) == n]
        return max(full, key=lambda c: (c.mean, -c.id))


def _show(rows: Sequence[int], k: int = 8) -> str:
    head = ", ".join(map(str, rows[:k]))
    return f"[{head}{', ...' if len(rows) > k else ''}]"


__all__ = ["IncumbentError", "Ledger"]
