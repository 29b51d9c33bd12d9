"""Sentence similarity (Instruction Induction's ``sentence_similarity``, STS pairs): rate 0-5 how far two
sentences say the same thing, as one of 6 labelled grades. One of the unseen tasks (see
``UNSEEN_TASKS``); its program and protocol were fixed before its first run."""

from . import Sizes, Task, _induction, classification_dspy, classification_lmgraph, label_feedback, label_metric

LABELS = ["0 - definitely not", "1 - probably not", "2 - possibly", "3 - probably", "4 - almost perfectly",
          "5 - perfectly"]
SOURCE = "sentence_similarity"
MAX_TOKENS = 16


def _instruction() -> str:
    return _induction.instruction(SOURCE)


TASK = Task(
    name="sentence_similarity", description="sentence similarity grade (6 labels, Instruction Induction)",
    inputs=("sentences",), output="similarity",
    splits=lambda seed, sizes: _induction.splits(SOURCE, "sentences", seed, sizes),
    lmgraph_program=lambda: classification_lmgraph("sentence_similarity", "sentences", "similarity", LABELS,
                                                   _instruction(), MAX_TOKENS),
    dspy_program=lambda: classification_dspy("sentences", "similarity", LABELS, _instruction()),
    metrics={"accuracy": label_metric("similarity")}, main="accuracy", max_tokens=MAX_TOKENS,
    feedback=label_feedback("similarity", LABELS),
    quick=Sizes(16, 16, 20), full=Sizes(50, 50, 100),
)
