"""Fuzzing in the suite (hypothesis, bounded): parsers and loaders meet arbitrary input and only
lmgraph's typed errors (subclasses of LmgraphError) come out -- never a TypeError, RecursionError,
UnicodeDecodeError or a pydantic error.

Each test runs a fixed number of derandomized examples (the same ones every run, no database),
so the suite stays fast and never flaky. To search harder locally: ``FUZZ_EXAMPLES=5000
FUZZ_RANDOM=1 pytest tests/test_fuzz.py`` (fresh random examples each run).
"""

from __future__ import annotations

import copy
import enum
import json
import os
from typing import Any, Literal, Optional

import pydantic
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lmgraph as lg  # noqa: E402
from lmgraph.cache.disk import DiskCache  # noqa: E402
from lmgraph.errors import LmgraphError  # noqa: E402
from lmgraph.lm.base import LMResponse  # noqa: E402
from lmgraph.lm.prompt import FORMATS, get_format  # noqa: E402
from lmgraph.lm.values import close_json_object, coerce, extract_json, json_object  # noqa: E402
from lmgraph.pipeline.loading import envelope, read_document  # noqa: E402
from lmgraph.signatures import FieldSpec, Signature  # noqa: E402

N = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def only_typed_errors(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; an lmgraph error is fine, any other exception fails the test (with its input)."""
    try:
        return fn(*args, **kwargs)
    except LmgraphError:
        return None
    except Exception as e:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"{fn.__name__} raised an untyped {type(e).__name__}: {e!r}") from e


# ----------------------------------------------------------------------------- strategies

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)

NAMES = ["question", "answer", "a", "b_2", "x y", "", "1x", "_", "__class__", "trajectory", "é", "a-b"]
TYPE_PIECES = ["str", "int", "float", "bool", "list", "dict", "tuple", "Any", "None", "Optional", "Literal",
               "Union", "Person", "Mystery", "[", "]", ",", "|", "'a'", "-1", "1.5", "()", "lambda: 0", "x.y",
               "__import__('os')", "1j", "...", "*", "**", "not", "f(x)", "{}", "-", "'", '"']


@st.composite
def type_exprs(draw: Any, depth: int = 0) -> str:
    if depth > 2 or draw(st.booleans()):
        return draw(st.sampled_from(TYPE_PIECES))
    base = draw(st.sampled_from(["list", "dict", "tuple", "Optional", "Literal", "Union", "Person", "int"]))
    args = draw(st.lists(type_exprs(depth + 1), min_size=0, max_size=3))
    return f"{base}[{', '.join(args)}]" if draw(st.booleans()) else " | ".join([base, *args])


@st.composite
def signature_texts(draw: Any) -> str:
    def fields() -> str:
        out = []
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(NAMES))
            out.append(f"{name}: {draw(type_exprs())}" if draw(st.booleans()) else name)
        return ", ".join(out)
    return f"{fields()} {draw(st.sampled_from(['->', '-', '->->', '=>', '']))} {fields()}"


class Person(pydantic.BaseModel):
    name: str
    age: int = 0


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


OUTPUT_TYPES = [str, int, float, bool, list[str], list[int], dict[str, int], Literal["yes", "no"], Literal[1, 2],
                Optional[int], Person, list[Person], Color, Any, tuple[int, str], Optional[list[Person]]]

SIGNATURES = [Signature([FieldSpec("q")], [FieldSpec("answer", t)]) for t in OUTPUT_TYPES] + [
    Signature([FieldSpec("q")], [FieldSpec("reasoning"), FieldSpec("answer", t)]) for t in OUTPUT_TYPES[:8]] + [
    Signature([FieldSpec("q")], [FieldSpec("label", Literal["a", "b"]), FieldSpec("score", float),
                                 FieldSpec("people", list[Person])])]


@st.composite
def replies(draw: Any) -> str:
    """Model replies: noise, labelled fields, JSON (whole, fenced, cut off), deep brackets."""
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(st.text(max_size=80))
    if kind == 1:
        labels = ["Answer", "Reasoning", "Label", "Score", "People", "answer", "ANSWER", ""]
        lines = [f"{draw(st.sampled_from(labels))}: {draw(st.text(max_size=20))}"
                 for _ in range(draw(st.integers(1, 4)))]
        return "\n".join(lines)
    if kind == 2:
        keys = st.sampled_from(["answer", "reasoning", "label", "score", "people", "name", "age", "x"])
        obj = draw(st.dictionaries(keys, json_values, max_size=4))
        text = json.dumps(obj)
        cut = draw(st.integers(0, len(text)))
        return draw(st.sampled_from([text, text[:cut], f"```json\n{text}\n```", f"Sure! {text} Done."]))
    if kind == 3:
        depth = draw(st.integers(1, 5000))
        opener = draw(st.sampled_from(["[", "{\"answer\": ", "{\"a\":[", "[["]))
        return opener * depth
    if kind == 4:
        depth = draw(st.integers(500, 3000))
        return '{"answer": ' + "[" * depth + "1" + "]" * depth + "}"
    if kind == 5:
        return json.dumps(draw(json_values))
    return draw(st.sampled_from(["", " ", "\n", "null", "{}", "[]", '{"answer": null}', "Answer:", "```", "``` ```",
                                 "Answer: \ud800", "{\"answer\": \"\\ud800\"}", "1e400", "-", "$", "NaN"]))


# ----------------------------------------------------------------------------- signatures


@FUZZ
@given(st.one_of(st.text(max_size=60), signature_texts()))
def test_signature_parse_raises_only_typed_errors(text: str) -> None:
    only_typed_errors(Signature.parse, text, types={"Person": Person})


@FUZZ
@given(type_exprs())
def test_type_expressions_raise_only_typed_errors(expr: str) -> None:
    from lmgraph.signatures import str_to_type

    only_typed_errors(str_to_type, expr, {"Person": Person})


# ----------------------------------------------------------------------------- output parsers


@FUZZ
@given(st.sampled_from(SIGNATURES), st.sampled_from(FORMATS), replies())
def test_output_parsers_raise_only_typed_errors(sig: Signature, fmt: str, text: str) -> None:
    f = get_format(fmt)
    only_typed_errors(f.parse, sig, text)
    only_typed_errors(f.parse_repair, sig, text)
    only_typed_errors(f.parse_continuation, sig, "Reasoning: because\n", text)


@FUZZ
@given(replies(), st.sampled_from(OUTPUT_TYPES))
def test_value_readers_raise_only_typed_errors(text: str, annotation: Any) -> None:
    only_typed_errors(extract_json, text)
    only_typed_errors(close_json_object, text)
    only_typed_errors(json_object, text)
    only_typed_errors(coerce, text, annotation)


def test_value_errors_are_still_value_errors() -> None:
    # the typed error of the readers is also a ValueError: code that caught that keeps working
    with pytest.raises(ValueError):
        coerce("no number here", int)
    with pytest.raises(ValueError):
        extract_json("[" * 100_000)
    with pytest.raises(LmgraphError):
        coerce("[" * 100_000, list[list[int]])


# ----------------------------------------------------------------------------- program loading


def _rich_program() -> lg.Program:
    inner = lg.Pipeline("item")
    a = inner.add(lg.Predict("item -> label: Literal['a', 'b']"), name="label", item=inner.input("item"))
    inner.output(label=a.label)
    p = lg.Pipeline("rich")
    q = p.input("question")
    cot = p.add(lg.ChainOfThought("question -> person: Person, score: float", types={"Person": Person},
                                  demos=[{"question": "q", "person": Person(name="Ada"), "score": 1.0}]),
                name="think", question=q)
    m = p.add(lg.Map(inner.build(), over="item"), name="each", item=p.input("items", list[str]))
    p.output(person=cot.person, score=cot.score, labels=m.label)
    return p.build()


RICH = _rich_program().to_dict()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(RICH)[1:]
ODD_VALUES = st.one_of(json_values, st.sampled_from([
    {"$ref": "#/$defs/Loop"}, {"kind": "model", "schema": {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}},
    {"kind": "model", "schema": {"properties": {"__class__": {"type": "string"}}}},
    {"kind": "model", "schema": {"properties": {"x": {"type": "string", "pattern": "(["}}}},
    {"kind": "model", "schema": {"properties": {"x": {"type": "integer", "minimum": "low"}}}},
    {"kind": "enum", "values": [[1], {"a": 1}]}, {"kind": "enum", "values": []}, {"kind": "enum", "values": "abc"},
    {"kind": "model", "schema": {"properties": {"model_config": {"type": "string"}}}},
    {"kind": "model", "schema": {"properties": {"1bad": {"type": "string"}}, "required": ["1bad"]}},
    "list[Person", "Literal[", "Person", "__import__('os')", [[[[[]]]]], -1, 10**30, "", "\x00",
]))


@st.composite
def mutated_programs(draw: Any) -> Any:
    data = copy.deepcopy(RICH)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = data
        try:
            for k in path[:-1]:
                parent = parent[k]
            if draw(st.integers(0, 4)) == 0 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = copy.deepcopy(draw(ODD_VALUES))  # a fresh copy: no aliasing, no cycles
        except (KeyError, IndexError, TypeError):
            continue
    return data


@FUZZ
@given(st.one_of(mutated_programs(), json_values))
def test_program_from_dict_raises_only_typed_errors(data: Any) -> None:
    only_typed_errors(lg.Program.from_dict, data, types=None)


@FUZZ
@given(st.one_of(st.binary(max_size=200),
                 mutated_programs().map(lambda d: json.dumps(envelope({"program": d})).encode()),
                 st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)))
def test_loading_files_raises_only_typed_errors(tmp_path_factory: Any, raw: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.json"
    path.write_bytes(raw)
    only_typed_errors(lg.Program.load, path)
    only_typed_errors(lg.Program.load, path, trusted=True)
    only_typed_errors(read_document, path, verify_key=b"k")


# ----------------------------------------------------------------------------- cache entries

RESPONSE_KEYS = st.sampled_from(["text", "usage", "model", "finish_reason", "logprobs", "cost", "cached"])
response_like = st.dictionaries(RESPONSE_KEYS, st.one_of(json_values, st.fixed_dictionaries(
    {}, optional={"prompt_tokens": json_values, "completion_tokens": json_values})), max_size=6)


@FUZZ
@given(st.one_of(st.text(max_size=40), json_values.map(json.dumps), response_like.map(json.dumps),
                 st.integers(), st.binary(max_size=20)))
def test_cache_entries_decode_to_a_miss_or_a_response(raw: Any) -> None:
    value = only_typed_errors(DiskCache._decode, "key", raw)
    if value is not None:
        resp = only_typed_errors(LMResponse.from_dict, value, cached=True)
        assert isinstance(resp, LMResponse) and isinstance(resp.text, str)
