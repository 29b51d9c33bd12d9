"""Compiled artifacts: one JSON file with the optimized program and the evidence for it.

Contents: the program graph with every node's instructions, demos, prompt format, model name
and decoding settings; the report summary (every candidate, its score, CI, cost and verdict);
the data split hashes; and a content hash over all of it (plus, with ``sign_key=``, an
HMAC-SHA256 signature: proof of origin for whoever holds the key). Loading needs no optimizer
code, executes no code and goes through the one checked loader (:mod:`lmgraph.pipeline.loading`:
size and depth limits, format version, content hash, signature). Written deterministically
(sorted keys, no timestamps or wall times), so the same seed and cache give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..pipeline.loading import envelope, read_document, read_json_file
from ..pipeline.program import Program
from ..pipeline.serialize import canonical_json as _canonical
from .report import Report


def artifact_dict(program: Program, report: Report | None = None, *,
                  sign_key: str | bytes | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"program": program.to_dict()}
    if report is not None:
        rep = report.to_dict(timing=False)
        body["report"] = rep
        body["data"] = rep["data"]
    return envelope(body, sign_key=sign_key)


def save_artifact(path: str | Path, program: Program, report: Report | None = None, *,
                  sign_key: str | bytes | None = None) -> Path:
    """Write the compiled artifact. ``sign_key`` (str or bytes, kept secret) adds an HMAC-SHA256
    signature that ``load_artifact(..., verify_key=)`` checks: integrity *and* origin."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(artifact_dict(program, report, sign_key=sign_key), indent=2, sort_keys=True,
                            ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def read_artifact(path: str | Path, *, verify_key: str | bytes | None = None, trusted: bool = False
                  ) -> dict[str, Any]:
    """The artifact's JSON, with its format version and content hash verified (and its signature
    with ``verify_key``). A file without a content hash is refused unless ``trusted=True``."""
    return read_document(path, trusted=trusted, verify_key=verify_key)


def load_artifact(path: str | Path, *, resources: Mapping[str, Any] | None = None,
                  types: Mapping[str, Any] | None = None, verify_key: str | bytes | None = None,
                  trusted: bool = False) -> tuple[Program, dict[str, Any]]:
    """(program, report summary). Retrievers/tools are bound by name via ``resources``. Every
    failure -- a missing, oversized, unparseable, altered, unsigned (with ``verify_key``) or
    malformed file -- is an :class:`~lmgraph.errors.ArtifactError` naming the file and the fix."""
    data = read_artifact(path, verify_key=verify_key, trusted=trusted)
    report = data.get("report", {})
    return Program.from_dict(data["program"], resources=resources, types=types), \
        report if isinstance(report, dict) else {}


def _summ(value: Any) -> Any:
    if isinstance(value, list) and len(value) > 3:
        return f"{len(value)} items"
    return value


#: saved config keys whose parameter-tree name differs (CallTool's choose-call demos)
_PARAM_NAMES = {"step_demos": "step.demos"}


def _is_module(value: Any) -> bool:
    return isinstance(value, Mapping) and "kind" in value


def _is_program(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("nodes"), list)


