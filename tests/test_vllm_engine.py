"""The in-process vLLM backend (:class:`lmgraph.lm.vllm_engine.VLLMLM`) without a GPU.

Request batching, parameter mapping and output/log-prob parsing run against a small fake ``vllm``
module (the slice of vLLM's API the adapter calls: ``LLM(**kwargs)``, ``get_tokenizer()``,
``generate(prompts, sampling_params)`` returning RequestOutput-like objects, ``SamplingParams``,
``StructuredOutputsParams``), put into ``sys.modules`` per test. The real-vLLM test is in
``tests/test_gpu_backends.py`` (``gpu``; it skips without vllm and a CUDA device).
"""

from __future__ import annotations

import asyncio
import json
import math
import pathlib
import sys
import types
from typing import Any

import pytest

from lmgraph.errors import DefinitionError, LMError
from lmgraph.lm.base import LMRequest, Message


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "tiny-model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


# ---------------------------------------------------------------- VLLMLM against a fake vllm module

BOS = 1


def tok_id(ch: str) -> int:
    return ord(ch) + 10


def lp_of(token: int) -> float:
    """The fake model's log-probability of ``token`` at any position."""
    return -((token % 7) + 1) / 10


class FakeTokenizer:
    """Character-level: BOS, then one token per character."""

    chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([BOS] if add_special_tokens else []) + [tok_id(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join("<s>" if i == BOS else chr(i - 10) for i in ids)

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = True,
                            add_generation_prompt: bool = False) -> str:
        assert tokenize is False and add_generation_prompt is True
        return "<s>" + "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


def fake_vllm(monkeypatch: pytest.MonkeyPatch, *, structured: bool = True, max_model_len: int = 400) -> Any:
    """A ``vllm`` module with the slice of the API VLLMLM calls; returns it (``.engines``: LLMs built)."""
    tokenizer = FakeTokenizer()

    class Logprob:
        def __init__(self, logprob: float, rank: int, decoded_token: str | None) -> None:
            self.logprob, self.rank, self.decoded_token = logprob, rank, decoded_token

    class SamplingParams:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs
            self.__dict__.update({"n": 1, "temperature": 1.0, "top_p": 1.0, "max_tokens": 16, "stop": None,
                                  "seed": None, "logprobs": None, "prompt_logprobs": None,
                                  "structured_outputs": None, "guided_decoding": None, **kwargs})

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs
            self.calls: list[list[Any]] = []  # the prompts of each generate call
            module.engines.append(self)

        def get_tokenizer(self) -> FakeTokenizer:
            return tokenizer

        def generate(self, prompts: list[Any], sampling_params: list[Any], use_tqdm: bool = True) -> list[Any]:
            assert use_tqdm is False and len(prompts) == len(sampling_params)
            self.calls.append(list(prompts))
            return [self._one(p, sp) for p, sp in zip(prompts, sampling_params)]

        def _one(self, prompt: dict[str, Any], sp: Any) -> Any:
            ids = prompt["prompt_token_ids"] if "prompt_token_ids" in prompt else tokenizer.encode(prompt["prompt"])
            if len(ids) > max_model_len:
                raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model "
                                 f"length of {max_model_len}. Make sure that `max_model_len` is no smaller ...")
            prompt_lps = None
            if sp.prompt_logprobs is not None:
                prompt_lps = [None] + [{t: Logprob(lp_of(t), 3, None), 7: Logprob(-0.01, 1, "?")} for t in ids[1:]]
            constraint = sp.structured_outputs or sp.guided_decoding
            if constraint is not None:
                text = json.dumps({k: "ok" for k in constraint.json["properties"]})
            else:
                text = "echo:" + tokenizer.decode(ids[-3:])
                if sp.temperature > 0:
                    text += f"#{sp.seed}"
            finish = "stop"
            for stop in sp.stop or ():
                if stop in text:
                    text = text[:text.index(stop)]
            if len(text) > sp.max_tokens:
                text, finish = text[:sp.max_tokens], "length"
            out_ids = tokenizer.encode(text, add_special_tokens=False)
            logprobs = None
            if sp.logprobs is not None:  # decoded_token left None on the alternative: decoded by the tokenizer
                logprobs = [{t: Logprob(lp_of(t), 1, chr(t - 10)), 99: Logprob(-3.0, 2, None)} for t in out_ids]
            comp = types.SimpleNamespace(index=0, text=text, token_ids=out_ids, logprobs=logprobs,
                                         finish_reason=finish)
            return types.SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=prompt_lps, outputs=[comp])

    module = types.ModuleType("vllm")
    module.engines = []  # type: ignore[attr-defined]
    module.LLM = LLM  # type: ignore[attr-defined]
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    sp_module = types.ModuleType("vllm.sampling_params")

    class StructuredOutputsParams:
        def __init__(self, json: Any = None) -> None:
            self.json = json

    if structured:
        sp_module.StructuredOutputsParams = StructuredOutputsParams  # type: ignore[attr-defined]
    else:  # vLLM before 0.10
        sp_module.GuidedDecodingParams = StructuredOutputsParams  # type: ignore[attr-defined]
    module.sampling_params = sp_module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp_module)
    return module


