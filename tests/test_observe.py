"""Observing runs: OpenTelemetry spans (GenAI conventions) checked with the SDK's in-memory
exporter, JSONL trace files, `--trace FILE` on the command line and `lmgraph trace FILE`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

import lmgraph as lg
from lmgraph import cli, observe
from lmgraph.errors import ConfigError, DefinitionError, LMError
from lmgraph.modules import CallTool, Map, Predict
from lmgraph.observe import JsonlTraces, OTelObserver, format_summary, read_traces, summarize
from lmgraph.testing import FunctionLM, request_text

from helpers import sentiment_fn, sentiment_program, sentiment_rows

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode


@pytest.fixture()
def otel():  # noqa: ANN201
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    observe.disable_otel()


def by_name(exporter) -> dict:  # noqa: ANN001
    return {s.name: s for s in exporter.get_finished_spans()}


def qa_program() -> lg.Program:
    p = lg.Pipeline("qa")
    q = p.input("question")
    kind = p.add(Predict("question -> kind: Literal['city', 'person']", format="completion"), "classify", question=q)
    ans = p.add(lg.ChainOfThought("question, kind -> answer", format="chat"), "answer", question=q, kind=kind.kind)
    p.output(answer=ans.answer)
    return p.build()


def qa_fn(req: lg.LMRequest) -> str:
    return " city" if req.prompt is not None else "Reasoning: it is a city\nAnswer: Paris"


def test_spans_for_the_run_its_nodes_and_model_calls(otel) -> None:  # noqa: ANN001
    provider, exporter = otel
    out = qa_program().run_sync(lg.RunContext(lm=FunctionLM(qa_fn), cache=False, tracer=provider), question="Paris?")
    spans = by_name(exporter)
    assert set(spans) == {"invoke_workflow qa", "invoke_agent classify", "invoke_agent answer",
                          "text_completion function", "chat function"}
    run, node, call = spans["invoke_workflow qa"], spans["invoke_agent answer"], spans["chat function"]
    assert run.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert run.attributes["gen_ai.workflow.name"] == "qa"
    assert node.parent.span_id == run.context.span_id and call.parent.span_id == node.context.span_id
    assert spans["text_completion function"].parent.span_id == spans["invoke_agent classify"].context.span_id
    a = call.attributes
    resp = out.trace.node("answer").calls[0].response
    assert call.kind == SpanKind.CLIENT
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "testing"
    assert a["gen_ai.request.model"] == "function" and a["gen_ai.response.model"] == "function"
    assert a["gen_ai.usage.input_tokens"] == resp.usage.prompt_tokens > 0
    assert a["gen_ai.usage.output_tokens"] == resp.usage.completion_tokens > 0
    assert a["gen_ai.response.finish_reasons"] == ("stop",) and a["gen_ai.output.type"] == "text"
    assert a["lmgraph.latency_s"] > 0 and a["lmgraph.format"] == "chat" and a["lmgraph.cached"] is False
    assert a["gen_ai.request.max_tokens"] == 384 and a["gen_ai.request.temperature"] == 0.0
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a  # content is opt-in
    usage = out.trace.usage
    assert run.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert run.attributes["lmgraph.calls"] == 2 and run.attributes["lmgraph.latency_s"] > 0
    assert node.attributes["lmgraph.node.kind"] == "chain_of_thought"
    assert node.attributes["lmgraph.node.format"] == "chat"
    assert all(s.status.status_code != StatusCode.ERROR for s in spans.values())


def test_content_is_recorded_only_when_asked(otel) -> None:  # noqa: ANN001
    provider, exporter = otel
    obs = OTelObserver(tracer_provider=provider, capture_content=True)
    qa_program().run_sync(lg.RunContext(lm=FunctionLM(qa_fn), cache=False, tracer=obs), question="Paris?")
    a = by_name(exporter)["chat function"].attributes
    sent = json.loads(a["gen_ai.input.messages"])
    assert sent[-1]["role"] == "user" and "Paris?" in sent[-1]["parts"][0]["content"]
    got = json.loads(a["gen_ai.output.messages"])
    assert got[0]["parts"][0]["content"] == "Reasoning: it is a city\nAnswer: Paris"
    os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "true"
    try:
        assert OTelObserver(tracer_provider=provider).capture_content
    finally:
        del os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"]


def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


def boom(x: str) -> str:
    """Always fails."""
    raise ValueError("the service is down")


def test_tool_calls_get_execute_tool_spans(otel) -> None:  # noqa: ANN001
    provider, exporter = otel
    steps = iter([("add", {"a": 2, "b": 3}), ("boom", {"x": "y"}), ("finish", None)])

    def fn(req: lg.LMRequest) -> str:
        text = request_text(req)
        if "Write the arguments for the tool" in text:
            return json.dumps({"args": pending[-1]})
        if "choose one tool by its name" in text:
            tool, args = next(steps)
            pending.append(args)
            return json.dumps({"thought": "t", "tool": tool})
        return "Answer: 5"
    pending: list = []
    p = lg.Pipeline("agent")
    node = p.add(CallTool("question -> answer: int", [add, boom]), "act", question=p.input("question"))
    p.output(answer=node.answer)
    obs = OTelObserver(tracer_provider=provider, capture_content=True)
    assert p.build().run_sync(lg.RunContext(lm=FunctionLM(fn), cache=False, tracer=obs), question="2+3?").answer == 5
    spans = by_name(exporter)
    ok, bad = spans["execute_tool add"], spans["execute_tool boom"]
    assert ok.attributes["gen_ai.operation.name"] == "execute_tool" and ok.attributes["gen_ai.tool.name"] == "add"
    assert ok.attributes["gen_ai.tool.type"] == "function" and ok.attributes["lmgraph.tool.ok"] is True
    assert json.loads(ok.attributes["gen_ai.tool.call.arguments"]) == {"a": 2, "b": 3}
    assert ok.attributes["gen_ai.tool.call.result"] == "5"
    assert ok.parent.span_id == spans["invoke_agent act"].context.span_id
    assert bad.status.status_code == StatusCode.ERROR and bad.attributes["error.type"] == "ToolError"
    assert "service is down" in bad.status.description


def test_a_failed_call_marks_its_spans(otel) -> None:  # noqa: ANN001
    provider, exporter = otel

    def down(req: lg.LMRequest) -> str:
        raise LMError("the provider is down", retryable=False)
    with pytest.raises(lg.RunError):
        qa_program().run_sync(lg.RunContext(lm=FunctionLM(down), cache=False, tracer=provider), question="q")
    spans = by_name(exporter)
    for name in ("text_completion function", "invoke_agent classify", "invoke_workflow qa"):
        assert spans[name].status.status_code == StatusCode.ERROR, name
    assert spans["text_completion function"].attributes["error.type"] == "LMError"
    assert spans["invoke_workflow qa"].attributes["error.type"] == "LMError"  # the error the run raised


def test_parallel_nodes_and_sub_runs_nest_under_the_right_spans(otel) -> None:  # noqa: ANN001
    provider, exporter = otel
    inner = lg.Pipeline("shout")
    n = inner.add(Predict("item -> loud"), "loud", item=inner.input("item"))
    inner.output(loud=n.loud)
    p = lg.Pipeline("outer")
    q = p.input("items", list[str])
    m = p.add(Map(inner.build(), over="item"), "each", item=q)
    side = p.add(Predict("items: list[str] -> count"), "count", items=q)
    p.output(louds=m.loud, count=side.count)
    lm = FunctionLM(lambda r: "Loud: X" if "Item:" in request_text(r) else "Count: 2", latency_s=0.01)
    p.build().run_sync(lg.RunContext(lm=lm, cache=False, tracer=provider), items=["a", "b"])
    spans = exporter.get_finished_spans()
    run = next(s for s in spans if s.name == "invoke_workflow outer")
    each = next(s for s in spans if s.name == "invoke_agent each")
    count = next(s for s in spans if s.name == "invoke_agent count")
    assert each.parent.span_id == run.context.span_id and count.parent.span_id == run.context.span_id
    subs = [s for s in spans if s.name == "invoke_workflow shout"]
    assert len(subs) == 2 and all(s.parent.span_id == each.context.span_id for s in subs)
    assert all(s.attributes["lmgraph.nested"] is True for s in subs) and run.attributes["lmgraph.nested"] is False
    assert len([s for s in spans if s.name.startswith("chat ")]) == 3
    assert len({s.context.trace_id for s in spans}) == 1


def test_enable_otel_traces_every_run_unless_a_context_opts_out(otel) -> None:  # noqa: ANN001
    provider, exporter = otel
    observe.enable_otel(provider)
    prog = sentiment_program()
    prog.run_sync(lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False), sentence="fine")
    assert "invoke_workflow sentiment" in by_name(exporter)
    exporter.clear()
    prog.run_sync(lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False, tracer=False), sentence="fine")
    assert exporter.get_finished_spans() == ()
    observe.disable_otel()
    prog.run_sync(lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False), sentence="fine")
    assert exporter.get_finished_spans() == ()


def test_a_streamed_run_is_traced_too(otel) -> None:  # noqa: ANN001
    provider, exporter = otel

    async def go():
        return [e async for e in qa_program().stream(
            lg.RunContext(lm=FunctionLM(qa_fn), cache=False, tracer=provider), question="Paris?")]
    evs = asyncio.run(go())
    assert evs[-1].outputs == {"answer": "Paris"}
    assert by_name(exporter)["chat function"].attributes["gen_ai.usage.output_tokens"] > 0


def test_a_tracer_that_observes_nothing_is_refused() -> None:
    with pytest.raises(ConfigError, match="observes nothing"):
        lg.RunContext(tracer="yes please")


def test_otel_is_not_imported_unless_asked() -> None:
    code = ("import sys, lmgraph as lg; from lmgraph.testing import FunctionLM; "
            "p = lg.Pipeline('x'); n = p.add(lg.Predict('a -> b'), 'n', a=p.input('a')); p.output(b=n.b); "
            "p.build().run_sync(lg.RunContext(lm=FunctionLM(lambda r: 'B: 1'), cache=False), a='1'); "
            "assert 'opentelemetry' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------ JSONL traces

def test_jsonl_traces_write_one_line_per_top_level_run(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "t.jsonl"
    inner = lg.Pipeline("shout")
    n = inner.add(Predict("item -> loud"), "loud", item=inner.input("item"))
    inner.output(loud=n.loud)
    p = lg.Pipeline("outer")
    m = p.add(Map(inner.build(), over="item"), "each", item=p.input("items", list[str]))
    p.output(louds=m.loud)
    prog = p.build()
    with JsonlTraces(path) as traces:
        ctx = lg.RunContext(lm=FunctionLM(lambda r: "Loud: X"), cache=False, tracer=traces)
        results = prog.batch_sync([{"items": ["a", "b"]}, {"items": ["c"]}, {"items": 3}], ctx=ctx)
    assert [r.ok for r in results] == [True, True, False]
    recs = read_traces(path)
    assert len(recs) == 3 and traces.runs == 3  # sub-runs are counted in their node, not written
    ok = next(r for r in recs if r["inputs"] == {"items": ["a", "b"]})
    assert ok["schema"] == "lmgraph.trace/1" and ok["program"] == "outer" and ok["program_hash"] == prog.content_hash()
    assert ok["outputs"] == {"louds": ["X", "X"]} and ok["error"] is None and ok["usage"]["calls"] == 2
    node = ok["nodes"][0]
    assert node["node"] == "each" and node["kind"] == "map" and node["calls"] == 2 and node["sub_runs"] == 2
    assert node["model_calls"] == [] and node["latency_s"] > 0
    bad = next(r for r in recs if r["error"])
    assert "InputError" in bad["error"] and bad["outputs"] is None and bad["nodes"] == []


def test_jsonl_trace_records_calls_and_content_on_request(tmp_path) -> None:  # noqa: ANN001
    plain, full = tmp_path / "plain.jsonl", tmp_path / "full.jsonl"
    for path, content in ((plain, False), (full, True)):
        ctx = lg.RunContext(lm=FunctionLM(qa_fn), cache=False, tracer=JsonlTraces(path, content=content))
        qa_program().run_sync(ctx, question="Paris?")
        ctx.tracer.close()
    (rec,) = read_traces(plain)
    call = rec["nodes"][1]["model_calls"][0]
    assert call["model"] == "function" and call["format"] == "chat" and call["prompt_tokens"] > 0
    assert call["finish_reason"] == "stop" and call["error"] is None and "completion" not in call
    assert rec["nodes"][0]["formats"] == ["completion"] and "inputs" not in rec["nodes"][0]
    (rec,) = read_traces(full)
    call = rec["nodes"][1]["model_calls"][0]
    assert call["completion"].endswith("Answer: Paris") and "Paris?" in call["messages"][-1]["content"]
    assert rec["nodes"][1]["outputs"]["answer"] == "Paris"


def test_summarize_counts_per_node_with_latency_percentiles() -> None:
    def rec(lat: float, err: str | None = None, parse: str | None = None) -> dict:
        return {"schema": "lmgraph.trace/1", "program": "p", "latency_s": lat, "error": err, "cost": 0.5,
                "usage": {"calls": 1, "cache_hits": 0, "prompt_tokens": 10, "completion_tokens": 2},
                "nodes": [{"node": "n", "kind": "predict", "latency_s": lat, "error": err, "calls": 1,
                           "cache_hits": 0, "prompt_tokens": 10, "completion_tokens": 2, "cost": 0.5,
                           "model_calls": [{"error": None, "parse_error": parse}]}]}
    s = summarize([rec(0.1 * i, "RunError: x" if i == 3 else None, "bad" if i == 2 else None)
                   for i in range(1, 11)])
    (n,) = s["nodes"]
    assert s["total"]["runs"] == 10 and s["total"]["failed"] == 1 and s["total"]["cost"] == pytest.approx(5.0)
    assert n["calls"] == 10 and n["prompt_tokens"] == 100 and n["failures"] == 1 and n["parse_errors"] == 1
    assert n["latency_p50_s"] == pytest.approx(0.55) and n["latency_p95_s"] == pytest.approx(0.955)
    text = format_summary(s)
    assert "runs: 10 (1 failed)" in text and "1 (1 unparsed)" in text and "$5.0000" in text


def test_bad_trace_files_are_named(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n', encoding="utf-8")
    with pytest.raises(DefinitionError, match="x.jsonl:1 is not an lmgraph trace record"):
        read_traces(path)
    with pytest.raises(DefinitionError, match="cannot read trace file"):
        read_traces(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError):
        JsonlTraces(path, mode="r")


@pytest.fixture
def fake(monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setattr(cli, "make_lm", lambda spec: FunctionLM(sentiment_fn))


def _rows(tmp_path, n: int) -> str:  # noqa: ANN001
    path = tmp_path / f"rows{n}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(n)), encoding="utf-8")
    return str(path)


def test_cli_trace_on_run_eval_compile_and_the_trace_summary(tmp_path, fake, capsys) -> None:  # noqa: ANN001
    prog = str(sentiment_program().save(tmp_path / "p.json"))
    t = tmp_path / "t.jsonl"
    assert cli.main(["run", prog, "--data", _rows(tmp_path, 4), "--no-cache", "--quiet", "--trace", str(t)]) == 0
    assert len(read_traces(t)) == 4
    assert cli.main(["eval", prog, "--data", _rows(tmp_path, 6), "--metric", "accuracy", "--no-cache",
                     "--trace", str(t), "--json"]) == 0
    recs = read_traces(t)  # the file is started afresh
    assert len(recs) == 6 and all(r["nodes"][0]["model_calls"][0]["prompt_tokens"] > 0 for r in recs)
    capsys.readouterr()
    assert cli.main(["trace", str(t)]) == 0
    out = capsys.readouterr().out
    assert "program: sentiment" in out and "runs: 6 (0 failed)" in out
    row = next(line for line in out.splitlines() if line.startswith("clf "))
    assert row.split()[:4] == ["clf", "predict", "6", "6"]
    assert cli.main(["trace", str(t), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nodes"][0]["calls"] == 6
    c = tmp_path / "c.jsonl"
    assert cli.main(["compile", prog, "--train", _rows(tmp_path, 12), "--metric", "accuracy", "--optimizer",
                     "labeled", "--out", str(tmp_path / "a.json"), "--no-cache", "--quiet", "--trace", str(c)]) == 0
    compiled = read_traces(c)
    assert compiled and all(r["program"] == "sentiment" for r in compiled)
    assert sum(r["usage"]["calls"] for r in compiled) > 0
    capsys.readouterr()
    assert cli.main(["trace", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read trace file" in capsys.readouterr().err
