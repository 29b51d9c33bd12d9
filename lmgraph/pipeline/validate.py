"""Static validation of a pipeline graph, before any model call.

Every finding names the node and the field and says how to fix it; all findings are
collected and raised together as one :class:`PipelineValidationError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import pydantic

from ..errors import DefinitionError, PipelineValidationError
from ..lm.values import validate_value
from ..signatures import compatible, type_to_str
from ._nx import topo_order
from .ir import INPUT, Const, InputSpec, Node, Ref


def _suggest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def validate(name: str, inputs: Sequence[InputSpec], nodes: Sequence[Node],
             outputs: Sequence[tuple[str, Ref]]) -> list[str]:
    """Check the graph; return node names in topological order or raise."""
    problems: list[DefinitionError] = []
    add = lambda msg, node=None, field=None, fix=None: problems.append(  # noqa: E731
        DefinitionError(msg, node=node, field=field, fix=fix))

    input_types = {}
    for spec in inputs:
        if spec.name in input_types:
            add("pipeline input declared twice", node=INPUT, field=spec.name,
                fix="declare each input once.")
        input_types[spec.name] = spec.annotation
    by_name: dict[str, Node] = {}
    for n in nodes:
        if n.name == INPUT:
            add(f"{INPUT!r} is reserved for the pipeline inputs", node=n.name, fix="rename the node.")
        elif n.name in by_name:
            add("two nodes share this name", node=n.name,
                fix="give each node a distinct name=... when adding it.")
        by_name[n.name] = n

    def source_type(ref: Ref, node: str, field: str):  # noqa: ANN202
        if ref.node == INPUT:
            if ref.field not in input_types:
                add(f"bound to unknown pipeline input {ref.field!r}", node=node, field=field,
                    fix=f"{_suggest(ref.field, list(input_types))}declare it with pipeline.input({ref.field!r}, type) "
                        f"(inputs: {', '.join(input_types) or 'none'}).")
                return None
            return input_types[ref.field]
        src = by_name.get(ref.node)
        if src is None:
            add(f"bound to {ref}, but there is no node {ref.node!r}", node=node, field=field,
                fix=f"{_suggest(ref.node, list(by_name))}nodes are: {', '.join(by_name) or 'none'}.")
            return None
        spec = src.module.signature.output(ref.field)
        if spec is None:
            outs = src.module.signature.output_names
            add(f"bound to {ref}, but node {ref.node!r} has no output {ref.field!r}", node=node, field=field,
                fix=f"{_suggest(ref.field, outs)}its outputs are: {', '.join(outs)}.")
            return None
        return spec.annotation

    edges: list[tuple[str, str]] = []
    for n in nodes:
        sig = n.module.signature
        bound = {f for f, _ in n.bindings}
        for field, b in n.bindings:
            target = sig.input(field)
            if target is None:
                add(f"{n.module.describe()} has no input field {field!r}", node=n.name, field=field,
                    fix=f"{_suggest(field, sig.input_names)}its inputs are: {', '.join(sig.input_names)}.")
                continue
            if isinstance(b, Const):
                if target.annotation is not str:  # anything renders into a text field
                    try:
                        validate_value(b.value, target.annotation)
                    except Exception as e:  # noqa: BLE001 - any validation failure reads the same
                        why = e.errors()[0]["msg"] if isinstance(e, pydantic.ValidationError) else str(e)
                        add(f"constant {b.value!r} is not a valid {type_to_str(target.annotation)} ({why})",
                            node=n.name, field=field,
                            fix=f"bind a constant of type {type_to_str(target.annotation)}, or change the signature.")
                continue
            st = source_type(b, n.name, field)
            if st is not None and not compatible(st, target.annotation):
                add(f"type mismatch: {b} is {type_to_str(st)} but the input wants {type_to_str(target.annotation)}",
                    node=n.name, field=field,
                    fix="bind a field of a compatible type, or change one of the two signatures.")
            if b.node != INPUT:
                edges.append((b.node, n.name))
        for f in sig.inputs:
            if f.name not in bound:
                add(f"input {f.name!r} is not bound", node=n.name, field=f.name,
                    fix=f"pass {f.name}=<pipeline input or node.field> when adding the node.")

    if not outputs:
        add("the pipeline declares no outputs", node=name, fix="call pipeline.output(name=node.field).")
    seen_out: set[str] = set()
    for oname, ref in outputs:
        if oname in seen_out:
            add("output declared twice", node="output", field=oname, fix="declare each output once.")
        seen_out.add(oname)
        source_type(ref, "output", oname)

    order, cycles = topo_order([n.name for n in nodes], edges) if not problems else ([], [])
    for cyc in cycles:
        path = " -> ".join([*cyc, cyc[0]])
        back = next((f for f, r in by_name[cyc[0]].refs() if r.node == cyc[-1]), None)
        add(f"cycle {path}", node=cyc[0], field=back,
            fix="a pipeline is a DAG; express bounded iteration with Refine (critique loop), "
                "CallTool (max_steps) or Map instead of an edge back.")
    if problems:
        raise PipelineValidationError(problems)
    return order
