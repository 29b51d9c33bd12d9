"""Per-input demo selection: the ``knn`` demos of a pool most similar to the current inputs (BM25).

A small model copies the labels and the shape of the demos it is shown; demos that resemble the
input ("How many ..." questions for a "How many ..." question) carry the most useful signal. The
pool is plain JSON data stored with the module (it travels with the compiled artifact); the
index is built once per pool, lazily, in process.

Leave-one-out: a row is never its own demo, so scoring a program on the rows its pool came from is
honest. A pool entry is the current row's when its inputs equal the current inputs -- or when they
share the value of a field that no two pool entries share (the row's identity, e.g. its question):
in a graph an upstream node can change another input of this node (a multi-hop answer node whose
second passages depend on a query node being compiled too), and the row's own demo, carrying its
gold answer, must not come back as the "nearest" one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_WORD = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _text(values: Mapping[str, Any], fields: Sequence[str]) -> str:
    return " ".join(str(values.get(f, "")) for f in fields)


class DemoIndex:
    """BM25 over the input fields of a demo pool."""

    def __init__(self, pool: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
        from rank_bm25 import BM25Okapi

        self.pool = pool
        self.fields = tuple(fields)
        self.keys = [tuple(str(d.get(f, "")) for f in self.fields) for d in pool]
        # the fields whose value identifies one entry (distinct across a pool of two or more)
        self.identifying = [j for j in range(len(self.fields))
                            if len(pool) > 1 and len({k[j] for k in self.keys}) == len(self.keys)]
        docs = [_tokens(_text(d, self.fields)) or ["_"] for d in pool]
        self.bm25 = BM25Okapi(docs)

    def select(self, inputs: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
        """The ``k`` most similar pool entries, least similar first (the closest sits next to the
        input), skipping the current row's own entry (see the module docstring); ties keep pool
        order."""
        if k <= 0 or not self.pool:
            return []
        own = tuple(str(inputs.get(f, "")) for f in self.fields)
        scores = self.bm25.get_scores(_tokens(_text(inputs, self.fields)) or ["_"])
        ranked = sorted((i for i in range(len(self.pool)) if not self._is_own(i, own)),
                        key=lambda i: (-float(scores[i]), i))[:k]
        return [dict(self.pool[i]) for i in reversed(ranked)]

    def _is_own(self, i: int, own: tuple[str, ...]) -> bool:
        key = self.keys[i]
        return key == own or any(key[j] == own[j] for j in self.identifying)
