"""Builders several test modules share: a one-node sentiment program, a fake model that gets it
right only when the prompt holds demos, and labelled rows for it."""

from __future__ import annotations

import re

import lmgraph as lg
from lmgraph.testing import request_text


def sentiment_program() -> lg.Program:
    """``sentence -> sentiment`` (completion format) in node ``clf``; output ``label``."""
    p = lg.Pipeline("sentiment")
    n = p.add(lg.Predict("sentence -> sentiment: Literal['negative', 'positive']", format="completion"),
              name="clf", sentence=p.input("sentence"))
    p.output(label=n.sentiment)
    return p.build()


def sentiment_fn(req: lg.LMRequest) -> str:
    """Completion format: the gold label when the prompt holds a demo, else always 'positive'."""
    text = request_text(req)
    has_demo = text.count("Sentence:") > 1
    last = re.findall(r"Sentence: (.*)", text)[-1]
    gold = "positive" if "good" in last else "negative"
    return " " + (gold if has_demo else "positive")


def sentiment_rows(n: int, *, period: int = 2) -> list[dict[str, str]]:
    """``n`` rows; row ``i`` is negative ('bad film i') when ``i % period == 0``, else positive."""
    return [{"sentence": f"{'good' if i % period else 'bad'} film {i}",
             "label": "positive" if i % period else "negative"} for i in range(n)]
