"""BFCL function calling (simple_python + multiple), compiled as a two-node graph.

Data: ``bfcl/BFCL_v4_simple_python.json`` (400 rows, one candidate function each) and
``bfcl/BFCL_v4_multiple.json`` (200 rows, 2-4 candidates), gold calls in ``bfcl/possible_answer/``
(``shared/data``, found as every other dataset is: :func:`lmgraph.evaluation.datasets.dataset_file`).
The 600 rows are pooled and cut into disjoint train/val/test parts by the split seed, so every part
is about 2/3 simple_python and 1/3 multiple (the ``category`` key of a row says which); rows that
share a question (a simple_python row and its multiple twin) always land in the same part.

The program, as a graph::

    question, functions --> choose: function --> write: call

* ``choose`` (Predict ``question, functions -> function``) names the function to call among the
  row's candidates;
* ``write`` (Predict ``question, functions, function -> call``) writes the call of the chosen
  function as ``name(argument=value, ...)``.

``functions`` is the row's candidates rendered as short text (a line per function: name,
description, then each argument with its type, required/optional and a short description), not
the JSON schema: a small model shown a schema as text tends to copy it instead of filling it (see
lmgraph/modules/call_tool.py), and the text is about 2/3 as long (median 394 vs 592 characters per
row, at most 1,716), so four nearest-neighbour demos fit SmolLM2's 2,048-token window on most rows.

Why this design and not the alternatives:

* A ``CallTool`` agent whose tools are the row's functions does not fit: a CallTool's tools are
  resources fixed when the graph is built (bound by name on load), while every BFCL row brings its
  own functions (589 names, 130 of them with differing schemas across rows), and its choose call
  would list every tool of the benchmark.
* A model-free lookup of the chosen function's schema between the two nodes would need a node
  that runs Python on two inputs (the chosen name and the row's functions); the DSL has none (a
  Retrieve reads one query string; a Route picks among fixed sub-programs). ``write`` therefore
  reads all the row's candidates plus the chosen name -- for simple_python rows, one function.
* The call is a Python call string, not JSON: it is BFCL's own format (BFCL checks the AST of a
  Python call), it is shorter, and a small model writes ``f(x=5)`` far more reliably than a nested
  JSON object. The metric also reads ``{"name": ..., "arguments": {...}}`` (a dict or JSON text).

What the default compiler can tune: both nodes' demos (``k`` labelled / bootstrapped / nearest
neighbour), format and instructions. Rows carry ``function`` (the gold name, exported by
``choose``) and ``call`` (the gold call, ``label_field``), so ``choose`` gets labelled demos.
``write`` gets bootstrapped demos (from the program's passing runs) but no labelled ones: its
``function`` input comes from a model node, and lmgraph's labelled demos take inputs only from
pipeline inputs or model-free nodes (not from a row's label of an upstream exported output).

Metric (BFCL's AST match, re-implemented): ``exact`` (main) is 1 when the call names the gold
function, gives every argument the gold requires with a value among the allowed ones (numbers
compared numerically, int or float; strings compared ignoring case, spaces and the punctuation
``,./-_*^`` as BFCL does; lists element by element, in order; dicts key by key), and no argument
the gold does not list; an allowed list holding ``""`` marks an argument that may be left out.
``name`` is 1 when the function name is right. Feedback says what was wrong (for Reflect / GEPA).
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lmgraph.evaluation import split
from lmgraph.evaluation.datasets import dataset_file

from . import Sizes, Task

CATEGORIES = ("simple_python", "multiple")
CHOOSE_INSTRUCTION = ("Choose the function to call for the request. Answer with its exact name, one of the "
                      "functions listed.")
WRITE_INSTRUCTION = ("Write the call of the chosen function that does what the request asks, as "
                     "name(argument=value, ...): the function's own argument names, the values the request "
                     "gives (numbers as numbers, text in double quotes), and no optional argument the request "
                     "does not mention.")
CHOOSE_TOKENS = 32
MAX_TOKENS = 128
DESC_CHARS = 80  # a function's or argument's description is cut to this many characters


# --------------------------------------------------------------------------- data

def _short(text: Any, n: int = DESC_CHARS) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[:n - 3].rstrip() + "..."


def _type_text(spec: Mapping[str, Any]) -> str:
    t = str(spec.get("type", "any"))
    if t == "array" and isinstance(spec.get("items"), Mapping):
        return f"array of {spec['items'].get('type', 'any')}"
    if isinstance(spec.get("enum"), list):
        return f"{t}, one of {', '.join(json.dumps(v) for v in spec['enum'][:8])}"
    return t


def render_functions(functions: Sequence[Mapping[str, Any]]) -> str:
    """The candidate functions as short text, a block per function."""
    blocks = []
    for fn in functions:
        params = fn.get("parameters") or {}
        required = set(params.get("required") or ())
        lines = [f"{fn['name']}: {_short(fn.get('description'), 2 * DESC_CHARS)}"]
        for name, spec in (params.get("properties") or {}).items():
            need = "required" if name in required else "optional"
            desc = _short(spec.get("description"))
            lines.append(f"  - {name} ({_type_text(spec)}, {need}){': ' + desc if desc else ''}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _question(turns: Any) -> str:
    """The user's request: the text of the user turns (every row here has exactly one)."""
    msgs = [m for turn in turns for m in turn] if turns and isinstance(turns[0], list) else list(turns)
    return "\n".join(str(m["content"]).strip() for m in msgs if m.get("role") == "user")


