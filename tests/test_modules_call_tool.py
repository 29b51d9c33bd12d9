"""CallTool: the ReAct loop, tool errors fed back, argument validation, the step bound."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pydantic
import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError
from lmgraph.modules import CallTool, Tool
from lmgraph.testing import FunctionLM, request_text


def add(a: int, b: int = 0) -> int:
    """Add two integers.

    More text that is not part of the description.
    """
    return a + b


def boom(x: str) -> str:
    """Always fails."""
    raise ValueError("kaboom: the service is down")


Script = list[tuple[str, dict | str | None]]


def kind(req: lg.LMRequest) -> str:
    text = request_text(req)
    if "Write the arguments for the tool" in text:
        return "fill"
    if "choose one tool by its name" in text:
        return "choose"
    return "answer"


def scripted(script: Script, final: str = "Answer: 5") -> tuple[FunctionLM, list[str]]:
    """A fake that plays ``script`` -- (tool, args) per step; args a dict (sent as the JSON
    reply), a str (sent as is) or None (no fill call expected) -- then ``final``."""
    texts: list[str] = []
    it = iter(script)
    pending: list[dict | str | None] = []

    def fn(req: lg.LMRequest) -> str:
        texts.append(request_text(req))
        k = kind(req)
        if k == "choose":
            tool, args = next(it)
            pending.append(args)
            return json.dumps({"thought": "t", "tool": tool})
        if k == "fill":
            args = pending[-1]
            return args if isinstance(args, str) else json.dumps({"args": args})
        return final

    return FunctionLM(fn), texts


def agent(module: CallTool) -> lg.Program:
    p = lg.Pipeline("agent")
    node = p.add(module, question=p.input("question"))
    p.output(answer=node.answer, trajectory=node.trajectory)
    return p.build()


def run(module: CallTool, lm: FunctionLM) -> lg.Prediction:
    return agent(module).run_sync(lg.RunContext(lm=lm, cache=False), question="What is 2 + 3?")


def test_choose_then_fill_with_the_tools_schema() -> None:
    lm, texts = scripted([("add", {"a": 2, "b": 3}), ("finish", None)])
    out = run(CallTool("question -> answer: int", [add]), lm)
    assert out.answer == 5
    assert [kind(r) for r in lm.calls] == ["choose", "fill", "choose", "answer"]
    assert "Observation 1: 5" in texts[2] and "Observation 1: 5" in texts[3]
    assert "Action 1: add" in out.trajectory
    steps = out.trace.node("call_tool").meta["steps"]
    assert steps[0] == {"step": 1, "tool": "add", "args": {"a": 2, "b": 3}, "ok": True, "observation": "5"}
    # the choose request lists the tools in plain words (docstring's first line), no schema to copy
    assert "- add: Add two integers. Arguments: a (integer, required), b (integer, default 0)." in texts[0]
    assert "More text" not in texts[0] and '"type"' not in texts[0]
    # the choice is constrained to the tool names
    assert lm.calls[0].json_schema["properties"]["tool"]["enum"] == ["add", "finish"]
    # the fill request is constrained to add's own parameters, not any dict
    schema = lm.calls[1].json_schema
    args = schema["$defs"][schema["properties"]["args"]["$ref"].split("/")[-1]]
    assert args["properties"].keys() == {"a", "b"} and args["required"] == ["a"]
    assert args["additionalProperties"] is False
    assert "Write the arguments for the tool `add` (Add two integers)" in texts[1]
    assert out.trace.node("call_tool").formats == ["json", "json", "json", "chat"]


def test_schema_copied_as_arguments_is_an_error_in_the_trace_not_a_call() -> None:
    # issue 19: the model copied the schema text instead of filling it
    seen: list[str] = []

    def capital(country: str) -> str:
        """The capital of a country."""
        seen.append(country)
        return "Paris"

    copied = json.dumps({"args": {"type": "string", "required": "country"}})
    lm, texts = scripted([("capital", copied), ("capital", {"country": "France"}), ("finish", None)],
                         final="Answer: Paris")
    fill_replies = iter([copied, copied])
    base = lm.fn

    def fn(req: lg.LMRequest) -> str:
        if kind(req) == "fill" and len([r for r in lm.calls if kind(r) == "fill"]) <= 2:
            texts.append(request_text(req))
            return next(fill_replies)  # the first fill and its repair: still the schema
        return base(req)

    lm.fn = fn
    out = run(CallTool("question -> answer", [capital]), lm)
    assert out.answer == "Paris" and seen == ["France"]  # the tool never saw the bad arguments
    step1 = out.trace.node("call_tool").meta["steps"][0]
    assert step1["ok"] is False and "do not fit its parameters" in step1["error"]
    assert "country" in step1["error"]
    assert "Observation 1: Error: the arguments for capital do not fit" in out.trajectory
    kinds = [kind(r) for r in lm.calls]
    assert kinds == ["choose", "fill", "fill", "choose", "fill", "choose", "answer"]
    assert "was not valid" in request_text(lm.calls[2])  # one repair call, then the error


def test_tool_without_parameters_needs_no_fill_call() -> None:
    def ping() -> str:
        """Check the service."""
        return "pong"

    lm, texts = scripted([("ping", None), ("finish", None)], final="Answer: up")
    out = run(CallTool("question -> answer", [ping]), lm)
    assert out.answer == "up" and [kind(r) for r in lm.calls] == ["choose", "choose", "answer"]
    assert "Action 1: ping({})" in out.trajectory and "Observation 1: pong" in out.trajectory
    assert "- ping: Check the service.\n" in texts[0]


def test_tool_exception_is_fed_back_not_raised() -> None:
    lm, texts = scripted([("boom", {"x": "hi"}), ("finish", None)], final="Answer: 0")
    out = run(CallTool("question -> answer: int", [add, boom]), lm)
    assert out.answer == 0
    assert "kaboom: the service is down" in texts[2]
    assert "ValueError" in texts[2]
    step1 = out.trace.node("call_tool").meta["steps"][0]
    assert step1["ok"] is False and step1["error"] == "ValueError: kaboom: the service is down"


def test_arguments_the_schema_cannot_express_are_checked_before_the_call() -> None:
    calls: list[int] = []

    def positive(n: int) -> int:
        """Only positive numbers."""
        calls.append(n)
        return n

    tool = Tool(positive)
    tool._model = pydantic.create_model(  # a validator beyond the JSON schema
        "positive_args", __config__=pydantic.ConfigDict(extra="forbid"),
        p0=(pydantic.PositiveInt, pydantic.Field(..., alias="n")))
    ct = CallTool("question -> answer: int", [tool])
    lm, _ = scripted([("positive", {"n": 3}), ("finish", None)], final="Answer: 3")
    assert agent(ct).run_sync(lg.RunContext(lm=lm, cache=False), question="q").answer == 3 and calls == [3]
    observation, ok, error = asyncio.run(ct._run_tool("positive", {"n": -1}))
    assert ok is False and error.startswith("bad arguments: n:") and calls == [3]
    assert observation.startswith("Error: bad arguments for positive: n: Input should be greater than 0")


def test_unknown_tool_is_fed_back() -> None:
    # an unknown tool fails the Literal check: the repair request shows the error; then the
    # loop goes on (a second unreadable reply becomes a note in the trajectory)
    lm, texts = scripted([("multiply", None), ("multiply", None), ("add", {"a": 2, "b": 3}), ("finish", None)])
    out = run(CallTool("question -> answer: int", [add]), lm)
    assert out.answer == 5
    assert "expected one of add, finish" in texts[1]
    assert "could not be read" in texts[2] and "multiply" in texts[2]
    assert len(lm.calls) == 6


@pytest.mark.parametrize("max_steps", [1, 3])
def test_max_steps_bound(max_steps: int) -> None:
    lm, _texts = scripted([("add", {"a": i, "b": 1}) for i in range(10)])
    m = CallTool("question -> answer: int", [add], max_steps=max_steps)
    out = run(m, lm)
    assert sum(kind(r) == "choose" for r in lm.calls) == max_steps
    assert len(lm.calls) == 2 * max_steps + 1 == m.estimated_calls(repairs=False)  # + the final extraction
    assert f"Observation {max_steps}:" in out.trajectory and f"Thought {max_steps + 1}" not in out.trajectory


def test_async_tools_tool_objects_and_mapping() -> None:
    async def lookup(city: str) -> dict:
        await asyncio.sleep(0)
        return {"city": city, "population": 3}

    tool = Tool(lookup, name="population", description="Population of a city in millions.")
    lm, texts = scripted([("population", {"city": "Rome"}), ("finish", None)], final="Answer: 3")
    out = run(CallTool("question -> answer: int", {"population": tool, "plus": add}), lm)
    assert out.answer == 3
    assert '{"city": "Rome", "population": 3}' in texts[2]
    assert "- population: Population of a city in millions." in texts[0] and "- plus: Add" in texts[0]


def test_tool_schema_from_signature() -> None:
    def search(query: str, k: int = 3, *, exact: bool = False) -> list[str]:
        return []

    t = Tool(search)
    assert t.parameters_schema["required"] == ["query"]
    assert t.parameters_schema["properties"]["k"] == {"type": "integer", "default": 3}
    assert t.validate({"query": "x", "k": "4"}) == ([], {"query": "x", "k": 4, "exact": False})


def test_demos_go_to_the_extraction_call() -> None:
    lm, texts = scripted([("finish", None)], final="Answer: 7")
    m = CallTool("question -> answer: int", [add], demos=[{"question": "1+1?", "answer": 2}])
    assert run(m, lm).answer == 7
    assert "1+1?" in texts[-1] and "1+1?" not in texts[0]


@pytest.mark.parametrize("make", [
    lambda: CallTool("question -> answer", []),
    lambda: CallTool("question -> answer", [add, add]),
    lambda: CallTool("question -> answer", [add], max_steps=0),
    lambda: CallTool("trajectory -> answer", [add]),
    lambda: CallTool("question -> answer", [Tool(add, name="finish")]),
    lambda: CallTool("question -> answer", [42]),
    lambda: CallTool("question -> answer", [add]).replace(max_steps=-2),
])
def test_bad_config(make: Callable[[], object]) -> None:
    with pytest.raises(DefinitionError, match="Fix:"):
        make()
