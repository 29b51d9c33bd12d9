"""What a compile found: every candidate with its score, CI, cost and why it was kept or not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..evaluation.evaluate import bootstrap_ci

# what each status in a report says happened to a candidate
STATUSES = {
    "baseline": "the program as given",
    "accepted": "better than the program so far, with enough evidence: it replaced it",
    "rejected": "scored on the validation rows; not better with enough evidence",
    "advanced": "did well on part of the rows and went on to be scored on all of them (its own row says how "
                "that went)",
    "incumbent": "the program so far, unchanged (its scores are reused)",
    "dropped": "scored on part of the rows only; ranked too low to go further",
    "stopped": "the budget ran out while it was being scored",
    "raced": "a finalist of the race on the search rows",
    "minibatch": "scored on a minibatch only, not compared",
    "pending": "not decided yet",
}
PLAIN = ("baseline", "accepted", "rejected")  # statuses the table need not explain
UNREADABLE = 0.1  # a chosen program whose replies fail to parse on this share of its rows gets a note
FLOOR = 0.1  # when no scored program reaches this mean score (metric in [0, 1]), the task is at the model's floor


def baseline_on_rows(base: Sequence[float], rows: Sequence[int] | None, n: int) -> tuple[float, str]:
    """The baseline's mean on a candidate's ``rows`` (indices into the baseline's; a candidate of
    the default compiler's race is scored on a subset of them), and ``" on the same N rows"`` when
    that is a subset: a comparison of means over different rows would mislead."""
    whole = sum(base) / len(base) if base else 0.0
    same = [base[i] for i in rows if 0 <= i < len(base)] if rows is not None else []
    if not same or len(same) != n or len(same) == len(base):
        return whole, ""
    return sum(same) / len(same), f" on the same {len(same)} rows"


#: how the default compiler labels the candidate it confirmed: its raced label plus this
CONFIRMED = " (confirmed)"


def raced_label(label: str) -> str:
    """The raced candidate's label behind a confirmed one's (the label of its front point)."""
    return label.removesuffix(CONFIRMED)


#: a point of a score/cost front: (label, score, calls, tokens, dollars), the costs per row
Point = tuple[str, float, float, float, float]


def score_cost_front(points: Sequence[Point]) -> tuple[list[Point], bool]:
    """(the points no other beats on both score and cost, cheapest first; whether the cost is
    dollars): the cost is dollars per row where any point is priced, else tokens per row."""
    priced = any(p[4] > 0 for p in points)

    def cost(p: Point) -> float:
        return p[4] if priced else p[3]

    front = [p for p in points
             if not any(q[1] >= p[1] and cost(q) <= cost(p) and (q[1] > p[1] or cost(q) < cost(p)) for q in points)]
    return sorted(front, key=lambda p: (cost(p), p[3])), priced


@dataclass
class Candidate:
    """One evaluated pipeline variant."""

    id: int
    label: str
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> {param: summary}
    scores: list[float] = field(default_factory=list)  # per validation example
    calls: int = 0           # logical model calls its evaluation used
    tokens: int = 0
    status: str = "pending"  # one of STATUSES
    reason: str = ""
    evidence: dict[str, float] = field(default_factory=dict)  # paired bootstrap vs the incumbent
    # which scored rows ``scores`` are on (indices into the baseline's rows), when a candidate was
    # scored on a subset in another order (the default compiler's race); None: the baseline's rows
    rows: list[int] | None = None
    unparsed: int = 0  # of the rows in ``scores``, those whose reply could not be read (scored as wrong)

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0

    @property
    def unparsed_rate(self) -> float:
        """The share of its scored rows whose reply could not be read."""
        return self.unparsed / len(self.scores) if self.scores else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return bootstrap_ci(self.scores)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.ci
        return {"id": self.id, "label": self.label, "changes": self.changes, "n": len(self.scores),
                "score": round(self.mean, 6), "ci95": [round(lo, 6), round(hi, 6)], "calls": self.calls,
                "tokens": self.tokens, "unparsed": self.unparsed, "status": self.status, "reason": self.reason,
                "evidence": {k: round(v, 6) for k, v in self.evidence.items()},
                "scores": [round(x, 6) for x in self.scores],  # per row: what a win/loss table needs
                **({"rows": list(self.rows)} if self.rows is not None else {})}


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
    # rows of the evaluations used, by outcome other than ok: parse_failure (the model answered
    # unreadably: a wrong answer), error (a run failure no retry fixes), provider_failure (always 0
    # in a finished compile: rows without an answer are re-run or the compile stops). Deterministic:
    # part of the artifact.
    failures: dict[str, int] = field(default_factory=lambda: {"parse_failure": 0, "error": 0,
                                                               "provider_failure": 0})
    # provider faults met on the way (vary run to run, never change the result; not in the artifact):
    # rows that got no answer and were re-run, re-run passes, rows still without one when a compile
    # stopped, and requests that reached the provider (retries included; spent["calls"] is logical)
    faults: dict[str, int] = field(default_factory=dict)
    # the programs of the score/cost front's points (``data["pareto"]``) by label: in memory only,
    # in the session that compiled them (not in ``to_dict``, not in the artifact) -- see :meth:`front`
    programs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def front(self) -> list[dict[str, Any]]:
        """The score/cost front the default compiler recorded (``data["pareto"]``: the program as
        given and every raced candidate that no other beats on both score and tokens per row, cheapest
        first; ``[]`` for optimizers that record none). Each point also says whether it is the program
        the compile returned (``chosen``; a confirmed candidate is its raced point) and holds its
        ``program`` -- to take a cheaper point than the chosen one -- while the report is the one the
        compile returned (``None`` for a report read back from a file)."""
        best = raced_label(self.best.label) if self.candidates else None
        return [{**p, "chosen": p["label"] == best, "program": self.programs.get(p["label"])}
                for p in self.data.get("pareto", [])]

    def add_stopped(self, why: str) -> None:
        """Record that the search was cut short (several reasons join with '; ')."""
        self.stopped = f"{self.stopped}; {why}" if self.stopped else why

    @property
    def baseline(self) -> Candidate:
        return self.candidates[0]

    @property
    def best(self) -> Candidate:
        return next(c for c in self.candidates if c.id == self.best_id)

    def baseline_on(self, cand: Candidate) -> tuple[float, str]:
        """The baseline's mean on the rows ``cand`` was scored on: see :func:`baseline_on_rows`."""
        return baseline_on_rows(self.baseline.scores, cand.rows, len(cand.scores))

    def too_few_rows(self) -> str | None:
        """When nothing was accepted: how large a gain the validation set could have shown at all
        (from the baseline's per-row scores), in plain words; else None. The default compiler, which
        pools and folds its rows, says this itself on the rows it used."""
        if not self.candidates or self.best_id != self.baseline.id or len(self.candidates) < 2 \
                or "folds" in self.data:
            return None
        from .selection import detectable_gain

        base = self.baseline.scores
        n = len(base)
        if n == 0:
            return None
        mde = detectable_gain(base, n)
        text = (f"with {n} validation rows no gain can be shown" if mde >= 1
                else f"with {n} validation rows a gain under {mde:+.2f} cannot be shown")
        full = [c for c in self.candidates[1:] if c.status == "rejected" and len(c.scores) == n]
        best = max(full, key=lambda c: (c.mean, -c.id), default=None)
        if best is not None and best.mean > self.baseline.mean:
            text += (f" (the best candidate, #{best.id}, scored {best.mean - self.baseline.mean:+.3f} over the "
                     "baseline: too little to tell from noise on so few rows)")
        return text + "; add validation rows"

    def context_fit(self) -> str | None:
        """When prompts did not fit the model's context window with all their demos: where, how
        often, and what to do; else None."""
        fit = self.data.get("demos_dropped")
        if not fit:
            return None
        parts = [f"{node}: {v['rows']} row runs, {v['demos']} demos left out" for node, v in sorted(fit.items())]
        return ("some prompts did not fit the model's context window with all their demos, so the demos farthest "
                f"from the input were left out ({'; '.join(parts)}): candidates with long demos were scored with "
                "fewer of them -- a larger context window (e.g. LlamaCppLM(n_ctx=4096)) or shorter demo inputs "
                "would show them whole")

    def unreadable(self) -> str | None:
        """When the chosen program's replies often could not be read (on at least ``UNREADABLE`` of
        its scored rows): how often, beside the program as given, and what to try; else None. Those
        rows score as wrong, so a program can win while much of its output is lost."""
        if not self.candidates:
            return None
        best, base = self.best, self.baseline
        if not best.scores or best.unparsed_rate < UNREADABLE:
            return None
        who = "the chosen program's" if best is not base else "the program's (kept as given)"
        text = (f"{who} replies could not be read on {best.unparsed} of its {len(best.scores)} scored "
                f"rows ({best.unparsed_rate:.0%}), which count as wrong")
        if best is not base and base.scores:
            text += f" (the program as given: {base.unparsed} of {len(base.scores)}, {base.unparsed_rate:.0%})"
        return text + ("; its score may be held down by how replies are read rather than by what they say: look "
                       "at the failing rows (lmgraph.evaluation.evaluate_sync(...).failures name the node and "
                       "field), and try a larger max_tokens, format='json' (grammar-constrained where the backend "
                       "has it) or a stronger model")

    def at_floor(self) -> str | None:
        """When no program the compile scored reached a mean of ``FLOOR`` on its rows (a metric in
        [0, 1], at least three programs scored): the model solves almost none of the task whatever
        the prompt, and the budget is better spent on a stronger model than on more prompts; else None."""
        scored = [c for c in self.candidates if c.scores]
        if len(scored) < 3 or any(not 0 <= s <= 1 for c in scored for s in c.scores):
            return None
        top = max(scored, key=lambda c: (c.mean, -c.id))
        if top.mean >= FLOOR:
            return None
        return (f"no program scored {FLOOR:.2f} or more on its rows ({len(scored)} scored; the program as given "
                f"{self.baseline.mean:.3f}, the best #{top.id} {top.mean:.3f}): the model solves almost none of this "
                "task whatever the prompt or demos, so a larger budget for them is unlikely to help -- a stronger "
                "model (RunContext(lms={...}) with Compile(models=...) picks one per node), or steps the model "
                "can do (decompose the task into nodes)")

    def all_notes(self) -> list[str]:
        """The notes, plus the context-window, unreadable-reply, floor and detectable-gain hints where they apply."""
        hints = [h for h in (self.context_fit(), self.unreadable(), self.at_floor(), self.too_few_rows()) if h]
        return [*self.notes, *hints]

    def to_dict(self, *, timing: bool = True) -> dict[str, Any]:
        out = {"optimizer": self.optimizer, "seed": self.seed, "config": self.config, "budget": self.budget,
               "data": self.data, "best_id": self.best_id, "spent": self.spent, "stopped": self.stopped,
               "notes": self.all_notes(), "candidates": [c.to_dict() for c in self.candidates],
               "failures": dict(self.failures)}
        if self.candidates:
            out["baseline_score"] = round(self.baseline.mean, 6)
            out["best_score"] = round(self.best.mean, 6)
        if timing:
            out["wall_s"] = round(self.wall_s, 3)
            out["runtime"] = self.runtime
            out["faults"] = dict(self.faults)
        return out

    def _repr_html_(self) -> str:  # a notebook's view: one row per candidate, escaped
        from ..report_html import report_html

        return report_html(self)

    def table(self) -> str:
        """A plain-text table of every candidate."""
        rows = [f"{'id':>3}  {'status':<9} {'score':>6}  {'95% CI':<13} {'calls':>6} {'unread':>6}  label / reason"]
        for c in self.candidates:
            lo, hi = c.ci
            mark = "*" if c.id == self.best_id else " "
            unread = f"{c.unparsed_rate:.0%}" if c.scores else "-"
            rows.append(f"{c.id:>3}{mark} {c.status:<9} {c.mean:6.3f}  [{lo:.3f},{hi:.3f}] {c.calls:>6} {unread:>6}  "
                        f"{c.label}" + (f" -- {c.reason}" if c.reason else ""))
        base, where = self.baseline_on(self.best)
        head = (f"{self.optimizer}: best {self.best.mean:.3f} (candidate {self.best_id}) vs baseline "
                f"{base:.3f}{where}; spent {self.spent.get('calls', 0)} calls"
                + (f" ({self.runtime['cache_misses']} cache misses)" if "cache_misses" in self.runtime else "")
                + (f"; stopped: {self.stopped}" if self.stopped else "")
                + (f"; provider faults: {self.faults['rows_without_answer']} rows got no answer and were re-run "
                   f"({self.faults.get('requests', 0)} requests for {self.spent.get('calls', 0)} calls)"
                   if self.faults.get("rows_without_answer") else ""))
        used = dict.fromkeys(c.status for c in self.candidates if c.status not in PLAIN)
        legend = ["statuses: " + "; ".join(f"{st} = {STATUSES.get(st, st)}" for st in used)] if used else []
        return "\n".join([head, *rows, *legend, *(f"note: {n}" for n in self.all_notes())])
