"""The DSL: declare inputs, add modules with field-level bindings, declare outputs, build."""

from __future__ import annotations

import difflib
import re
from typing import Any

from ..errors import DefinitionError
from ..modules.base import Module
from ..signatures import str_to_type
from .ir import INPUT, Binding, Const, InputSpec, Node, Ref
from .program import Program

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def const(value: Any) -> Const:
    """Bind a constant (needed for strings, which otherwise read as 'node.field' references)."""
    return Const(value)


class NodeHandle:
    """Returned by :meth:`Pipeline.add`; ``handle.field`` is a reference to that output."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str, module: Module) -> None:
        self._name = name
        self._module = module

    @property
    def name(self) -> str:
        return self._name

    def __getattr__(self, field: str) -> Ref:
        if field.startswith("__"):
            raise AttributeError(field)
        return self[field]

    def __getitem__(self, field: str) -> Ref:
        outs = self._module.signature.output_names
        if field not in outs:
            close = difflib.get_close_matches(field, outs, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DefinitionError(f"has no output {field!r}", node=self._name, field=field,
                                  fix=f"{hint}its outputs are: {', '.join(outs)}.")
        return Ref(self._name, field)

    def __repr__(self) -> str:
        return f"<node {self._name}: {self._module!r}>"


class Pipeline:
    """A mutable builder; :meth:`build` returns the frozen, validated :class:`Program`."""

    def __init__(self, name: str) -> None:
        if not _NAME.match(name):
            raise DefinitionError(f"pipeline name {name!r} is not an identifier",
                                  fix="use letters, digits and underscores.")
        self.name = name
        self._inputs: list[InputSpec] = []
        self._nodes: list[Node] = []
        self._outputs: list[tuple[str, Ref]] = []

    def input(self, name: str, annotation: Any = str) -> Ref:
        """Declare a pipeline input; returns a reference to bind to node inputs."""
        if not _NAME.match(name):
            raise DefinitionError(f"input name {name!r} is not an identifier", node=INPUT, field=name)
        if any(s.name == name for s in self._inputs):
            raise DefinitionError("input declared twice", node=INPUT, field=name, fix="declare it once.")
        if isinstance(annotation, str):
            annotation = str_to_type(annotation)
        self._inputs.append(InputSpec(name, annotation))
        return Ref(INPUT, name)

    def add(self, module: Module, *, name: str | None = None, **bindings: Any) -> NodeHandle:
        """Add a node running ``module`` with its input fields bound to refs or constants."""
        if not isinstance(module, Module):
            raise DefinitionError(f"expected a module (Predict, ChainOfThought, ...), got {type(module).__name__}",
                                  node=name, fix="wrap the signature: lg.Predict('question -> answer').")
        taken = {n.name for n in self._nodes}
        if name is None:
            base = module.kind
            name, i = base, 2
            while name in taken:
                name, i = f"{base}_{i}", i + 1
        elif not _NAME.match(name) or name == INPUT:
            raise DefinitionError(f"node name {name!r} is not allowed", node=name,
                                  fix=f"use an identifier other than {INPUT!r}.")
        elif name in taken:
            raise DefinitionError("a node with this name already exists", node=name,
                                  fix="pass a distinct name=... .")
        bound = tuple((f, self._binding(v, name, f)) for f, v in bindings.items())
        self._nodes.append(Node(name, module, bound))
        return NodeHandle(name, module)

    @staticmethod
    def _binding(value: Any, node: str, field: str) -> Binding:
        if isinstance(value, (Ref, Const)):
            return value
        if isinstance(value, NodeHandle):
            outs = value._module.signature.output_names
            if len(outs) != 1:
                raise DefinitionError(f"node {value.name!r} has several outputs ({', '.join(outs)})",
                                      node=node, field=field, fix=f"bind one of them, e.g. {value.name}.{outs[-1]}.")
            return Ref(value.name, outs[0])
        if isinstance(value, str):
            return Ref.parse(value)
        return Const(value)

    def output(self, **refs: Any) -> None:
        """Declare pipeline outputs: ``pipeline.output(answer=node.answer)``."""
        for oname, v in refs.items():
            b = self._binding(v, "output", oname)
            if not isinstance(b, Ref):
                raise DefinitionError("outputs must reference a node field or input", node="output", field=oname)
            self._outputs.append((oname, b))

    def build(self) -> Program:
        """Validate and freeze; raises PipelineValidationError listing every problem."""
        return Program(self.name, self._inputs, self._nodes, self._outputs)
