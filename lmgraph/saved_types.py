"""Custom field types (pydantic models, enums) <-> the JSON descriptions saved with a program.

Saving records each custom type's JSON schema (or enum values); loading rebuilds a class from it
-- data only, no code runs. A description that cannot be rebuilt (malformed, self-referencing,
a field pydantic refuses, a bad regex) is a :class:`~lmgraph.errors.SignatureError` naming it.
"""

from __future__ import annotations

import enum
import typing
import weakref
from typing import Any, Literal, Union

import pydantic

from .errors import SignatureError

__all__: list[str] = []  # private helpers of lmgraph.signatures and lmgraph.pipeline.serialize


#: types rebuilt from a saved description -> that description, so that saving them again gives
#: back exactly what was loaded (same JSON, same content hash)
_REBUILT: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def _collect_custom_types(tp: Any, out: dict[str, Any]) -> None:
    if isinstance(tp, type) and tp in _REBUILT:
        out.setdefault(tp.__name__, _REBUILT[tp])
    elif isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        out.setdefault(tp.__name__, {"kind": "model", "schema": tp.model_json_schema()})
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        out.setdefault(tp.__name__, {"kind": "enum", "values": [m.value for m in tp]})
    for a in typing.get_args(tp):
        _collect_custom_types(a, out)


_JSON_PRIMS = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


_CONSTRAINTS = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt",
                "minLength": "min_length", "maxLength": "max_length", "minItems": "min_length",
                "maxItems": "max_length", "pattern": "pattern"}


def _type_from_spec(name: str, spec: dict[str, Any], registry: dict[str, Any]) -> Any:
    """Rebuild a custom type from its JSON description (data only; no code runs). A description
    that cannot be rebuilt -- malformed, self-referencing, a field pydantic refuses (``__class__``),
    a bad regex -- is a SignatureError naming the type."""
    fix = "repair its description under \"types\" in the JSON, or save the program again from code."
    try:
        return _rebuild_type(name, spec, registry)
    except SignatureError:
        raise
    except RecursionError:
        raise SignatureError(f"saved type {name!r} refers to itself or is nested too deeply", fix=fix) from None
    except Exception as e:  # noqa: BLE001 - KeyError, TypeError, pydantic's schema/user errors ...
        raise SignatureError(f"saved type {name!r} cannot be rebuilt ({type(e).__name__}: {str(e)[:200]})",
                             fix=fix) from None


def _rebuild_type(name: str, spec: dict[str, Any], registry: dict[str, Any]) -> Any:
    if not isinstance(spec, dict):
        raise SignatureError(f"saved type {name!r} is a JSON {type(spec).__name__}, not an object",
                             fix="a saved type is {\"kind\": \"model\", \"schema\": ...} or "
                                 "{\"kind\": \"enum\", \"values\": [...]}.")
    if spec.get("kind") == "enum":
        rebuilt = enum.Enum(name, {f"V{i}": v for i, v in enumerate(spec["values"])})  # type: ignore[misc]
        _REBUILT[rebuilt] = spec
        return rebuilt
    schema = spec["schema"]
    defs = schema.get("$defs", {})
    building: set[str] = set()  # refs being rebuilt: meeting one again is a recursive type

    def conv(s: Any) -> Any:
        if not isinstance(s, dict):
            return Any
        if "$ref" in s:
            ref = s["$ref"].rsplit("/", 1)[-1]
            if ref in building:
                raise SignatureError(f"saved type {name!r} is recursive ({ref!r} refers to itself), which "
                                     "lmgraph cannot rebuild from JSON",
                                     fix="pass the type by name on load: types={" + repr(ref) + ": YourModel}.")
            if ref not in registry:
                building.add(ref)
                d = defs[ref]
                if "enum" in d:  # an Enum class referenced by the model
                    registry[ref] = enum.Enum(ref, {f"V{i}": v for i, v in enumerate(d["enum"])})
                elif d.get("type") == "object" or "properties" in d:
                    registry[ref] = build(ref, d)
                else:
                    registry[ref] = conv({k: v for k, v in d.items() if k != "title"})
                building.discard(ref)
            return registry[ref]
        if "const" in s:
            return Literal[s["const"]]
        if "enum" in s:
            return Literal[tuple(s["enum"])]
        if "anyOf" in s:
            return Union[tuple(conv(x) for x in s["anyOf"])]  # noqa: UP007 - a runtime type built from a tuple
        if "allOf" in s and len(s["allOf"]) == 1:
            return conv(s["allOf"][0])
        t = s.get("type")
        if t == "array":
            return list[conv(s.get("items", {}))]  # type: ignore[misc]
        if t == "object":
            if "properties" in s:
                return build(s.get("title", "Obj"), s)
            return dict[str, conv(s.get("additionalProperties") or {})]  # type: ignore[misc]
        return _JSON_PRIMS.get(t, Any)  # type: ignore[arg-type]

    def field_info(k: str, v: dict[str, Any], required: bool) -> Any:
        kw: dict[str, Any] = {c: v[j] for j, c in _CONSTRAINTS.items() if j in v}
        for key in ("title", "description", "examples"):
            if key in v:
                kw[key] = v[key]
        return pydantic.Field(... if required else v.get("default"), **kw)

    def build(mname: str, s: dict[str, Any]) -> type[pydantic.BaseModel]:
        req = set(s.get("required", []))
        fields = {k: (conv(v), field_info(k, v, k in req)) for k, v in s.get("properties", {}).items()}
        model: type[pydantic.BaseModel] = pydantic.create_model(  # type: ignore[call-overload]
            mname, __doc__=s.get("description"), **fields)
        return model

    model = build(name, schema)
    _REBUILT[model] = spec
    return model
