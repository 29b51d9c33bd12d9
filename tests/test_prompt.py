"""Prompt formats (completion / chat / json): rendering, parsing, value coercion."""

from __future__ import annotations

import enum
import json
from typing import Literal, Optional, Union

import pydantic
import pytest

from lmgraph.errors import OutputParseError
from lmgraph.lm.prompt import FORMATS, coerce, format_value, get_format
from lmgraph.signatures import FieldSpec, Signature

SENTIMENT = Signature.parse("review -> sentiment: Literal['positive', 'negative']",
                            instructions="Classify the review.")
QA = Signature.parse("question, context: list[str] -> reasoning, answer: int", instructions="Answer it.")
DEMOS = [
    {"question": "2+2?", "context": ["arithmetic"], "reasoning": "two and two", "answer": 4},
    {"question": "3*3?", "context": ["times", "tables"], "reasoning": "three threes", "answer": 9},
]
INPUTS = {"question": "10-3?", "context": ["subtraction"]}


class Item(pydantic.BaseModel):
    name: str
    qty: int = 1


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


# --------------------------------------------------------------------------- rendering

def test_completion_renders_instructions_demos_inputs_and_ends_with_first_output_label():
    req = get_format("completion").render(QA, QA.instructions, DEMOS, INPUTS, temperature=0.3, max_tokens=50)
    assert req.messages is None and req.mode == "completion"
    p = req.prompt
    assert p.startswith("Answer it.")
    assert p.endswith("Context:\n[1] subtraction\nReasoning:")
    # demos as "Field: value" blocks, in order, before the input
    assert "Question: 2+2?\nContext:\n[1] arithmetic\nReasoning: two and two\nAnswer: 4" in p
    assert p.index("2+2?") < p.index("3*3?") < p.index("10-3?")
    assert "Context:\n[1] times\n[2] tables" in p
    # output type documented in the header
    assert "Answer: a number" in p
    assert req.stop == ("\n\n", "\nQuestion:")
    assert req.temperature == 0.3 and req.max_tokens == 50
    assert req.json_schema is None


def test_completion_without_demos():
    req = get_format("completion").render(SENTIMENT, "Classify.", [], {"review": "Great!"})
    assert req.prompt == ("Classify.\n\nSentiment: one of: positive, negative\n\n"
                          "Review: Great!\nSentiment:")


def test_chat_has_system_and_demo_turns():
    req = get_format("chat").render(QA, QA.instructions, DEMOS, INPUTS)
    assert req.prompt is None and req.mode == "chat"
    roles = [m.role for m in req.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    system = req.messages[0].content
    assert system.startswith("Answer it.")
    assert "'Reasoning: ...', then 'Answer: ...', each on its own line" in system
    assert req.messages[1].content == "Question: 2+2?\nContext:\n[1] arithmetic"
    assert req.messages[2].content == "Reasoning: two and two\nAnswer: 4"
    assert req.messages[-1].content == "Question: 10-3?\nContext:\n[1] subtraction"
    assert req.json_schema is None and req.stop == ()


def test_json_carries_schema_and_json_demos():
    req = get_format("json").render(QA, QA.instructions, DEMOS, INPUTS)
    schema = req.json_schema
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"reasoning", "answer"}
    assert schema["properties"]["answer"]["type"] == "integer"
    assert set(schema["required"]) == {"reasoning", "answer"}
    assert '"reasoning", "answer"' in req.messages[0].content
    assert json.loads(req.messages[2].content) == {"reasoning": "two and two", "answer": 4}
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_json_schema_of_literal_and_model():
    sig = Signature.parse("text -> items: list[Item], mood: Literal['happy', 'sad']", types={"Item": Item})
    schema = get_format("json").render(sig, "x", [], {"text": "t"}).json_schema
    assert schema["properties"]["mood"]["enum"] == ["happy", "sad"]
    assert "Item" in schema["$defs"]


def test_demo_without_optional_output_is_rendered_without_it():
    demo = {"question": "q", "context": ["c"], "answer": 1}  # no reasoning (ChainOfThought labels)
    for fmt in FORMATS:
        req = get_format(fmt).render(QA, "x", [demo], INPUTS)
        text = req.prompt if req.prompt is not None else "\n".join(m.content for m in req.messages)
        assert "Answer: 1" in text or '"answer": 1' in text


