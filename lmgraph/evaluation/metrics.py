"""Metrics: ``metric(example, prediction, trace) -> float | bool | (float, feedback)``.

Factories return such callables for common cases; any user callable with that shape works.
``prediction`` is None when the run failed (scored 0 by :func:`evaluate`).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Metric = Callable[[Mapping[str, Any], Mapping[str, Any] | None, Any], Any]


def normalize_answer(text: Any) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    s = str(text).lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _golds(example: Mapping[str, Any], key: str, aliases: str | None) -> list[str]:
    golds = [example[key]]
    if aliases and example.get(aliases):
        golds += list(example[aliases])
    return [str(g) for g in golds]


def exact_match(pred_field: str = "answer", label: str = "answer") -> Metric:
    """Strict string equality (whitespace-trimmed)."""
    def metric(example: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> float:
        return float(pred is not None and str(pred[pred_field]).strip() == str(example[label]).strip())
    metric.__name__ = f"exact_match({pred_field})"
    return metric


def normalized_em(pred_field: str = "answer", label: str = "answer", aliases: str | None = "answers") -> Metric:
    """Normalised exact match against the gold answer and any aliases."""
    def metric(example: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> float:
        if pred is None:
            return 0.0
        p = normalize_answer(pred[pred_field])
        return float(any(p == normalize_answer(g) for g in _golds(example, label, aliases)))
    metric.__name__ = f"em({pred_field})"
    return metric


def f1_score(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if not p or not g:
        return float(p == g)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred_field: str = "answer", label: str = "answer", aliases: str | None = "answers") -> Metric:
    """Token-level F1 (max over gold aliases)."""
    def metric(example: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> float:
        if pred is None:
            return 0.0
        return max(f1_score(str(pred[pred_field]), g) for g in _golds(example, label, aliases))
    metric.__name__ = f"f1({pred_field})"
    return metric


def label_accuracy(pred_field: str = "label", label: str = "label") -> Metric:
    """Case-insensitive label equality (for Literal/classification outputs)."""
    def metric(example: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> float:
        if pred is None:
            return 0.0
        return float(str(pred[pred_field]).strip().lower() == str(example[label]).strip().lower())
    metric.__name__ = f"accuracy({pred_field})"
    return metric


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def parse_number(text: Any) -> float | None:
    """The last number in ``text`` (GSM8K style: after '####' if present)."""
    s = str(text)
    if "####" in s:
        s = s.split("####")[-1]
    found = _NUM.findall(s)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(pred_field: str = "answer", label: str = "answer", tol: float = 1e-6) -> Metric:
    """The predicted number equals the gold number (GSM8K)."""
    def metric(example: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> float:
        if pred is None:
            return 0.0
        p, g = parse_number(pred[pred_field]), parse_number(example[label])
        return float(p is not None and g is not None and abs(p - g) <= tol * max(1.0, abs(g)))
    metric.__name__ = f"numeric({pred_field})"
    return metric


def score_value(raw: Any) -> tuple[float, str | None]:
    """Normalise a metric's return value to (score, feedback)."""
    if isinstance(raw, tuple):
        score, feedback = raw[0], (raw[1] if len(raw) > 1 else None)
    else:
        score, feedback = raw, None
    return float(score), (None if feedback is None else str(feedback))


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
