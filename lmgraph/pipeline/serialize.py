"""JSON round-trip for programs: plain data, no pickle, no code execution on load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError
from ..lm.prompt import jsonable
from ..modules.base import module_from_dict
from ..signatures import str_to_type, type_to_str
from .ir import Const, InputSpec, Node, Ref

if TYPE_CHECKING:
    from .program import Program

FORMAT_VERSION = 1


def program_to_dict(p: "Program") -> dict[str, Any]:
    def binding(b: Ref | Const) -> dict[str, Any]:
        if isinstance(b, Const):
            return {"const": jsonable(b.value)}
        return {"ref": str(b)}

    return {
        "lmgraph_program": FORMAT_VERSION,
        "name": p.name,
        "inputs": [{"name": s.name, "type": type_to_str(s.annotation)} for s in p.inputs],
        "nodes": [{"name": n.name, "module": n.module.to_dict(),
                   "bindings": {f: binding(b) for f, b in n.bindings}} for n in p.nodes],
        "outputs": {o: str(r) for o, r in p.outputs},
    }


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

    version = data.get("lmgraph_program")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"unsupported program format version {version!r}",
                            fix=f"this lmgraph reads version {FORMAT_VERSION}.")
    try:
        inputs = [InputSpec(d["name"], str_to_type(d.get("type", "str"), dict(types or {})))
                  for d in data["inputs"]]
        nodes = []
        for nd in data["nodes"]:
            module = module_from_dict(nd["module"], resources=resources, types=types, node=nd["name"])
            bindings = []
            for f, b in nd.get("bindings", {}).items():
                bindings.append((f, Const(b["const"]) if "const" in b else Ref.parse(b["ref"])))
            nodes.append(Node(nd["name"], module, tuple(bindings)))
        outputs = [(o, Ref.parse(r)) for o, r in data["outputs"].items()]
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"malformed program JSON (missing or bad {e})") from None
    return Program(data["name"], inputs, nodes, outputs)
