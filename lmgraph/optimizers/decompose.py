"""Decompose: task decomposition as a graph rewrite, accepted only on validation evidence.

A node ``X: inputs -> outputs`` (Predict or ChainOfThought) is rewritten into three nodes::

    X__plan   Plan        inputs -> steps: list[str]                 (at most max_steps)
    X__steps  Map         over steps of the one-node sub-program
                          X__step: step, inputs -> step_answer       => step_answer: list[str]
    X         combine     inputs, steps, step_answers -> outputs     (X's kind, model and settings)

The combine node keeps the old node's name, so downstream bindings and program outputs stay
valid without being touched; the rewritten program's inputs and outputs (names and types) are
checked to be unchanged (:func:`lint_rewrite`). The names ``X__plan``/``X__steps`` are the
marker by which a decomposition is recognised again (:func:`find_decompositions`), and
:func:`collapse_node` turns it back into one node: the reverse pass.

:class:`Decompose` first tries to collapse the decompositions it finds (a collapse is accepted
when its mean validation score is not lower than the incumbent's by more than
``collapse_tolerance``, default 0: on a tie the smaller graph wins, because it costs fewer calls
for the same measured quality; the session's acceptance policy wrapped in
:class:`~.acceptance.FavourOnTies`, so an accepted collapse is scored on every validation row),
then tries to decompose each target node (accepted only when
``session.consider`` finds paired-bootstrap evidence that it is better). With ``max_demos > 0``
the new nodes -- plan, combine and the per-step solver inside the Map -- also get demos
bootstrapped from the decomposed program's own passing runs on training data, through the same
session (budgeted, memoised, checkpointed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import DefinitionError
from ..evaluation.metrics import Metric
from ..modules.map import Map
from ..modules.plan import PLAN_INSTRUCTIONS, Plan
from ..modules.predict import ChainOfThought, Predict
from ..pipeline.ir import INPUT, InputSpec, Node, Ref
from ..pipeline.program import Program
from ..signatures import FieldSpec, Signature, type_to_str
from .acceptance import FavourOnTies
from .base import Optimizer
from .fewshot import _dedupe, _demo_sig, with_demos
from .params import Demo
from .report import Candidate
from .session import BudgetStop, CompileSession, static_calls_per_example

__all__ = [
    "Decompose",
    "collapse_node",
    "decomposable_nodes",
    "decompose_node",
    "find_decompositions",
    "lint_rewrite",
]

PLAN_SUFFIX = "__plan"
STEPS_SUFFIX = "__steps"
STEP_SUFFIX = "__step"
#: node kinds a decomposition may replace (their module classes are rebuilt for the combine node)
DECOMPOSABLE = {"predict": Predict, "chain_of_thought": ChainOfThought}


def _note(steps: str, answers: str) -> str:
    return (f"The task was broken into sub-questions (`{steps}`), answered one by one (`{answers}`, in "
            "the same order); use them as working notes.")


def _with_note(text: str, note: str) -> str:
    return f"{text.rstrip()}\n\n{note}"


def _without_note(text: str, note: str) -> str:
    suffix = f"\n\n{note}"
    return text[: -len(suffix)] if text.endswith(suffix) else text


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _out_type(program: Program, ref: Ref) -> Any:
    if ref.node == INPUT:
        return program.input_specs[ref.field]
    spec = program.node_map[ref.node].module.signature.output(ref.field)
    return spec.annotation if spec is not None else None


def lint_rewrite(before: Program, after: Program) -> list[str]:
    """What a rewrite changed in the program's interface (input/output names and types); [] if nothing."""
    problems = []
    ins_a = [(s.name, type_to_str(s.annotation)) for s in before.inputs]
    ins_b = [(s.name, type_to_str(s.annotation)) for s in after.inputs]
    if ins_a != ins_b:
        problems.append(f"inputs changed: {ins_a} -> {ins_b}")
    outs_a = [(o, type_to_str(_out_type(before, r))) for o, r in before.outputs]
    outs_b = [(o, type_to_str(_out_type(after, r))) for o, r in after.outputs]
    if outs_a != outs_b:
        problems.append(f"outputs changed: {outs_a} -> {outs_b}")
    return problems


