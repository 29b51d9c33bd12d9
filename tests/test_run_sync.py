"""run_sync / batch_sync: they work inside a running event loop (a notebook), and every task a call
started is cancelled and awaited before it returns or raises -- nothing leaks into the next run."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings

import pytest

import lmgraph as lg
from lmgraph.pipeline import program as program_mod
from lmgraph.testing import FunctionLM


def qa() -> lg.Program:
    p = lg.Pipeline("qa")
    n = p.add(lg.Predict("question -> answer"), name="n", question=p.input("question"))
    p.output(answer=n.answer)
    return p.build()


def ctx(lm: FunctionLM) -> lg.RunContext:
    return lg.RunContext(lm=lm, cache=False)


def echo(req: lg.LMRequest) -> str:
    return "Answer: " + req.messages[-1].content.removeprefix("Question: ")


def test_run_sync_and_batch_sync_inside_a_running_loop() -> None:
    prog = qa()
    caller = threading.get_ident()

    async def main() -> tuple[str, list[str]]:
        one = prog.run_sync(ctx(FunctionLM(echo)), question="x")
        rows = prog.batch_sync([{"question": q} for q in "abc"], ctx=ctx(FunctionLM(echo)), concurrency=2)
        assert threading.get_ident() == caller  # the caller's loop thread waited for the worker
        return one.answer, [r.outputs.answer for r in rows]

    assert asyncio.run(main()) == ("x", ["a", "b", "c"])


def test_run_sync_inside_a_running_loop_raises_the_runs_error() -> None:
    prog = qa()

    def boom(req: lg.LMRequest) -> str:
        raise lg.LMError("provider down")

    async def main() -> None:
        prog.run_sync(lg.RunContext(lm=FunctionLM(boom), cache=False, retries=1), question="x")

    with pytest.raises(lg.LMError, match="provider down"):
        asyncio.run(main())


def aborting_lm(exc: type[BaseException]) -> FunctionLM:
    """Answers every row after a short wait; the row 'boom' raises ``exc`` (a tool's SystemExit, a
    Ctrl-C), which stops the event loop before the batch can cancel its other workers."""

    def fn(req: lg.LMRequest) -> str:
        if req.messages[-1].content.endswith("boom"):
            raise exc()
        return echo(req)

    return FunctionLM(fn, latency_s=0.02)


ROWS = [*({"question": f"q{i}"} for i in range(3)), {"question": "boom"},
        *({"question": f"q{i}"} for i in range(3, 30))]


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_an_aborted_batch_makes_no_more_calls_after_batch_sync_raises(exc) -> None:  # noqa: ANN001
    prog = qa()
    lm = aborting_lm(exc)
    with pytest.raises(exc):
        prog.batch_sync(ROWS, ctx=ctx(lm), concurrency=4)
    made = len(lm.calls)
    assert made < len(ROWS)
    loop = program_mod._loops.loop
    assert not [t for t in asyncio.all_tasks(loop) if not t.done()]  # nothing left on the loop
    # the next, unrelated run makes exactly its own calls; the aborted batch's workers stay dead
    other = FunctionLM(echo)
    assert prog.run_sync(ctx(other), question="next").answer == "next"
    time.sleep(0.1)
    assert prog.batch_sync([{"question": "a"}, {"question": "b"}], ctx=ctx(other))[1].outputs.answer == "b"
    assert len(lm.calls) == made and len(other.calls) == 3


def test_an_aborted_batch_inside_a_running_loop_leaves_nothing_running() -> None:
    prog = qa()
    lm = aborting_lm(SystemExit)

    async def main() -> int:
        with pytest.raises(SystemExit):
            prog.batch_sync(ROWS, ctx=ctx(lm), concurrency=4)
        made = len(lm.calls)
        await asyncio.sleep(0.1)
        assert prog.run_sync(ctx(FunctionLM(echo)), question="next").answer == "next"
        return made

    made = asyncio.run(main())
    assert len(lm.calls) == made < len(ROWS)
    assert not [t for t in threading.enumerate() if t.name == "lmgraph-run-sync"]


def test_a_failed_run_leaves_no_tasks_behind() -> None:
    p = lg.Pipeline("fan")
    q = p.input("question")
    a = p.add(lg.Predict("question -> answer"), name="a", question=q)
    b = p.add(lg.Predict("question -> answer"), name="b", question=q)
    p.output(x=a.answer, y=b.answer)
    prog = p.build()
    lm = aborting_lm(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        prog.run_sync(ctx(lm), question="boom")
    assert not [t for t in asyncio.all_tasks(program_mod._loops.loop) if not t.done()]
    assert prog.run_sync(ctx(FunctionLM(echo)), question="ok").x == "ok"


def test_ctrl_c_while_run_sync_waits_inside_a_loop_stops_the_worker_run() -> None:
    """A notebook's interrupt reaches the waiting caller at once, and the worker's batch stops."""
    import _thread
    import signal

    # The precondition this test relies on: Ctrl-C raises KeyboardInterrupt in the main thread. A pytest
    # started as a background job (`cmd &` in a non-interactive shell) inherits SIGINT *ignored*, and then
    # interrupt_main() does nothing -- the batch ran to its end ("DID NOT RAISE"). Set Python's default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    prog = qa()
    lm = FunctionLM(echo, latency_s=0.3)
    rows = [{"question": f"q{i}"} for i in range(40)]  # >= 6 s of model time: the interrupt lands mid-batch

    async def main() -> float:
        threading.Timer(0.4, _thread.interrupt_main).start()
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            prog.batch_sync(rows, ctx=ctx(lm), concurrency=2)
        return time.perf_counter() - t0

    loop = asyncio.new_event_loop()  # a plain running loop (asyncio.run would turn SIGINT into a cancel)
    try:
        waited = loop.run_until_complete(main())
    finally:
        loop.close()
        signal.signal(signal.SIGINT, previous)
    made = len(lm.calls)
    time.sleep(0.5)
    assert waited < 3 and made < len(rows) and len(lm.calls) == made
    assert not [t for t in threading.enumerate() if t.name == "lmgraph-run-sync"]


@pytest.mark.parametrize("started", [True, False])
def test_ctrl_c_while_the_worker_starts_stops_it_or_never_runs_it(monkeypatch, started):
    """A Ctrl-C that lands inside Thread.start() -- after the worker thread exists, or before --
    is raised to the caller, and no batch goes on in the background."""
    prog = qa()
    lm = FunctionLM(echo, latency_s=0.3)
    rows = [{"question": f"q{i}"} for i in range(40)]
    real_start = threading.Thread.start

    def start(self):
        if self.name == "lmgraph-run-sync":
            if started:
                real_start(self)
            raise KeyboardInterrupt
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)

    async def main() -> None:
        with pytest.raises(KeyboardInterrupt):
            prog.batch_sync(rows, ctx=ctx(lm), concurrency=2)

    loop = asyncio.new_event_loop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            t0 = time.perf_counter()
            loop.run_until_complete(main())
            waited = time.perf_counter() - t0
        finally:
            loop.close()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]  # a batch never started is closed
    made = len(lm.calls)
    time.sleep(0.7)
    assert waited < 4 and made < len(rows) and len(lm.calls) == made
    assert not [t for t in threading.enumerate() if t.name == "lmgraph-run-sync"]
