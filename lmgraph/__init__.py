"""lmgraph: a declarative LLM pipeline compiler.

Declare a pipeline as a typed graph of modules, run it (independent nodes concurrently) on
an API model, a local server or the embedded SmolLM2 model, and compile it into a better one.
"""

from typing import Any

from .context import RunContext
from .errors import (
    ArtifactError,
    BudgetError,
    BudgetExceeded,
    ConfigError,
    ContextFitWarning,
    DatasetError,
    DefinitionError,
    InputError,
    LMError,
    LmgraphError,
    LmgraphWarning,
    MetricError,
    MetricWarning,
    OutputParseError,
    PipelineValidationError,
    ProviderFailureError,
    ProviderWarning,
    RunError,
    SignatureError,
    UsageError,
)
from .lm.base import LM, LMRequest, LMResponse
from .lm.wrappers import Budget, RetryPolicy
from .modules import (
    BestOfN,
    BM25Retriever,
    CallTool,
    ChainOfThought,
    Critique,
    FunctionRetriever,
    Loop,
    Map,
    Module,
    Plan,
    Predict,
    Refine,
    Retrieve,
    Route,
    Tool,
    resource,
)
from .pipeline import Pipeline, Prediction, Program, Result, Trace, const, ref, trace_of
from .signatures import FieldSpec, InputField, OutputField, Signature

__version__ = "0.1.0"

__all__ = [
    "LM",
    "ArtifactError",
    "BM25Retriever",
    "BestOfN",
    "Budget",
    "BudgetError",
    "BudgetExceeded",
    "CallTool",
    "ChainOfThought",
    "ConfigError",
    "ContextFitWarning",
    "Critique",
    "DatasetError",
    "DefinitionError",
    "FieldSpec",
    "FunctionRetriever",
    "InputError",
    "InputField",
    "LMError",
    "LMRequest",
    "LMResponse",
    "LmgraphError",
    "LmgraphWarning",
    "Loop",
    "Map",
    "MetricError",
    "MetricWarning",
    "Module",
    "OutputField",
    "OutputParseError",
    "Pipeline",
    "PipelineValidationError",
    "Plan",
    "Predict",
    "Prediction",
    "Program",
    "ProviderFailureError",
    "ProviderWarning",
    "Refine",
    "Result",
    "Retrieve",
    "RetryPolicy",
    "Route",
    "RunContext",
    "RunError",
    "Signature",
    "SignatureError",
    "Tool",
    "Trace",
    "UsageError",
    "call",
    "const",
    "ref",
    "resource",
    "trace_of",
]


def __getattr__(name: str) -> Any:  # lazy: the compiler is imported on first use, not at import time
    if name == "compile":
        from .optimizers.auto import compile as _compile

        return _compile
    if name == "call":  # lg.call(module, **inputs): one synchronous in-process run of one module
        from .modules.base import call

        return call
    raise AttributeError(f"module 'lmgraph' has no attribute {name!r}")
