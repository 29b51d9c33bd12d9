"""Signatures: the typed input/output contract of a module.

Three ways to declare one::

    Signature.parse("question, context: list[str] -> answer")
    Signature(inputs=[...], outputs=[...], instructions="...")

    class QA(Signature):
        \"\"\"Answer the question from the context.\"\"\"
        question: str = InputField()
        context: list[str] = InputField(desc="retrieved passages")
        answer: str = OutputField()

Field types are ordinary annotations: ``str``, ``int``, ``float``, ``bool``, ``list[...]``,
``dict[...]``, ``Optional[...]``, ``Literal[...]``, ``Enum`` subclasses and pydantic models.
Type expressions in shorthand strings are read by a small AST walker (never ``eval``); custom
types are passed by name with ``types={"Person": Person}``.
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import re
import types as _pytypes
import typing
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import pydantic

from ._canonical import canonical_json
from .errors import SignatureError

# custom types <-> their saved JSON descriptions
from .saved_types import _collect_custom_types, _type_from_spec

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_BASE_TYPES: dict[str, Any] = {
    "str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict,
    "tuple": tuple, "Any": Any, "List": list, "Dict": dict, "Tuple": tuple,
    "Optional": Optional, "Literal": Literal, "Union": Union, "None": None,
}


# --------------------------------------------------------------------------- fields

@dataclass(frozen=True)
class FieldSpec:
    """One input or output field."""

    name: str
    annotation: Any = str
    desc: str = ""
    prefix: str = ""  # label used in text prompts ("Question"); derived from name if empty

    @property
    def label(self) -> str:
        return self.prefix or self.name.replace("_", " ").strip().capitalize()


@dataclass(frozen=True)
class _FieldMarker:
    kind: str
    desc: str = ""
    prefix: str = ""


def InputField(*, desc: str = "", prefix: str = "") -> Any:  # noqa: N802 - reads like a type
    """Marks a class attribute of a :class:`Signature` subclass as an input field."""
    return _FieldMarker("input", desc, prefix)


def OutputField(*, desc: str = "", prefix: str = "") -> Any:  # noqa: N802
    """Marks a class attribute of a :class:`Signature` subclass as an output field."""
    return _FieldMarker("output", desc, prefix)


# --------------------------------------------------------------------------- signature

class Signature:
    """An immutable set of input fields, output fields and instructions."""

    __slots__ = ("_hash", "_k", "inputs", "instructions", "outputs")

    # set once in __init__ (through object.__setattr__: the class refuses attribute assignment)
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]
    instructions: str
    _hash: int | None
    _k: tuple[Any, ...] | None

    # class-based declarations fill these in via __init_subclass__
    _declared: typing.ClassVar[tuple[tuple[FieldSpec, ...], tuple[FieldSpec, ...], str] | None] = None

    def __init__(self, inputs: typing.Iterable[FieldSpec] | None = None,
                 outputs: typing.Iterable[FieldSpec] | None = None,
                 instructions: str | None = None) -> None:
        declared = type(self)._declared
        if inputs is None and outputs is None and declared is not None:
            ins, outs, doc = declared
            inputs, outputs = ins, outs
            instructions = doc if instructions is None else instructions
        ins_t = tuple(inputs or ())
        outs_t = tuple(outputs or ())
        _check_fields(ins_t, outs_t)
        object.__setattr__(self, "inputs", ins_t)
        object.__setattr__(self, "outputs", outs_t)
        object.__setattr__(self, "instructions", (instructions or "").strip() or _default_instructions(ins_t, outs_t))
        object.__setattr__(self, "_hash", None)
        object.__setattr__(self, "_k", None)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        try:
            hints = typing.get_type_hints(cls, include_extras=False)
        except NameError as e:
            raise SignatureError(f"cannot resolve an annotation of {cls.__name__}: {e}",
                                 fix="define the field types at module level (string annotations are "
                                     "resolved in the module's globals).") from None
        # fields declared by a parent signature class come first; a redeclared name replaces them
        parent = next((b.__dict__["_declared"] for b in cls.__mro__[1:]
                       if isinstance(b.__dict__.get("_declared"), tuple)), None)
        own = set(inspect.get_annotations(cls))
        ins: list[FieldSpec] = [f for f in parent[0] if f.name not in own] if parent else []
        outs: list[FieldSpec] = [f for f in parent[1] if f.name not in own] if parent else []
        for name in inspect.get_annotations(cls):
            marker = cls.__dict__.get(name)
            if not isinstance(marker, _FieldMarker):
                raise SignatureError(
                    f"annotation {name!r} in {cls.__name__} is neither an input nor an output",
                    field=name, fix=f"write `{name}: ... = InputField()` or `= OutputField()`.")
            spec = FieldSpec(name, hints[name], marker.desc, marker.prefix)
            (ins if marker.kind == "input" else outs).append(spec)
        doc = (cls.__dict__.get("__doc__") or "").strip() or (parent[2] if parent else "")
        cls._declared = (tuple(ins), tuple(outs), doc)
        for name in inspect.get_annotations(cls):
            delattr(cls, name)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Signature is immutable; use with_instructions()/prepend_output()/append_input()")

    def __reduce__(self) -> tuple[Any, ...]:  # copy/deepcopy go through the constructor (slots + immutability)
        return (Signature, (self.inputs, self.outputs, self.instructions))

    # ---- construction helpers
    @classmethod
    def parse(cls, text: str, *, instructions: str | None = None,
              types: dict[str, Any] | None = None) -> Signature:
        """Parse ``"a, b: list[str] -> c: int"``. Untyped fields are ``str``."""
        if "->" not in text:
            raise SignatureError(f"signature {text!r} has no '->'",
                                 fix="write inputs and outputs as 'question, context -> answer'.")
        left, _, right = text.partition("->")
        if "->" in right:
            raise SignatureError(f"signature {text!r} has more than one '->'")
        ins = [_parse_field(part, types) for part in _split_top(left)]
        outs = [_parse_field(part, types) for part in _split_top(right)]
        if not outs:
            raise SignatureError(f"signature {text!r} declares no output field",
                                 fix="add at least one field after '->'.")
        return Signature(ins, outs, instructions)

    def with_instructions(self, instructions: str) -> Signature:
        return Signature(self.inputs, self.outputs, instructions)

    def prepend_output(self, spec: FieldSpec) -> Signature:
        return Signature(self.inputs, (spec, *self.outputs), self.instructions)

    def append_input(self, spec: FieldSpec) -> Signature:
        return Signature((*self.inputs, spec), self.outputs, self.instructions)

    # ---- queries
    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.outputs)

    def input(self, name: str) -> FieldSpec | None:
        return next((f for f in self.inputs if f.name == name), None)

    def output(self, name: str) -> FieldSpec | None:
        return next((f for f in self.outputs if f.name == name), None)

    @property
    def structured(self) -> bool:
        """True when some output needs JSON (models, dicts, nested lists)."""
        return any(is_structured(f.annotation) for f in self.outputs)

    def output_json_schema(self) -> dict[str, Any]:
        model = pydantic.create_model(  # type: ignore[call-overload]
            "Output", **{f.name: (f.annotation, ...) for f in self.outputs})
        schema: dict[str, Any] = model.model_json_schema()
        return schema

    def shorthand(self) -> str:
        def one(f: FieldSpec) -> str:
            return f.name if f.annotation is str else f"{f.name}: {type_to_str(f.annotation)}"
        return ", ".join(map(one, self.inputs)) + " -> " + ", ".join(map(one, self.outputs))

    # ---- equality / serialization
    def _key(self) -> tuple[Any, ...]:
        k = self._k
        if k is None:
            custom: dict[str, Any] = {}
            for f in (*self.inputs, *self.outputs):
                _collect_custom_types(f.annotation, custom)
            # custom types by name *and* content: two different classes both named "Person" differ
            k = (tuple((f.name, type_to_str(f.annotation), f.desc, f.prefix) for f in self.inputs),
                 tuple((f.name, type_to_str(f.annotation), f.desc, f.prefix) for f in self.outputs),
                 self.instructions,
                 canonical_json(custom, default=str) if custom else "")
            object.__setattr__(self, "_k", k)
        return k

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and (self is other or self._key() == other._key())

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash(self._key())
            object.__setattr__(self, "_hash", h)
        return h

    def __repr__(self) -> str:
        return f"Signature({self.shorthand()!r})"

    def to_dict(self) -> dict[str, Any]:
        custom: dict[str, Any] = {}
        for f in (*self.inputs, *self.outputs):
            _collect_custom_types(f.annotation, custom)

        def fd(f: FieldSpec) -> dict[str, Any]:
            d: dict[str, Any] = {"name": f.name, "type": type_to_str(f.annotation)}
            if f.desc:
                d["desc"] = f.desc
            if f.prefix:
                d["prefix"] = f.prefix
            return d

        out: dict[str, Any] = {"inputs": [fd(f) for f in self.inputs],
                               "outputs": [fd(f) for f in self.outputs],
                               "instructions": self.instructions}
        if custom:
            out["types"] = custom
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, types: dict[str, Any] | None = None) -> Signature:
        try:
            return cls._from_dict(data, types)
        except SignatureError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise SignatureError(f"malformed signature JSON ({type(e).__name__}: {str(e)[:200]})",
                                 fix="a signature is {\"inputs\": [{\"name\": ..., \"type\": ...}], "
                                     "\"outputs\": [...], \"instructions\": ...}; save it again from code.") from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any], types: dict[str, Any] | None) -> Signature:
        registry = dict(types or {})
        for name, spec in (data.get("types") or {}).items():
            if name not in registry:
                registry[name] = _type_from_spec(name, spec, registry)

        def fs(d: dict[str, Any]) -> FieldSpec:
            return FieldSpec(d["name"], str_to_type(d.get("type", "str"), registry),
                             d.get("desc", ""), d.get("prefix", ""))

        return Signature([fs(d) for d in data["inputs"]], [fs(d) for d in data["outputs"]],
                         data.get("instructions"))


def ensure_signature(sig: str | Signature | type[Signature], *, instructions: str | None = None,
                     types: dict[str, Any] | None = None) -> Signature:
    """Accept a shorthand string, a Signature instance or a Signature subclass."""
    if isinstance(sig, str):
        return Signature.parse(sig, instructions=instructions, types=types)
    if isinstance(sig, type) and issubclass(sig, Signature):
        s = sig()
    elif isinstance(sig, Signature):
        s = sig
    else:
        raise SignatureError(f"expected a signature string or Signature, got {type(sig).__name__}",
                             fix="pass e.g. 'question -> answer'.")
    return s.with_instructions(instructions) if instructions else s


def _default_instructions(ins: tuple[FieldSpec, ...], outs: tuple[FieldSpec, ...]) -> str:
    def names(fs: tuple[FieldSpec, ...]) -> str:
        return ", ".join(f"`{f.name}`" for f in fs)

    if ins:
        return f"Given the fields {names(ins)}, produce the fields {names(outs)}."
    return f"Produce the fields {names(outs)}."


def _check_fields(ins: tuple[FieldSpec, ...], outs: tuple[FieldSpec, ...]) -> None:
    seen: set[str] = set()
    for f in (*ins, *outs):
        if not isinstance(f, FieldSpec):
            raise SignatureError(f"expected FieldSpec, got {type(f).__name__}")
        if not _IDENT.match(f.name):
            raise SignatureError(f"{f.name!r} is not a valid field name", field=f.name,
                                 fix="use letters, digits and underscores, not starting with a digit.")
        if f.name in seen:
            raise SignatureError("field declared twice", field=f.name,
                                 fix="give every input and output field a distinct name.")
        seen.add(f.name)


# --------------------------------------------------------------------------- type expressions

def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _parse_field(part: str, types: dict[str, Any] | None) -> FieldSpec:
    name, colon, tp = part.partition(":")
    name = name.strip()
    if not _IDENT.match(name):
        raise SignatureError(f"{name!r} is not a valid field name", field=name,
                             fix="use letters, digits and underscores, e.g. 'question -> answer'.")
    return FieldSpec(name, str_to_type(tp.strip(), types) if colon else str)


_SPECIAL_FORMS = ("Optional", "Literal", "Union")
_SPECIAL_EXAMPLES = {"Optional": "Optional[int]", "Literal": "Literal['a', 'b']", "Union": "Union[int, str]"}


def str_to_type(expr: str, types: dict[str, Any] | None = None) -> Any:
    """Read a type expression such as ``list[str]`` or ``Literal['a', 'b']`` without eval.

    Whatever the text, the only error is a :class:`SignatureError`; a type that reads but that
    pydantic cannot validate with (``dict[str]``, ``Literal[1j]``) is refused here too."""
    if not isinstance(expr, str):
        raise SignatureError(f"a type expression is a string, got {type(expr).__name__}",
                             fix="write it as in a signature, e.g. 'list[str]'.")
    try:
        tree = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes
        raise SignatureError(f"cannot read type {expr!r}: {getattr(e, 'msg', None) or e}") from None
    except (RecursionError, MemoryError):
        raise SignatureError(f"type {expr[:60]!r}... is nested too deeply") from None
    try:
        tp = _type_from_ast(tree, expr, types or {})
    except SignatureError:
        raise
    except Exception as e:  # noqa: BLE001 - typing's own checks (a bad Union), anything the text provoked
        raise SignatureError(f"type {expr!r} is not a valid type: {e}",
                             fix="use str, int, float, bool, list[...], dict[...], Optional[...], "
                                 "Literal[...] or a named pydantic model passed via types=.") from None
    try:
        type_adapter(tp)
    except TypeError:  # unhashable (a custom type object pydantic still handles): checked when used
        pass
    except Exception as e:  # noqa: BLE001 - pydantic's schema errors vary by version
        raise SignatureError(f"type {expr!r} cannot be used for a field ({type(e).__name__}: {str(e)[:160]})",
                             fix="use str, int, float, bool, list[...], dict[...], Optional[...], "
                                 "Literal[...] or a named pydantic model passed via types=.") from None
    return tp


def _type_from_ast(node: ast.AST, expr: str, types: dict[str, Any], *, base: bool = False) -> Any:
    if isinstance(node, ast.Name):
        if node.id in types:
            return types[node.id]
        if node.id in _BASE_TYPES:
            if node.id in _SPECIAL_FORMS and not base:
                raise SignatureError(f"{node.id} needs arguments in {expr!r}",
                                     fix=f"write e.g. {_SPECIAL_EXAMPLES[node.id]}.")
            return _BASE_TYPES[node.id]
        raise SignatureError(f"unknown type {node.id!r} in {expr!r}",
                             fix=f"pass types={{{node.id!r}: {node.id}}} so the name can be resolved.")
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return Union[_type_from_ast(node.left, expr, types), _type_from_ast(node.right, expr, types)]  # noqa: UP007 - a runtime type
    if isinstance(node, ast.Subscript):
        generic: Any = _type_from_ast(node.value, expr, types, base=True)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if generic is Literal:
            vals: list[Any] = []
            for a in args:
                if (isinstance(a, ast.UnaryOp) and isinstance(a.op, ast.USub) and isinstance(a.operand, ast.Constant)
                        and isinstance(a.operand.value, (int, float))):
                    vals.append(-a.operand.value)  # Literal[-1, 1]
                    continue
                if not isinstance(a, ast.Constant):
                    raise SignatureError(f"Literal values must be constants in {expr!r}")
                vals.append(a.value)
            return Literal[tuple(vals)]
        targs = tuple(_type_from_ast(a, expr, types) for a in args)
        if not targs:
            raise SignatureError(f"{ast.unparse(node.value)}[...] needs a type inside the brackets in {expr!r}")
        if generic is Optional:
            if len(targs) != 1:
                raise SignatureError(f"Optional takes one type in {expr!r}", fix="write Optional[int] (or Union[...]).")
            return Optional[targs[0]]  # noqa: UP045 - a runtime type
        if generic is Union:
            return Union[targs]  # noqa: UP007 - a runtime type
        if generic in (list, dict, tuple):
            return generic[targs if len(targs) > 1 else targs[0]]
        raise SignatureError(f"type {ast.unparse(node.value)!r} cannot be subscripted in {expr!r}")
    raise SignatureError(f"unsupported type expression {expr!r}",
                         fix="use str, int, float, bool, list[...], dict[...], Optional[...], "
                             "Literal[...] or a named pydantic model passed via types=.")


@functools.lru_cache(maxsize=1024)
def type_to_str(tp: Any) -> str:
    """The inverse of :func:`str_to_type` (custom types by class name)."""
    if tp is None or tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(v) for v in typing.get_args(tp)) + "]"
    if origin in (Union, _pytypes.UnionType):
        args = typing.get_args(tp)
        if len(args) == 2 and type(None) in args:
            other = args[0] if args[1] is type(None) else args[1]
            return f"Optional[{type_to_str(other)}]"
        return "Union[" + ", ".join(type_to_str(a) for a in args) + "]"
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[" + ", ".join(type_to_str(a) for a in typing.get_args(tp)) + "]"
    if isinstance(tp, type):
        return tp.__name__
    raise SignatureError(f"cannot serialize type {tp!r}")


# --------------------------------------------------------------------------- values

def is_structured(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return True
    if tp is dict or origin is dict:
        return True
    if origin in (list, tuple):
        return any(is_structured(a) for a in typing.get_args(tp))
    if origin in (Union, _pytypes.UnionType):
        return any(is_structured(a) for a in typing.get_args(tp) if a is not type(None))
    return False


@functools.lru_cache(maxsize=1024)
def type_adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(tp)


def literal_options(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a Literal/Enum annotation (None for other types)."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tuple(m.value for m in tp)
    return None


def compatible(source: Any, target: Any) -> bool:
    """Whether a value of type ``source`` may feed a field of type ``target`` (static check).

    Lenient where a text prompt can carry the value (anything may feed a ``str``
    field; Literal[str] feeds str), strict on containers and models.
    """
    if target is Any or source is Any or source == target:
        return True
    if target is str:
        return True  # everything renders to text
    so, to = typing.get_origin(source), typing.get_origin(target)
    if so is Literal:
        vals = typing.get_args(source)
        if to is Literal:
            return set(vals) <= set(typing.get_args(target))
        return all(isinstance(v, target) for v in vals) if isinstance(target, type) else True
    if to in (Union, _pytypes.UnionType):
        return any(compatible(source, t) for t in typing.get_args(target))
    if so in (Union, _pytypes.UnionType):
        return all(compatible(s, target) for s in typing.get_args(source))
    if target is float and source in (int, float):
        return True
    if to in (list, tuple) and so in (list, tuple):
        sa, ta = typing.get_args(source), typing.get_args(target)
        return not sa or not ta or compatible(sa[0], ta[0])
    if target in (list, tuple) and so in (list, tuple):
        return True
    if source in (list, tuple) and to in (list, tuple):
        return True
    if to is dict and (so is dict or source is dict):
        return True
    if target is dict and so is dict:
        return True
    if isinstance(source, type) and isinstance(target, type):
        try:
            return issubclass(source, target)
        except TypeError:
            return False
    return False
