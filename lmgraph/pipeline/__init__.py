"""Pipeline IR, DSL builder, validation, executor, rendering and serialization."""

from .builder import NodeHandle, Pipeline, const, ref
from .executor import NodeCall, Prediction, Result, trace_of
from .ir import INPUT, Const, InputSpec, Node, Ref
from .program import Program
from .trace import CallRecord, NodeTrace, Trace

__all__ = ["INPUT", "CallRecord", "Const", "InputSpec", "Node", "NodeCall", "NodeHandle", "NodeTrace",
           "Pipeline", "Prediction", "Program", "Ref", "Result", "Trace", "const", "ref", "trace_of"]