def test_format_value():
    assert format_value("  hi  ") == "hi"
    assert format_value(["a", "b"]) == "[1] a\n[2] b"
    assert format_value([]) == "(none)"
    assert format_value(["a", "b"], as_input=False) == '["a", "b"]'
    assert format_value([1, 2]) == "[1, 2]"
    assert format_value({"k": 1}) == '{"k": 1}'
    assert format_value(True) == "yes" and format_value(False) == "no"
    assert format_value(Item(name="x")) == '{"name":"x","qty":1}'
    assert format_value(Mood.SAD) == "sad"
    assert format_value(3) == "3"


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown prompt format 'xml'"):
        get_format("xml")


# --------------------------------------------------------------------------- parsing

def test_completion_parse_multi_field_prefilled_first_label():
    out = get_format("completion").parse(QA, " seven from ten\nAnswer: 7")
    assert out == {"reasoning": "seven from ten", "answer": 7}


def test_completion_parse_single_field():
    assert get_format("completion").parse(SENTIMENT, " positive") == {"sentiment": "positive"}


def test_completion_parse_when_the_model_repeats_the_prefilled_label():
    assert get_format("completion").parse(SENTIMENT, " Sentiment: negative") == {"sentiment": "negative"}
    assert get_format("completion").parse(QA, "\nReasoning: r\nAnswer: 3") == {"reasoning": "r", "answer": 3}


def test_chat_parse_multi_field():
    text = "Reasoning: it is\nmultiline\nAnswer: 7"
    assert get_format("chat").parse(QA, text) == {"reasoning": "it is\nmultiline", "answer": 7}


def test_chat_parse_tolerates_markdown_and_case():
    text = "**reasoning:** because\n**ANSWER**: 12"
    assert get_format("chat").parse(QA, text) == {"reasoning": "because", "answer": 12}
    text = "## Reasoning: because\n* Answer: 12"
    assert get_format("chat").parse(QA, text) == {"reasoning": "because", "answer": 12}


def test_chat_single_output_without_label_uses_whole_text():
    assert get_format("chat").parse(SENTIMENT, "Negative.") == {"sentiment": "negative"}


def test_optional_output_may_be_left_out():
    sig = Signature.parse("q -> notes: Optional[str], answer: int")
    assert get_format("chat").parse(sig, "Answer: 4") == {"notes": None, "answer": 4}
    assert get_format("chat").parse(sig, "Notes: none\nAnswer: 4") == {"notes": None, "answer": 4}


def test_chat_field_name_as_label():
    sig = Signature([FieldSpec("q")], [FieldSpec("final_answer", str)])
    assert get_format("chat").parse(sig, "final_answer: Paris") == {"final_answer": "Paris"}
    assert get_format("chat").parse(sig, "Final answer: Paris") == {"final_answer": "Paris"}


def test_json_parse():
    fmt = get_format("json")
    assert fmt.parse(QA, '{"reasoning": "r", "answer": 7}') == {"reasoning": "r", "answer": 7}
    assert fmt.parse(QA, '```json\n{"reasoning": "r", "answer": "7"}\n```') == {"reasoning": "r", "answer": 7}
    assert fmt.parse(QA, 'Sure! {"reasoning": "r", "answer": 7} Hope it helps.')["answer"] == 7
    sig = Signature.parse("q -> answer")
    assert fmt.parse(sig, '{"answer": 42}') == {"answer": "42"}  # a number where text was asked
    # a raw newline inside a string (llama-cpp-python's server lets the model write one under a
    # schema): read as written, complete or cut off -- not "the output is not JSON"
    assert fmt.parse(QA, '{ "reasoning": "a;\nb", "answer" : 7 }') == {"reasoning": "a;\nb", "answer": 7}
    assert fmt.parse(QA, '{"answer": 7, "reasoning": "line one\nline tw') == {"answer": 7,
                                                                               "reasoning": "line one\nline tw"}


def test_json_parse_models():
    sig = Signature.parse("text -> items: list[Item], first: Item", types={"Item": Item})
    out = get_format("json").parse(sig, json.dumps({"items": [{"name": "a", "qty": 2}, {"name": "b"}],
                                                    "first": {"name": "a"}}))
    assert out["items"] == [Item(name="a", qty=2), Item(name="b")]
    assert isinstance(out["first"], Item)


def test_chat_parse_model_field_as_json():
    sig = Signature.parse("text -> item: Item", types={"Item": Item})
    assert get_format("chat").parse(sig, 'Item: {"name": "pen", "qty": 3}') == {"item": Item(name="pen", qty=3)}


