"""SST-2 sentiment. Only the 872 GLUE-dev sentences are full sentences (train.tsv holds phrases),
so train, val and test are disjoint seeded parts of them."""

from lmgraph.evaluation import load_sst2, split

from . import Sizes, Task, classification_dspy, classification_lmgraph, label_feedback, label_metric

LABELS = ["negative", "positive"]
INSTRUCTION = "Classify the sentiment of the movie review."
MAX_TOKENS = 32


def splits(seed: int, sizes: Sizes):
    train, val, test = split(load_sst2("test"), [sizes.train, sizes.val, sizes.test], seed=seed)
    return train, val, test


TASK = Task(
    name="sst2", description="SST-2 sentence sentiment (2 labels)",
    inputs=("sentence",), output="sentiment", splits=splits,
    lmgraph_program=lambda: classification_lmgraph("sst2", "sentence", "sentiment", LABELS, INSTRUCTION, MAX_TOKENS),
    dspy_program=lambda: classification_dspy("sentence", "sentiment", LABELS, INSTRUCTION),
    metrics={"accuracy": label_metric("sentiment")}, main="accuracy", max_tokens=MAX_TOKENS,
    feedback=label_feedback("sentiment", LABELS),
    quick=Sizes(16, 16, 20), full=Sizes(50, 50, 150),
)
