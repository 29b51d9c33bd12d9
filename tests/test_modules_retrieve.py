"""Retrieve: BM25 over a corpus, function/async retrievers, config errors, trace details."""

from __future__ import annotations

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError, RunError
from lmgraph.modules import BM25Retriever, FunctionRetriever, Passage, Retrieve
from lmgraph.testing import FunctionLM

DOCS = [
    {"title": "Lyon", "text": "Lyon is a large city in France known for its cuisine.", "id": "lyon"},
    {"title": "Paris", "text": "Paris is the capital of France and its largest city.", "id": "paris"},
    {"title": "Berlin", "text": "Berlin is the capital of Germany.", "id": "berlin"},
    {"title": "Tokyo", "text": "Tokyo is the capital of Japan, in Asia.", "id": "tokyo"},
]


def ctx() -> lg.RunContext:
    return lg.RunContext(lm=FunctionLM(lambda r: "unused"), cache=False)


def retrieval(module: Retrieve) -> lg.Program:
    p = lg.Pipeline("search")
    node = p.add(module, query=p.input("query"))
    p.output(passages=node.passages)
    return p.build()


def test_bm25_ranks_the_matching_doc_first_and_renders_titles() -> None:
    prog = retrieval(Retrieve(DOCS, k=2))
    out = prog.run_sync(ctx(), query="What is the capital of France?")
    assert out.passages[0] == "Paris | Paris is the capital of France and its largest city."
    assert len(out.passages) == 2
    meta = out.trace.node("retrieve").meta["retrieved"]
    assert meta[0]["id"] == "paris" and meta[0]["score"] >= meta[1]["score"]
    assert prog.run_sync(ctx(), query="What is the capital of France?").passages == out.passages


def test_bm25_is_deterministic_on_ties_and_ignores_stopwords() -> None:
    r = BM25Retriever(["the same text", "the same text", "other words here"], name="dups")
    first = r.search("same", 3)
    assert [p.id for p in first] == ["0", "1", "2"]
    assert [p.id for p in r.search("same", 3)] == ["0", "1", "2"]
    # a query of stopwords only scores nothing: corpus order
    assert [p.id for p in r.search("the of and", 2)] == ["0", "1"]
    assert r.search("words", 1)[0].text == "other words here"


def test_plain_strings_and_k_bound() -> None:
    docs = ["apples are red", "bananas are yellow", "the sky is blue"]
    m = Retrieve(docs, k=5)
    assert m.retriever_name == "corpus" and m.config() == {"retriever": "corpus", "k": 5}
    out = retrieval(m).run_sync(ctx(), query="yellow bananas")
    assert out.passages[0] == "bananas are yellow" and len(out.passages) == 3
    assert m.replace(k=1).k == 1 and m.k == 5


def test_function_and_async_retrievers() -> None:
    def dense(query: str, k: int) -> list[object]:
        return ["a " + query, {"text": "b", "title": "T"}, Passage("c")][:k]

    async def remote(query: str, k: int) -> list[str]:
        return [f"hit {i}" for i in range(10)]

    out = retrieval(Retrieve(FunctionRetriever(dense, name="dense"), k=2)).run_sync(ctx(), query="q")
    assert out.passages == ["a q", "T | b"]
    out = retrieval(Retrieve(remote, k=3)).run_sync(ctx(), query="q")  # a bare function works too
    assert out.passages == ["hit 0", "hit 1", "hit 2"]

    class Custom:
        name = "custom"

        async def search(self, query: str, k: int) -> list[Passage]:
            return [Passage(query.upper(), id="x", score=1.5)]

    prog = retrieval(Retrieve(Custom()))
    out = prog.run_sync(ctx(), query="hi")
    assert out.passages == ["HI"]
    assert out.trace.node("retrieve").meta["retrieved"] == [{"id": "x", "score": 1.5}]
    assert set(prog.resources()) == {"custom"}


def test_bad_retriever_output_is_a_run_error() -> None:
    prog = retrieval(Retrieve(FunctionRetriever(lambda q, k: [42], name="broken")))
    with pytest.raises(RunError, match="broken"):
        prog.run_sync(ctx(), query="q")


@pytest.mark.parametrize("make", [
    lambda: Retrieve(42),
    lambda: Retrieve([]),
    lambda: Retrieve(["ok", 3]),
    lambda: Retrieve(DOCS, k=0),
    lambda: Retrieve(lambda q, k: []),  # unnamed function
    lambda: Retrieve(DOCS).replace(k=-1),
    lambda: Retrieve(DOCS).replace(retriever=None),
])
def test_bad_config_is_a_definition_error_with_a_fix(make) -> None:  # noqa: ANN001
    with pytest.raises(DefinitionError, match="Fix:"):
        make()


def test_retrieve_is_immutable() -> None:
    m = Retrieve(DOCS)
    with pytest.raises(AttributeError):
        m.k = 4  # type: ignore[misc]
    assert m.describe() == "Retrieve[corpus, k=3]"