def _checked(before: Program, after: Program, what: str) -> Program:
    problems = lint_rewrite(before, after)
    if problems:  # a bug in the rewrite, never the user's doing
        raise DefinitionError(f"{what} changed the program's interface: {'; '.join(problems)}",
                              fix="this is a bug in the rewrite; please report it.")
    return after


# --------------------------------------------------------------------------- the rewrite and its reverse

def _decomposed_node(program: Program, node: str) -> tuple[str, str, dict[str, str]] | None:
    """(plan node, map node, {combine field: 'steps'|'answers'}) when ``node`` is a recognisable
    decomposition's combine node, else None."""
    plan, steps = node + PLAN_SUFFIX, node + STEPS_SUFFIX
    nm = program.node_map
    if node not in nm or plan not in nm or steps not in nm:
        return None
    if nm[node].kind not in DECOMPOSABLE or nm[plan].kind != "plan" or nm[steps].kind != "map":
        return None
    roles: dict[str, str] = {}
    for f, b in nm[node].refs():
        if b.node == plan:
            roles[f] = "steps"
        elif b.node == steps:
            roles[f] = "answers"
    if sorted(roles.values()) != ["answers", "steps"]:
        return None
    if not set(program.dependents[plan]) <= {steps, node} or set(program.dependents[steps]) != {node}:
        return None
    if any(r.node in (plan, steps) for _, r in program.outputs):
        return None
    return plan, steps, roles


def find_decompositions(program: Program) -> list[str]:
    """Combine nodes of the decompositions in ``program`` (topological order)."""
    return [n for n in program.order if _decomposed_node(program, n) is not None]


def decomposable_nodes(program: Program) -> list[str]:
    """Default targets: Predict/ChainOfThought nodes that program outputs read, not yet decomposed."""
    exported = {r.node for _, r in program.outputs}
    return [n for n in program.order if n in exported and _can_decompose(program, n) is None]


def _can_decompose(program: Program, node: str) -> str | None:
    """None when ``node`` can be decomposed, else why not."""
    kind = program.module(node).kind
    if kind not in DECOMPOSABLE:
        return f"it is a {kind} node; only {' and '.join(sorted(DECOMPOSABLE))} nodes are decomposed"
    if _decomposed_node(program, node) is not None:
        return "it is already decomposed"
    taken = [n for n in (node + PLAN_SUFFIX, node + STEPS_SUFFIX) if n in program.node_map]
    if taken:
        return f"the node name {taken[0]!r} the rewrite needs is taken"
    return None


def decompose_node(program: Program, node: str, *, max_steps: int = 3, concurrency: int = 4) -> Program:
    """Rewrite ``node`` into plan -> per-step solver (Map) -> combine; a new, validated program."""
    why = _can_decompose(program, node)
    if why is not None:
        raise DefinitionError(f"cannot decompose: {why}", node=node,
                              fix="choose a Predict/ChainOfThought node that is not decomposed yet.")
    old = program.node_map[node]
    m = old.module
    assert isinstance(m, Predict)
    sig = m.base_signature
    ins, outs = sig.inputs, sig.outputs
    taken = {f.name for f in (*ins, *outs)} | {"reasoning"}
    steps_f, step_f = _fresh("steps", taken), _fresh("step", taken)
    answer_f, answers_f = _fresh("step_answer", taken), _fresh("step_answers", taken)
    common: dict[str, Any] = {"format": m.format, "lm": m.lm, "temperature": m.temperature, "repair": m.repair}
    plan_name, map_name, step_name = node + PLAN_SUFFIX, node + STEPS_SUFFIX, node + STEP_SUFFIX

    plan = Plan(Signature(ins, [FieldSpec(steps_f, list[str], "sub-questions, one per line")]),
                max_steps=max_steps, instructions=f"{PLAN_INSTRUCTIONS}\n\nThe task: {m.instructions}", **common)
    solver = Predict(Signature([FieldSpec(step_f, str, "the sub-question to answer"), *ins],
                               [FieldSpec(answer_f, str, "a short answer to the sub-question")]),
                     instructions=("Answer only the sub-question, briefly, using the other fields."
                                   f"\n\nThe overall task: {m.instructions}"), **common)
    inner = Program(f"{node}_step", [InputSpec(step_f, str), *(InputSpec(f.name, f.annotation) for f in ins)],
                    [Node(step_name, solver, tuple((f, Ref(INPUT, f)) for f in (step_f, *(x.name for x in ins))))],
                    [(answer_f, Ref(step_name, answer_f))])
    fan = Map(inner, over=step_f, concurrency=concurrency)
    note = _note(steps_f, answers_f)
    combine_sig = Signature([*ins, FieldSpec(steps_f, list[str], "the sub-questions"),
                             FieldSpec(answers_f, list[str], "their answers, in order")],
                            outs, _with_note(sig.instructions, note))
    combine = type(m)(combine_sig, instructions=_with_note(m.instructions, note), max_tokens=m.max_tokens,
                      decode=m.decode, **common)

    bind = old.bindings
    new_nodes: list[Node] = []
    for n in program.nodes:
        if n.name != node:
            new_nodes.append(n)
            continue
        new_nodes += [Node(plan_name, plan, bind),
                      Node(map_name, fan, ((step_f, Ref(plan_name, steps_f)), *bind)),
                      Node(node, combine, (*bind, (steps_f, Ref(plan_name, steps_f)),
                                           (answers_f, Ref(map_name, answer_f))))]
    return _checked(program, program.rewrite(nodes=new_nodes), f"decomposing {node!r}")


