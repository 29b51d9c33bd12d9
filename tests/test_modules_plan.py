"""Plan: a Predict that decomposes a task into a bounded list of steps."""

from __future__ import annotations

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError
from lmgraph.modules import Plan
from lmgraph.modules.plan import PLAN_INSTRUCTIONS
from lmgraph.testing import FunctionLM, request_text


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
