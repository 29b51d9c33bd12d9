"""Acceptance policies: whether a candidate replaces the program so far (the incumbent).

``session.consider`` compares a candidate's per-row validation scores with the incumbent's *on
the same rows* and asks the session's :class:`AcceptancePolicy`:

* :meth:`~AcceptancePolicy.evidence` -- the statistics of the paired comparison (a dict of floats,
  recorded as the candidate's ``evidence`` in the report);
* :meth:`~AcceptancePolicy.stop_early` -- after a stage of a staged evaluation (part of the rows),
  whether the candidate is already clearly out, so the rest of the rows are not scored;
* :meth:`~AcceptancePolicy.decide` -- on all the rows, a :class:`Verdict`: accepted or not, and why.

:class:`PairedBootstrap` is the default (every optimizer but the default compiler, which selects
on its own held-out fold): a candidate is accepted when it scores higher and at least
``confidence`` of the paired bootstrap resamples favour it; a stage stops it when the 95% CI of
the paired difference lies below 0. :class:`FavourOnTies` wraps another policy and also accepts
a candidate that is not worse than the incumbent by more than a tolerance (``Decompose`` takes a
collapse -- a smaller graph -- on a tie). A custom policy subclasses :class:`AcceptancePolicy`
and is passed as ``Optimizer(acceptance=...)`` (or ``CompileSession(acceptance=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """An acceptance decision and its reason, in the words the report shows."""

    accepted: bool
    reason: str


class AcceptancePolicy:
    """Decides whether a candidate replaces the incumbent (see the module docstring).

    Subclasses override :meth:`decide` (and :meth:`evidence` / :meth:`stop_early` when they use
    other statistics). Scores passed in are paired: ``incumbent[k]`` and ``candidate[k]`` are on
    the same validation row.
    """

    name = "custom"

    def describe(self) -> dict[str, object]:
        """JSON-able settings (recorded in the optimizer's config, so part of the checkpoint fingerprint)."""
        return {"policy": self.name}

    def evidence(self, incumbent: Sequence[float], candidate: Sequence[float], *, seed: int) -> dict[str, float]:
        """Paired statistics of candidate vs incumbent: by default the paired bootstrap of the
        mean difference (``diff``, ``ci_low``, ``ci_high``, ``p_better``)."""
        from ..evaluation.evaluate import paired_bootstrap

        return paired_bootstrap(incumbent, candidate, seed=seed)

    def stop_early(self, evidence: Mapping[str, float]) -> bool:
        """On part of the rows: is the candidate clearly worse (the 95% CI below 0)?"""
        return evidence.get("ci_high", 0.0) < 0

    def stop_reason(self, evidence: Mapping[str, float], *, incumbent_id: int, scored: int, n_rows: int) -> str:
        return (f"stopped early after {scored} of {n_rows} validation rows: worse than #{incumbent_id} by "
                f"{evidence.get('diff', 0.0):+.3f} there (95% CI {evidence.get('ci_low', 0.0):+.3f}.."
                f"{evidence.get('ci_high', 0.0):+.3f})")

    def decide(self, evidence: Mapping[str, float], *, incumbent_id: int, n_rows: int) -> Verdict:
        raise NotImplementedError(f"{type(self).__name__} must define decide(evidence, incumbent_id=, n_rows=)")


class PairedBootstrap(AcceptancePolicy):
    """Accept when the candidate scores higher and ``P(better) >= confidence`` over paired bootstrap
    resamples of the validation rows (the default policy)."""

    name = "paired_bootstrap"

    def __init__(self, confidence: float = 0.95) -> None:
        self.confidence = confidence

    def describe(self) -> dict[str, object]:
        return {"policy": self.name, "confidence": self.confidence}

    def decide(self, evidence: Mapping[str, float], *, incumbent_id: int, n_rows: int) -> Verdict:
        ev = evidence
        if ev["diff"] > 0 and ev["p_better"] >= self.confidence:
            return Verdict(True, f"better than #{incumbent_id} by {ev['diff']:+.3f} "
                                 f"(95% CI {ev['ci_low']:+.3f}..{ev['ci_high']:+.3f}, P(better)={ev['p_better']:.2f})")
        if ev["diff"] <= 0:
            return Verdict(False, f"not better than #{incumbent_id}: {ev['diff']:+.3f} on the {n_rows} validation rows")
        return Verdict(False, f"better than #{incumbent_id} by {ev['diff']:+.3f} on the {n_rows} validation rows, "
                              f"but that may be noise: {ev['p_better']:.0%} of bootstrap resamples favour it, "
                              f"{self.confidence:.0%} needed")


class FavourOnTies(AcceptancePolicy):
    """``base``'s decision, and also accept a candidate whose mean is not lower than the
    incumbent's by more than ``tolerance`` (``why`` says what the tie is broken by). A stage stops
    the candidate only when ``base`` would stop it *and* it is already beyond the tolerance, so an
    accepted candidate is always scored on every row."""

    name = "favour_on_ties"

    def __init__(self, base: AcceptancePolicy, tolerance: float, why: str = "") -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.base = base
        self.tolerance = tolerance
        self.why = why

    def describe(self) -> dict[str, object]:
        return {"policy": self.name, "tolerance": self.tolerance, "base": self.base.describe()}

    def evidence(self, incumbent: Sequence[float], candidate: Sequence[float], *, seed: int) -> dict[str, float]:
        return self.base.evidence(incumbent, candidate, seed=seed)

    def stop_early(self, evidence: Mapping[str, float]) -> bool:
        return self.base.stop_early(evidence) and evidence.get("diff", 0.0) < -self.tolerance

    def stop_reason(self, evidence: Mapping[str, float], *, incumbent_id: int, scored: int, n_rows: int) -> str:
        return self.base.stop_reason(evidence, incumbent_id=incumbent_id, scored=scored, n_rows=n_rows)

    def decide(self, evidence: Mapping[str, float], *, incumbent_id: int, n_rows: int) -> Verdict:
        verdict = self.base.decide(evidence, incumbent_id=incumbent_id, n_rows=n_rows)
        diff = evidence.get("diff", 0.0)
        if verdict.accepted or diff < -self.tolerance:
            return verdict
        return Verdict(True, f"not worse than #{incumbent_id} ({diff:+.3f} >= -{self.tolerance:g})"
                             + (f" {self.why}" if self.why else ""))


__all__ = ["AcceptancePolicy", "FavourOnTies", "PairedBootstrap", "Verdict"]
