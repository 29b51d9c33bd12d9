"""LiteLLM against a real llama.cpp OpenAI-compatible server on 127.0.0.1 (no network)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.server,
    # litellm's own pydantic types warn on first use; not ours to fix
    pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning"),
]

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # never fetch litellm's price list

pytest.importorskip("llama_cpp")
pytest.importorskip("litellm")
for _mod in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
    pytest.importorskip(_mod)

from lmgraph.errors import DefinitionError, LMError  # noqa: E402
from lmgraph.lm.base import LM, LMRequest, Message  # noqa: E402
from lmgraph.lm.embedded import embedded_model_path  # noqa: E402
from lmgraph.lm.litellm import LiteLLM, openai_compatible  # noqa: E402
from lmgraph.lm.server import LlamaServer  # noqa: E402

try:
    embedded_model_path()
except DefinitionError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"embedded model not installed: {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def server():
    with LlamaServer(startup_timeout=120) as srv:
        yield srv
    assert not srv.running


def run(lm: LiteLLM, *requests: LMRequest):
    """Run requests concurrently on a fresh event loop; close litellm's clients after."""
    async def go():
        try:
            return await asyncio.gather(*(lm.complete(r) for r in requests))
        finally:
            await lm.aclose()

    return asyncio.run(go())


def chat(text: str) -> tuple[Message, ...]:
    return (Message(role="user", content=text),)


def free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


def test_server_is_loopback(server):
    assert server.running
    assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")


def test_chat_roundtrip_and_determinism(server):
    lm = server.litellm()
    assert isinstance(lm, LM)
    req = LMRequest(messages=chat("What is the capital of France?"), max_tokens=24)
    (first,) = run(lm, req)
    assert first.text.strip()
    assert first.usage.prompt_tokens > 0 and 0 < first.usage.completion_tokens <= 24
    assert first.finish_reason in ("stop", "length")
    assert first.cost is None  # a local model has no price
    again = run(lm, req, req)
    assert [r.text for r in again] == [first.text, first.text]


def test_completion_roundtrip_stop_and_max_tokens(server):
    lm = openai_compatible(server.base_url)
    free, cut, short = run(
        lm,
        LMRequest(prompt="1, 2, 3, 4, 5,", max_tokens=16),
        LMRequest(prompt="1, 2, 3, 4, 5,", max_tokens=16, stop=(" 8",)),
        LMRequest(prompt="Write a long story about a dragon:", max_tokens=4),
    )
    assert " 8" in free.text and " 8" not in cut.text and free.text.startswith(cut.text)
    assert short.usage.completion_tokens <= 4 and short.finish_reason == "length"
    (free2,) = run(lm, LMRequest(prompt="1, 2, 3, 4, 5,", max_tokens=16))
    assert free2.text == free.text


def test_json_schema_through_server(server):
    schema = {"type": "object",
              "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    (r,) = run(server.litellm(), LMRequest(messages=chat("Describe a city as JSON."),
                                           json_schema=schema, max_tokens=48))
    data = json.loads(r.text)
    assert {"city", "population"} <= set(data)


# Prompts whose greedy answer llama-cpp-python's server changes with its default repeat_penalty
# of 1.1 (measured: both differ from the in-process answer without SAMPLING_PARITY).
PARITY_REQUESTS = (
    LMRequest(prompt="The three primary colors are", max_tokens=16),
    LMRequest(prompt="apple banana apple banana apple banana apple", max_tokens=16),
    LMRequest(messages=chat("List the numbers one to ten, separated by commas."), max_tokens=40),
)


def test_matches_in_process_backend(server):
    """The server's clients decode exactly as the in-process backend: plain greedy at temperature 0."""
    from lmgraph.lm.llamacpp import LlamaCppLM

    with LlamaCppLM() as local:
        in_process = [asyncio.run(local.complete(r)).text for r in PARITY_REQUESTS]
    assert [r.text for r in run(server.litellm(), *PARITY_REQUESTS)] == in_process
    if importlib.util.find_spec("aiohttp") is not None:
        assert [r.text for r in run(server.client(), *PARITY_REQUESTS)] == in_process
    # without the parity settings the server's own defaults (repeat_penalty 1.1) change the answers:
    # the check above can fail
    plain = run(openai_compatible(server.base_url), *PARITY_REQUESTS)
    assert [r.text for r in plain] != in_process


