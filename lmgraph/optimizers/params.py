"""Walking the parameter tree for optimizers: which modules take demos (nested ones included),
what a demo of each must hold, and where its fields come from in a labelled row or a trace.

Demo *targets* are module paths: a node name for a top-level node (``"classify"``), a dotted
path for a nested module (``"refine.generator"``, ``"answer_each.solve"``, ``"agent.step"`` for
CallTool's choose call). A target's demos live at the parameter ``f"{target}.demos"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..modules.base import Param
from ..pipeline.ir import INPUT, Ref
from ..pipeline.program import Program

Demo = dict[str, Any]
#: demo field -> (row key, per_item): per_item means the row holds a list, one value per item
NestedSources = dict[str, tuple[str, bool]]

_SUFFIX = ".demos"


def demo_targets(program: Program) -> list[str]:
    """Every module that takes demos, by path (top-level nodes by name), in schedule order."""
    out = []
    for path, param in program.named_parameters():
        if param.is_demos and path.endswith(_SUFFIX):
            out.append(path[:-len(_SUFFIX)])
    return out


def demo_param(program: Program, target: str) -> Param:
    """The demos parameter of ``target`` (its signature and optional fields)."""
    return program.parameter(target + _SUFFIX)


def demo_from_io(io: Mapping[str, Any], param: Param) -> Demo | None:
    """A demo from one traced call's inputs/outputs, or None when a required field is missing."""
    sig = param.signature
    if sig is None or io.get("outputs") is None:
        return None
    vals = {**(io.get("inputs") or {}), **io["outputs"]}
    fields = [f.name for f in (*sig.inputs, *sig.outputs)]
    if not all(f in vals for f in fields if f not in param.optional):
        return None
    return {f: vals[f] for f in fields if f in vals}


def example_demos(example: Mapping[str, Any], params: Mapping[str, Param]) -> dict[str, list[Demo]]:
    """Demos per target from one example of a session evaluation (``CompileSession.run``): a
    top-level node's from ``example["nodes"]``, a nested module's (one per recorded call) from
    ``example["params_io"]``. ``params``: target -> its demos Param (:func:`demo_param`)."""
    nested = example.get("params_io") or {}
    out: dict[str, list[Demo]] = {}
    for target, param in params.items():
        records = nested.get(target, []) if "." in target else [example.get("nodes", {}).get(target)]
        demos = [d for d in (demo_from_io(io, param) for io in records if io is not None) if d is not None]
        if demos:
            out[target] = demos
    return out


def nested_label_sources(program: Program, target: str,
                         exported: Mapping[tuple[str, str], str]) -> NestedSources | None:
    """Where each demo field of the nested module ``target`` comes from in a labelled row: the
    top-level node's fields that are pipeline inputs or exported outputs, carried down through
    each parent's ``child_fields`` (a Map's sub-node reads one item of a list per row). None when
    a required field has no source, or it would need lists of lists."""
    head, _, rest = target.partition(".")
    if not rest or head not in program.node_map:
        return None
    node = program.node_map[head]
    module = node.module
    fields: NestedSources = {}
    for f, b in node.bindings:
        if isinstance(b, Ref) and b.node == INPUT:
            fields[f] = (b.field, False)
    for f in module.signature.output_names:
        if (head, f) in exported:
            fields[f] = (exported[(head, f)], False)
    for part in rest.split("."):
        new: NestedSources = {}
        for child_field, (own, per_item) in module.child_fields(part).items():
            if own in fields:
                key, outer = fields[own]
                if not (per_item and outer):
                    new[child_field] = (key, per_item or outer)
        fields = new
        child = module.submodules().get(part)
        if child is None:
            break
        module = child
    param = demo_param(program, target)
    sig = param.signature
    if sig is None or not fields:
        return None
    names = [f.name for f in (*sig.inputs, *sig.outputs)]
    if not all(n in fields for n in names if n not in param.optional):
        return None
    return {n: fields[n] for n in names if n in fields}


def rows_to_demos(rows: Sequence[Mapping[str, Any]], sources: NestedSources, k: int) -> list[Demo]:
    """Up to ``k`` demos from labelled rows; a per-item source gives one demo per list item."""
    demos: list[Demo] = []
    per = [f for f, (_, p) in sources.items() if p]
    for row in rows:
        if len(demos) >= k:
            break
        if not all(key in row for key, _ in sources.values()):
            continue
        if not per:
            demos.append({f: row[key] for f, (key, _) in sources.items()})
            continue
        lists = [row[sources[f][0]] for f in per]
        if not all(isinstance(v, (list, tuple)) for v in lists) or len({len(v) for v in lists}) != 1:
            continue
        for i in range(len(lists[0])):
            demos.append({f: (row[key][i] if p else row[key]) for f, (key, p) in sources.items()})
    return demos[:k]
