"""The default compiler's race: screening of single levers, successive halving in waves, the
finalists' choice, and race costs planned from the calls rows really took (a mixin of
:class:`~.auto.Compile`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .candidates import Spec
from .evaluator import BudgetStop, unparsed_rows
from .report import Report
from .selection import paired_stats, shrink
from .session import CompileSession


def cost_key(program: object) -> tuple[tuple[str, object, object, object], ...]:
    """What decides a program's calls per row: each node's module kind, output format and decoding
    (demos and instructions change what a row says, not how many calls it takes)."""
    nodes = getattr(program, "nodes", None) or []
    return tuple((n.name, getattr(n.module, "kind", None), getattr(n.module, "format", None),
                  getattr(n.module, "decode", None)) for n in nodes)


class Racing:
    """Racing methods of :class:`~.auto.Compile` (needs ``min_race_rows``-based ``rounds``)."""

    @property
    def _costs(self) -> dict[Any, float]:
        """Calls a row by program shape (:func:`cost_key`), the most seen; reset by each search."""
        costs: dict[Any, float] = self.__dict__.setdefault("_costs_seen", {})
        return costs

    def _seen(self, program: object, calls: float, n_rows: int) -> None:
        """Record the calls ``n_rows`` rows of ``program`` took (for :meth:`_row_cost`)."""
        if n_rows:
            key = cost_key(program)
            self._costs[key] = max(self._costs.get(key, 0.0), calls / n_rows)

    def _costs_report(self) -> dict[str, float]:
        """The calls a row each shape of program took, by shape (``node: format/decode, ...``)."""
        return {", ".join(f"{name}: {fmt or kind}/{dec or 'generate'}" for name, kind, fmt, dec in key): round(v, 3)
                for key, v in self._costs.items()}

    def _row_cost(self, s: Spec) -> float:
        """Expected calls per row of ``s``: what its own rows took once it has some; before that,
        the most any candidate with the same kinds, formats and decodings took (a repair call is
        made for most free-text answers of a small model and for almost no grammar-constrained
        one); with nothing seen yet, the upper bound ``calls_per_row``."""
        if s.rows and s.calls:
            return s.calls / len(s.rows)
        seen = self._costs.get(cost_key(s.program)) if s.program is not None else None
        return min(s.calls_per_row, seen) if seen else s.calls_per_row

    def _race_cost(self, specs: Sequence[Spec], rounds: Sequence[int], order: Sequence[int]) -> float:
        """Expected calls racing ``specs`` over ``rounds`` makes: in each round, the candidates
        still in it (all, then the surviving half) score the round's rows they lack -- the most
        expensive ones assumed to survive; each row at :meth:`_row_cost`. A champion already scored
        costs nothing."""
        cost, prev, n = 0.0, 0, len(specs)
        done = [set(s.rows) | set(s.demo_rows) for s in specs]
        for end in rounds:
            chunk = order[prev:end]
            need = sorted((self._row_cost(s) * sum(1 for i in chunk if i not in d) for s, d in zip(specs, done)),
                          reverse=True)
            cost += sum(need[:n])
            prev, n = end, max(1, math.ceil(n / 2))
        return cost

    def _finalists(self, tried: Sequence[Spec], alive: list[Spec], rounds: Sequence[int], order: Sequence[int],
                   base: Sequence[float]) -> list[Spec]:
        """The winner among every candidate scored on all the search rows, not only the last wave's
        survivor: a champion of an earlier wave that a later newcomer knocked out on a few rows
        still competes on its full evidence (a newcomer that looked good on 20 rows and then fell
        back must not win by being the last one standing). With fewer than two finalists, the
        best of the race's survivors on the rows each has."""
        done = self._scored_on_all(tried, rounds, order)
        if len(done) < 2 and not (done and not alive):
            if len(alive) > 1:  # the race was stopped with several left: the best on its rows so far
                ranked = self._rank(alive, base)
                for s, *_ in ranked[1:]:
                    s.alive = False
                    s.note += "; not raced further: the budget left covers no more rows"
                return [ranked[0][0]]
            return alive
        ranked = self._rank(done, base)
        winner = ranked[0][0]
        for pos, (s, est, d, se) in enumerate(ranked):
            s.alive, s.finished = pos == 0, True
            s.note = (f"search rows {len(s.rows)}: {d:+.3f} vs baseline (se {se:.3f}), shrunk estimate {est:+.3f}; "
                      f"scored on every search row: rank {pos + 1} of {len(ranked)} such candidates")
        for s in alive:
            if s is not winner and s not in done:
                s.alive = False
        return [winner]

    def _wave(self, tried: Sequence[Spec], alive: Sequence[Spec], untried: Sequence[Spec], rounds: Sequence[int],
              order: Sequence[int], n_confirm: int, rem: float | None) -> list[Spec]:
        """The next wave: untried candidates in order, each taken when racing it with the survivors
        and those taken before it, plus confirming the costliest candidate that could then win,
        still fits the budget left -- one that does not fit is passed over for cheaper ones after
        it (a calibrated candidate at two calls a row must not stop the search while one-call
        candidates fit). At most ``max_candidates``."""
        contenders = self._contenders(tried, alive, rounds, order)
        wave: list[Spec] = []
        for s in untried:
            if len(wave) >= self.max_candidates:  # type: ignore[attr-defined]
                break
            trial = [*wave, s]
            reserve = self._reserve(n_confirm, [*contenders, *trial])
            if rem is None or reserve + self._race_cost([*alive, *trial], rounds, order) <= rem:
                wave = trial
        return wave

    #: the confirmation's reserve over a candidate's expected calls a row (a winner whose
    #: confirmation the budget cannot finish is not taken: the reserve errs high, up to the upper bound)
    reserve_margin = 1.25

    def _reserve(self, n_confirm: int, specs: Sequence[Spec]) -> int:
        """Calls kept back to confirm whichever of ``specs`` wins, at the costliest one's rate:
        ``reserve_margin`` times its expected calls a row, at most its upper bound."""
        return math.ceil(n_confirm * max((min(s.calls_per_row, self.reserve_margin * self._row_cost(s))
                                          for s in specs), default=0.0))

    @staticmethod
    def _scored_on_all(specs: Sequence[Spec], rounds: Sequence[int], order: Sequence[int]) -> list[Spec]:
        """The candidates scored on every search row (their demo rows excepted): the finalists."""
        full = set(order[:rounds[-1]]) if rounds else set()
        return [s for s in specs if s.rows and full <= set(s.rows) | set(s.demo_rows)]

    def _contenders(self, tried: Sequence[Spec], alive: Sequence[Spec], rounds: Sequence[int],
                    order: Sequence[int]) -> list[Spec]:
        """The candidates that can still be chosen (and so confirmed): the race's survivors and
        every candidate scored on all the search rows (see :meth:`_finalists`)."""
        return [*alive, *(s for s in self._scored_on_all(tried, rounds, order) if s not in alive)]

    @staticmethod
    def _unfinished(alive: Sequence[Spec], rounds: Sequence[int], order: Sequence[int]) -> bool:
        """Whether several candidates are still in the race, or the one left has rows to score."""
        if len(alive) > 1:
            return True
        todo = set(order[:rounds[-1]]) if rounds else set()
        return bool(alive) and bool(todo - set(alive[0].rows) - set(alive[0].demo_rows))

    async def _screen(self, session: CompileSession, specs: list[Spec], rounds: Sequence[int],
                      order: Sequence[int], rows: Sequence[Mapping[str, Any]], base: Sequence[float],
                      conf_idx: Sequence[int]) -> tuple[list[Spec], list[Spec], list[Spec]]:
        """Score the single-lever candidates on the first round's rows, keep the better half, and
        order the rest by the sum of their levers' shrunk effects (levers not screened count 0;
        prior order breaks ties). Returns (survivors, the rest in order, the screened)."""
        singles = [s for s in specs if len(s.levers) == 1]
        if len(singles) < 2 or not rounds:
            return [], specs, []
        rem = session.remaining_calls()
        k = len(singles)
        while k >= 2 and rem is not None:
            reserve = self._reserve(len(conf_idx), singles[:k])
            screen = self._race_cost(singles[:k], rounds[:1], order)
            # the survivors, after screening, must still be able to finish the race
            worst = max(self._row_cost(s) for s in singles[:k])
            finish, n, prev = 0.0, math.ceil(k / 2), rounds[0]
            for end in rounds[1:]:
                n = max(1, math.ceil(n / 2))
                finish += n * (end - prev) * worst
                prev = end
            if reserve + screen + finish <= rem:
                break
            k -= 1
        if k < 2:
            return [], specs, []
        screened = singles[:k]
        session.report.notes.append(
            f"screening: {k} single-lever candidates on the first {rounds[0]} search rows: "
            + "; ".join(s.label for s in screened))
        alive = await self._race(session, screened, rounds[:1], order, rows, base,
                                 final_keep=math.ceil(k / 2), stage="screening",
                                 reserve=self._reserve(len(conf_idx), screened))
        effect: dict[str, float] = {}
        for s, est, _d, _se in self._rank(screened, base):
            effect[next(iter(s.levers))] = est
        rest = [s for s in specs if s not in screened]
        prior = {id(s): i for i, s in enumerate(rest)}
        rest.sort(key=lambda s: (-sum(effect.get(lv, 0.0) for lv in s.levers), prior[id(s)]))
        if effect:
            session.report.data["lever_effects"] = {lv: round(e, 4) for lv, e in
                                                    sorted(effect.items(), key=lambda t: -t[1])}
        return alive, rest, screened

    async def _race(self, session: CompileSession, specs: list[Spec], rounds: Sequence[int],
                    order: Sequence[int], rows: Sequence[Mapping[str, Any]], base: Sequence[float], *,
                    final_keep: int = 1, stage: str = "racing", reserve: int = 0) -> list[Spec]:
        """Successive halving over ``specs`` on the search rows (in ``order``); returns the
        survivors (``final_keep`` after the last of ``rounds``). The race was planned with expected
        costs; a candidate's rows are run only while, at its expected cost, they leave ``reserve``
        calls (the confirmation's) -- else :class:`BudgetStop`."""
        alive, prev = list(specs), 0
        for s in alive:
            s.alive = True
        for j, end in enumerate(rounds):
            session.reporter.phase(f"{stage} {len(alive)} candidates, round {j + 1} of {len(rounds)} "
                                   f"({end} of {len(order)} search rows)")
            chunk = order[prev:end]
            for s in alive:
                done = set(s.rows)
                use = [i for i in chunk if i not in s.demo_rows and i not in done]
                if use:
                    rem, rate = session.remaining_calls(), self._row_cost(s)
                    if rem is not None and rem - len(use) * rate < reserve:
                        raise BudgetStop(f"{rem} calls left: {len(use)} more rows of {s.label} take ~"
                                         f"{len(use) * rate:.0f}, and {reserve} are kept to confirm the winner")
                    entry = await session.run(s.program, [rows[i] for i in use],  # type: ignore[arg-type]
                                              per_row=rate)
                    self._seen(s.program, entry["usage"]["calls"], len(use))
                    s.rows += use
                    s.scores += entry["scores"]
                    s.calls += entry["usage"]["calls"]
                    s.tokens += entry["usage"]["prompt_tokens"] + entry["usage"]["completion_tokens"]
                    s.dollars += entry["usage"].get("dollars", 0.0)
                    s.unparsed += unparsed_rows(entry)
            prev = end
            ranked = self._rank(alive, base)
            keep = max(1, math.ceil(len(alive) / 2)) if end < rounds[-1] else max(1, final_keep)
            for pos, (s, est, d, se) in enumerate(ranked):
                s.note = f"search rows {len(s.rows)}: {d:+.3f} vs baseline (se {se:.3f}), shrunk estimate {est:+.3f}"
                if pos >= keep:
                    s.alive = False
                    s.note += (f"; dropped after the {'screening' if stage == 'screening' else 'race'} on {end} "
                               f"search rows (rank {pos + 1} of {len(ranked)})")
            alive = [s for s, *_ in ranked[:keep]]
        return alive

    #: at most this many near ties are named in the report's note
    near_ties_shown = 3

    @staticmethod
    def near_ties(tried: Sequence[Spec], winner: Spec) -> list[dict[str, Any]]:
        """The candidates the search rows could not tell from ``winner``: on the rows both were scored
        on (at least two), their paired difference from it is not below 0 by more than 1.96 standard
        errors. Best first; other draws of the winner's own demo sets left out."""
        mine = dict(zip(winner.rows, winner.scores))
        out = []
        for s in tried:
            shared = [(x, mine[r]) for r, x in zip(s.rows, s.scores) if r in mine]
            if s is winner or s.family == winner.family or len(shared) < 2:
                continue
            d, se = paired_stats([w for _, w in shared], [x for x, _ in shared])
            if d + 1.96 * se >= 0:
                out.append({"label": s.label, "diff": round(d, 4), "se": round(se, 4), "rows": len(shared)})
        return sorted(out, key=lambda t: -t["diff"])

    def _note_near_ties(self, report: Report, tried: Sequence[Spec], winner: Spec) -> None:
        """Say in the report which candidates the chosen one could not be told from (``data["near_ties"]``)."""
        ties = self.near_ties(tried, winner)
        if not ties:
            return
        report.data["near_ties"] = ties
        shown = "; ".join(f"{t['label']} {t['diff']:+.3f} (se {t['se']:.3f}, {t['rows']} rows)"
                          for t in ties[:self.near_ties_shown])
        more = f" and {len(ties) - self.near_ties_shown} more" if len(ties) > self.near_ties_shown else ""
        report.notes.append(
            f"the search rows could not tell {winner.label} from {len(ties)} other candidate"
            f"{'s' if len(ties) > 1 else ''} (paired difference from it, within 1.96 standard errors of 0 or "
            f"above): {shown}{more}; which is best is not settled on these rows -- more labelled rows (or a "
            "budget that scores more of them) would separate them")

    @staticmethod
    def _rank(specs: Sequence[Spec], base: Sequence[float]) -> list[tuple[Spec, float, float, float]]:
        stats = [paired_stats([base[i] for i in s.rows], s.scores) for s in specs]
        est = shrink([d for d, _ in stats], [se for _, se in stats])
        ranked = sorted(zip(specs, est, stats), key=lambda t: (-t[1], -t[2][0]))
        return [(s, e, d, se) for s, e, (d, se) in ranked]
