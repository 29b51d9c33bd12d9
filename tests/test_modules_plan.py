"""Plan: a Predict that decomposes a task into a bounded list of steps."""

from __future__ import annotations

import json

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError, RunError
from lmgraph.modules import Plan
from lmgraph.modules.plan import PLAN_INSTRUCTIONS, PLAN_MAX_TOKENS, parse_steps
from lmgraph.testing import FunctionLM, ScriptedLM, request_text


def plan_program(module: Plan) -> lg.Program:
    p = lg.Pipeline("planner")
    node = p.add(module, task=p.input("task"))
    p.output(steps=node.steps)
    return p.build()


def test_plan_parses_numbered_lines_and_truncates() -> None:
    seen = []

    def fn(req: lg.LMRequest) -> str:
        seen.append(request_text(req))
        return "Steps:\n" + "\n".join(f"{i}. sub-question {i}" for i in range(1, 8))

    prog = plan_program(Plan(max_steps=3))
    out = prog.run_sync(lg.RunContext(lm=FunctionLM(fn), cache=False), task="plan a trip")
    assert out.steps == ["sub-question 1", "sub-question 2", "sub-question 3"]
    assert PLAN_INSTRUCTIONS in seen[0]
    assert out.trace.node("plan").meta["truncated_steps"] == 4


def test_plan_parses_bullets_and_json_lists() -> None:
    answers = iter(["- first\n* second\n\n- third", '["a", "b"]'])
    ctx = lg.RunContext(lm=FunctionLM(lambda r: next(answers)), cache=False)
    prog = plan_program(Plan())
    assert prog.run_sync(ctx, task="x").steps == ["first", "second", "third"]
    assert prog.run_sync(ctx, task="y").steps == ["a", "b"]


def test_plan_tunables_and_custom_signature() -> None:
    m = Plan("question, context: list[str] -> subquestions: list[str]", max_steps=4,
             instructions="Split it.")
    assert m.instructions == "Split it." and m.steps_field == "subquestions"
    m2 = m.replace(max_steps=2, instructions="Other.")
    assert (m2.max_steps, m2.instructions, m.max_steps) == (2, "Other.", 4)
    assert set(Plan.tunable) >= {"instructions", "demos", "format", "lm", "max_steps"}
    assert m2.describe() == "Plan[auto, max_steps=2]"
    assert Plan().max_tokens == PLAN_MAX_TOKENS < 256 and Plan(max_tokens=64).max_tokens == 64
    # a declared docstring is kept as the instructions
    class Decompose(lg.Signature):
        """Write the questions to look up."""
        task: str = lg.InputField()
        steps: list[str] = lg.OutputField()

    assert Plan(Decompose).instructions == "Write the questions to look up."


@pytest.mark.parametrize("make", [
    lambda: Plan("task -> answer"),
    lambda: Plan(max_steps=0),
    lambda: Plan().replace(max_steps="3"),
    lambda: Plan(format="xml"),
])
def test_plan_bad_config(make) -> None:  # noqa: ANN001
    with pytest.raises(DefinitionError, match="Fix:"):
        make()


# ---- the list format: instructions, type hint and request agree (issue 19: "[1, 2, ..., 66,")

def test_instructions_ask_for_the_json_list_the_type_hint_names() -> None:
    assert "JSON list of strings" in PLAN_INSTRUCTIONS
    assert "numbered" not in PLAN_INSTRUCTIONS and "per line" not in PLAN_INSTRUCTIONS
    lm = ScriptedLM(['{"steps": ["find the capital", "find its population"]}'])
    prog = plan_program(Plan(max_steps=4))
    out = prog.run_sync(lg.RunContext(lm=lm, cache=False), task="population of France's capital?")
    assert out.steps == ["find the capital", "find its population"]
    req = lm.calls[0]
    # auto -> json: the list is schema-constrained (a grammar on llama.cpp), bounded by max_steps
    assert out.trace.node("plan").format == "json"
    steps = req.json_schema["properties"]["steps"]
    assert steps == {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 4}
    assert req.max_tokens == PLAN_MAX_TOKENS + 12


