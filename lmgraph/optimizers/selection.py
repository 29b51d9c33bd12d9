"""Statistics for choosing among compile candidates: paired differences, their standard errors,
an empirical-Bayes shrinkage against the winner's curse, and the smallest detectable gain."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def shrink(deltas: Sequence[float], ses: Sequence[float]) -> list[float]:
    """Empirical-Bayes posterior means of true gains ``deltas`` measured with standard errors
    ``ses``: each is pulled toward 0 by ``tau2 / (tau2 + se^2)``, where ``tau2`` (the spread of
    true gains) is the observed spread less the noise. The best raw delta among many candidates
    is biased upward (the winner's curse); this pulls noisy ones back the most."""
    if not deltas:
        return []
    if len(deltas) == 1:
        tau2 = deltas[0] ** 2  # one candidate: its own size is the only hint of the spread
    else:
        mean = sum(deltas) / len(deltas)
        var = sum((d - mean) ** 2 for d in deltas) / (len(deltas) - 1)
        tau2 = max(0.0, var - sum(s * s for s in ses) / len(ses))
        tau2 = max(tau2, mean * mean)  # a shared shift counts as signal too
    return [d * tau2 / (tau2 + s * s) if tau2 + s * s > 0 else 0.0 for d, s in zip(deltas, ses)]


def paired_stats(base: Sequence[float], cand: Sequence[float]) -> tuple[float, float]:
    """Mean paired difference and its standard error."""
    d = [b - a for a, b in zip(base, cand)]
    n = len(d)
    if n == 0:
        return 0.0, float("inf")
    m = sum(d) / n
    if n == 1:
        return m, 1.0
    var = sum((x - m) ** 2 for x in d) / (n - 1)
    return m, math.sqrt(var / n)


def detectable_gain(base: Sequence[float], n: int) -> float:
    """The smallest gain a paired comparison on ``n`` rows can tell from noise (two standard
    errors of a difference whose per-row spread is that of the baseline's scores, at least that
    of a 50/50 change in a tenth of the rows)."""
    if n <= 0:
        return float("inf")
    m = sum(base) / max(1, len(base))
    var = max(sum((x - m) ** 2 for x in base) / max(1, len(base) - 1), 0.1)
    return 2.0 * math.sqrt(2 * var / n)


def what_would_help(mde: float, fold_now: int, fold_all: int, scored: int, total: int, how: str) -> str:
    """What would let a compile show smaller gains, in plain words: when only ``scored`` of the
    ``total`` labelled rows were scored (the budget's choice; the rest only fed demos), scoring
    all of them (``how``: the setting that does it) -- the fold of ``fold_now`` rows would hold
    ``fold_all``, and the smallest detectable gain ``mde`` shrinks with its square root; else
    more labelled rows."""
    if total <= scored:
        return "more labelled rows would help"
    smaller = mde * math.sqrt(fold_now / max(1, fold_all))
    return (f"a larger budget would help ({scored} of your {total} labelled rows were scored; the other "
            f"{total - scored} only fed demos): {how} scores all of them, where gains down to about {smaller:+.2f} "
            "could be shown")


def plan_notes(scored: int, total: int, how: str, covered: int, of: int) -> tuple[str, ...]:
    """A dry run's notes on what a budget leaves out: labelled rows it will not score (``how``:
    the setting that scores all ``total``), and candidates it cannot cover (``covered`` of ``of``)."""
    notes = []
    if scored < total:
        notes.append(f"{scored} of the {total} labelled rows will be scored and the other {total - scored} only "
                     f"feed demos: {how} scores all of them, so smaller gains can be told from noise")
    if covered < of:
        notes.append(f"the budget covers about {covered} of the {of} candidates (planned at a row's "
                     "upper-bound cost: rows that need no repair call leave room for more)")
    return tuple(notes)


def why_unchanged(base: Sequence[float], tried: Sequence[Any], search_idx: Sequence[int],
                  what_helps: Callable[[float, int], str]) -> str:
    """The note of a race that no candidate won: why (every candidate tied the baseline row for
    row, every demo set lowered the score) and what would help (``what_helps(mde, n)``). ``tried``:
    the race's candidates (``rows``, ``scores`` on those rows, ``params`` per node)."""
    raced = [s for s in tried if s.rows]
    same = [s for s in raced if all(abs(a - base[i]) < 1e-12 for i, a in zip(s.rows, s.scores))]
    mde = detectable_gain([base[i] for i in search_idx], len(search_idx))
    why = [f"no candidate beat the baseline on the {len(search_idx)} search rows; the program is unchanged"]
    if raced and len(same) == len(raced):
        why.append("every candidate scored exactly like the baseline on every row: the outputs do not depend "
                   "on the prompt -- try log-prob scoring with calibration (a scoring backend), or a larger model")
    with_demos = [s for s in raced if any("demos" in p for p in s.params.values())]
    demo_worse = [s for s in with_demos if paired_stats([base[i] for i in s.rows], s.scores)[0] < 0]
    if demo_worse and len(demo_worse) >= len(with_demos):
        why.append("every demo set lowered the score")
    why.append(f"with {len(search_idx)} search rows, gains under {mde:+.2f} cannot be told from noise: "
               + what_helps(mde, len(search_idx)))
    return "; ".join(why)


def stratified_order(idx: Sequence[int], scores: Sequence[float]) -> list[int]:
    """``idx`` reordered so that every prefix holds the rows the baseline got wrong (score <= 0),
    partly right and right (score >= 1) in about the shares of the whole -- each stratum keeps its
    order in ``idx`` (a seeded shuffle), and the next row comes from the stratum furthest behind its
    share. A paired gain can only come from rows the baseline got wrong and a loss only from rows
    it got right, so a first racing round of rows that happen to be easy for the baseline makes
    every lever look worse than it is (and hard ones, better); with the strata in proportion, the
    round's rows are as hard as the fold."""
    def stratum(i: int) -> int:
        return 0 if scores[i] <= 0 else 2 if scores[i] >= 1 else 1

    groups: dict[int, list[int]] = {}
    for i in idx:
        groups.setdefault(stratum(i), []).append(i)
    n, taken, out = len(idx), dict.fromkeys(groups, 0), []
    for pos in range(1, n + 1):
        k = max((k for k in groups if taken[k] < len(groups[k])),
                key=lambda k: (len(groups[k]) * pos / n - taken[k], -k))
        out.append(groups[k][taken[k]])
        taken[k] += 1
    return out


__all__ = ["detectable_gain", "paired_stats", "plan_notes", "shrink", "stratified_order", "what_would_help",
           "why_unchanged"]
