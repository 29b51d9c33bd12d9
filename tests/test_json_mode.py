"""JSON-mode negotiation with OpenAI-compatible servers, and credentials kept out of every text.

A scripted loopback server (stdlib, 127.0.0.1) plays llama-cpp-python's server: it takes
``response_format`` only as ``{"type": "json_object", "schema": ...}`` and answers a
``json_schema`` one with HTTP 500 naming ``response_format``, as the real one does.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import socket
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("aiohttp")

import lmgraph as lg
from lmgraph import cli
from lmgraph.errors import DefinitionError, LMError
from lmgraph.lm.base import LMRequest, Message
from lmgraph.lm.capabilities import JSON_MODES, Capabilities, forget_json_modes, remembered_json_mode
from lmgraph.lm.credentials import redact_url
from lmgraph.lm.openai_http import OpenAIServerLM
from lmgraph.lm.wrappers import Budget, BudgetLM, BudgetMeter

# llama-cpp-python's server's answer to {"type": "json_schema", ...} (pydantic's message)
REJECTION = {"error": {"message": "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n"
                                  "  Input should be 'text' or 'json_object' [type=literal_error, "
                                  "input_value='json_schema', input_type=str]", "type": "internal_server_error"}}
SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["negative", "positive"]}},
          "required": ["label"]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # noqa: ANN002
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        fmt = (body.get("response_format") or {}).get("type")
        with srv.lock:
            srv.log.append({"path": self.path, "body": body, "format": fmt,
                            "auth": self.headers.get("Authorization")})
            scripted = srv.script.pop(0) if srv.script else None
        if scripted is not None:
            status, payload = scripted
        elif fmt is not None and fmt not in srv.accept and (srv.strict_completions or "messages" in body):
            # llama-cpp-python's /completions ignores response_format; its /chat/completions checks it
            status, payload = 500, REJECTION
        else:
            status, payload = 200, srv.answer(body, fmt)
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def _answer(body: dict, fmt: str | None) -> dict:
    """JSON when a schema was asked for (in response_format, or in the prompt: mode 'none'),
    else a reply that names no label (so a Literal output needs a repair call)."""
    asked = fmt is not None or "JSON schema" in json.dumps(body)
    text = '{"label": "positive"}' if asked else "Hmm, hard to say."
    usage = {"prompt_tokens": 5, "completion_tokens": 4}
    if "messages" in body:
        return {"model": "served", "usage": usage,
                "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    return {"model": "served", "usage": usage, "choices": [{"text": text, "finish_reason": "stop"}]}


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.log, srv.script, srv.accept, srv.answer = [], [], {"json_object"}, _answer
    srv.strict_completions = False
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.formats = lambda: [e["format"] for e in srv.log]
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _fresh_negotiation(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    forget_json_modes()
    yield
    forget_json_modes()


def run(lm, *requests: LMRequest):  # noqa: ANN001
    """Send ``requests`` concurrently on a fresh loop, then close the client's pools."""
    async def go():
        try:
            return await asyncio.gather(*(lm.complete(r) for r in requests))
        finally:
            await lm.aclose()

    return asyncio.run(go())


def json_req(text: str = "Is it good?", **kw) -> LMRequest:  # noqa: ANN003
    return LMRequest(messages=(Message(role="user", content=text),), json_schema=SCHEMA, **kw)


# ------------------------------------------------------------------ negotiation, lean client

