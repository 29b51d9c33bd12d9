"""The compiler: optimizers are pure passes ``program -> (program, report)`` under hard budgets."""

from .artifact import diff, format_diff, load_artifact, read_artifact, save_artifact
from .base import CostEstimate, Optimizer
from .fewshot import BootstrapFewShot, BootstrapRandomSearch, LabeledFewShot
from .instructions import InstructionSearch
from .joint import JointSearch
from .report import Candidate, Report
from .session import BudgetStop, CompileSession

__all__ = ["BootstrapFewShot", "BootstrapRandomSearch", "BudgetStop", "Candidate", "CompileSession",
           "CostEstimate", "InstructionSearch", "JointSearch", "LabeledFewShot", "Optimizer", "Report", "diff",
           "format_diff", "load_artifact", "read_artifact", "save_artifact"]
