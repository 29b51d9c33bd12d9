"""HotPotQA: BM25 (k=3) over hotpotqa/corpus.jsonl, then answer. Train/val/test are disjoint
seeded parts of dev500.jsonl. Both frameworks use the same BM25 index (rank-bm25 via lmgraph's
BM25Retriever), so only the language-model part differs."""

from __future__ import annotations

import functools
from typing import Any

from lmgraph.evaluation import f1_score, load_hotpotqa, load_hotpotqa_corpus, normalize_answer, split

from . import Sizes, Task

INSTRUCTION = "Answer the question with a short phrase from the context."
MAX_TOKENS = 64
K = 3


@functools.lru_cache(maxsize=1)
def retriever() -> Any:
    from lmgraph.modules.retrieve import BM25Retriever

    return BM25Retriever([{"id": d["id"], "title": d["title"], "text": d["text"]} for d in load_hotpotqa_corpus()],
                         name="hotpotqa")


def passages(question: str) -> list[str]:
    return [p.render() for p in retriever().search(question, K)]


def splits(seed: int, sizes: Sizes):
    train, val, test = split(load_hotpotqa(), [sizes.train, sizes.val, sizes.test], seed=seed)
    return train, val, test


def lmgraph_program() -> Any:
    import lmgraph as lg

    p = lg.Pipeline("hotpotqa")
    q = p.input("question")
    docs = p.add(lg.Retrieve(retriever(), k=K), name="retrieve", query=q)
    ans = p.add(lg.Predict(lg.Signature.parse("context: list[str], question -> answer", instructions=INSTRUCTION),
                           max_tokens=MAX_TOKENS), name="answer", context=docs.passages, question=q)
    p.output(answer=ans.answer)
    return p.build()


def dspy_program() -> Any:
    import dspy

    class RAG(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            sig = dspy.Signature({"context": dspy.InputField(), "question": dspy.InputField(),
                                  "answer": dspy.OutputField()}, INSTRUCTION)
            self.answer = dspy.Predict(sig.with_updated_fields("context", type_=list[str]))

        def forward(self, question: str) -> Any:
            return self.answer(context=passages(question), question=question)

    return RAG()


def _golds(row: dict) -> list[str]:
    return [str(a) for a in (row.get("answers") or [row["answer"]])]


def em(row: dict, pred: dict) -> float:
    p = normalize_answer(pred.get("answer", ""))
    return float(any(p == normalize_answer(g) for g in _golds(row)))


def f1(row: dict, pred: dict) -> float:
    return max(f1_score(str(pred.get("answer", "")), g) for g in _golds(row))


TASK = Task(
    name="hotpotqa", description="HotPotQA, BM25 k=3 -> answer (EM, F1)",
    inputs=("question",), output="answer", splits=splits,
    lmgraph_program=lmgraph_program, dspy_program=dspy_program,
    metrics={"f1": f1, "em": em}, main="f1", max_tokens=MAX_TOKENS, label_field="answer",
    quick=Sizes(16, 16, 20), full=Sizes(50, 50, 100),
)
