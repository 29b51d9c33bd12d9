"""Signatures: shorthand parsing, class-based declaration, (de)serialization, equality."""

from __future__ import annotations

import enum
import json
import pickle
import typing
from typing import Any, Literal, Optional, Union

import pydantic
import pytest

import lmgraph as lg
from lmgraph.errors import SignatureError
from lmgraph.signatures import (
    FieldSpec,
    Signature,
    compatible,
    ensure_signature,
    is_structured,
    str_to_type,
    type_to_str,
)


class Address(pydantic.BaseModel):
    city: str
    zip: Optional[str] = None


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Person(pydantic.BaseModel):
    """A person mentioned in the text."""

    name: str = pydantic.Field(description="full name", min_length=1)
    age: int = pydantic.Field(ge=0, le=150)
    favourite: Color = Color.RED
    address: Optional[Address] = None
    tags: list[str] = []
    kind: Literal["human"] = "human"


# --------------------------------------------------------------------------- shorthand

def test_untyped_fields_are_str():
    sig = Signature.parse("question, context -> answer")
    assert sig.input_names == ("question", "context")
    assert sig.output_names == ("answer",)
    assert all(f.annotation is str for f in (*sig.inputs, *sig.outputs))


@pytest.mark.parametrize("text, expected", [
    ("int", int), ("float", float), ("bool", bool), ("str", str),
    ("list[str]", list[str]), ("list[int]", list[int]), ("dict[str, int]", dict[str, int]),
    ("dict[str, list[float]]", dict[str, list[float]]),
    ("Optional[int]", Optional[int]), ("int | None", Optional[int]),
    ("Literal['a', 'b']", Literal["a", "b"]), ('Literal["yes", "no"]', Literal["yes", "no"]),
    ("Literal[1, 2, 3]", Literal[1, 2, 3]), ("Literal[-1, 0, 1]", Literal[-1, 0, 1]),
    ("Union[int, str]", Union[int, str]),
    ("list[Literal['x', 'y']]", list[Literal["x", "y"]]),
])
def test_shorthand_types(text, expected):
    sig = Signature.parse(f"q -> out: {text}")
    assert sig.output("out").annotation == expected
    assert str_to_type(text) == expected


def test_shorthand_splits_only_top_level_commas():
    sig = Signature.parse("a: dict[str, int], b: Literal['x, y', 'z'] -> c: list[str], d: int")
    assert sig.input_names == ("a", "b")
    assert sig.input("a").annotation == dict[str, int]
    assert typing.get_args(sig.input("b").annotation) == ("x, y", "z")
    assert sig.output_names == ("c", "d")


def test_no_inputs_is_allowed():
    sig = Signature.parse("-> joke")
    assert sig.inputs == () and sig.output_names == ("joke",)


def test_custom_pydantic_type_via_types():
    sig = Signature.parse("text -> people: list[Person]", types={"Person": Person})
    assert sig.output("people").annotation == list[Person]
    assert sig.structured


def test_instructions_default_and_explicit():
    assert "`question`" in Signature.parse("question -> answer").instructions
    sig = Signature.parse("question -> answer", instructions="  Be brief.  ")
    assert sig.instructions == "Be brief."


@pytest.mark.parametrize("text, needle", [
    ("question answer", "no '->'"),
    ("1question -> answer", "not a valid field name"),
    ("question -> the answer", "not a valid field name"),
    ("question ->", "no output field"),
    ("a -> b -> c", "more than one '->'"),
    ("a -> a", "declared twice"),
    ("a -> b: list[", "cannot read type"),
    ("a -> b: 3 + 4", "unsupported type expression"),
    ("a -> b: int[str]", "cannot be subscripted"),
    ("a -> b: Literal[x]", "must be constants"),
])
def test_shorthand_errors(text, needle):
    with pytest.raises(SignatureError) as ei:
        Signature.parse(text)
    assert needle in str(ei.value)
    assert isinstance(ei.value, lg.DefinitionError)


