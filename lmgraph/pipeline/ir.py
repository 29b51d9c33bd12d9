"""The frozen intermediate representation: inputs, nodes, field-level edges, outputs.

Edges are implied by bindings: a node input field is bound to a :class:`Ref` (another node's
output field, or a pipeline input) or to a :class:`Const`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..modules.base import Module

#: the pseudo-node that holds the pipeline's inputs
INPUT = "input"


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to ``node.field`` (``node == INPUT`` for a pipeline input)."""

    node: str
    field: str

    def __str__(self) -> str:
        return f"{self.node}.{self.field}"

    @classmethod
    def parse(cls, text: str) -> Ref:
        node, dot, field = text.partition(".")
        return cls(node, field) if dot else cls(INPUT, node)


@dataclass(frozen=True, slots=True)
class Const:
    """A constant bound to a node input."""

    value: Any


Binding = Ref | Const


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    annotation: Any = str


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    module: Module
    bindings: tuple[tuple[str, Binding], ...]

    @property
    def kind(self) -> str:
        return self.module.kind

    def binding(self, field: str) -> Binding | None:
        return next((b for f, b in self.bindings if f == field), None)

    def refs(self) -> list[tuple[str, Ref]]:
        return [(f, b) for f, b in self.bindings if isinstance(b, Ref)]

    def with_module(self, module: Module) -> Node:
        return Node(self.name, module, self.bindings)
