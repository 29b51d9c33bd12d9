"""The default compiler: search the levers that matter, pick on all the evidence, say what it knows.

``lg.compile(program, rows, metric, budget=...)`` (or :class:`Compile`) differs from the older
optimizers in three ways.

* **Every labelled row is scored.** Training and validation rows are pooled and cut (seeded) into
  a *search fold* and a *confirmation fold*. Demos come only from search-fold rows -- from the
  baseline's own passing runs (bootstrapped, free: the baseline is run on every row anyway) or
  straight from the labels -- and a candidate is never scored on a row its demos were drawn from
  (cross-fitting). The confirmation fold is touched once, by the one chosen candidate, so its
  estimate of the gain is unbiased.
* **The levers are the ones small and large models respond to**: the output decoding (generate,
  log-prob scoring of a label's options, scoring with contextual calibration), the prompt format
  (completion, chat, grammar-constrained JSON), bootstrapped or labelled demos (label-balanced),
  their number, per-input (nearest-neighbour) demos (``knn_match="text"``: matched on a node's text
  inputs where it also sees passage lists), instructions written from the signature
  (field names, options) rather than by the task model, and -- when the run context lists other
  models (``RunContext(lms=...)``, all but the proposer unless ``models=`` names them) -- the
  model of each node; the report then carries the (score, cost) Pareto front of everything raced
  (``report.data["pareto"]``: score, calls, tokens and dollars per row; ``report.front()`` adds
  each point's program). The single-lever candidates (one lever changed) are screened
  first on the first racing round's rows; the combinations are then ordered by the sum of their
  levers' screened effects (``report.data["lever_effects"]``) and race against the survivors.
* **Selection maximises the expected held-out gain.** Candidates are raced by successive halving
  on search-fold rows (never fewer than ``min_race_rows`` per decision), ranked by their paired
  gain over the baseline shrunk toward 0 by an empirical-Bayes estimate of how much the
  candidates truly differ (the winner's-curse correction), and the winner is confirmed on the
  held-out fold. It replaces the program when the confirmed gain is not negative and the
  combined estimate is positive (a tie on every held-out row is no gain; with ``min_gain`` set,
  at least that: a near-tie that costs longer prompts is not worth taking); the report gives
  that expected gain with its 95% CI, and when nothing is chosen, why, and what would help.

A random demo set is one draw among many, and a draw can matter as much as the lever: when every
planned candidate has been raced and budget is left, the labelled and bootstrapped demo sets are
drawn again (``(draw 2)``, ...; up to ``max_draws`` per set, the sets of the best-scoring levers
first) and race like any candidate; they are extras, never listed as "not tried".

The search is planned to fit the budget before it starts: :meth:`Compile.dry_run` shows the plan
(at upper-bound costs; its total never exceeds the budget), and candidates the budget can't cover
are listed as not tried, with ``report.stopped`` saying so. The race itself is planned at what rows
really take, shape by shape (``report.data["calls_per_row"]``): a small model's free-text answers
mostly need a repair call while grammar-constrained JSON ones never do, and a graph of generating
nodes rarely needs the repairs its upper bound counts; the winner's confirmation keeps a reserve
above its expected cost, and a race that would eat into it stops.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..context import RunContext
from ..errors import DefinitionError
from ..evaluation.evaluate import paired_bootstrap
from ..evaluation.metrics import Metric
from ..lm.wrappers import Budget
from ..modules.predict import SCORING_DECODES
from ..pipeline.program import Program, _run_sync
from . import proposals, selection
from .base import CostEstimate, Optimizer, check_budget_covers_baseline, check_rows
from .candidates import (
    Spec,
    _per_row,
    backend_scores,
    balanced,
    compile_specs,
    redraws,
    signature_instruction,
    tunable_modules,
    verbalizers,
)
from .evaluator import unparsed_rows
from .fewshot import demo_nodes, labeled_demos, labeled_demos_computed, labeled_demos_traced
from .instructions import check_proposer
from .params import demo_param, example_demos
from .racing import Racing
from .report import CONFIRMED, Report, score_cost_front
from .scored import ScoredRows
from .selection import detectable_gain, paired_stats, plan_notes, shrink, what_would_help, why_unchanged
from .session import BudgetStop, CompileSession

Demo = dict[str, Any]


# an expected gain this close to 0 is float noise: a tie
_TIE = 1e-9

# --------------------------------------------------------------------------- the optimizer

class Compile(Racing, ScoredRows, Optimizer):
    """The default compiler (see the module docstring)."""

    name = "compile"

    def __init__(self, *, max_demos: int = 4, confirm_fraction: float = 0.4, min_race_rows: int = 20,
                 decodes: Sequence[str] | str = "auto", formats: Sequence[str] = ("completion", "json", "chat"),
                 instructions: bool = True, label_map: Mapping[str, str] | None = None,
                 max_candidates: int = 12, models: Sequence[str] | str = "auto", proposer_lm: str | None = None,
                 num_proposals: int = 2, max_scored_rows: int | str = "auto", max_draws: int = 4,
                 min_gain: float = 0.0, stratify: bool = False,
                 verbalize: bool | Mapping[str, Mapping[Any, str]] = False, knn_match: str = "all",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from ..modules.base import FORMAT_CHOICES

        if max_demos < 1 or min_race_rows < 1 or max_candidates < 1 or max_draws < 1:
            raise DefinitionError("max_demos, min_race_rows, max_candidates and max_draws must be >= 1",
                                  fix="e.g. Compile(max_demos=4, min_race_rows=20); max_draws=1 draws each "
                                      "demo set once.")
        if not 0 <= min_gain < 1:
            raise DefinitionError(f"min_gain must be in [0, 1), got {min_gain}",
                                  fix="min_gain=0.02 takes a change only if it is expected to gain 2 points "
                                      "of the metric; 0 takes any expected gain.")
        if not 0 < confirm_fraction < 1:
            raise DefinitionError(f"confirm_fraction must be in (0, 1), got {confirm_fraction}",
                                  fix="0.4 keeps 40% of the rows for confirming the chosen candidate.")
        bad = [f for f in formats if f not in FORMAT_CHOICES or f == "auto"]
        if bad:
            raise DefinitionError(f"unknown prompt format {bad[0]!r}", fix="choose from completion, chat, json.")
        if knn_match not in ("all", "text"):
            raise DefinitionError(f"knn_match must be 'all' or 'text', got {knn_match!r}",
                                  fix="'all' matches nearest demos on every input of a node; 'text' on its "
                                      "text inputs where it also sees lists (retrieved passages).")
        if decodes != "auto" and any(d not in SCORING_DECODES for d in decodes):
            raise DefinitionError(f"decodes must be 'auto' or a subset of {SCORING_DECODES}, got {decodes!r}",
                                  fix="decodes=() turns log-prob scoring off.")
        self.max_demos = max_demos
        self.confirm_fraction = confirm_fraction
        self.min_race_rows = min_race_rows
        self.decodes = decodes if decodes == "auto" else tuple(decodes)
        self.formats = tuple(formats)
        self.instructions = instructions
        self.label_map = dict(label_map or {})
        self.max_candidates = max_candidates
        self.models = models if models == "auto" else tuple(models)
        # instructions written by a capable proposer model of the context (never the task model by
        # default: a 135M proposer writes nonsense); off when None
        self.proposer_lm = proposer_lm
        self.num_proposals = num_proposals
        if max_scored_rows not in ("auto", "measured") and (not isinstance(max_scored_rows, int)
                                                            or max_scored_rows < 10):
            raise DefinitionError(f"max_scored_rows must be 'auto', 'measured' or a whole number >= 10, got "
                                  f"{max_scored_rows!r}", fix="'auto' scores as many rows as a quarter of the "
                                  "budget covers at a row's upper-bound cost; 'measured' at the calls rows take.")
        self.max_scored_rows = max_scored_rows
        # each random demo set (labelled, bootstrapped) is drawn up to max_draws times: draws after
        # the first race only on budget the planned search left over
        self.max_draws = max_draws
        self.min_gain = float(min_gain)
        # race the search rows in an order whose every prefix holds the baseline's right, partial and
        # wrong rows in the fold's shares (selection.stratified_order); off: the seeded shuffle
        self.stratify = bool(stratify)
        # label words as a lever (candidates.verbalizers): True -- labels that read as identifiers
        # shown as plain words; {node: {label: word}} -- the user's words; False: off
        self.verbalize = ({n: {getattr(k, "value", k): w for k, w in ws.items()} for n, ws in verbalize.items()}
                          if isinstance(verbalize, Mapping) else bool(verbalize))  # Enum keys by their value
        # nearest demos matched on every input ("all") or, where a node sees lists (retrieved
        # passages) beside text inputs, on the text inputs ("text"; a node's own knn_fields win)
        self.knn_match = knn_match

    def config(self) -> dict[str, Any]:
        return {"max_demos": self.max_demos, "confirm_fraction": self.confirm_fraction,
                "min_race_rows": self.min_race_rows, "decodes": list(self.decodes) if self.decodes != "auto"
                else "auto", "formats": list(self.formats), "instructions": self.instructions,
                "label_map": self.label_map, "max_candidates": self.max_candidates,
                "models": self.models if self.models == "auto" else list(self.models),
                "proposer_lm": self.proposer_lm, "num_proposals": self.num_proposals,
                "max_scored_rows": self.max_scored_rows, "max_draws": self.max_draws,
                # only when set: the default keeps the fingerprints of earlier checkpoints
                **({"min_gain": self.min_gain} if self.min_gain else {}),
                **({"stratify": True} if self.stratify else {}),
                **({"verbalize": self.verbalize} if self.verbalize else {}),
                **({"knn_match": self.knn_match} if self.knn_match != "all" else {})}

    # ---- folds and plan
    def folds(self, n: int, seed: int) -> tuple[list[int], list[int]]:
        """(search rows, confirmation rows): a seeded cut of the pooled rows."""
        perm = list(range(n))
        random.Random(f"folds:{seed}").shuffle(perm)
        n_conf = max(1, round(n * self.confirm_fraction)) if n >= 4 else 0
        return perm[n_conf:], perm[:n_conf]

    def rounds(self, n_search: int) -> list[int]:
        """Row counts after each racing round: at least ``min_race_rows``, doubling, ending at all."""
        first = min(n_search, max(self.min_race_rows, math.ceil(n_search / 4)))
        out = [first]
        while out[-1] < n_search:
            out.append(min(n_search, 2 * out[-1]))
        return out

    def race_cost(self, k: int, n_search: int, per_row: float) -> float:
        cost, prev, alive = 0.0, 0, k
        for end in self.rounds(n_search):
            cost += alive * (end - prev) * per_row
            prev, alive = end, max(1, math.ceil(alive / 2))
        return cost

    def plan(self, n_rows: int, baseline_per_row: float, cand_per_row: float, budget_calls: int | None,
             n_specs: int) -> dict[str, Any]:
        """How many candidates fit: baseline on every row, the race, one confirmation."""
        search, conf = self.folds(n_rows, 0)
        base = math.ceil(n_rows * baseline_per_row)
        confirm = math.ceil(len(conf) * cand_per_row)
        k = min(n_specs, self.max_candidates)
        if budget_calls is not None:
            while k > 0 and base + confirm + self.race_cost(k, len(search), cand_per_row) > budget_calls:
                k -= 1
        race = math.ceil(self.race_cost(k, len(search), cand_per_row)) if k else 0
        return {"candidates": k, "of": n_specs, "baseline": base, "race": race,
                "confirmation": confirm if k else 0, "search_rows": len(search), "confirm_rows": len(conf)}

    def proposal_calls(self, program: Program) -> int:
        """The calls a proposer model makes (at most): ``num_proposals`` instructions per node with
        tunable instructions, and with ``verbalize=True`` one call per label node for its words."""
        if self.proposer_lm is None:
            return 0
        instr = sum(1 for m in tunable_modules(program).values() if "instructions" in m.tunable)
        words = len(proposals.label_word_nodes(program)) if self.verbalize is True else 0
        return instr * self.num_proposals + words

    @staticmethod
    def _pool(trainset: Sequence[Mapping[str, Any]],
              valset: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
        return list(trainset) + list(valset or [])

    def dry_run(self, program: Program, trainset: Sequence[Mapping[str, Any]],
                valset: Sequence[Mapping[str, Any]] | None = None, *, budget: Budget | None = None,
                ctx: RunContext | None = None) -> CostEstimate:
        pooled = self._pool(trainset, valset)
        check_rows(program, pooled, "trainset")
        rows = self.scored_split(program, pooled, budget, 0)[0]
        check_budget_covers_baseline(program, rows, budget)
        per = _per_row(program)
        specs = self._spec_skeleton(program, rows, ctx)
        cand = max([_per_row(program, s) for s in specs] or [per])
        props = self.proposal_calls(program)
        cap = max(0, budget.max_calls - props) if budget and budget.max_calls is not None else None
        p = self.plan(len(rows), per, cand, cap, len(specs))
        breakdown = {"baseline": p["baseline"], **({"proposals": props} if props else {}), "race": p["race"],
                     "confirmation": p["confirmation"]}
        calls = sum(breakdown.values())
        notes = plan_notes(len(rows), len(pooled), self._score_all(len(pooled), per), p["candidates"],
                           min(p["of"], self.max_candidates) if budget is not None else 0)
        most = len(self.scored_split(program, pooled, budget, 0, most=True)[0])
        if self.max_scored_rows == "measured" and most > len(rows):
            notes += (f"planned at {len(rows)} scored rows; the run scores up to {most}: as many as a quarter of "
                      "the budget covers at the calls its first 50 rows take",)
        return CostEstimate(calls, calls * 300, breakdown, notes)

    # ---- run
    async def aoptimize(self, program: Program, trainset: Sequence[Mapping[str, Any]], metric: Metric, *,
                        valset: Sequence[Mapping[str, Any]] | None = None, budget: Budget | None = None,
                        seed: int = 0, ctx: RunContext | None = None) -> tuple[Program, Report]:
        if isinstance(program, Program) and not isinstance(trainset, (str, bytes)):
            check_rows(program, trainset, "trainset")
            self._model_names(ctx)  # names the context lacks fail before any model call
            check_proposer(ctx, self.proposer_lm)
            self._proposed_words: dict[str, dict[Any, str]] = {}  # a proposer's label words: written in search
            verbalizers(self, tunable_modules(program))  # label words the user gave are checked here
            rows = self._pool(trainset, valset)
            scored, pool_only = self.scored_split(program, rows, budget, seed,
                                                  most=self.max_scored_rows == "measured")
            self._ctx_hint = ctx
            self._budget_hint = budget
            self._pool_only = pool_only
            self._scored_plan = (len(scored), len(pool_only), _per_row(program))
            return await super().aoptimize(program, rows, metric, valset=scored, budget=budget, seed=seed, ctx=ctx)
        return await super().aoptimize(program, trainset, metric, valset=valset, budget=budget, seed=seed, ctx=ctx)

    def _spec_skeleton(self, program: Program, rows: Sequence[Mapping[str, Any]],
                       ctx: RunContext | None) -> list[Spec]:
        """The candidate list before any row is run (for planning): the labelled demos of the rows
        stand in for the bootstrapped ones too."""
        pool: dict[str, list[tuple[int, Demo]]] = {}
        for i, row in enumerate(rows[:4 * self.max_demos]):
            for n, ds in labeled_demos(program, [row], 1, self.label_map, nested=True).items():
                pool.setdefault(n, []).extend((i, d) for d in ds)
        return self._specs(program, pool, pool, ctx, random.Random(0))

    def _specs(self, program: Program, boot: Mapping[str, list[tuple[int, Demo]]],
               labelled: Mapping[str, list[tuple[int, Demo]]], ctx: RunContext | None,
               rng: random.Random) -> list[Spec]:
        return compile_specs(self, program, boot, labelled, ctx, rng)

    async def search(self, session: CompileSession) -> None:
        rows = session.valset
        n = len(rows)
        base_prog = session.incumbent
        base_entry = await session.run(base_prog, rows)  # the baseline's memo entry (no new calls)
        self._costs.clear()  # what rows of each shape took: this search's own
        self._seen(base_prog, base_entry["usage"]["calls"], n)
        base_scores = list(base_entry["scores"])
        search_idx, conf_idx = self.folds(n, session.seed)
        if self.stratify:
            search_idx = selection.stratified_order(search_idx, base_scores)
        report = session.report
        report.data["folds"] = {"search": len(search_idx), "confirm": len(conf_idx),
                                **({"order": "stratified by the baseline's score"} if self.stratify else {}),
                                "demo_only": len(getattr(self, "_pool_only", [])),
                                "note": "train and validation rows pooled; demos only from search and demo-only "
                                        "rows; the confirmation rows are scored once, by the chosen candidate"}
        if not conf_idx or len(search_idx) < 2:
            report.notes.append(f"{n} rows are too few to search and confirm: the program is unchanged "
                                "(pass at least 10 labelled rows)")
            return
        boot, labelled = self._pools(base_prog, base_entry, search_idx, rows)
        labelled.update(await self._computed_pools(session, base_prog, search_idx, rows, skip=set(labelled)))
        # nodes whose inputs a model node computes: the inputs the baseline's run gave them, the labels
        labelled.update(labeled_demos_traced(base_prog, [(i, base_entry["examples"][i], rows[i]) for i in search_idx],
                                             self.label_map, skip=list(labelled)))
        self._proposed_words = (await proposals.label_words(session, base_prog, labelled,
                                                            proposer_lm=self.proposer_lm)
                                if self.verbalize is True else {})  # words a proposer model wrote for labels
        specs = self._specs(base_prog, boot, labelled, getattr(self, "_ctx_hint", None), session.rng)
        specs[2:2] = await proposals.instruction_specs(session, base_prog, labelled or boot,
                                                       proposer_lm=self.proposer_lm,
                                                       num_proposals=self.num_proposals, max_demos=self.max_demos)
        if not specs:
            report.notes.append("nothing to search: no node has tunable demos, format, decoding or instructions")
            return
        rounds = self.rounds(len(search_idx))
        report.notes.append(
            f"rows: {n} scored ({len(search_idx)} search, {len(conf_idx)} confirmation)"
            + (f", {len(getattr(self, '_pool_only', []))} more as demo sources only"
               if getattr(self, "_pool_only", None) else "") + f"; {len(specs)} candidates "
            f"in order of prior promise, raced in rounds at {', '.join(map(str, rounds))} search rows")
        # 1. screening: the single-lever candidates on the first round's rows (as many as leave the
        #    budget to race the surviving half to the end); 2. the combinations, ordered by the sum
        #    of their levers' screened effects, race in waves with the survivors -- each wave as many
        #    untried candidates as the budget left covers (expected costs, the confirmation kept
        #    in reserve) against the champions so far, whose scores are reused
        untried: list[Spec] = list(specs)
        tried: list[Spec] = []
        alive: list[Spec] = []
        try:
            alive, untried, screened = await self._screen(session, untried, rounds, search_idx, rows, base_scores,
                                                          conf_idx)
            tried += screened
            known = {base_prog.content_hash(), *(sp.program.content_hash() for sp in specs if sp.program)}
            while True:
                if not untried:  # every planned candidate tried: new draws of the demo sets, best first
                    untried = redraws(self._latest_draws(tried, base_scores), base_prog, boot, labelled,
                                      session.seed, known, self.max_draws)
                if not untried and not self._unfinished(alive, rounds, search_idx):
                    break
                rem = session.remaining_calls()
                wave = self._wave(tried, alive, untried, rounds, search_idx, len(conf_idx), rem)
                if not wave and not self._unfinished(alive, rounds, search_idx):
                    break
                if not wave:  # nothing new fits: finish the survivors' race on the rounds the budget covers
                    reserve = self._reserve(len(conf_idx), self._contenders(tried, alive, rounds, search_idx))
                    use = list(rounds)
                    while use and rem is not None and reserve + self._race_cost(alive, use, search_idx) > rem:
                        use.pop()
                    if use:
                        alive = await self._race(session, alive, use, search_idx, rows, base_scores, reserve=reserve)
                    break  # several still alive: _finalists picks the best of them
                untried = [s for s in untried if s not in wave]
                tried += wave
                alive = await self._race(session, [*alive, *wave], rounds, search_idx, rows, base_scores,
                                         reserve=self._reserve(len(conf_idx), [
                                             *self._contenders(tried, alive, rounds, search_idx), *wave]))
        except BudgetStop as e:
            report.stopped = f"race cut short: {e}"
            alive = [s for s in alive if s.rows]
        untried = [s for s in untried if s.draw == 1]  # later draws only use what is left over
        if untried:
            first = [s for s in tried if s.draw == 1]
            why = (f"the budget covers {len(first)} of {len(specs)} candidates; not tried: "
                   + "; ".join(s.label for s in untried))
            report.stopped = f"{report.stopped}; {why}" if report.stopped else why
        more = [s.label for s in tried if s.draw > 1]
        if more:
            report.notes.append(f"with the budget left after every candidate: {len(more)} more draws of the "
                                f"demo sets raced ({'; '.join(more)})")
            report.data["redraws"] = len(more)
        if not tried:
            report.notes.append("the budget left after the baseline cannot cover racing even one candidate "
                                f"on {rounds[0]} rows and confirming it on {len(conf_idx)}")
        report.data["calls_per_row"] = self._costs_report()  # what the race was planned with
        alive = self._finalists(tried, alive, rounds, search_idx, base_scores)
        self._finish(session, base_prog, base_scores, tried, alive, conf_idx, rows)
        self._pareto(session, base_scores, base_entry, tried)
        if not alive:
            return
        winner = alive[0]
        est, d, se = next((e, dd, s_) for s_obj, e, dd, s_ in self._rank(alive, base_scores) if s_obj is winner)
        if est <= 0 and d <= 0:
            session.report.notes.append(why_unchanged(
                base_scores, tried, search_idx, lambda mde, n: self._what_helps(mde, n, confirm=False)))
            return
        session.reporter.phase(f"confirming {winner.label} on the {len(conf_idx)} held-out rows")
        try:
            entry = await session.run(winner.program, [rows[i] for i in conf_idx],  # type: ignore[arg-type]
                                      per_row=self._row_cost(winner))
        except BudgetStop as e:
            report.stopped = f"{report.stopped + '; ' if report.stopped else ''}no budget to confirm: {e}"
            report.notes.append(f"best on the search rows: {winner.label} ({d:+.3f}); not confirmed, not taken")
            return
        conf_base = [base_scores[i] for i in conf_idx]
        ev = paired_bootstrap(conf_base, entry["scores"], seed=session.seed)
        dc, sec = paired_stats(conf_base, entry["scores"])
        w1 = 1 / max(se, 1e-9) ** 2
        w2 = 1 / max(sec, 1e-9) ** 2
        combined = (est * w1 + dc * w2) / (w1 + w2)
        all_idx = winner.rows + conf_idx
        all_scores = winner.scores + list(entry["scores"])
        cand = session.new_candidate(
            winner.label + CONFIRMED, winner.changes(),
            {"scores": all_scores, "usage": {"calls": winner.calls + entry["usage"]["calls"],
                                             "prompt_tokens": winner.tokens + entry["usage"]["prompt_tokens"],
                                             "completion_tokens": entry["usage"]["completion_tokens"]},
             "unparsed": winner.unparsed + unparsed_rows(entry)},
            rows=all_idx)
        cand.rows = list(all_idx)
        cand.evidence = {"confirm_diff": ev["diff"], "confirm_ci_low": ev["ci_low"], "confirm_ci_high": ev["ci_high"],
                         "confirm_p_better": ev["p_better"], "search_diff": d, "search_shrunk": est,
                         "expected_gain": combined, "rows": float(len(all_idx))}
        mde = detectable_gain(conf_base, len(conf_idx))
        # an expected gain within float noise of 0 (every confirmation row tied: the confirmation's
        # zero variance outweighs the search rows) is a tie, and a tie keeps the program as given
        tied = abs(combined) <= _TIE
        if dc >= 0 and combined > _TIE and combined >= self.min_gain:
            cand.status = "accepted"
            cand.reason = (f"expected gain {combined:+.3f} (search rows {d:+.3f}, shrunk {est:+.3f}; held-out "
                           f"confirmation {dc:+.3f}, 95% CI {ev['ci_low']:+.3f}..{ev['ci_high']:+.3f} on "
                           f"{len(conf_idx)} rows)")
            # scored on its search and confirmation rows only: the final choice, compared with nothing after
            session.set_incumbent(winner.program, cand, partial=True)  # type: ignore[arg-type]
            self._note_near_ties(report, tried, winner)
            if ev["ci_low"] <= 0:
                report.notes.append(f"the held-out confirmation alone cannot rule out no gain: with {len(conf_idx)} "
                                    f"confirmation rows a gain under {mde:+.2f} is not distinguishable from noise; "
                                    + self._what_helps(mde, len(conf_idx), confirm=True) + (
                                        f"; the expected gain, {combined:+.3f}, is that small: min_gain keeps the "
                                        "program as given for such gains" if combined < mde else ""))
        elif dc >= 0 and tied:
            cand.status = "rejected"
            cand.reason = (f"tied with the program as given on all {len(conf_idx)} held-out confirmation rows "
                           f"(search rows {d:+.3f}): expected gain 0")
            report.notes.append(f"no change: the best candidate on the search rows ({winner.label}, {d:+.3f}) gave "
                                "the same scores as the program as given on every one of the "
                                f"{len(conf_idx)} held-out rows")
        elif dc >= 0 and combined > 0:  # held up, but smaller than the user asked for
            cand.status = "rejected"
            cand.reason = (f"expected gain {combined:+.3f} (held-out confirmation {dc:+.3f}, 95% CI "
                           f"{ev['ci_low']:+.3f}..{ev['ci_high']:+.3f}) is under min_gain {self.min_gain:+.3f}")
            report.notes.append(f"no change: the best candidate ({winner.label}) is expected to gain {combined:+.3f}, "
                                f"under min_gain {self.min_gain:+.3f}; lower min_gain to take it")
        else:
            cand.status = "rejected"
            cand.reason = (f"held-out confirmation {dc:+.3f} (95% CI {ev['ci_low']:+.3f}..{ev['ci_high']:+.3f}) "
                           f"did not hold up the search-row gain {d:+.3f}")
            report.notes.append(f"no change: the best candidate on the search rows ({winner.label}) was not better "
                                f"on the {len(conf_idx)} held-out rows; gains under {mde:+.2f} can't be shown with "
                                "that many rows -- " + self._what_helps(mde, len(conf_idx), confirm=True))

    def _what_helps(self, mde: float, fold_now: int, *, confirm: bool) -> str:
        """More labelled rows -- or, when the budget left some of the user's rows unscored, the
        budget (or ``max_scored_rows``) that scores them all (:func:`.selection.what_would_help`)."""
        scored, pool_only, per_row = getattr(self, "_scored_plan", (0, 0, 1.0))
        total = scored + pool_only
        search_all, conf_all = self.folds(total, 0)
        return what_would_help(mde, fold_now, len(conf_all) if confirm else len(search_all), scored, total,
                               self._score_all(total, per_row))

    def _score_all(self, total: int, per_row: float) -> str:
        """The setting under which the compile scores all ``total`` labelled rows (see :meth:`n_scored`)."""
        return (f"max_scored_rows={total}" if isinstance(self.max_scored_rows, int)
                else f"budget={math.ceil(4 * per_row * total)}")

    def _latest_draws(self, tried: Sequence[Spec], base: Sequence[float]) -> list[Spec]:
        """The latest draw of each drawn demo set raced so far, in order of the best shrunk
        estimate among its draws (the draws of a promising lever first)."""
        scored = [s for s in tried if s.rows]
        best: dict[str, float] = {}
        for s, est, _d, _se in self._rank(scored, base) if scored else []:
            best.setdefault(s.family, est)
        latest: dict[str, Spec] = {}
        for s in tried:
            if s.family in best and (s.family not in latest or s.draw > latest[s.family].draw):
                latest[s.family] = s
        return sorted(latest.values(), key=lambda s: -best[s.family])

    def _model_names(self, ctx: RunContext | None) -> list[str]:
        known = sorted(ctx.lms) if ctx is not None else []
        if self.models == "auto":  # every model of the context but the proposer (name it to race it too)
            return [m for m in known if m != self.proposer_lm]
        missing = [m for m in self.models if m not in known]
        if missing:
            raise DefinitionError(f"Compile(models=...) names {missing[0]!r}, which the run context lacks",
                                  fix=f"pass RunContext(lms={{{missing[0]!r}: model, ...}}); known: "
                                      f"{', '.join(known) or 'none'}.")
        return list(self.models)

    def _pareto(self, session: CompileSession, base: Sequence[float], base_entry: Mapping[str, Any],
                tried: Sequence[Spec]) -> None:
        """The (score, cost) front of the baseline and the raced candidates. A candidate raced on some
        rows scores the baseline's mean plus its paired gain on those rows (clipped to [0, 1]), so
        candidates raced on different rows compare; cost per row in dollars where the backend prices
        a call, else in tokens (``data["pareto_cost"]`` names the axis; calls, tokens and dollars per
        row are recorded for every point)."""
        n = max(1, len(base))
        u = base_entry["usage"]
        points = [("baseline (the program as given)", sum(base) / n, u["calls"] / n,
                   (u["prompt_tokens"] + u["completion_tokens"]) / n, u.get("dollars", 0.0) / n)]
        ref = sum(base) / n
        for s in tried:
            if s.rows:  # scored on some rows: the baseline's mean plus its paired gain there (comparable)
                m = len(s.rows)
                est = min(1.0, max(0.0, ref + sum(x - base[r] for x, r in zip(s.scores, s.rows)) / m))
                points.append((s.label, est, s.calls / m, s.tokens / m, s.dollars / m))
        front, priced = score_cost_front(points)
        session.report.data["pareto_cost"] = "dollars_per_row" if priced else "tokens_per_row"
        programs = {s.label: s.program for s in tried}
        session.report.programs = {p[0]: programs.get(p[0], session.incumbent) for p in front}  # Report.front()
        session.report.data["pareto"] = [
            {"label": p[0], "score": round(p[1], 4), "calls_per_row": round(p[2], 3),
             "tokens_per_row": round(p[3], 1), "dollars_per_row": round(p[4], 8)} for p in front]
        if any(p[0].startswith("model ") or " on model " in p[0] for p in points[1:]):
            unit = "dollars" if priced else "tokens"
            session.report.notes.append(f"score / cost front ({unit} per row): " + "; ".join(
                f"{p[0]}: {p[1]:.3f} at " + (f"${p[4]:.6f}" if priced else f"{p[3]:.0f} tokens") for p in front))

    # ---- pieces
    def _pools(self, program: Program, entry: Mapping[str, Any], search_idx: Sequence[int],
               rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list[tuple[int, Demo]]],
                                                           dict[str, list[tuple[int, Demo]]]]:
        """Demo pools from the search rows: the baseline's passing runs, and the labels."""
        nodes = demo_nodes(program, nested=True)
        params = {n: demo_param(program, n) for n in nodes}
        boot: dict[str, list[tuple[int, Demo]]] = {n: [] for n in nodes}
        for i in search_idx:
            ex = entry["examples"][i]
            if not ex.get("ok") or ex.get("score", 0) < 1.0:
                continue
            for n, ds in example_demos(ex, params).items():
                boot[n] += [(i, d) for d in ds]
        labelled: dict[str, list[tuple[int, Demo]]] = {n: [] for n in nodes}
        extra = list(getattr(self, "_pool_only", []))
        # search rows by their index; rows that are never scored after them (index >= len(rows))
        for i, row in [(i, rows[i]) for i in search_idx] + [(len(rows) + j, r) for j, r in enumerate(extra)]:
            for n, ds in labeled_demos(program, [row], 1, self.label_map, nested=True).items():
                labelled[n] += [(i, d) for d in ds]
        return ({n: v for n, v in boot.items() if v}, {n: v for n, v in labelled.items() if v})

    async def _computed_pools(self, session: CompileSession, program: Program, search_idx: Sequence[int],
                              rows: Sequence[Mapping[str, Any]], skip: set[str]) -> dict[str, list[tuple[int, Demo]]]:
        """Labelled demos for nodes whose inputs a model-free upstream node computes (a RAG answer
        node's ``context`` from a Retrieve node): that node is run on each search / demo-only row --
        no model call -- so each demo shows what the node really sees."""
        nodes = [n for n in demo_nodes(program) if n not in skip]
        if not nodes:
            return {}
        extra = list(getattr(self, "_pool_only", []))
        out: dict[str, list[tuple[int, Demo]]] = {}
        for i, row in [(i, rows[i]) for i in search_idx] + [(len(rows) + j, r) for j, r in enumerate(extra)]:
            demos, _ = await labeled_demos_computed(program, [row], 1, self.label_map, session.ctx)
            for n, ds in demos.items():
                if n in nodes:
                    out.setdefault(n, []).extend((i, d) for d in ds)
        return out

    def _finish(self, session: CompileSession, base_prog: Program, base_scores: Sequence[float],
                tried: Sequence[Spec], alive: Sequence[Spec], conf_idx: Sequence[int],
                rows: Sequence[Mapping[str, Any]]) -> None:
        """Report rows for every raced candidate (search-row scores; never the confirmation rows)."""
        for s in tried:
            if not s.rows:
                continue
            c = session.new_candidate(s.label, s.changes(), {
                "scores": s.scores, "usage": {"calls": s.calls, "prompt_tokens": s.tokens, "completion_tokens": 0},
                "unparsed": s.unparsed},
                rows=s.rows)
            c.rows = list(s.rows)
            c.status = "advanced" if s.alive or s.finished else "dropped"
            c.reason = s.note + ("; the race's winner" if s.alive and s in alive else "")


def compile(program: Program, trainset: Sequence[Mapping[str, Any]], metric: Metric, *,  # noqa: A001
            valset: Sequence[Mapping[str, Any]] | None = None, budget: Budget | int | None = None,
            seed: int = 0, ctx: RunContext | None = None, **options: Any) -> tuple[Program, Report]:
    """Compile ``program`` with the default optimizer (:class:`Compile`) under ``budget``
    (a :class:`Budget` or a number of model calls). Returns (compiled program, report)."""
    if isinstance(budget, int):
        budget = Budget(max_calls=budget)
    opt = Compile(**options)
    return _run_sync(opt.aoptimize(program, trainset, metric, valset=valset, budget=budget, seed=seed, ctx=ctx))


__all__ = ["Compile", "Spec", "backend_scores", "balanced", "compile", "detectable_gain", "paired_stats", "shrink",
           "signature_instruction", "tunable_modules"]