@pytest.mark.parametrize("fmt, sig, text, field, needle", [
    ("chat", QA, "Reasoning: r\nAnswer: seven", "answer", "expected a number"),
    ("chat", QA, "Reasoning: r", "answer", "missing 'Answer:'"),
    ("completion", QA, " r\nAnswer: lots", "answer", "expected a number"),
    ("completion", SENTIMENT, " mixed feelings", "sentiment", "expected one of positive, negative"),
    ("completion", SENTIMENT, " ", "sentiment", "expected one of"),
    ("completion", Signature.parse("q -> answer"), "   ", "answer", "empty"),
    ("json", QA, '{"reasoning": "r"}', "answer", "missing key 'answer'"),
    ("json", QA, '{"reasoning": "r", "answer": "many"}', "answer", "expected a number"),
    ("json", Signature.parse("t -> item: Item", types={"Item": Item}), '{"item": {"qty": 2}}', "item",
     "name: Field required"),
])
def test_parse_errors_name_the_field(fmt, sig, text, field, needle):
    with pytest.raises(OutputParseError) as ei:
        get_format(fmt).parse(sig, text)
    assert ei.value.field == field
    assert f"field {field!r}" in str(ei.value)
    assert needle in str(ei.value)
    assert ei.value.raw == text


def test_chat_unlabelled_lead_is_the_free_text_first_field():
    chat = get_format("chat")
    # a chat model that starts reasoning straight away, then labels the answer
    assert chat.parse(QA, "Ten minus three.\nSo seven.\nAnswer: 7") == {"reasoning": "Ten minus three.\nSo seven.",
                                                                       "answer": 7}
    # a labelled first field wins over any preamble
    assert chat.parse(QA, "Sure.\nReasoning: r\nAnswer: 7") == {"reasoning": "r", "answer": 7}
    # only a free-text first field stands for unlabelled text
    sig = Signature.parse("q -> n: int, note")
    with pytest.raises(OutputParseError) as ei:
        chat.parse(sig, "5\nNote: easy")
    assert ei.value.field == "n"


def test_chat_continuation_keeps_the_written_fields_and_asks_for_the_rest():
    chat = get_format("chat")
    req = chat.render(QA, "x", [], INPUTS, max_tokens=100)
    text = "Ten minus three is seven, as 3 + 7 = 10."  # no labels, no answer
    with pytest.raises(OutputParseError, match="missing 'Answer:'"):
        chat.parse(QA, text)
    follow, prefix = chat.continuation(req, text, QA)
    assert [m.role for m in follow.messages][-2:] == ["assistant", "user"] and follow.messages[-2].content == text
    # one missing field: asked for in plain text with its label (a JSON grammar makes a small
    # model write code into the string), its type named
    assert follow.messages[-1].content == "Now reply with only 'Answer: ...' (a number)."
    assert follow.json_schema is None and follow.max_tokens == 100
    for reply in ("Answer: 7", "The answer is 7.", '{"answer": 7}'):
        assert chat.parse_continuation(QA, prefix, reply) == {"reasoning": text, "answer": 7}
    with pytest.raises(OutputParseError) as ei:
        chat.parse_continuation(QA, prefix, "Answer: seven")
    assert ei.value.field == "answer"
    # a labelled first field that stopped early continues the same way
    follow, prefix = chat.continuation(req, "Reasoning: 10 - 3\n= 7", QA)
    assert chat.parse_continuation(QA, prefix, "Answer: 7") == {"reasoning": "10 - 3\n= 7", "answer": 7}
    # several missing fields: one JSON object under their schema
    three = Signature.parse("q -> a, b: int, c")
    three_req = chat.render(three, "x", [], {"q": "?"}, max_tokens=50)
    follow, prefix = chat.continuation(three_req, "A: 1", three)
    assert set(follow.json_schema["properties"]) == {"b", "c"} and follow.max_tokens == 74
    assert '"b", "c"' in follow.messages[-1].content
    assert chat.parse_continuation(three, prefix, '{"b": 2, "c": "x"}') == {"a": "1", "b": 2, "c": "x"}
    # nothing to keep, a gap before a written field, or nothing missing: the ordinary repair instead
    assert chat.continuation(three_req, "A: 1\nC: 3", three) is None
    assert chat.continuation(req, "   ", QA) is None
    assert chat.continuation(req, "Answer: 7", QA) is None  # the first field is the one missing
    assert chat.continuation(req, "Reasoning: r\nAnswer: 7", QA) is None
    assert chat.continuation(chat.render(SENTIMENT, "x", [], {"review": "ok"}), "meh", SENTIMENT) is None


