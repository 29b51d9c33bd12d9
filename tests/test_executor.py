"""The async executor: scheduling, typed outputs, traces, repair, batches, cancellation, budget, cache."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pydantic
import pytest
import tenacity  # noqa: F401  - imported here so the first timed run does not pay for it

import lmgraph as lg
from lmgraph.cache import MemoryCache
from lmgraph.errors import BudgetExceeded, DefinitionError, InputError, OutputParseError, RunError
from lmgraph.lm.base import LMRequest, LMResponse, Usage
from lmgraph.modules.base import Module
from lmgraph.signatures import Signature
from lmgraph.testing import FunctionLM, ScriptedLM, request_text


def ctx(lm: Any, **kw: Any) -> lg.RunContext:
    kw.setdefault("cache", False)
    return lg.RunContext(lm=lm, **kw)


def last_user(req: LMRequest) -> str:
    return req.prompt if req.prompt is not None else req.messages[-1].content


def fan_out(n: int = 4) -> lg.Program:
    p = lg.Pipeline("fan")
    q = p.input("question")
    hs = [p.add(lg.Predict("question -> answer"), name=f"n{i}", question=q) for i in range(n)]
    p.output(**{f"a{i}": h.answer for i, h in enumerate(hs)})
    return p.build()


def chain3() -> lg.Program:
    p = lg.Pipeline("chain")
    q = p.input("question")
    a = p.add(lg.Predict("question -> draft"), name="a", question=q)
    b = p.add(lg.Predict("draft -> critique"), name="b", draft=a.draft)
    c = p.add(lg.Predict("draft, critique -> final"), name="c", draft=a.draft, critique=b.critique)
    p.output(final=c.final)
    return p.build()


def chain_answers(req: LMRequest) -> str:
    text = request_text(req)
    if "-> final" in text or "`final`" in text:
        return "Final: done"
    if "`critique`" in text:
        return "Critique: too short"
    return "Draft: first draft"


class Tracking:
    """An LM that records how many calls are in flight and which were cancelled."""

    def __init__(self, latency_s: float = 0.05, text: str = "Answer: ok") -> None:
        self.latency_s = latency_s
        self.text = text
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = 0
        self.finished = 0
        self.cancelled = 0

    def identity(self) -> dict[str, Any]:
        return {"backend": "tracking"}

    async def complete(self, request: LMRequest) -> LMResponse:
        self.started += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        self.finished += 1
        return LMResponse(text=self.text, usage=Usage(prompt_tokens=3, completion_tokens=2))


# --------------------------------------------------------------------------- scheduling

def test_parallel_branches_overlap():
    lm = FunctionLM(lambda r: "Answer: x", latency_s=0.1)
    prog = fan_out(4)
    assert not prog.is_chain
    t0 = time.perf_counter()
    out = prog.run_sync(ctx(lm), question="q")
    wall = time.perf_counter() - t0
    assert wall < 0.25, wall
    assert dict(out) == {"a0": "x", "a1": "x", "a2": "x", "a3": "x"}
    assert len(lm.calls) == 4
    starts = sorted(n.started for n in out.trace.nodes)
    assert starts[-1] - starts[0] < 0.05  # all four started together


def test_max_parallel_nodes_serialises():
    lm = FunctionLM(lambda r: "Answer: x", latency_s=0.1)
    t0 = time.perf_counter()
    fan_out(4).run_sync(ctx(lm, max_parallel_nodes=1), question="q")
    assert time.perf_counter() - t0 >= 0.4


def test_max_concurrency_limits_model_calls():
    lm = Tracking(latency_s=0.03)
    fan_out(6).run_sync(ctx(lm, max_concurrency=2), question="q")
    assert lm.max_in_flight == 2 and lm.finished == 6


def test_chain_passes_values_along():
    lm = FunctionLM(chain_answers)
    prog = chain3()
    out = prog.run_sync(ctx(lm), question="Why is the sky blue?")
    assert out.final == "done" and dict(out) == {"final": "done"}
    assert [n.node for n in out.trace.nodes] == ["a", "b", "c"]
    assert out.trace.node("b").inputs == {"draft": "first draft"}
    assert out.trace.node("c").inputs == {"draft": "first draft", "critique": "too short"}
    assert "Draft: first draft" in last_user(lm.calls[1])
    assert "Critique: too short" in last_user(lm.calls[2])


def test_diamond_runs_join_after_both_branches():
    p = lg.Pipeline("diamond")
    q = p.input("q")
    a = p.add(lg.Predict("q -> x"), name="a", q=q)
    b = p.add(lg.Predict("q -> y"), name="b", q=q)
    c = p.add(lg.Predict("x, y -> z"), name="c", x=a.x, y=b.y)
    p.output(z=c.z)

    def answer(req: LMRequest) -> str:
        system = req.messages[0].content  # "... produce the fields `x`."
        return {"`x`": "X: 1", "`y`": "Y: 2", "`z`": "Z: 3"}[system.split("produce the fields ")[1][:3]]

    lm = FunctionLM(answer, latency_s=0.02)
    out = p.build().run_sync(ctx(lm), q="go")
    assert out.z == "3"
    assert out.trace.node("c").inputs == {"x": "1", "y": "2"}


class Person(pydantic.BaseModel):
    name: str
    age: int


def test_outputs_are_typed():
    p = lg.Pipeline("typed")
    t = p.input("text")
    n = p.add(lg.Predict("text -> count: int, ratio: float, ok: bool, tags: list[str], "
                         "label: Literal['a', 'b'], who: Person", types={"Person": Person}),
              name="n", text=t)
    p.output(count=n.count, ratio=n.ratio, ok=n.ok, tags=n.tags, label=n.label, who=n.who)
    lm = FunctionLM(lambda r: json.dumps({"count": "3", "ratio": 0.5, "ok": "yes", "tags": ["x", "y"],
                                          "label": "B", "who": {"name": "Ada", "age": 36}}))
    out = p.build().run_sync(ctx(lm), text="t")
    assert out.count == 3 and type(out.count) is int
    assert out.ratio == 0.5 and out.ok is True and out.tags == ["x", "y"] and out.label == "b"
    assert out.who == Person(name="Ada", age=36)
    assert out.trace.node("n").format == "json"  # 'auto' picks json for structured outputs
    assert lm.calls[0].json_schema is not None


def test_typed_chat_and_completion_outputs():
    p = lg.Pipeline("typed2")
    t = p.input("text")
    a = p.add(lg.Predict("text -> n: int, flag: bool", format="chat"), name="a", text=t)
    b = p.add(lg.Predict("text -> items: list[int]", format="completion"), name="b", text=t)
    p.output(n=a.n, flag=a.flag, items=b.items)
    lm = FunctionLM(lambda r: "N: 1,234\nFlag: No." if r.messages else " 1. 4\n2. 5")
    out = p.build().run_sync(ctx(lm), text="t")
    assert dict(out) == {"n": 1234, "flag": False, "items": [4, 5]}


def test_pipeline_inputs_are_coerced_to_declared_types():
    p = lg.Pipeline("inp")
    k = p.input("k", int)
    n = p.add(lg.Predict("k: int -> answer"), name="n", k=k)
    p.output(answer=n.answer, k=k)
    out = p.build().run_sync(ctx(FunctionLM(lambda r: "Answer: a")), k="7")
    assert out.k == 7 and out.trace.node("n").inputs == {"k": 7}


# --------------------------------------------------------------------------- traces

def test_trace_contents():
    lm = FunctionLM(lambda r: "Answer: Paris")
    p = lg.Pipeline("geo")
    q = p.input("question")
    n = p.add(lg.Predict("question -> answer", instructions="Answer briefly.", format="completion",
                         temperature=0.2, max_tokens=20), name="n", question=q)
    p.output(answer=n.answer)
    out = p.build().run_sync(ctx(lm), question="Capital of France?")
    tr = out.trace
    assert tr.program == "geo" and tr.inputs == {"question": "Capital of France?"}
    assert tr.outputs == {"answer": "Paris"} and tr.error is None and tr.latency_s > 0
    nt = tr.node("n")
    assert nt.kind == "predict" and nt.inputs == {"question": "Capital of France?"}
    assert nt.outputs == {"answer": "Paris"} and nt.error is None
    assert nt.format == "completion" and nt.latency_s > 0
    (rec,) = nt.calls
    assert rec.request.prompt.startswith("Answer briefly.")
    assert rec.request.prompt.endswith("Question: Capital of France?\nAnswer:")
    assert (rec.request.temperature, rec.request.max_tokens, rec.request.node) == (0.2, 20, "n")
    assert rec.response.text == "Answer: Paris"  # the raw completion
    assert rec.parse_error is None and rec.error is None and rec.latency_s >= 0
    assert nt.usage == {"calls": 1, "cache_hits": 0, "prompt_tokens": len(rec.request.prompt.split()),
                        "completion_tokens": 2}
    assert tr.usage == nt.usage
    d = json.loads(json.dumps(tr.to_dict()))
    call = d["nodes"][0]["calls"][0]
    assert call["prompt"] == rec.request.prompt and call["completion"] == "Answer: Paris"
    assert d["nodes"][0]["format"] == "completion" and d["outputs"] == {"answer": "Paris"}
    with pytest.raises(KeyError, match="no node 'zz'"):
        tr.node("zz")


def test_trace_cost_sums_backend_costs():
    lm = FunctionLM(lambda r: LMResponse(text="Answer: x", cost=0.25, usage=Usage(prompt_tokens=1)))
    out = fan_out(2).run_sync(ctx(lm), question="q")
    assert out.trace.cost == 0.5


# --------------------------------------------------------------------------- repair / parse failures

def repair_program(fmt: str = "chat") -> lg.Program:
    p = lg.Pipeline("rep")
    q = p.input("q")
    n = p.add(lg.Predict("q -> answer: int", format=fmt), name="n", q=q)
    p.output(answer=n.answer)
    return p.build()


@pytest.mark.parametrize("fmt, good", [("chat", "Answer: 5"), ("completion", " 5"), ("json", '{"answer": 5}')])
def test_repair_attempt_succeeds(fmt, good):
    lm = ScriptedLM(["I am not sure", good])
    out = repair_program(fmt).run_sync(ctx(lm), q="2+3?")
    assert out.answer == 5
    assert len(lm.calls) == 2
    first, second = out.trace.node("n").calls
    assert first.parse_error and (fmt == "json" or "answer" in first.parse_error)
    assert second.parse_error is None
    assert "I am not sure" in request_text(lm.calls[1])  # the model sees its own bad answer


@pytest.mark.parametrize("fmt, first_reply, follow_up, missing", [
    # chat: unlabelled reasoning that stopped before 'Answer:'; the answer asked for in plain text
    ("chat", "First, 2 + 3 = 5. So the total is", "Answer: 5", "missing 'Answer:'"),
    # json: the object cut off inside the reasoning string; the answer asked for under its own schema
    ("json", '{"reasoning": "First, 2 + 3 = 5. So the total is', '{"answer": 5}', "missing key 'answer'"),
])
def test_cot_reasoning_that_stopped_early_is_kept_and_only_the_answer_asked_for(fmt, first_reply, follow_up,
                                                                               missing):
    p = lg.Pipeline("cot")
    q = p.input("q")
    n = p.add(lg.ChainOfThought("q -> answer: int", format=fmt), name="n", q=q)
    p.output(answer=n.answer, reasoning=n.reasoning)
    lm = ScriptedLM([first_reply, follow_up])
    out = p.build().run_sync(ctx(lm), q="2+3?")
    assert (out.answer, out.reasoning) == (5, "First, 2 + 3 = 5. So the total is")
    assert len(lm.calls) == 2
    second = lm.calls[1]
    if fmt == "chat":
        assert second.messages[-2].content == "First, 2 + 3 = 5. So the total is"
        assert second.messages[-1].content == "Now reply with only 'Answer: ...' (a number)."
    else:
        assert json.loads(second.messages[-2].content) == {"reasoning": "First, 2 + 3 = 5. So the total is"}
        assert second.json_schema["required"] == ["answer"]
    first, again = out.trace.node("n").calls
    assert missing in first.parse_error and again.parse_error is None


def test_two_parse_failures_raise_with_node_and_trace():
    lm = ScriptedLM(["no idea", "still no idea"])
    with pytest.raises(OutputParseError) as ei:
        repair_program().run_sync(ctx(lm), q="2+3?")
    err = ei.value
    assert err.node == "n" and err.field == "answer"
    assert str(err).startswith("node 'n': field 'answer'")
    assert err.raw == "still no idea"
    tr = err.trace
    assert tr.error and "OutputParseError" in tr.error and tr.outputs is None
    nt = tr.node("n")
    assert len(nt.calls) == 2 and all(c.parse_error for c in nt.calls)
    assert nt.error.startswith("OutputParseError")


def test_no_repair_when_disabled():
    p = lg.Pipeline("norep")
    q = p.input("q")
    n = p.add(lg.Predict("q -> answer: int", repair=False), name="n", q=q)
    p.output(answer=n.answer)
    lm = ScriptedLM(["nope", "Answer: 1"])
    with pytest.raises(OutputParseError):
        p.build().run_sync(ctx(lm), q="x")
    assert len(lm.calls) == 1


def test_backend_failure_is_a_run_error_naming_the_node():
    def boom(req):
        raise RuntimeError("backend exploded")

    with pytest.raises(RunError) as ei:
        repair_program().run_sync(ctx(FunctionLM(boom)), q="x")
    err = ei.value
    assert err.node == "n" and "backend exploded" in str(err)
    assert isinstance(err.__cause__, RuntimeError)
    assert err.trace.node("n").calls[0].error.startswith("RuntimeError")


class Broken(Module):
    """A custom module that forgets one of its outputs."""

    def __init__(self) -> None:
        self._sig = Signature.parse("q -> a, b")
        self._freeze()

    @property
    def signature(self) -> Signature:
        return self._sig

    async def forward(self, inputs, call):
        return {"a": "only a"}


def test_module_missing_an_output_fails_at_that_node():
    p = lg.Pipeline("broken")
    q = p.input("q")
    n = p.add(Broken(), name="bad", q=q)
    m = p.add(lg.Predict("b -> c"), name="next", b=n.b)
    p.output(c=m.c)
    with pytest.raises(RunError) as ei:
        p.build().run_sync(ctx(FunctionLM(lambda r: "C: x")), q="x")
    assert ei.value.node == "bad" and "'b'" in str(ei.value)


def test_failure_in_one_branch_cancels_the_others():
    p = lg.Pipeline("branches")
    q = p.input("q")
    slow = p.add(lg.Predict("q -> slow"), name="slow", q=q)
    bad = p.add(lg.Predict("q -> n: int", repair=False), name="bad", q=q)
    p.output(slow=slow.slow, n=bad.n)

    class LM(Tracking):
        async def complete(self, request):
            if "`n`" in request.messages[0].content:
                return LMResponse(text="N: nothing")
            return await super().complete(request)

    lm = LM(latency_s=5)
    t0 = time.perf_counter()
    with pytest.raises(OutputParseError) as ei:
        p.build().run_sync(ctx(lm), q="x")
    assert time.perf_counter() - t0 < 1
    assert ei.value.node == "bad"
    assert lm.cancelled == 1 and lm.in_flight == 0
    assert ei.value.trace.node("slow").error == "cancelled"


# --------------------------------------------------------------------------- inputs

@pytest.mark.parametrize("inputs, needle", [
    ({}, "missing input 'k'"),
    ({"k": 1, "extra": 2}, "unexpected input 'extra'"),
    ({"k": [1, 2]}, "input 'k' is not valid"),
    ({"k": "seven"}, "input 'k' is not valid"),
])
def test_input_validation_before_any_model_call(inputs, needle):
    p = lg.Pipeline("inp")
    k = p.input("k", int)
    n = p.add(lg.Predict("k: int -> answer"), name="n", k=k)
    p.output(answer=n.answer)
    lm = FunctionLM(lambda r: "Answer: a")
    with pytest.raises(InputError, match=needle) as ei:
        p.build().run_sync(ctx(lm), **inputs)
    assert lm.calls == []
    assert "Fix:" in str(ei.value) or "not valid" in str(ei.value)
    assert ei.value.trace.nodes == []


def test_run_sync_inside_a_running_loop():  # a notebook: it runs on a worker thread (tests/test_run_sync.py)
    prog = repair_program()

    async def main():
        assert prog.run_sync(ctx(FunctionLM(lambda r: "Answer: 1")), q="x").answer == 1
        assert prog.batch_sync([{"q": "x"}], ctx=ctx(FunctionLM(lambda r: "Answer: 1")))[0].ok
        return await prog.run(ctx(FunctionLM(lambda r: "Answer: 1")), q="x")

    assert asyncio.run(main()).answer == 1


def test_run_sync_reuses_its_loop_across_calls():
    prog = repair_program()
    c = ctx(FunctionLM(lambda r: "Answer: 1"), cache=MemoryCache())
    assert prog.run_sync(c, q="x").answer == 1
    assert prog.run_sync(c, q="x").answer == 1


# --------------------------------------------------------------------------- batch

def classify_program() -> lg.Program:
    p = lg.Pipeline("cls")
    t = p.input("text")
    n = p.add(lg.Predict("text -> label: Literal['pos', 'neg']"), name="n", text=t)
    p.output(label=n.label)
    return p.build()


def classify(req: LMRequest) -> str:
    text = request_text(req)
    if "weird" in text:
        return "Label: banana"
    return "Label: pos" if "good" in text else "Label: neg"


def test_batch_records_errors_per_example():
    rows = [{"text": "good film", "gold": "pos"}, {"txt": "typo in key"}, {"text": "weird film"},
            {"text": "bad film"}]
    lm = FunctionLM(classify)
    results = classify_program().batch_sync(rows, ctx=ctx(lm))
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[0].outputs.label == "pos" and results[3].outputs.label == "neg"
    assert results[0].inputs == {"text": "good film"}  # non-input keys (labels) are ignored
    assert isinstance(results[1].error, InputError) and "missing input 'text'" in str(results[1].error)
    err = results[2].error
    assert isinstance(err, OutputParseError) and err.node == "n"
    assert results[2].trace is not None and len(results[2].trace.node("n").calls) == 2  # repaired once
    assert results[0].trace.outputs == {"label": "pos"}
    assert "error=" in repr(results[1]) and "outputs=" in repr(results[0])
    assert len(lm.calls) == 1 + 2 + 1  # the bad-key row never reached the model


def test_batch_concurrency_is_honoured():
    lm = Tracking(latency_s=0.03, text="Label: pos")
    results = classify_program().batch_sync([{"text": f"t{i}"} for i in range(8)], ctx=ctx(lm), concurrency=3)
    assert all(r.ok for r in results)
    assert lm.max_in_flight == 3 and lm.finished == 8


def test_batch_definition_error_is_raised_not_recorded():
    p = lg.Pipeline("big")
    t = p.input("text")
    n = p.add(lg.Predict("text -> label", lm="huge"), name="n", text=t)
    p.output(label=n.label)
    lm = FunctionLM(lambda r: "Label: x")
    with pytest.raises(DefinitionError, match="no model named 'huge'"):
        p.build().batch_sync([{"text": "a"}, {"text": "b"}], ctx=ctx(lm))
    assert lm.calls == []


def test_empty_batch():
    assert classify_program().batch_sync([], ctx=ctx(FunctionLM(classify))) == []


# --------------------------------------------------------------------------- cancellation

def test_cancelling_a_run_cancels_node_tasks_without_leaking():
    lm = Tracking(latency_s=5)
    prog = fan_out(3)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(prog.run(ctx(lm), question="q"), timeout=0.05)
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    t0 = time.perf_counter()
    leftover = asyncio.run(main())
    assert time.perf_counter() - t0 < 1
    assert leftover == []
    assert lm.started == 3 and lm.cancelled == 3 and lm.in_flight == 0 and lm.finished == 0


def test_cancelling_a_chain_run():
    lm = Tracking(latency_s=5)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(chain3().run(ctx(lm), question="q"), timeout=0.05)

    asyncio.run(main())
    assert lm.started == 1 and lm.cancelled == 1 and lm.in_flight == 0


def test_cancelling_a_batch():
    lm = Tracking(latency_s=5, text="Label: pos")

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(classify_program().batch([{"text": "a"}] * 4, ctx=ctx(lm), concurrency=2),
                                   timeout=0.05)
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []
    assert lm.started == 2 and lm.cancelled == 2 and lm.in_flight == 0


# --------------------------------------------------------------------------- budget

def test_budget_stops_the_third_call():
    lm = FunctionLM(chain_answers)
    c = ctx(lm, budget=lg.Budget(max_calls=2))
    with pytest.raises(BudgetExceeded) as ei:
        chain3().run_sync(c, question="q")
    assert ei.value.node == "c"
    assert "node 'c'" in str(ei.value) and "2/2 calls" in str(ei.value)
    assert len(lm.calls) == 2
    assert ei.value.trace.node("a").outputs == {"draft": "first draft"}
    # the budget is shared by later runs with the same context: no more calls at all
    with pytest.raises(BudgetExceeded):
        chain3().run_sync(c, question="other")
    assert len(lm.calls) == 2


def test_budget_in_a_batch_is_recorded_per_example():
    lm = FunctionLM(classify)
    results = classify_program().batch_sync([{"text": f"good {i}"} for i in range(5)],
                                            ctx=ctx(lm, budget=lg.Budget(max_calls=3)), concurrency=1)
    assert [r.ok for r in results] == [True, True, True, False, False]
    assert isinstance(results[3].error, BudgetExceeded)
    assert len(lm.calls) == 3


# --------------------------------------------------------------------------- cache

def test_cache_second_run_makes_no_calls():
    lm = FunctionLM(chain_answers)
    c = ctx(lm, cache=MemoryCache())
    first = chain3().run_sync(c, question="q")
    assert len(lm.calls) == 3 and first.trace.usage["cache_hits"] == 0
    second = chain3().run_sync(c, question="q")
    assert len(lm.calls) == 3
    assert dict(second) == dict(first)
    assert second.trace.usage["cache_hits"] == 3
    assert all(rec.response.cached for n in second.trace.nodes for rec in n.calls)
    assert all(rec.to_dict()["cached"] for n in second.trace.nodes for rec in n.calls)
    # a different input is a different request (later nodes see the same draft: cache hits)
    third = chain3().run_sync(c, question="another")
    assert len(lm.calls) == 4
    assert [n.usage["cache_hits"] for n in third.trace.nodes] == [0, 1, 1]


def test_rollout_changes_cache_keys():
    lm = FunctionLM(chain_answers)
    cache = MemoryCache()
    base = ctx(lm, cache=cache)
    chain3().run_sync(base, question="q")
    assert len(lm.calls) == 3
    out = chain3().run_sync(base.replace(rollout=1), question="q")
    assert len(lm.calls) == 6
    assert out.trace.usage["cache_hits"] == 0
    assert all(r.rollout == 1 for r in lm.calls[3:])
    chain3().run_sync(base.replace(rollout=1), question="q")
    assert len(lm.calls) == 6  # rollout 1 is now cached too


def test_cache_disabled():
    lm = FunctionLM(chain_answers)
    c = ctx(lm, cache=False)
    chain3().run_sync(c, question="q")
    chain3().run_sync(c, question="q")
    assert len(lm.calls) == 6


# --------------------------------------------------------------------------- named models

def named_program(name: str) -> lg.Program:
    p = lg.Pipeline("named")
    q = p.input("q")
    a = p.add(lg.Predict("q -> draft"), name="small_step", q=q)
    b = p.add(lg.Predict("draft -> answer", lm=name), name="big_step", draft=a.draft)
    p.output(answer=b.answer)
    return p.build()


def test_per_node_model_by_name():
    small = FunctionLM(lambda r: "Draft: d", name="small")
    big = FunctionLM(lambda r: "Answer: from big", name="big")
    out = named_program("big").run_sync(ctx(small, lms={"big": big}), q="x")
    assert out.answer == "from big"
    assert len(small.calls) == 1 and len(big.calls) == 1
    assert "Draft: d" in last_user(big.calls[0])


def test_unknown_model_name_is_a_definition_error_before_any_call():
    small = FunctionLM(lambda r: "Draft: d")
    with pytest.raises(DefinitionError) as ei:
        named_program("gigantic").run_sync(ctx(small, lms={"big": small}), q="x")
    msg = str(ei.value)
    assert "'gigantic'" in msg and "lms={'gigantic': model}" in msg and "known: big" in msg
    assert small.calls == []


def test_default_format_from_context():
    lm = FunctionLM(lambda r: " ok" if r.prompt is not None else "Answer: ok")
    p = lg.Pipeline("fmt")
    q = p.input("q")
    n = p.add(lg.Predict("q -> answer"), name="n", q=q)  # format="auto"
    p.output(answer=n.answer)
    out = p.build().run_sync(ctx(lm, default_format="completion"), q="x")
    assert out.answer == "ok" and lm.calls[0].prompt is not None
    assert out.trace.node("n").format == "completion"


def test_prediction_attribute_access():
    out = repair_program().run_sync(ctx(FunctionLM(lambda r: "Answer: 3")), q="x")
    assert out.answer == 3 and out["answer"] == 3
    with pytest.raises(AttributeError, match="no field 'nope'"):
        out.nope  # noqa: B018


class SubRun(Module):
    """A custom module that runs a sub-program (like Map does)."""

    def __init__(self, program: lg.Program) -> None:
        self.program = program
        self._freeze()

    @property
    def signature(self) -> Signature:
        return Signature.parse("q -> answer: int")

    async def forward(self, inputs, call):
        pred = await call.run_program(self.program, {"q": inputs["q"]})
        return {"answer": pred.answer}


@pytest.mark.parametrize("reply, ok", [("Answer: 4", True), ("no clue", False)])
def test_sub_program_traces_are_children(reply, ok):
    p = lg.Pipeline("outer")
    q = p.input("q")
    n = p.add(SubRun(repair_program()), name="sub", q=q)
    p.output(answer=n.answer)
    lm = FunctionLM(lambda r: reply)
    if ok:
        out = p.build().run_sync(ctx(lm), q="x")
        assert out.answer == 4
        tr = out.trace
    else:
        with pytest.raises(OutputParseError) as ei:
            p.build().run_sync(ctx(lm), q="x")
        tr = ei.value.trace
        assert tr.program == "outer"  # the outer run's trace, which keeps the failed sub-run
    (child,) = tr.node("sub").children
    assert child.program == "rep" and len(child.node("n").calls) == (1 if ok else 2)
    assert tr.node("sub").usage["calls"] == (1 if ok else 2)
    assert tr.usage["calls"] == (1 if ok else 2)


def test_run_errors_pickle_with_their_location():
    import pickle

    with pytest.raises(BudgetExceeded) as ei:
        chain3().run_sync(ctx(FunctionLM(chain_answers), budget=lg.Budget(max_calls=0)), question="q")
    err = pickle.loads(pickle.dumps(ei.value))
    assert type(err) is BudgetExceeded and err.node == "a" and str(err) == str(ei.value)
    ope = pickle.loads(pickle.dumps(OutputParseError("bad", node="n", field="f", raw="r")))
    assert (ope.node, ope.field, ope.raw) == ("n", "f", "r")


def test_a_node_can_opt_out_of_the_cache():
    from lmgraph.cache import MemoryCache

    lm = FunctionLM(lambda req: "Answer: 42")
    p = lg.Pipeline("optout")
    q = p.input("question")
    cached = p.add(lg.Predict("question -> answer"), name="cached", question=q)
    fresh = p.add(lg.Predict("question -> answer", cache=False), name="fresh", question=q)
    p.output(a=cached.answer, b=fresh.answer)
    program = p.build()
    ctx = lg.RunContext(lm=lm, cache=MemoryCache())
    program.run_sync(ctx, question="q")
    out = program.run_sync(ctx, question="q")
    assert out.trace.node("cached").calls[0].response.cached
    assert not out.trace.node("fresh").calls[0].response.cached
    assert len(lm.calls) == 3
    # the opt-out survives a JSON round trip; modules that keep the default write nothing new
    again = lg.Program.from_dict(program.to_dict())
    assert again.module("fresh").cache is False and "cache" not in program.to_dict()["nodes"][0]["module"]