def vllm_lm(model_dir: pathlib.Path, **kwargs: Any) -> Any:
    from lmgraph.lm.vllm_engine import VLLMLM

    return VLLMLM(model_dir, **kwargs)


def test_vllmlm_engine_args(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    vllm = fake_vllm(monkeypatch)
    lm = vllm_lm(model_dir, dtype="float16", max_model_len=1024, seed=3, gpu_memory_utilization=0.4,
                 engine_kwargs={"enable_prefix_caching": True}).load()
    (engine,) = vllm.engines
    assert engine.kwargs == {"model": str(model_dir), "dtype": "float16", "seed": 3, "gpu_memory_utilization": 0.4,
                             "tensor_parallel_size": 1, "enforce_eager": False, "max_model_len": 1024,
                             "enable_prefix_caching": True}
    assert lm.identity() == {"backend": "vllm", "model": "tiny-model", "dtype": "float16"}
    caps = lm.capabilities
    assert caps.json_mode == "json_schema" and caps.logprobs and caps.scoring and lm.supports_scoring
    assert lm.count_tokens("abc") == 4  # BOS + 3
    lm.load()
    assert len(vllm.engines) == 1  # built once


def test_vllmlm_batches_concurrent_requests(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    vllm = fake_vllm(monkeypatch)
    lm = vllm_lm(model_dir)
    requests = [LMRequest(prompt=f"row {i} xy{i}", max_tokens=40) for i in range(6)]

    async def go() -> Any:
        return await asyncio.gather(*(lm.complete(r) for r in requests))

    responses = run(go())
    (engine,) = vllm.engines
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 6  # one generate for the six
    assert [r.text for r in responses] == [f"echo:xy{i}" for i in range(6)]  # each its own answer, in order
    assert responses[0].usage.prompt_tokens == 1 + len("row 0 xy0") and responses[0].usage.completion_tokens == 8
    assert responses[0].finish_reason == "stop" and lm.generate_calls == 1
    # a lone request later is a batch of its own
    assert run(lm.complete(LMRequest(prompt="abc"))).text == "echo:abc"
    assert [len(c) for c in engine.calls] == [6, 1]


def test_vllmlm_sampling_parameters(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    fake_vllm(monkeypatch)
    lm = vllm_lm(model_dir, top_logprobs=3).load()
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    sampled = LMRequest(prompt="p", temperature=0.7, top_p=0.9, stop=("\n",), seed=4, rollout=2, max_tokens=9,
                        logprobs=True, json_schema=schema)
    sp = lm.sampling_params(sampled)
    assert sp.kwargs["temperature"] == 0.7 and sp.kwargs["top_p"] == 0.9 and sp.kwargs["max_tokens"] == 9
    assert sp.kwargs["stop"] == ["\n"] and sp.kwargs["seed"] == sampled.sampling_seed and sp.kwargs["logprobs"] == 3
    assert sp.kwargs["structured_outputs"].json == schema
    greedy = lm.sampling_params(LMRequest(prompt="p", top_p=0.5))
    assert greedy.kwargs["temperature"] == 0.0 and greedy.kwargs["top_p"] == 1.0
    assert not {"stop", "logprobs", "structured_outputs", "top_k", "repetition_penalty"} & set(greedy.kwargs)


def test_vllmlm_guided_decoding_on_older_vllm(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    fake_vllm(monkeypatch, structured=False)
    lm = vllm_lm(model_dir)
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    assert lm.sampling_params(LMRequest(prompt="p", json_schema=schema)).kwargs["guided_decoding"].json == schema
    assert json.loads(run(lm.complete(LMRequest(prompt="p", json_schema=schema))).text) == {"label": "ok"}


def test_vllmlm_greedy_is_deterministic_and_seeds_rollouts(monkeypatch: pytest.MonkeyPatch,
                                                           model_dir: pathlib.Path) -> None:
    fake_vllm(monkeypatch)
    lm = vllm_lm(model_dir)
    greedy = LMRequest(prompt="abc", max_tokens=30)
    assert run(lm.complete(greedy)).text == run(lm.complete(greedy)).text == "echo:abc"
    a = run(lm.complete(LMRequest(prompt="abc", temperature=1.0, max_tokens=30)))
    b = run(lm.complete(LMRequest(prompt="abc", temperature=1.0, max_tokens=30, rollout=1)))
    assert a.text != b.text  # rollouts sample with different seeds


def test_vllmlm_chat_logprobs_and_stop(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    vllm = fake_vllm(monkeypatch)
    lm = vllm_lm(model_dir)
    chat = LMRequest(messages=(Message(role="user", content="hi"),), logprobs=True, max_tokens=30)
    out = run(lm.complete(chat))
    (prompt,) = vllm.engines[0].calls[0]
    # the chat template's text (which writes BOS itself) goes as token ids, without a second BOS
    assert prompt["prompt_token_ids"] == FakeTokenizer().encode("<s>[user]hi[assistant]", add_special_tokens=False)
    assert out.text == "echo:nt]"
    assert out.logprobs[0] == {"token": "e", "logprob": lp_of(tok_id("e")), "top": {"e": lp_of(tok_id("e")),
                                                                                    "Y": -3.0}}
    assert len(out.logprobs) == len(out.text)
    cut = run(lm.complete(LMRequest(prompt="abc", stop=(":",), max_tokens=30)))
    assert cut.text == "echo" and cut.logprobs is None
    short = run(lm.complete(LMRequest(prompt="abc", max_tokens=3)))
    assert short.text == "ech" and short.finish_reason == "length"


def test_vllmlm_scores_choices_with_prompt_logprobs(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    vllm = fake_vllm(monkeypatch)
    lm = vllm_lm(model_dir)
    choices = (" positive", " negative", " ok")
    scoring = LMRequest(prompt="Sentiment:", choices=choices)
    other = LMRequest(prompt="Sentiment:", choices=(" no", " yes"))
    plain = LMRequest(prompt="xyz")

    async def go() -> Any:
        return await asyncio.gather(lm.complete(scoring), lm.complete(other), lm.complete(plain))

    got, got_other, got_plain = run(go())
    (call,) = vllm.engines[0].calls  # every choice of both scoring requests and the generation: one call
    assert len(call) == 3 + 2 + 1
    prompt_ids = FakeTokenizer().encode("Sentiment:")
    assert call[0] == {"prompt_token_ids": prompt_ids + [tok_id(c) for c in " positive"]}
    expected = {c: sum(lp_of(tok_id(ch)) for ch in c) for c in choices}
    assert [s["choice"] for s in got.logprobs] == list(choices)
    for item in got.logprobs:
        assert math.isclose(item["logprob"], expected[item["choice"]]) and item["tokens"] == len(item["choice"])
    assert got.text == max(choices, key=lambda c: expected[c]) and got.finish_reason == "score"
    assert got.usage.prompt_tokens == len(prompt_ids) and got.usage.completion_tokens == sum(map(len, choices))
    assert got_other.text == max((" no", " yes"), key=lambda c: sum(lp_of(tok_id(ch)) for ch in c))
    assert got_plain.text == "echo:xyz"


def test_vllmlm_predict_decode_score(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    import lmgraph as lg

    vllm = fake_vllm(monkeypatch)
    lm = vllm_lm(model_dir)
    p = lg.Pipeline("classify")
    s = p.input("sentence")
    p.output(label=p.add(lg.Predict("sentence -> sentiment: Literal['negative', 'positive']", decode="score"),
                         name="classify", sentence=s).sentiment)
    program = p.build()
    results = program.batch_sync([{"sentence": f"film {i}"} for i in range(4)],
                                 ctx=lg.RunContext(lm=lm, cache=False), concurrency=4)
    score = {c: sum(lp_of(tok_id(ch)) for ch in " " + c) for c in ("negative", "positive")}
    assert [r.error for r in results] == [None] * 4
    assert [r.outputs.label for r in results] == [max(score, key=score.__getitem__)] * 4
    assert sum(len(c) for c in vllm.engines[0].calls) == 4 * 2  # two choices per row
    assert len(vllm.engines[0].calls) < 4  # concurrent rows share generate calls


def test_vllmlm_bad_request_fails_alone(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    vllm = fake_vllm(monkeypatch, max_model_len=50)
    lm = vllm_lm(model_dir)
    requests = [LMRequest(prompt="a"), LMRequest(prompt="x" * 80), LMRequest(prompt="b")]

    async def go() -> Any:
        return await asyncio.gather(*(lm.complete(r) for r in requests), return_exceptions=True)

    first, bad, last = run(go())
    assert first.text == "echo:<s>a" and last.text == "echo:<s>b"
    assert isinstance(bad, LMError) and bad.retryable is False
    assert "81 tokens" in str(bad) and "max_model_len=50" in str(bad)
    assert [len(c) for c in vllm.engines[0].calls] == [3, 1, 1, 1]  # the batch failed, then one by one


def test_vllmlm_chat_needs_a_template(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    fake_vllm(monkeypatch)
    monkeypatch.setattr(FakeTokenizer, "chat_template", None)
    lm = vllm_lm(model_dir)
    with pytest.raises(LMError, match="no chat template"):
        run(lm.complete(LMRequest(messages=(Message(role="user", content="hi"),))))


def test_vllmlm_needs_vllm(monkeypatch: pytest.MonkeyPatch, model_dir: pathlib.Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    lm = vllm_lm(model_dir)  # constructing needs nothing
    with pytest.raises(DefinitionError, match="vllm") as info:
        run(lm.complete(LMRequest(prompt="x")))
    assert "pip install" in str(info.value.fix)
    with pytest.raises(DefinitionError, match="does not exist"):
        vllm_lm(model_dir / "missing")
