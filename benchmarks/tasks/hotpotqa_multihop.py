"""Multi-hop HotPotQA as a graph: retrieve -> write a second-hop query -> retrieve -> answer.

    question --retrieve1 (BM25, k=2)--> context
    context, question --generate_query (Predict)--> search_query
    search_query --retrieve2 (BM25, k=2)--> more_context
    context, more_context, question --answer (Predict)--> answer

The data, the seeded train/val/test splits, the corpus and the BM25 index are those of
``hotpotqa.py`` (imported, not copied), so a row here is the same row there; only the program
differs. Both frameworks run the same BM25 for both hops.

Each row also carries a ``search_query`` label, worked out from the row's two gold (supporting)
paragraph titles: the title of the gold paragraph hop 1 did not retrieve (when hop 1 found both,
the second gold title). It is what the second hop should search for, and the program exports its
generated ``search_query``, so an optimizer that reads labels can give the query node labelled
demos (with the hop-1 passages it really sees, computed by running the model-free hop 1). The
answer node's ``more_context`` depends on the generated query, so it has no labelled source:
its demos come from the program's own passing runs (bootstrapped). Scoring reads ``answer`` only
(F1, the main metric, and EM, as in ``hotpotqa.py``).
"""

from __future__ import annotations

import functools
from typing import Any

from . import Sizes, Task
from .hotpotqa import em, f1, retriever
from .hotpotqa import splits as single_hop_splits

K = 2
QUERY_MAX_TOKENS = 24
MAX_TOKENS = 64
QUERY_INSTRUCTION = ("The question needs two facts; the context gives the first. Write a short search query -- "
                     "usually the name of the person, place or work the context points to -- that finds the "
                     "second fact.")
ANSWER_INSTRUCTION = "Answer the question with a short phrase from the context or the more context."
QUERY_SIG = "context: list[str], question -> search_query"
ANSWER_SIG = "context: list[str], more_context: list[str], question -> answer"


def _title(passage: Any) -> str:
    return str(getattr(passage, "title", "") or "")


@functools.lru_cache(maxsize=4096)
def _hop1_titles(question: str) -> tuple[str, ...]:
    return tuple(_title(p) for p in retriever().search(question, K))


def query_label(row: dict, hop1_titles: tuple[str, ...] | None = None) -> str:
    """The second hop's target query for a row: the gold title hop 1 missed (else the last gold title)."""
    gold = [str(t) for t in row.get("gold_titles") or []]
    if not gold:
        return ""
    found = _hop1_titles(row["question"]) if hop1_titles is None else hop1_titles
    missed = [t for t in gold if t not in found]
    return missed[0] if missed else gold[-1]


def with_query_label(row: dict) -> dict:
    label = query_label(row)
    return {**row, "search_query": label} if label else dict(row)


def splits(seed: int, sizes: Sizes) -> tuple[list[dict], list[dict], list[dict]]:
    """``hotpotqa.py``'s seeded splits (the same rows), each row with its ``search_query`` label."""
    train, val, test = single_hop_splits(seed, sizes)
    return ([with_query_label(r) for r in train], [with_query_label(r) for r in val],
            [with_query_label(r) for r in test])


def build_program(search: Any = None, *, k: int = K) -> Any:
    """The four-node graph over ``search`` (a retriever; default: the shared HotPotQA BM25)."""
    import lmgraph as lg

    search = retriever() if search is None else search
    p = lg.Pipeline("hotpotqa_multihop")
    q = p.input("question")
    hop1 = p.add(lg.Retrieve(search, k=k), name="retrieve1", query=q)
    gen = p.add(lg.Predict(lg.Signature.parse(QUERY_SIG, instructions=QUERY_INSTRUCTION),
                           max_tokens=QUERY_MAX_TOKENS), name="generate_query", context=hop1.passages, question=q)
    hop2 = p.add(lg.Retrieve(search, k=k), name="retrieve2", query=gen.search_query)
    ans = p.add(lg.Predict(lg.Signature.parse(ANSWER_SIG, instructions=ANSWER_INSTRUCTION), max_tokens=MAX_TOKENS),
                name="answer", context=hop1.passages, more_context=hop2.passages, question=q)
    p.output(answer=ans.answer, search_query=gen.search_query)
    return p.build()


def lmgraph_program() -> Any:
    return build_program()


def dspy_program(search: Any = None, *, k: int = K) -> Any:
    """The same graph in DSPy: two ``dspy.Predict`` modules, the same BM25 for both hops."""
    import dspy

    search = retriever() if search is None else search

    def passages(query: str) -> list[str]:
        return [p.render() if hasattr(p, "render") else str(p) for p in search.search(str(query), k)]

    class MultiHop(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            qsig = dspy.Signature({"context": dspy.InputField(), "question": dspy.InputField(),
                                   "search_query": dspy.OutputField()}, QUERY_INSTRUCTION)
            asig = dspy.Signature({"context": dspy.InputField(), "more_context": dspy.InputField(),
                                   "question": dspy.InputField(), "answer": dspy.OutputField()}, ANSWER_INSTRUCTION)
            self.generate_query = dspy.Predict(qsig.with_updated_fields("context", type_=list[str]))
            asig = asig.with_updated_fields("context", type_=list[str])
            self.answer = dspy.Predict(asig.with_updated_fields("more_context", type_=list[str]))

        def forward(self, question: str) -> Any:
            context = passages(question)
            query = self.generate_query(context=context, question=question).search_query
            more = passages(query)
            pred = self.answer(context=context, more_context=more, question=question)
            return dspy.Prediction(answer=pred.answer, search_query=query)

    return MultiHop()


TASK = Task(
    name="hotpotqa_multihop",
    description="HotPotQA multi-hop graph: BM25 k=2 -> search query -> BM25 k=2 -> answer (F1, EM)",
    inputs=("question",), output="answer", splits=splits,
    lmgraph_program=lmgraph_program, dspy_program=dspy_program,
    metrics={"f1": f1, "em": em}, main="f1", max_tokens=MAX_TOKENS, label_field="answer",
    quick=Sizes(16, 16, 20), full=Sizes(50, 50, 100),
    notes="rows carry a search_query label (the gold title hop 1 missed) for the query node's labelled demos",
)
