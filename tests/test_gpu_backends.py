"""Local GPU model paths: llama.cpp GPU offload, the vLLM server launcher, the in-process vLLM backend.

Without a GPU these test everything but the GPU itself:

* ``LlamaCppLM(n_gpu_layers=...)``: the options reach ``llama_cpp.Llama(...)`` (its constructor
  replaced by a recorder), and ``scripts/setup.sh --print-build-id`` gives a CUDA build its own
  wheel-cache id;
* ``VLLMServer``: the command line, and the start/health/stop paths against a stand-in server
  process (``tests/vllm_standin.py``: a real HTTP server on loopback that takes vLLM's flags);
* ``VLLMLM``: in ``tests/test_vllm_engine.py`` (a fake ``vllm`` module).

The ``gpu`` tests at the end run the real thing (vLLM, a CUDA build of llama-cpp-python) and skip,
saying why, where it is missing; ``benchmarks/gpu_check.py`` runs them on a GPU machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import types
import warnings
from typing import Any, ClassVar

import pytest

from lmgraph.errors import DefinitionError, LMError, LmgraphWarning
from lmgraph.lm.base import LMRequest, Message

ROOT = pathlib.Path(__file__).resolve().parents[1]
STANDIN = pathlib.Path(__file__).with_name("vllm_standin.py")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------- llama.cpp GPU offload

class _RecordingLlama:
    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        type(self).calls.append({"model_path": model_path, **kwargs})

    def close(self) -> None:
        pass


def _fake_llama_cpp(monkeypatch: pytest.MonkeyPatch, *, gpu: bool) -> type[_RecordingLlama]:
    import lmgraph.lm.llamacpp as mod

    recorder = type("Llama", (_RecordingLlama,), {"calls": []})
    fake = types.SimpleNamespace(Llama=recorder, llama_supports_gpu_offload=lambda: gpu)
    monkeypatch.setattr(mod, "import_llama_cpp", lambda: fake)
    return recorder


@pytest.fixture
def gguf(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def test_llamacpp_gpu_options_reach_llama(monkeypatch: pytest.MonkeyPatch, gguf: pathlib.Path) -> None:
    from lmgraph.lm.llamacpp import LlamaCppLM

    recorder = _fake_llama_cpp(monkeypatch, gpu=True)
    lm = LlamaCppLM(gguf, n_instances=1, n_gpu_layers=-1, main_gpu=1, tensor_split=[0.25, 0.75])
    lm.load()
    (call,) = recorder.calls
    assert call["n_gpu_layers"] == -1 and call["main_gpu"] == 1 and call["tensor_split"] == [0.25, 0.75]
    assert call["model_path"] == str(gguf)
    assert lm.identity()["n_gpu_layers"] == -1  # GPU results are cached apart from CPU ones
    assert LlamaCppLM.capabilities == lm.capabilities  # the capability record is unchanged


def test_llamacpp_cpu_default_unchanged(monkeypatch: pytest.MonkeyPatch, gguf: pathlib.Path) -> None:
    from lmgraph.lm.llamacpp import LlamaCppLM

    recorder = _fake_llama_cpp(monkeypatch, gpu=False)
    lm = LlamaCppLM(gguf, n_instances=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no GPU asked: no warning on a CPU build
        lm.load()
    (call,) = recorder.calls
    assert "n_gpu_layers" not in call and "tensor_split" not in call
    assert "n_gpu_layers" not in lm.identity()  # CPU cache keys are what they were


def test_llamacpp_gpu_on_cpu_build_warns_once(monkeypatch: pytest.MonkeyPatch, gguf: pathlib.Path) -> None:
    from lmgraph.lm.llamacpp import LlamaCppLM

    recorder = _fake_llama_cpp(monkeypatch, gpu=False)
    lm = LlamaCppLM(gguf, n_instances=2, n_gpu_layers=10)
    with pytest.warns(LmgraphWarning, match=r"no GPU support.*GGML_CUDA=on") as caught:
        lm.load()
    assert len([w for w in caught if issubclass(w.category, LmgraphWarning)]) == 1
    assert [c["n_gpu_layers"] for c in recorder.calls] == [10, 10]


@pytest.mark.parametrize("kwargs, field", [({"n_gpu_layers": -2}, "n_gpu_layers"),
                                           ({"n_gpu_layers": 1.5}, "n_gpu_layers"),
                                           ({"main_gpu": -1}, "main_gpu"),
                                           ({"tensor_split": [0, 0]}, "tensor_split"),
                                           ({"tensor_split": ["a"]}, "tensor_split")])
def test_llamacpp_gpu_options_checked(gguf: pathlib.Path, kwargs: dict[str, Any], field: str) -> None:
    from lmgraph.lm.llamacpp import LlamaCppLM

    with pytest.raises(DefinitionError, match=field):
        LlamaCppLM(gguf, n_instances=1, **kwargs)


def _build_id(env_value: str | None, tmp_path: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LMGRAPH_LLAMA_CMAKE_ARGS"}
    env["LMGRAPH_WHEEL_CACHE"] = str(tmp_path / "wheels")
    if env_value is not None:
        env["LMGRAPH_LLAMA_CMAKE_ARGS"] = env_value
    out = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--print-build-id"], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_setup_cuda_build_has_its_own_wheel_cache(tmp_path: pathlib.Path) -> None:
    cpu = _build_id(None, tmp_path)
    cuda = _build_id("-DGGML_CUDA=on", tmp_path)
    assert cpu["build_id"] != cuda["build_id"] and cpu["wheels"] != cuda["wheels"]
    assert cuda["cmake_args"].endswith("-DGGML_CUDA=on")
    assert "GGML_CUDA" not in cpu["cmake_args"]
    assert cuda["wheels"].startswith(str(tmp_path / "wheels"))
    # a CUDA build keeps the portable CPU flags (its CPU layers must not use AMX either)
    assert cpu["cmake_args"] in cuda["cmake_args"]
    assert _build_id("", tmp_path)["cmake_args"] == ""  # "": llama.cpp's own defaults
    assert _build_id("-DGGML_NATIVE=ON -DGGML_CUDA=on", tmp_path)["cmake_args"] == "-DGGML_NATIVE=ON -DGGML_CUDA=on"
    assert (tmp_path / "wheels").exists() is False  # a dry run: nothing built or created


# ---------------------------------------------------------------- VLLMServer

@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "tiny-model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_vllm_server_command(model_dir: pathlib.Path) -> None:
    from lmgraph.lm.vllm_server import VLLMServer

    server = VLLMServer(model_dir, port=8123, max_model_len=2048, dtype="bfloat16", gpu_memory_utilization=0.5,
                        seed=7, tensor_parallel_size=2, enforce_eager=True, max_logprobs=10,
                        extra_args=["--enable-prefix-caching"])
    cmd = server.command()
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    pairs = {flag: cmd[i + 1] for i, flag in enumerate(cmd[:-1]) if flag.startswith("--")}
    assert pairs["--model"] == str(model_dir) and pairs["--served-model-name"] == "local"
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "8123"
    assert pairs["--max-model-len"] == "2048" and pairs["--dtype"] == "bfloat16"
    assert pairs["--gpu-memory-utilization"] == "0.5" and pairs["--seed"] == "7"
    assert pairs["--tensor-parallel-size"] == "2" and pairs["--max-logprobs"] == "10"
    assert pairs["--generation-config"] == "vllm"  # the model's sampling defaults stay out
    assert "--enforce-eager" in cmd and cmd[-1] == "--enable-prefix-caching"
    minimal = VLLMServer(model_dir, port=1, generation_config=None).command()
    for flag in ("--max-model-len", "--gpu-memory-utilization", "--tensor-parallel-size", "--enforce-eager",
                 "--generation-config", "--max-logprobs", "--tokenizer"):
        assert flag not in minimal


def test_vllm_server_refuses_bad_settings(model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from lmgraph.lm.vllm_server import VLLMServer

    with pytest.raises(DefinitionError, match="loopback"):
        VLLMServer(model_dir, host="0.0.0.0")
    with pytest.raises(DefinitionError, match="does not exist"):
        VLLMServer(tmp_path / "missing")
    with pytest.raises(DefinitionError, match="gpu_memory_utilization"):
        VLLMServer(model_dir, gpu_memory_utilization=1.5)
    with pytest.raises(RuntimeError, match="port"):
        VLLMServer(model_dir).command()


def test_vllm_server_needs_vllm(model_dir: pathlib.Path) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    from lmgraph.lm.vllm_server import VLLMServer

    with pytest.raises(DefinitionError, match="vllm") as info:
        VLLMServer(model_dir).start()
    assert "launcher" in str(info.value.fix)


def _standin(model_dir: pathlib.Path, record: pathlib.Path, mode: str = "ok", **kwargs: Any) -> Any:
    from lmgraph.lm.vllm_server import VLLMServer

    return VLLMServer(model_dir, launcher=[sys.executable, str(STANDIN)], max_model_len=512,
                      env={"STANDIN_MODE": mode, "STANDIN_RECORD": str(record), "STANDIN_WARMUP_S": "0.5"},
                      **kwargs)


def _events(record: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_vllm_server_starts_serves_and_stops(model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    record = tmp_path / "record.jsonl"
    server = _standin(model_dir, record, startup_timeout=30)
    with server:
        assert server.running and server.base_url.startswith("http://127.0.0.1:")
        pid = server.pid
        lm = server.client()
        assert lm.json_mode == "json_schema" and lm.model == "local"
        schema = {"type": "object", "properties": {"label": {"enum": ["DESC", "NUM"]}}, "required": ["label"]}
        chat = LMRequest(messages=(Message(role="user", content="Q?"),), json_schema=schema, logprobs=True)
        raw = LMRequest(prompt="Question: Q?\nLabel:", max_tokens=3)

        async def both() -> Any:
            try:
                return await lm.complete(chat), await lm.complete(raw)
            finally:
                await lm.aclose()

        got_chat, got_raw = run(both())
        assert json.loads(got_chat.text) == {"label": "DESC"}
        assert got_chat.logprobs and got_chat.logprobs[0]["logprob"] == -0.5
        assert got_raw.text == "hello" and got_raw.usage.prompt_tokens == 7
    assert not server.running and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child is gone (and reaped)
    events = _events(record)
    argv = events[0]["argv"]
    assert argv[argv.index("--max-model-len") + 1] == "512" and "--generation-config" in argv
    bodies = [e for e in events if "path" in e]
    assert [b["path"] for b in bodies] == ["/v1/chat/completions", "/v1/completions"]
    sent = bodies[0]["body"]
    # structured outputs via response_format (vLLM >= 0.12 ignores the old guided_json field)
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == schema
    assert "guided_json" not in sent and sent["logprobs"] is True and sent["top_logprobs"] == 5


def test_vllm_server_exit_during_startup_shows_its_output(model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    server = _standin(model_dir, tmp_path / "r.jsonl", mode="exit", startup_timeout=30)
    with pytest.raises(LMError, match=r"exited with code 3") as info:
        server.start()
    assert "CUDA out of memory" in str(info.value)  # the server's last lines travel with the error
    assert not server.running


def test_vllm_server_health_timeout(model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    server = _standin(model_dir, tmp_path / "r.jsonl", mode="hang", startup_timeout=1.5)
    with pytest.raises(LMError, match=r"did not answer .*/health within 1.5 s") as info:
        server.start()
    assert "serving on 127.0.0.1" in str(info.value) and "startup_timeout" in str(info.value)
    assert not server.running and server.pid is None  # stopped, not left behind


# ---------------------------------------------------------------- the GPU check's tiny model

def test_gpu_check_builds_a_local_tokenizer(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tokenizers", reason="the tiny model's tokenizer is trained with the tokenizers package")
    jinja2 = pytest.importorskip("jinja2", reason="chat templates are jinja2")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from tokenizers import Tokenizer

    vocab = gpu_check.build_tokenizer(tmp_path, vocab_size=400)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert vocab == tok.get_vocab_size() <= 400
    assert [tok.token_to_id(s) for s in gpu_check.SPECIAL] == [0, 1, 2]  # build_tiny_model's bos/eos ids
    ids = tok.encode("Question: What is the capital of France?").ids
    assert ids[0] == 1 and tok.decode(ids[1:]) == "Question: What is the capital of France?"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    chat = jinja2.Template(config["chat_template"]).render(
        messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"


# ---------------------------------------------------------------- on a GPU (benchmarks/gpu_check.py)

def _need_cuda() -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed, so no CUDA device can be found")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")


def _tiny_model() -> pathlib.Path:
    path = os.environ.get("LMGRAPH_GPU_MODEL_DIR")
    if not path:
        pytest.skip("LMGRAPH_GPU_MODEL_DIR is not set: benchmarks/gpu_check.py builds a tiny random model "
                    "and sets it")
    return pathlib.Path(path)


def _need_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (pip install 'lmgraph[vllm]')")
    _need_cuda()


SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["DESC", "NUM", "LOC"]}},
          "required": ["label"]}


@pytest.mark.gpu
def test_gpu_vllmlm() -> None:
    _need_vllm()
    tiny_model = _tiny_model()
    from lmgraph.lm.vllm_engine import VLLMLM

    with VLLMLM(tiny_model, max_model_len=256, gpu_memory_utilization=0.3, enforce_eager=True) as lm:
        greedy = [LMRequest(prompt=f"Question {i}: what is it?\nLabel:", max_tokens=8) for i in range(8)]

        async def batch(requests: list[LMRequest]) -> Any:
            return await asyncio.gather(*(lm.complete(r) for r in requests))

        first = run(batch(greedy))
        calls = lm.generate_calls
        assert calls < len(greedy)  # batched
        assert [r.text for r in run(batch(greedy))] == [r.text for r in first]  # greedy: deterministic
        out = run(lm.complete(LMRequest(prompt="Label as JSON:", json_schema=SCHEMA, max_tokens=40, logprobs=True)))
        assert json.loads(out.text)["label"] in ("DESC", "NUM", "LOC")  # structured outputs held
        assert out.logprobs and all(math.isfinite(e["logprob"]) for e in out.logprobs)
        scored = run(lm.complete(LMRequest(prompt="The answer is", choices=(" yes", " no"))))
        assert scored.text in (" yes", " no") and all(math.isfinite(s["logprob"]) for s in scored.logprobs)
        chat = run(lm.complete(LMRequest(messages=(Message(role="user", content="hi"),), max_tokens=4)))
        assert chat.usage.completion_tokens >= 1


@pytest.mark.gpu
def test_gpu_vllm_server() -> None:
    _need_vllm()
    tiny_model = _tiny_model()
    from lmgraph.lm.vllm_server import VLLMServer

    with VLLMServer(tiny_model, max_model_len=256, gpu_memory_utilization=0.3, enforce_eager=True,
                    startup_timeout=300) as server:
        lm = server.client()

        async def go() -> Any:
            try:
                return await lm.complete(LMRequest(messages=(Message(role="user", content="Label it"),),
                                                   json_schema=SCHEMA, max_tokens=40, logprobs=True))
            finally:
                await lm.aclose()

        out = run(go())
        assert json.loads(out.text)["label"] in ("DESC", "NUM", "LOC")
        assert out.logprobs


@pytest.mark.gpu
def test_gpu_llamacpp_offload() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("llama-cpp-python was built without GPU offload "
                    "(LMGRAPH_LLAMA_CMAKE_ARGS=\"-DGGML_CUDA=on\" bash scripts/setup.sh)")
    gguf = os.environ.get("LMGRAPH_GPU_GGUF")
    if not gguf:
        pytest.skip("LMGRAPH_GPU_GGUF is not set (a GGUF file to offload)")
    from lmgraph.lm.llamacpp import LlamaCppLM

    with LlamaCppLM(gguf, n_instances=1, n_gpu_layers=-1) as lm:
        request = LMRequest(prompt="Question: What is 2 + 2?\nAnswer:", max_tokens=8)
        first = run(lm.complete(request))
        assert run(lm.complete(request)).text == first.text
        assert lm.identity()["n_gpu_layers"] == -1
