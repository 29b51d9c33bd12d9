"""JSON round-trip for programs: plain data, no pickle, no code execution on load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError
from ..lm.prompt import jsonable
from ..modules.base import module_from_dict
from ..signatures import _collect_custom_types, _type_from_spec, str_to_type, type_to_str
from .ir import Const, InputSpec, Node, Ref

if TYPE_CHECKING:
    from .program import Program

FORMAT_VERSION = 1


def program_to_dict(p: "Program") -> dict[str, Any]:
    def binding(b: Ref | Const) -> dict[str, Any]:
        if isinstance(b, Const):
            return {"const": jsonable(b.value)}
        return {"ref": str(b)}

    out: dict[str, Any] = {
        "lmgraph_program": FORMAT_VERSION,
        "name": p.name,
        "inputs": [{"name": s.name, "type": type_to_str(s.annotation)} for s in p.inputs],
        "nodes": [{"name": n.name, "module": n.module.to_dict(),
                   "bindings": {f: binding(b) for f, b in n.bindings}} for n in p.nodes],
        "outputs": {o: str(r) for o, r in p.outputs},
    }
    custom: dict[str, Any] = {}  # custom types of pipeline inputs (node signatures carry their own)
    for s in p.inputs:
        _collect_custom_types(s.annotation, custom)
    if custom:
        out["types"] = custom
    return out


def _type_specs(data: Any, out: dict[str, Any]) -> None:
    """Every saved custom-type description in the artifact (``"types"`` maps, at any depth)."""
    if isinstance(data, dict):
        specs = data.get("types")
        if isinstance(specs, dict):
            for name, spec in specs.items():
                if isinstance(spec, dict) and spec.get("kind") in ("model", "enum"):
                    out.setdefault(name, spec)
        for v in data.values():
            _type_specs(v, out)
    elif isinstance(data, list):
        for v in data:
            _type_specs(v, out)


def _type_registry(data: Mapping[str, Any], types: Mapping[str, Any] | None) -> dict[str, Any]:
    """Rebuild each saved custom type once, so that every node and input shares one class per name
    (two separately rebuilt ``Person`` classes would fail the edge type check)."""
    registry = dict(types or {})
    specs: dict[str, Any] = {}
    _type_specs(data, specs)
    for name, spec in specs.items():
        if name not in registry:
            registry[name] = _type_from_spec(name, spec, registry)
    return registry


def load_json(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"no artifact at {path}") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e})") from None
    if "program" in data and "lmgraph_program" not in data:  # a compiled artifact wraps a program
        data = data["program"]
    return data


def program_from_dict(data: Mapping[str, Any], *, resources: Mapping[str, Any],
                      types: Mapping[str, Any] | None) -> "Program":
    from .program import Program

    if not isinstance(data, Mapping):
        raise ArtifactError(f"a program artifact is a JSON object, not {type(data).__name__}")
    version = data.get("lmgraph_program")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"unsupported program format version {version!r}",
                            fix=f"this lmgraph reads version {FORMAT_VERSION}.")
    try:
        name = data["name"]
        types = _type_registry(data, types)
        inputs = [InputSpec(d["name"], str_to_type(d.get("type", "str"), types))
                  for d in data["inputs"]]
        nodes = []
        for nd in data["nodes"]:
            module = module_from_dict(nd["module"], resources=resources, types=types, node=nd["name"])
            bindings = []
            for f, b in nd.get("bindings", {}).items():
                bindings.append((f, Const(b["const"]) if "const" in b else Ref.parse(b["ref"])))
            nodes.append(Node(nd["name"], module, tuple(bindings)))
        outputs = [(o, Ref.parse(r)) for o, r in data["outputs"].items()]
    except (KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"malformed program JSON (missing or bad {e})") from None
    return Program(name, inputs, nodes, outputs)
