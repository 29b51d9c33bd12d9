"""JSON round-trip for programs: plain data only; loading executes no code."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, DefinitionError, LmgraphError, PipelineValidationError
from ..lm.values import jsonable
from ..modules.base import loading_kinds, lookup_kind, module_from_dict
from ..saved_types import _collect_custom_types, _type_from_spec
from ..signatures import str_to_type, type_to_str
from .ir import Const, InputSpec, Node, Ref
from .loading import (
    ARTIFACT_VERSION,
    canonical_json,
    content_hash,
    newer_version_error,
    open_envelope,
    read_document,
    read_json_file,
)

if TYPE_CHECKING:
    from ..modules.base import Module
    from .program import Program

FORMAT_VERSION = 1
__all__ = ["ARTIFACT_VERSION", "FORMAT_VERSION", "canonical_json", "content_hash", "load_json", "program_from_dict",
           "program_to_dict", "read_json_file", "verify_artifact"]


def program_to_dict(p: Program) -> dict[str, Any]:
    def binding(b: Ref | Const) -> dict[str, Any]:
        if isinstance(b, Const):
            return {"const": jsonable(b.value)}
        return {"ref": str(b)}

    out: dict[str, Any] = {
        "lmgraph_program": FORMAT_VERSION,
        "name": p.name,
        "inputs": [{"name": s.name, "type": type_to_str(s.annotation)} for s in p.inputs],
        "nodes": [{"name": n.name, "module": _module_dict(n.name, n.module),
                   "bindings": {f: binding(b) for f, b in n.bindings}} for n in p.nodes],
        "outputs": {o: str(r) for o, r in p.outputs},
    }
    custom: dict[str, Any] = {}  # custom types of pipeline inputs (node signatures carry their own)
    for s in p.inputs:
        _collect_custom_types(s.annotation, custom)
    if custom:
        out["types"] = custom
    return out


def _module_dict(node: str, module: Any) -> dict[str, Any]:
    """A node's module as JSON data; a module that cannot say (a custom one without config()) is a
    DefinitionError naming the node."""
    try:
        data: dict[str, Any] = module.to_dict()
        return data
    except DefinitionError as e:
        if e.node is not None:
            raise
        raise DefinitionError(e.message, node=node, field=e.field, fix=e.fix) from None


_SIMPLE_TYPES = {"float": (float, "a number"), "int": (int, "a whole number"), "bool": (bool, "true or false"),
                 "str": (str, "a string")}


def _bad_config_value(kind: Any, config: Mapping[str, Any]) -> tuple[str, Any, str] | None:
    """The first saved setting whose JSON type does not match the module constructor's annotation of
    the same name (``"temperature": "hot"``): (field, value, what it should be); None if none."""
    cls = lookup_kind(str(kind))
    if cls is None:
        return None
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    for key, value in config.items():
        param = params.get(key)
        if param is None or value is None:
            continue
        ann = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")
        parts = [t.strip() for t in str(ann).split("|") if t.strip() != "None"]
        if len(parts) != 1 or parts[0] not in _SIMPLE_TYPES:
            continue
        want, words = _SIMPLE_TYPES[parts[0]]
        ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            return key, value, words
    return None


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


def verify_artifact(data: Any, path: str | Path) -> None:
    """Check a compiled artifact's envelope: format version and content hash (raises ArtifactError;
    see :mod:`lmgraph.pipeline.loading`)."""
    open_envelope(data, path)


def load_json(path: str | Path, *, trusted: bool = False, verify_key: str | bytes | None = None) -> Any:
    """A saved program's JSON, from the envelope :meth:`Program.save`/``save_artifact`` write
    (version and content hash checked; the signature too with ``verify_key``). A bare program
    or a wrapper without a hash loads only with ``trusted=True``."""
    return read_document(path, trusted=trusted, verify_key=verify_key)["program"]


@contextmanager
def _as_artifact_error(*, node: str | None = None, field: str | None = None) -> Iterator[None]:
    """A definition error met while rebuilding a saved node or input is the artifact's fault: raise
    it as an ArtifactError that says where (the original message and fix kept). A node inside a
    nested program (a Map's) is named ``outer/inner``."""
    try:
        yield
    except DefinitionError as e:
        where = node if e.node in (None, node) else f"{node}/{e.node}" if node else e.node
        if isinstance(e, ArtifactError) and where == e.node and (e.field or field) == e.field:
            raise  # already says where
        several = isinstance(e, PipelineValidationError) and len(e.problems) > 1  # each says its own fix
        fix = None if several else e.fix or "repair that entry in the JSON, or save the program again from code."
        raise ArtifactError(e.message, node=where, field=e.field or field, fix=fix) from e


def _load_module(node: str, data: Mapping[str, Any], *, resources: Mapping[str, Any],
                 types: Mapping[str, Any] | None) -> Any:
    """Rebuild one node's module; a setting of the wrong type (``"temperature": "hot"``), which the
    constructor rejects with a bare ValueError/TypeError, is an ArtifactError naming the node, the
    field and the value."""
    if not isinstance(data, Mapping):
        raise ArtifactError(f"the module entry is a JSON {type(data).__name__}, not an object", node=node)
    try:
        return module_from_dict(data, resources=resources, types=types, node=node)
    except (ValueError, TypeError) as e:
        if isinstance(e, DefinitionError):  # a ConfigError/UsageError already says where and why
            raise
        bad = _bad_config_value(data.get("kind"), {k: v for k, v in data.items() if k != "kind"})
        if bad is not None:
            field, value, words = bad
            raise ArtifactError(f"{field} is {json.dumps(value, ensure_ascii=False)[:60]}; it must be {words}",
                                node=node, field=field,
                                fix=f"repair \"{field}\" in the JSON (e.g. \"temperature\": 0.0), or save the "
                                    "program again from code.") from None
        raise ArtifactError(f"bad module settings: {type(e).__name__}: {e}", node=node,
                            fix="repair that entry in the JSON, or save the program again from code.") from None


def _derived_corpora(data: Any, out: list[str]) -> None:
    """Every Retrieve at any depth whose corpus is named after its node (``"<node>.corpus"``)."""
    if isinstance(data, dict):
        for nd in data.get("nodes", ()) if isinstance(data.get("nodes"), list) else ():
            mod = nd.get("module") if isinstance(nd, dict) else None
            if (isinstance(mod, dict) and mod.get("kind") == "retrieve"
                    and mod.get("retriever") == f"{nd.get('name')}.corpus"):
                out.append(mod["retriever"])
        for v in data.values():
            _derived_corpora(v, out)
    elif isinstance(data, list):
        for v in data:
            _derived_corpora(v, out)


def _corpus_aliases(data: Any, resources: Mapping[str, Any]) -> Mapping[str, Any]:
    """``resources={"corpus": docs}`` (the name files before per-node corpus names used, and the
    default) also serves a program whose one node-named corpus (``"retrieve.corpus"``) is not
    given by name; with several, which one it is would be a guess: an ArtifactError."""
    if "corpus" not in resources:
        return resources
    wanted: list[str] = []
    _derived_corpora(data, wanted)
    missing = sorted({w for w in wanted if w not in resources})
    if not missing:
        return resources
    if len(set(wanted)) > 1:
        raise ArtifactError(f"resources has one 'corpus' but the program searches {len(set(wanted))} corpora "
                            f"({', '.join(sorted(set(wanted)))}); which one is 'corpus' would be a guess",
                            fix="pass each by its name: resources={" + ", ".join(f"{w!r}: ..." for w in missing) + "}.")
    return {**resources, missing[0]: resources["corpus"]}


_REPAIR_FIX = "repair that entry in the JSON, or save the program again from code."

_PROGRAM_KEYS = ("lmgraph_program", "name", "inputs", "nodes", "outputs", "types")
_INPUT_KEYS = ("name", "type")
_NODE_KEYS = ("name", "module", "bindings")
_BINDING_KEYS = ("const", "ref")


def _known_keys(entry: Any, known: tuple[str, ...], what: str, *, node: Any = None, field: Any = None) -> None:
    """Refuse a key this lmgraph does not write (the file is from a newer lmgraph, or was edited):
    dropping it silently would run something else than what was saved."""
    if not isinstance(entry, Mapping):
        return  # a wrong shape is reported where the entry is read
    unknown = [k for k in entry if k not in known]
    if unknown:
        raise ArtifactError(f"unknown key {unknown[0]!r} in {what}", node=node if isinstance(node, str) else None,
                            field=field if isinstance(field, str) else None,
                            fix="it was written by a newer lmgraph (upgrade: pip install -U lmgraph) or edited by "
                                f"hand (remove it; the keys here: {', '.join(known)}).")


def program_from_dict(data: Mapping[str, Any], *, resources: Mapping[str, Any],
                      types: Mapping[str, Any] | None, kinds: Iterable[type[Module]] | None = None) -> Program:
    """Rebuild a program from its JSON. Loading is a trust boundary: whatever the data, the only
    errors are lmgraph's (an ArtifactError, or a PipelineValidationError for a graph that does
    not hold together) -- never a bare KeyError, RecursionError or a pydantic error. ``kinds``:
    module classes whose kinds this load knows besides the registered ones."""
    try:
        with loading_kinds(kinds):
            return _program_from_dict(data, resources=resources, types=types)
    except LmgraphError:
        raise
    except RecursionError:
        raise ArtifactError("the program JSON is nested too deeply (or refers to itself)",
                            fix="this is not a program lmgraph wrote; save the program again from code.") from None
    except Exception as e:  # noqa: BLE001 - anything else the data provoked is the data's fault
        raise ArtifactError(f"malformed program JSON ({type(e).__name__}: {str(e)[:300]})", fix=_REPAIR_FIX) from e


def _program_from_dict(data: Mapping[str, Any], *, resources: Mapping[str, Any],
                       types: Mapping[str, Any] | None) -> Program:
    from .program import Program

    if not isinstance(data, Mapping):
        raise ArtifactError(f"a program artifact is a JSON object, not {type(data).__name__}")
    version = data.get("lmgraph_program")
    if version != FORMAT_VERSION:
        newer = newer_version_error("program", version, FORMAT_VERSION)
        if newer is not None:
            raise newer
        raise ArtifactError(f"unsupported program format version {version!r}",
                            fix=f"this lmgraph reads version {FORMAT_VERSION}.")
    _known_keys(data, _PROGRAM_KEYS, "the program")
    resources = _corpus_aliases(data, resources)
    try:
        name = data["name"]
        with _as_artifact_error():  # a saved custom type that cannot be rebuilt
            types = _type_registry(data, types)
        inputs = []
        for d in data["inputs"]:
            _known_keys(d, _INPUT_KEYS, f"input {d.get('name')!r}", field=d.get("name"))
            with _as_artifact_error(field=d["name"]):
                inputs.append(InputSpec(d["name"], str_to_type(d.get("type", "str"), types)))
        nodes = []
        for nd in data["nodes"]:
            _known_keys(nd, _NODE_KEYS, "the node entry", node=nd.get("name"))
            with _as_artifact_error(node=nd["name"]):
                module = _load_module(nd["name"], nd["module"], resources=resources, types=types)
            bindings = []
            for f, b in nd.get("bindings", {}).items():
                _known_keys(b, _BINDING_KEYS, f"the binding of {f!r}", node=nd["name"], field=f)
                bindings.append((f, Const(b["const"]) if "const" in b else Ref.parse(b["ref"])))
            nodes.append(Node(nd["name"], module, tuple(bindings)))
        outputs = [(o, Ref.parse(r)) for o, r in data["outputs"].items()]
    except (KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"malformed program JSON (missing or bad {e})", fix=_REPAIR_FIX) from None
    return Program(name, inputs, nodes, outputs)