def test_json_continuation_asks_only_for_the_keys_the_token_limit_cut_off():
    """A JSON object cut off inside its first field (a small model's reasoning running past
    max_tokens) is continued: the kept fields shown back closed, the missing keys asked for
    under their own schema -- not a repair that makes the model rewrite the reasoning."""
    fmt = get_format("json")
    req = fmt.render(QA, "x", [], INPUTS, max_tokens=100)
    text = '{"reasoning": "ten minus three is seven, because 3 + 7 = 1'
    with pytest.raises(OutputParseError, match="missing key 'answer'"):
        fmt.parse(QA, text)
    follow, prefix = fmt.continuation(req, text, QA)
    assert json.loads(prefix) == {"reasoning": "ten minus three is seven, because 3 + 7 = 1"}
    assert [m.role for m in follow.messages][-2:] == ["assistant", "user"]
    assert follow.messages[-2].content == prefix and follow.messages[:-2] == req.messages
    assert follow.messages[-1].content == 'Now reply with only one JSON object with the keys "answer".'
    assert set(follow.json_schema["properties"]) == {"answer"} and follow.max_tokens == req.max_tokens
    assert fmt.parse_continuation(QA, prefix, '{"answer": 7}') == {
        "reasoning": "ten minus three is seven, because 3 + 7 = 1", "answer": 7}
    with pytest.raises(OutputParseError) as ei:
        fmt.parse_continuation(QA, prefix, '{"answer": "seven"}')
    assert ei.value.field == "answer"
    with pytest.raises(OutputParseError, match="kept fields"):
        fmt.parse_continuation(QA, "Reasoning: r", '{"answer": 7}')
    # several keys missing: all of them, in one object
    three = Signature.parse("q -> a, b: int, c")
    follow, prefix = fmt.continuation(fmt.render(three, "x", [], {"q": "?"}), '{"a": "long', three)
    assert set(follow.json_schema["properties"]) == {"b", "c"}
    assert fmt.parse_continuation(three, prefix, '{"b": 2, "c": "x"}') == {"a": "long", "b": 2, "c": "x"}
    # a complete object, nothing kept, a gap before a written key, one output, not JSON: the repair instead
    assert fmt.continuation(req, '{"reasoning": "r"}', QA) is None
    assert fmt.continuation(req, '{"reason', QA) is None
    assert fmt.continuation(req, '{"answer": 7, "reas', QA) is None
    assert fmt.continuation(req, "Ten minus three", QA) is None
    assert fmt.continuation(fmt.render(SENTIMENT, "x", [], {"review": "ok"}), '{"sentiment": "pos', SENTIMENT) is None


def test_json_cut_off_by_the_token_limit_keeps_what_was_written():
    fmt = get_format("json")
    # the open string and object are closed
    assert fmt.parse(QA, '{"answer": 4, "reasoning": "two and t') == {"answer": 4, "reasoning": "two and t"}
    assert fmt.parse(QA, '```json\n{"answer": 4, "reasoning": "a \\"quote') == {"answer": 4, "reasoning": 'a "quote'}
    assert fmt.parse(QA, '{"answer": 4, "reasoning": "r", ') == {"answer": 4, "reasoning": "r"}
    # cut inside a later key: that member is dropped, and the field it was to hold is missing
    with pytest.raises(OutputParseError, match="missing key 'answer'") as ei:
        fmt.parse(QA, '{"reasoning": "two and two", "answ')
    assert ei.value.field == "answer"
    with pytest.raises(OutputParseError, match="missing key 'answer'"):
        fmt.parse(QA, '{"reasoning": "two and t')
    sig = Signature.parse("text -> items: list[Item]", types={"Item": Item})
    assert fmt.parse(sig, '{"items": [{"name": "a", "qty": 2}, {"name": "b') == {
        "items": [Item(name="a", qty=2), Item(name="b")]}
    # not a cut-off object: still an error
    with pytest.raises(OutputParseError, match="not JSON"):
        fmt.parse(QA, '{"answer": 4}} trailing {')


