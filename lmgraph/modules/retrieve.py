"""Retrieve: ``query -> passages: list[str]`` from a named retriever resource.

A retriever is anything with a ``name`` and a ``search(query, k)`` method (sync or async)
returning passages. A plain list of strings (or of dicts with ``text`` and optional
``title``/``id``) is wrapped in :class:`BM25Retriever`. The retriever itself is a runtime
resource: an artifact stores only its name and ``k``.

Resource names: a retriever's own ``name`` (or ``Retrieve(..., name=...)``); a plain list given
without a name is named after the node it is added to, ``"<node>.corpus"``, so two nodes over
different lists never share a name (and, after save/load, a corpus).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import DefinitionError, RunError
from ..signatures import FieldSpec, Signature
from .base import Module, need_resource

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall

__all__ = ["BM25Retriever", "FunctionRetriever", "Passage", "Retrieve", "Retriever", "tokenize"]


@dataclass(frozen=True)
class Passage:
    """One retrieved document; ``render()`` is what the pipeline sees."""

    text: str
    title: str | None = None
    id: str | None = None
    score: float = 0.0

    def render(self) -> str:
        return f"{self.title} | {self.text}" if self.title else self.text


@runtime_checkable
class Retriever(Protocol):
    name: str

    def search(self, query: str, k: int) -> Any:
        """Return (or, if async, resolve to) a list of Passage / str / {"text": ...}."""
        ...


STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she should
so some such than that the their theirs them themselves then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you
your yours yourself yourselves s t
""".split())

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens without English stopwords (the default BM25 tokenizer)."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def to_passage(item: Any, index: int = 0) -> Passage:
    """Normalise a str / mapping / Passage into a Passage (``id`` defaults to the index)."""
    if isinstance(item, Passage):
        return item
    if isinstance(item, str):
        return Passage(item, id=str(index))
    if isinstance(item, Mapping) and isinstance(item.get("text"), str):
        title = item.get("title")
        return Passage(item["text"], title=str(title) if title else None,
                       id=str(item.get("id", index)), score=float(item.get("score", 0.0)))
    raise TypeError(f"expected a string, a Passage or a dict with 'text', got {type(item).__name__}")


_OKAPI: list[type] = []


def _okapi_class() -> type:
    """``rank_bm25.BM25Okapi`` with Lucene's always-positive idf, log(1 + (N - n + .5) / (n + .5)).

    The textbook idf is zero or negative for a term in half the documents or more, so on a small
    corpus a query term like "France" in 2 of 4 documents would not count at all.
    """
    if not _OKAPI:
        from rank_bm25 import BM25Okapi

        class _Okapi(BM25Okapi):  # type: ignore[misc]  # rank_bm25 is untyped: its base class is Any
            def _calc_idf(self, nd: dict[str, int]) -> None:
                n = self.corpus_size
                self.idf = {w: math.log(1.0 + (n - df + 0.5) / (df + 0.5)) for w, df in nd.items()}
                self.average_idf = sum(self.idf.values()) / max(1, len(self.idf))

        _OKAPI.append(_Okapi)
    return _OKAPI[0]


class BM25Retriever:
    """Okapi BM25 over an in-memory corpus (``rank_bm25``; Lucene idf); the index is built on first search."""

    def __init__(self, docs: Sequence[Any], *, name: str = "corpus",
                 tokenizer: Callable[[str], list[str]] | None = None) -> None:
        if isinstance(docs, (str, bytes)) or not isinstance(docs, Sequence) or not docs:
            raise DefinitionError("a BM25 corpus must be a non-empty list of documents",
                                  fix="pass a list of strings or of dicts with a 'text' key.")
        try:
            self.passages = tuple(to_passage(d, i) for i, d in enumerate(docs))
        except TypeError as e:
            raise DefinitionError(f"bad corpus document: {e}",
                                  fix="pass a list of strings or of dicts with a 'text' key.") from None
        self.name = name
        self.tokenizer = tokenizer or tokenize
        self._bm25: Any = None
        self._lock = threading.Lock()

    def _index(self) -> Any:
        if self._bm25 is None:
            with self._lock:
                if self._bm25 is None:
                    corpus = [self.tokenizer(p.render()) for p in self.passages]
                    self._bm25 = _okapi_class()(corpus) if any(corpus) else False
        return self._bm25

    def scores(self, query: str) -> list[float]:
        bm25, terms = self._index(), self.tokenizer(query)
        if not bm25 or not terms:
            return [0.0] * len(self.passages)
        return [float(s) for s in bm25.get_scores(terms)]

    def search(self, query: str, k: int) -> list[Passage]:
        scores = self.scores(query)
        # highest score first; ties keep corpus order (deterministic)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        return [Passage(self.passages[i].text, self.passages[i].title, self.passages[i].id, scores[i])
                for i in order]

    def __repr__(self) -> str:
        return f"BM25Retriever({self.name!r}, {len(self.passages)} docs)"


