"""Per-input demo selection: the ``knn`` demos of a pool most similar to the current inputs (BM25).

A small model copies the labels and the shape of the demos it is shown; demos that resemble the
input ("How many ..." questions for a "How many ..." question) carry the most useful signal. The
pool is plain JSON data stored with the module (it travels with the compiled artifact); the
index is built once per pool, lazily, in process. A pool entry whose inputs equal the current
inputs is never chosen (leave-one-out: a row is never its own demo, so scoring a program on the
rows its pool came from is honest).
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
        docs = [_tokens(_text(d, self.fields)) or ["_"] for d in pool]
        self.bm25 = BM25Okapi(docs)

    def select(self, inputs: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
        """The ``k`` most similar pool entries, least similar first (the closest sits next to the
        input), skipping entries whose inputs equal ``inputs``; ties keep pool order."""
        if k <= 0 or not self.pool:
            return []
        own = tuple(str(inputs.get(f, "")) for f in self.fields)
        scores = self.bm25.get_scores(_tokens(_text(inputs, self.fields)) or ["_"])
        ranked = sorted((i for i in range(len(self.pool)) if self.keys[i] != own),
                        key=lambda i: (-float(scores[i]), i))[:k]
        return [dict(self.pool[i]) for i in reversed(ranked)]
