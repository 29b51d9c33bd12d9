"""Tools are contained: time limits, output caps, every exception an observation, own threads,
process isolation, and cancellation that leaves nothing running into the next run."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import threading
import time
from pathlib import Path

import pytest

import lmgraph as lg
from lmgraph.errors import ConfigError, DefinitionError
from lmgraph.modules import CallTool, Tool
from lmgraph.modules.tool_process import RemoteToolError
from lmgraph.modules.tools import ToolError, ToolThreads, ToolTimeout, observation_text
from lmgraph.testing import FunctionLM, request_text

# ----------------------------------------------------------------------------- helpers

RELEASE = threading.Event()  # set at teardown: a hung sync tool's thread ends with the test


@pytest.fixture(autouse=True)
def _release_hung_threads():
    RELEASE.clear()
    yield
    RELEASE.set()


def kind(req: lg.LMRequest) -> str:
    text = request_text(req)
    if "Write the arguments for the tool" in text:
        return "fill"
    if "choose one tool by its name" in text:
        return "choose"
    return "answer"


def agent_lm(pick=lambda text: "tool", args: dict | None = None, latency_s: float = 0.0) -> FunctionLM:
    """Each row: choose ``pick(prompt)``, fill ``args``, then finish once an observation is in the
    trajectory, then answer 7. Stateless, so rows can run side by side."""
    def fn(req: lg.LMRequest) -> str:
        text = request_text(req)
        k = kind(req)
        if k == "choose":
            if "Observation 1:" in text:
                return json.dumps({"thought": "done", "tool": "finish"})
            return json.dumps({"thought": "call it", "tool": pick(text)})
        if k == "fill":
            return json.dumps({"args": args or {"x": "go"}})
        return "Answer: 7"
    return FunctionLM(fn, latency_s=latency_s)


def agent(module: CallTool) -> lg.Program:
    p = lg.Pipeline("agent")
    node = p.add(module, name="agent", question=p.input("question"))
    p.output(answer=node.answer, trajectory=node.trajectory)
    return p.build()


def ctx(lm: FunctionLM) -> lg.RunContext:
    return lg.RunContext(lm=lm, cache=False)


ROWS = [{"question": f"q{i}"} for i in range(6)]


def step(result: lg.Result) -> dict:
    return result.trace.node("agent").meta["steps"][0]


# module level: importable by name, so they can run in a subprocess too
def uses_argparse(x: str) -> str:
    """Parses its argument as a command line."""
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--count", type=int, required=True)
    return str(parser.parse_args([x]).count)


class Weird(BaseException):
    pass


def raises_base_exception(x: str) -> str:
    raise Weird("not an Exception subclass")


def hangs(x: str) -> str:
    """Hangs for a minute."""
    RELEASE.wait(60)
    return "late"


async def hangs_async(x: str) -> str:
    await asyncio.sleep(60)
    return "late"


def sleeps_in_process(path: str) -> str:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)
    return "late"


def exits_in_process(x: str) -> str:
    raise SystemExit(3)


def allocates(mb: int) -> int:
    block = bytearray(mb * 1024 * 1024)
    return len(block)


def doubled(n: int) -> int:
    return 2 * n


# ----------------------------------------------------------------------------- exceptions of every kind


@pytest.mark.parametrize("fn", [uses_argparse, raises_base_exception])
def test_a_tool_raising_systemexit_or_a_base_exception_neither_ends_nor_empties_a_batch(capsys, fn) -> None:
    program = agent(CallTool("question -> answer: int", [fn]))
    lm = agent_lm(pick=lambda text: fn.__name__)
    results = program.batch_sync(ROWS, ctx=ctx(lm), concurrency=6)
    assert len(results) == 6 and all(r.ok for r in results), results
    name = "SystemExit" if fn is uses_argparse else "Weird"
    for r in results:
        assert r.outputs.answer == 7
        assert f"Observation 1: Error: {fn.__name__} raised {name}" in r.outputs.trajectory
        s = step(r)
        assert s["ok"] is False and s["error"].startswith(f"{name}:")
    assert len(lm.calls) == 6 * 4  # choose, fill, choose (finish), answer: every row went on


def test_an_async_tool_raising_systemexit_is_an_observation() -> None:
    async def bail(x: str) -> str:
        await asyncio.sleep(0)
        raise SystemExit("bye")

    results = agent(CallTool("question -> answer: int", [bail])).batch_sync(
        ROWS, ctx=ctx(agent_lm(pick=lambda t: "bail")), concurrency=6)
    assert all(r.ok for r in results)
    assert all(step(r)["error"] == "SystemExit: bye" for r in results)


def test_on_tool_error_fail_fails_the_row_with_a_tool_error_not_the_batch() -> None:
    program = agent(CallTool("question -> answer: int", [uses_argparse], on_tool_error="fail"))
    results = program.batch_sync(ROWS, ctx=ctx(agent_lm(pick=lambda t: "uses_argparse")), concurrency=6)
    assert len(results) == 6 and not any(r.ok for r in results)
    err = results[0].error
    assert isinstance(err, ToolError) and err.tool == "uses_argparse" and err.error_type == "SystemExit"
    assert "node 'agent'" in str(err) and isinstance(err.__cause__, SystemExit)
    with pytest.raises(ConfigError, match="on_tool_error"):
        CallTool("question -> answer: int", [uses_argparse], on_tool_error="ignore")


def test_keyboard_interrupt_from_a_tool_is_not_swallowed() -> None:
    def interrupt(x: str) -> str:
        raise KeyboardInterrupt

    program = agent(CallTool("question -> answer: int", [interrupt]))
    with pytest.raises(KeyboardInterrupt):
        program.run_sync(ctx(agent_lm(pick=lambda t: "interrupt")), question="q")


# ----------------------------------------------------------------------------- time limits


@pytest.mark.parametrize("fn", [hangs, hangs_async])
def test_a_60s_tool_with_a_1s_limit_does_not_stall_a_6_row_batch(fn) -> None:
    program = agent(CallTool("question -> answer: int", [Tool(fn, timeout=1)]))
    t0 = time.monotonic()
    results = program.batch_sync(ROWS, ctx=ctx(agent_lm(pick=lambda t: fn.__name__)), concurrency=6)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, elapsed  # the limit (1 s) plus scheduling, not 60 s
    assert all(r.ok for r in results) and all(r.outputs.answer == 7 for r in results)
    for r in results:
        s = step(r)
        assert s["ok"] is False and "did not finish within 1 s" in s["error"]
        assert f"Observation 1: Error: tool {fn.__name__!r} did not finish within 1 s" in r.outputs.trajectory


def test_the_wait_for_a_free_thread_counts_in_the_limit_and_threads_stay_bounded() -> None:
    module = CallTool("question -> answer: int", [hangs], tool_timeout=1, tool_threads=2)
    t0 = time.monotonic()
    results = agent(module).batch_sync(ROWS, ctx=ctx(agent_lm(pick=lambda t: "hangs")), concurrency=6)
    assert time.monotonic() - t0 < 5
    assert all("did not finish within 1 s" in step(r)["error"] for r in results)
    assert module.tool_threads.busy == 2  # two hung calls hold their slots; the other four never started
    RELEASE.set()
    deadline = time.monotonic() + 5
    while module.tool_threads.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert module.tool_threads.busy == 0  # the slots come back when the threads end


def test_a_callers_wait_returns_at_its_own_timeout_and_nothing_waits_for_the_thread() -> None:
    # the probe: asyncio.run(wait_for(run, 0.5)) took the tool's full time (asyncio.run
    # waited for the default executor's thread); tool threads are daemon threads of their own
    program = agent(CallTool("question -> answer: int", [hangs], tool_timeout=None))

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(program.run(ctx(agent_lm(pick=lambda t: "hangs")), question="q"), 0.5)

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < 3


def test_a_tools_own_limit_overrides_the_nodes() -> None:
    module = CallTool("question -> answer: int", {"slow": Tool(hangs, timeout=0.2), "fast": hangs},
                      tool_timeout=30)
    assert module.limits(module.tools["slow"])[0] == 0.2 and module.limits(module.tools["fast"])[0] == 30
    t0 = time.monotonic()
    out = agent(module).run_sync(ctx(agent_lm(pick=lambda t: "slow")), question="q")
    assert time.monotonic() - t0 < 3 and "did not finish within 0.2 s" in out.trajectory


def test_limits_are_checked_and_saved() -> None:
    for bad in (0, -1, "30", float("nan"), True):
        with pytest.raises(ConfigError, match="timeout"):
            Tool(doubled, timeout=bad)
        with pytest.raises(ConfigError, match="tool_timeout"):
            CallTool("question -> answer: int", [doubled], tool_timeout=bad)
    with pytest.raises(ConfigError, match="max_output_chars"):
        CallTool("question -> answer: int", [doubled], max_output_chars=0)
    with pytest.raises(ConfigError, match="tool_threads"):
        CallTool("question -> answer: int", [doubled], tool_threads=0)
    default = CallTool("question -> answer: int", [doubled])
    assert not {"tool_timeout", "max_output_chars", "tool_threads", "on_tool_error"} & default.to_dict().keys()
    module = CallTool("question -> answer: int", [doubled], tool_timeout=math.inf, max_output_chars=500,
                      tool_threads=3, on_tool_error="fail")
    program = agent(module)
    back = lg.Program.from_dict(program.to_dict(), resources={"doubled": doubled})
    got = back.module("agent")
    assert (got.tool_timeout, got.max_output_chars, got.tool_threads.max_threads, got.on_tool_error) == \
        (math.inf, 500, 3, "fail")
    assert back == program


# ----------------------------------------------------------------------------- output size


def test_output_is_capped_with_a_marker() -> None:
    def big(x: str) -> str:
        return "y" * 10_000

    out = agent(CallTool("question -> answer: int", [big], max_output_chars=100)).run_sync(
        ctx(agent_lm(pick=lambda t: "big")), question="q")
    assert "y" * 100 + " ...[truncated: 100 of 10000 characters shown]" in out.trajectory
    assert "y" * 101 not in out.trajectory
    out = agent(CallTool("question -> answer: int", [Tool(big, max_output_chars=10)])).run_sync(
        ctx(agent_lm(pick=lambda t: "big")), question="q")
    assert "y" * 10 + " ...[truncated: 10 of 10000" in out.trajectory


def test_error_messages_are_capped_and_odd_results_are_shown() -> None:
    def loud(x: str) -> str:
        raise ValueError("z" * 5000)

    module = CallTool("question -> answer: int", [loud], max_output_chars=50)
    out = agent(module).run_sync(ctx(agent_lm(pick=lambda t: "loud")), question="q")
    s = out.trace.node("agent").meta["steps"][0]
    assert len(s["error"]) < 120 and "truncated" in s["error"] and "z" * 60 not in out.trajectory
    circular: list = []
    circular.append(circular)
    assert observation_text(circular) == "[[...]]"  # repr, not a crash

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert observation_text(Unprintable()).startswith("<unprintable Unprintable")


# ----------------------------------------------------------------------------- process isolation


def test_process_isolation_returns_results_and_reports_exits() -> None:
    tool = Tool(doubled, isolation="process")
    assert asyncio.run(tool.run({"n": 21}, timeout=60)) == 42
    with pytest.raises(RemoteToolError) as ei:
        asyncio.run(Tool(exits_in_process, isolation="process").run({"x": "a"}, timeout=60))
    assert ei.value.type_name == "SystemExit" and str(ei.value) == "3"


def test_process_isolation_kills_the_process_at_the_time_limit(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    tool = Tool(sleeps_in_process, isolation="process")
    t0 = time.monotonic()
    with pytest.raises(ToolTimeout):
        asyncio.run(tool.run({"path": str(pid_file)}, timeout=5))
    assert time.monotonic() - t0 < 12
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


def test_process_isolation_memory_limit() -> None:
    tool = Tool(allocates, isolation="process", memory_limit_mb=300)
    if os.name != "posix":
        pytest.skip("rlimits are POSIX")
    with pytest.raises(RemoteToolError) as ei:
        asyncio.run(tool.run({"mb": 2048}, timeout=60))
    assert ei.value.type_name == "MemoryError"
    assert asyncio.run(tool.run({"mb": 10}, timeout=60)) == 10 * 1024 * 1024


def test_process_isolation_needs_an_importable_function() -> None:
    with pytest.raises(DefinitionError, match="isolation='process'"):
        Tool(lambda x: x, name="anon", isolation="process")
    with pytest.raises(ConfigError, match="memory_limit_mb needs isolation='process'"):
        Tool(doubled, memory_limit_mb=100)
    with pytest.raises(ConfigError, match="isolation"):
        Tool(doubled, isolation="container")


# ----------------------------------------------------------------------------- cancellation


def interrupt_tool(x: str) -> str:
    raise KeyboardInterrupt


async def slow_tool(x: str) -> str:
    await asyncio.sleep(0.05)
    return "ok"


def _two_tool_program() -> lg.Program:
    return agent(CallTool("question -> answer: int", [interrupt_tool, slow_tool]))


def _pick(text: str) -> str:
    return "interrupt_tool" if "PLEASE-INTERRUPT" in text else "slow_tool"


def test_after_an_interrupted_batch_the_next_run_makes_exactly_its_own_calls() -> None:
    program = _two_tool_program()
    lm = agent_lm(pick=_pick, latency_s=0.02)
    rows = [{"question": "PLEASE-INTERRUPT"}] + [{"question": f"go {i}"} for i in range(5)]
    with pytest.raises(KeyboardInterrupt):
        program.batch_sync(rows, ctx=ctx(lm), concurrency=6)
    before = len(lm.calls)
    assert before < 6 * 4  # the batch was cut short
    time.sleep(0.2)
    assert len(lm.calls) == before  # nothing of the aborted batch runs on in the background
    out = program.run_sync(ctx(lm), question="go again")
    assert out.answer == 7
    assert len(lm.calls) - before == 4  # choose, fill, choose (finish), answer: its own calls only
    assert all("go again" in request_text(r) for r in lm.calls[before:])


def test_after_a_cancelled_async_batch_the_next_run_makes_exactly_its_own_calls() -> None:
    program = agent(CallTool("question -> answer: int", [slow_tool]))
    lm = agent_lm(pick=lambda t: "slow_tool", latency_s=0.02)

    async def main() -> tuple[int, int]:
        task = asyncio.create_task(program.batch(ROWS, ctx=ctx(lm), concurrency=6))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        before = len(lm.calls)
        await asyncio.sleep(0.2)
        assert len(lm.calls) == before
        await program.run(ctx(lm), question="fresh")
        return before, len(lm.calls)

    before, after = asyncio.run(main())
    assert before < 6 * 4 and after - before == 4
    assert all("fresh" in request_text(r) for r in lm.calls[before:])


def test_cancelling_a_run_kills_its_tool_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    tool = Tool(sleeps_in_process, isolation="process")

    async def main() -> None:
        task = asyncio.create_task(tool.run({"path": str(pid_file)}, timeout=None))
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


# ----------------------------------------------------------------------------- threads


def test_tool_threads_are_per_node_and_copies_get_their_own() -> None:
    import copy

    a = CallTool("question -> answer: int", [doubled])
    b = CallTool("question -> answer: int", [doubled])
    assert a.tool_threads is not b.tool_threads
    program = agent(a)
    clone = copy.deepcopy(program)
    assert clone.module("agent").tool_threads is not a.tool_threads
    assert isinstance(clone.module("agent").tool_threads, ToolThreads)


def test_sync_tools_do_not_use_the_loops_default_executor() -> None:
    seen: list[str] = []

    def who(x: str) -> str:
        seen.append(threading.current_thread().name)
        return "me"

    agent(CallTool("question -> answer: int", [who])).run_sync(ctx(agent_lm(pick=lambda t: "who")), question="q")
    assert seen == ["lmgraph-tool-who"]
