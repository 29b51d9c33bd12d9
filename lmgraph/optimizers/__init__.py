"""The compiler: optimizers are pure passes ``program -> (program, report)`` under hard budgets."""

from .auto import Compile, compile
from .artifact import diff, format_diff, load_artifact, read_artifact, save_artifact
from .base import CostEstimate, Optimizer
from .decompose import Decompose, collapse_node, decompose_node, find_decompositions, lint_rewrite
from .fewshot import BootstrapFewShot, BootstrapRandomSearch, LabeledFewShot
from .instructions import InstructionSearch
from .joint import JointSearch
from .reflect import Reflect
from .report import Candidate, Report
from .session import BudgetStop, CompileSession

__all__ = ["Compile", "compile", "BootstrapFewShot", "BootstrapRandomSearch", "BudgetStop", "Candidate", "CompileSession",
           "CostEstimate", "Decompose", "InstructionSearch", "JointSearch", "LabeledFewShot", "Optimizer", "Reflect", "Report",
           "collapse_node", "decompose_node", "diff", "find_decompositions", "format_diff", "lint_rewrite",
           "load_artifact", "read_artifact", "save_artifact"]
