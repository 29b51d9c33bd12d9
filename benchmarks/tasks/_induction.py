"""Rows of an Instruction Induction task (``shared/data/instruction_induction``): ``induce/`` (the
rows APE proposes from) is the labelled pool, ``execute/`` (held out, 100 rows) the test set."""

from __future__ import annotations

import json
from typing import Any

from lmgraph.evaluation import sample, split
from lmgraph.evaluation.datasets import dataset_file

from . import Sizes, Task, classification_dspy, classification_lmgraph, label_feedback, label_metric


def rows(task: str, part: str, input_field: str) -> list[dict[str, Any]]:
    """``part`` ("induce" or "execute") of ``task``: ``input_field`` <- the row's input, ``label`` <- its output."""
    data = json.loads(dataset_file("instruction_induction", part, f"{task}.json").read_text(encoding="utf-8"))
    return [{"id": f"{task}-{part}-{key}", input_field: ex["input"], "label": ex["output"]}
            for key, ex in data["examples"].items()]


def instruction(task: str) -> str:
    """The first human-written instruction of the task's annotations (APE's human baseline), as given."""
    data = json.loads(dataset_file("instruction_induction", "annotations", f"{task}.json").read_text(encoding="utf-8"))
    return str(data["annotations"][0])


def splits(task: str, input_field: str, seed: int, sizes: Sizes):
    """Train and val: seeded parts of ``induce`` less any row whose input is also a test input (one
    such pair in ``sentence_similarity``); test: a seeded sample of ``execute`` (all 100 of its rows
    when ``sizes.test`` is 100, so every seed is tested on the same rows)."""
    held_out = rows(task, "execute", input_field)
    seen = {r[input_field] for r in held_out}
    pool = [r for r in rows(task, "induce", input_field) if r[input_field] not in seen]
    train, val = split(pool, [sizes.train, sizes.val], seed=seed)
    return train, val, sample(held_out, sizes.test, seed=seed)


def task(name: str, source: str, description: str, output: str, labels: list[str], max_tokens: int = 16) -> Task:
    """A one-node classification task over Instruction Induction's ``source``: ``sentences`` (the
    row's input) -> ``output``, one of ``labels``, with the task's first human instruction."""
    return Task(
        name=name, description=description, inputs=("sentences",), output=output,
        splits=lambda seed, sizes: splits(source, "sentences", seed, sizes),
        lmgraph_program=lambda: classification_lmgraph(name, "sentences", output, labels, instruction(source),
                                                       max_tokens),
        dspy_program=lambda: classification_dspy("sentences", output, labels, instruction(source)),
        metrics={"accuracy": label_metric(output)}, main="accuracy", max_tokens=max_tokens,
        feedback=label_feedback(output, labels),
        quick=Sizes(16, 16, 20), full=Sizes(50, 50, 100),
    )
