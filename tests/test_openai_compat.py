"""The shared OpenAI-shaped request/response code (lmgraph.lm.openai_compat) and the three backends
that use it: the lean HTTP client, litellm and llama-cpp-python in process. No network."""

from __future__ import annotations

import ast
import asyncio
import json
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lmgraph.errors import LMError
from lmgraph.lm.base import LMRequest, LMResponse, Message, Usage
from lmgraph.lm.openai_compat import (
    MalformedResponse,
    endpoint_path,
    error_text,
    input_fields,
    json_mode_fields,
    logprob_fields,
    normalise_logprobs,
    parse_completion,
    parse_usage,
    request_body,
    sampling_fields,
    schema_in_prompt,
    stream_delta,
)

SCHEMA = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}, "required": ["b", "a"]}
LM_DIR = Path(__file__).resolve().parents[1] / "lmgraph" / "lm"


def chat(**kw) -> LMRequest:  # noqa: ANN003
    return LMRequest(messages=(Message(role="system", content="be brief"), Message(role="user", content="hi é")), **kw)


def raw(**kw) -> LMRequest:  # noqa: ANN003
    return LMRequest(prompt="Q: é?\nA:", **kw)


# ---------------------------------------------------------------- request bodies

def test_chat_body_in_json_schema_mode_is_pinned_byte_for_byte() -> None:
    """The body the HTTP client sends, field order included (what the wire carried before the
    request code was shared)."""
    req = chat(temperature=0.7, max_tokens=17, stop=("\n", "Q:"), seed=3, rollout=1, top_p=0.9,
               json_schema=SCHEMA, logprobs=True)
    body = request_body(req, model="m", mode="json_schema", top_logprobs=4)
    assert json.dumps(body, ensure_ascii=False) == (
        '{"model": "m", "temperature": 0.7, "max_tokens": 17, "top_p": 0.9, "seed": 3000010, '
        '"stop": ["\\n", "Q:"], "response_format": {"type": "json_schema", "json_schema": {"name": "output", '
        '"schema": {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}, '
        '"required": ["b", "a"]}}}, "messages": [{"role": "system", "content": "be brief"}, '
        '{"role": "user", "content": "hi é"}], "logprobs": true, "top_logprobs": 4}')
    assert endpoint_path(req) == "/chat/completions"


def test_completion_body_in_json_object_mode_with_extra_overrides() -> None:
    req = raw(max_tokens=5, json_schema=SCHEMA, logprobs=True)
    body = request_body(req, model="m", mode="json_object", top_logprobs=5, extra={"top_p": 0.5, "top_k": 1})
    assert list(body) == ["model", "temperature", "max_tokens", "top_p", "seed", "response_format", "prompt",
                          "logprobs", "top_k"]
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert body["logprobs"] == 5 and body["prompt"] == "Q: é?\nA:" and body["top_p"] == 0.5
    assert "stop" not in body and endpoint_path(req) == "/completions"


def test_mode_none_sends_no_response_format_and_puts_the_schema_in_the_prompt() -> None:
    for req in (chat(json_schema=SCHEMA), raw(json_schema=SCHEMA)):
        sent = schema_in_prompt(req)
        body = request_body(sent, model="m", mode="none", top_logprobs=5)
        assert "response_format" not in body and json_mode_fields(req, "none") == {}
        text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        assert '{"type":"object","properties":{"b":{"type":"string"}' in text
    assert schema_in_prompt(raw(json_schema=SCHEMA)).prompt.endswith("\n\nQ: é?\nA:")  # the cue stays last


def test_fields_without_schema_logprobs_or_stop() -> None:
    req = chat(temperature=0.0, max_tokens=3)
    assert json_mode_fields(req, "json_schema") == {} and json_mode_fields(chat(json_schema=SCHEMA), None) == {}
    assert logprob_fields(req, 5) == {} and "stop" not in sampling_fields(req)
    assert logprob_fields(chat(logprobs=True), 3) == {"logprobs": True, "top_logprobs": 3}
    assert logprob_fields(raw(logprobs=True), 3) == {"logprobs": 3}
    assert input_fields(raw()) == {"prompt": "Q: é?\nA:"}
    assert sampling_fields(req) == {"temperature": 0.0, "max_tokens": 3, "top_p": 1.0, "seed": req.sampling_seed}


def test_the_three_backends_send_the_shared_fields() -> None:
    """The HTTP body, litellm's keyword arguments and llama-cpp-python's arguments carry the same
    OpenAI fields for one request (they come from one place)."""
    from lmgraph.lm.litellm import LiteLLM
    from lmgraph.lm.openai_http import OpenAIServerLM

    for req in (chat(stop=("\n",), logprobs=True, json_schema=SCHEMA, temperature=0.3), raw(logprobs=True)):
        url, body = OpenAIServerLM("http://127.0.0.1:9/v1", "m", json_mode="json_object", top_logprobs=3,
                                   rate_limit=False)._body(req, "json_object")
        kwargs = LiteLLM("openai/m", api_base="http://127.0.0.1:9/v1", json_mode="json_object", top_logprobs=3,
                         rate_limit=False)._kwargs(req, "json_object")
        assert url.endswith(endpoint_path(req))
        shared = {**sampling_fields(req), **json_mode_fields(req, "json_object"), **logprob_fields(req, 3)}
        assert {k: body[k] for k in shared} == shared == {k: kwargs[k] for k in shared}
        assert {k: body[k] for k in input_fields(req)} == input_fields(req)