def test_missing_arrow_says_the_fix():
    with pytest.raises(SignatureError) as ei:
        Signature.parse("question answer")
    assert ei.value.fix and "question, context -> answer" in ei.value.fix
    assert "Fix:" in str(ei.value)


def test_bad_name_names_the_field():
    with pytest.raises(SignatureError) as ei:
        Signature.parse("2fast -> answer")
    assert ei.value.field == "2fast"
    assert "letters, digits and underscores" in str(ei.value)


def test_unknown_type_says_how_to_pass_it():
    with pytest.raises(SignatureError) as ei:
        Signature.parse("text -> who: Person")
    msg = str(ei.value)
    assert "unknown type 'Person'" in msg
    assert "types={'Person': Person}" in msg


def test_type_expressions_are_not_evaluated():
    with pytest.raises(SignatureError):
        str_to_type("__import__('os').system('echo hi')")


# --------------------------------------------------------------------------- class-based

class QA(Signature):
    """Answer the question from the context."""

    question: str = lg.InputField()
    context: list[str] = lg.InputField(desc="retrieved passages")
    answer: str = lg.OutputField(prefix="Final answer")


def test_class_based_declaration():
    sig = QA()
    assert sig.input_names == ("question", "context")
    assert sig.output_names == ("answer",)
    assert sig.instructions == "Answer the question from the context."
    assert sig.input("context").desc == "retrieved passages"
    assert sig.input("context").annotation == list[str]
    assert sig.output("answer").label == "Final answer"
    assert sig == Signature([FieldSpec("question"), FieldSpec("context", list[str], "retrieved passages")],
                            [FieldSpec("answer", str, "", "Final answer")],
                            "Answer the question from the context.")


def test_class_fields_do_not_stay_as_class_attributes():
    assert "question" not in QA.__dict__


def test_ensure_signature_accepts_all_three_forms():
    assert ensure_signature(QA) == QA()
    assert ensure_signature(QA()) == QA()
    assert ensure_signature("q -> a") == Signature.parse("q -> a")
    assert ensure_signature(QA, instructions="Other.").instructions == "Other."
    with pytest.raises(SignatureError):
        ensure_signature(42)  # type: ignore[arg-type]


def test_class_annotation_without_marker_is_an_error():
    with pytest.raises(SignatureError) as ei:
        class Bad(Signature):
            question: str = lg.InputField()
            answer: str  # forgot OutputField()
    assert ei.value.field == "answer"
    assert "OutputField()" in str(ei.value)


def test_subclass_keeps_parent_fields():
    class QAWithTopic(QA):
        topic: str = lg.InputField()
        confidence: float = lg.OutputField()

    sig = QAWithTopic()
    assert sig.input_names == ("question", "context", "topic")
    assert sig.output_names == ("answer", "confidence")
    assert sig.instructions == "Answer the question from the context."  # inherited docstring


def test_signature_is_immutable():
    sig = Signature.parse("q -> a")
    with pytest.raises(AttributeError):
        sig.instructions = "x"  # type: ignore[misc]
    assert sig.with_instructions("x").instructions == "x"
    assert sig.instructions != "x"


def test_field_label_derivation():
    assert FieldSpec("final_answer").label == "Final answer"
    assert FieldSpec("x", prefix="Why").label == "Why"


# --------------------------------------------------------------------------- round trip

def _roundtrip(sig: Signature, **kw: Any) -> Signature:
    return Signature.from_dict(json.loads(json.dumps(sig.to_dict())), **kw)


@pytest.mark.parametrize("text", [
    "question, context: list[str] -> answer",
    "a: int, b: float, c: bool -> d: Optional[int], e: dict[str, list[int]]",
    "text -> label: Literal['pos', 'neg', \"it's fine\"]",
    "x: Union[int, str] -> y: list[Literal[-1, 2]]",
])
def test_to_dict_from_dict_round_trip(text):
    sig = Signature.parse(text, instructions="Do it.")
    back = _roundtrip(sig)
    assert back == sig
    assert back.to_dict() == sig.to_dict()
    for a, b in zip((*sig.inputs, *sig.outputs), (*back.inputs, *back.outputs)):
        assert a.annotation == b.annotation