@pytest.mark.parametrize("reply, finish, steps", [
    # what SmolLM2 wrote for 256 tokens in completion format: no brackets or quotes left
    (" [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 66,", "length", ["1", "2", "3"]),
    # a cut-off JSON list: a comma inside a string is no separator; the unfinished item is dropped
    (' ["Find the capital, then its mayor", "Look up the popul', "length", ["Find the capital, then its mayor"]),
    (' ["a", "b"]', "stop", ["a", "b"]),
    ("\n1. first\n2) second\n- third\n[4] fourth", "stop", ["first", "second", "third"]),
    (' ["1. a", "", "a", "  b  ", "..."]', "stop", ["a", "b"]),
])
def test_completion_replies_become_clean_items(reply: str, finish: str, steps: list[str]) -> None:
    lm = FunctionLM(lambda r: lg.LMResponse(text=reply, finish_reason=finish))
    prog = plan_program(Plan(max_steps=3, format="completion"))
    out = prog.run_sync(lg.RunContext(lm=lm, cache=False), task="t")
    assert out.steps == steps and len(lm.calls) == 1
    # completion: stops at a repeated label (an invented next record), never a schema
    assert "\nSteps:" in lm.calls[0].stop and "\nTask:" in lm.calls[0].stop
    assert lm.calls[0].json_schema is None


@pytest.mark.parametrize("text, cut_off, steps", [
    ('{"steps": ["x", "y", "z', True, ["x", "y"]),
    ('{"steps": ["x", "y"]}', False, ["x", "y"]),
    ('{"plan": ["x", "y"', True, ["x", "y"]),
    ("Steps:\n1. first\n2. second\n\n3. third", False, ["first", "second", "third"]),
    ("Here are the sub-questions:\n1. a\n2. b\n3. c is cut o", True, ["a", "b"]),
    ("[1] one\n[2] two", False, ["one", "two"]),
    ("```json\n[\"a\", \"b\"]\n```", False, ["a", "b"]),
    ('{"steps": "1. a\\n2. b"}', False, ["a", "b"]),
    ("Step 1: do x\nStep 2: do y", False, ["do x", "do y"]),
    ("[1, 2, 3", True, ["1", "2"]),
    ("just one step", True, ["just one step"]),
    ("", False, []),
    ("[]", False, []),
])
def test_parse_steps(text: str, cut_off: bool, steps: list[str]) -> None:
    got = parse_steps(text, cut_off=cut_off)
    assert got == steps
    assert all(s and s[0] not in "[\"'" and s[-1] not in "]\"'," for s in got)


def test_no_items_gets_one_repair_then_a_typed_error() -> None:
    lm = ScriptedLM(["", '{"steps": ["a", "b"]}'])
    prog = plan_program(Plan())
    out = prog.run_sync(lg.RunContext(lm=lm, cache=False), task="t")
    assert out.steps == ["a", "b"] and len(lm.calls) == 2
    assert "was not valid" in request_text(lm.calls[1])
    assert lm.calls[1].json_schema["properties"]["steps"]["maxItems"] == 5
    assert "no steps in the model output" in out.trace.node("plan").calls[0].parse_error
    with pytest.raises(RunError, match="no steps in the model output"):
        prog.run_sync(lg.RunContext(lm=ScriptedLM(["", "[]"]), cache=False), task="t")


def test_plan_with_more_outputs_cleans_its_items() -> None:
    m = Plan("task -> rationale, steps: list[str]", format="chat", max_steps=2)
    lm = FunctionLM(lambda r: 'Rationale: r\nSteps: ["1. a", "b", "c"]')
    p = lg.Pipeline("planner")
    node = p.add(m, name="plan", task=p.input("task"))
    p.output(steps=node.steps, why=node.rationale)
    out = p.build().run_sync(lg.RunContext(lm=lm, cache=False), task="t")
    assert (out.steps, out.why) == (["a", "b"], "r")


@pytest.mark.integration
def test_plan_on_the_embedded_model_gives_clean_items() -> None:
    pytest.importorskip("llama_cpp")
    prog = plan_program(Plan(max_steps=4))
    out = prog.run_sync(lg.RunContext(cache=False), task="What is the population of the capital of France?")
    assert isinstance(out.steps, list) and 1 <= len(out.steps) <= 4, out.steps
    for s in out.steps:
        assert isinstance(s, str) and s.strip() == s and s, out.steps
        assert s[0] not in "[\"'" and s[-1] not in "]\"'", out.steps
    json.dumps(out.steps)  # plain JSON data
