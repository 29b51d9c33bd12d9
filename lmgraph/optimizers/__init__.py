"""The compiler: optimizers are pure passes ``program -> (program, report)`` under hard budgets."""

from .acceptance import AcceptancePolicy, FavourOnTies, PairedBootstrap, Verdict
from .artifact import diff, format_diff, load_artifact, read_artifact, save_artifact
from .auto import Compile, compile
from .base import CostEstimate, Optimizer
from .decompose import Decompose, collapse_node, decompose_node, find_decompositions, lint_rewrite
from .fewshot import BootstrapFewShot, BootstrapRandomSearch, LabeledFewShot
from .instructions import InstructionSearch
from .joint import JointSearch
from .reflect import Reflect
from .report import Candidate, Report
from .session import BudgetStop, CompileSession

__all__ = ["AcceptancePolicy", "BootstrapFewShot", "BootstrapRandomSearch", "BudgetStop", "Candidate", "Compile",
           "CompileSession", "CostEstimate", "Decompose", "FavourOnTies", "InstructionSearch", "JointSearch",
           "LabeledFewShot", "Optimizer", "PairedBootstrap", "Reflect", "Report", "Verdict", "collapse_node",
           "compile", "decompose_node", "diff", "find_decompositions", "format_diff", "lint_rewrite",
           "load_artifact", "read_artifact", "save_artifact"]
