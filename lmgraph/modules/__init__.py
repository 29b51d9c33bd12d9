"""The closed set of node kinds."""

from .base import MODULE_KINDS, Module
from .best_of_n import BestOfN
from .call_tool import CallTool, Tool
from .critique import Critique, Refine
from .map import Map
from .plan import Plan
from .predict import ChainOfThought, Predict
from .retrieve import BM25Retriever, FunctionRetriever, Passage, Retrieve, Retriever

__all__ = ["BM25Retriever", "BestOfN", "CallTool", "ChainOfThought", "Critique", "FunctionRetriever",
           "MODULE_KINDS", "Map", "Module", "Passage", "Plan", "Predict", "Refine", "Retrieve", "Retriever",
           "Tool"]
