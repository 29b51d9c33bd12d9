"""Reflect: reflective instruction evolution (GEPA-style) under the compile's hard budget.

The idea follows Agrawal et al. 2025 ("GEPA: Reflective Prompt Evolution Can Outperform
Reinforcement Learning"): a model reads what one step of the program did on examples that went
wrong -- with the metric's *textual feedback* (metrics may return ``(score, feedback)``) -- and
rewrites that step's instruction. Candidates are kept in a pool, and parents are drawn from the
Pareto front over validation examples, so a candidate that is best on a few examples survives
even when its mean is not the highest.

One iteration:

1. pick a parent from the Pareto front (the pool members that are best on at least one
   validation example, after dropping those another front member covers everywhere), drawn with
   probability proportional to the number of examples it is best on (seeded);
2. run the parent on a minibatch of training rows (epochs of a seeded shuffle); a minibatch where
   every row reaches ``perfect_score`` is skipped;
3. pick the node to reflect on -- *credit assignment from the traces* (``select="blame"``, the
   default; :func:`blame`): each row that fell short points at the nodes its trace accuses (a
   failed run whose error names a node; a node whose outputs came back empty; feedback per step --
   the metric returned ``{node: text}`` -- for the steps it names; else feedback that names a step
   whose output feeds a later tuned step, by its node name or an output field -- the last step is
   where every step's mistakes show, so naming it accuses nobody), one vote a
   row, shared among the nodes it accuses; the node with the most votes is taken, ties and rows
   that accuse nobody going to the parent's next node in round robin (``select="round_robin"``:
   always that) -- and collect, for the rows that fell short, the node's inputs and outputs, the
   program's outputs, the score and the metric's feedback;
4. ask the reflection model (``reflection_lm=``, a name in ``RunContext.lms``; default the task
   model) for a new instruction for the node given the current one and those examples; clean it;
5. score the child (the parent with the node's instruction replaced) on the same minibatch; if it
   beats the parent there, score it on the validation set and add it to the pool.

With ``merge=True`` (the default), after a child joins the pool, two front members whose changes
since their latest common ancestor touch disjoint nodes are combined (each node's module from the
member that changed it), scored on the validation set and kept unless a pool member is at least
as good on every validation example.

Everything runs through the :class:`CompileSession`: evaluations and reflection calls are
budgeted, memoised and checkpointed, so a resumed compile replays them without model calls and
ends with the same program. When the budget runs out the loop stops (``report.stopped`` says
where) and the best pool member so far is judged. The final choice ranks the pool by its paired
validation gain over the program as given, shrunk toward 0 for the number of candidates looked at
(:func:`auto.shrink`), and hands the top one to ``session.consider`` (paired-bootstrap acceptance),
so the report carries the evidence. Every proposal is a report row: its text, parent, node,
minibatch scores and why it was kept or dropped.

Every module with instructions is tuned, nested ones by path (Refine's generator and judge, a
Map's sub-program, a BestOfN's module): the reflection sees the nested module's own calls.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DefinitionError
from ..lm.values import format_value
from ..pipeline.program import Program
from .base import Optimizer
from .evaluator import unparsed_rows
from .instructions import (
    _memo_generate,
    _norm,
    _proposer_program,
    check_proposer,
    clean_instruction,
    instruction_nodes,
    short,
)
from .race import record
from .report import Candidate, Report
from .selection import paired_stats, shrink
from .session import BudgetStop, CompileSession, static_calls_per_example

#: What the reflection model is told (its input holds the step, its instruction and the examples).
REFLECT_INSTRUCTIONS = (
    "You improve the instruction given to one step of a language-model program. You are shown the "
    "step's current instruction and examples where the program's result fell short: the step's "
    "inputs and outputs, the program's final outputs, the score and feedback on the result. Work out "
    "what the step did wrong and what the feedback asks for, then write a new instruction for the "
    "step that fixes it and keeps what already works. Reply with the new instruction only: plain "
    "sentences addressed to the model that runs the step.")


# --------------------------------------------------------------------------- Pareto front

def pareto_front(matrix: Sequence[Sequence[float]], *, tol: float = 1e-12) -> dict[int, int]:
    """The Pareto front of a pool scored on the same examples: ``{candidate: examples it wins}``.

    ``matrix[c][e]`` is candidate ``c``'s score on example ``e``. A candidate *wins* an example
    when no candidate scores higher there (ties: all of them win). Candidates that win nothing are
    out; then, from the lowest mean up (later candidates first among equal means), a candidate is
    dropped while every example it wins is also won by another remaining candidate -- it adds no
    example of its own. The counts are the wins among the remaining candidates (they weight the
    parent draw)."""
    if not matrix:
        return {}
    n_ex = len(matrix[0])
    if any(len(row) != n_ex for row in matrix):
        raise ValueError("every candidate needs a score on every example")
    winners: list[set[int]] = []
    for e in range(n_ex):
        top = max(row[e] for row in matrix)
        winners.append({c for c, row in enumerate(matrix) if row[e] >= top - tol})
    alive = set().union(*winners) if winners else set(range(len(matrix)))
    if not winners:  # no examples: every candidate is as good as any
        return {c: 0 for c in sorted(alive)}
    means = {c: sum(matrix[c]) / n_ex for c in alive}
    changed = True
    while changed:
        changed = False
        for c in sorted(alive, key=lambda c: (means[c], -c)):
            if len(alive) > 1 and all(len((w & alive) - {c}) > 0 for w in winners if c in w):
                alive.discard(c)
                changed = True
                break
    return {c: sum(1 for w in winners if c in w) for c in sorted(alive)}


def weakly_dominated(scores: Sequence[float], others: Sequence[Sequence[float]], *, tol: float = 1e-12) -> int | None:
    """Index of the first of ``others`` that scores at least ``scores`` on every example, else None."""
    for k, row in enumerate(others):
        if all(o >= s - tol for o, s in zip(row, scores)):
            return k
    return None


# --------------------------------------------------------------------------- the pool

@dataclass(eq=False)
class Member:
    """One pool candidate: its program, validation scores and lineage."""

    idx: int
    program: Program
    scores: list[float]
    parents: tuple[int, ...] = ()
    ancestors: frozenset[int] = frozenset()   # itself included
    next_node: int = 0                         # round-robin pointer into the tunable nodes
    candidate: Candidate | None = None         # its report row
    origin: str = ""

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0


def changed_nodes(program: Program, ancestor: Program, nodes: Sequence[str]) -> set[str]:
    return {n for n in nodes if program.module(n) != ancestor.module(n)}


def merge_plan(pool: Sequence[Member], front: Mapping[int, int], nodes: Sequence[str],
               tried: set[tuple[int, int]]) -> tuple[int, int, int, Program] | None:
    """Two front members whose changes since their latest common ancestor touch disjoint nodes
    (both changed something, neither descends from the other), combined: ``(i, j, ancestor,
    program)``; the pair with the most front wins first (then the lowest ids). None if none."""
    hashes = {m.program.content_hash() for m in pool}
    ids = sorted(front)
    pairs = sorted(((i, j) for k, i in enumerate(ids) for j in ids[k + 1:]),
                   key=lambda p: (-(front[p[0]] + front[p[1]]), p))
    for i, j in pairs:
        if (i, j) in tried:
            continue
        a, b = pool[i], pool[j]
        if i in b.ancestors or j in a.ancestors:
            continue
        common = a.ancestors & b.ancestors
        if not common:
            continue
        anc = pool[max(common)]
        ca = changed_nodes(a.program, anc.program, nodes)
        cb = changed_nodes(b.program, anc.program, nodes)
        if not ca or not cb or ca & cb:
            continue
        merged = a.program.replace_modules({n: b.program.module(n) for n in sorted(cb)})
        if merged.content_hash() in hashes:
            tried.add((i, j))
            continue
        return i, j, anc.idx, merged
    return None


class _Minibatches:
    """Minibatches of training rows: epochs of a seeded shuffle, each row once per epoch."""

    def __init__(self, n: int, size: int, rng: random.Random) -> None:
        self.n, self.size, self.rng = n, min(size, n), rng
        self.order: list[int] = []

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.size:
            if not self.order:
                self.order = list(range(self.n))
                self.rng.shuffle(self.order)
            i = self.order.pop()
            if i not in out:
                out.append(i)
        return sorted(out)  # the same rows in the same order: a repeated batch is a memo hit


# --------------------------------------------------------------------------- reflection input

def _value(v: Any, limit: int) -> str:
    text = format_value(v)
    return text if len(text) <= limit else text[:limit] + " ..."


def _block(values: Mapping[str, Any] | None, limit: int) -> str:
    if not values:
        return "  (none)"
    return "\n".join(f"  {k}: {_value(v, limit)}" for k, v in values.items())


def reflection_input(program: Program, node: str, rows: Sequence[Mapping[str, Any]],
                     examples: Sequence[Mapping[str, Any]], *, max_value_chars: int = 400,
                     max_calls_shown: int = 2) -> str:
    """What the reflection model reads: the node, its current instruction and the examples (with
    scores and the metric's feedback) -- ``examples`` are memo entries from ``session.run``. A
    nested module (``refine.generator``) shows its own calls' inputs and outputs, the first
    ``max_calls_shown`` of a run."""
    module = program.module(node)
    sig = module.signature
    parts = [f"Step: {node} ({sig.shorthand()})",
             f"Current instruction:\n{module.instructions}",  # type: ignore[attr-defined]
             f"Examples where the result fell short ({len(examples)}):"]
    for k, (row, ex) in enumerate(zip(rows, examples), 1):
        lines = [f"### Example {k}"]
        io = (ex.get("nodes") or {}).get(node)
        calls = (ex.get("params_io") or {}).get(node) or []  # a nested module: one record per call
        if io is not None:
            lines += ["Step inputs:", _block(io.get("inputs"), max_value_chars),
                      "Step outputs:", _block(io.get("outputs"), max_value_chars)]
        elif calls:
            for j, rec in enumerate(calls[:max_calls_shown], 1):
                tag = f" (call {j} of {len(calls)})" if len(calls) > 1 else ""
                lines += [f"Step inputs{tag}:", _block(rec.get("inputs"), max_value_chars),
                          f"Step outputs{tag}:", _block(rec.get("outputs"), max_value_chars)]
        else:
            lines += ["Program inputs:", _block({f: row[f] for f in program.input_specs if f in row},
                                                max_value_chars)]
        if ex.get("ok"):
            if io is None or io.get("outputs") != ex.get("outputs"):
                lines += ["Program outputs:", _block(ex.get("outputs"), max_value_chars)]
        else:
            lines.append(f"The run failed: {_value(ex.get('error', ''), max_value_chars)}")
        lines.append(f"Score: {ex.get('score', 0.0):g}")
        fb = ex.get("feedback")
        if fb:
            lines.append(f"Feedback: {_value(fb, 2 * max_value_chars)}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _clean(text: str | None, max_chars: int) -> str | None:
    t = clean_instruction(text, max_chars=max_chars)
    if t is not None and _norm(t) in _norm(REFLECT_INSTRUCTIONS):
        return None  # an echo of the reflection prompt
    return t


def reflect_nodes(program: Program, nodes: Sequence[str] | None) -> list[str]:
    """The modules Reflect rewrites: ``nodes`` (checked), else every module with tunable
    instructions, nested ones by path (``refine.generator``, ``refine.judge``), in schedule order."""
    if nodes is not None:
        return instruction_nodes(program, nodes)
    return [path.rsplit(".", 1)[0] for path, prm in program.named_parameters() if prm.kind == "instructions"]


# --------------------------------------------------------------------------- credit assignment

def _mentions(text: str, name: str) -> bool:
    """Whether ``text`` names ``name`` as a word (``search_query`` also as "search query"); names
    under 3 characters are never taken as mentioned (a node called ``a`` is not the article)."""
    if len(name) < 3:
        return False
    forms = {name.lower(), name.lower().replace("_", " ")}
    return any(re.search(rf"(?<![\w]){re.escape(f)}(?![\w])", text.lower()) for f in forms)


#: a line of feedback per step (``metric`` returned ``{node: text}``; see ``evaluation.metrics.feedback_text``)
_TAG = re.compile(r"^\[([\w.]+)\] ", re.MULTILINE)


def _downstream(program: Program, node: str) -> set[str]:
    seen: set[str] = set()
    todo = list(program.dependents.get(node, ()))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(program.dependents.get(n, ()))
    return seen


def blame(program: Program, nodes: Sequence[str], examples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Credit assignment from the traces of rows that fell short (memo entries of ``session.run``):
    votes per node of ``nodes`` (nested paths count for their top-level node). A row's vote is
    shared among the nodes it accuses: a failed run's error naming a node; a node whose outputs are
    all empty; feedback per step (the metric returned ``{node: text}``, read as ``[node] text``
    lines) accusing the steps it names, any of them; otherwise feedback naming a node whose output
    reaches a later node of ``nodes``, by its name or one of its output fields (the last tuned step
    is where every mistake shows: naming it accuses nobody). Rows that accuse nobody give no vote."""
    top = {n: n.split(".", 1)[0] for n in nodes}
    tops = set(top.values())
    upstream = {t for t in tops if _downstream(program, t) & tops}
    votes = {n: 0.0 for n in nodes}
    for ex in examples:
        accused: set[str] = set()
        if not ex.get("ok", True):
            accused |= {t for t in tops if _mentions(str(ex.get("error", "")), t)}
        io = ex.get("nodes") or {}
        for t in tops:
            outs = (io.get(t) or {}).get("outputs")
            if outs and all(v in (None, "", [], {}) for v in outs.values()):
                accused.add(t)
        fb = str(ex.get("feedback") or "")
        tagged = {m for m in _TAG.findall(fb) if m in top or m in tops}  # feedback per step: [node] text
        if fb and not tagged:
            for t in upstream:
                fields = ((io.get(t) or {}).get("outputs") or {}).keys()
                if _mentions(fb, t) or any(_mentions(fb, f) for f in fields):
                    accused.add(t)
        paths = [n for n in nodes if top[n] in accused or n in tagged or top[n] in tagged]
        for n in paths:
            votes[n] += 1.0 / len(paths)
    return votes


# --------------------------------------------------------------------------- the optimizer

class Reflect(Optimizer):
    """Reflective instruction evolution with a Pareto pool and merges (see the module docstring)."""

    name = "reflect"

    def __init__(self, *, reflection_lm: str | None = None, max_iterations: int = 12, minibatch_size: int = 4,
                 merge: bool = True, max_merges: int = 4, nodes: Sequence[str] | None = None,
                 perfect_score: float = 1.0, max_examples: int = 4, temperature: float = 0.7,
                 max_instruction_chars: int = 1000, select: str = "blame", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if select not in ("blame", "round_robin"):
            raise DefinitionError(f"select must be 'blame' or 'round_robin', got {select!r}",
                                  fix="'blame' reflects on the node the failing rows' traces point at; "
                                      "'round_robin' on each node in turn.")
        if max_iterations < 1 or minibatch_size < 1 or max_examples < 1 or max_merges < 0:
            raise DefinitionError("max_iterations, minibatch_size and max_examples must be >= 1, max_merges >= 0",
                                  fix="e.g. Reflect(max_iterations=12, minibatch_size=4).")
        self.reflection_lm = reflection_lm
        self.max_iterations = max_iterations
        self.minibatch_size = minibatch_size
        self.merge = merge
        self.max_merges = max_merges if merge else 0
        self.nodes = list(nodes) if nodes is not None else None
        self.perfect_score = float(perfect_score)
        self.max_examples = max_examples
        self.temperature = float(temperature)
        self.max_instruction_chars = max_instruction_chars
        self.select = select

    def config(self) -> dict[str, Any]:
        return {**super().config(), "reflection_lm": self.reflection_lm, "max_iterations": self.max_iterations,
                "minibatch_size": self.minibatch_size, "merge": self.merge, "max_merges": self.max_merges,
                "nodes": self.nodes, "perfect_score": self.perfect_score, "max_examples": self.max_examples,
                "temperature": self.temperature, "max_instruction_chars": self.max_instruction_chars,
                "select": self.select}

    def estimate(self, program: Program, n_train: int, n_val: int) -> dict[str, int]:
        """Upper bound per phase: every iteration reflects once, scores parent and child on a
        minibatch and the child on the validation set; every merge scores on the validation set."""
        reflect_nodes(program, self.nodes)
        per = static_calls_per_example(program)
        m = min(self.minibatch_size, n_train)
        out = {"reflections": self.max_iterations, "minibatches": self.max_iterations * 2 * m * per,
               "validation": self.max_iterations * n_val * per}
        if self.max_merges:
            out["merges"] = min(self.max_merges, self.max_iterations) * n_val * per
        return out

    async def aoptimize(self, program: Program, *args: Any, **kwargs: Any) -> tuple[Program, Report]:
        if isinstance(program, Program):  # fail before any model call
            reflect_nodes(program, self.nodes)
            check_proposer(kwargs.get("ctx"), self.reflection_lm)
        return await super().aoptimize(program, *args, **kwargs)

    async def search(self, session: CompileSession) -> None:
        report = session.report
        nodes = reflect_nodes(session.incumbent, self.nodes)
        if not nodes:
            report.notes.append("no node has tunable instructions: nothing to reflect on")
            return
        if self.reflection_lm is None:
            report.notes.append("reflections were written by the task model (no reflection_lm=): a small model "
                                "writes poor reflections -- register a capable one, e.g. RunContext(lms="
                                "{'reflector': model}) and Reflect(reflection_lm='reflector')")
        base_entry = await session.run(session.incumbent, session.valset)  # the baseline's memo entry
        base = Member(0, session.incumbent, list(base_entry["scores"]), ancestors=frozenset({0}),
                      candidate=report.baseline, origin="the program as given")
        pool = [base]
        rng = random.Random(f"reflect:{session.seed}")
        batches = _Minibatches(len(session.trainset), self.minibatch_size, rng)
        state: dict[str, Any] = {"merges": 0, "tried": set(), "iteration": 0}
        try:
            for it in range(1, self.max_iterations + 1):
                top = next((m for m in pool if all(s >= self.perfect_score for s in m.scores)), None)
                if top is not None:
                    report.notes.append(f"pool #{top.idx} scores {self.perfect_score:g} on every validation row: "
                                        f"stopped after {it - 1} of {self.max_iterations} iterations")
                    break
                state["iteration"] = it
                added = await self._iterate(session, pool, nodes, it, rng, batches)
                if added and state["merges"] < self.max_merges:
                    await self._try_merge(session, pool, nodes, state)
        except BudgetStop as e:
            report.stopped = (f"reflection stopped in iteration {state['iteration']} of {self.max_iterations}: {e}; "
                              f"the best of the {len(pool)} pool candidates so far is judged")
        self._describe_pool(session, pool)
        await self._choose(session, pool, nodes)

    # ---- one iteration
    async def _iterate(self, session: CompileSession, pool: list[Member], nodes: Sequence[str], it: int,
                       rng: random.Random, batches: _Minibatches) -> bool:
        """Reflect once; True when a child joined the pool."""
        front = pareto_front([m.scores for m in pool])
        ids = list(front)
        weights = [max(front[i], 1e-9) for i in ids]
        parent = pool[rng.choices(ids, weights=weights)[0]]
        turn = parent.next_node % len(nodes)  # round robin: this node, unless the traces point elsewhere
        parent.next_node += 1
        idx = batches.next()
        rows = [session.trainset[i] for i in idx]
        session.reporter.phase(f"reflection {it} of {self.max_iterations}: pool #{parent.idx} "
                               f"(pool of {len(pool)})")
        t0 = session.meter.snapshot()
        p_entry = await session.run(parent.program, rows)
        short_of = [(r, ex) for r, ex in zip(rows, p_entry["examples"]) if ex["score"] < self.perfect_score]
        node, why_node = nodes[turn], "round robin"
        if self.select == "blame" and short_of and len(nodes) > 1:
            votes = blame(parent.program, nodes, [ex for _, ex in short_of])
            rr = {n: (k - turn) % len(nodes) for k, n in enumerate(nodes)}  # ties: the round robin's order
            pick = min(nodes, key=lambda n: (-votes[n], rr[n]))
            if votes[pick] > 0:
                node = pick
                why_node = (f"chosen from the traces: {votes[pick]:g} of the {len(short_of)} rows that fell "
                            f"short point at it" + "".join(f", {votes[n]:g} at {n}" for n in nodes
                                                             if n != pick and votes[n] > 0))
        where = f"iteration {it}: {node} of pool #{parent.idx}"
        if not short_of:
            session.report.notes.append(f"{where}: every row of its minibatch ({len(rows)} training rows) scored "
                                        f"{self.perfect_score:g}; nothing to reflect on")
            return False
        shown = short_of[:self.max_examples]
        text_in = reflection_input(parent.program, node, [r for r, _ in shown], [ex for _, ex in shown])
        prog = _proposer_program("examples -> instruction", REFLECT_INSTRUCTIONS, self.reflection_lm,
                                 self.temperature)
        raw = (await _memo_generate(session, prog, [({"examples": text_in}, it)]))[0]
        proposal = _clean(raw, self.max_instruction_chars)
        module = parent.program.module(node)
        current = module.instructions  # type: ignore[attr-defined]
        p_scores = list(p_entry["scores"])
        p_mean = sum(p_scores) / len(p_scores)
        label = f"{where}: " + (repr(short(proposal)) if proposal else "no usable instruction")
        changes = {node: {"instructions": short(proposal, 120)}} if proposal else {}

        def row(scores: Sequence[float], status: str, reason: str, *, on_val: bool = False, unparsed: int = 0,
                **evidence: float) -> Candidate:
            now = session.meter.snapshot()
            c = record(session, label, changes, scores, now["calls"] - t0["calls"],
                       now["total_tokens"] - t0["total_tokens"], reason,
                       rows=range(len(session.valset)) if on_val else None, unparsed=unparsed)
            c.status = status
            c.evidence = {"minibatch_parent": p_mean, "minibatch_n": float(len(rows)), **evidence}
            if len(nodes) > 1:
                c.reason += f"; the step: {why_node}"
            return c

        if proposal is None or _norm(proposal) == _norm(current):
            why = "the reflection gave no usable instruction" if proposal is None else \
                "the reflection repeated the current instruction"
            row([], "dropped", f"{why} (reply: {short(str(raw or ''), 80)!r})")
            return False
        child = parent.program.with_module(node, module.replace(instructions=proposal))
        h = child.content_hash()
        same = next((m for m in pool if m.program.content_hash() == h), None)
        if same is not None:
            row([], "dropped", f"the same program as pool #{same.idx}")
            return False
        c_entry = await session.run(child, rows)
        c_scores = list(c_entry["scores"])
        c_mean = sum(c_scores) / len(c_scores)
        d, se = paired_stats(p_scores, c_scores)
        mb = (f"minibatch of {len(rows)} training rows: {c_mean:.3f} vs the parent's {p_mean:.3f} "
              f"({d:+.3f}, se {se:.3f})")
        if sum(c_scores) <= sum(p_scores):
            row(c_scores, "dropped", f"not better than its parent on the {mb}", minibatch_child=c_mean,
                unparsed=unparsed_rows(c_entry))
            return False
        try:
            v_entry = await session.run(child, session.valset)
        except BudgetStop:
            row(c_scores, "dropped", f"better than its parent on the {mb}, but the budget ran out before it "
                                     "could be scored on the validation set", minibatch_child=c_mean,
                unparsed=unparsed_rows(c_entry))
            raise
        m = Member(len(pool), child, list(v_entry["scores"]), parents=(parent.idx,),
                   ancestors=parent.ancestors | {len(pool)}, next_node=parent.next_node,
                   origin=f"{node} rewritten from pool #{parent.idx}")
        vd, _ = paired_stats(parent.scores, m.scores)
        m.candidate = row(m.scores, "pool", f"pool #{m.idx}: better than its parent on the {mb}; validation "
                                            f"{m.mean:.3f} ({vd:+.3f} vs pool #{parent.idx})",
                          on_val=True, minibatch_child=c_mean, unparsed=unparsed_rows(v_entry))
        pool.append(m)
        return True

    # ---- merge
    async def _try_merge(self, session: CompileSession, pool: list[Member], nodes: Sequence[str],
                         state: dict[str, Any]) -> Member | None:
        """Combine two complementary front members (see :func:`merge_plan`); kept unless a pool
        member is at least as good on every validation example."""
        front = pareto_front([m.scores for m in pool])
        plan = merge_plan(pool, front, nodes, state["tried"])
        if plan is None:
            return None
        i, j, anc, merged = plan
        session.reporter.phase(f"merging pool #{i} and #{j} on all {len(session.valset)} validation rows")
        state["tried"].add((i, j))
        state["merges"] += 1
        t0 = session.meter.snapshot()
        entry = await session.run(merged, session.valset)
        now = session.meter.snapshot()
        scores = list(entry["scores"])
        a, b = pool[i], pool[j]
        nodes_b = sorted(changed_nodes(b.program, pool[anc].program, nodes))
        nodes_a = sorted(changed_nodes(a.program, pool[anc].program, nodes))
        label = f"merge of pool #{i} ({', '.join(nodes_a)}) and #{j} ({', '.join(nodes_b)}) over #{anc}"
        changes = {n: {"instructions": short(merged.module(n).instructions, 120)}  # type: ignore[attr-defined]
                   for n in [*nodes_a, *nodes_b]}
        c = record(session, label, changes, scores, now["calls"] - t0["calls"],
                   now["total_tokens"] - t0["total_tokens"], "", rows=range(len(session.valset)),
                   unparsed=unparsed_rows(entry))
        mean = sum(scores) / len(scores)
        by = weakly_dominated(scores, [m.scores for m in pool])
        if by is not None:
            c.status = "dropped"
            c.reason = f"validation {mean:.3f}: pool #{by} is at least as good on every validation example"
            return None
        m = Member(len(pool), merged, scores, parents=(i, j), ancestors=a.ancestors | b.ancestors | {len(pool)},
                   next_node=max(a.next_node, b.next_node), candidate=c, origin=f"merge of #{i} and #{j}")
        c.status = "pool"
        c.reason = (f"pool #{m.idx}: validation {mean:.3f} (#{i} {a.mean:.3f}, #{j} {b.mean:.3f}); no pool "
                    "member is as good on every example")
        pool.append(m)
        return m

    # ---- the end
    def _describe_pool(self, session: CompileSession, pool: Sequence[Member]) -> None:
        front = pareto_front([m.scores for m in pool])
        n = len(session.valset)
        shown = ", ".join(f"#{i} ({front[i]} of {n})" for i in front)
        session.report.notes.append(f"pool of {len(pool)} (the program as given is #0); Pareto front over {n} "
                                    f"validation rows, with the rows each is best on: {shown}")
        for m in pool[1:]:
            if m.candidate is not None:
                m.candidate.reason += "; on the Pareto front" if m.idx in front else "; not on the final front"

    async def _choose(self, session: CompileSession, pool: Sequence[Member], nodes: Sequence[str]) -> None:
        report = session.report
        base = pool[0]
        others = list(pool[1:])
        if not others:
            report.notes.append("no reflection beat its parent on a minibatch: the program is unchanged")
            return
        stats = [paired_stats(base.scores, m.scores) for m in others]
        est = shrink([d for d, _ in stats], [se for _, se in stats])
        ranked = sorted(zip(others, est, stats), key=lambda t: (-t[1], -t[2][0], t[0].idx))
        best, e, (d, _se) = ranked[0]
        if d <= 0:
            report.notes.append(f"no pool candidate beat the program as given on the validation set (best: pool "
                                f"#{best.idx}, {d:+.3f}); the program is unchanged")
            return
        changes = {n: {"instructions": short(best.program.module(n).instructions, 120)}  # type: ignore[attr-defined]
                   for n in sorted(changed_nodes(best.program, base.program, nodes))}
        cand = await session.consider(best.program, f"pool #{best.idx} ({best.origin}): highest expected gain "
                                                    f"in a pool of {len(others)}", changes, early_stop=False)
        cand.evidence.update({"raw_gain": d, "shrunk_gain": e, "pool": float(len(others))})
        cand.reason += (f"; ranked first of {len(others)} by its validation gain shrunk for the number of "
                        f"candidates ({d:+.3f} -> {e:+.3f})")
        if cand.status != "accepted":
            report.notes.append(f"the best pool candidate (#{best.idx}, {d:+.3f} on validation) lacked the evidence "
                                "to replace the program")


__all__ = ["REFLECT_INSTRUCTIONS", "Reflect", "blame", "merge_plan", "pareto_front", "reflect_nodes",
           "reflection_input", "weakly_dominated"]