def test_lean_client_negotiates_remembers_and_never_fails_twice(server) -> None:
    lm = OpenAIServerLM(server.base_url)
    assert lm.json_mode == "auto" and lm.capabilities.json_mode is None
    assert lm.capabilities.json_modes == JSON_MODES
    (first,) = run(lm, json_req())
    assert json.loads(first.text) == {"label": "positive"}
    assert server.formats() == ["json_schema", "json_object"]  # one rejected attempt, then the answer
    assert server.log[1]["body"]["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert lm.negotiation_failures == 1 and lm.json_mode == "json_object"
    assert lm.capabilities == Capabilities(json_modes=("json_object", "none"), json_mode="json_object",
                                           logprobs=True, scoring=False, streaming=True)
    run(lm, json_req("again"))
    assert server.formats()[2:] == ["json_object"]  # no failed attempt any more
    assert remembered_json_mode(server.base_url, "local") == "json_object"
    other = OpenAIServerLM(server.base_url)  # a new client of the same endpoint starts from it
    run(other, json_req("third"))
    assert server.formats()[3:] == ["json_object"] and other.negotiation_failures == 0
    # raw prompts go to /completions, negotiated on their own (llama-cpp-python's ignores the field)
    run(lm, LMRequest(prompt="Q:", json_schema=SCHEMA), LMRequest(prompt="Q2:", json_schema=SCHEMA))
    assert server.formats()[4:] == ["json_schema", "json_schema"]
    assert lm.negotiated_json_modes == {"chat": "json_object", "completion": "json_schema"}
    run(lm, json_req("chat is unchanged"))
    assert server.formats()[6:] == ["json_object"] and lm.negotiation_failures == 1
    assert lm.identity() == other.identity() == {"backend": "openai-http", "model": "local",
                                                 "api_base": server.base_url}


def test_concurrent_first_requests_negotiate_once(server) -> None:
    lm = OpenAIServerLM(server.base_url)
    answers = run(lm, *(json_req(f"q{i}") for i in range(8)))
    assert all(json.loads(a.text) == {"label": "positive"} for a in answers)
    assert server.formats().count("json_schema") == 1 and len(server.log) == 9
    assert lm.negotiation_failures == 1


def test_requests_without_schema_do_not_negotiate(server) -> None:
    lm = OpenAIServerLM(server.base_url)
    (r,) = run(lm, LMRequest(messages=(Message(role="user", content="hi"),)))
    assert r.text == "Hmm, hard to say." and server.formats() == [None]
    assert lm.capabilities.json_mode is None and lm.negotiation_failures == 0


def test_a_server_without_response_format_gets_the_schema_in_the_prompt(server) -> None:
    server.accept, server.strict_completions = set(), True  # rejects json_schema and json_object alike
    lm = OpenAIServerLM(server.base_url)
    (chat_answer,) = run(lm, json_req("Rate it."))
    (completion_answer,) = run(lm, LMRequest(prompt="Answer:", json_schema=SCHEMA))
    assert server.formats() == ["json_schema", "json_object", None, "json_schema", "json_object", None]
    assert lm.json_mode == "none" and lm.negotiation_failures == 4
    sent = server.log[2]["body"]["messages"][-1]["content"]
    assert "response_format" not in server.log[2]["body"]
    assert sent.startswith("Rate it.\n\n") and json.dumps(SCHEMA, separators=(",", ":")) in sent
    prompt = server.log[5]["body"]["prompt"]
    assert prompt.endswith("\n\nAnswer:") and "JSON schema" in prompt  # the cue stays last
    assert json.loads(chat_answer.text) == json.loads(completion_answer.text) == {"label": "positive"}


def test_explicit_json_mode_skips_negotiation(server) -> None:
    lm = OpenAIServerLM(server.base_url, json_mode="json_schema")
    with pytest.raises(LMError, match=r"(?s)HTTP 500: .*response_format.*rejected json_mode='json_schema'.*"
                                      r"'json_object'") as info:
        run(lm, json_req())
    assert info.value.retryable is False  # resending the same body cannot help
    assert server.formats() == ["json_schema"] and remembered_json_mode(server.base_url, "local") is None
    fixed = OpenAIServerLM(server.base_url, json_mode="json_object")
    run(fixed, json_req())
    assert server.formats()[1:] == ["json_object"] and fixed.negotiation_failures == 0
    none = OpenAIServerLM(server.base_url, json_mode="none")
    run(none, json_req())
    assert server.formats()[2:] == [None] and none.capabilities.json_modes == ("none",)


def test_other_failures_during_negotiation_are_not_remembered(server) -> None:
    server.script.append((503, {"error": {"message": "loading model"}}))
    lm = OpenAIServerLM(server.base_url)
    with pytest.raises(LMError, match="HTTP 503: loading model") as info:
        run(lm, json_req())
    assert info.value.retryable is True and lm.capabilities.json_mode is None
    assert remembered_json_mode(server.base_url, "local") is None and lm.negotiation_failures == 0
    run(lm, json_req())
    assert server.formats() == ["json_schema", "json_schema", "json_object"]


def test_the_budget_counts_one_call_for_a_negotiated_request(server) -> None:
    """The rejected attempt happens inside one complete(): a Budget counts the logical call once."""
    lm = OpenAIServerLM(server.base_url)
    meter = BudgetMeter(Budget(max_calls=5))
    run_with = BudgetLM(lm, meter)

    async def go():
        try:
            return await run_with.complete(json_req())
        finally:
            await lm.aclose()

    asyncio.run(go())
    assert meter.calls == 1 and len(server.log) == 2 and lm.negotiation_failures == 1


def test_literal_output_repair_runs_through_the_default_client(server) -> None:
    """The finding: a Literal output the model misses needs a JSON repair call, which failed with
    HTTP 500 against llama-cpp-python's server unless json_object was configured by hand."""
    p = lg.Pipeline("clf")
    n = p.add(lg.Predict("sentence -> sentiment: Literal['negative', 'positive']", format="chat"),
              name="clf", sentence=p.input("sentence"))
    p.output(label=n.sentiment)
    prog = p.build()
    lm = OpenAIServerLM(server.base_url)
    try:
        pred = prog.run_sync(lg.RunContext(lm=lm, cache=False), sentence="a fine film")
    finally:
        lm.close()
    assert pred.label == "positive"
    assert server.formats() == [None, "json_schema", "json_object"]  # answer, rejected repair, repair


def test_no_unclosed_session_warnings(server) -> None:
    gc.collect()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        lm = OpenAIServerLM(server.base_url)
        run(lm, json_req(), json_req("b"))
        assert asyncio.run(OpenAIServerLM(server.base_url).complete(json_req("c"))).text
        del lm
        gc.collect()
    assert not [w for w in seen if "Unclosed" in str(w.message)]


def test_bad_json_mode_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="json_mode must be one of auto, json_schema, json_object, none"):
        OpenAIServerLM("http://127.0.0.1:1/v1", json_mode="grammar")
    with pytest.raises(DefinitionError, match="needs an http"):
        OpenAIServerLM("http://[::1/v1")