def _gold_value(allowed: Any) -> Any:
    """One concrete value from a gold allowed-value entry (dicts hold allowed lists per key)."""
    if isinstance(allowed, Mapping):
        return {k: _gold_value(v[0]) for k, v in allowed.items() if v and "" not in v}
    if isinstance(allowed, list):
        return [_gold_value(v) for v in allowed]
    return allowed


def gold_arguments(ground_truth: Mapping[str, Mapping[str, Sequence[Any]]]) -> tuple[str, dict[str, Any]]:
    """(function name, arguments) of the gold call: each argument's first allowed value; an
    argument that may be left out (``""`` among its allowed values) is left out."""
    (name, args), = ground_truth.items()
    return name, {k: _gold_value(v[0]) for k, v in args.items() if v and "" not in v}


def py_literal(value: Any) -> str:
    """``value`` as a Python literal (strings in double quotes, True/False/None)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {py_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    return repr(value)


def format_call(name: str, args: Mapping[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={py_literal(v)}' for k, v in args.items())})"


def _read_jsonl(*parts: str) -> list[dict[str, Any]]:
    with dataset_file(*parts).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@functools.lru_cache(maxsize=4)
def _load(category: str) -> tuple[dict[str, Any], ...]:
    questions = _read_jsonl("bfcl", f"BFCL_v4_{category}.json")
    answers = _read_jsonl("bfcl", "possible_answer", f"BFCL_v4_{category}.json")
    gold = {a["id"]: a["ground_truth"] for a in answers}
    rows = []
    for q in questions:
        if q["id"] not in gold:
            raise ValueError(f"bfcl/{category}: no gold answer for {q['id']}")
        truth = gold[q["id"]]
        if len(truth) != 1:
            raise ValueError(f"bfcl/{category}: {q['id']} has {len(truth)} gold calls (one expected)")
        name, args = gold_arguments(truth[0])
        rows.append({"id": q["id"], "category": category, "question": _question(q["question"]),
                     "functions": render_functions(q["function"]), "schemas": q["function"],
                     "ground_truth": truth[0], "function": name, "call": format_call(name, args)})
    if len(rows) != len(gold):
        raise ValueError(f"bfcl/{category}: {len(rows)} questions but {len(gold)} gold answers")
    return tuple(rows)


def load_bfcl(category: str = "simple_python") -> list[dict[str, Any]]:
    """BFCL rows: ``question``, ``functions`` (rendered), ``schemas`` (the JSON functions),
    ``ground_truth`` ({name: {argument: [allowed values]}}), ``function`` and ``call`` (gold)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; known: {', '.join(CATEGORIES)}")
    return [dict(r) for r in _load(category)]