def _module_changes(ma: Mapping[str, Any], mb: Mapping[str, Any], prefix: str, changes: dict[str, Any]) -> None:
    """Changes between two saved modules of the same kind, by parameter path relative to the node:
    nested modules (a Refine's ``generator``), a Map's sub-program nodes, a Loop's body nodes and a
    Route's branches are walked, so a change shows as ``generator.demos`` / ``solve.instructions``
    / ``calc.solve.demos``, as ``named_parameters`` names it."""
    for key in sorted(ma.keys() | mb.keys()):
        va: Any = ma.get(key)  # saved JSON values
        vb: Any = mb.get(key)
        if va == vb:
            continue
        if _is_module(va) and _is_module(vb) and va["kind"] == vb["kind"]:
            _module_changes(va, vb, f"{prefix}{key}.", changes)
            continue
        if _is_program(va) and _is_program(vb) and _same_graph(va, vb):  # a Map's program, a Loop's body
            _program_changes(va, vb, prefix, changes)
            continue
        if key == "branches" and _same_branches(va, vb):  # a Route's: paths <branch>.<sub-node>...
            for b in va:
                if va[b] != vb[b]:
                    _program_changes(va[b], vb[b], f"{prefix}{b}.", changes)
            continue
        name = prefix + _PARAM_NAMES.get(key, key)
        if name.rsplit(".", 1)[-1] == "demos":
            sa = {_canonical(d) for d in va or []}
            sb = {_canonical(d) for d in vb or []}
            changes[name] = {"before": len(va or []), "after": len(vb or []),
                             "added": len(sb - sa), "removed": len(sa - sb)}
        else:
            changes[name] = {"before": _summ(va), "after": _summ(vb)}


def _program_changes(va: Mapping[str, Any], vb: Mapping[str, Any], prefix: str, changes: dict[str, Any]) -> None:
    """Changes between two saved sub-programs of one shape, by ``<sub-node>.<param>`` path."""
    sub_b = {n["name"]: n for n in vb["nodes"]}
    for n in va["nodes"]:
        mna, mnb = n["module"], sub_b[n["name"]]["module"]
        if mna == mnb:
            continue
        if mna.get("kind") == mnb.get("kind"):
            _module_changes(mna, mnb, f"{prefix}{n['name']}.", changes)
        else:
            changes[f"{prefix}{n['name']}.kind"] = {"before": mna.get("kind"), "after": mnb.get("kind")}


def _same_branches(a: Any, b: Any) -> bool:
    """Two saved Route branch maps with the same names, each pair of one shape."""
    return (isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys()
            and all(_is_program(a[k]) and _is_program(b[k]) and _same_graph(a[k], b[k]) for k in a))


def _same_graph(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two saved sub-programs with the same nodes, wiring and outputs (only modules may differ)."""
    def shape(p: Mapping[str, Any]) -> tuple[Any, ...]:
        return ([(n["name"], n.get("bindings")) for n in p["nodes"]], p.get("inputs"), p.get("outputs"))
    return shape(a) == shape(b)


def diff(a: Program | str | Path, b: Program | str | Path) -> dict[str, Any]:
    """What changed from ``a`` to ``b``, per node: parameters (nested ones by path within the node:
    ``generator.demos``, ``<sub-node>.instructions``), bindings, added/removed nodes."""
    def as_dict(x: Program | str | Path) -> dict[str, Any]:
        if isinstance(x, Program):
            return x.to_dict()
        data = read_json_file(x)  # not hash-checked: a diff should show what an edit changed
        program: dict[str, Any] = data.get("program", data)
        return program

    da, db = as_dict(a), as_dict(b)
    na = {n["name"]: n for n in da["nodes"]}
    nb = {n["name"]: n for n in db["nodes"]}
    out: dict[str, Any] = {"added": sorted(nb.keys() - na.keys()), "removed": sorted(na.keys() - nb.keys()),
                           "changed": {}}
    for name in sorted(na.keys() & nb.keys()):
        ma, mb = na[name]["module"], nb[name]["module"]
        changes: dict[str, Any] = {}
        _module_changes(ma, mb, "", changes)
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
            if key.rsplit(".", 1)[-1] == "demos" and "added" in ch:
                lines.append(f"    {key}: {ch['before']} -> {ch['after']} (+{ch['added']} -{ch['removed']})")
            else:
                lines.append(f"    {key}: {str(ch['before'])[:60]!s} -> {str(ch['after'])[:60]!s}")
    if "outputs" in d:
        lines.append(f"~ outputs: {d['outputs']['before']} -> {d['outputs']['after']}")
    return "\n".join(lines) or "(no differences)"
