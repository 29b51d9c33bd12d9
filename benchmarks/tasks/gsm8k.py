"""GSM8K with chain of thought; numeric match on the final answer. Train/val from train.jsonl,
test a fixed seeded subset of test.jsonl."""

from __future__ import annotations

from typing import Any

from lmgraph.evaluation import load_gsm8k, parse_number, sample, split

from . import Sizes, Task

INSTRUCTION = "Solve the math word problem. Give the final answer as a number."
MAX_TOKENS = 200


def splits(seed: int, sizes: Sizes):
    train, val = split(load_gsm8k("train"), [sizes.train, sizes.val], seed=seed)
    return train, val, sample(load_gsm8k("test"), sizes.test, seed=seed)


def lmgraph_program() -> Any:
    import lmgraph as lg

    p = lg.Pipeline("gsm8k")
    q = p.input("question")
    node = p.add(lg.ChainOfThought(lg.Signature.parse("question -> answer", instructions=INSTRUCTION),
                                   max_tokens=MAX_TOKENS), name="solve", question=q)
    p.output(answer=node.answer)
    return p.build()


def dspy_program() -> Any:
    import dspy

    return dspy.ChainOfThought(dspy.Signature({"question": dspy.InputField(), "answer": dspy.OutputField()},
                                              INSTRUCTION))


def numeric(row: dict, pred: dict) -> float:
    p, g = parse_number(pred.get("answer", "")), parse_number(row["answer"])
    return float(p is not None and g is not None and abs(p - g) <= 1e-6 * max(1.0, abs(g)))


TASK = Task(
    name="gsm8k", description="GSM8K, chain of thought (numeric match)",
    inputs=("question",), output="answer", splits=splits,
    lmgraph_program=lmgraph_program, dspy_program=dspy_program,
    metrics={"accuracy": numeric}, main="accuracy", max_tokens=MAX_TOKENS, label_field="answer",
    quick=Sizes(8, 8, 10), full=Sizes(30, 30, 60),
)
