"""RayExecutor on a real local Ray cluster (2 CPUs): the same results, order, spend and compiled
artifact as a local run; one global budget; a worker killed mid-batch loses no row."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lmgraph[ray]')")

import lmgraph as lg  # noqa: E402
from lmgraph.cache import DiskCache  # noqa: E402
from lmgraph.evaluation import evaluate_sync, label_accuracy  # noqa: E402
from lmgraph.executors import LocalExecutor, RayExecutor  # noqa: E402
from lmgraph.lm.base import LMRequest  # noqa: E402
from lmgraph.optimizers import BootstrapRandomSearch, save_artifact  # noqa: E402
from lmgraph.testing import FunctionLM, request_text  # noqa: E402

from helpers import sentiment_fn, sentiment_program, sentiment_rows  # noqa: E402

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def cluster():
    # the workers import this directory's helpers (the fake models' functions) like the driver does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([TESTS, *sys.path])}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(cluster):
    ex = RayExecutor(workers=2, max_concurrency=4)
    yield ex
    ex.close()


def answer_fn(req: LMRequest) -> str:
    """Deterministic: the answer depends on the request only (any worker gives the same)."""
    text = request_text(req)
    if "`critique`" in text or "Critique" in text.split("\n")[0]:
        return "Critique: " + str(len(text) % 5)
    return "Answer: " + str(sum(map(ord, text)) % 97)


def fan_program() -> lg.Program:
    p = lg.Pipeline("fan")
    q = p.input("question")
    a = p.add(lg.Predict("question -> answer"), name="a", question=q)
    b = p.add(lg.Predict("question -> answer", instructions="Answer again."), name="b", question=q)
    c = p.add(lg.Predict("first, second -> answer: int"), name="c", first=a.answer, second=b.answer)
    p.output(first=a.answer, answer=c.answer)
    return p.build()


def rows(n: int) -> list[dict[str, Any]]:
    return [{"question": f"question number {i}", "id": i} for i in range(n)]


def same_results(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.index == y.index and x.ok == y.ok
        if x.ok:
            assert dict(x.outputs) == dict(y.outputs)
            xt, yt = x.trace.to_dict(), y.trace.to_dict()
            for t in (xt, yt):  # timings differ run to run
                t.pop("started"), t.pop("latency_s")
                for n in t["nodes"]:
                    n.pop("latency_s"), n.pop("started", None)
                    for c in n["calls"]:
                        c.pop("latency_s")
            assert xt == yt
        else:
            assert type(x.error) is type(y.error) and str(x.error) == str(y.error)


def test_lazy_import_and_local_default():
    import subprocess

    out = subprocess.run([sys.executable, "-c", "import sys, lmgraph, lmgraph.executors; print('ray' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    lm = FunctionLM(answer_fn)
    prog = fan_program()
    a = prog.batch_sync(rows(6), ctx=lg.RunContext(lm=lm, cache=False))
    b = prog.batch_sync(rows(6), ctx=lg.RunContext(lm=lm, cache=False), executor=LocalExecutor())
    same_results(a, b)


def test_batch_matches_local_outputs_order_traces_and_usage(executor):
    prog = fan_program()
    data = rows(24)
    local_ctx = lg.RunContext(lm=FunctionLM(answer_fn), cache=False, budget=lg.Budget(max_calls=1000))
    local = prog.batch_sync(data, ctx=local_ctx)
    ray_ctx = lg.RunContext(lm=FunctionLM(answer_fn), cache=False, budget=lg.Budget(max_calls=1000),
                            executor=executor)
    seen: list[int] = []
    remote = prog.batch_sync(data, ctx=ray_ctx, on_result=lambda r: seen.append(r.index))
    same_results(local, remote)
    assert sorted(seen) == list(range(24))  # each row reported once
    assert ray_ctx.budget_meter.snapshot() == local_ctx.budget_meter.snapshot()
    assert ray_ctx.usage.by_node() == local_ctx.usage.by_node()
    # the workers are separate processes holding their own model
    info = asyncio.run(executor.worker_info(ray_ctx))
    assert len({i["pid"] for i in info}) == 2 and os.getpid() not in {i["pid"] for i in info}
    assert all(i["identities"][None] == FunctionLM(answer_fn).identity() for i in info)


def test_failures_are_recorded_like_local(executor):
    def picky(req: LMRequest) -> str:
        if "number 7" in request_text(req):
            raise RuntimeError("backend down for row 7")
        return "Answer: 3"

    p = lg.Pipeline("picky")
    n = p.add(lg.Predict("question -> answer: int"), name="n", question=p.input("question"))
    p.output(answer=n.answer)
    prog = p.build()
    local = prog.batch_sync(rows(10), ctx=lg.RunContext(lm=FunctionLM(picky), cache=False, retries=1))
    remote = prog.batch_sync(rows(10), ctx=lg.RunContext(lm=FunctionLM(picky), cache=False, retries=1,
                                                         executor=executor))
    assert not remote[7].ok and remote[7].error.trace is not None
    same_results(local, remote)


def test_evaluate_matches_local(executor):
    prog, data = sentiment_program(), sentiment_rows(16, period=3)
    local = evaluate_sync(prog, data, label_accuracy(), ctx=lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False))
    remote = evaluate_sync(prog, data, label_accuracy(), ctx=lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False),
                           executor=executor)
    assert remote.scores == local.scores and remote.statuses == local.statuses
    assert remote.usage == local.usage and remote.mean == local.mean


def test_usage_meter_matches_local_without_cache_or_budget(executor):
    # nothing to admit: the workers call their models directly, the driver replays the usage
    prog, data = fan_program(), rows(10)
    local_ctx = lg.RunContext(lm=FunctionLM(answer_fn), cache=False)
    prog.batch_sync(data, ctx=local_ctx)
    ray_ctx = lg.RunContext(lm=FunctionLM(answer_fn), cache=False, executor=executor)
    prog.batch_sync(data, ctx=ray_ctx)
    assert ray_ctx.usage.by_node() == local_ctx.usage.by_node() and ray_ctx.usage.total()["calls"] == 30


def test_budget_is_global_across_workers(executor, tmp_path):
    log = tmp_path / "backend-calls.log"

    def counted(req: LMRequest) -> str:  # runs in the workers: counts real backend calls in a file
        with open(log, "a") as f:
            f.write("x\n")
        return "Answer: 1"

    p = lg.Pipeline("one")
    n = p.add(lg.Predict("question -> answer"), name="n", question=p.input("question"))
    p.output(answer=n.answer)
    ctx = lg.RunContext(lm=FunctionLM(counted, latency_s=0.05), cache=False, budget=lg.Budget(max_calls=7),
                        executor=executor)
    res = p.build().batch_sync(rows(30), ctx=ctx)
    made = len(log.read_text().splitlines())
    assert made == 7 and ctx.budget_meter.calls == 7  # 8 rows in flight on 2 workers, never an 8th call
    assert sum(r.ok for r in res) == 7
    assert all(isinstance(r.error, lg.BudgetExceeded) for r in res if not r.ok)


def test_disk_cache_is_shared_and_hits_replay_from_the_driver(executor, tmp_path):
    cache = DiskCache(tmp_path / "cache")
    prog, data = fan_program(), rows(12)
    first = FunctionLM(answer_fn)
    remote = prog.batch_sync(data, ctx=lg.RunContext(lm=first, cache=cache, executor=executor))
    local_lm = FunctionLM(answer_fn)
    local = prog.batch_sync(data, ctx=lg.RunContext(lm=local_lm, cache=cache))
    assert local_lm.calls == []  # every call was written by the Ray run
    assert sum(c.response.cached for r in local for n in r.trace.nodes for c in n.calls) == 36
    assert [dict(r.outputs) for r in local] == [dict(r.outputs) for r in remote]
    again = prog.batch_sync(data, ctx=lg.RunContext(lm=FunctionLM(answer_fn), cache=cache, executor=executor))
    assert all(c.response.cached for r in again for n in r.trace.nodes for c in n.calls)


def test_compile_writes_the_same_artifact_bytes(cluster, tmp_path):
    data = sentiment_rows(30, period=3)

    def run(path: Path, executor: Any) -> None:
        opt = BootstrapRandomSearch(2, num_candidates=3)
        new, rep = opt.optimize(sentiment_program(), data, label_accuracy(), seed=0,
                                ctx=lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False, executor=executor))
        save_artifact(path, new, rep)

    run(tmp_path / "local.json", None)
    with RayExecutor(workers=2, max_concurrency=4) as ex:
        run(tmp_path / "ray.json", ex)
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "local.json").read_bytes()


def test_the_readme_compile_example_writes_the_same_artifact_on_ray(cluster, tmp_path):
    # README "Compiling": lg.compile(program, train + val, label_accuracy(), budget=600, seed=0)
    from test_readme import _trec_program, fake_lm

    from lmgraph.evaluation.datasets import load_trec, split

    train, val = split(load_trec("train"), [16, 8], seed=0)
    paths = []
    for name, ex in (("local", None), ("ray", RayExecutor(workers=2, max_concurrency=4))):
        ctx = lg.RunContext(lm=fake_lm(), cache=False, executor=ex)
        try:
            compiled, report = lg.compile(_trec_program(), train + val, label_accuracy(), budget=600, seed=0,
                                          ctx=ctx)
        finally:
            if ex is not None:
                ex.close()
        paths.append(save_artifact(tmp_path / f"{name}.json", compiled, report))
        assert report.spent["calls"] <= 600
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_a_killed_worker_loses_no_row_and_duplicates_none(cluster):
    prog, data = fan_program(), rows(24)
    local = prog.batch_sync(data, ctx=lg.RunContext(lm=FunctionLM(answer_fn), cache=False))
    ex = RayExecutor(workers=2, max_concurrency=3)
    ctx = lg.RunContext(lm=FunctionLM(answer_fn, latency_s=0.15), cache=False, executor=ex,
                        budget=lg.Budget(max_calls=10_000))
    try:
        pids = [i["pid"] for i in asyncio.run(ex.worker_info(ctx))]
        finished: list[int] = []

        def on_result(r: Any) -> None:
            finished.append(r.index)
            if len(finished) == 4:  # mid-batch: a worker's process is killed with rows in flight
                os.kill(pids[0], signal.SIGKILL)

        t0 = time.perf_counter()
        remote = prog.batch_sync(data, ctx=ctx, on_result=on_result)
        assert time.perf_counter() - t0 < 120
    finally:
        ex.close()
    assert sorted(finished) == list(range(24))  # every row finished once: none lost, none twice
    assert ex.rows_rerun >= 1
    same_results(local, remote)
    assert all(r.ok for r in remote)


def test_a_model_the_workers_cannot_build_is_a_usage_error(cluster):
    from lmgraph.errors import UsageError

    class Unloadable(FunctionLM):  # defined here: its class pickles by value and fails to load
        def __setstate__(self, state: dict) -> None:
            raise RuntimeError("this model cannot be loaded here")

    ex = RayExecutor(workers=1)
    try:
        with pytest.raises(UsageError, match="could not build the context's model"):
            fan_program().batch_sync(rows(2), ctx=lg.RunContext(lm=Unloadable(answer_fn), cache=False, executor=ex))
    finally:
        ex.close()


@pytest.mark.integration
def test_embedded_model_matches_local(cluster):
    from lmgraph.lm.llamacpp import LlamaCppLM

    p = lg.Pipeline("qa")
    n = p.add(lg.Predict("question -> answer", max_tokens=16), name="n", question=p.input("question"))
    p.output(answer=n.answer)
    prog = p.build()
    data = [{"question": q} for q in ("What is 2+2?", "Name a colour.", "Capital of France?")]
    lm = LlamaCppLM(n_instances=1, n_threads=1)
    local = prog.batch_sync(data, ctx=lg.RunContext(lm=lm, cache=False))
    with RayExecutor(workers=2, max_concurrency=1, num_cpus=1) as ex:
        remote = prog.batch_sync(data, ctx=lg.RunContext(lm=lm, cache=False, executor=ex))
    assert [dict(r.outputs) for r in remote] == [dict(r.outputs) for r in local]
    assert all(r.ok for r in remote)
