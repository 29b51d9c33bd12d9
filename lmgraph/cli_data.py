"""The ``lmgraph`` command line's plain helpers: JSONL data files, ``--metric`` specs, argument types
and JSON output. Nothing here builds a model (see :func:`lmgraph.cli.make_lm`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import DefinitionError

METRICS = {"exact_match": "exact_match", "em": "normalized_em", "f1": "token_f1",
           "accuracy": "label_accuracy", "numeric": "numeric_match"}
OPTIMIZERS = {"labeled": "LabeledFewShot", "bootstrap": "BootstrapFewShot",
              "random_search": "BootstrapRandomSearch", "instructions": "InstructionSearch",
              "joint": "JointSearch", "decompose": "Decompose", "reflect": "Reflect", "compile": "Compile"}


def read_jsonl(path: str) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise DefinitionError(f"cannot read data file {path}: {e.strerror or e}",
                              fix="pass an existing JSONL file (one JSON object per line).") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DefinitionError(f"{path}:{i} is not valid JSON ({e.msg})",
                                  fix="write one JSON object per line.") from None
        if not isinstance(row, dict):
            raise DefinitionError(f"{path}:{i} is a JSON {type(row).__name__}, not an object",
                                  fix="write one JSON object (field -> value) per line.")
        rows.append(row)
    if not rows:
        raise DefinitionError(f"{path} holds no rows", fix="write one JSON object per line.")
    return rows


def metric_spec(text: str) -> tuple[str, str | None, str | None]:
    """argparse type for NAME[:pred_field[:label_field]]."""
    parts = text.split(":")
    if len(parts) > 3 or parts[0] not in METRICS or any(not p for p in parts[1:]):
        raise argparse.ArgumentTypeError(
            f"bad metric {text!r}: use NAME[:pred_field[:label_field]] with NAME one of {', '.join(METRICS)}")
    return parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else None)


def make_metric(spec: tuple[str, str | None, str | None], program: Any) -> Any:
    from . import evaluation

    name, pred, label = spec
    factory = getattr(evaluation, METRICS[name])
    if pred is None and len(program.outputs) == 1:
        pred = program.outputs[0][0]  # the program's only output
    kwargs = {}
    if pred is not None:
        kwargs = {"pred_field": pred, "label": label or pred}
    outputs = [o for o, _ in program.outputs]
    if pred is not None and pred not in outputs:
        raise DefinitionError(f"the metric reads the output {pred!r}, which the program does not have",
                              fix=f"use --metric {name}:FIELD with FIELD one of {', '.join(outputs)}.")
    return factory(**kwargs)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------- argument types

def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _pos_int(text: str) -> int:
    value = _nonneg_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _pos_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds > 0")
    return value