def collapse_node(program: Program, node: str) -> Program:
    """The reverse rewrite: the decomposition whose combine node is ``node`` becomes one node again.

    The combine node's module keeps its kind, model and settings; the sub-question fields and the
    note about them leave its signature and instructions, and its demos lose those fields.
    """
    found = _decomposed_node(program, node)
    if found is None:
        raise DefinitionError("is not a recognisable decomposition", node=node,
                              fix=f"a decomposition has nodes {node}{PLAN_SUFFIX} (plan) and {node}{STEPS_SUFFIX} "
                                  f"(map) feeding {node}; see find_decompositions().")
    plan, steps, roles = found
    m = program.module(node)
    assert isinstance(m, Predict)
    steps_f = next(f for f, r in roles.items() if r == "steps")
    answers_f = next(f for f, r in roles.items() if r == "answers")
    note = _note(steps_f, answers_f)
    sig = m.base_signature
    keep = [f for f in sig.inputs if f.name not in roles]
    new_sig = Signature(keep, sig.outputs, _without_note(sig.instructions, note))
    demos = [{k: v for k, v in d.items() if k not in roles} for d in m.demos]
    module = type(m)(new_sig, instructions=_without_note(m.instructions, note), demos=demos, format=m.format,
                     lm=m.lm, temperature=m.temperature, max_tokens=m.max_tokens, repair=m.repair,
                     decode=m.decode)
    old = program.node_map[node]
    new_nodes = [Node(node, module, tuple((f, b) for f, b in old.bindings if f not in roles)) if n.name == node else n
                 for n in program.nodes if n.name not in (plan, steps)]
    return _checked(program, program.rewrite(nodes=new_nodes), f"collapsing {node!r}")


def _afford(session: CompileSession, program: Program, n_rows: int, what: str) -> None:
    """Refuse (BudgetStop) an evaluation the budget may not cover, naming the phase. The static
    estimate counts a decomposition's Map at its plan's ``max_steps`` items, so an evaluation the
    fan-out cannot finish is never started (its spend would be lost). Deterministic given the spend
    so far, so a resumed compile decides the same."""
    rem, per = session.remaining_calls(), static_calls_per_example(program)
    if rem is not None and n_rows * per > rem:
        raise BudgetStop(f"budget left ({rem} calls) cannot cover {what} ({n_rows} examples at up to "
                         f"{per} calls each)")


# --------------------------------------------------------------------------- demos for a decomposition

def _map_parts(program: Program, node: str) -> tuple[Map, str, str, str]:
    """(map module, inner solver node, step field, answer field) of ``node``'s decomposition."""
    mp = program.module(node + STEPS_SUFFIX)
    assert isinstance(mp, Map)
    inner = mp.program
    solver = inner.order[0]
    return mp, solver, mp.over[0], inner.outputs[0][0]


