"""DSPy programs in lmgraph, and compiled prompts back in DSPy (extra ``[dspy]``: dspy==3.4.1).

``from_dspy(module, corpus=...)`` turns a DSPy program built from ``dspy.Predict``,
``dspy.ChainOfThought`` and ``dspy.Retrieve`` (or a retriever callable) into an lmgraph
:class:`~lmgraph.Program`: each predictor becomes a node with its signature's instructions,
field descriptions and demos (of a compiled program, or of its saved JSON state with
``state=``); a retriever becomes :class:`~lmgraph.Retrieve` over ``corpus``. The graph is read
from one forward call, traced on a copy with DSPy's ``DummyLM`` in a local ``dspy.context``:
which predictor received which inputs, and whose outputs fed it. What one call cannot show --
Python control flow, values computed between predictors, modules without an lmgraph
counterpart -- is a :class:`~lmgraph.DefinitionError` naming the construct.

``to_dspy_state(program, module)`` is the way back: the DSPy program's JSON state (the format of
``module.save("x.json")`` / ``dump_state()``) with the compiled instructions and demos written
into the predictors the program's nodes came from; ``module.load_state(state)`` applies it.

Node names follow the predictor paths: ``generate_answer`` (a ChainOfThought's inner
``generate_answer.predict``), ``hop.generate_query`` -> ``hop_generate_query``.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError, LmgraphWarning

if TYPE_CHECKING:
    from ..pipeline.program import Program

__all__ = ["from_dspy", "node_name", "to_dspy_state"]


def _dspy() -> Any:
    try:
        import dspy
    except ImportError as e:
        raise DefinitionError("the DSPy bridge needs dspy", fix="pip install 'lmgraph[dspy]' (dspy==3.4.1).") from e
    return dspy


def node_name(path: str) -> str:
    """The lmgraph node name of a DSPy predictor path: a ChainOfThought's ``x.predict`` is ``x``,
    a top-level predictor (``self`` / ``predict``) is ``predict``, other characters become ``_``."""
    if path.endswith(".predict"):
        path = path[: -len(".predict")]
    if path in ("self", ""):
        path = "predict"
    name = re.sub(r"\W+", "_", path).strip("_")
    return name if name and not name[0].isdigit() else f"n_{name}"


# --------------------------------------------------------------------------- DSPy -> lmgraph

def from_dspy(module: Any, *, corpus: Any = None, state: str | Path | Mapping[str, Any] | None = None,
              inputs: Sequence[str] | None = None, name: str | None = None) -> Program:
    """An lmgraph Program doing what ``module`` (a ``dspy.Module``) does; see the module docstring.

    ``corpus``: what each Retrieve node searches -- a list of passages (BM25), a retriever with
    ``search(query, k)``, a function ``fn(query, k)``, or ``{node name: one of those}`` when there
    are several. ``state``: a saved DSPy state (``module.save("x.json")``'s file or a dict) to take
    instructions and demos from instead of the module's own. ``inputs``: the program's input names
    (default: the parameters of ``forward``). The module itself is never changed.
    """
    dspy = _dspy()
    if not isinstance(module, dspy.Module):
        raise DefinitionError(f"from_dspy takes a dspy.Module, got {type(module).__name__}",
                              fix="pass the DSPy program object, e.g. from_dspy(RAG()).")
    from . import _dspy_trace as tr

    work = module.deepcopy()
    if state is not None:
        _load_state(work, state)
    cot = tr.check_modules(work)
    names = list(inputs) if inputs is not None else _input_names(work)
    tracer, result, _given = tr.trace(work, names)
    return _build(tracer, result, names, cot, corpus, name or _snake(type(module).__name__))


def _snake(text: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text).lower() or "dspy_program"


def _load_state(work: Any, state: str | Path | Mapping[str, Any]) -> None:
    if isinstance(state, (str, Path)):
        try:
            data = json.loads(Path(state).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DefinitionError(f"cannot read the DSPy state {state}: {e}",
                                  fix="pass the .json file module.save(path) wrote, or its dict.") from None
    else:
        data = dict(state)
    data.pop("metadata", None)
    try:
        work.load_state(data)
    except (KeyError, TypeError, ValueError) as e:
        raise DefinitionError(f"the DSPy state does not fit this program ({type(e).__name__}: {e})",
                              fix="pass the state saved from this program class (same predictors).") from None


def _input_names(work: Any) -> list[str]:
    # the class's function: reading ``work.forward`` makes DSPy warn about calling forward directly
    params = list(inspect.signature(type(work).forward).parameters.values())[1:]
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if named:
        return named
    sig = getattr(work, "signature", None) or getattr(getattr(work, "predict", None), "signature", None)
    if sig is not None:  # a bare Predict / ChainOfThought: forward(**kwargs)
        return list(sig.input_fields)
    raise DefinitionError(f"cannot tell the inputs of {type(work).__name__}.forward (it takes *args/**kwargs only)",
                          fix="pass inputs=['question', ...].")


def _field(dspy_name: str, fi: Any, *, is_input: bool, feeds_list: bool = False) -> Any:
    from dspy.signatures.signature import infer_prefix

    from ..signatures import FieldSpec

    extra = fi.json_schema_extra or {}
    desc = str(extra.get("desc") or "")
    if desc == f"${{{dspy_name}}}":
        desc = ""
    prefix = str(extra.get("prefix") or "").rstrip(":").strip()
    if prefix == infer_prefix(dspy_name):
        prefix = ""
    annotation = str if extra.get("IS_TYPE_UNDEFINED") else fi.annotation
    if feeds_list and annotation is str:
        annotation = list[str]  # passages reach it: DSPy formats the list, lmgraph types the edge
    if annotation is typing.Any and is_input:
        annotation = str
    return FieldSpec(dspy_name, annotation, desc, prefix)


def _signature(rec: Any, node: str, *, chain_of_thought: bool, list_inputs: set[str]) -> Any:
    from ..signatures import Signature

    sig = rec.obj.signature
    try:
        ins = [_field(n, f, is_input=True, feeds_list=n in list_inputs) for n, f in sig.input_fields.items()]
        outs = [_field(n, f, is_input=False) for n, f in sig.output_fields.items()
                if not (chain_of_thought and n == "reasoning")]
        return Signature(ins, outs, sig.instructions)
    except DefinitionError as e:
        raise DefinitionError(f"its DSPy signature does not convert: {e.message}", node=node, field=e.field,
                              fix=e.fix or "use field types lmgraph knows (str, int, float, bool, list, dict, "
                                           "Literal, pydantic models).") from None


def _demos(rec: Any, sig: Any, node: str, *, chain_of_thought: bool) -> list[dict[str, Any]]:
    """The predictor's demos as lmgraph demos; incomplete ones (DSPy shows those as partial
    examples, lmgraph needs every field but a chain of thought's reasoning) are left out, with a
    warning naming how many."""
    from ..modules.base import normalise_demos

    fields = [*sig.input_names, *sig.output_names, *(["reasoning"] if chain_of_thought else [])]
    kept, dropped = [], 0
    for d in rec.obj.demos or []:
        data = d.toDict() if hasattr(d, "toDict") else dict(d)
        row = {k: data[k] for k in fields if k in data}
        try:
            normalise_demos([row], sig, optional=("reasoning",) if chain_of_thought else ())
        except DefinitionError:
            dropped += 1
            continue
        kept.append(row)
    if dropped:
        warnings.warn(f"node {node!r}: {dropped} of {len(rec.obj.demos)} DSPy demos lack a field lmgraph needs "
                      f"({', '.join(sig.input_names + sig.output_names)}) and were left out", LmgraphWarning,
                      stacklevel=4)
    return kept


def _corpus_for(corpus: Any, node: str, path: str) -> Any:
    if isinstance(corpus, Mapping):
        for key in (node, path):
            if key in corpus:
                return corpus[key]
        raise DefinitionError(f"corpus= names no corpus for the Retrieve node {node!r}", node=node,
                              fix=f"add {node!r}: [...] to the corpus mapping (it has {', '.join(map(str, corpus))}).")
    if corpus is None:
        raise DefinitionError("the DSPy program retrieves, but DSPy's retriever is a runtime setting "
                              "(dspy.settings.rm) that does not travel with the program", node=node,
                              fix="pass from_dspy(module, corpus=[...passages...]) (BM25), a retriever with "
                                  "search(query, k), or a function fn(query, k).")
    return corpus


def _build(tracer: Any, result: Any, names: list[str], cot: dict[str, str], corpus: Any, name: str) -> Program:
    import lmgraph as lg

    from . import _dspy_trace as tr

    p = lg.Pipeline(name)
    handles: dict[tuple[str, ...], Any] = {("input", n): p.input(n) for n in names}
    nodes: dict[str, Any] = {}      # DSPy path -> node handle
    seen: dict[str, str] = {}       # node name -> DSPy path

    def source(value: Any, where: str, node: str | None, fld: str | None) -> Any:
        key = tr.value_key(value)
        src = tracer.sources.get(key) if key is not None else None
        if src is not None:
            if src[0] == "input":
                return handles[src]
            return getattr(nodes[src[1]], src[2])
        same = [src for v, src in tracer.opaque if type(v) is type(value) and v == value]
        if len(same) == 1:  # a Literal option / bool an earlier predictor gave (no placeholder can mark those)
            return getattr(nodes[same[0][1]], same[0][2])
        if len(same) > 1:
            raise DefinitionError(f"cannot tell which output {where} comes from: "
                                  + ", ".join(f"{s[1]}.{s[2]}" for s in same) + f" all gave {value!r} while tracing",
                                  node=node, field=fld, fix="build this step in lmgraph, where edges are explicit.")
        found = tr.marks_in(value)
        if found:
            what = ", ".join(dict.fromkeys(_shown(m) for m in found))
            raise DefinitionError(f"{where} is computed by Python code from {what} (not passed on unchanged)",
                                  node=node, field=fld,
                                  fix="pass predictor outputs and retrieved passages between DSPy modules unchanged "
                                      "(format them in the signature instead), or build this step in lmgraph.")
        return lg.const(value)  # a literal the forward() passes

    for rec in tracer.calls:
        node = node_name(rec.path) if rec.kind == "predict" else re.sub(r"\W+", "_", rec.path).strip("_")
        if rec.path in nodes:
            raise DefinitionError(f"{rec.kind} {rec.path!r} is called more than once in one forward call (a loop or "
                                  "a repeated call)", node=node,
                                  fix="lmgraph runs each node once per run: use lg.Loop or lg.Map, or one "
                                      "predictor per call.")
        if node in seen:
            raise DefinitionError(f"DSPy paths {seen[node]!r} and {rec.path!r} both map to node {node!r}",
                                  node=node, fix="rename one of the attributes.")
        seen[node] = rec.path
        if rec.kind == "retrieve":
            k = rec.inputs.get("k") or getattr(rec.obj, "k", None) or 3
            retriever = lg.Retrieve(_corpus_for(corpus, node, rec.path), k=int(k))
            nodes[rec.path] = p.add(retriever, node, query=source(rec.inputs.get("query"), "the query", node, "query"))
            continue
        owner = rec.path[: -len(".predict")] if rec.path.endswith(".predict") else None
        chain = (owner is not None and cot.get(owner) == "cot") or (rec.path == "predict" and cot.get("self") == "cot")
        sig_fields = rec.obj.signature.input_fields
        missing = [f for f in sig_fields if f not in rec.inputs]
        if missing:
            raise DefinitionError(f"forward() calls it without the input {missing[0]!r}", node=node, field=missing[0],
                                  fix="pass every input field of the predictor's signature.")
        bindings = {f: source(rec.inputs[f], f"the input {f!r}", node, f) for f in sig_fields}
        list_inputs = {f for f in sig_fields if isinstance(tr.value_key(rec.inputs[f]), tuple)
                       and tr.value_key(rec.inputs[f])[0] == "l"}
        sig = _signature(rec, node, chain_of_thought=chain, list_inputs=list_inputs)
        config = dict(rec.obj.config or {})
        kwargs: dict[str, Any] = {}
        for key in ("temperature", "max_tokens"):
            if key in config:
                kwargs[key] = config.pop(key)
        if config:
            raise DefinitionError(f"the predictor's settings {sorted(config)} have no lmgraph counterpart", node=node,
                                  fix="drop them (temperature and max_tokens convert), or set the node up in lmgraph.")
        cls = lg.ChainOfThought if chain else lg.Predict
        module = cls(sig, demos=_demos(rec, sig, node, chain_of_thought=chain), **kwargs)
        nodes[rec.path] = p.add(module, node, inputs=bindings)
    outputs = _outputs(result)
    if not outputs:
        raise DefinitionError(f"forward() returned {type(result).__name__}, not a dspy.Prediction with outputs",
                              fix="return dspy.Prediction(answer=...) (or a predictor's prediction).")
    p.output(**{k: source(v, f"the program output {k!r}", None, k) for k, v in outputs.items()})
    return p.build()


def _outputs(result: Any) -> dict[str, Any]:
    if hasattr(result, "toDict"):
        return dict(result.toDict())
    if isinstance(result, Mapping):
        return dict(result)
    return {}


def _shown(mark: str) -> str:
    if "#" in mark:
        return f"{mark.split('#')[0]}.passages"
    return mark if "." in mark else f"the input {mark!r}"


# --------------------------------------------------------------------------- lmgraph -> DSPy

def to_dspy_state(program: Program, module: Any, *, path: str | Path | None = None) -> dict[str, Any]:
    """``module``'s DSPy state (``dump_state()`` format) with ``program``'s compiled instructions
    and demos written into the predictors its nodes came from (by :func:`node_name`).

    ``module``: the DSPy program (a ``dspy.Module``), its saved state file or that state's dict;
    it is not changed. Apply the result with ``module.load_state(state)``; with ``path=`` it is
    also written there as JSON with DSPy's metadata, for ``module.load(path)``. Settings DSPy has no
    place for (prompt format, log-prob decoding, per-input demos) are named in a warning.
    """
    from ..modules.predict import Predict

    state: dict[str, Any]
    if isinstance(module, (str, Path)):
        state = json.loads(Path(module).read_text(encoding="utf-8"))
    elif isinstance(module, Mapping):
        state = copy.deepcopy(dict(module))
    else:
        state = _state_of(module)
    matched, lost = set(), []
    for key, value in state.items():
        if not (isinstance(value, dict) and "demos" in value and isinstance(value.get("signature"), dict)):
            continue
        node = node_name(key)
        if node not in program.node_map:
            continue
        m = program.node_map[node].module
        if m.kind not in ("predict", "chain_of_thought") or not isinstance(m, Predict):
            raise DefinitionError(f"node {node!r} is a {m.kind}; the DSPy predictor {key!r} needs a Predict or "
                                  "ChainOfThought node", node=node)
        value["signature"]["instructions"] = m.instructions
        value["demos"] = [dict(d) for d in m.demos]
        matched.add(node)
        lost += [f"{node}: {what}" for what in _dspy_lacks(m)]
    missing = [n.name for n in program.nodes if n.module.kind in ("predict", "chain_of_thought")
               and n.name not in matched]
    if missing:
        keys = [k for k, v in state.items() if isinstance(v, dict) and "demos" in v]
        raise DefinitionError(f"no DSPy predictor for the node(s) {', '.join(missing)}", node=missing[0],
                              fix=f"pass the DSPy program the lmgraph one came from (its predictors: "
                                  f"{', '.join(keys) or 'none'}).")
    if lost:
        warnings.warn("DSPy keeps instructions and demos only; not carried over: " + "; ".join(lost),
                      LmgraphWarning, stacklevel=2)
    if path is not None:
        from dspy.utils.saving import get_dependency_versions

        body = {**state, "metadata": state.get("metadata") or {"dependency_versions": get_dependency_versions()}}
        Path(path).write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return state


def _state_of(module: Any) -> dict[str, Any]:
    """``module.dump_state()``, parameter by parameter (dspy 3.4.1's Retrieve.dump_state takes no
    ``json_mode``, so a RAG program's own ``dump_state()`` raises)."""
    dspy = _dspy()
    if not isinstance(module, dspy.Module):
        raise DefinitionError(f"to_dspy_state needs the DSPy program, its state file or its state dict, got "
                              f"{type(module).__name__}", fix="pass the dspy.Module the program came from.")
    out = {}
    for name, param in module.named_parameters():
        try:
            out[name] = param.dump_state(json_mode=True)
        except TypeError:
            out[name] = param.dump_state()
    return copy.deepcopy(out)


def _dspy_lacks(m: Any) -> list[str]:
    lacks = []
    if m.format != "auto":
        lacks.append(f"format={m.format}")
    if getattr(m, "decode", "generate") != "generate":
        lacks.append(f"decode={m.decode}")
    if getattr(m, "knn", 0):
        lacks.append(f"knn={m.knn} (per-input demos from a pool of {len(m.demo_pool)})")
    if getattr(m, "verbalizer", ()):
        lacks.append(f"verbalizer ({len(m.verbalizer)} labels shown as words)")
    if m.lm:
        lacks.append(f"lm={m.lm}")
    return lacks