def test_label_formats_read_a_json_answer_by_its_value():
    """A single-output reply that is a JSON object keyed by the field (a chat model answering in
    JSON, or a repair cut off by max_tokens) gives the value, not the JSON syntax as text."""
    sig = Signature.parse("question -> answer", instructions="x")
    chat = get_format("chat")
    assert chat.parse(sig, '{"answer": "Paris"}') == {"answer": "Paris"}
    assert chat.parse(sig, '{"answer": "The Eiffel To') == {"answer": "The Eiffel To"}
    assert chat.parse_repair(sig, '{"answer": "The Eiffel To') == {"answer": "The Eiffel To"}
    assert get_format("completion").parse(SENTIMENT, ' {"sentiment": "negative"}') == {"sentiment": "negative"}
    # a JSON object without the field's key is the answer's text, as before
    assert chat.parse(sig, '{"city": "Paris"}') == {"answer": '{"city": "Paris"}'}
    with pytest.raises(OutputParseError, match="expected one of") as ei:
        chat.parse(SENTIMENT, '{"sentiment": "mixed"}')
    assert ei.value.field == "sentiment"


def test_json_parse_not_json():
    with pytest.raises(OutputParseError, match="not JSON"):
        get_format("json").parse(QA, "the answer is 7")
    with pytest.raises(OutputParseError, match="JSON object"):
        get_format("json").parse(QA, "[1, 2]")


def test_repair_requests():
    chat = get_format("chat")
    req = chat.render(QA, "x", [], INPUTS)
    fixed = chat.repair(req, "garbage", ValueError("bad"), QA)
    assert [m.role for m in fixed.messages][-2:] == ["assistant", "user"]
    assert fixed.messages[-2].content == "garbage"
    # the chat repair asks for JSON under the output schema (structured output where supported)
    assert '"reasoning", "answer"' in fixed.messages[-1].content and "bad" in fixed.messages[-1].content
    assert fixed.json_schema == get_format("json").render(QA, "x", [], INPUTS).json_schema
    assert fixed.max_tokens == req.max_tokens + 24
    # its answer is read as JSON, or with labels where a backend ignored the schema
    assert chat.parse_repair(QA, '{"reasoning": "r", "answer": 7}') == {"reasoning": "r", "answer": 7}
    assert chat.parse_repair(QA, "Reasoning: r\nAnswer: 7") == {"reasoning": "r", "answer": 7}
    with pytest.raises(OutputParseError) as ei:
        chat.parse_repair(QA, "Reasoning: r")
    assert ei.value.field == "answer"
    with pytest.raises(OutputParseError, match="missing key"):
        chat.parse_repair(QA, '{"reasoning": "r"}')
    comp = get_format("completion")
    req = comp.render(QA, "x", [], INPUTS)
    fixed = comp.repair(req, " garbage", ValueError("bad"), QA)
    assert fixed.prompt.startswith(req.prompt + " garbage") and fixed.prompt.endswith('"reasoning", "answer":\n')
    assert fixed.json_schema is not None and fixed.stop == ()
    assert comp.parse_repair(QA, '{"reasoning": "r", "answer": 7}') == {"reasoning": "r", "answer": 7}
    js = get_format("json")
    req = js.render(QA, "x", [], INPUTS)
    fixed = js.repair(req, "{", ValueError("bad"), QA)
    assert fixed.json_schema == req.json_schema and "only the JSON object" in fixed.messages[-1].content


# --------------------------------------------------------------------------- coerce

LABELS = Literal["positive", "negative", "neutral"]


@pytest.mark.parametrize("text, expected", [
    ("positive", "positive"), ("Positive", "positive"), ("POSITIVE!", "positive"), ("'negative'", "negative"),
    ("**Neutral**", "neutral"), ("The answer is positive.", "positive"),
    ("positive. The review is glowing", "positive"),
    ("  negative\n\nbecause it is bad", "negative"), ("Sentiment is: negative", "negative"),
])
def test_literal_matching(text, expected):
    assert coerce(text, LABELS) == expected


@pytest.mark.parametrize("text", ["it could be positive or negative", "unclear", "", "posit"])
def test_literal_rejects_ambiguous_or_unknown(text):
    with pytest.raises(ValueError, match="expected one of"):
        coerce(text, LABELS)


def test_literal_of_numbers_and_multiword():
    assert coerce("2", Literal[1, 2, 3]) == 2
    assert coerce("Rating: 3 stars", Literal[1, 2, 3]) == 3
    assert coerce("1", Literal[-1, 0, 1]) == 1
    assert coerce("-1", Literal[-1, 0, 1]) == -1
    with pytest.raises(ValueError, match="expected one of"):
        coerce("7", Literal[1, 2, 3])
    assert coerce("very good", Literal["good", "very good"]) == "very good"
    assert coerce("Very-Good", Literal["good", "very good"]) == "very good"


