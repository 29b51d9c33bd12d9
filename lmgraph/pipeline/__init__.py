"""Pipeline IR, DSL builder, validation, executor, rendering and serialization."""

from .builder import NodeHandle, Pipeline, const
from .executor import NodeCall, Prediction, Result
from .ir import INPUT, Const, InputSpec, Node, Ref
from .program import Program
from .trace import CallRecord, NodeTrace, Trace

__all__ = ["INPUT", "CallRecord", "Const", "InputSpec", "Node", "NodeCall", "NodeHandle", "NodeTrace",
           "Pipeline", "Prediction", "Program", "Ref", "Result", "Trace", "const"]
