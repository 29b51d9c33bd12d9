"""Metrics: ``metric(example, prediction, trace) -> float | bool | (float, feedback)``.

``feedback`` is text, or text per step (``{node: text}``: :func:`feedback_text` turns it into
``[node] text`` lines, which ``Reflect`` reads as the metric's word on which step went wrong).

Factories return such callables for common cases; any user callable with that shape works
(a DSPy-style ``(example, prediction)`` function is adapted, once, with a warning).
``prediction`` is None when the run failed (scored 0 by :func:`evaluate`).

A metric may declare what it reads: ``metric.fields`` (the example fields, e.g. the label) and
``metric.pred_fields`` (the program outputs). The factories here do; :func:`check_metric` then
checks a dataset and a program against them before any model call.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import string
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..errors import DatasetError, DefinitionError, MetricError, MetricWarning

if TYPE_CHECKING:
    from ..pipeline.program import Program

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
    return _declare(metric, pred_field, label)


def normalized_em(pred_field: str = "answer", label: str = "answer", aliases: str | None = "answers") -> Metric:
    """Normalised exact match against the gold answer and any aliases."""
    def metric(example: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> float:
        if pred is None:
            return 0.0
        p = normalize_answer(pred[pred_field])
        return float(any(p == normalize_answer(g) for g in _golds(example, label, aliases)))
    metric.__name__ = f"em({pred_field})"
    return _declare(metric, pred_field, label)


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
    return _declare(metric, pred_field, label)


def label_accuracy(pred_field: str = "label", label: str = "label") -> Metric:
    """Case-insensitive label equality (for Literal/classification outputs)."""
    def metric(example: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> float:
        if pred is None:
            return 0.0
        return float(str(pred[pred_field]).strip().lower() == str(example[label]).strip().lower())
    metric.__name__ = f"accuracy({pred_field})"
    return _declare(metric, pred_field, label)


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
    return _declare(metric, pred_field, label)


def _declare(metric: Callable[..., Any], pred_field: str, label: str) -> Metric:
    """Record which example field and which program output ``metric`` reads (checked up front)."""
    metric.fields = (label,)  # type: ignore[attr-defined]
    metric.pred_fields = (pred_field,)  # type: ignore[attr-defined]
    return metric


def with_feedback(metric: Metric, *, max_chars: int = 200) -> Metric:
    """``metric`` returning ``(score, feedback)``: below a full score, the feedback names what the
    row expected and what the program gave (``"expected 'human', got 'entity'"``) -- what a
    reflective optimizer (:class:`~lmgraph.optimizers.Reflect`) reads beside the failing trace.
    ``metric`` must declare the fields it reads (the built-in metrics do)."""
    fields, preds = getattr(metric, "fields", None), getattr(metric, "pred_fields", None)
    if not fields or not preds:
        raise DefinitionError(f"with_feedback() needs a metric that declares its fields, and "
                              f"{metric_name(metric)} does not",
                              fix="use a built-in metric (label_accuracy(), exact_match(), ...), or return "
                                  "(score, feedback) from your own metric.")
    label, pred_field = fields[0], preds[0]

    def shown(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= max_chars else text[:max_chars] + "..."

    def fed(example: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> tuple[float, str | None]:
        score, _ = score_value(metric(example, pred, trace), metric=metric_name(metric))
        if score >= 1.0:
            return score, None
        got = "no output (the run failed)" if pred is None else f"got {shown(pred.get(pred_field))}"
        return score, f"wrong (score {score:g}): expected {shown(example.get(label))}, {got}"

    fed.__name__ = f"{metric_name(metric)}+feedback"
    return _declare(fed, pred_field, label)


def metric_name(metric: Any) -> str:
    return str(getattr(metric, "__name__", None) or type(metric).__name__)


_RETURN_FIX = "return a number in [0,1], a bool, or (score, feedback)."


def feedback_text(feedback: Any) -> str | None:
    """A metric's feedback as text. Feedback per step -- a mapping ``{node: text}`` (``{"generate_query":
    "the query missed the second entity"}``) -- becomes one ``[node] text`` line per step: ``Reflect``
    reads those tags as the metric's own word on which step went wrong."""
    if feedback is None:
        return None
    if isinstance(feedback, Mapping):
        return "\n".join(f"[{k}] {v}" for k, v in feedback.items() if v is not None and str(v).strip()) or None
    return str(feedback)


def score_value(raw: Any, *, metric: str | None = None, row: int | None = None) -> tuple[float, str | None]:
    """Normalise a metric's return value to (score, feedback); anything else is a MetricError."""
    where = f"on row {row}" if row is not None else ""
    if isinstance(raw, tuple):
        if not 1 <= len(raw) <= 2:
            raise MetricError(f"returned a tuple of {len(raw)} values {where}".rstrip(), metric=metric, row=row,
                              fix=_RETURN_FIX)
        score, feedback = raw[0], (raw[1] if len(raw) > 1 else None)
    else:
        score, feedback = raw, None
    if isinstance(score, (bool, numbers.Real)) or type(score).__name__ == "bool_":  # numpy bools too
        value = float(score)
        if not math.isnan(value):
            return value, feedback_text(feedback)
        shown = "NaN"
    else:
        shown = f"a {type(score).__name__} ({score!r:.60})"
    raise MetricError(f"returned {shown} {where}".rstrip() + ", not a score", metric=metric, row=row,
                      fix=_RETURN_FIX)


