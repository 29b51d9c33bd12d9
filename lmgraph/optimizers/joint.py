"""Joint search: choose (instruction, demo set, prompt format) per node, across all nodes at once.

Per node, option lists are built first:

* instructions -- the current one plus ``num_instructions`` APE proposals (the proposer of
  :mod:`.instructions`, shown the node's labelled or bootstrapped input/output pairs);
* demo sets -- the current demos, zero-shot, the first ``max_demos`` bootstrapped demos and
  ``num_demo_sets`` seeded random subsets of a bootstrap pool;
* prompt formats -- the current one plus ``formats``.

A joint configuration picks one option per dimension per node. ``num_trials`` distinct
configurations are sampled with the session's seeded RNG -- uniformly for the first half, then
(``refine=True``) per node and dimension with probability proportional to
``exp(mean estimated score of the trials that used the option / refine_temperature)`` (options
no trial used yet count as good as the best one: optimism keeps exploring). Each trial is scored
on a fresh minibatch of validation rows; since the incumbent's per-example validation scores are
known, every trial is compared with the incumbent *on the same rows* (a paired delta), which
takes the minibatch's difficulty out of the ranking. The ``race_top`` trials with the best
positive deltas are then raced by successive halving on further validation rows (the race of
:mod:`.instructions`), and the ``confirm_top`` survivors are evaluated on the full validation set
through ``session.consider`` (paired-bootstrap acceptance). When the remaining budget only covers
the confirmations, trials and race stop early. Every trial is in the report with its scores, its
delta and why it went no further.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._canonical import canonical_json
from ..errors import DefinitionError
from ..pipeline.program import Program
from .base import Optimizer
from .fewshot import _demo_sig, bootstrap_pool, demo_nodes
from .instructions import check_proposer, mappable_nodes, node_examples, propose_instructions, short
from .race import Arm, Race, confirm, halving_cost, record, settle, successive_halving
from .report import Report
from .session import BudgetStop, CompileSession, static_calls_per_example

DIMS = ("instructions", "demos", "format")


@dataclass
class _NodeOptions:
    node: str
    instructions: list[tuple[str, str]]          # (label, text); index 0 = current
    demos: list[tuple[str, tuple[dict[str, Any], ...]]]  # (label, demos); index 0 = current
    formats: list[tuple[str, str]]               # (label, format); index 0 = current

    def dim(self, d: int) -> list[tuple[str, Any]]:
        return (self.instructions, self.demos, self.formats)[d]

    def sizes(self) -> tuple[int, int, int]:
        return len(self.instructions), len(self.demos), len(self.formats)


def joint_nodes(program: Program, nodes: Sequence[str] | None) -> list[str]:
    """Nodes (topological order) with any of instructions/demos/format tunable."""
    def ok(name: str) -> bool:
        return any(d in program.module(name).tunable for d in DIMS)
    if nodes is None:
        return [n for n in program.order if ok(n)]
    for name in nodes:
        if not ok(name):  # program.module raises for unknown names
            raise DefinitionError(f"node {name!r} ({program.module(name).kind}) has no tunable instructions, "
                                  "demos or format", node=name, fix="leave it out of nodes=.")
    wanted = set(nodes)
    return [n for n in program.order if n in wanted]


def accepts_format(module: Any, fmt: str) -> bool:
    """Whether ``module`` can use ``fmt`` (a scoring Predict takes only the completion format)."""
    try:
        module.replace(format=fmt)
    except DefinitionError:
        return False
    return True


def _canon(demos: Sequence[Mapping[str, Any]]) -> str:
    return canonical_json(list(demos), default=str)


class JointSearch(Optimizer):
    """Seeded bandit over joint (instruction, demos, format) choices for every node."""

    name = "joint_search"

    def __init__(self, num_trials: int = 16, *, num_instructions: int = 3, num_demo_sets: int = 3,
                 max_demos: int = 4, formats: Sequence[str] = ("completion", "chat"), minibatch_size: int = 16,
                 confirm_top: int = 1, race_top: int = 6, refine: bool = True, refine_temperature: float = 0.1,
                 proposer_lm: str | None = None, nodes: Sequence[str] | None = None, num_examples: int = 5,
                 temperature: float = 0.7, threshold: float = 1.0, max_instruction_chars: int = 1000,
                 label_map: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from ..modules.base import FORMAT_CHOICES

        bad = [f for f in formats if f not in FORMAT_CHOICES]
        if bad:
            raise DefinitionError(f"unknown prompt format {bad[0]!r}",
                                  fix=f"choose from {', '.join(FORMAT_CHOICES)}.")
        if num_trials < 1 or minibatch_size < 1 or confirm_top < 1 or max_demos < 1 or num_examples < 1:
            raise DefinitionError("num_trials, minibatch_size, confirm_top, max_demos and num_examples "
                                  "must be >= 1")
        if num_instructions < 0 or num_demo_sets < 0 or race_top < 0 or refine_temperature <= 0:
            raise DefinitionError("num_instructions, num_demo_sets and race_top must be >= 0, "
                                  "refine_temperature > 0")
        self.num_trials = num_trials
        self.num_instructions = num_instructions
        self.num_demo_sets = num_demo_sets
        self.max_demos = max_demos
        self.formats = list(formats)
        self.minibatch_size = minibatch_size
        self.confirm_top = confirm_top
        self.race_top = race_top
        self.refine = refine
        self.refine_temperature = float(refine_temperature)
        self.proposer_lm = proposer_lm
        self.nodes = list(nodes) if nodes is not None else None
        self.num_examples = num_examples
        self.temperature = float(temperature)
        self.threshold = threshold
        self.max_instruction_chars = max_instruction_chars
        self.label_map = dict(label_map or {})

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_trials": self.num_trials, "num_instructions": self.num_instructions,
                "num_demo_sets": self.num_demo_sets, "max_demos": self.max_demos, "formats": self.formats,
                "minibatch_size": self.minibatch_size, "confirm_top": self.confirm_top, "race_top": self.race_top,
                "refine": self.refine,
                "refine_temperature": self.refine_temperature, "proposer_lm": self.proposer_lm,
                "nodes": self.nodes, "num_examples": self.num_examples, "temperature": self.temperature,
                "threshold": self.threshold, "max_instruction_chars": self.max_instruction_chars,
                "label_map": self.label_map}

    def estimate(self, program: Program, n_train: int, n_val: int) -> dict[str, int]:
        nodes = joint_nodes(program, self.nodes)
        per = static_calls_per_example(program)
        ins_nodes = [n for n in nodes if "instructions" in program.module(n).tunable]
        out: dict[str, int] = {}
        mapped = mappable_nodes(program, self.label_map)
        if any("demos" in program.module(n).tunable for n in nodes) or any(n not in mapped for n in ins_nodes):
            out["bootstrap"] = n_train * per
        if self.num_instructions:
            out["proposals"] = len(ins_nodes) * self.num_instructions
        m = min(self.minibatch_size, n_val)
        out["trials"] = self.num_trials * m * per
        if m < n_val:
            pool = min(self.num_trials, max(self.race_top, self.confirm_top))
            race, full = halving_cost(pool, 0, n_val, 2 * m, self.confirm_top) if 2 * m < n_val else \
                (0, min(pool, self.confirm_top) * n_val)
            if race:
                out["race"] = race * per
            out["confirmation"] = full * per
        return out

    async def aoptimize(self, program: Program, *args: Any, **kwargs: Any) -> tuple[Program, Report]:
        if isinstance(program, Program):  # fail before any model call
            joint_nodes(program, self.nodes)
            check_proposer(kwargs.get("ctx"), self.proposer_lm)
        return await super().aoptimize(program, *args, **kwargs)

    # ---- option lists
    async def _options(self, session: CompileSession, nodes: list[str]) -> list[_NodeOptions]:
        base = session.incumbent
        pool_cache: dict[str, Any] = {}
        if any(n in demo_nodes(base) for n in nodes):
            session.reporter.phase("bootstrapping demos from training rows")
            want = self.max_demos * max(2, self.num_demo_sets)
            pool_cache["bootstrap"] = await bootstrap_pool(session, base, base, max(want, self.num_examples),
                                                           self.threshold, chunk=max(8, 2 * self.max_demos))
        out = []
        for node in nodes:
            m = base.module(node)
            tun = m.tunable
            # instructions
            instr: list[tuple[str, str]] = []
            if "instructions" in tun:
                cur = m.instructions  # type: ignore[attr-defined]
                instr.append(("current instruction", cur))
                if self.num_instructions:
                    session.reporter.phase(f"{node}: proposing instructions")
                    ex, _ = await node_examples(session, node, self.num_examples, self.label_map, pool_cache,
                                                self.threshold)
                    props = await propose_instructions(session, _demo_sig(base, node), ex, self.num_instructions,
                                                       proposer_lm=self.proposer_lm, temperature=self.temperature,
                                                       max_chars=self.max_instruction_chars, exclude=[cur])
                    instr += [(f"instruction {i + 1}: {short(t, 40)!r}", t) for i, t in enumerate(props)]
            else:
                instr.append(("n/a", ""))
            # demo sets
            demos: list[tuple[str, tuple[dict[str, Any], ...]]] = []
            if "demos" in tun:
                cur_d = tuple(dict(d) for d in m.demos)  # type: ignore[attr-defined]
                pool = list(pool_cache.get("bootstrap", {}).get(node) or [])
                sets = [(f"current demos ({len(cur_d)})" if cur_d else "zero-shot (current)", cur_d),
                        ("zero-shot", ()), (f"first {min(self.max_demos, len(pool))} bootstrapped",
                                            tuple(pool[:self.max_demos]))]
                for j in range(self.num_demo_sets):
                    if not pool:
                        break
                    k = session.rng.randint(1, self.max_demos)
                    pick = tuple(session.rng.sample(pool, min(k, len(pool))))
                    sets.append((f"random set {j + 1} ({len(pick)} demo{'s' if len(pick) != 1 else ''})", pick))
                seen: set[str] = set()
                for label, d in sets:
                    if _canon(d) not in seen:
                        seen.add(_canon(d))
                        demos.append((label, d))
            else:
                demos.append(("n/a", ()))
            # formats
            fmts: list[tuple[str, str]] = []
            if "format" in tun:
                cur_f = m.format  # type: ignore[attr-defined]
                fmts.append((f"format {cur_f} (current)", cur_f))
                fmts += [(f"format {f}", f) for f in dict.fromkeys(self.formats)
                         if f != cur_f and accepts_format(m, f)]
            else:
                fmts.append(("n/a", ""))
            out.append(_NodeOptions(node, instr, demos, fmts))
        return out

    def _build(self, base: Program, opts: list[_NodeOptions], cfg: tuple[tuple[int, int, int], ...]) -> Program:
        mods = {}
        for o, choice in zip(opts, cfg):
            params = {d: o.dim(k)[c][1] for k, (d, c) in enumerate(zip(DIMS, choice)) if c != 0}
            if params:
                mods[o.node] = base.module(o.node).replace(**params)
        return base.replace_modules(mods) if mods else base

    @staticmethod
    def _describe(opts: list[_NodeOptions], cfg: tuple[tuple[int, int, int], ...]) -> tuple[str, dict[str, Any]]:
        parts, changes = [], {}
        for o, choice in zip(opts, cfg):
            ch: dict[str, Any] = {}
            if choice[0]:
                ch["instructions"] = short(o.instructions[choice[0]][1], 120)
            if choice[1]:
                ch["demos"] = len(o.demos[choice[1]][1])
            if choice[2]:
                ch["format"] = o.formats[choice[2]][1]
            if ch:
                changes[o.node] = ch
                parts.append(f"{o.node}: " + " / ".join(o.dim(k)[c][0] for k, c in enumerate(choice) if c))
        return "; ".join(parts) or "as given", changes

    # ---- sampling
    def _sample(self, session: CompileSession, opts: list[_NodeOptions],
                stats: dict[tuple[int, int, int], list[float]], refined: bool) -> tuple[tuple[int, int, int], ...]:
        rng = session.rng
        cfg: list[tuple[int, int, int]] = []
        for ni, o in enumerate(opts):
            choice: list[int] = []
            for d, size in enumerate(o.sizes()):
                if size == 1:
                    choice.append(0)
                    continue
                if not refined:
                    choice.append(rng.randrange(size))
                    continue
                means = [(sum(s) / len(s)) if (s := stats.get((ni, d, c))) else None for c in range(size)]
                best = max((m for m in means if m is not None), default=0.0)
                ws = [math.exp(((best if m is None else m) - best) / self.refine_temperature) for m in means]
                x, acc = rng.random() * sum(ws), 0.0
                pick = size - 1
                for c, w in enumerate(ws):
                    acc += w
                    if x < acc:
                        pick = c
                        break
                choice.append(pick)
            cfg.append((choice[0], choice[1], choice[2]))  # one index per dimension of o.sizes()
        return tuple(cfg)

    # ---- search
    async def search(self, session: CompileSession) -> None:
        nodes = joint_nodes(session.incumbent, self.nodes)
        if not nodes:
            session.report.notes.append("no node has tunable instructions, demos or format: nothing to search")
            return
        opts = await self._options(session, nodes)
        base = session.incumbent
        race = Race(session)
        n_val = len(session.valset)
        m = min(self.minibatch_size, n_val)
        full = m >= n_val
        size = math.prod(s for o in opts for s in o.sizes())
        session.report.notes.append(
            "options per node: " + "; ".join(f"{o.node}: {len(o.instructions)} instructions x {len(o.demos)} demo "
                                             f"sets x {len(o.formats)} formats" for o in opts)
            + f" = {size} configurations; {self.num_trials} trials on "
            + ("the full validation set" if full else f"minibatches of {m}"))
        seen_cfg = {tuple((0, 0, 0) for _ in opts)}
        seen_prog = {base.content_hash()}
        inc_mean = sum(race.inc_scores) / n_val
        # the incumbent is a free trial of every current option
        stats: dict[tuple[int, int, int], list[float]] = {(ni, d, 0): [inc_mean] for ni in range(len(opts))
                                                          for d in range(3)}
        trials: list[Arm] = []
        try:
            warmup = self.num_trials // 2
            for t in range(self.num_trials):
                session.reporter.phase(f"trial {t + 1} of {self.num_trials}"
                                       + ("" if full else f" on a minibatch of {m}"))
                refined = self.refine and t >= warmup
                cfg = next((c for c in (self._sample(session, opts, stats, refined) for _ in range(200))
                            if c not in seen_cfg), None)
                if cfg is None:
                    session.report.notes.append(f"stopped sampling after {t} trials: no unseen configuration found")
                    break
                seen_cfg.add(cfg)
                prog = self._build(base, opts, cfg)
                if prog.content_hash() in seen_prog:  # other choices that give the same program
                    continue
                seen_prog.add(prog.content_hash())
                what, changes = self._describe(opts, cfg)
                arm = Arm(len(trials) + 1, f"trial {len(trials) + 1}{' (refined)' if refined else ''}: {what}", prog,
                          changes=changes, payload=cfg)
                if full:
                    arm.candidate = await session.consider(prog, arm.label, changes, early_stop=False)
                    arm.rows, arm.scores = list(range(n_val)), list(arm.candidate.scores)
                else:
                    positives = sum(1 for a in trials if race.delta(a) > 0)
                    reserve = min(self.confirm_top, positives) * n_val
                    if positives and not session.can_afford(prog, m + reserve):
                        session.report.add_stopped(f"trials stopped after {len(trials)} of {self.num_trials}: the "
                                                   "budget left is kept for confirming the best on the full "
                                                   "validation set")
                        break
                    await race.score(arm, session.rng.sample(range(n_val), m))
                    arm.candidate = record(session, arm.label, changes, arm.scores, arm.calls, arm.tokens,
                                           f"minibatch: {race.describe(arm)}", rows=arm.rows, unparsed=arm.unparsed)
                trials.append(arm)
                est = inc_mean + race.delta(arm)  # the trial's estimated validation score
                for ni, choice in enumerate(cfg):
                    for d, c in enumerate(choice):
                        stats.setdefault((ni, d, c), []).append(est)
            if full or not trials:
                return
            ranked = sorted(trials, key=race.key)
            pool = [a for a in ranked[:max(self.race_top, self.confirm_top)] if race.delta(a) > 0]
            in_pool = {a.idx for a in pool}
            top = max(self.race_top, self.confirm_top)
            for rank, a in enumerate(ranked, 1):
                if a.idx not in in_pool:
                    a.alive = False
                    why = ("not better than the program so far on the same rows" if race.delta(a) <= 0
                           else f"only the best {top} went on to the race")
                    a.reason = f"minibatch: {race.describe(a)}; ranked {rank} of {len(ranked)}: {why}"
                    assert a.candidate is not None
                    a.candidate.reason, a.candidate.status = a.reason, "dropped"
            if not pool:
                session.report.notes.append("no trial beat the program so far on its minibatch: nothing to confirm")
                return
            perm = list(range(n_val))
            session.rng.shuffle(perm)
            finalists, _ = await successive_halving(race, pool, perm, 2 * m, self.confirm_top, what="joint race: ")
            for a in pool:
                if a.reason and a.candidate is not None:
                    a.candidate.reason = a.reason
            await confirm(race, finalists, lambda a: f"trial {a.idx} on the full valset: "
                                                     f"{self._describe(opts, a.payload)[0]}")
        except BudgetStop:  # the rows scored so far stay in the report, the live ones as "stopped"
            settle(trials, stopped=True)
            raise
        settle(trials, stopped=False)


__all__ = ["JointSearch"]
