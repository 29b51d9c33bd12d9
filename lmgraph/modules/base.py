"""The module contract shared by every node kind.

A module is an immutable value: its configuration (signature, instructions, demos, prompt
format, model name, decoding settings) plus, for some kinds, named runtime *resources*
(a retriever, Python tools, a reward function) that are bound by name when an artifact is
loaded -- never serialized as code.

``forward(inputs, call)`` does the work; ``call`` is the executor's per-node handle
(:class:`lmgraph.pipeline.executor.NodeCall`) that owns the model, tracing and budget.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ArtifactError, DefinitionError, PipelineValidationError
from ..lm.prompt import FORMATS
from ..lm.values import invalid_reason, jsonable, validate_strict
from ..signatures import Signature

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..pipeline.executor import NodeCall, Prediction
    from ..pipeline.trace import NodeTrace

FORMAT_CHOICES = ("auto", *FORMATS)

_CUSTOM_SAVE_FIX = ("to save a custom module, give its class a `kind = \"my_kind\"` (this registers it for loading) "
                    "and a `config_model`: a pydantic model (extra='forbid') whose fields are the constructor "
                    "keywords to save, read from the attributes of the same names -- or write config(self) -> dict "
                    "of JSON values and a classmethod from_config(cls, config, *, resources, types) that rebuilds "
                    "it (runtime objects go in resources(), bound by name); to load, import the module that "
                    "defines the class (or pass kinds=[MyModule]), then Program.load(path, resources={...}).")


class KindRegistry(Mapping[str, type["Module"]]):
    """Kind name -> module class: the closed set of node kinds a program file may contain.

    A class registers its kind once, when it is defined with its own ``kind = "..."``; a second
    class claiming a taken kind is refused, and a subclass that sets no ``kind`` registers nothing
    (it saves as its parent's kind and never replaces the parent for loading).
    """

    def __init__(self) -> None:
        self._classes: dict[str, type[Module]] = {}

    def register(self, cls: type[Module]) -> type[Module]:
        """Register ``cls`` under ``cls.kind`` (a class defined again under the same qualified name,
        as by a reloaded module, replaces its earlier self); returns ``cls``."""
        kind = cls.__dict__.get("kind", cls.kind)
        if not isinstance(kind, str) or not kind:
            raise DefinitionError(f"{cls.__qualname__} has no kind to register (kind = {kind!r})",
                                  fix=f'give {cls.__name__} a kind in its class body: kind = "my_kind".')
        taken = self._classes.get(kind)
        if taken is not None and taken is not cls and _qualified(taken) != _qualified(cls):
            raise _kind_taken(kind, taken, cls)
        self._classes[kind] = cls
        return cls

    def __getitem__(self, kind: str) -> type[Module]:
        return self._classes[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"KindRegistry({', '.join(f'{k}={c.__name__}' for k, c in self._classes.items())})"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _kind_taken(kind: str, taken: type, cls: type) -> DefinitionError:
    return DefinitionError(f"module kind {kind!r} is taken by {_qualified(taken)}; {_qualified(cls)} cannot "
                           "register it too (a program file names each kind once)",
                           fix=f'give {cls.__name__} a kind of its own: kind = "my_kind" in its class body (a '
                               "subclass that sets no kind saves and loads as its parent's kind).")


#: kind name -> module class; the closed set of node kinds an artifact may contain.
MODULE_KINDS = KindRegistry()

#: kinds added for one load (``Program.load(..., kinds=[...])``), looked up before MODULE_KINDS
_LOAD_KINDS: contextvars.ContextVar[Mapping[str, type[Module]] | None] = contextvars.ContextVar(
    "lmgraph_load_kinds", default=None)


def lookup_kind(kind: str) -> type[Module] | None:
    """The class that loads ``kind``: one given for this load, else the registered one."""
    return (_LOAD_KINDS.get() or {}).get(kind) or MODULE_KINDS.get(kind)


@contextlib.contextmanager
def loading_kinds(kinds: Iterable[type[Module]] | None) -> Iterator[None]:
    """Within the block, ``kinds`` load their kind names (``Program.load(..., kinds=[MyModule])``).

    Each is a Module class with a kind; a kind registered to another class is refused unless the
    class given is a subclass of it (it then stands in for its parent for this load only)."""
    extra: dict[str, type[Module]] = dict(_LOAD_KINDS.get() or {})
    for cls in kinds or ():
        if not (isinstance(cls, type) and issubclass(cls, Module)):
            raise DefinitionError(f"kinds= takes Module classes, got {cls!r}",
                                  fix="pass the classes themselves: Program.load(path, kinds=[MyModule]).")
        kind = cls.kind
        if not isinstance(kind, str) or not kind:
            raise DefinitionError(f"{cls.__qualname__} has no kind, so no saved node can name it",
                                  fix=f'give {cls.__name__} a kind in its class body: kind = "my_kind".')
        taken = extra.get(kind) or MODULE_KINDS.get(kind)
        if taken is not None and not issubclass(cls, taken):
            raise _kind_taken(kind, taken, cls)
        extra[kind] = cls
    token = _LOAD_KINDS.set(extra)
    try:
        yield
    finally:
        _LOAD_KINDS.reset(token)


#: demo-like parameter kinds: their values are lists of demos checked against ``Param.signature``
DEMO_KINDS = ("demos", "demo_pool")

#: one record of a nested module's inputs/outputs in a traced run (see ``Module.child_io``)
IORecord = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a module, as the parameter tree shows it.

    ``name`` is relative to the module that owns it (``"demos"``, ``"instructions"``; CallTool's
    choose-call demos: ``"step.demos"``), ``kind`` what it is (``"instructions"``, ``"demos"``,
    ``"format"``, ``"decode"``, ``"knn"``, ``"demo_pool"``, ``"temperature"``, ``"max_tokens"``,
    ``"lm"`` or a kind-specific one such as ``"max_steps"``, ``"k"``), ``value`` its current value.
    For demo kinds, ``signature`` is what every demo must satisfy and ``optional`` the demo fields
    that may be left out (a ChainOfThought's ``reasoning``). Paths in a program are
    ``"<node>.<name>"`` and, for nested modules, ``"<node>.<child>...<name>"``
    (:meth:`lmgraph.Program.named_parameters`).
    """

    name: str
    kind: str
    value: Any
    signature: Signature | None = None
    optional: tuple[str, ...] = ()

    @property
    def is_demos(self) -> bool:
        """A fixed demo list (``kind == "demos"``): what few-shot optimizers fill."""
        return self.kind == "demos"


class UnknownParameterError(DefinitionError):
    """A parameter path names nothing in the tree (``path`` is relative to where it was looked up)."""

    def __init__(self, path: str, known: list[str] | None = None) -> None:
        self.path = path
        super().__init__(f"no parameter {path!r}",
                         fix=f"parameters here: {', '.join(known)}." if known else None)


class Module:
    """Base class of all node kinds."""

    kind: ClassVar[str] = ""
    #: names of attributes an optimizer may change with ``replace``
    tunable: ClassVar[tuple[str, ...]] = ()
    #: tunable attributes that hold child modules (or a sub-program), not parameter values
    child_attrs: ClassVar[tuple[str, ...]] = ()
    #: parameter names that differ from their attribute (``{"step.demos": "step_demos"}``)
    param_attrs: ClassVar[dict[str, str]] = {}

    #: the kind's config model (a :class:`~lmgraph.modules.configs.ModuleConfig` subclass, or its
    #: name in :mod:`lmgraph.modules.configs`): what it saves; None: it saves only by overriding config()
    config_model: ClassVar[type[BaseModel] | str | None] = None

    _frozen: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):  # only a kind of its own: a subclass never takes over its parent's
            MODULE_KINDS.register(cls)

    def __setattr__(self, key: str, value: Any) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is immutable; use .replace({key}=...)")
        object.__setattr__(self, key, value)

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)

    # ---- contract every kind implements
    @property
    def signature(self) -> Signature:
        """The node's external inputs/outputs (what edges connect to)."""
        raise DefinitionError(f"{type(self).__name__} does not define its signature",
                              fix="a custom module implements the property `signature` -> lmgraph.Signature.")

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        raise DefinitionError(f"{type(self).__name__} does not implement forward()",
                              fix="a custom module implements async forward(self, inputs, call) -> dict of its "
                                  "output fields.")

    # ---- saving and loading: one generic path through the kind's config model
    @classmethod
    def config_class(cls) -> type[BaseModel] | None:
        """The kind's config model class (resolved on first use; None when the class has none)."""
        model = cls.config_model
        if isinstance(model, str):
            from . import configs

            model = getattr(configs, model)
        return model

    def config(self) -> dict[str, Any]:
        """JSON-able configuration (no resources, no code): every field of the kind's config model,
        the module's attribute of that name (``kind_config()`` gives the kind's own fields)."""
        model = type(self).config_class()
        if model is None:
            raise DefinitionError(f"the custom module {type(self).__name__} cannot be saved (or hashed): it has no "
                                  "config_model and does not implement config()", fix=_CUSTOM_SAVE_FIX)
        kind_fields = getattr(model, "kind_fields", ())
        own = self.kind_config() if kind_fields else {}
        values = {f: own[f] if f in kind_fields else _plain(getattr(self, f)) for f in model.model_fields}
        from .configs import dump_config

        return dump_config(type(self).__name__, model, values)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> Module:
        """Rebuild a module from its saved config, checked against the kind's config model (an
        unknown key or a value of the wrong JSON type is an ArtifactError naming the key)."""
        model = cls.config_class()
        if model is None:
            raise DefinitionError(f"the custom module {cls.__name__} cannot be loaded: it has no config_model and "
                                  "does not implement from_config()", fix=_CUSTOM_SAVE_FIX)
        from .configs import validate_config

        cfg = validate_config(cls.kind, model, config)
        kind_fields = getattr(model, "kind_fields", ())
        kwargs = {f: getattr(cfg, f) for f in model.model_fields if f not in kind_fields}
        if kind_fields:
            kwargs.update(cls.kind_kwargs(cfg, resources=resources, types=types))
        return cls(**kwargs)

    def kind_config(self) -> dict[str, Any]:
        """The saved values of the config model's ``kind_fields`` (child modules, sub-programs,
        resources by name): what a plain attribute cannot give."""
        return {}

    @classmethod
    def kind_kwargs(cls, config: BaseModel, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> dict[str, Any]:
        """Constructor keywords rebuilt from the config's ``kind_fields``."""
        return {}

    def resources(self) -> dict[str, Any]:
        """Named runtime objects this module needs (bound by name on load)."""
        return {}

    def submodules(self) -> dict[str, Module]:
        """Inner modules (for modules built from others), by child name: the parameter tree's
        children (``named_parameters`` walks them; ``replace_child`` swaps one)."""
        return {}

    # ---- the parameter tree
    @property
    def signature_for_demos(self) -> Signature:
        """The fields a demo of this module holds (default: its signature)."""
        return self.signature

    @property
    def optional_demo_fields(self) -> tuple[str, ...]:
        """Demo fields that may be left out (labelled data has no reasoning)."""
        return ()

    def demo_spec(self, attr: str) -> tuple[Signature, tuple[str, ...]] | None:
        """(signature, optional fields) the demos stored in attribute ``attr`` must satisfy; None
        when ``attr`` holds no demos."""
        if attr in DEMO_KINDS:
            return self.signature_for_demos, self.optional_demo_fields
        return None

    def own_parameters(self) -> dict[str, Param]:
        """This module's own tunable parameters (children's are theirs), by name."""
        names = {a: n for n, a in self.param_attrs.items()}
        out: dict[str, Param] = {}
        for attr in self.tunable:
            if attr in self.child_attrs:
                continue
            name = names.get(attr, attr)
            spec = self.demo_spec(attr)
            out[name] = Param(name, name.rsplit(".", 1)[-1], getattr(self, attr),
                              *(spec if spec is not None else ()))
        return out

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Param]]:
        """``(path, Param)`` for this module's own parameters, then recursively for its children's
        (``prefix + "generator.demos"``...)."""
        for name, param in self.own_parameters().items():
            yield prefix + name, param
        for child, module in self.submodules().items():
            yield from module.named_parameters(f"{prefix}{child}.")

    def with_parameters(self, values: Mapping[str, Any]) -> Module:
        """A copy with parameters changed, by path relative to this module (``{"demos": [...]}``,
        ``{"generator.instructions": "..."}``); unknown paths raise :class:`UnknownParameterError`."""
        own_params = self.own_parameters()
        children = self.submodules()
        own: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for path, value in values.items():
            head, _, rest = path.partition(".")
            if path in own_params:
                own[path] = value
            elif head in children and rest:
                nested.setdefault(head, {})[rest] = value
            else:
                raise UnknownParameterError(path, [p for p, _ in self.named_parameters()])
        new = self
        if own:
            try:
                new = new.replace(**{self.param_attrs.get(n, n): v for n, v in own.items()})
            except DefinitionError as e:  # a bad value: say which parameter was being set
                raise DefinitionError(f"setting {', '.join(own)}: {e.message}", node=e.node, field=e.field,
                                      fix=e.fix) from None
        for head, changes in nested.items():
            try:
                child = children[head].with_parameters(changes)
            except UnknownParameterError as e:
                raise UnknownParameterError(f"{head}.{e.path}", [p for p, _ in self.named_parameters()]) from None
            except DefinitionError as e:
                raise DefinitionError(f"{head}: {e.message}", node=e.node, field=e.field, fix=e.fix) from None
            new = new.replace_child(head, child)
        return new

    def replace_child(self, name: str, module: Module) -> Module:
        """A copy with child ``name`` (a key of ``submodules()``) replaced by ``module``."""
        if name not in self.child_attrs or name not in self.submodules():
            raise DefinitionError(f"{type(self).__name__} has no child module {name!r}",
                                  fix=f"children: {', '.join(self.submodules()) or 'none'}.")
        return self._copy_with({name: module})

    def child_io(self, trace: NodeTrace) -> dict[str, list[IORecord]]:
        """What this module's children were given and produced in one traced run, by child path
        (``{"generator": [{"inputs": {...}, "outputs": {...}}]}``; deeper paths dotted): the
        source of bootstrapped demos for nested parameters. Only calls the module can attribute
        to a child are listed; the default (no children) is none."""
        return {}

    def child_fields(self, child: str) -> dict[str, tuple[str, bool]]:
        """How child ``child``'s fields relate to this module's own fields: child field ->
        (own field, per_item). ``per_item``: the own field is a list holding one value per run of
        the child (Map). Fields left out have no counterpart. Used to map labelled rows onto
        nested modules' demos."""
        return {}

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        """At most how many model calls one run of this module makes, known before running (dry
        runs, budget checks). ``repairs``: count the one repair / follow-up call that may follow
        each call whose reply cannot be read (a true upper bound); False: the calls made when every
        reply reads (what a compile paces its budget with). ``list_lengths``: the known item counts
        of list inputs, by field name (what a fan-out kind such as Map multiplies by)."""
        return 1

    def max_items(self, field: str) -> int | None:
        """At most how many items the list output ``field`` holds (None: not bounded or not a list)."""
        return None

    def edge_problem(self, field: str, source: Any, ref: str) -> tuple[str, str] | None:
        """(message, fix) explaining why ``ref`` (a value of type ``source``) cannot feed input
        ``field`` when the edge's types do not fit, in this kind's own terms (a Route's selector:
        an option with no branch); None: the generic type-mismatch message."""
        return None

    # ---- shared behaviour
    def replace(self, **changes: Any) -> Module:
        """A copy with some tunable attributes changed (modules are never mutated)."""
        bad = [k for k in changes if k not in self.tunable]
        if bad:
            raise DefinitionError(f"{type(self).__name__} has no tunable parameter {bad[0]!r}",
                                  fix=f"tunable parameters are: {', '.join(self.tunable) or 'none'}.")
        return self._copy_with(changes)

    def _copy_with(self, changes: Mapping[str, Any]) -> Module:
        new = copy.copy(self)
        object.__setattr__(new, "_frozen", False)
        for k, v in changes.items():
            setattr(new, k, _normalise_param(k, v, new))
        new._check()
        new._freeze()
        return new

    def _check(self) -> None:
        """Validate configuration; raise DefinitionError naming the fix."""

    def parameters(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.tunable}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.config()}

    def __call__(self, ctx: Any = None, /, **inputs: Any) -> Prediction:
        """Run this module once on ``inputs`` (keywords; ``ctx=`` a RunContext), in process and
        synchronously: :func:`lmgraph.call`."""
        return call(self, ctx, **inputs)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict() \
            and self.resources().keys() == other.resources().keys()

    def __hash__(self) -> int:
        return hash((self.kind, repr(sorted(self.resources()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.signature.shorthand()!r})"

    def describe(self) -> str:
        return type(self).__name__


def call(module: Module, ctx: Any = None, /, **inputs: Any) -> Prediction:
    """Run ``module`` once, synchronously and in process: ``lg.call(lg.Predict("question -> answer"),
    question="...")``. The module becomes the one node of a program whose inputs are its inputs and
    whose outputs are its outputs, and that program runs once; returns the :class:`Prediction`
    (``.answer``, ``.trace``). ``ctx=`` passes a :class:`lmgraph.RunContext` (the default: the
    embedded model) unless the module has an input called ``ctx``, which is then that input (pass
    the context positionally then: ``lg.call(module, ctx, ctx="...")``)."""
    from ..errors import UsageError
    from ..pipeline.builder import Pipeline, ref

    if not isinstance(module, Module):
        raise UsageError(f"lg.call runs a module, got {type(module).__name__}",
                         fix="pass a module: lg.call(lg.Predict('question -> answer'), question='...').")
    sig = module.signature
    if "ctx" in inputs and "ctx" not in sig.input_names:
        if ctx is not None:
            raise UsageError("ctx given twice (positionally and as ctx=)", fix="pass ctx once.")
        ctx = inputs.pop("ctx")
    node = module.kind if module.kind.isidentifier() else "call"
    p = Pipeline(node)
    handles = {f.name: p.input(f.name, f.annotation) for f in sig.inputs}
    p.add(module, node, inputs=handles)
    p.output(**{o: ref(f"{node}.{o}") for o in sig.output_names})
    program = p.build()
    return program.run_sync(ctx, **inputs)


def calls_of(module: Module, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
    """``module.estimated_calls(list_lengths, repairs=...)``; a custom module whose method predates
    ``repairs`` is asked without it."""
    method = module.estimated_calls
    if "repairs" in _parameters(type(module).estimated_calls):
        return method(list_lengths, repairs=repairs)
    return method(list_lengths)


@functools.lru_cache(maxsize=256)
def _parameters(method: Callable[..., Any]) -> frozenset[str]:
    """The parameter names of a module class's ``estimated_calls`` (cached per function)."""
    return frozenset(inspect.signature(method).parameters)


def _plain(value: Any) -> Any:
    """An attribute as the config model takes it: a tuple as a list, a mapping as a dict (validation
    then copies each dict it checks: the saved data shares no dict with the module)."""
    if type(value) is tuple:
        return [v if type(v) is dict or not isinstance(v, Mapping) else dict(v) for v in value]
    if isinstance(value, Mapping) and type(value) is not dict:
        return dict(value)
    return value


def module_from_dict(data: Mapping[str, Any], *, resources: Mapping[str, Any],
                     types: Mapping[str, Any] | None, node: str | None = None) -> Module:
    if not isinstance(data, Mapping):
        raise ArtifactError(f"the module entry is a JSON {type(data).__name__}, not an object", node=node)
    kind = data.get("kind")
    cls = lookup_kind(kind) if isinstance(kind, str) and kind else None
    if cls is None:
        what = (f"unknown module kind {kind!r}" if kind else
                "a module saved without a kind (a custom Module subclass that sets no `kind`)")
        known = sorted({*MODULE_KINDS, *(_LOAD_KINDS.get() or {})})
        raise ArtifactError(what, node=node,
                            fix=f"known kinds: {', '.join(known)}. A custom module kind is known once the code "
                                "defining its class (with `kind = ...` and a config_model) is imported: import it "
                                "before Program.load(), or pass Program.load(path, kinds=[MyModule]). A kind this "
                                "lmgraph does not know may come from a newer lmgraph: upgrade it.")
    try:
        return cls.from_config({k: v for k, v in data.items() if k != "kind"},
                               resources=resources, types=types)
    except KeyError as e:
        raise ArtifactError(f"module config lacks {e}", node=node) from None


def child_from_dict(data: Any, key: str, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> Module:
    """A child module saved under ``key`` of its parent's config (BestOfN's ``module``); an error
    in it names the key path (``judge.temperature``)."""
    try:
        return module_from_dict(data, resources=resources, types=types)
    except PipelineValidationError:
        raise
    except DefinitionError as e:
        where = f"{key}.{e.field}" if e.field else key
        raise ArtifactError(e.message, node=e.node, field=where, fix=e.fix) from e


def need_resource(resources: Mapping[str, Any], name: str, what: str) -> Any:
    try:
        return resources[name]
    except KeyError:
        raise ArtifactError(f"this artifact needs the {what} named {name!r}",
                            fix=f"pass resources={{{name!r}: ...}} to Program.load().") from None


def _normalise_param(key: str, value: Any, module: Module) -> Any:
    spec = module.demo_spec(key)
    if spec is not None:
        return normalise_demos(value, spec[0], optional=spec[1])
    if key == "verbalizer":
        from .verbalizer import normalise_verbalizer

        return normalise_verbalizer(value, module.signature)
    if key == "format" and value not in FORMAT_CHOICES:
        raise DefinitionError(f"unknown prompt format {value!r}",
                              fix=f"choose one of {', '.join(FORMAT_CHOICES)}.")
    return value


def normalise_demos(demos: Any, sig: Signature, *, optional: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    """Validate demos against the signature and store them as plain JSON data.

    Fields named in ``optional`` (e.g. ChainOfThought's ``reasoning``) may be left out.
    """
    out = []
    for i, d in enumerate(demos or ()):
        if not isinstance(d, Mapping):
            raise DefinitionError(f"demo #{i} is a {type(d).__name__}, not a mapping",
                                  fix="pass demos as dicts of field name -> value.")
        row = {}
        for f in (*sig.inputs, *sig.outputs):
            if f.name not in d:
                if f.name in optional:
                    continue
                raise DefinitionError(f"demo #{i} lacks field {f.name!r}", field=f.name,
                                      fix=f"every demo needs {', '.join(sig.input_names + sig.output_names)}.")
            try:
                row[f.name] = jsonable(validate_strict(d[f.name], f.annotation))  # no prose leniency
            except Exception as e:  # noqa: BLE001 - report any validation failure the same way
                raise DefinitionError(f"demo #{i} has a bad value: {invalid_reason(e, d[f.name], f.annotation)}",
                                      field=f.name) from None
        out.append(row)
    return tuple(out)