def splits(seed: int, sizes: Sizes) -> tuple[list[dict], list[dict], list[dict]]:
    """Disjoint train/val/test parts of the 600 rows, cut by ``seed``, with every row of one
    question in the same part: 96 questions appear twice or three times (a simple_python row and
    its multiple twin, 87 of them with the same gold call), and a twin on the other side of the cut
    would be a nearest-neighbour demo holding the answer. The question groups are shuffled with
    ``seed``; each goes whole to the first part with room for it."""
    groups: dict[str, list[dict]] = {}
    for r in load_bfcl("simple_python") + load_bfcl("multiple"):
        groups.setdefault(r["question"], []).append(r)
    order = split(list(groups.values()), [len(groups)], seed=seed)[0]
    want = [sizes.train, sizes.val, sizes.test]
    if sum(want) > sum(len(g) for g in order):
        raise ValueError(f"bfcl has {sum(len(g) for g in order)} rows; asked for {sum(want)}")
    parts: list[list[dict]] = [[], [], []]
    for g in order:
        for part, n in zip(parts, want):
            if len(part) + len(g) <= n:
                part.extend(g)
                break
    train, val, test = parts
    return train, val, test


# --------------------------------------------------------------------------- parsing a call

class CallParseError(ValueError):
    pass


_NAMED = {"true": True, "false": False, "null": None, "none": None}


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k) if k is not None else None: _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name) and node.id.lower() in _NAMED:
        return _NAMED[node.id.lower()]
    raise CallParseError(f"not a literal value: {ast.unparse(node)[:60]}")


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise CallParseError(f"not a function name: {ast.unparse(node)[:60]}")


_CALL_START = re.compile(r"[A-Za-z_][\w.]*\s*\(")


def _python_call(text: str) -> tuple[str, dict[str, Any]]:
    m = _CALL_START.search(text)
    if m is None:
        raise CallParseError("no call name(...) found")
    # the shortest balanced prefix from the name that parses as one call
    depth, quote, escaped, end = 0, "", False, -1
    for i in range(m.end() - 1, len(text)):
        c = text[i]
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                end = i + 1
                break
    if end < 0:
        raise CallParseError("the call is not closed")
    try:
        tree = ast.parse(text[m.start():end].strip(), mode="eval").body
    except SyntaxError as e:
        raise CallParseError(f"not a valid call ({e.msg})") from None
    if not isinstance(tree, ast.Call):
        raise CallParseError("not a call")
    if tree.args:
        raise CallParseError("positional arguments: every argument must be named (name=value)")
    args: dict[str, Any] = {}
    for kw in tree.keywords:
        if kw.arg is None:
            raise CallParseError("**kwargs is not allowed")
        args[kw.arg] = _literal(kw.value)
    return _dotted(tree.func), args


