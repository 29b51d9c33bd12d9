"""The closed set of node kinds."""

from .base import MODULE_KINDS, Module
from .best_of_n import BestOfN
from .call_tool import CallTool, Tool
from .control import Resource, resource
from .critique import Critique, Refine
from .loop import Loop
from .map import Map
from .plan import Plan
from .predict import ChainOfThought, Predict
from .retrieve import BM25Retriever, FunctionRetriever, Passage, Retrieve, Retriever
from .route import Route

__all__ = [
           "MODULE_KINDS",
           "BM25Retriever",
           "BestOfN",
           "CallTool",
           "ChainOfThought",
           "Critique",
           "FunctionRetriever",
           "Loop",
           "Map",
           "Module",
           "Passage",
           "Plan",
           "Predict",
           "Refine",
           "Resource",
           "Retrieve",
           "Retriever",
           "Route",
           "Tool",
           "resource",
]
