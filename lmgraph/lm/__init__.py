"""The model layer: the LM protocol, prompt formats, wrappers and backends (imported lazily)."""

from .base import LM, LMRequest, LMResponse, Message, Usage
from .wrappers import (Budget, BudgetLM, BudgetMeter, CachedLM, ConcurrencyLimitedLM, MeteredLM, RetryLM,
                       UsageMeter, build_stack)

__all__ = ["LM", "Budget", "BudgetLM", "BudgetMeter", "CachedLM", "ConcurrencyLimitedLM", "LMRequest",
           "LMResponse", "Message", "MeteredLM", "RetryLM", "Usage", "UsageMeter", "build_stack"]
