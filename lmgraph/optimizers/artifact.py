"""Compiled artifacts: one JSON file with the optimized program and the evidence for it.

Contents: the program graph with every node's instructions, demos, prompt format, model name
and decoding settings; the report summary (every candidate, its score, CI, cost and verdict);
the data split hashes; and a content hash over all of it. Loading needs no optimizer code and
executes no code. Written deterministically (sorted keys, no timestamps or wall times), so the
same seed and cache give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..pipeline.program import Program
from ..pipeline.serialize import ARTIFACT_VERSION, content_hash, read_json_file, verify_artifact
from ..pipeline.serialize import canonical_json as _canonical
from .report import Report


def artifact_dict(program: Program, report: Report | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"lmgraph_artifact": ARTIFACT_VERSION, "program": program.to_dict()}
    if report is not None:
        rep = report.to_dict(timing=False)
        body["report"] = rep
        body["data"] = rep["data"]
    body["content_hash"] = content_hash(body)
    return body


def save_artifact(path: str | Path, program: Program, report: Report | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(artifact_dict(program, report), indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    return p


def read_artifact(path: str | Path) -> dict[str, Any]:
    """The artifact's JSON, with its content hash verified."""
    data = read_json_file(path)
    verify_artifact(data, path)
    return data


def load_artifact(path: str | Path, *, resources: Mapping[str, Any] | None = None,
                  types: Mapping[str, Any] | None = None) -> tuple[Program, dict[str, Any]]:
    """(program, report summary). Retrievers/tools are bound by name via ``resources``."""
    data = read_artifact(path)
    return Program.from_dict(data["program"], resources=resources, types=types), data.get("report", {})


def _summ(value: Any) -> Any:
    if isinstance(value, list) and len(value) > 3:
        return f"{len(value)} items"
    return value


def diff(a: Program | str | Path, b: Program | str | Path) -> dict[str, Any]:
    """What changed from ``a`` to ``b``, per node: parameters, bindings, added/removed nodes."""
    def as_dict(x: Program | str | Path) -> dict[str, Any]:
        if isinstance(x, Program):
            return x.to_dict()
        data = read_json_file(x)  # not hash-checked: a diff should show what an edit changed
        return data.get("program", data)

    da, db = as_dict(a), as_dict(b)
    na = {n["name"]: n for n in da["nodes"]}
    nb = {n["name"]: n for n in db["nodes"]}
    out: dict[str, Any] = {"added": sorted(nb.keys() - na.keys()), "removed": sorted(na.keys() - nb.keys()),
                           "changed": {}}
    for name in sorted(na.keys() & nb.keys()):
        ma, mb = na[name]["module"], nb[name]["module"]
        changes: dict[str, Any] = {}
        for key in sorted(ma.keys() | mb.keys()):
            va, vb = ma.get(key), mb.get(key)
            if va == vb:
                continue
            if key == "demos":
                sa = {_canonical(d) for d in va or []}
                sb = {_canonical(d) for d in vb or []}
                changes["demos"] = {"before": len(va or []), "after": len(vb or []),
                                    "added": len(sb - sa), "removed": len(sa - sb)}
            else:
                changes[key] = {"before": _summ(va), "after": _summ(vb)}
        if na[name].get("bindings") != nb[name].get("bindings"):
            changes["bindings"] = {"before": na[name].get("bindings"), "after": nb[name].get("bindings")}
        if changes:
            out["changed"][name] = changes
    if da.get("outputs") != db.get("outputs"):
        out["outputs"] = {"before": da.get("outputs"), "after": db.get("outputs")}
    return out


def format_diff(d: Mapping[str, Any]) -> str:
    lines = []
    for n in d.get("added", []):
        lines.append(f"+ node {n}")
    for n in d.get("removed", []):
        lines.append(f"- node {n}")
    for node, changes in d.get("changed", {}).items():
        lines.append(f"~ node {node}")
        for key, ch in changes.items():
            if key == "demos":
                lines.append(f"    demos: {ch['before']} -> {ch['after']} (+{ch['added']} -{ch['removed']})")
            else:
                lines.append(f"    {key}: {str(ch['before'])[:60]!s} -> {str(ch['after'])[:60]!s}")
    if "outputs" in d:
        lines.append(f"~ outputs: {d['outputs']['before']} -> {d['outputs']['after']}")
    return "\n".join(lines) or "(no differences)"