def test_lean_http_client_matches_litellm_on_the_same_server(server):
    """OpenAIServerLM (aiohttp) and LiteLLM send the same request the same way: same greedy text."""
    pytest.importorskip("aiohttp")
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    reqs = (LMRequest(messages=chat("What is the capital of France?"), max_tokens=24),
            LMRequest(prompt="1, 2, 3, 4, 5,", max_tokens=12, stop=(" 9",)),
            LMRequest(messages=chat("Name a city as JSON."), json_schema=schema, max_tokens=32))
    client = server.client()
    lean = run(client, *reqs)
    via_litellm = run(server.litellm(), *reqs)
    assert [r.text for r in lean] == [r.text for r in via_litellm]
    assert [r.usage for r in lean] == [r.usage for r in via_litellm]
    assert "city" in json.loads(lean[2].text)
    assert [r.text for r in run(client, *reqs)] == [r.text for r in lean]  # deterministic


def test_closed_port_raises_lm_error():
    lm = openai_compatible(f"http://127.0.0.1:{free_closed_port()}/v1", timeout=10)
    for req in (LMRequest(prompt="hi", max_tokens=2), LMRequest(messages=chat("hi"), max_tokens=2)):
        with pytest.raises(LMError, match="could not connect") as info:
            run(lm, req)
        assert info.value.__cause__ is not None
        assert info.value.retryable is True


def test_timeout_raises_lm_error(server):
    lm = openai_compatible(server.base_url, timeout=0.01)
    with pytest.raises(LMError, match="timed out"):
        run(lm, LMRequest(prompt="Write a long story:", max_tokens=200))


def test_identity_has_no_api_key(server):
    lm = LiteLLM("openai/local", api_base=server.base_url, api_key="sk-secret-123")
    ident = lm.identity()
    assert ident == {"backend": "litellm", "model": "openai/local", "api_base": server.base_url}
    assert "sk-secret-123" not in json.dumps(ident) and "sk-secret-123" not in repr(lm)
    assert "sk-local" not in json.dumps(openai_compatible(server.base_url).identity())


def test_server_refuses_non_loopback_host():
    with pytest.raises(DefinitionError, match="loopback"):
        LlamaServer(host="0.0.0.0")
    with pytest.raises(DefinitionError, match="loopback"):
        LlamaServer(host="10.1.2.3")
    LlamaServer(host="::1")  # loopback IPv6 is fine (not started)


def test_module_cli_serves_until_terminated():
    import subprocess
    import sys
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "lmgraph.lm.server"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url + "/models", timeout=10) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with pytest.raises(OSError):
        opener.open(url + "/models", timeout=2)  # the child server went down with it


def test_default_clients_negotiate_the_json_mode_of_the_real_server(server):
    """issue 19: with defaults (no json_mode), a Literal output the embedded model misses goes to a
    JSON repair call; llama-cpp-python's server rejects OpenAI's json_schema response_format with
    HTTP 500, and both clients fall back to json_object once, remember it, and answer."""
    pytest.importorskip("aiohttp")
    import lmgraph as lg
    from lmgraph.lm.capabilities import forget_json_modes
    from lmgraph.lm.openai_http import OpenAIServerLM

    forget_json_modes()
    p = lg.Pipeline("odd_labels")
    # two tokens cut the free answer short (measured: 'The film'), so it cannot be read and a repair
    # call with the output schema (an enum of the two labels) must follow
    n = p.add(lg.Predict("sentence -> code: Literal['zqx-alpha', 'zqx-omega']", format="chat", max_tokens=2),
              name="clf", sentence=p.input("sentence"))
    p.output(code=n.code)
    prog = p.build()
    lm = OpenAIServerLM(server.base_url)
    try:
        pred = prog.run_sync(lg.RunContext(lm=lm, cache=False), sentence="The film was wonderful.")
        calls = pred.trace.node("clf").calls
        assert pred.code in ("zqx-alpha", "zqx-omega")
        assert [c.request.json_schema is not None for c in calls] == [False, True]  # answer, repair
        assert all(c.error is None for c in calls)  # the rejected attempt is no call of the trace
        assert lm.negotiation_failures == 1 and lm.json_mode == "json_object"
        pred2 = prog.run_sync(lg.RunContext(lm=lm, cache=False), sentence="A dull, slow film.")
        assert pred2.code in ("zqx-alpha", "zqx-omega") and lm.negotiation_failures == 1  # remembered
    finally:
        lm.close()
    forget_json_modes()
    via_litellm = openai_compatible(server.base_url)
    schema = {"type": "object", "properties": {"code": {"type": "string", "enum": ["zqx-alpha", "zqx-omega"]}},
              "required": ["code"]}
    (r,) = run(via_litellm, LMRequest(messages=chat("Pick a code."), json_schema=schema, max_tokens=24))
    assert json.loads(r.text)["code"] in ("zqx-alpha", "zqx-omega")
    assert via_litellm.negotiation_failures == 1 and via_litellm.json_mode == "json_object"
