"""The model layer: the LM protocol, prompt formats, wrappers and backends (imported lazily)."""

from typing import Any

from .base import LM, LMRequest, LMResponse, Message, Usage
from .wrappers import (
    Budget,
    BudgetLM,
    BudgetMeter,
    CachedLM,
    ConcurrencyLimitedLM,
    MeteredLM,
    RetryLM,
    UsageMeter,
    build_stack,
)

__all__ = ["LM", "Budget", "BudgetLM", "BudgetMeter", "CachedLM", "ConcurrencyLimitedLM", "LMRequest",
           "LMResponse", "Message", "MeteredLM", "RetryLM", "Usage", "UsageMeter", "build_stack"]


# Backends with optional dependencies, imported on first use (``from lmgraph.lm import VLLMLM``).
_LAZY = {"LlamaCppLM": ".llamacpp", "LlamaServer": ".server", "OpenAIServerLM": ".openai_http",
         "VLLMLM": ".vllm_engine", "VLLMServer": ".vllm_server"}


def __getattr__(name: str) -> Any:  # lazy: no backend module is imported with lmgraph.lm
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmgraph.lm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
