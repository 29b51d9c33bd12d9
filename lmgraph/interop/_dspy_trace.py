"""Tracing one forward call of a DSPy program (imported only by :mod:`lmgraph.interop.dspy`; it
imports dspy).

The program runs once on a copy, inside a local ``dspy.context`` holding DSPy's ``DummyLM``, a
stand-in retrieval model and a callback: the inputs are placeholder strings, every predictor
answers every output field with a placeholder of its own, and every retriever returns
placeholder passages. Which placeholder reaches which predictor input (or program output) is the
graph; a value that holds placeholders but is none of them was computed by Python code.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import typing
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.dsp.utils import dotdict
from dspy.utils.callback import BaseCallback
from dspy.utils.dummies import DummyLM

from ..errors import DefinitionError

OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧: placeholders no real text contains
_MARK = re.compile(f"{OPEN}([^{CLOSE}]+){CLOSE}")

#: DSPy modules with an lmgraph counterpart from_dspy does not convert (the fix names it)
COUNTERPARTS = {"ReAct": "lg.CallTool", "BestOfN": "lg.BestOfN", "Refine": "lg.Refine",
                "Parallel": "lg.Map", "MultiChainComparison": "lg.BestOfN", "ProgramOfThought": "lg.CallTool",
                "CodeAct": "lg.CallTool", "KNN": "Predict(knn=k, demo_pool=...)", "Retry": "lg.Refine"}
_STATEMENTS = {ast.If: "an `if` statement", ast.For: "a `for` loop", ast.While: "a `while` loop",
               ast.AsyncFor: "an `async for` loop", ast.Try: "a `try` block", ast.With: "a `with` block",
               ast.Match: "a `match` statement"}


def mark(name: str) -> str:
    return f"{OPEN}{name}{CLOSE}"


@dataclass
class Call:
    """One predictor or retriever call seen while tracing."""

    kind: str                 # "predict" | "retrieve"
    path: str                 # its path in the DSPy program (named_predictors / named_parameters)
    inputs: dict[str, Any]
    obj: Any
    outputs: dict[str, Any] = field(default_factory=dict)


def strip_self(path: str) -> str:
    return path[5:] if path.startswith("self.") else path


def check_forward(module: Any, path: str) -> None:
    """A user module's forward() with Python control flow is refused, naming the statement: one
    traced call sees only the branch or iteration count it took."""
    cls = type(module)
    fn = getattr(cls, "forward", None)
    if fn is None:  # nothing to read
        return
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
        first = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError, SyntaxError):  # defined in a REPL or generated: nothing to read
        return
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):  # the statements _STATEMENTS names
            continue
        for kind, what in _STATEMENTS.items():
            if isinstance(node, kind):
                fix = ("build the branch with lg.Route" if kind is ast.If else
                       "build it with lg.Loop or lg.Map" if kind in (ast.For, ast.While, ast.AsyncFor) else
                       "move it out of forward() or build the pipeline in lmgraph")
                raise DefinitionError(
                    f"cannot convert {cls.__name__}.forward (at {path!r}): line {first + node.lineno - 1} has {what}; "
                    "from_dspy infers the graph from one traced call, which sees a single path through Python "
                    "control flow", fix=f"{fix}, or convert the straight-line parts.")


def check_modules(program: Any) -> dict[str, str]:
    """Paths of the ChainOfThought modules (owner of ``<path>.predict``) -> "cot"; anything else but
    Predict, ChainOfThought and user modules is a DefinitionError naming its class and path."""
    kinds: dict[str, str] = {}
    for path, m in program.named_sub_modules():
        path = strip_self(path)
        cls = type(m)
        if isinstance(m, dspy.ChainOfThought) and cls is dspy.ChainOfThought:
            kinds[path] = "cot"
        elif cls is dspy.Predict:
            continue
        elif cls.__module__.split(".")[0] == "dspy":
            counterpart = COUNTERPARTS.get(cls.__name__)
            raise DefinitionError(
                f"cannot convert dspy.{cls.__name__} at {path!r}: from_dspy converts Predict, ChainOfThought and "
                "Retrieve (and user modules made of them)",
                fix=(f"rebuild that part with {counterpart} in lmgraph" if counterpart else
                     "rebuild that part in lmgraph") + ", or convert the module without it.")
        else:
            check_forward(m, path or "self")
    return kinds


def _value_for(annotation: Any, name: str, counter: list[int]) -> Any:
    """A placeholder value a DSPy adapter parses for an output typed ``annotation``."""
    origin = typing.get_origin(annotation)
    if annotation is str or annotation is typing.Any:
        return mark(name)
    if origin is list and typing.get_args(annotation) in ((str,), ()):
        return [mark(name)]
    if origin is typing.Literal:
        return typing.get_args(annotation)[0]
    if annotation is bool:
        return True
    if annotation in (int, float):
        counter[0] += 1
        return annotation(900_000_000 + counter[0])
    return mark(name)  # let the adapter say what it cannot parse


class Tracer(BaseCallback):  # type: ignore[misc]  # dspy is untyped: its base class is Any
    """Records each Predict / Retrieve call with its inputs and answers for the predictor running."""

    def __init__(self, predictors: dict[int, str], retrievers: dict[int, str]) -> None:
        super().__init__()
        self.predictors, self.retrievers = predictors, retrievers
        self.calls: list[Call] = []
        self.stack: list[tuple[str, Call | None]] = []
        self.errors: list[str] = []
        self.counter = [0]
        self.sources: dict[Any, tuple[str, ...]] = {}
        self.opaque: list[tuple[Any, tuple[str, ...]]] = []  # outputs no placeholder can mark (Literal, bool)

    # ---- callbacks (DSPy swallows their exceptions: they are kept in self.errors)
    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        try:
            rec = None
            if id(instance) in self.predictors:
                rec = Call("predict", self.predictors[id(instance)], dict(inputs.get("kwargs") or {}), instance)
            elif id(instance) in self.retrievers:
                args, kwargs = tuple(inputs.get("args") or ()), dict(inputs.get("kwargs") or {})
                query = args[0] if args else kwargs.get("query")
                k = kwargs.get("k", args[1] if len(args) > 1 else None)
                rec = Call("retrieve", self.retrievers[id(instance)], {"query": query, "k": k}, instance)
            if rec is not None:
                self.calls.append(rec)
            self.stack.append((call_id, rec))
        except Exception as e:  # noqa: BLE001 - reported after the run
            self.errors.append(f"{type(e).__name__}: {e}")

    def on_module_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        while self.stack:
            cid, _ = self.stack.pop()
            if cid == call_id:
                break

    # ---- the stand-ins
    def current(self) -> Call | None:
        return next((c for _, c in reversed(self.stack) if c is not None), None)

    def answer(self) -> dict[str, Any]:
        rec = self.current()
        if rec is None or rec.kind != "predict":
            self.errors.append("a model was called outside any Predict")
            return {}
        out = {}
        for name, fi in rec.obj.signature.output_fields.items():
            value = _value_for(fi.annotation, f"{rec.path}.{name}", self.counter)
            out[name] = value
            if value_key(value) is not None and (not isinstance(value, str) or OPEN in value):
                self.register(value, ("node", rec.path, name))
            else:
                self.opaque.append((value, ("node", rec.path, name)))
        rec.outputs = out
        return out

    def passages(self, query: Any, k: int | None) -> list[str]:
        rec = self.current()
        path = rec.path if rec is not None else "retriever"
        n = k or (rec.obj.k if rec is not None and getattr(rec.obj, "k", None) else 3)
        out = [mark(f"{path}#{i}") for i in range(n)]
        self.register(out, ("node", path, "passages"))
        return out

    def register(self, value: Any, source: tuple[str, ...]) -> None:
        key = value_key(value)
        if key is not None:
            self.sources[key] = source


class _Answers:
    """DummyLM's answer stream: each answer is for the predictor running at the time."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def __iter__(self) -> _Answers:
        return self

    def __next__(self) -> dict[str, Any]:
        return self.tracer.answer()


