"""TREC question classification, 6 coarse labels. Train/val from train_5500, test from TREC_10."""

from lmgraph.evaluation import load_trec, sample, split
from lmgraph.evaluation.datasets import TREC_COARSE

from . import Sizes, Task, classification_dspy, classification_lmgraph, label_feedback, label_metric

LABELS = list(TREC_COARSE.values())
INSTRUCTION = "What kind of answer does the question ask for?"
MAX_TOKENS = 32


def splits(seed: int, sizes: Sizes):
    train, val = split(load_trec("train"), [sizes.train, sizes.val], seed=seed)
    return train, val, sample(load_trec("test"), sizes.test, seed=seed)


TASK = Task(
    name="trec", description="TREC coarse question type (6 labels)",
    inputs=("question",), output="answer_type", splits=splits,
    lmgraph_program=lambda: classification_lmgraph("trec", "question", "answer_type", LABELS, INSTRUCTION, MAX_TOKENS),
    dspy_program=lambda: classification_dspy("question", "answer_type", LABELS, INSTRUCTION),
    metrics={"accuracy": label_metric("answer_type")}, main="accuracy", max_tokens=MAX_TOKENS,
    feedback=label_feedback("answer_type", LABELS),
    quick=Sizes(16, 16, 20), full=Sizes(50, 50, 150),
)