def with_decomposition_demos(program: Program, node: str, demos: Mapping[str, Sequence[Demo]]) -> Program:
    """Demos for a decomposition's nodes: keys ``X__plan``, ``X`` and ``X__step`` (the solver in the Map)."""
    top = {n: d for n, d in demos.items() if n in program.node_map}
    out = with_demos(program, top) if top else program
    step = demos.get(node + STEP_SUFFIX)
    if step:
        mp, solver, _, _ = _map_parts(out, node)
        inner = mp.program.with_module(solver, mp.program.module(solver).replace(demos=list(step)))
        out = out.with_module(node + STEPS_SUFFIX, mp.replace(program=inner))
    return out


async def bootstrap_decomposition(session: CompileSession, program: Program, node: str, want: int,
                                  threshold: float) -> dict[str, list[Demo]]:
    """Run the decomposed ``program`` on shuffled training rows and keep, from runs scoring >=
    ``threshold``, demos for the plan, the combine node and the per-step solver (one demo per
    (sub-question, answer) pair, read off the Map node's list input/output)."""
    plan, steps = node + PLAN_SUFFIX, node + STEPS_SUFFIX
    fan, solver, step_f, answer_f = _map_parts(program, node)
    solver_sig = _demo_sig(fan.program, solver)
    broadcast = [f.name for f in solver_sig.inputs if f.name != step_f]
    sigs = {plan: _demo_sig(program, plan), node: _demo_sig(program, node)}
    pool: dict[str, list[Demo]] = {plan: [], node: [], node + STEP_SUFFIX: []}
    rows = list(session.trainset)
    session.rng.shuffle(rows)
    chunk = max(4, 2 * want)
    for start in range(0, len(rows), chunk):
        if all(len(d) >= want for d in pool.values()):
            break
        _afford(session, program, len(rows[start:start + chunk]), "bootstrapping demos")
        entry = await session.run(program, rows[start:start + chunk], kind="bootstrap")
        for ex in entry["examples"]:
            if not ex["ok"] or ex["score"] < threshold:
                continue
            for n, sig in sigs.items():
                io = ex["nodes"].get(n)
                if io is None or io["outputs"] is None:
                    continue
                vals = {**io["inputs"], **io["outputs"]}
                if all(f.name in vals for f in (*sig.inputs, *sig.outputs)):
                    pool[n].append({f.name: vals[f.name] for f in (*sig.inputs, *sig.outputs)})
            io = ex["nodes"].get(steps)
            if io is None or not io["outputs"]:
                continue
            items, answers = io["inputs"].get(step_f) or [], io["outputs"].get(answer_f) or []
            if len(items) != len(answers) or not all(b in io["inputs"] for b in broadcast):
                continue  # items were skipped: the pairs cannot be matched up
            for s, a in zip(items, answers):
                pool[node + STEP_SUFFIX].append({step_f: s, **{b: io["inputs"][b] for b in broadcast}, answer_f: a})
        pool = {n: _dedupe(d) for n, d in pool.items()}
    return {n: d[:want] for n, d in pool.items() if d}


# --------------------------------------------------------------------------- the optimizer

