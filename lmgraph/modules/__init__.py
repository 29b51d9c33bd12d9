"""The closed set of node kinds."""

from .base import MODULE_KINDS, Module
from .predict import ChainOfThought, Predict

__all__ = ["MODULE_KINDS", "ChainOfThought", "Module", "Predict"]
