"""Streaming: the LM protocol's optional stream(), the wrappers, the backends' streams (HTTP ones
against a loopback server speaking server-sent events), program.stream's events and run --stream."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import lmgraph as lg
from lmgraph import cli
from lmgraph.cache import MemoryCache
from lmgraph.errors import LMError
from lmgraph.lm.base import LMRequest, LMResponse, Message, Usage, collect, stream_of, streams
from lmgraph.lm.capabilities import Capabilities
from lmgraph.lm.prompt import _split_labels
from lmgraph.lm.wrappers import Budget, BudgetMeter, ConcurrencyLimitedLM, UsageMeter, build_stack
from lmgraph.pipeline.stream import FieldComplete, Final, JsonFieldReader, LabelSplitter, NodeEnd, NodeStart, TokenDelta
from lmgraph.testing import FunctionLM, ScriptedLM, word_chunks

from helpers import sentiment_fn, sentiment_program


def drain(agen):  # noqa: ANN001, ANN201
    async def go():
        return [item async for item in agen]
    return asyncio.run(go())


def events(program, ctx, **inputs):  # noqa: ANN001, ANN003, ANN201
    return drain(program.stream(ctx, **inputs))


def cot_program(fmt: str = "completion") -> lg.Program:
    p = lg.Pipeline("qa")
    ans = p.add(lg.ChainOfThought("question -> answer", format=fmt), "answer", question=p.input("question"))
    p.output(answer=ans.answer)
    return p.build()


COT_REPLY = " Paris is the capital of France.\nAnswer: Paris"


# ------------------------------------------------------------------------------ fakes and wrappers

def test_fakes_stream_word_chunks_then_the_response() -> None:
    lm = ScriptedLM(["Paris is  big\n"])
    items = drain(lm.stream(LMRequest(prompt="q")))
    assert items[:-1] == ["Paris ", "is  ", "big\n"] and "".join(items[:-1]) == "Paris is  big\n"
    assert isinstance(items[-1], LMResponse) and items[-1].text == "Paris is  big\n"
    assert items[-1].usage == Usage(prompt_tokens=1, completion_tokens=3)
    assert lm.streamed == 1 and len(lm.calls) == 1 and streams(lm)
    assert word_chunks("") == [] and "".join(word_chunks(" a  b ")) == " a  b "


def test_a_model_that_cannot_stream_answers_at_once() -> None:
    lm = FunctionLM(lambda r: "one two three", streaming=False)
    assert not streams(lm)
    items = drain(stream_of(lm, LMRequest(prompt="q")))
    assert items[0] == "one two three" and items[1].text == "one two three" and len(items) == 2
    assert lm.streamed == 0
    stack = build_stack(lm, cache=None, retry_attempts=3, max_concurrency=2)
    assert drain(stack.stream(LMRequest(prompt="q")))[0] == "one two three"


def test_a_cache_hit_streams_the_cached_text_at_once() -> None:
    lm = FunctionLM(lambda r: "alpha beta gamma")
    stack = build_stack(lm, cache=MemoryCache(), retry_attempts=1)
    first = drain(stack.stream(LMRequest(prompt="q")))
    assert first[:-1] == ["alpha ", "beta ", "gamma"] and not first[-1].cached
    again = drain(stack.stream(LMRequest(prompt="q")))
    assert again[:-1] == ["alpha beta gamma"] and again[-1].cached and lm.streamed == 1
    # the cache is shared with complete(): a streamed answer is a hit there too, and the other way
    assert asyncio.run(stack.complete(LMRequest(prompt="q"))).cached
    asyncio.run(stack.complete(LMRequest(prompt="other")))
    assert drain(stack.stream(LMRequest(prompt="other")))[-1].cached and len(lm.calls) == 2


def test_budget_and_usage_count_a_stream_as_complete() -> None:
    lm = FunctionLM(lambda r: "one two three")
    meter, usage = BudgetMeter(Budget(max_calls=1)), UsageMeter()
    stack = build_stack(lm, cache=None, retry_attempts=1, budget_meter=meter, usage_meter=usage)
    drain(stack.stream(LMRequest(prompt="a b", node="n")))
    assert meter.calls == 1 and meter.completion_tokens == 3 and meter.prompt_tokens == 2 and meter.requests == 1
    assert usage.by_node()["n"]["calls"] == 1 and usage.by_node()["n"]["completion_tokens"] == 3
    with pytest.raises(lg.BudgetExceeded):
        drain(stack.stream(LMRequest(prompt="again", node="n")))
    assert lm.streamed == 1 and usage.by_node()["n"]["errors"] == 1


class _Flaky:
    """Streams 'a b'; the first ``fail_before`` streams fail before any delta, and every stream
    fails after its first delta when ``fail_after``."""

    capabilities = Capabilities(streaming=True)

    def __init__(self, fail_before: int = 0, fail_after: bool = False) -> None:
        self.fail_before, self.fail_after, self.attempts = fail_before, fail_after, 0

    def identity(self) -> dict:
        return {"backend": "flaky"}

    async def complete(self, request: LMRequest) -> LMResponse:
        return await collect(self.stream(request))

    async def stream(self, request: LMRequest):  # noqa: ANN201
        self.attempts += 1
        if self.attempts <= self.fail_before:
            raise LMError("503 from the provider", retryable=True, status=503)
        yield "a "
        if self.fail_after:
            raise LMError("connection reset mid-stream", retryable=True)
        yield "b"
        yield LMResponse(text="a b")


def test_retries_happen_only_before_the_first_delta() -> None:
    policy = lg.RetryPolicy(attempts=3, initial_wait=0, max_wait=0)
    flaky = _Flaky(fail_before=2)
    items = drain(build_stack(flaky, retry_attempts=policy).stream(LMRequest(prompt="q")))
    assert items[:-1] == ["a ", "b"] and flaky.attempts == 3
    broken = _Flaky(fail_after=True)
    got: list = []

    async def go():
        async for item in build_stack(broken, retry_attempts=policy).stream(LMRequest(prompt="q")):
            got.append(item)
    with pytest.raises(LMError, match="mid-stream"):
        asyncio.run(go())
    assert got == ["a "] and broken.attempts == 1  # text was passed on: no second attempt


def test_a_stream_holds_its_concurrency_slot_until_it_ends() -> None:
    lm = FunctionLM(lambda r: "x y z")
    limited = ConcurrencyLimitedLM(lm, 1)

    async def go():
        seen = []
        agen = limited.stream(LMRequest(prompt="q"))
        async for _ in agen:
            seen.append(limited._gate().free)
        return seen, limited._gate().free
    during, after = asyncio.run(go())
    assert set(during) == {0} and after == 1


# ------------------------------------------------------------------------------ reading streamed text

@pytest.mark.parametrize("text", [
    COT_REPLY,
    " First, think.\n\nMore thought.\nanswer: **Paris**  \n",
    "Reasoning: it is Paris\nAnswer: Paris\nAnswer: Lyon",
    " A is for apple\nAnswer:\n Paris",
])
def test_label_splitter_fed_char_by_char_gives_the_parsers_sections(text: str) -> None:
    sig = lg.ChainOfThought("question -> answer").signature
    splitter = LabelSplitter("n", sig)
    out = [e for ch in text for e in splitter.feed(ch)] + splitter.close(text)
    got: dict[str, str] = {}
    for e in out:
        got[e.field] = got.get(e.field, "") + e.text
    want = _split_labels(sig, text, sig.outputs[0])
    assert got == {k: v for k, v in want.items() if v}


def test_json_reader_emits_each_field_when_it_closes() -> None:
    sig = lg.Signature.parse("question -> answer, score: int, tags: list[str]")
    text = '{"answer": "Paris, \\"the\\" city", "score": 7, "tags": ["a", "b"]}'
    reader = JsonFieldReader("n", sig)
    when = {}
    for i, ch in enumerate(text):
        for e in reader.feed(ch):
            when[e.field] = (i, e.value)
    assert when["answer"] == (text.index(', "score"'), 'Paris, "the" city')
    assert when["score"] == (text.index(', "tags"'), 7) and when["tags"] == (len(text) - 1, ["a", "b"])
    assert reader.close(text) == []
    cut = JsonFieldReader("n", sig)  # a value that does not validate is left for the parse
    assert cut.feed('{"score": "many", "answer": "x"') == [] and cut.close('{"score": "many"}') == []


# ------------------------------------------------------------------------------ program.stream

def test_program_stream_yields_typed_events_in_order() -> None:
    lm = FunctionLM(lambda r: COT_REPLY)
    program = cot_program()
    evs = events(program, lg.RunContext(lm=lm, cache=False), question="capital of France?")
    assert isinstance(evs[0], NodeStart) and evs[0].node == "answer"
    deltas = [e for e in evs if isinstance(e, TokenDelta)]
    assert [e.field for e in deltas] == ["reasoning"] * 6 + ["answer"]
    assert "".join(e.text for e in deltas if e.field == "reasoning") == "Paris is the capital of France."
    end, final = evs[-2], evs[-1]
    assert isinstance(end, NodeEnd) and end.outputs == {"reasoning": "Paris is the capital of France.",
                                                        "answer": "Paris"} and end.error is None
    assert isinstance(final, Final) and final.outputs == {"answer": "Paris"}
    assert final.trace is not None and final.trace.node("answer").calls[0].response.text == COT_REPLY
    assert lm.streamed == 1
    assert program.run_sync(lg.RunContext(lm=FunctionLM(lambda r: COT_REPLY), cache=False),
                            question="capital of France?") == final.outputs
    assert json.loads(json.dumps([e.to_dict() for e in evs]))[1] == {
        "event": "token", "node": "answer", "field": "reasoning", "text": "Paris"}


def test_chat_format_streams_too_and_a_cache_hit_streams_at_once() -> None:
    lm = FunctionLM(lambda r: "Reasoning: big city\nAnswer: Paris")
    ctx = lg.RunContext(lm=lm, cache=MemoryCache())
    program = cot_program("chat")
    first = [e for e in events(program, ctx, question="q") if isinstance(e, TokenDelta)]
    assert [(e.field, e.text) for e in first] == [("reasoning", "big"), ("reasoning", " city"), ("answer", "Paris")]
    again = [e for e in events(program, ctx, question="q") if isinstance(e, TokenDelta)]
    assert [(e.field, e.text) for e in again] == [("reasoning", "big city"), ("answer", "Paris")]
    assert lm.streamed == 1


def test_json_outputs_stream_as_field_complete_events() -> None:
    reply = '{"answer": "Paris", "score": 9}'
    p = lg.Pipeline("s")
    n = p.add(lg.Predict("question -> answer, score: int", format="json"), "rate", question=p.input("question"))
    p.output(answer=n.answer, score=n.score)
    evs = events(p.build(), lg.RunContext(lm=FunctionLM(lambda r: reply), cache=False), question="q")
    fields = [(e.field, e.value) for e in evs if isinstance(e, FieldComplete)]
    assert fields == [("answer", "Paris"), ("score", 9)]
    assert not any(isinstance(e, TokenDelta) for e in evs) and evs[-1].outputs == {"answer": "Paris", "score": 9}


def test_repair_calls_do_not_stream() -> None:
    replies = iter(["I will not say", '{"answer": "Paris"}'])
    lm = FunctionLM(lambda r: next(replies))
    p = lg.Pipeline("r")
    n = p.add(lg.Predict("question -> answer: Literal['Paris', 'Rome']", format="completion"), "pick",
              question=p.input("question"))
    p.output(answer=n.answer)
    evs = events(p.build(), lg.RunContext(lm=lm, cache=False), question="q")
    assert lm.streamed == 1 and len(lm.calls) == 2
    assert "".join(e.text for e in evs if isinstance(e, TokenDelta)) == "I will not say"
    assert evs[-1].outputs == {"answer": "Paris"} and evs[-2].outputs == {"answer": "Paris"}


def test_parallel_nodes_keep_their_own_order_and_model_free_nodes_only_start_and_end() -> None:
    p = lg.Pipeline("par")
    q = p.input("question")
    docs = p.add(lg.Retrieve(["Paris is in France.", "Rome is in Italy."], k=1), "find", query=q)
    a = p.add(lg.Predict("question -> answer", format="completion"), "a", question=q)
    b = p.add(lg.Predict("question -> answer", format="completion"), "b", question=q)
    j = p.add(lg.Predict("context: list[str], x, y -> answer", format="completion"), "join",
              context=docs.passages, x=a.answer, y=b.answer)
    p.output(answer=j.answer)
    lm = FunctionLM(lambda r: " many words here", chunk_latency_s=0.001)
    evs = events(p.build(), lg.RunContext(lm=lm, cache=False), question="where is Paris?")
    for node in ("find", "a", "b", "join"):
        mine = [type(e).__name__ for e in evs if getattr(e, "node", None) == node]
        assert mine[0] == "NodeStart" and mine[-1] == "NodeEnd"
        assert mine[1:-1] == ([] if node == "find" else ["TokenDelta"] * 3)
    starts = [e.node for e in evs if isinstance(e, NodeStart)]
    ends = [e.node for e in evs if isinstance(e, NodeEnd)]
    assert starts.index("join") > max(ends.index("a"), ends.index("b"), ends.index("find"))


def test_a_failed_run_raises_after_its_events() -> None:
    def fail(req: LMRequest) -> str:
        raise LMError("the provider is down", retryable=False)
    got: list = []

    async def go():
        async for e in cot_program().stream(lg.RunContext(lm=FunctionLM(fail), cache=False), question="q"):
            got.append(e)
    with pytest.raises(lg.RunError, match="provider is down") as info:
        asyncio.run(go())
    assert [type(e).__name__ for e in got] == ["NodeStart", "NodeEnd"]
    assert got[1].outputs is None and "provider is down" in got[1].error
    assert info.value.trace is not None and info.value.trace.node("answer").error


def test_closing_the_stream_early_cancels_the_run() -> None:
    lm = FunctionLM(lambda r: "one two three four five six", chunk_latency_s=0.01)
    program = cot_program()

    async def go():
        agen = program.stream(lg.RunContext(lm=lm, cache=False), question="q")
        async for e in agen:
            if isinstance(e, TokenDelta):
                break
        await agen.aclose()
        await asyncio.sleep(0.05)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert asyncio.run(go()) == []


def test_stream_checks_inputs_and_context_like_run() -> None:
    with pytest.raises(lg.InputError, match="missing input 'question'"):
        events(cot_program(), lg.RunContext(lm=FunctionLM(lambda r: "x"), cache=False))
    with pytest.raises(lg.UsageError):
        cot_program().stream({"question": "q"})


def test_cli_run_stream_prints_deltas_then_the_outputs(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    path = str(cot_program().save(tmp_path / "qa.json"))
    monkeypatch.setattr(cli, "make_lm", lambda spec: FunctionLM(lambda r: COT_REPLY))
    assert cli.main(["run", path, "--input", "question=capital?", "--stream", "--no-cache"]) == 0
    out = capsys.readouterr().out
    head, _, tail = out.partition("\n{")
    assert head == "answer.reasoning: Paris is the capital of France.\nanswer.answer: Paris"
    assert json.loads("{" + tail) == {"answer": "Paris"}
    monkeypatch.setattr(cli, "make_lm", lambda spec: FunctionLM(sentiment_fn))
    prog = str(sentiment_program().save(tmp_path / "s.json"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"sentence": "good"}\n', encoding="utf-8")
    assert cli.main(["run", prog, "--data", str(rows), "--stream", "--no-cache"]) == 2
    assert "--stream" in capsys.readouterr().err


# ------------------------------------------------------------------------------ HTTP backends (SSE)

REPLY = "Answer: Paris is big"


class _SSE(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.bodies.append(body)
            status = srv.statuses.pop(0) if srv.statuses else 200
        if status != 200:
            raw = json.dumps({"error": {"message": "overloaded"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            return
        chat = self.path.endswith("/chat/completions")
        if not body.get("stream"):
            choice = {"message": {"role": "assistant", "content": REPLY}} if chat else {"text": REPLY}
            raw = json.dumps({"model": "served", "choices": [{**choice, "finish_reason": "stop", "index": 0}],
                              "usage": {"prompt_tokens": 5, "completion_tokens": 4}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = word_chunks(REPLY)
        for i, w in enumerate(words):
            last = i == len(words) - 1
            choice = ({"delta": {"content": w}} if chat else {"text": w})
            event = {"id": "x", "object": "chunk", "created": 1, "model": "served",
                     "choices": [{**choice, "index": 0, "finish_reason": "stop" if last else None}]}
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()
        if srv.usage and (body.get("stream_options") or {}).get("include_usage"):
            event = {"id": "x", "object": "chunk", "created": 1, "model": "served", "choices": [],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture()
def sse():  # noqa: ANN201
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _SSE)
    srv.daemon_threads = True
    srv.lock, srv.bodies, srv.statuses, srv.usage = threading.Lock(), [], [], True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()


def _stream_http(lm, request: LMRequest) -> list:  # noqa: ANN001
    async def go():
        try:
            return [item async for item in lm.stream(request)]
        finally:
            closer = getattr(lm, "aclose", None)
            if closer is not None:
                await closer()
    return asyncio.run(go())


@pytest.mark.parametrize("chat", [True, False])
def test_openai_server_streams_server_sent_events(sse, chat: bool) -> None:  # noqa: ANN001
    pytest.importorskip("aiohttp")
    from lmgraph.lm.openai_http import OpenAIServerLM

    lm = OpenAIServerLM(sse.base_url, "m")
    req = LMRequest(messages=(Message(role="user", content="hi"),)) if chat else LMRequest(prompt="hi")
    items = _stream_http(lm, req)
    assert items[:-1] == word_chunks(REPLY) and streams(lm)
    final = items[-1]
    assert final.text == REPLY and final.usage == Usage(prompt_tokens=5, completion_tokens=4)
    assert final.finish_reason == "stop" and final.model == "served"
    assert sse.bodies[0]["stream"] is True and sse.bodies[0]["stream_options"] == {"include_usage": True}
    sse.usage = False  # a server that reports no usage: one token per content event
    assert _stream_http(lm, req)[-1].usage == Usage(prompt_tokens=0, completion_tokens=len(word_chunks(REPLY)))


def test_openai_server_stream_errors_and_unnegotiated_schemas(sse) -> None:  # noqa: ANN001
    pytest.importorskip("aiohttp")
    from lmgraph.lm.openai_http import OpenAIServerLM

    lm = OpenAIServerLM(sse.base_url, "m")
    sse.statuses = [503]
    with pytest.raises(LMError, match="HTTP 503") as info:
        _stream_http(lm, LMRequest(prompt="hi"))
    assert info.value.retryable is not False and info.value.status == 503
    # through the stack: retried (before any delta) and answered
    sse.statuses = [503]
    stack = build_stack(OpenAIServerLM(sse.base_url, "m"), retry_attempts=lg.RetryPolicy(attempts=2, initial_wait=0))
    assert _stream_http(stack, LMRequest(prompt="hi"))[-1].text == REPLY
    # a schema before the JSON mode is known: answered by complete() (negotiation), not streamed
    n = len(sse.bodies)
    items = _stream_http(lm, LMRequest(prompt="hi", json_schema={"type": "object"}))
    assert items == [REPLY, items[-1]] and "stream" not in sse.bodies[n]


def test_litellm_streams_through_an_openai_compatible_server(sse) -> None:  # noqa: ANN001
    pytest.importorskip("litellm")
    from lmgraph.lm.litellm import openai_compatible

    lm = openai_compatible(sse.base_url, "m", rate_limit=False)
    for req in (LMRequest(messages=(Message(role="user", content="hi"),)), LMRequest(prompt="hi")):
        items = _stream_http(lm, req)
        assert "".join(items[:-1]) == REPLY and len(items) > 2 and streams(lm)
        assert items[-1].text == REPLY and items[-1].usage.completion_tokens == 4
        assert sse.bodies[-1]["stream"] is True


# ------------------------------------------------------------------------------ the embedded model

@pytest.mark.integration
def test_program_stream_yields_token_deltas_from_the_embedded_model() -> None:
    pytest.importorskip("llama_cpp")
    from lmgraph.lm.llamacpp import LlamaCppLM

    lm = LlamaCppLM(n_instances=1)
    p = lg.Pipeline("qa")  # chat: zero-shot, SmolLM2 answers a completion prompt with nothing at all
    ans = p.add(lg.ChainOfThought("question -> answer", format="chat", max_tokens=64), "answer",
                question=p.input("question"))
    p.output(answer=ans.answer)
    evs = events(p.build(), lg.RunContext(lm=lm, cache=False), question="What is the capital of France?")
    deltas = [e for e in evs if isinstance(e, TokenDelta)]
    assert len(deltas) >= 3 and all(e.node == "answer" for e in deltas)
    final = evs[-1]
    assert isinstance(final, Final)
    first = final.trace.node("answer").calls[0]
    reply = first.response.text
    assert reply and "".join(e.text for e in deltas if e.field == "reasoning") in reply
    # the stream's answer is the one complete() gives: text, tokens, finish reason
    done = asyncio.run(lm.complete(first.request))
    assert (done.text, done.usage, done.finish_reason) == (reply, first.response.usage, first.response.finish_reason)
