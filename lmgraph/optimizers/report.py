"""What a compile found: every candidate with its score, CI, cost and why it was kept or not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evaluation.evaluate import bootstrap_ci


@dataclass
class Candidate:
    """One evaluated pipeline variant."""

    id: int
    label: str
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> {param: summary}
    scores: list[float] = field(default_factory=list)  # per validation example
    calls: int = 0           # logical model calls its evaluation used
    tokens: int = 0
    status: str = "pending"  # baseline | accepted | rejected | skipped
    reason: str = ""
    evidence: dict[str, float] = field(default_factory=dict)  # paired bootstrap vs the incumbent

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return bootstrap_ci(self.scores)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.ci
        return {"id": self.id, "label": self.label, "changes": self.changes, "n": len(self.scores),
                "score": round(self.mean, 6), "ci95": [round(lo, 6), round(hi, 6)], "calls": self.calls,
                "tokens": self.tokens, "status": self.status, "reason": self.reason,
                "evidence": {k: round(v, 6) for k, v in self.evidence.items()}}


@dataclass
class Report:
    """The evidence behind a compiled program (deterministic part + timing kept apart)."""

    optimizer: str
    seed: int
    config: dict[str, Any]
    budget: dict[str, Any]
    data: dict[str, Any]
    candidates: list[Candidate] = field(default_factory=list)
    best_id: int = 0
    spent: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None  # why the search ended early (budget), else None
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    runtime: dict[str, Any] = field(default_factory=dict)  # cache misses etc.: varies run to run

    @property
    def baseline(self) -> Candidate:
        return self.candidates[0]

    @property
    def best(self) -> Candidate:
        return next(c for c in self.candidates if c.id == self.best_id)

    def to_dict(self, *, timing: bool = True) -> dict[str, Any]:
        out = {"optimizer": self.optimizer, "seed": self.seed, "config": self.config, "budget": self.budget,
               "data": self.data, "best_id": self.best_id, "spent": self.spent, "stopped": self.stopped,
               "notes": self.notes, "candidates": [c.to_dict() for c in self.candidates]}
        if self.candidates:
            out["baseline_score"] = round(self.baseline.mean, 6)
            out["best_score"] = round(self.best.mean, 6)
        if timing:
            out["wall_s"] = round(self.wall_s, 3)
            out["runtime"] = self.runtime
        return out

    def table(self) -> str:
        """A plain-text table of every candidate."""
        rows = [f"{'id':>3}  {'status':<9} {'score':>6}  {'95% CI':<13} {'calls':>6}  label / reason"]
        for c in self.candidates:
            lo, hi = c.ci
            mark = "*" if c.id == self.best_id else " "
            rows.append(f"{c.id:>3}{mark} {c.status:<9} {c.mean:6.3f}  [{lo:.3f},{hi:.3f}] {c.calls:>6}  "
                        f"{c.label}" + (f" -- {c.reason}" if c.reason else ""))
        head = (f"{self.optimizer}: best {self.best.mean:.3f} (candidate {self.best_id}) vs baseline "
                f"{self.baseline.mean:.3f}; spent {self.spent.get('calls', 0)} calls"
                + (f" ({self.runtime['cache_misses']} cache misses)" if "cache_misses" in self.runtime else "")
                + (f"; stopped: {self.stopped}" if self.stopped else ""))
        return "\n".join([head, *rows, *(f"note: {n}" for n in self.notes)])