def parse_call(value: Any) -> tuple[str, dict[str, Any]]:
    """(name, arguments) from a prediction: ``name(a=1, ...)`` text, or ``{"name", "arguments"}``
    (a dict or JSON text), or BFCL's ``{name: {arguments}}``. Raises CallParseError."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return _python_call(text)
        else:
            return _python_call(text)
    if isinstance(value, Mapping):
        if "name" in value:
            args = value.get("arguments", value.get("parameters", {}))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    raise CallParseError("the arguments are not a JSON object") from None
            if not isinstance(args, Mapping):
                raise CallParseError("the arguments are not an object")
            return str(value["name"]).strip(), dict(args)
        if len(value) == 1:
            ((name, args),) = value.items()
            if isinstance(args, Mapping):
                return str(name).strip(), dict(args)
    raise CallParseError(f"cannot read a call from {str(value)[:80]!r}")


# --------------------------------------------------------------------------- matching (BFCL's AST check)

_PUNCT = re.compile(r"[\s,./\-_*^]")


def norm_str(s: str) -> str:
    return _PUNCT.sub("", s).lower()


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _arg_ok(args: Mapping[str, Any], key: str, opts: Sequence[Any]) -> bool:
    """``args[key]`` is one of ``opts``, or is absent and ``""`` (may be left out) is among them."""
    if key not in args:
        return "" in opts
    return any(value_matches(args[key], a) for a in opts if a != "")


def value_matches(value: Any, allowed: Any) -> bool:
    """Whether ``value`` equals the allowed value (a dict's values are allowed lists per key)."""
    if isinstance(allowed, Mapping):
        if not isinstance(value, Mapping):
            return False
        if any(k not in allowed for k in value):
            return False
        return all(_arg_ok(value, k, opts if isinstance(opts, list) else [opts]) for k, opts in allowed.items())
    if isinstance(allowed, list):
        return isinstance(value, list) and len(value) == len(allowed) and \
            all(value_matches(v, a) for v, a in zip(value, allowed))
    if isinstance(allowed, bool) or isinstance(value, bool):
        return isinstance(allowed, bool) and isinstance(value, bool) and allowed == value
    if _is_num(allowed):
        return _is_num(value) and math.isclose(float(value), float(allowed), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(allowed, str):
        return isinstance(value, str) and norm_str(value) == norm_str(allowed)
    return value == allowed


def check_call(row: Mapping[str, Any], pred_call: Any) -> tuple[bool, bool, str]:
    """(exact match, name right, what was wrong) for the predicted call against the row's gold."""
    (gold_name, gold_args), = row["ground_truth"].items()
    try:
        name, args = parse_call(pred_call)
    except CallParseError as e:
        return False, False, f"the call could not be read ({e}); expected a call like {row['call']}"
    if name != gold_name:
        candidates = [f["name"] for f in row.get("schemas") or ()]
        known = "" if not candidates or name in candidates else " (not one of the listed functions)"
        return False, False, f"wrong function: called {name!r}{known}, expected {gold_name!r}; gold call {row['call']}"
    problems = []
    for arg, opts in gold_args.items():
        if arg not in args:
            if "" not in opts:
                problems.append(f"missing required argument {arg} (expected {py_literal(_gold_value(opts[0]))})")
        elif not any(value_matches(args[arg], a) for a in opts if a != ""):
            want = " or ".join(py_literal(_gold_value(a)) for a in opts if a != "")
            problems.append(f"argument {arg}={py_literal(args[arg])}, expected {want}")
    for arg in args:
        if arg not in gold_args:
            problems.append(f"unknown argument {arg} (the function takes {', '.join(gold_args) or 'none'})")
    if problems:
        return False, True, "right function, wrong arguments: " + "; ".join(problems) + f"; gold call {row['call']}"
    return True, True, f"correct: {row['call']}"


def exact(row: Mapping[str, Any], pred: Mapping[str, Any]) -> float:
    return float(check_call(row, pred.get("call"))[0])


def name_right(row: Mapping[str, Any], pred: Mapping[str, Any]) -> float:
    return float(check_call(row, pred.get("call"))[1])


def feedback(row: Mapping[str, Any], pred: Mapping[str, Any]) -> tuple[float, str]:
    ok, _, text = check_call(row, pred.get("call"))
    return float(ok), text


# --------------------------------------------------------------------------- programs

def lmgraph_program() -> Any:
    import lmgraph as lg

    p = lg.Pipeline("bfcl")
    q, fns = p.input("question"), p.input("functions")
    choose = p.add(lg.Predict(lg.Signature.parse("question, functions -> function",
                                                 instructions=CHOOSE_INSTRUCTION), max_tokens=CHOOSE_TOKENS),
                   name="choose", question=q, functions=fns)
    write = p.add(lg.Predict(lg.Signature.parse("question, functions, function -> call",
                                                instructions=WRITE_INSTRUCTION), max_tokens=MAX_TOKENS),
                  name="write", question=q, functions=fns, function=choose.function)
    p.output(call=write.call, function=choose.function)
    return p.build()


def dspy_program() -> Any:
    import dspy

    class FunctionCall(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.choose = dspy.Predict(dspy.Signature(
                {"question": dspy.InputField(), "functions": dspy.InputField(), "function": dspy.OutputField()},
                CHOOSE_INSTRUCTION))
            self.write = dspy.Predict(dspy.Signature(
                {"question": dspy.InputField(), "functions": dspy.InputField(), "function": dspy.InputField(),
                 "call": dspy.OutputField()}, WRITE_INSTRUCTION))

        def forward(self, question: str, functions: str) -> Any:
            function = self.choose(question=question, functions=functions).function
            out = self.write(question=question, functions=functions, function=function)
            return dspy.Prediction(call=out.call, function=function)

    return FunctionCall()


TASK = Task(
    name="bfcl", description="BFCL simple_python + multiple: choose the function, then write the call (AST match)",
    inputs=("question", "functions"), output="call", splits=splits,
    lmgraph_program=lmgraph_program, dspy_program=dspy_program,
    metrics={"exact": exact, "name": name_right}, main="exact", max_tokens=MAX_TOKENS, label_field="call",
    feedback=feedback, quick=Sizes(16, 16, 20), full=Sizes(100, 50, 100),
    notes="600 rows (400 simple_python, 200 multiple) pooled; train/val/test cut by the split seed",
)
