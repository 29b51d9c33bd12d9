"""CallTool: the ReAct loop, tool errors fed back, argument validation, the step bound."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

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


def step(tool: str, args: dict | None = None, thought: str = "t") -> str:
    return json.dumps({"thought": thought, "tool": tool, "args": args or {}})


def is_step(req: lg.LMRequest) -> bool:
    return '"tool"' in request_text(req)


def scripted(steps: list[str], final: str = "Answer: 5") -> tuple[FunctionLM, list[str]]:
    """A fake that plays ``steps`` for step calls and ``final`` for the extraction call."""
    texts: list[str] = []
    it = iter(steps)

    def fn(req: lg.LMRequest) -> str:
        texts.append(request_text(req))
        return next(it) if is_step(req) else final

    return FunctionLM(fn), texts


def agent(module: CallTool) -> lg.Program:
    p = lg.Pipeline("agent")
    node = p.add(module, question=p.input("question"))
    p.output(answer=node.answer, trajectory=node.trajectory)
    return p.build()


def run(module: CallTool, lm: FunctionLM) -> lg.Prediction:
    return agent(module).run_sync(lg.RunContext(lm=lm, cache=False), question="What is 2 + 3?")


def test_add_then_finish() -> None:
    lm, texts = scripted([step("add", {"a": 2, "b": 3}), step("finish")])
    out = run(CallTool("question -> answer: int", [add]), lm)
    assert out.answer == 5
    assert len(lm.calls) == 3
    assert "Observation 1: 5" in texts[1] and "Observation 1: 5" in texts[2]
    assert "Action 1: add" in out.trajectory
    steps = out.trace.node("call_tool").meta["steps"]
    assert steps[0] == {"step": 1, "tool": "add", "args": {"a": 2, "b": 3}, "ok": True, "observation": "5"}
    # the step request lists the tool with its schema and docstring's first line only
    assert "- add: Add two integers." in texts[0] and "More text" not in texts[0]
    assert '"a": {"type": "integer"}' in texts[0]
    assert lm.calls[0].json_schema is not None  # step calls are JSON (grammar-constrained where possible)


def test_tool_exception_is_fed_back_not_raised() -> None:
    lm, texts = scripted([step("boom", {"x": "hi"}), step("finish")], final="Answer: 0")
    out = run(CallTool("question -> answer: int", [add, boom]), lm)
    assert out.answer == 0
    assert "kaboom: the service is down" in texts[1]
    assert "ValueError" in texts[1]
    assert out.trace.node("call_tool").meta["steps"][0]["ok"] is False


def test_bad_arguments_are_fed_back() -> None:
    lm, texts = scripted([step("add", {"a": "not a number"}), step("add", {"a": 1, "c": 2}),
                          step("add", {"a": 2, "b": 3}), step("finish")])
    out = run(CallTool("question -> answer: int", [add]), lm)
    assert out.answer == 5
    assert "bad arguments for add: a: Input should be a valid integer" in texts[1]
    assert "bad arguments for add: c: Extra inputs are not permitted" in texts[2]


def test_unknown_tool_is_fed_back() -> None:
    # an unknown tool fails the Literal check: the repair request shows the error; then the
    # loop goes on (a second unreadable reply becomes a note in the trajectory)
    lm, texts = scripted([step("multiply", {"a": 2}), step("multiply", {"a": 2}),
                          step("add", {"a": 2, "b": 3}), step("finish")])
    out = run(CallTool("question -> answer: int", [add]), lm)
    assert out.answer == 5
    assert "expected one of add, finish" in texts[1]
    assert "could not be read" in texts[2] and "multiply" in texts[2]
    assert len(lm.calls) == 5


@pytest.mark.parametrize("max_steps", [1, 3])
def test_max_steps_bound(max_steps: int) -> None:
    lm, texts = scripted([step("add", {"a": i, "b": 1}) for i in range(10)])
    out = run(CallTool("question -> answer: int", [add], max_steps=max_steps), lm)
    assert sum(is_step(r) for r in lm.calls) == max_steps
    assert len(lm.calls) == max_steps + 1  # + the final extraction
    assert f"Observation {max_steps}:" in out.trajectory and f"Thought {max_steps + 1}" not in out.trajectory


def test_async_tools_tool_objects_and_mapping() -> None:
    async def lookup(city: str) -> dict:
        await asyncio.sleep(0)
        return {"city": city, "population": 3}

    tool = Tool(lookup, name="population", description="Population of a city in millions.")
    lm, texts = scripted([step("population", {"city": "Rome"}), step("finish")], final="Answer: 3")
    out = run(CallTool("question -> answer: int", {"population": tool, "plus": add}), lm)
    assert out.answer == 3
    assert '{"city": "Rome", "population": 3}' in texts[1]
    assert "- population: Population of a city in millions." in texts[0] and "- plus: Add" in texts[0]


def test_tool_schema_from_signature() -> None:
    def search(query: str, k: int = 3, *, exact: bool = False) -> list[str]:
        return []

    t = Tool(search)
    assert t.parameters_schema["required"] == ["query"]
    assert t.parameters_schema["properties"]["k"] == {"type": "integer", "default": 3}
    assert t.validate({"query": "x", "k": "4"}) == ([], {"query": "x", "k": 4, "exact": False})


def test_demos_go_to_the_extraction_call() -> None:
    lm, texts = scripted([step("finish")], final="Answer: 7")
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