# ------------------------------------------------------------------ the command line

def test_cli_json_mode_option_reaches_the_client(server, tmp_path) -> None:
    for command in (["run", "p.json", "--input", "sentence=x"],
                    ["eval", "p.json", "--data", "d.jsonl", "--metric", "accuracy"],
                    ["compile", "p.json", "--train", "t.jsonl", "--out", "a.json", "--metric", "accuracy",
                     "--optimizer", "labeled"]):
        args = cli.build_parser().parse_args([*command, "--model", "http:" + server.base_url,
                                              "--json-mode", "json_object"])
        assert args.json_mode == "json_object"
        lm = cli.make_ctx(args).lm
        assert isinstance(lm, OpenAIServerLM) and lm.json_mode == "json_object" and lm._json.explicit
    args = cli.build_parser().parse_args(["eval", "p.json", "--data", "d.jsonl", "--metric", "accuracy",
                                          "--model", "http:" + server.base_url])
    assert args.json_mode == "auto" and cli.make_ctx(args).lm.json_mode == "auto"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["eval", "p.json", "--data", "d.jsonl", "--metric", "accuracy",
                                       "--json-mode", "grammar"])
    with pytest.raises(DefinitionError, match="applies to HTTP models only"):
        cli.make_lm("embedded", json_mode="json_object")


def test_cli_run_negotiates_with_the_server(server, tmp_path, capsys) -> None:
    p = lg.Pipeline("clf")
    n = p.add(lg.Predict("sentence -> sentiment: Literal['negative', 'positive']", format="chat"),
              name="clf", sentence=p.input("sentence"))
    p.output(label=n.sentiment)
    path = str(p.build().save(tmp_path / "p.json"))
    code = cli.main(["run", path, "--model", "http:" + server.base_url, "--no-cache",
                     "--input", "sentence=a fine film"])
    assert code == 0, capsys.readouterr()
    assert json.loads(capsys.readouterr().out)["label"] == "positive"
    assert server.formats() == [None, "json_schema", "json_object"]


# ------------------------------------------------------------------ credentials

