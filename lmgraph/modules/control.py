"""Shared pieces of the control-flow kinds (:class:`~lmgraph.modules.route.Route`,
:class:`~lmgraph.modules.loop.Loop`): sub-programs as children of the parameter tree, and Python
predicates bound as named resources.

* :func:`resource` names a runtime object (``lg.resource("pick", pick_fn)``); a plain function
  is named by its ``__name__``. Only the name is saved; ``Program.load(..., resources={"pick":
  pick_fn})`` binds it again, as Retrieve's corpora and CallTool's tools are bound.
* :class:`Branch` shows a sub-program as one module whose children are the sub-program's nodes,
  so parameter paths reach inside it (``route.calc.solve.demos``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, DefinitionError, RunError
from ..signatures import FieldSpec, Signature
from .base import IORecord, Module, need_resource

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall
    from ..pipeline.program import Program
    from ..pipeline.trace import NodeTrace, Trace

__all__ = ["Branch", "Resource", "as_program", "call_predicate", "named_callable", "output_types",
           "predicate_from_config", "program_io", "resource", "subprogram_fields"]


@dataclass(frozen=True)
class Resource:
    """A runtime object with the name it is saved under (see :func:`resource`)."""

    name: str
    value: Any


def resource(name: str, value: Any) -> Resource:
    """Name a runtime object for a program: ``lg.Route(lg.resource("pick", pick_fn), ...)``.

    The program file keeps only ``name``; loading it needs ``resources={name: value}``."""
    if not isinstance(name, str) or not name.strip():
        raise DefinitionError(f"a resource name must be a non-empty string, got {name!r}",
                              fix="pass lg.resource('pick', pick_fn).")
    return Resource(name, value)


def named_callable(obj: Any, owner: str, what: str) -> tuple[str, Callable[..., Any]]:
    """(name, function) of a predicate given as ``lg.resource(name, fn)`` or a named function."""
    name: Any
    if isinstance(obj, Resource):
        name, fn = obj.name, obj.value
    else:
        name, fn = getattr(obj, "__name__", None), obj
    if not callable(fn):
        raise DefinitionError(f"{owner}: the {what} must be callable, got {type(fn).__name__}",
                              fix="pass a function (def pick(values): ...) or lg.resource('name', fn).")
    if not isinstance(name, str) or not name or name == "<lambda>":
        raise DefinitionError(f"{owner}: the {what} has no name to be saved under (a lambda)",
                              fix="pass lg.resource('pick', fn), or a function defined with def.")
    return name, fn


def predicate_from_config(resources: Mapping[str, Any], name: Any, what: str) -> Resource:
    """The named predicate a saved program needs, from ``resources``."""
    if not isinstance(name, str):
        raise ArtifactError(f"the {what} is saved as {name!r}, not a resource name",
                            fix="repair that entry in the JSON, or save the program again from code.")
    fn = need_resource(resources, name, what)
    if not callable(fn):
        raise ArtifactError(f"the resource {name!r} ({what}) is a {type(fn).__name__}, not a function",
                            fix=f"pass resources={{{name!r}: a_function}} to Program.load().")
    return Resource(name, fn)


async def call_predicate(fn: Callable[..., Any], name: str, values: Mapping[str, Any], node: str) -> Any:
    """``fn(values)``, awaited when it is a coroutine; what it raises is a RunError naming it."""
    try:
        out = fn(dict(values))
        if inspect.isawaitable(out):
            out = await out
    except RunError:
        raise
    except Exception as e:  # noqa: BLE001 - a bug in user code: wrapped, the cause kept
        raise RunError(f"the predicate {name!r} raised {type(e).__name__}: {e}", node=node) from e
    return out


def as_program(obj: Any, owner: str, what: str) -> Program:
    """A built program from a Program or a Pipeline (built here); anything else is a DefinitionError."""
    from ..pipeline.builder import Pipeline
    from ..pipeline.program import Program

    if isinstance(obj, Pipeline):
        obj = obj.build()
    if not isinstance(obj, Program):
        raise DefinitionError(f"{owner}: {what} must be a Program (or a Pipeline), got {type(obj).__name__}",
                              fix="build the sub-pipeline first: p = lg.Pipeline('calc'); ...; p.build().")
    return obj


def output_types(program: Program) -> dict[str, Any]:
    """The type of each of ``program``'s outputs, by output name."""
    from ..pipeline.ir import INPUT

    out: dict[str, Any] = {}
    for o, r in program.output_refs:
        if r.node == INPUT:
            out[o] = program.input_specs[r.field]
        else:
            spec = program.node_map[r.node].module.signature.output(r.field)
            out[o] = spec.annotation if spec is not None else Any
    return out


def program_io(program: Program, run: Trace) -> dict[str, list[IORecord]]:
    """What each node of ``program`` was given and produced in one run of it (nested modules'
    records too, by dotted path): the records bootstrapped demos are drawn from."""
    out: dict[str, list[IORecord]] = {}
    for nt in run.nodes:
        node = program.node_map.get(nt.node)
        if node is None or nt.outputs is None:
            continue
        out.setdefault(nt.node, []).append({"inputs": dict(nt.inputs), "outputs": dict(nt.outputs)})
        for path, records in node.module.child_io(nt).items():
            out.setdefault(f"{nt.node}.{path}", []).extend(records)
    return out


def subprogram_fields(program: Program, child: str) -> dict[str, tuple[str, bool]]:
    """Node ``child``'s fields that are the sub-program's own inputs/outputs, under those names:
    child field -> (sub-program field, False)."""
    from ..pipeline.ir import INPUT, Ref

    node = program.node_map.get(child)
    if node is None:
        return {}
    out: dict[str, tuple[str, bool]] = {}
    for f, b in node.bindings:
        if isinstance(b, Ref) and b.node == INPUT:
            out[f] = (b.field, False)
    for o, r in program.output_refs:
        if r.node == child:
            out.setdefault(r.field, (o, False))
    return out


class Branch(Module):
    """A sub-program seen as one module: its inputs -> its outputs, with the sub-program's nodes
    as children (parameter paths ``<branch>.<node>.<param>``). It is how a Route's branches sit in
    the parameter tree; it is not a node kind of its own (a Route saves its branches)."""

    tunable = ()

    def __init__(self, program: Program) -> None:
        self.program = program
        ins = [FieldSpec(n, t) for n, t in program.input_specs.items()]
        outs = [FieldSpec(o, t) for o, t in output_types(program).items()]
        self._signature = Signature(ins, outs, f"Run {program.name!r}.")
        self._freeze()

    @property
    def signature(self) -> Signature:
        return self._signature

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        return dict(await call.run_program(self.program, inputs))

    def config(self) -> dict[str, Any]:
        return {"program": self.program.to_dict()}

    def resources(self) -> dict[str, Any]:
        return self.program.resources()

    def submodules(self) -> dict[str, Module]:
        return {n.name: n.module for n in self.program.nodes}

    def replace_child(self, name: str, module: Module) -> Branch:
        return Branch(self.program.with_module(name, module))

    def child_io(self, trace: NodeTrace) -> dict[str, list[IORecord]]:
        out: dict[str, list[IORecord]] = {}
        for run in trace.children:
            for path, records in program_io(self.program, run).items():
                out.setdefault(path, []).extend(records)
        return out

    def child_fields(self, child: str) -> dict[str, tuple[str, bool]]:
        return subprogram_fields(self.program, child)

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        return self.program.estimated_calls(repairs=repairs)

    def describe(self) -> str:
        return f"Branch[{self.program.name}: {' -> '.join(self.program.order)}]"
