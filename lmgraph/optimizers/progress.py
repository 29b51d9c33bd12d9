"""A compile's live status: what it is doing, candidates tried, calls spent vs the budget, and the
best program so far with its 95% CI -- above the bar of the evaluation in progress.

The :class:`CompileSession` owns one :class:`CompileProgress` (``session.reporter``) and updates it
from ``session.run``, the one path every optimizer evaluates through. Optimizers may label what
they are doing: ``session.reporter.phase("racing round 2 of 3")``. With progress off (the
default in Python) nothing is drawn and rich is never imported; the counts are kept all the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..progress import LiveBar, RowProgress, display_stream

if TYPE_CHECKING:
    from ..pipeline.program import Program
    from .session import CompileSession

KIND_LABELS = {"eval": "scoring", "bootstrap": "bootstrapping demos on", "propose": "proposing on"}


class CompileProgress:
    """The status line of a compile (see the module docstring)."""

    def __init__(self, session: CompileSession, progress: Any, *, optimizer: str, baseline: Program) -> None:
        self.session = session
        self.optimizer = optimizer
        self.stream = display_stream(progress)
        self.phase_text = "scoring the baseline"
        self.baseline_hash = baseline.content_hash()
        self.tried: set[str] = set()     # candidate programs evaluated (the baseline not counted)
        self.evaluations = 0
        self._ci: tuple[tuple[int, int], tuple[float, float]] | None = None  # (candidate id, n) -> CI

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    # ---- what optimizers call
    def phase(self, text: str) -> None:
        """Say what the compile is doing now, e.g. ``"racing round 2 of 3"`` (shown until the next call)."""
        self.phase_text = text

    # ---- what the session calls
    def evaluating(self, program: Program, kind: str) -> None:
        """An evaluation of ``program`` starts (or is replayed from the memo)."""
        self.evaluations += 1
        if kind == "eval":
            h = program.content_hash()
            if h != self.baseline_hash:
                self.tried.add(h)

    def rows(self, n_rows: int, kind: str) -> RowProgress | None:
        """The row counter (and live bar) of one evaluation; None when nothing is drawn."""
        if self.stream is None:
            return None
        bar = LiveBar(self.stream, header=self.header, transient=True)
        return RowProgress(n_rows, f"{KIND_LABELS.get(kind, kind)} {n_rows} rows", bar)

    # ---- the status line
    def calls_text(self) -> str:
        spent = int(self.session.meter.snapshot()["calls"])
        cap = self.session.report.budget.get("max_calls")
        return f"calls {spent}/{cap}" if cap is not None else f"calls {spent} (no call budget)"

    def best_text(self) -> str:
        cand = self.session.incumbent_candidate
        if cand is None or not cand.scores:
            return "best: -"
        key = (cand.id, len(cand.scores))
        if self._ci is None or self._ci[0] != key:
            self._ci = (key, cand.ci)
        lo, hi = self._ci[1]
        who = "baseline" if cand.id == 0 else f"#{cand.id}"
        return f"best {cand.mean:.3f} [{lo:.3f}, {hi:.3f}] ({who})"

    def header(self) -> str:
        """Two lines: what the compile is doing; candidates tried, calls spent and the best so far."""
        tried = len(self.tried)
        return (f"{self.optimizer}: {self.phase_text}\n"
                + " · ".join([f"{tried} candidate{'s' if tried != 1 else ''} tried", self.calls_text(),
                              self.best_text()]))


__all__ = ["CompileProgress"]