# ---------------------------------------------------------------- responses

CHAT_ANSWER = {"model": "served", "usage": {"prompt_tokens": 7, "completion_tokens": 3},
               "choices": [{"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop",
                            "logprobs": {"content": [{"token": "hel", "logprob": -0.5,
                                                      "top_logprobs": [{"token": "hel", "logprob": -0.5},
                                                                       {"token": "he", "logprob": -1}]}]}}]}
TEXT_ANSWER = {"choices": [{"text": " done", "finish_reason": "length",
                            "logprobs": {"tokens": [" done", "!"], "token_logprobs": [-0.1, None],
                                         "top_logprobs": [{" done": -0.1}, None]}}]}


def test_parse_chat_and_completion() -> None:
    r = parse_completion(CHAT_ANSWER, chat(logprobs=True), model="m", latency_s=1.5)
    assert (r.text, r.finish_reason, r.model, r.latency_s) == ("hello", "stop", "m", 1.5)
    assert r.usage == Usage(prompt_tokens=7, completion_tokens=3)
    assert r.logprobs == [{"token": "hel", "logprob": -0.5, "top": {"hel": -0.5, "he": -1.0}}]
    assert parse_completion(CHAT_ANSWER, chat(), model="m", reported_model=True).model == "served"
    assert parse_completion(CHAT_ANSWER, chat(), model="m").logprobs is None  # not asked: not read
    t = parse_completion(TEXT_ANSWER, raw(logprobs=True), model="m", reported_model=True, cost=0.25)
    assert (t.text, t.finish_reason, t.model, t.cost) == (" done", "length", "m", 0.25)
    assert t.usage == Usage()  # no usage reported: zero, not an error
    assert t.logprobs == [{"token": " done", "logprob": -0.1, "top": {" done": -0.1}},
                          {"token": "!", "logprob": None, "top": {}}]


def test_parse_reads_objects_like_dicts() -> None:
    """litellm hands back pydantic objects: attribute access reads them the same way."""
    def obj(x):  # noqa: ANN001, ANN202
        if isinstance(x, dict):
            return types.SimpleNamespace(**{k: obj(v) for k, v in x.items()})
        return [obj(v) for v in x] if isinstance(x, list) else x

    answer = {**CHAT_ANSWER, "usage": {"prompt_tokens": 7, "completion_tokens": 3,
                                       "prompt_tokens_details": {"cached_tokens": 4}}}
    from_dict = parse_completion(answer, chat(), model="m", reported_model=True)
    from_obj = parse_completion(obj(answer), chat(), model="m", reported_model=True)
    assert from_dict == from_obj and from_obj.usage.cached_tokens == 4


def test_usage_cached_tokens_and_odd_counts() -> None:
    assert parse_usage(None) == parse_usage({}) == Usage()
    assert parse_usage({"prompt_tokens": "12", "completion_tokens": 3.0}) == Usage(prompt_tokens=12,
                                                                                   completion_tokens=3)
    u = parse_usage({"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 8}})
    assert (u.cached_tokens, u.total_tokens) == (8, 12) and (u + u).cached_tokens == 16
    # the details are informational: an odd value there never fails a completion
    assert parse_usage({"prompt_tokens": 1, "prompt_tokens_details": "n/a"}).cached_tokens == 0
    assert parse_usage({"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": None}}).cached_tokens == 0
    # lmgraph's own cache stores what it always stored: a replay has no provider cache hit
    assert "cached_tokens" not in json.dumps(LMResponse(text="x", usage=u).to_dict())


@pytest.mark.parametrize("data, why", [
    ({}, "no choices"), ({"choices": []}, "no choices"), ({"choices": None}, "no choices"), ([], "no choices"),
    ("<html>", "no choices"), (None, "no choices"),
    ({"choices": {"0": {}}}, "not a list"), ({"choices": ["x"]}, "choice that is not an object"),
    ({"choices": [None]}, "choice that is not an object"),
    ({"choices": [{"message": "hi"}]}, "message that is not an object"),
    ({"choices": [{"message": {"content": "x"}}], "usage": [1]}, "usage that is not an object"),
    ({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}}, "not a token count"),
])
def test_what_is_not_a_completion_raises_malformed_response(data, why) -> None:  # noqa: ANN001
    with pytest.raises(MalformedResponse, match=why):
        parse_completion(data, chat(), model="m")


def test_unreadable_logprobs_are_malformed_only_when_asked_for() -> None:
    bad = {"choices": [{"text": "t", "logprobs": {"content": [{"token": "a", "top_logprobs": [{"token": "b"}]}]}}]}
    with pytest.raises(MalformedResponse, match="unreadable completion"):
        parse_completion(bad, raw(logprobs=True), model="m")
    assert parse_completion(bad, raw(), model="m").text == "t"
    assert normalise_logprobs(None) is None and normalise_logprobs({}) is None


