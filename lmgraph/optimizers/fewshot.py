"""Few-shot optimizers: labelled demos, bootstrapped demos (per node), random search over demo sets.

Bootstrapping runs the program (or a teacher program) on training examples through the
compile session (so it is budgeted, cached, memoised and checkpointed), keeps the runs whose
final output passes the metric, and turns each node's inputs/outputs in those runs into demos
for that node -- for every demo-taking node of a multi-node pipeline, and (``nested=True``, what
these optimizers use) for every nested module that takes demos: a Refine's generator, a Map's
sub-program nodes, a CallTool's choose call (``agent.step``), found by walking the parameter tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

from .._canonical import canonical_json
from ..errors import DefinitionError
from ..pipeline.executor import execute_batch
from ..pipeline.ir import INPUT, Ref
from ..pipeline.program import Program
from ..signatures import Signature
from .base import Optimizer
from .params import Demo, demo_param, demo_targets, example_demos, nested_label_sources, rows_to_demos
from .session import CompileSession, static_calls_per_example


def demo_nodes(program: Program, *, nested: bool = False) -> list[str]:
    """Modules that take demos (Predict, ChainOfThought, Plan, CallTool, ...), found in the
    parameter tree: top-level nodes by name; with ``nested``, nested modules too, by path
    (``"refine.generator"``, ``"answer_each.solve"``, ``"agent.step"``)."""
    targets = demo_targets(program)
    return targets if nested else [t for t in targets if "." not in t]


def _demo_sig(program: Program, node: str) -> Signature:
    """The signature a demo of ``node`` (a node name or a nested module's path) must satisfy."""
    sig = demo_param(program, node).signature
    assert sig is not None  # a demos parameter always carries the signature its demos fill
    return sig


def with_demos(program: Program, demos: Mapping[str, Sequence[Demo]]) -> Program:
    """``program`` with demos set per module path (node names or nested paths)."""
    return program.with_parameters({f"{n}.demos": list(d) for n, d in demos.items()})


def describe_demos(demos: Mapping[str, Sequence[Demo]]) -> dict[str, dict[str, Any]]:
    return {n: {"demos": len(d)} for n, d in demos.items()}


@overload
def _label_sources(program: Program, name: str, exported: Mapping[tuple[str, str], str],
                   computed: Literal[False]) -> Mapping[str, str] | None: ...
@overload
def _label_sources(program: Program, name: str, exported: Mapping[tuple[str, str], str],
                   computed: bool) -> Mapping[str, str | Ref] | None: ...
def _label_sources(program: Program, name: str, exported: Mapping[tuple[str, str], str],
                   computed: bool) -> Mapping[str, str | Ref] | None:
    """Where each demo field of node ``name`` comes from in a labelled row: a row key (an input
    bound to a pipeline input or to an upstream output a program output exports; an output a
    program output exports), or -- with ``computed`` -- the
    output of an upstream node that makes no model call (a retriever's passages), worked out per
    row. Optional demo fields (ChainOfThought's ``reasoning``) may have no source. None when a
    required field has none."""
    node = program.node_map[name]
    param = demo_param(program, name)
    sig, optional = param.signature, set(param.optional)
    assert sig is not None
    out: dict[str, str | Ref] = {}
    for f in sig.inputs:
        b = node.binding(f.name)
        if isinstance(b, Ref) and b.node == INPUT:
            out[f.name] = b.field
        elif isinstance(b, Ref) and computed and _model_free(program, b.node):
            out[f.name] = b
        elif isinstance(b, Ref) and (b.node, b.field) in exported:
            out[f.name] = exported[(b.node, b.field)]  # an upstream output the rows label
        elif f.name not in optional:
            return None
    outs = _output_keys(name, sig, optional, exported)
    return None if outs is None else {**out, **outs}


def _output_keys(name: str, sig: Signature, optional: set[str],
                 exported: Mapping[tuple[str, str], str]) -> dict[str, str] | None:
    """The row key of each output of node ``name`` (the program outputs that export it); None when
    a required output is not exported."""
    out: dict[str, str] = {}
    for f in sig.outputs:
        if (name, f.name) in exported:
            out[f.name] = exported[(name, f.name)]
        elif f.name not in optional:
            return None
    return out


def _with_upstream(program: Program, names: Sequence[str]) -> set[str]:
    """``names`` and every node upstream of them."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(program.deps[n])
    return seen


def _model_free(program: Program, name: str) -> bool:
    """True when node ``name`` and everything upstream of it make no model call (searches, constants)."""
    return all(program.module(n).estimated_calls() == 0 for n in _with_upstream(program, [name]))


def _exported(program: Program, label_map: Mapping[str, str]) -> dict[tuple[str, str], str]:
    return {(r.node, r.field): label_map.get(o, o) for o, r in program.outputs}


def labeled_demos(program: Program, rows: Sequence[Mapping[str, Any]], k: int,
                  label_map: Mapping[str, str] | None = None, *, nested: bool = False) -> dict[str, list[Demo]]:
    """Demos straight from labelled rows, for nodes whose every (required) demo field maps to a row key.

    A node input maps when it is bound to a pipeline input; a node output maps when a program
    output exports it (the row key is the output name, or ``label_map[output name]``). Optional
    demo fields (a ChainOfThought's ``reasoning``) are left out: labelled data has none.
    ``nested``: also nested modules whose fields map through their parents (a Refine's
    generator; a Map's sub-node, one demo per list item), keyed by path.
    """
    exported = _exported(program, dict(label_map or {}))
    out: dict[str, list[Demo]] = _nested_labeled(program, rows, k, exported) if nested else {}
    for name in demo_nodes(program):
        keys = _label_sources(program, name, exported, computed=False)
        if not keys:
            continue
        demos = [{f: row[key] for f, key in keys.items()} for row in rows
                 if all(key in row for key in keys.values())]
        if demos:
            out[name] = demos[:k]
    return out


def _nested_labeled(program: Program, rows: Sequence[Mapping[str, Any]], k: int,
                    exported: Mapping[tuple[str, str], str]) -> dict[str, list[Demo]]:
    """Labelled demos for nested modules whose fields map to row keys (no computed inputs)."""
    out: dict[str, list[Demo]] = {}
    for target in demo_nodes(program, nested=True):
        if "." not in target:
            continue
        sources = nested_label_sources(program, target, exported)
        demos = rows_to_demos(rows, sources, k) if sources else []
        if demos:
            out[target] = demos
    return out


def labeled_demos_traced(program: Program, items: Sequence[tuple[int, Mapping[str, Any], Mapping[str, Any]]],
                         label_map: Mapping[str, str] | None = None,
                         skip: Sequence[str] = ()) -> dict[str, list[tuple[int, Demo]]]:
    """Labelled demos for nodes whose inputs another MODEL node computes (a multi-hop answer node
    reading passages found with a generated query): the inputs the node really saw in the
    program's own run of a row (``items``: (row index, example of a session evaluation, row)) --
    except inputs wired to an upstream output the rows label, which take the label -- and the
    outputs from the row's labels (the node's outputs must be exported). Returns node -> [(row
    index, demo)]; nodes in ``skip`` and rows where the node did not run are left out."""
    exported = _exported(program, dict(label_map or {}))
    out: dict[str, list[tuple[int, Demo]]] = {}
    for name in demo_nodes(program):
        if name in skip:
            continue
        param = demo_param(program, name)
        sig, optional = param.signature, set(param.optional)
        assert sig is not None
        outs = _output_keys(name, sig, optional, exported)
        if not outs:
            continue
        # an input wired to an upstream output that the rows label takes the label (the right
        # function, not the one a wrong upstream call picked): demos stay consistent
        labelled_in = {f.name: exported[(b.node, b.field)] for f in sig.inputs
                       if isinstance(b := program.node_map[name].binding(f.name), Ref)
                       and (b.node, b.field) in exported}
        required = [f.name for f in sig.inputs if f.name not in optional]
        for i, example, row in items:
            ins = ((example.get("nodes") or {}).get(name) or {}).get("inputs")
            if not isinstance(ins, Mapping) or not all(k in row for k in outs.values()) or \
                    any(f not in ins for f in required):
                continue
            demo = {f.name: ins[f.name] for f in sig.inputs if f.name in ins}
            demo.update({f: row[k] for f, k in labelled_in.items() if k in row})
            demo.update({f: row[k] for f, k in outs.items()})
            out.setdefault(name, []).append((i, demo))
    return out


async def labeled_demos_computed(program: Program, rows: Sequence[Mapping[str, Any]], k: int,
                                 label_map: Mapping[str, str] | None, ctx: Any, *,
                                 concurrency: int = 8, nested: bool = False) -> tuple[dict[str, list[Demo]], list[str]]:
    """Like :func:`labeled_demos`, and also for nodes with inputs that model-free upstream nodes
    compute (a RAG answer node's ``context`` from a Retrieve node): those nodes are run on the
    labelled rows -- no model call -- so each demo shows what the node really sees.
    ``nested``: also nested modules whose fields map to row keys (as :func:`labeled_demos`).

    Returns (demos per node, notes): rows whose upstream run failed are skipped and counted in a note.
    """
    exported = _exported(program, dict(label_map or {}))
    out: dict[str, list[Demo]] = _nested_labeled(program, rows, k, exported) if nested else {}
    notes: list[str] = []
    for name in demo_nodes(program):
        sources = _label_sources(program, name, exported, computed=True)
        if not sources:
            continue
        keyed = {f: s for f, s in sources.items() if isinstance(s, str)}
        refs = {f: s for f, s in sources.items() if isinstance(s, Ref)}
        eligible = [row for row in rows if all(key in row for key in keyed.values())]
        if not refs:
            demos = [{f: row[key] for f, key in keyed.items()} for row in eligible[:k]]
        else:
            sub = _upstream_program(program, list(refs.values()))
            demos, failed = [], 0
            for start in range(0, len(eligible), k):  # k rows at a time until k demos (failures skipped)
                if len(demos) >= k:
                    break
                chunk = eligible[start:start + k]
                results = await execute_batch(sub, chunk, ctx, concurrency=concurrency)
                for row, res in zip(chunk, results):
                    if res.error is not None or res.outputs is None:
                        failed += 1
                        continue
                    demo = {f: row[key] for f, key in keyed.items()}
                    demo.update({f: res.outputs[f"v{i}"] for i, f in enumerate(refs)})
                    demos.append(demo)
            if failed:
                notes.append(f"node {name!r}: {failed} labelled row(s) skipped, their upstream run failed")
            notes.append(f"node {name!r}: {', '.join(refs)} computed per row by running "
                         f"{', '.join(sub.order)} (no model call)")
        if demos:
            out[name] = demos[:k]
    return out, notes


def _upstream_program(program: Program, refs: Sequence[Ref]) -> Program:
    """The sub-pipeline that computes ``refs``: their nodes and everything upstream, nothing else."""
    keep = _with_upstream(program, [r.node for r in refs])
    nodes = [n for n in program.nodes if n.name in keep]
    used = {b.field for n in nodes for _, b in n.refs() if b.node == INPUT}
    return Program(f"{program.name}_upstream", [s for s in program.inputs if s.name in used], nodes,
                   [(f"v{i}", r) for i, r in enumerate(refs)])


def _dedupe(demos: Sequence[Demo]) -> list[Demo]:
    seen, out = set(), []
    for d in demos:
        key = canonical_json(d, default=str)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


async def bootstrap_pool(session: CompileSession, teacher: Program, student: Program, want: int,
                         threshold: float, chunk: int, *, nested: bool = False,
                         scores: list[float] | None = None) -> dict[str, list[Demo]]:
    """Run ``teacher`` on shuffled training rows until every demo node of ``student`` has
    ``want`` demos from runs scoring >= ``threshold`` (or the training set is used up).
    ``scores``, when given, receives the metric score of every run that finished (for the
    report's note when too few pass: :func:`threshold_note`).

    ``nested``: nested modules too (keys are their paths), from the nested I/O the session
    records per example (``params_io``: a Refine's final answer for its generator, one record per
    item for a Map's sub-nodes, the steps that went through for a CallTool's ``step``). A nested
    module is waited for only once some run recorded it (a Refine's judge never is)."""
    rows = list(session.trainset)
    session.rng.shuffle(rows)
    nodes = demo_nodes(student, nested=nested)
    pool: dict[str, list[Demo]] = {n: [] for n in nodes}
    params = {n: demo_param(student, n) for n in nodes}
    seen: set[str] = {n for n in nodes if "." not in n}  # nested ones join once a run records them
    session.reporter.phase("bootstrapping demos from training rows")
    for start in range(0, len(rows), chunk):
        if (start and all(len(pool[n]) >= want for n in seen)) or not nodes:
            break
        entry = await session.run(teacher, rows[start:start + chunk], kind="bootstrap")
        for ex in entry["examples"]:
            if not ex["ok"]:
                continue
            if scores is not None:
                scores.append(float(ex["score"]))
            nested_io = ex.get("params_io") or {}
            seen.update(n for n in nodes if nested_io.get(n))
            if ex["score"] < threshold:
                continue
            for n, demos in example_demos(ex, params).items():
                pool[n] += demos
        pool = {n: _dedupe(d) for n, d in pool.items()}
    return pool


def threshold_note(scores: Sequence[float], threshold: float, want: int,
                   outcome: str = "nothing to bootstrap") -> str:
    """Why bootstrapping found nothing, and what would help: a graded metric (F1, similarity)
    rarely reaches the default mark of 1.0, so name the mark that would have kept ``want`` runs."""
    if not scores:
        return ("no training run finished (every reply failed to parse or errored: see report.failures): "
                f"{outcome}")
    ranked = sorted(scores, reverse=True)
    if ranked[0] >= threshold:
        passed = sum(1 for s in scores if s >= threshold)
        return (f"{passed} of {len(scores)} training runs scored >= threshold={threshold:g} but none recorded "
                f"the inputs and outputs of a node that takes demos: {outcome}")
    above = sum(1 for s in scores if s > 0)
    note = (f"no training run scored >= threshold={threshold:g} (best {ranked[0]:.3g} over {len(scores)} runs, "
            f"{above} above 0): {outcome}")
    if 0 < ranked[0] < threshold:
        mark = ranked[min(want, above) - 1]
        kept = sum(1 for s in scores if s >= mark)
        note += (f"; for a graded metric (F1, similarity) pass threshold={mark:.3g} "
                 f"(it keeps {kept} of these runs)")
    return note


class LabeledFewShot(Optimizer):
    """Put ``k`` labelled training examples (seeded sample) in each mappable node as demos."""

    name = "labeled_fewshot"

    def __init__(self, k: int = 4, *, label_map: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.label_map = dict(label_map or {})

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k, "label_map": self.label_map}

    def estimate(self, program: Program, n_train: int, n_val: int) -> dict[str, int]:
        return {"candidate": n_val * static_calls_per_example(program)}

    async def search(self, session: CompileSession) -> None:
        rows = list(session.trainset)
        session.rng.shuffle(rows)
        demos, notes = await labeled_demos_computed(session.incumbent, rows, self.k, self.label_map,
                                                    session.ctx, concurrency=session.concurrency, nested=True)
        session.report.notes.extend(notes)
        if not demos:
            raise DefinitionError(
                "no node's fields map onto the training rows",
                fix="export the node's outputs as program outputs named like the row labels, or pass "
                    "label_map={output: row_key}; a node input must come from a pipeline input or from "
                    "upstream nodes that make no model call (a Retrieve).")
        session.reporter.phase("scoring the labelled demos")
        await session.consider(with_demos(session.incumbent, demos), f"{self.k} labelled demos",
                               describe_demos(demos))


class BootstrapFewShot(Optimizer):
    """Demos from the program's own successful runs on training data, per node."""

    name = "bootstrap_fewshot"

    def __init__(self, max_demos: int = 4, *, max_labeled: int = 0, teacher: Program | None = None,
                 threshold: float = 1.0, label_map: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_demos = max_demos
        self.max_labeled = max_labeled
        self.teacher = teacher
        self.threshold = threshold
        self.label_map = dict(label_map or {})

    def config(self) -> dict[str, Any]:
        return {**super().config(), "max_demos": self.max_demos, "max_labeled": self.max_labeled,
                "threshold": self.threshold, "teacher": self.teacher.content_hash() if self.teacher else None}

    def estimate(self, program: Program, n_train: int, n_val: int) -> dict[str, int]:
        per = static_calls_per_example(self.teacher or program)
        return {"bootstrap": n_train * per, "candidate": n_val * static_calls_per_example(program)}

    async def _teacher(self, session: CompileSession) -> Program:
        teacher = self.teacher or session.incumbent
        if self.max_labeled:
            lab = labeled_demos(teacher, session.trainset, self.max_labeled, self.label_map, nested=True)
            teacher = with_demos(teacher, lab) if lab else teacher
        return teacher

    async def search(self, session: CompileSession) -> None:
        teacher = await self._teacher(session)
        scores: list[float] = []
        pool = await bootstrap_pool(session, teacher, session.incumbent, self.max_demos, self.threshold,
                                    chunk=max(4, 2 * self.max_demos), nested=True, scores=scores)
        demos = {n: d[:self.max_demos] for n, d in pool.items() if d}
        if not demos:
            session.report.notes.append(threshold_note(scores, self.threshold, self.max_demos))
            return
        session.reporter.phase("scoring the bootstrapped demos")
        await session.consider(with_demos(session.incumbent, demos), "bootstrapped demos",
                               describe_demos(demos))


class BootstrapRandomSearch(BootstrapFewShot):
    """Bootstrap a pool of demos once, then evaluate seeded random demo sets and demo counts."""

    name = "bootstrap_random_search"

    def __init__(self, max_demos: int = 4, *, num_candidates: int = 6, **kwargs: Any) -> None:
        super().__init__(max_demos, **kwargs)
        self.num_candidates = num_candidates

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_candidates": self.num_candidates}

    def estimate(self, program: Program, n_train: int, n_val: int) -> dict[str, int]:
        per = static_calls_per_example(self.teacher or program)
        return {"bootstrap": n_train * per,
                "candidates": (self.num_candidates + 2) * n_val * static_calls_per_example(program)}

    async def search(self, session: CompileSession) -> None:
        base = session.incumbent
        teacher = await self._teacher(session)
        want = self.max_demos * max(2, self.num_candidates // 2)
        scores: list[float] = []
        pool = await bootstrap_pool(session, teacher, base, want, self.threshold,
                                    chunk=max(8, 2 * self.max_demos), nested=True, scores=scores)
        candidates: list[tuple[str, dict[str, list[Demo]]]] = []
        if self.max_labeled:
            rows = list(session.trainset)
            session.rng.shuffle(rows)
            lab = labeled_demos(base, rows, self.max_labeled, self.label_map, nested=True)
            if lab:
                candidates.append((f"{self.max_labeled} labelled demos", lab))
        if any(pool.values()):
            candidates.append((f"first {self.max_demos} bootstrapped demos",
                               {n: d[:self.max_demos] for n, d in pool.items() if d}))
        for i in range(self.num_candidates):
            k = session.rng.randint(1, self.max_demos)
            pick = {}
            for n, d in pool.items():
                if d:
                    pick[n] = session.rng.sample(d, min(k, len(d)))
            if pick:
                candidates.append((f"random set #{i + 1} ({k} demo{'s' if k != 1 else ''} per node)", pick))
        if not candidates:
            session.report.notes.append(threshold_note(scores, self.threshold, self.max_demos,
                                                       "no labels map either: no candidates"))
            return
        for j, (label, demos) in enumerate(candidates, 1):
            session.reporter.phase(f"candidate {j} of {len(candidates)}: {label}")
            await session.consider(with_demos(base, demos), label, describe_demos(demos))
