"""The in-process llama.cpp backend against the real embedded SmolLM2 model."""

from __future__ import annotations

import asyncio
import json
import pathlib

import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("llama_cpp")

from lmgraph.errors import DefinitionError, LMError  # noqa: E402
from lmgraph.lm.base import LM, LMRequest, Message  # noqa: E402
from lmgraph.lm.embedded import embedded_model_path  # noqa: E402
from lmgraph.lm.llamacpp import LlamaCppLM  # noqa: E402

try:
    MODEL = embedded_model_path()
except DefinitionError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"embedded model not installed: {exc}", allow_module_level=True)

PROMPTS = [f"Q: What is {a} plus {b}?\nA:" for a, b in
           [(1, 2), (3, 4), (10, 5), (7, 7), (2, 9), (12, 30), (6, 1), (8, 8)]]


def run(coro):
    return asyncio.run(coro)


def complete(lm: LlamaCppLM, **kw) -> object:
    return run(lm.complete(LMRequest(**kw)))


@pytest.fixture(scope="module")
def lm():
    model = LlamaCppLM(n_instances=2).load()
    yield model
    model.close()


def chat(text: str, system: str | None = None) -> tuple[Message, ...]:
    msgs = [Message(role="user", content=text)]
    if system is not None:
        msgs.insert(0, Message(role="system", content=system))
    return tuple(msgs)


def test_load_and_protocol(lm):
    assert isinstance(lm, LM)
    assert lm.load_seconds is not None and lm.load_seconds > 0
    assert lm._pool.loaded == 2
    r = complete(lm, prompt="The capital of France is", max_tokens=8)
    assert r.text.strip()
    assert r.model == MODEL.name
    assert r.latency_s > 0


def test_identity_stable_and_cheap(lm):
    ident = lm.identity()
    assert ident == {"backend": "llama.cpp", "model": MODEL.name,
                     "file_size": MODEL.stat().st_size,
                     "file_mtime_ns": MODEL.stat().st_mtime_ns, "n_ctx": 2048}
    assert lm.identity() == ident
    assert LlamaCppLM().identity() == ident  # no load needed, same model -> same identity
    assert LlamaCppLM(n_ctx=1024).identity()["n_ctx"] == 1024
    json.dumps(ident)


def test_greedy_deterministic_across_calls_and_instances(lm):
    req = LMRequest(prompt=PROMPTS[0], max_tokens=24)
    first = run(lm.complete(req)).text
    # another prompt in between must not change the answer (no KV-prefix reuse)
    run(lm.complete(LMRequest(prompt=PROMPTS[0] + " 3\nQ: And", max_tokens=8)))
    assert run(lm.complete(req)).text == first
    with LlamaCppLM(n_instances=1) as other:
        assert run(other.complete(req)).text == first
    creq = LMRequest(messages=chat("Name a color."), max_tokens=16)
    assert run(lm.complete(creq)).text == run(lm.complete(creq)).text


def test_seeded_sampling_is_reproducible(lm):
    req = LMRequest(prompt="Once upon a time", max_tokens=16, temperature=0.9, seed=7)
    assert run(lm.complete(req)).text == run(lm.complete(req)).text


@pytest.mark.parametrize("n_instances", [1, 2])
def test_concurrent_calls_match_sequential(n_instances):
    with LlamaCppLM(n_instances=n_instances) as model:
        reqs = [LMRequest(prompt=p, max_tokens=12) for p in PROMPTS]

        async def sequential():
            return [(await model.complete(r)).text for r in reqs]

        async def concurrent():
            return [r.text for r in await asyncio.gather(*(model.complete(r) for r in reqs))]

        seq = run(sequential())
        assert run(concurrent()) == seq
        assert model._pool.loaded <= n_instances


def test_json_schema_chat_and_prompt(lm):
    schema = {"type": "object",
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    for kw in ({"messages": chat("Describe a person as JSON.")},
               {"prompt": "A person, as JSON:\n"}):
        r = complete(lm, json_schema=schema, max_tokens=64, **kw)
        data = json.loads(r.text)
        assert set(schema["required"]) <= set(data)
        assert isinstance(data["name"], str) and isinstance(data["age"], int)
        assert list(data) == ["name", "age"]  # the grammar keeps the schema's field order


def test_stop_sequences(lm):
    prompt = "1, 2, 3, 4, 5,"
    free = complete(lm, prompt=prompt, max_tokens=16).text
    assert " 8" in free, free  # sanity: the model keeps counting
    cut = complete(lm, prompt=prompt, max_tokens=16, stop=(" 8",))
    assert " 8" not in cut.text
    assert free.startswith(cut.text)
    assert cut.finish_reason == "stop"


def test_usage_and_max_tokens(lm):
    r = complete(lm, prompt="Write a long story about a dragon:", max_tokens=5)
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 5
    assert r.finish_reason == "length"
    r = complete(lm, messages=chat("Hi", system="You are terse."), max_tokens=7)
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 7


def test_logprobs(lm):
    r = complete(lm, prompt="Review: I loved it!\nSentiment (positive or negative):",
                 max_tokens=2, logprobs=True)
    assert r.logprobs and len(r.logprobs) == r.usage.completion_tokens
    first = r.logprobs[0]
    assert set(first) == {"token", "logprob", "top"}
    assert first["logprob"] <= 0 and first["token"] in first["top"]
    json.dumps(r.logprobs)
    # the logprob pool gives the same greedy text as the plain one
    assert r.text == complete(lm, prompt="Review: I loved it!\nSentiment (positive or negative):",
                              max_tokens=2).text
    rc = complete(lm, messages=chat("Say yes."), max_tokens=2, logprobs=True)
    assert rc.logprobs and "top" in rc.logprobs[0]


def test_prompt_too_long_is_an_lm_error():
    with LlamaCppLM(n_ctx=200) as small:
        assert small.n_ctx == 256  # llama.cpp pads the context to a multiple of 256
        with pytest.raises(LMError, match="n_ctx") as info:
            complete(small, prompt="word " * 300, max_tokens=4)
        # a prompt between the requested and the padded size works (it crashed unpadded)
        assert complete(small, prompt="word " * 220, max_tokens=2).usage.prompt_tokens > 200
        assert info.value.retryable is False
        assert isinstance(info.value.__cause__, ValueError)
        assert small.count_tokens("word " * 300) > 256
        with pytest.raises(LMError, match="n_ctx"):
            complete(small, messages=chat("word " * 300), max_tokens=4)


def test_count_tokens(lm):
    assert lm.count_tokens("") >= 0
    assert 0 < lm.count_tokens("Hello world") < lm.count_tokens("Hello world, " * 10)


def test_bad_model_path_is_a_definition_error(tmp_path: pathlib.Path):
    with pytest.raises(DefinitionError, match="does not exist"):
        LlamaCppLM(tmp_path / "missing.gguf")


def test_default_instances_scale_with_cpus_for_small_models_only(monkeypatch):
    from lmgraph.lm import embedded

    monkeypatch.setattr(embedded, "usable_cpus", lambda: 2)
    assert embedded.default_instances(100 << 20) == 2
    monkeypatch.setattr(embedded, "usable_cpus", lambda: 64)
    assert embedded.default_instances(100 << 20) == 4
    assert embedded.default_instances(4 << 30) == 1  # a 4 GB model: one copy
    assert embedded.default_threads(2) >= 1