def test_round_trip_keeps_desc_prefix_and_instructions():
    back = _roundtrip(QA())
    assert back == QA()
    assert back.input("context").desc == "retrieved passages"
    assert back.output("answer").prefix == "Final answer"


def test_pydantic_model_rebuilt_from_schema_without_the_class():
    sig = Signature.parse("text -> person: Person, color: Color", types={"Person": Person, "Color": Color})
    data = json.loads(json.dumps(sig.to_dict()))
    assert set(data["types"]) == {"Person", "Color"}
    back = Signature.from_dict(data)  # no types= : rebuilt from the stored schema, no code
    assert back == sig
    assert back.to_dict() == sig.to_dict()  # stable: saving again gives the same JSON
    P = back.output("person").annotation
    assert P is not Person and issubclass(P, pydantic.BaseModel) and P.__name__ == "Person"
    assert P.model_json_schema() == Person.model_json_schema()
    p = P.model_validate({"name": "Ada", "age": 36, "favourite": "blue", "address": {"city": "London"}})
    assert p.address.city == "London" and p.favourite.value == "blue" and p.tags == []
    with pytest.raises(pydantic.ValidationError):
        P.model_validate({"name": "Ada", "age": -1})  # constraints survive
    C = back.output("color").annotation
    assert issubclass(C, enum.Enum) and [m.value for m in C] == ["red", "blue"]


def test_from_dict_prefers_the_callers_classes():
    sig = Signature.parse("text -> person: Person", types={"Person": Person})
    back = Signature.from_dict(sig.to_dict(), types={"Person": Person})
    assert back.output("person").annotation is Person


def test_type_to_str_inverts_str_to_type():
    for tp in (int, list[str], dict[str, int], Optional[float], Literal["a", "b"], Union[int, str], Any):
        assert str_to_type(type_to_str(tp)) == tp


# --------------------------------------------------------------------------- equality / hash

def test_equality_and_hash():
    a = Signature.parse("q, c: list[str] -> a")
    b = Signature.parse("q, c: list[str] -> a")
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != Signature.parse("q, c: list[int] -> a")
    assert a != Signature.parse("q, c: list[str] -> b")
    assert a != a.with_instructions("Different.")
    assert a != "q, c: list[str] -> a"


def test_same_named_but_different_types_are_not_equal():
    class Person(pydantic.BaseModel):  # a different class with the same name as the module's
        nickname: str

    a = Signature.parse("text -> who: Person", types={"Person": globals()["Person"]})
    b = Signature.parse("text -> who: Person", types={"Person": Person})
    assert a != b
    assert a == Signature.parse("text -> who: Person", types={"Person": globals()["Person"]})


def test_pickle_and_copy():
    import copy

    sig = QA()
    assert pickle.loads(pickle.dumps(sig)) == sig
    assert copy.deepcopy(sig) == sig


def test_shorthand_and_repr():
    sig = Signature.parse("q, n: int -> a: list[str]")
    assert sig.shorthand() == "q, n: int -> a: list[str]"
    assert "q, n: int -> a: list[str]" in repr(sig)


def test_prepend_output_and_append_input():
    sig = Signature.parse("q -> a")
    assert sig.prepend_output(FieldSpec("reasoning")).output_names == ("reasoning", "a")
    assert sig.append_input(FieldSpec("hint")).input_names == ("q", "hint")
    with pytest.raises(SignatureError):
        sig.append_input(FieldSpec("a"))  # clashes with the output


def test_structured_and_compatible():
    assert not Signature.parse("q -> a: list[str]").structured
    assert Signature.parse("q -> a: dict[str, int]").structured
    assert is_structured(list[Person])
    assert compatible(int, float) and compatible(list[str], str) and compatible(Literal["a"], str)
    assert compatible(int, Optional[int])
    assert not compatible(list[str], int)
    assert not compatible(str, int)
    assert not compatible(list[str], list[int])
    assert compatible(Literal["a", "b"], Literal["a", "b", "c"])
    assert not compatible(Literal["a", "z"], Literal["a", "b"])