_ARITY_FIX = ("metrics take (example, prediction, trace); got a {n}-argument function: "
              "wrap it as lambda ex, pred, trace: f({args}).")
_adapted_told: weakref.WeakSet[Any] = weakref.WeakSet()


def _positional_arity(metric: Any) -> int | None:
    """How many positional arguments to call ``metric`` with: 3, 2, or None when it can't tell."""
    try:
        sig = inspect.signature(metric)
    except (TypeError, ValueError):  # a builtin or an odd callable: trust it
        return None
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 3
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    required_kw = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    name = metric_name(metric)
    if len(required) > 3 or required_kw:
        extra = (required[3:] or required_kw)[0].name
        raise MetricError(f"takes an argument {extra!r} that lmgraph cannot fill", metric=name,
                          fix="metrics take (example, prediction, trace); give the other arguments defaults "
                              "or bind them with functools.partial.")
    if len(positional) >= 3:
        return 3
    if len(positional) == 2:
        return 2
    n = len(positional)
    raise MetricError(f"takes {n} positional argument{'s' * (n != 1)}", metric=name,
                      fix=_ARITY_FIX.format(n=n, args="ex" if n == 1 else ""))


def prepare_metric(metric: Any) -> Metric:
    """``metric`` as a 3-argument callable: a 2-argument ``(example, prediction)`` function (the
    DSPy convention) is wrapped, saying so once; a callable with another shape is a MetricError."""
    if not callable(metric):
        raise MetricError(f"a metric must be callable, not a {type(metric).__name__}", metric=None,
                          fix="pass a function (example, prediction, trace) -> float, e.g. "
                              "lmgraph.evaluation.label_accuracy().")
    if _positional_arity(metric) != 2:
        return cast(Metric, metric)
    name = metric_name(metric)
    try:
        first = metric not in _adapted_told
        if first:
            _adapted_told.add(metric)
    except TypeError:  # not weak-referenceable
        first = True
    if first:
        warnings.warn(f"metric {name!r} takes (example, prediction): lmgraph calls it without the trace "
                      "(metrics may take (example, prediction, trace))", MetricWarning, stacklevel=3)

    def adapted(example: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> Any:
        return metric(example, pred)

    adapted.__name__ = name
    adapted.__wrapped__ = metric  # type: ignore[attr-defined]
    for attr in ("fields", "pred_fields"):
        if hasattr(metric, attr):
            setattr(adapted, attr, getattr(metric, attr))
    return adapted


def row_id(row: Any) -> Any:
    """A row's own identifier (its ``id``-like field), if it has one."""
    if isinstance(row, Mapping):
        for key in ("id", "_id", "uid", "qid", "example_id"):
            if key in row and isinstance(row[key], (str, int)):
                return row[key]
    return None


def describe_row(index: int, row: Any) -> str:
    rid = row_id(row)
    return f"row {index}" + (f" (id {rid!r})" if rid is not None else "")


def check_metric(metric: Any, rows: Sequence[Any], *, program: Program | None = None,
                 name: str = "dataset") -> Metric:
    """Check a metric against a dataset (and the program's outputs) before any model call; returns
    the metric ready to call with (example, prediction, trace).

    Raises MetricError for a metric lmgraph cannot call, DatasetError naming the first row that
    lacks a field the metric declares (``metric.fields``), and MetricError when the metric reads a
    program output the program does not have (``metric.pred_fields``)."""
    ready = prepare_metric(metric)
    mname = metric_name(metric)
    pred_fields = tuple(getattr(metric, "pred_fields", ()) or ())
    if program is not None and pred_fields:
        outputs = [o for o, _ in program.outputs]
        for f in pred_fields:
            if f not in outputs:
                raise MetricError(f"reads the prediction field {f!r}, but program {program.name!r} outputs "
                                  f"{', '.join(outputs)}", metric=mname,
                                  fix=f"point the metric at one of the outputs, e.g. pred_field={outputs[0]!r}.")
    fields = tuple(getattr(metric, "fields", ()) or ())
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DatasetError(f"{name} row {i} is a {type(row).__name__}, not a mapping", row=i,
                               fix="pass rows as dicts of field -> value.")
        missing = [f for f in fields if f not in row]
        if missing:
            has = ", ".join(map(str, row)) or "no fields"
            raise DatasetError(f"{name} {describe_row(i, row)} lacks the field {missing[0]!r} that the metric "
                               f"{mname} reads (the row has: {has})", row=i, row_id=row_id(row),
                               field=missing[0],
                               fix=f"add {missing[0]!r} to every row, or tell the metric which field holds the "
                                   f"gold value (e.g. label_accuracy(label='<field>'), "
                                   f"--metric NAME:PRED_FIELD:LABEL_FIELD on the command line).")
    return ready


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