def test_enum():
    assert coerce("Sad", Mood) is Mood.SAD


@pytest.mark.parametrize("text, tp, expected", [
    ("42", int, 42), ("1,234", int, 1234), ("$5", int, 5), ("-3", int, -3), ("The answer is 12.", int, 12),
    ("3.5", float, 3.5), ("$1,234.50", float, 1234.5), ("-0.25", float, -0.25), ("1e3", float, 1000.0),
    ("7", float, 7.0), ("-$5.50", float, -5.5),
])
def test_numbers(text, tp, expected):
    value = coerce(text, tp)
    assert value == expected and type(value) is tp


def test_number_errors():
    with pytest.raises(ValueError, match="expected a number"):
        coerce("seven", int)
    with pytest.raises(ValueError, match="expected an integer"):
        coerce("2.5", int)


@pytest.mark.parametrize("text, expected", [
    ("yes", True), ("Yes.", True), ("TRUE", True), ("Yes, it is.", True), ("y", True), ("correct", True),
    ("no", False), ("No, never", False), ("false", False), ("0", False), ("Incorrect.", False),
])
def test_bool(text, expected):
    assert coerce(text, bool) is expected


def test_bool_error():
    with pytest.raises(ValueError, match="yes/no"):
        coerce("maybe", bool)


@pytest.mark.parametrize("text, tp, expected", [
    ('["a", "b"]', list[str], ["a", "b"]),
    ("Here you go: [1, 2, 3]", list[int], [1, 2, 3]),
    ("1. apple\n2. banana\n3) cherry", list[str], ["apple", "banana", "cherry"]),
    ("- apple\n* banana\n\u2022 cherry", list[str], ["apple", "banana", "cherry"]),
    ("[1] first\n[2] second", list[str], ["first", "second"]),
    ("1, 2, 3", list[int], [1, 2, 3]),
    ("apple, banana, cherry", list[str], ["apple", "banana", "cherry"]),
    ("3.5\n2.25", list[float], [3.5, 2.25]),
    ("-5\n-6", list[int], [-5, -6]),
    ("1. 3.5\n2. -2", list[float], [3.5, -2.0]),
    ("- yes\n- no", list[bool], [True, False]),
    ("positive\nnegative", list[LABELS], ["positive", "negative"]),
    ("", list[str], []),
])
def test_lists(text, tp, expected):
    assert coerce(text, tp) == expected


def test_list_item_error():
    with pytest.raises(ValueError):
        coerce("1. one\n2. two", list[int])


def test_optional_and_union():
    assert coerce("none", Optional[int]) is None
    assert coerce("N/A", Optional[int]) is None
    assert coerce("5", Optional[int]) == 5
    assert coerce("5", int | None) == 5
    assert coerce("hello", Union[int, str]) == "hello"
    assert coerce("hello", int | str) == "hello"
    assert coerce("12", int | str) == 12


def test_dict_and_model():
    assert coerce('{"a": 1}', dict[str, int]) == {"a": 1}
    assert coerce('```\n{"name": "x"}\n```', Item) == Item(name="x")
    with pytest.raises(ValueError, match="expected JSON for Item"):
        coerce("a pen", Item)
    with pytest.raises(ValueError, match="does not match Item"):
        coerce('{"qty": "many"}', Item)


def test_str_is_stripped():
    assert coerce("  Paris \n", str) == "Paris"


def test_completion_continues_after_the_next_missing_label_instead_of_a_repair_note():
    import lmgraph as lg
    from lmgraph.testing import ScriptedLM

    # the model writes the reasoning and stops; the second call continues after "Answer:"
    lm = ScriptedLM([" it is in the text.", " Paris"])
    p = lg.Pipeline("cot")
    q = p.input("question")
    node = p.add(lg.ChainOfThought("question -> answer", format="completion"), question=q)
    p.output(answer=node.answer, reasoning=node.reasoning)
    out = p.build().run_sync(lg.RunContext(lm=lm, cache=False), question="Capital of France?")
    assert out == {"answer": "Paris", "reasoning": "it is in the text."}
    second = lm.calls[1].prompt
    assert second.endswith("Reasoning: it is in the text.\nAnswer:")
    assert "could not be read" not in second
    assert out.trace.nodes[0].calls[0].parse_error is not None
