"""The candidates the default compiler races: what one changes, how its demos are chosen, what a
row costs, and which backends score label options."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..context import RunContext
from ..errors import DefinitionError
from ..modules.predict import check_score_signature
from ..pipeline.program import Program
from ..signatures import literal_options

Demo = dict[str, Any]


@dataclass
class Spec:
    """One candidate: a label, per-node parameter changes and the search rows its demos use."""

    label: str
    params: dict[str, dict[str, Any]]
    demo_rows: frozenset[int] = frozenset()
    program: Program | None = None
    calls_per_row: float = 1.0
    rows: list[int] = field(default_factory=list)    # search rows scored so far
    scores: list[float] = field(default_factory=list)
    calls: int = 0
    tokens: int = 0
    dollars: float = 0.0
    alive: bool = True
    note: str = ""

    def changes(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for node, p in self.params.items():
            ch = {k: (len(v) if k in ("demos", "demo_pool") else v) for k, v in p.items()}
            if "instructions" in ch:
                text = str(ch["instructions"])
                ch["instructions"] = text if len(text) <= 80 else text[:77] + "..."
            out[node] = ch
        return out


def signature_instruction(sig: Any) -> str:
    """An instruction written from the signature alone: what to read, what to give, the options."""
    ins = ", ".join(f.name.replace("_", " ") for f in sig.inputs) or "input"
    parts = []
    for f in sig.outputs:
        opts = literal_options(f.annotation)
        what = f.name.replace("_", " ")
        if f.desc and f.desc != what:
            what += f" ({f.desc})"
        if opts:
            what += " -- exactly one of: " + ", ".join(str(o) for o in opts)
        parts.append(what)
    return f"Read the {ins} and give the {'; and the '.join(parts)}."


def _label_value(demo: Mapping[str, Any], sig: Any) -> str | None:
    outs = [f for f in sig.outputs if literal_options(f.annotation)]
    return str(demo.get(outs[0].name)) if len(outs) == 1 else None


def balanced(pool: Sequence[tuple[int, Demo]], sig: Any, k: int, rng: random.Random) -> list[tuple[int, Demo]]:
    """``k`` demos, round-robin over the label values when the node has one label output (a small
    model copies the label of the demos it sees: every label shown, none twice before all once)."""
    items = list(pool)
    rng.shuffle(items)
    groups: dict[str | None, list[tuple[int, Demo]]] = {}
    for item in items:
        groups.setdefault(_label_value(item[1], sig), []).append(item)
    order = sorted(groups, key=lambda g: str(g))
    rng.shuffle(order)
    out: list[tuple[int, Demo]] = []
    while len(out) < k and any(groups.values()):
        for g in order:
            if groups[g] and len(out) < k:
                out.append(groups[g].pop(0))
    return out


def _scores_labels(module: Any) -> bool:
    if "decode" not in module.tunable:
        return False
    try:
        check_score_signature(module.signature)
    except DefinitionError:
        return False
    return True


def backend_scores(ctx: RunContext, lm_name: str | None) -> bool:
    """Whether the backend behind ``lm_name`` scores continuations (log-prob decoding)."""
    backend = ctx.lm if lm_name is None else ctx.lms.get(lm_name)
    if backend is None:
        return lm_name is None  # the default model: the embedded llama.cpp backend, which scores
    caps = getattr(backend, "capabilities", None)
    if caps is not None and hasattr(caps, "scoring"):
        return bool(caps.scoring)
    return bool(getattr(backend, "supports_scoring", False))

def tunable_modules(program: Program) -> dict[str, Any]:
    """Every module with tunable parameters, nested ones included, by path (schedule order)."""
    paths = dict.fromkeys(path.rsplit(".", 1)[0] for path, _ in program.named_parameters())
    return {p: program.module(p) for p in paths}


def _per_row(program: Program, spec: Spec | None = None) -> float:
    """Upper bound of logical model calls per row: a generating node may need a repair call; a
    calibrated scoring node makes two scoring calls; other modules say themselves."""
    prog = spec.program if spec is not None and spec.program is not None else program
    total = 0.0
    for n in prog.nodes:
        m = n.module
        dec = getattr(m, "decode", None)
        if dec == "calibrated":
            total += 2
        elif dec == "score":
            total += 1
        elif getattr(m, "repair", False) and m.kind in ("predict", "chain_of_thought"):
            total += m.estimated_calls()  # counts the repair call
        else:
            total += m.estimated_calls()
    return max(1.0, total)



__all__ = ["Spec", "backend_scores", "balanced", "signature_instruction", "tunable_modules"]
