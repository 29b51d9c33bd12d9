"""Banking77 intent classification (77 labels). Train/val from train.csv, test from test.csv."""

from lmgraph.evaluation import banking77_labels, load_banking77, sample, split

from . import Sizes, Task, classification_dspy, classification_lmgraph, label_metric

INSTRUCTION = "Which banking intent does the customer message express?"
MAX_TOKENS = 32


def splits(seed: int, sizes: Sizes):
    train, val = split(load_banking77("train"), [sizes.train, sizes.val], seed=seed)
    return train, val, sample(load_banking77("test"), sizes.test, seed=seed)


TASK = Task(
    name="banking77", description="Banking77 intent (77 labels)",
    inputs=("text",), output="intent", splits=splits,
    lmgraph_program=lambda: classification_lmgraph("banking77", "text", "intent", banking77_labels(),
                                                   INSTRUCTION, MAX_TOKENS),
    dspy_program=lambda: classification_dspy("text", "intent", banking77_labels(), INSTRUCTION),
    metrics={"accuracy": label_metric("intent")}, main="accuracy", max_tokens=MAX_TOKENS,
    quick=Sizes(16, 16, 20), full=Sizes(50, 50, 150),
)
