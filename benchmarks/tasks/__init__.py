"""Benchmark task definitions, one small file per task.

A task says how to split its data (seeded, in the code), how to build the zero-shot program in
both frameworks from ONE shared description (instruction, field names, label set, max tokens),
and how to score a prediction. ``benchmarks/suite.py`` runs every system on every task.

To add a task: write ``benchmarks/tasks/<name>.py`` defining ``TASK = Task(...)`` (see
``trec.py``) and add its name to ``ORDER`` (or ``GRAPH_TASKS``) below.

DSPy is imported only inside the ``dspy_*`` builders, so the task files load without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]
ORDER = ("trec", "sst2", "banking77", "hotpotqa", "gsm8k")
# multi-stage tasks compiled as graphs (run by name: --tasks hotpotqa_multihop,bfcl): multi-hop
# HotPotQA (retrieve -> write a query -> retrieve -> answer) and BFCL function calling (choose a
# function -> write the call)
GRAPH_TASKS = ("hotpotqa_multihop", "bfcl")
# tasks added on 2026-12-05 to check the default compiler on tasks it was never developed on (run by
# name with benchmarks/compile_default.py): their programs, instructions and protocol were fixed and
# committed before their first run and are not changed after seeing a result
UNSEEN_TASKS = ("hover", "wic", "sentence_similarity")


@dataclass(frozen=True)
class Sizes:
    train: int
    val: int
    test: int


@dataclass(frozen=True)
class Task:
    """One benchmark task.

    ``splits(seed, sizes)`` -> (train, val, test) rows (dicts); the test rows are never shown to
    an optimizer. ``inputs`` are the row keys the programs read. ``lmgraph_program()`` and
    ``dspy_program()`` build the zero-shot programs; ``score(row, prediction)`` scores a
    prediction given as a plain dict of output fields (the same function for both frameworks,
    so a score means the same thing on both sides). ``metrics`` names extra reported metrics
    (``main`` is the one optimizers maximise).
    """

    name: str
    description: str
    inputs: tuple[str, ...]
    output: str                      # the predicted field that ``score`` reads
    splits: Callable[[int, Sizes], tuple[list[Row], list[Row], list[Row]]]
    lmgraph_program: Callable[[], Any]
    dspy_program: Callable[[], Any]
    metrics: Mapping[str, Callable[[Row, Mapping[str, Any]], float]]
    main: str
    max_tokens: int
    quick: Sizes
    full: Sizes
    label_field: str = "label"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # (row, prediction) -> (main score, text saying what was wrong) for reflective optimizers
    # (lmgraph Reflect, DSPy GEPA); None: a generic "expected X, got Y" from the label field
    feedback: Callable[[Row, Mapping[str, Any]], tuple[float, str]] | None = None

    def score(self, row: Row, pred: Mapping[str, Any] | None, metric: str | None = None) -> float:
        if pred is None:
            return 0.0
        return float(self.metrics[metric or self.main](row, pred))

    def score_feedback(self, row: Row, pred: Mapping[str, Any] | None) -> tuple[float, str]:
        """The main score and feedback text: the same score as ``score(row, pred)``."""
        if pred is None:
            return 0.0, f"no parsable {self.output} was produced; expected {row.get(self.label_field)!r}"
        if self.feedback is not None:
            score, text = self.feedback(row, pred)
            return float(score), text
        score = self.score(row, pred)
        if score >= 1.0:
            return score, "correct"
        return score, (f"{self.main} {score:.2f}: expected {self.output} {str(row.get(self.label_field))[:200]!r}, "
                       f"got {str(pred.get(self.output))[:200]!r}")


def load(name: str) -> Task:
    mod = importlib.import_module(f"tasks.{name}")
    task = getattr(mod, "TASK", None)
    if not isinstance(task, Task):
        raise TypeError(f"benchmarks/tasks/{name}.py must define TASK = Task(...)")
    return task


def all_tasks(names: Sequence[str] | None = None) -> list[Task]:
    return [load(n) for n in (names or ORDER)]


def label_metric(field_name: str) -> Callable[[Row, Mapping[str, Any]], float]:
    def metric(row: Row, pred: Mapping[str, Any]) -> float:
        return float(str(pred.get(field_name, "")).strip().lower() == str(row["label"]).strip().lower())
    return metric


def label_feedback(field_name: str, labels: Sequence[str]) -> Callable[[Row, Mapping[str, Any]], tuple[float, str]]:
    """``label_metric``'s score with feedback: what was expected, what came, the allowed labels."""
    score = label_metric(field_name)

    def feedback(row: Row, pred: Mapping[str, Any]) -> tuple[float, str]:
        s = score(row, pred)
        if s:
            return s, f"correct: {row['label']!r}"
        got = str(pred.get(field_name, "")).strip()
        why = "" if got.lower() in {v.lower() for v in labels} else f" (not one of the labels: {', '.join(labels)})"
        return s, f"wrong: expected {field_name} {row['label']!r}, got {got[:100]!r}{why}"
    return feedback


def classification_lmgraph(name: str, input_field: str, output_field: str, labels: Sequence[str],
                           instruction: str, max_tokens: int, input_desc: str = "") -> Any:
    """``input -> output: Literal[labels]`` as a one-node lmgraph program (lmgraph's defaults)."""
    import lmgraph as lg

    lits = ", ".join(repr(v) for v in labels)
    p = lg.Pipeline(name)
    x = p.input(input_field)
    node = p.add(lg.Predict(lg.Signature.parse(f"{input_field} -> {output_field}: Literal[{lits}]",
                                               instructions=instruction), max_tokens=max_tokens),
                 name="classify", **{input_field: x})
    p.output(**{output_field: getattr(node, output_field)})
    return p.build()


def classification_dspy(input_field: str, output_field: str, labels: Sequence[str], instruction: str) -> Any:
    """The same task as a DSPy ``Predict`` over a class-based signature with a Literal output."""
    from typing import Literal

    import dspy

    sig = dspy.Signature({input_field: dspy.InputField(), output_field: dspy.OutputField()}, instruction)
    sig = sig.with_updated_fields(output_field, type_=Literal[tuple(labels)])  # type: ignore[valid-type]
    return dspy.Predict(sig)
