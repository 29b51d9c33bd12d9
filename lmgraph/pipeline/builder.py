"""The DSL: declare inputs, add modules with field-level bindings, declare outputs, build.

Binding rule (one, with no exceptions): **a reference is made only by a handle or by
:func:`ref`**; every other value -- plain strings included -- is a constant.

* ``q = p.input("question")`` and ``node.answer`` (a node handle's attribute) are references;
  ``lg.ref("node.field")`` / ``lg.ref("question")`` build one from text;
* ``style="be brief"`` binds the constant string ``"be brief"`` (``lg.const(...)`` says so
  explicitly, for any value);
* a plain string that spells a declared input or an existing ``node.field`` is still a constant,
  and :meth:`Pipeline.build` warns about it once (``binding 'x' is the constant string 'x'; to
  refer to the input use the handle or lg.ref('x')``).

``add`` takes the module and the node name positionally, so input fields called ``name``,
``module`` or ``inputs`` can be bound: ``p.add(mod, "greet", name=who)``, or
``p.add(mod, name="greet", inputs={"name": who})``. ``name="greet"`` given by keyword names the
node (as it always did) unless the name was given positionally.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Mapping
from typing import Any

from ..errors import DefinitionError, LmgraphWarning
from ..modules.base import Module
from ..signatures import str_to_type
from .ir import INPUT, Binding, Const, InputSpec, Node, Ref
from .program import Program

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def const(value: Any) -> Const:
    """Bind a constant explicitly (plain values, strings included, are constants anyway)."""
    return Const(value)


def ref(target: str) -> Ref:
    """A reference written as text: ``lg.ref("node.field")`` (a node's output) or
    ``lg.ref("question")`` (a pipeline input). Plain strings never refer to anything."""
    if not isinstance(target, str) or not _REF.match(target):
        raise DefinitionError(f"lg.ref({target!r}) is not a reference",
                              fix="write lg.ref('node.field') for a node's output or lg.ref('input_name') "
                                  "for a pipeline input.")
    return Ref.parse(target)


class NodeHandle:
    """Returned by :meth:`Pipeline.add`; ``handle.field`` is a reference to that output.

    Outputs come first: ``handle.x`` is the output ``x`` whenever the node has one, even one
    called ``name`` or ``module``; ``handle["x"]`` always is. The node's own name is
    ``handle.node_name`` (and its module ``handle.module``) when no output shadows them.
    """

    __slots__ = ("_module", "_name", "_outputs")

    def __init__(self, name: str, module: Module) -> None:
        self._name = name
        self._module = module
        self._outputs = frozenset(module.signature.output_names)

    def __getattribute__(self, attr: str) -> Any:
        if attr[:1] != "_" and attr in object.__getattribute__(self, "_outputs"):
            return Ref(object.__getattribute__(self, "_name"), attr)
        return object.__getattribute__(self, attr)

    @property
    def node_name(self) -> str:
        """The node's name in the pipeline."""
        return self._name

    @property
    def name(self) -> str:
        """The node's name (same as :attr:`node_name`; an output called ``name`` takes precedence)."""
        return self._name

    @property
    def module(self) -> Module:
        return self._module

    def __getattr__(self, field: str) -> Ref:  # only reached for names that are neither outputs nor attributes
        if field.startswith("__") or (field.startswith("_") and field not in self._outputs):
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
        self._plain_strings: list[tuple[str, str, str]] = []  # (node, field, value) bound as plain str

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

    def add(self, module: Module, node_name: str | None = None, /, *,
            inputs: Mapping[str, Any] | None = None, **bindings: Any) -> NodeHandle:
        """Add a node running ``module`` with its input fields bound to references or constants.

        ``p.add(module, "node", field=value, ...)``: the node name positionally (any keyword is
        then a binding, ``name=`` included); ``p.add(module, name="node", ...)`` also names the
        node. ``inputs={"field": value}`` binds fields by a dict (for fields called ``name``,
        ``module`` or ``inputs``). A value is a reference only when it is a handle attribute
        (``other.answer``), a :meth:`input` handle or :func:`ref`; anything else is a constant.
        """
        if node_name is None and "name" in bindings:
            node_name = bindings.pop("name")
            if not isinstance(node_name, str) and node_name is not None:
                raise DefinitionError(
                    f"name= is the node's name, got a {type(node_name).__name__}", field="name",
                    fix="to bind an input field called 'name', pass the node name positionally -- "
                        "p.add(module, 'node', name=...) -- or use inputs={'name': ...}.")
        name = node_name
        if not isinstance(module, Module):
            raise DefinitionError(f"expected a module (Predict, ChainOfThought, ...), got {type(module).__name__}",
                                  node=name, fix="wrap the signature: lg.Predict('question -> answer').")
        if inputs is not None:
            if not isinstance(inputs, Mapping):
                raise DefinitionError(f"inputs= takes a dict of field -> value, got {type(inputs).__name__}",
                                      node=name, field="inputs",
                                      fix="to bind an input field called 'inputs', use inputs={'inputs': ...}.")
            both = sorted(set(inputs) & set(bindings))
            if both:
                raise DefinitionError("bound twice (in inputs= and as a keyword)", node=name, field=both[0],
                                      fix="bind each field once.")
            bindings = {**inputs, **bindings}
        taken = {n.name for n in self._nodes}
        if name is None:
            base = module.kind
            name, i = base, 2
            while name in taken:
                name, i = f"{base}_{i}", i + 1
        elif not isinstance(name, str) or not _NAME.match(name) or name == INPUT:
            raise DefinitionError(f"node name {name!r} is not allowed", node=str(name),
                                  fix=f"use an identifier other than {INPUT!r}.")
        elif name in taken:
            raise DefinitionError("a node with this name already exists", node=name,
                                  fix="pass a distinct name=... .")
        module = _at_node(module, name)
        bound = []
        for f, v in bindings.items():
            if isinstance(v, str):
                self._plain_strings.append((name, f, v))
            bound.append((f, self._binding(v, name, f)))
        self._nodes.append(Node(name, module, tuple(bound)))
        return NodeHandle(name, module)

    @staticmethod
    def _binding(value: Any, node: str, field: str) -> Binding:
        if isinstance(value, (Ref, Const)):
            return value
        if isinstance(value, NodeHandle):
            outs = value._module.signature.output_names
            if len(outs) != 1:
                n = value._name
                raise DefinitionError(f"node {n!r} has several outputs ({', '.join(outs)})",
                                      node=node, field=field, fix=f"bind one of them, e.g. {n}.{outs[-1]}.")
            return Ref(value._name, outs[0])
        return Const(value)

    def output(self, **refs: Any) -> None:
        """Declare pipeline outputs: ``pipeline.output(answer=node.answer)`` (a handle attribute,
        an input handle or ``lg.ref("node.field")``)."""
        for oname, v in refs.items():
            if isinstance(v, str):
                raise DefinitionError(f"output {oname!r} is the plain string {v!r}; outputs must be references",
                                      node="output", field=oname,
                                      fix=f"pass the handle (node.field) or lg.ref({v!r}).")
            b = self._binding(v, "output", oname)
            if not isinstance(b, Ref):
                raise DefinitionError("outputs must reference a node field or input", node="output", field=oname,
                                      fix="pass a handle attribute (node.answer), an input handle or "
                                          "lg.ref('node.field').")
            self._outputs.append((oname, b))

    def build(self) -> Program:
        """Validate and freeze; raises PipelineValidationError listing every problem."""
        program = Program(self.name, self._inputs, self._nodes, self._outputs)
        self._warn_lookalikes()
        return program

    def _warn_lookalikes(self) -> None:
        """Warn once per binding whose plain string spells a declared input or a ``node.field``:
        it is a constant, which is probably not what was meant."""
        inputs = {s.name for s in self._inputs}
        fields = {f"{n.name}.{o}" for n in self._nodes for o in n.module.signature.output_names}
        for node, field, value in self._plain_strings:
            if value in inputs or value in fields:
                what = "the input" if value in inputs else "that output"
                warnings.warn(f"node {node!r}, field {field!r}: binding {value!r} is the constant string "
                              f"{value!r}; to refer to {what} use the handle or lg.ref({value!r})",
                              LmgraphWarning, stacklevel=3)


def _at_node(module: Module, node: str) -> Module:
    """The module as placed at ``node``: a Retrieve over an unnamed plain list gets the resource
    name ``<node>.corpus``, so two such nodes never share one name."""
    from ..modules.retrieve import Retrieve

    if isinstance(module, Retrieve):
        return module.at_node(node)
    return module
