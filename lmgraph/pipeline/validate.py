"""Static validation of a pipeline graph, before any model call.

Every finding names the node and the field and says how to fix it; all findings are
collected and raised together as one :class:`PipelineValidationError`.

Edges are strict: a field feeds another only when its type fits as declared (``int`` does not
feed ``str``, nor ``str`` an ``int``; ``int`` widens to ``float``, a ``Literal`` of strings
feeds ``str``), and constants are validated with pydantic, with no model-output leniency.
Two nodes may not use different resources under one name (after save/load they would share one).
"""

from __future__ import annotations

import difflib
import enum
import types as _pytypes
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

from ..errors import DefinitionError, PipelineValidationError
from ..lm.values import invalid_reason, validate_strict
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
    def add(msg: str, node: str | None = None, field: str | None = None, fix: str | None = None) -> None:
        problems.append(DefinitionError(msg, node=node, field=field, fix=fix))

    input_types: dict[str, Any] = {}
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

    def source_type(ref: Ref, node: str, field: str) -> Any:
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
                want = type_to_str(target.annotation)
                try:
                    validate_strict(b.value, target.annotation)
                except Exception as e:  # noqa: BLE001 - any validation failure reads the same
                    add(f"the constant is not a valid {want} ({invalid_reason(e, b.value, target.annotation)})",
                        node=n.name, field=field, fix=_const_fix(b.value, target.annotation, field))
                continue
            st = source_type(b, n.name, field)
            if st is not None and not fits(st, target.annotation):
                own = n.module.edge_problem(field, st, str(b))  # the kind's own explanation, if any
                add(own[0] if own else
                    f"type mismatch: {b} is {type_to_str(st)} but the input wants {type_to_str(target.annotation)}",
                    node=n.name, field=field, fix=own[1] if own else _edge_fix(b, st, target.annotation, n.name, field))
            if b.node != INPUT:
                edges.append((b.node, n.name))
        for f in sig.inputs:
            if f.name not in bound:
                how = (f"inputs={{{f.name!r}: ...}}" if f.name in _ADD_PARAMS else f"{f.name}=...")
                add(f"input {f.name!r} is not bound", node=n.name, field=f.name,
                    fix=f"pass {how} when adding the node: an input handle, a node's output (other.field, "
                        "or lg.ref('other.field')) or a constant.")
    _check_resources(nodes, add)

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
            fix="a pipeline is a DAG; express bounded iteration with Loop (max_iters), Refine (critique loop), "
                "CallTool (max_steps) or Map instead of an edge back.")
    if problems:
        raise PipelineValidationError(problems)
    return order


#: parameters of ``Pipeline.add`` a field of the same name must be bound around
_ADD_PARAMS = ("name", "module", "inputs")
_UNIONS = (Union, _pytypes.UnionType)


def fits(source: Any, target: Any) -> bool:
    """Whether a value of type ``source`` may feed a field of type ``target``: strictly, as a
    value and not as text (an ``int`` does not feed ``str``; ``int`` widens to ``float``; a
    ``Literal`` feeds its values' type; element types of lists must fit)."""
    if target is Any or source is Any or source == target:
        return True
    so, to = typing.get_origin(source), typing.get_origin(target)
    if so in _UNIONS:
        return all(fits(s, target) for s in typing.get_args(source))
    if to in _UNIONS:
        return any(fits(source, t) for t in typing.get_args(target))
    if so is Literal:
        vals = typing.get_args(source)
        if to is Literal:
            return set(vals) <= set(typing.get_args(target))
        if isinstance(target, type) and issubclass(target, enum.Enum):
            return all(v in {m.value for m in target} for v in vals)
        return isinstance(target, type) and all(_value_fits(v, target) for v in vals)
    if target is str:
        return isinstance(source, type) and issubclass(source, str)  # str subclasses, str enums
    if target is float and source is int:
        return True
    seqs = (list, tuple)
    if (to in seqs or target in seqs) and (so in seqs or source in seqs):
        sa, ta = typing.get_args(source), typing.get_args(target)
        return not sa or not ta or fits(sa[0], ta[0])
    return compatible(source, target)


def _value_fits(value: Any, target: type) -> bool:
    if target is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, target) and (target is bool or not isinstance(value, bool))


def _edge_fix(ref: Ref, source: Any, target: Any, node: str, field: str) -> str:
    src, want = type_to_str(source), type_to_str(target)
    if target is str:
        return (f"declare the input as {field}: {src} in {node}'s signature (it renders into the prompt the "
                f"same way), or bind a str field.")
    where = f"pipeline input {ref.field!r}" if ref.node == INPUT else f"output {ref}"
    return (f"declare the {where} as {want}, or declare this input as {field}: {src} -- "
            "each side must say the type the value really has.")


def _const_fix(value: Any, target: Any, field: str) -> str:
    want = type_to_str(target)
    if target is str and not isinstance(value, str):
        return (f"bind a string (lg.const({str(value)!r})), or declare the input as {field}: "
                f"{type(value).__name__} in the signature.")
    return f"bind a constant of type {want}, or change the signature."


def _check_resources(nodes: Sequence[Node], add: Callable[..., None]) -> None:
    """Two nodes using different objects under one resource name would get the same object back
    after save/load: a definition error naming both."""
    from ..modules.call_tool import Tool
    from ..modules.retrieve import BM25Retriever

    def key(obj: Any) -> Any:  # wrappers built around one resource (on load, per node) are that resource
        if isinstance(obj, Tool):
            return obj.fn
        if isinstance(obj, BM25Retriever):
            return ("bm25", obj.passages, obj.tokenizer)
        return obj

    def same(a: Any, b: Any) -> bool:
        a, b = key(a), key(b)
        if a is b:
            return True
        try:
            return bool(a == b)
        except Exception:  # noqa: BLE001 - objects that cannot compare are different
            return False

    seen: dict[str, tuple[str, Any]] = {}
    for n in nodes:
        for rname, obj in n.module.resources().items():
            if rname not in seen:
                seen[rname] = (n.name, obj)
            elif not same(seen[rname][1], obj):
                add(f"nodes {seen[rname][0]!r} and {n.name!r} use different resources under one name {rname!r} "
                    "(after save/load both would get the same one)", node=n.name,
                    fix="give each its own name (Retrieve(docs, name='...'), BM25Retriever(docs, name='...'), "
                        "Tool(fn, name='...')).")