class FunctionRetriever:
    """Wrap ``fn(query, k)`` (sync or async; e.g. a dense index or a remote search API)."""

    def __init__(self, fn: Callable[[str, int], Any], *, name: str | None = None) -> None:
        name = name or getattr(fn, "__name__", None)
        if not callable(fn) or not name or name == "<lambda>":
            raise DefinitionError("FunctionRetriever needs a callable and a name",
                                  fix="pass FunctionRetriever(fn, name='my_index').")
        self.fn = fn
        self.name = name

    async def search(self, query: str, k: int) -> list[Any]:
        found: list[Any]
        if inspect.iscoroutinefunction(self.fn):
            found = await self.fn(query, k)
            return found
        out = await asyncio.to_thread(self.fn, query, k)  # a blocking call must not stall the loop
        found = await out if inspect.isawaitable(out) else out
        return found

    def __repr__(self) -> str:
        return f"FunctionRetriever({self.name!r})"


def as_retriever(obj: Any, name: str | None = None) -> Any:
    if isinstance(obj, (list, tuple)):
        return BM25Retriever(obj, name=name or "corpus")
    if hasattr(obj, "search") and callable(obj.search):
        if not name and not isinstance(getattr(obj, "name", None), str):
            raise DefinitionError("the retriever has no name", fix="give it a `name` attribute or pass name=... .")
        return obj
    if callable(obj):
        return FunctionRetriever(obj, name=name)
    raise DefinitionError(f"cannot retrieve from a {type(obj).__name__}",
                          fix="pass a list of strings/dicts (BM25), a retriever with .search(query, k), "
                              "or a function fn(query, k).")


QUERY = FieldSpec("query", str, "the search query")
PASSAGES = FieldSpec("passages", list[str], "retrieved passages, best first")
_SIGNATURE = Signature([QUERY], [PASSAGES], "Retrieve the passages most relevant to the query.")


class Retrieve(Module):
    """Search a retriever: ``query -> passages: list[str]``."""

    kind = "retrieve"
    config_model = "RetrieveConfig"
    tunable = ("k",)

    def __init__(self, retriever_or_corpus: Any, *, k: int = 3, name: str | None = None) -> None:
        self.retriever = as_retriever(retriever_or_corpus, name)
        self.retriever_name = name or self.retriever.name
        # an unnamed plain list: the pipeline names it after the node (``at_node``)
        self._derived_name = name is None and isinstance(retriever_or_corpus, (list, tuple))
        self.k = k
        self._check()
        self._freeze()

    def at_node(self, node: str) -> Retrieve:
        """This module as added to ``node``: an unnamed plain-list corpus is named ``"<node>.corpus"``."""
        if not self._derived_name:
            return self
        return self._copy_with({"retriever_name": f"{node}.corpus", "_derived_name": False})  # type: ignore[return-value]

    def _check(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise DefinitionError(f"k must be a positive integer, got {self.k!r}", fix="pass k=3 (or more).")

    @property
    def signature(self) -> Signature:
        return _SIGNATURE

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        query = inputs["query"]
        if not isinstance(query, str):
            query = str(query)
        found = self.retriever.search(query, self.k)
        if inspect.isawaitable(found):
            found = await found
        try:
            passages = [to_passage(p, i) for i, p in enumerate(found)][: self.k]
        except (TypeError, ValueError) as e:
            raise RunError(f"retriever {self.retriever_name!r} returned something unusable: {e}",
                           node=call.node) from e
        call.trace.meta["retrieved"] = [{"id": p.id, "score": round(p.score, 6)} for p in passages]
        return {"passages": [p.render() for p in passages]}

    def kind_config(self) -> dict[str, Any]:
        return {"retriever": self.retriever_name}

    @classmethod
    def kind_kwargs(cls, config: Any, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> dict[str, Any]:
        name = config.retriever
        return {"retriever_or_corpus": need_resource(resources, name, "retriever"), "name": name}

    def resources(self) -> dict[str, Any]:
        return {self.retriever_name: self.retriever}

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        return 0  # a search, no model call

    def max_items(self, field: str) -> int | None:
        return self.k if field == "passages" else None

    def describe(self) -> str:
        return f"Retrieve[{self.retriever_name}, k={self.k}]"