class Decompose(Optimizer):
    """Try decomposing nodes into plan -> per-step answers -> combine (and collapsing existing ones).

    ``nodes`` -- which nodes to consider (default: every Predict/ChainOfThought node a program
    output reads, plus every decomposition found, for collapsing); ``max_steps`` -- the plan's
    bound on sub-questions; ``max_demos`` -- bootstrap up to this many demos per new node (0: off);
    ``collapse`` -- try the reverse rewrite on decompositions found in the program;
    ``collapse_tolerance`` -- how much mean validation score a collapse may lose and still be
    accepted (0: only a tie or better; ties favour the smaller graph).
    """

    name = "decompose"

    def __init__(self, nodes: Sequence[str] | None = None, *, max_steps: int = 3, max_demos: int = 0,
                 threshold: float = 1.0, collapse: bool = True, collapse_tolerance: float = 0.0,
                 map_concurrency: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise DefinitionError(f"max_steps must be a positive integer, got {max_steps!r}",
                                  fix="pass max_steps=3 (or another positive integer).")
        if max_demos < 0 or not 0 <= collapse_tolerance <= 1:
            raise DefinitionError("max_demos must be >= 0 and collapse_tolerance in [0, 1]",
                                  fix="pass max_demos=0 to skip demos; collapse_tolerance=0 accepts ties only.")
        self.nodes = list(nodes) if nodes is not None else None
        self.max_steps = max_steps
        self.max_demos = max_demos
        self.threshold = threshold
        self.collapse = collapse
        self.collapse_tolerance = collapse_tolerance
        self.map_concurrency = map_concurrency

    def config(self) -> dict[str, Any]:
        return {**super().config(), "nodes": self.nodes, "max_steps": self.max_steps, "max_demos": self.max_demos,
                "threshold": self.threshold, "collapse": self.collapse,
                "collapse_tolerance": self.collapse_tolerance}

    def targets(self, program: Program) -> tuple[list[str], list[str]]:
        """(decompositions to try collapsing, nodes to try decomposing); raises on a bad ``nodes=``."""
        found = find_decompositions(program) if self.collapse else []
        if self.nodes is None:
            return found, decomposable_nodes(program)
        collapse, targets = [], []
        for name in self.nodes:
            program.module(name)  # raises naming the known nodes
            if _decomposed_node(program, name) is not None:
                if self.collapse:
                    collapse.append(name)
                continue
            why = _can_decompose(program, name)
            if why is not None:
                raise DefinitionError(f"cannot decompose: {why}", node=name, fix="leave it out of nodes=.")
            targets.append(name)
        return collapse, targets

    async def aoptimize(self, program: Program, trainset: Sequence[Mapping[str, Any]], metric: Metric,
                        **kwargs: Any) -> tuple[Program, Any]:
        if isinstance(program, Program):
            self.targets(program)  # a bad nodes= fails before any model call
        return await super().aoptimize(program, trainset, metric, **kwargs)

    def estimate(self, program: Program, n_train: int, n_val: int) -> dict[str, int]:
        collapse, targets = self.targets(program)
        # every candidate is at most the program with every target decomposed (the static count
        # includes each decomposition's Map at its plan's max_steps items)
        full = static_calls_per_example(program) + len(targets) * (1 + self.max_steps)
        out: dict[str, int] = {}
        if collapse:
            out["collapse"] = len(collapse) * n_val * full
        if targets:
            out["decompose"] = len(targets) * n_val * full
            if self.max_demos:
                out["bootstrap"] = len(targets) * n_train * full
                out["demos"] = len(targets) * n_val * full
        return out

    async def search(self, session: CompileSession) -> None:
        collapse, targets = self.targets(session.incumbent)
        for node in collapse:
            await self._try_collapse(session, node)
        for node in targets:
            await self._try_decompose(session, node)

    async def _try_collapse(self, session: CompileSession, node: str) -> Candidate:
        base = session.incumbent
        prog = collapse_node(base, node)
        removed = len(base.nodes) - len(prog.nodes)
        _afford(session, prog, len(session.valset), f"evaluating the collapse of {node!r}")
        # not worse on validation and smaller (fewer calls per example): ties favour the smaller graph.
        # A stage stops the collapse only when it is already beyond the tolerance, so an accepted
        # collapse is scored on every validation row.
        policy = FavourOnTies(session.acceptance, self.collapse_tolerance,
                              why=f"with {removed} fewer nodes: ties favour the smaller graph")
        return await session.consider(prog, f"collapse {node}", {node: {"collapse": f"-{removed} nodes"}},
                                      policy=policy)

    async def _try_decompose(self, session: CompileSession, node: str) -> None:
        base = session.incumbent
        prog = decompose_node(base, node, max_steps=self.max_steps, concurrency=self.map_concurrency)
        what = f"plan (<= {self.max_steps} steps) -> solve each -> combine"
        _afford(session, prog, len(session.valset), f"evaluating the decomposition of {node!r}")
        await session.consider(prog, f"decompose {node}", {node: {"decompose": what}})
        if not self.max_demos:
            return
        demos = await bootstrap_decomposition(session, prog, node, self.max_demos, self.threshold)
        if not demos:
            session.report.notes.append(f"decompose {node}: no training run passed the metric; no demos")
            return
        with_d = with_decomposition_demos(prog, node, demos)
        _afford(session, with_d, len(session.valset), f"evaluating the decomposition of {node!r} with demos")
        await session.consider(with_d, f"decompose {node} + bootstrapped demos",
                               {node: {"decompose": what, **{f"demos[{n}]": len(d) for n, d in demos.items()}}})

