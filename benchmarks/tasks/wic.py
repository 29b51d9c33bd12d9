"""Word in context (Instruction Induction's ``word_in_context``): does the marked word mean the same in
both sentences? 2 labels. One of the unseen tasks (see ``UNSEEN_TASKS``): added to check the default
compiler on tasks it was never developed on; its program and protocol were fixed before its first run."""

from . import Sizes, Task, _induction, classification_dspy, classification_lmgraph, label_feedback, label_metric

LABELS = ["same", "not the same"]
SOURCE = "word_in_context"
MAX_TOKENS = 16


def _instruction() -> str:
    return _induction.instruction(SOURCE)


TASK = Task(
    name="wic", description="word in context: same meaning in both sentences? (2 labels, Instruction Induction)",
    inputs=("sentences",), output="meaning",
    splits=lambda seed, sizes: _induction.splits(SOURCE, "sentences", seed, sizes),
    lmgraph_program=lambda: classification_lmgraph("wic", "sentences", "meaning", LABELS, _instruction(), MAX_TOKENS),
    dspy_program=lambda: classification_dspy("sentences", "meaning", LABELS, _instruction()),
    metrics={"accuracy": label_metric("meaning")}, main="accuracy", max_tokens=MAX_TOKENS,
    feedback=label_feedback("meaning", LABELS),
    quick=Sizes(16, 16, 20), full=Sizes(50, 50, 100),
)