class Passages(list[Any]):
    """What a retriever callable returns while tracing: the passages, also as ``.passages``."""

    @property
    def passages(self) -> Passages:
        return self


class RecordingRetriever:
    """Stands in for a retriever callable attribute (``self.search = my_search``) while tracing."""

    def __init__(self, tracer: Tracer, path: str, original: Any) -> None:
        self.tracer, self.path, self.original = tracer, path, original
        self.k = getattr(original, "k", None)

    def __call__(self, query: Any = None, *args: Any, **kwargs: Any) -> Passages:
        k = kwargs.get("k", args[0] if args else None)
        rec = Call("retrieve", self.path, {"query": query, "k": k}, self)
        self.tracer.calls.append(rec)
        self.tracer.stack.append((f"callable:{self.path}", rec))
        try:
            return Passages(self.tracer.passages(query, k))
        finally:
            self.tracer.stack.pop()


def value_key(value: Any) -> Any:
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ("l", tuple(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 900_000_000:
        return ("n", value)
    return None


def marks_in(value: Any) -> list[str]:
    """The placeholders a computed value still shows (its text, JSON-ish)."""
    return _MARK.findall(repr(value))


def retriever_callables(program: Any, tracer: Tracer) -> list[str]:
    """Replace, on the traced copy, each plain callable attribute of a user module (a retriever
    function, ``dspy.retrievers.Embeddings``) by a recorder; returns their paths."""
    found = []
    for path, m in program.named_sub_modules():
        if type(m).__module__.split(".")[0] == "dspy":
            continue
        for attr, value in list(vars(m).items()):
            if attr.startswith("_") or isinstance(value, (dspy.Module, dspy.BaseLM, type)) or not callable(value):
                continue
            if isinstance(value, dspy.Retrieve) or inspect.ismethod(value):
                continue
            full = f"{strip_self(path)}.{attr}".lstrip(".") if strip_self(path) != "self" else attr
            setattr(m, attr, RecordingRetriever(tracer, full, value))
            found.append(full)
    return found


def trace(program: Any, inputs: list[str]) -> tuple[Tracer, Any, dict[str, str]]:
    """Run ``program`` (a copy the caller owns) once on placeholder inputs; returns the tracer,
    the forward result and the input placeholders."""
    predictors = {id(p): strip_self(path) for path, p in program.named_predictors()}
    retrievers = {id(p): strip_self(path) for path, p in program.named_parameters() if isinstance(p, dspy.Retrieve)}
    for _, p in program.named_predictors():
        p.lm = None  # a predictor's own model would bypass the stand-in
    tracer = Tracer(predictors, retrievers)
    retriever_callables(program, tracer)
    given = {name: mark(name) for name in inputs}
    for name, value in given.items():
        tracer.register(value, ("input", name))

    def rm(query: Any, k: int | None = None, **kwargs: Any) -> list[Any]:
        return [dotdict(long_text=t) for t in tracer.passages(query, k)]

    lm = DummyLM(_Answers(tracer))
    with dspy.context(lm=lm, rm=rm, adapter=dspy.ChatAdapter(), callbacks=[tracer], track_usage=False):
        try:
            result = program(**given)
        except DefinitionError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the user's forward raised, said plainly
            raise DefinitionError(
                f"tracing one forward call with placeholder inputs failed: {type(e).__name__}: {e}",
                fix="from_dspy runs forward() once with placeholder strings and DSPy's DummyLM; forward() must pass "
                    "values between predictors and retrievers unchanged (no parsing or arithmetic on them).") from e
    if tracer.errors:
        raise DefinitionError(f"tracing forward() went wrong: {tracer.errors[0]}",
                              fix="convert a program built from Predict, ChainOfThought and Retrieve.")
    return tracer, result, given
