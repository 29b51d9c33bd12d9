"""One config model per module kind: what each kind saves, declared once.

A kind's model (a strict pydantic model, unknown keys forbidden) lists every key the kind writes
to a program file, with the default that a file lacking the key loads with. Saving and loading are
generic (:meth:`lmgraph.modules.base.Module.config` / ``from_config``): a field is the module's
attribute of the same name on the way out and the constructor keyword of the same name on the way
in, except the model's ``kind_fields`` -- child modules, sub-programs, resources saved by name, the
signature -- which the kind converts itself (``Module.kind_config`` / ``Module.kind_kwargs``).

``omit_defaults`` lists groups of fields written only when one of them differs from its default:
settings added after files were first saved, so that those files keep their bytes and hashes.

This module is imported on the first save or load, not by ``import lmgraph``.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from ..errors import ArtifactError, DefinitionError
from .critique import CRITIQUE_MAX_TOKENS
from .plan import PLAN_MAX_TOKENS
from .tools import DEFAULT_MAX_OUTPUT_CHARS, DEFAULT_TOOL_THREADS, DEFAULT_TOOL_TIMEOUT

__all__ = ["BestOfNConfig", "CallToolConfig", "ChainOfThoughtConfig", "CritiqueConfig", "FieldConfig", "LoopConfig",
           "MapConfig", "ModuleConfig", "PlanConfig", "PredicateRef", "PredictConfig", "RefineConfig",
           "RetrieveConfig", "RouteConfig", "SignatureConfig", "StrictConfig", "config_error", "dump_config",
           "validate_config"]

JSONDict = dict[str, Any]


class StrictConfig(BaseModel):
    """A saved JSON object: exact JSON types (no ``"3"`` for 3), no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: groups of fields left out of the saved JSON while every field of the group has its default
    omit_defaults: ClassVar[tuple[tuple[str, ...], ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_defaults(self, handler: Any) -> Any:
        return self._omit(handler(self))

    def json_data(self) -> dict[str, Any]:
        """The saved JSON object: ``model_dump()``, without serializing every JSON value again (the
        values are plain JSON already, checked by validation)."""
        return self._omit({f: _data(getattr(self, f)) for f in type(self).model_fields})

    def _omit(self, data: dict[str, Any]) -> dict[str, Any]:
        fields = type(self).model_fields
        for group in self.omit_defaults:
            if all(f in data and _same(data[f], fields[f].get_default(call_default_factory=True)) for f in group):
                for f in group:
                    del data[f]
        return data


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _data(value: Any) -> Any:
    if isinstance(value, StrictConfig):
        return value.json_data()
    if isinstance(value, list) and value and isinstance(value[0], StrictConfig):
        return [_data(v) for v in value]
    if isinstance(value, dict) and any(isinstance(v, StrictConfig) for v in value.values()):
        return {k: _data(v) for k, v in value.items()}
    return value


class ModuleConfig(StrictConfig):
    """Base of every kind's config model."""

    #: fields the kind saves and loads itself (child modules, sub-programs, resources by name)
    kind_fields: ClassVar[tuple[str, ...]] = ()


# --------------------------------------------------------------------------- shared parts

class FieldConfig(StrictConfig):
    """One field of a saved signature."""

    name: str
    type: str = "str"
    desc: str = ""
    prefix: str = ""
    omit_defaults = (("desc",), ("prefix",))


class SignatureConfig(StrictConfig):
    """A saved signature (:meth:`lmgraph.Signature.to_dict`)."""

    inputs: list[FieldConfig]
    outputs: list[FieldConfig]
    instructions: str | None = None
    types: JSONDict | None = None  # custom types, rebuilt from their descriptions
    omit_defaults = (("types",),)


class PredicateRef(StrictConfig):
    """A Python predicate saved by name (bound again from ``resources`` on load)."""

    predicate: str


# --------------------------------------------------------------------------- the kinds

class PredictConfig(ModuleConfig):
    signature: SignatureConfig
    instructions: str | None = None
    demos: list[JSONDict] = []
    format: str = "auto"
    lm: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    repair: bool = True
    cache: bool = True
    decode: str = "generate"
    knn: int = 0
    demo_pool: list[JSONDict] = []
    knn_fields: list[str] = []
    verbalizer: list[JSONDict] = []
    kind_fields = ("signature",)
    omit_defaults = (("cache",), ("decode",), ("knn", "demo_pool"), ("knn_fields",), ("verbalizer",))


class ChainOfThoughtConfig(PredictConfig):
    max_tokens: int = 384


class CritiqueConfig(PredictConfig):
    max_tokens: int = CRITIQUE_MAX_TOKENS


class PlanConfig(PredictConfig):
    max_tokens: int = PLAN_MAX_TOKENS
    max_steps: int = 5


class CallToolConfig(ModuleConfig):
    signature: SignatureConfig
    tools: list[str]  # resource names
    max_steps: int = 5
    instructions: str | None = None
    demos: list[JSONDict] = []
    format: str = "auto"
    lm: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    repair: bool = True
    cache: bool = True
    step_demos: list[JSONDict] = []
    tool_timeout: float | None = DEFAULT_TOOL_TIMEOUT
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    tool_threads: int = DEFAULT_TOOL_THREADS
    on_tool_error: str = "observe"
    kind_fields = ("signature", "tools", "tool_threads")
    omit_defaults = (("cache",), ("step_demos",), ("tool_timeout",), ("max_output_chars",), ("tool_threads",),
                     ("on_tool_error",))


class BestOfNConfig(ModuleConfig):
    module: JSONDict
    n: int = 3
    select: str = "vote"
    judge: JSONDict | None = None
    reward: str | None = None  # resource name
    temperature: float = 0.7
    vote_on: str | None = None
    kind_fields = ("module", "judge", "reward")


class RefineConfig(ModuleConfig):
    generator: JSONDict
    judge: JSONDict
    max_rounds: int = 2
    kind_fields = ("generator", "judge")


class LoopConfig(ModuleConfig):
    body: JSONDict  # a program
    max_iters: int
    until: str | PredicateRef | None = None
    carry: dict[str, str] = {}
    kind_fields = ("body", "until")


class MapConfig(ModuleConfig):
    program: JSONDict
    over: list[str]
    concurrency: int = 4
    on_error: str = "raise"
    kind_fields = ("program",)


class RetrieveConfig(ModuleConfig):
    retriever: str  # resource name
    k: int = 3
    kind_fields = ("retriever",)


class RouteConfig(ModuleConfig):
    selector: str | PredicateRef = "choice"
    branches: dict[str, JSONDict]  # programs
    default: str | None = None
    kind_fields = ("selector", "branches")


# --------------------------------------------------------------------------- validation

_WORDS = {"float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
          "int_from_float": "a whole number", "bool_type": "true or false", "string_type": "a string",
          "list_type": "a list", "dict_type": "an object", "model_type": "an object", "model_attributes_type":
          "an object", "none_required": "null"}
_UPGRADE = "pip install -U lmgraph"


def _path(loc: tuple[Any, ...]) -> str:
    """``("signature", "inputs", 0, "desc")`` -> ``signature.inputs[0].desc``; a union's member tags
    (``until.PredicateRef.x``) are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "float", "bool", "none") or part in _MODEL_NAMES or "[" in part:
            continue
        else:
            out += ("." if out else "") + part
    return out


_MODEL_NAMES = {c.__name__ for c in (FieldConfig, SignatureConfig, PredicateRef)}


def config_error(kind: str, model: type[BaseModel], exc: ValidationError) -> ArtifactError:
    """The first (most telling) problem of a saved config as an ArtifactError naming the key and the fix."""
    errors = sorted(exc.errors(), key=lambda e: (e["type"] != "extra_forbidden", e["type"] != "missing"))
    err = errors[0]
    path = _path(tuple(err["loc"])) or "(the config)"
    if err["type"] == "extra_forbidden":
        known = ", ".join(model.model_fields) if len(err["loc"]) == 1 else None
        return ArtifactError(f"unknown key {path!r} in the {kind!r} module config", field=path,
                             fix=f"it was written by a newer lmgraph (upgrade: {_UPGRADE}) or edited by hand "
                                 "(remove it" + (f"; the keys a {kind!r} module saves: {known})." if known else ")."))
    if err["type"] == "missing":
        return ArtifactError(f"the {kind!r} module config lacks {path!r}", field=path,
                             fix="repair that entry in the JSON, or save the program again from code.")
    value = err.get("input")
    try:
        shown = json.dumps(value, ensure_ascii=False)[:60]
    except (TypeError, ValueError):
        shown = repr(value)[:60]
    words = _WORDS.get(err["type"], err["msg"].lower().removeprefix("input should be "))
    return ArtifactError(f"{path} is {shown}; it must be {words}", field=path,
                         fix=f"repair \"{path}\" in the JSON (e.g. \"temperature\": 0.0), or save the program "
                             "again from code.")


def validate_config(kind: str, model: type[BaseModel], data: Any) -> BaseModel:
    """``data`` (a saved module config, ``kind`` left out) checked against the kind's model."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise config_error(kind, model, e) from None


def dump_config(owner: str, model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """A module's values (by field) checked against its model, as the JSON object saved (a custom
    kind's model that is not a StrictConfig is dumped as pydantic dumps JSON)."""
    try:
        cfg = model.model_validate(values)
        return cfg.json_data() if isinstance(cfg, StrictConfig) else cfg.model_dump(mode="json")
    except ValidationError as e:
        err = config_error(owner, model, e)
        raise DefinitionError(f"{owner} cannot be saved: {err.message}", field=err.field,
                              fix="give the setting a JSON value of the declared type.") from None