SECRET = "sk-test-PLANTED-0123456789"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redact_url() -> None:
    assert redact_url("http://u:pw1234@h:1/v1?api_key=abcd&x=1") == "http://***@h:1/v1?api_key=***&x=1"
    assert redact_url("https://h/v1?token=t0k3n&sig=zzzz&model=m") == "https://h/v1?token=***&sig=***&model=m"
    assert redact_url("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"
    assert redact_url(None) is None


def _assert_clean(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and "PLANTED" not in text, text


def test_key_in_url_userinfo_is_sent_but_never_shown(server) -> None:
    host = server.base_url.split("//", 1)[1]
    lm = OpenAIServerLM(f"http://user:{SECRET}@{host}")
    run(lm, json_req())
    expected = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
    assert server.log[0]["auth"] == expected and server.log[0]["path"] == "/v1/chat/completions"
    server.script.append((401, {"error": {"message": f"bad key {SECRET} / {expected.split()[1]}"}}))
    with pytest.raises(LMError) as info:
        run(lm, json_req())
    _assert_clean(repr(lm), json.dumps(lm.identity()), lm.base_url, str(info.value),
                  repr(lg.RunContext(lm=lm, cache=False)))
    assert expected.split()[1] not in str(info.value) and "HTTP 401: bad key ***" in str(info.value)
    closed = OpenAIServerLM(f"http://user:{SECRET}@127.0.0.1:{_closed_port()}/v1")
    with pytest.raises(LMError, match="could not connect") as info:
        run(closed, json_req())
    _assert_clean(str(info.value), repr(info.value.__cause__))


def test_key_in_query_string_goes_with_every_request_and_is_redacted(server) -> None:
    lm = OpenAIServerLM(f"{server.base_url}?api_key={SECRET}")
    run(lm, json_req())
    run(lm, LMRequest(prompt="Q:"))
    assert [e["path"] for e in server.log] == [f"/v1/chat/completions?api_key={SECRET}",
                                               f"/v1/chat/completions?api_key={SECRET}",
                                               f"/v1/completions?api_key={SECRET}"]
    assert lm.identity()["api_base"] == server.base_url + "?api_key=***"
    server.script.append((400, {"error": {"message": f"echo {SECRET}"}}))
    with pytest.raises(LMError) as info:
        run(lm, LMRequest(prompt="Q:"))
    _assert_clean(repr(lm), json.dumps(lm.identity()), str(info.value))
    assert "/v1/completions" in str(info.value)


def test_api_key_argument_and_environment(server, monkeypatch) -> None:
    run(OpenAIServerLM(server.base_url, api_key=SECRET), LMRequest(prompt="Q:"))
    run(OpenAIServerLM(server.base_url), LMRequest(prompt="Q:"))  # nothing set: no header
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-1")
    run(OpenAIServerLM(server.base_url), LMRequest(prompt="Q:"))
    monkeypatch.setenv("MY_SERVER_KEY", "sk-from-named-env")
    lm = OpenAIServerLM(server.base_url, api_key_env="MY_SERVER_KEY")
    run(lm, LMRequest(prompt="Q:"))
    assert [e["auth"] for e in server.log] == [f"Bearer {SECRET}", None, "Bearer sk-from-env-1",
                                               "Bearer sk-from-named-env"]
    assert "sk-from" not in repr(lm) + json.dumps(lm.identity())
    with pytest.raises(DefinitionError, match="NOT_SET_ANYWHERE .*is not set"):
        OpenAIServerLM(server.base_url, api_key_env="NOT_SET_ANYWHERE")
    with pytest.raises(DefinitionError, match="credentials twice"):
        OpenAIServerLM("http://u:p@127.0.0.1:1/v1", api_key="k")


def test_cli_errors_do_not_show_a_key_in_the_model_spec() -> None:
    with pytest.raises(DefinitionError) as info:
        cli.make_lm(f"bogus:http://u:{SECRET}@h/v1")
    _assert_clean(str(info.value))


# ------------------------------------------------------------------ the litellm route

@pytest.fixture()
def litellm_ok():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    pytest.importorskip("litellm")
    warnings.filterwarnings("ignore", message=r".*using the `ReadOnly` qualifier", category=UserWarning)


def test_openai_compatible_negotiates_and_remembers(server, litellm_ok) -> None:
    from lmgraph.lm.litellm import openai_compatible

    lm = openai_compatible(server.base_url)
    (first,) = run(lm, json_req())
    assert json.loads(first.text) == {"label": "positive"}
    assert server.formats() == ["json_schema", "json_object"] and lm.negotiation_failures == 1
    assert lm.capabilities.json_mode == "json_object"
    run(lm, json_req("again"))
    assert server.formats()[2:] == ["json_object"]
    # the same server and model name: the lean client starts from what litellm's route found
    assert OpenAIServerLM(server.base_url).capabilities.json_modes == ("json_object", "none")
    explicit = openai_compatible(server.base_url, json_mode="json_schema")
    with pytest.raises(LMError, match="rejected json_mode='json_schema'") as info:
        run(explicit, json_req())
    assert info.value.retryable is False


def test_openai_compatible_credentials(server, litellm_ok, monkeypatch) -> None:
    from lmgraph.lm.litellm import LiteLLM, openai_compatible

    run(openai_compatible(server.base_url, api_key=SECRET), LMRequest(prompt="Q:"))
    run(openai_compatible(server.base_url), LMRequest(prompt="Q:"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-2")
    run(openai_compatible(server.base_url), LMRequest(prompt="Q:"))
    assert [e["auth"] for e in server.log] == [f"Bearer {SECRET}", "Bearer sk-local", "Bearer sk-from-env-2"]
    lm = openai_compatible(server.base_url, api_key=SECRET)
    server.script.append((401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}))
    with pytest.raises(LMError) as info:
        run(lm, LMRequest(prompt="Q:"))
    _assert_clean(str(info.value), repr(lm), json.dumps(lm.identity()))
    host = server.base_url.split("//", 1)[1]
    in_url = LiteLLM("openai/local", api_base=f"http://user:{SECRET}@{host}")
    _assert_clean(repr(in_url), json.dumps(in_url.identity()), str(in_url.api_base))
    # a transport failure whose text holds the URL (litellm's own refused-connection path leaves an
    # unclosed aiohttp session behind, so the failure is raised in its place here)
    import lmgraph.lm.litellm as backend

    async def refused(**kwargs):  # noqa: ANN003
        raise ConnectionError(f"Cannot connect to host {kwargs['api_base']} (user {SECRET})")

    monkeypatch.setattr(backend._import_litellm(), "atext_completion", refused)
    closed = openai_compatible(f"http://u:{SECRET}@127.0.0.1:{_closed_port()}/v1", timeout=5)
    with pytest.raises(LMError, match=r"could not connect to openai/local at http://\*\*\*@127") as info:
        run(closed, LMRequest(prompt="Q:"))
    _assert_clean(str(info.value))
    assert info.value.__cause__ is None  # its text held the secret


def test_litellm_route_refuses_a_query_string_it_cannot_send(litellm_ok) -> None:
    from lmgraph.lm.litellm import LiteLLM, openai_compatible

    for make in (lambda: LiteLLM("openai/local", api_base=f"http://127.0.0.1:1/v1?api_key={SECRET}"),
                 lambda: openai_compatible(f"http://127.0.0.1:1/v1?api_key={SECRET}")):
        with pytest.raises(DefinitionError, match="query string.*OpenAIServerLM") as info:
            make()
        _assert_clean(str(info.value))


def test_litellm_route_leaves_no_unclosed_session(server, litellm_ok) -> None:
    from lmgraph.lm.litellm import openai_compatible

    gc.collect()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        lm = openai_compatible(server.base_url)
        # one request at a time: litellm's shared aiohttp transport races when concurrent requests
        # find its session closed by an earlier loop's aclose() (two replacements, one never closed)
        for request in (json_req(), json_req("b"), LMRequest(prompt="Q:", json_schema=SCHEMA)):
            run(lm, request)
        host = server.base_url.split("//", 1)[1]
        run(openai_compatible(f"http://user:{SECRET}@{host}"), json_req("c"))
        del lm
        gc.collect()
    assert not [w for w in seen if "Unclosed" in str(w.message)]
    assert server.log[-1]["auth"] == "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