def test_lenient_where_the_old_parsers_were() -> None:
    """Empty or missing pieces read as empty, as before: no message, no content, no finish reason."""
    for choice in ({}, {"message": None}, {"message": {}}, {"message": {"content": None}}, {"message": ""}):
        r = parse_completion({"choices": [choice]}, chat(), model="m")
        assert (r.text, r.finish_reason, r.usage) == ("", None, Usage())
    assert parse_completion({"choices": [{"text": None}]}, raw(), model="m").text == ""


def test_stream_delta_and_error_text() -> None:
    assert stream_delta({"delta": {"content": "ab"}}, chat()) == "ab"
    assert stream_delta({"delta": None}, chat()) is None and stream_delta({}, chat()) is None
    assert stream_delta({"text": "c"}, raw()) == "c"
    with pytest.raises(MalformedResponse):
        stream_delta({"delta": "ab"}, chat())
    assert error_text(b'{"error": {"message": "bad response_format"}}') == "bad response_format"
    assert error_text(b'{"detail": "x"}') == "{'detail': 'x'}" and error_text(b"<html>") == "<html>"


# ---------------------------------------------------------------- the backends' typed errors

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # noqa: ANN002
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        payload = self.server.answers.pop(0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads, srv.answers = True, []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_client_turns_odd_200s_into_its_retryable_error(server) -> None:  # noqa: ANN001
    pytest.importorskip("aiohttp")
    from lmgraph.lm.openai_http import OpenAIServerLM

    odd = [b'{"choices": []}', b'{"choices": [{"message": "x"}]}', b"[1, 2]", b'{"choices": [{"text": "t"}],',
           b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "lots"}}']
    good = json.dumps({**CHAT_ANSWER, "usage": {**CHAT_ANSWER["usage"],
                                                "prompt_tokens_details": {"cached_tokens": 5}}}).encode()
    server.answers.extend([*odd, good])
    lm = OpenAIServerLM(server.base_url, "m", rate_limit=False)

    async def go():  # noqa: ANN202
        out = []
        try:
            for _ in odd:
                with pytest.raises(LMError, match="returned no completion") as ei:
                    await lm.complete(chat())
                out.append(ei.value)
            out.append(await lm.complete(chat()))
        finally:
            await lm.aclose()
        return out

    *errors, ok = asyncio.run(go())
    assert all(e.retryable is True and e.status == 200 for e in errors)
    assert ok.text == "hello" and ok.model == "served" and ok.usage.cached_tokens == 5


def test_litellm_turns_an_answer_without_choices_into_an_lm_error() -> None:
    from lmgraph.lm.litellm import LiteLLM

    lm = LiteLLM("openai/x")
    fake = types.SimpleNamespace(completion_cost=lambda **kw: 0.0)
    with pytest.raises(LMError, match=r"^openai/x returned no choices\.$"):
        lm._to_response(types.SimpleNamespace(choices=[]), chat(), 0.1, fake)
    with pytest.raises(LMError, match="returned usage.prompt_tokens is 'x', not a token count"):
        lm._to_response({"choices": [{"text": "t"}], "usage": {"prompt_tokens": "x"}}, raw(), 0.1, fake)
    ok = lm._to_response({"model": "served", **TEXT_ANSWER}, raw(logprobs=True), 0.1, fake)
    assert ok.model == "served" and ok.logprobs[0]["token"] == " done" and ok.cost == 0.0


def test_llamacpp_turns_an_odd_answer_into_an_lm_error() -> None:
    from lmgraph.errors import DefinitionError
    from lmgraph.lm.llamacpp import LlamaCppLM

    try:
        lm = LlamaCppLM()  # loads nothing until a call
    except DefinitionError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"embedded model not installed: {exc}")
    with pytest.raises(LMError, match="llama.cpp returned no choices") as ei:
        lm._to_response({"choices": []}, raw())
    assert ei.value.retryable is False
    assert lm._to_response(TEXT_ANSWER, raw()).model == lm.identity()["model"]  # its own name, not the answer's


# ---------------------------------------------------------------- module boundaries

def test_no_private_names_are_imported_across_lm_modules() -> None:
    """Inside lmgraph/lm/, a module uses another's public names only (``from .x import _y`` hides
    a dependency the owner of ``x`` cannot see)."""
    offenders = []
    for path in sorted(LM_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                offenders += [f"{path.name}:{node.lineno} imports {a.name} from {'.' * node.level}{node.module or ''}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, "\n".join(offenders)


def test_backends_parse_through_the_shared_module() -> None:
    """The OpenAI shapes are read in one place: no backend indexes ``choices`` of a whole answer itself."""
    for name in ("openai_http.py", "litellm.py", "llamacpp.py"):
        text = (LM_DIR / name).read_text(encoding="utf-8")
        assert '["choices"][0]' not in text and '"completion_tokens"' not in text, name
        assert "from .openai_compat import" in text, name
