"""HoVer claim verification from the claim alone (the dataset ships no Wikipedia text): SUPPORTED or
NOT_SUPPORTED, 2 balanced labels. One of the unseen tasks (see ``UNSEEN_TASKS``); its program and
protocol were fixed before its first run. Train, val and test are disjoint seeded parts of dev.json."""

from __future__ import annotations

import json
from typing import Any

from lmgraph.evaluation import split
from lmgraph.evaluation.datasets import dataset_file

from . import Sizes, Task, classification_dspy, classification_lmgraph, label_feedback, label_metric

LABELS = ["SUPPORTED", "NOT_SUPPORTED"]
INSTRUCTION = "Is the claim supported by the facts on Wikipedia?"
MAX_TOKENS = 16


def rows() -> list[dict[str, Any]]:
    """dev.json's rows, each claim once (18 claims appear twice; the first is kept), so no test claim
    is also a training claim."""
    data = json.loads(dataset_file("hover", "dev.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    for r in data:
        out.setdefault(r["claim"], {"id": f"hover-{r['uid']}", "claim": r["claim"], "label": r["label"]})
    return list(out.values())


def splits(seed: int, sizes: Sizes):
    train, val, test = split(rows(), [sizes.train, sizes.val, sizes.test], seed=seed)
    return train, val, test


TASK = Task(
    name="hover", description="HoVer claim verification from the claim alone (2 labels)",
    inputs=("claim",), output="verdict", splits=splits,
    lmgraph_program=lambda: classification_lmgraph("hover", "claim", "verdict", LABELS, INSTRUCTION, MAX_TOKENS),
    dspy_program=lambda: classification_dspy("claim", "verdict", LABELS, INSTRUCTION),
    metrics={"accuracy": label_metric("verdict")}, main="accuracy", max_tokens=MAX_TOKENS,
    feedback=label_feedback("verdict", LABELS),
    quick=Sizes(16, 16, 20), full=Sizes(50, 50, 150),
)
