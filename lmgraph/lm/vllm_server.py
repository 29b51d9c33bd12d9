"""A loopback vLLM OpenAI-compatible server for a local model, like :class:`~lmgraph.lm.server.LlamaServer`.

:class:`VLLMServer` starts ``python -m vllm.entrypoints.openai.api_server --model PATH`` as a child
process on 127.0.0.1, waits until ``GET /health`` answers 200 (vLLM serves HTTP only once its
engine has loaded the model), and stops it on exit::

    with VLLMServer("/models/my-hf-model", max_model_len=4096) as server:
        lm = server.client()      # OpenAIServerLM: structured-output JSON, log-probabilities

How the clients talk to vLLM:

* **JSON**: ``response_format: {"type": "json_schema", ...}`` (OpenAI structured outputs), which
  vLLM enforces with its structured-output backend on ``/chat/completions`` and
  ``/completions``. Not the older ``guided_json`` body field: vLLM 0.12 dropped it, and later
  versions ignore it without an error (the output is then unconstrained).
* **log-probabilities**: the OpenAI fields (``logprobs``/``top_logprobs``); ``--max-logprobs``
  (vLLM's default 20) bounds ``top_logprobs``.
* **sampling**: ``--generation-config vllm`` (the default here) keeps the model folder's
  ``generation_config.json`` (a repetition penalty, a top-k) out of the requests, so
  temperature 0 is plain greedy decoding, as with the other backends; ``generation_config=None``
  leaves vLLM's own default (``auto``: the model's file).

``launcher`` replaces the program started (``[python, "-m", "vllm.entrypoints.openai.api_server"]``
by default), e.g. the interpreter of a separate environment that holds vLLM and its pinned torch:
``launcher=["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]``.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import DefinitionError, LMError
from .loopback import LoopbackServer, is_loopback

__all__ = ["VLLM_INSTALL_COMMAND", "VLLM_SERVER_MODULE", "VLLMServer"]

VLLM_INSTALL_COMMAND = "pip install vllm  (or: pip install 'lmgraph[vllm]'; it needs a CUDA GPU)"
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

class VLLMServer(LoopbackServer):
    """A vLLM OpenAI-compatible server child process bound to loopback; a context manager.

    ``model_path``: a local model folder (Hugging Face layout: ``config.json``, weights,
    tokenizer files) or a GGUF file. ``served_model_name`` is the name clients send
    (``"local"``). ``port=None`` picks a free port. ``max_model_len``, ``dtype``,
    ``gpu_memory_utilization``, ``tensor_parallel_size``, ``seed``, ``tokenizer``,
    ``enforce_eager`` (no CUDA graphs: a faster start) and ``max_logprobs`` become vLLM's flags of
    the same names; ``extra_args`` go last, as they are. ``startup_timeout`` (seconds) bounds the
    wait for ``/health``; loading, compiling and capturing CUDA graphs take a minute or more.
    ``env`` adds environment variables for the child. Only loopback hosts are accepted: the
    server has no authentication.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, host: str = "127.0.0.1",
                 port: int | None = None, served_model_name: str = "local",
                 max_model_len: int | None = None, dtype: str = "auto",
                 gpu_memory_utilization: float | None = None, tensor_parallel_size: int = 1,
                 seed: int = 0, tokenizer: str | os.PathLike[str] | None = None,
                 enforce_eager: bool = False, max_logprobs: int | None = None,
                 generation_config: str | None = "vllm", startup_timeout: float = 600,
                 extra_args: Sequence[str] = (), launcher: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        if not is_loopback(host):
            raise DefinitionError(
                f"VLLMServer refuses host {host!r}: it serves an unauthenticated model and binds to "
                "loopback only.", fix="use host='127.0.0.1' (the default).")
        path = pathlib.Path(model_path).expanduser()
        if not path.exists():
            raise DefinitionError(f"VLLMServer: model path {str(path)!r} does not exist.",
                                  fix="pass a local model folder (config.json, weights, tokenizer) or a .gguf file.")
        if max_model_len is not None and max_model_len < 1:
            raise DefinitionError(f"max_model_len must be positive, got {max_model_len}.",
                                  fix="pass e.g. max_model_len=4096, or None for the model's own.")
        if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
            raise DefinitionError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}.",
                                  fix="pass e.g. gpu_memory_utilization=0.5 (a share of the GPU's memory).")
        if tensor_parallel_size < 1:
            raise DefinitionError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}.",
                                  fix="pass the number of GPUs to split the model over (1: one GPU).")
        if startup_timeout <= 0:
            raise DefinitionError(f"startup_timeout must be > 0, got {startup_timeout}.",
                                  fix="pass e.g. startup_timeout=600 (seconds).")
        if not served_model_name:
            raise DefinitionError("served_model_name is empty.", fix="pass e.g. served_model_name='local'.")
        self.model_path = path
        self.host = host
        self.port = port
        self.served_model_name = served_model_name
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.seed = int(seed)
        self.tokenizer = None if tokenizer is None else str(tokenizer)
        self.enforce_eager = bool(enforce_eager)
        self.max_logprobs = max_logprobs
        self.generation_config = generation_config
        self.startup_timeout = float(startup_timeout)
        self.extra_args = tuple(str(a) for a in extra_args)
        self.launcher = tuple(launcher) if launcher is not None else None
        self.extra_env = dict(env or {})

    def command(self) -> list[str]:
        """The command line the server is started with (``port`` must be set: :meth:`start` picks one)."""
        if self.port is None:
            raise RuntimeError("VLLMServer.command() needs a port: pass port= or call start()")
        cmd = list(self.launcher) if self.launcher else [sys.executable, "-m", VLLM_SERVER_MODULE]
        cmd += ["--model", str(self.model_path), "--served-model-name", self.served_model_name,
                "--host", self.host, "--port", str(self.port), "--dtype", self.dtype, "--seed", str(self.seed)]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(int(self.max_model_len))]
        if self.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", f"{float(self.gpu_memory_utilization):g}"]
        if self.tensor_parallel_size != 1:
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.tokenizer is not None:
            cmd += ["--tokenizer", self.tokenizer]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.max_logprobs is not None:
            cmd += ["--max-logprobs", str(int(self.max_logprobs))]
        if self.generation_config is not None:
            cmd += ["--generation-config", self.generation_config]
        return cmd + list(self.extra_args)

    # ------------------------------------------------------------------ lifecycle (LoopbackServer)

    log_prefix = "lmgraph-vllm-server-"
    probe_timeout_s = 5.0
    max_probe_delay_s = 1.0
    stop_grace_s = 30.0  # vLLM frees GPU memory on SIGTERM

    def check_installed(self) -> None:
        if self.launcher is None and importlib.util.find_spec("vllm") is None:
            raise DefinitionError("VLLMServer needs the optional package vllm, which is not installed "
                                  "in this interpreter.",
                                  fix=f"run `{VLLM_INSTALL_COMMAND}`, or pass launcher=[<python of an "
                                      f"environment with vllm>, '-m', '{VLLM_SERVER_MODULE}'].")

    def env(self) -> dict[str, str] | None:
        return {**os.environ, **self.extra_env} if self.extra_env else None

    def probe_url(self) -> str:
        return self.url + "/health"

    def exit_error(self, code: int) -> LMError:
        return LMError(f"the vLLM server exited with code {code} during startup (command: "
                       f"{' '.join(self.command())}). Last lines of its output:\n{self.log_tail()}",
                       retryable=False)

    def timeout_error(self, probe: str) -> LMError:
        return LMError(f"the vLLM server did not answer {probe} within {self.startup_timeout:g} s "
                       "(loading a model, compiling and capturing CUDA graphs take time: raise "
                       "startup_timeout, or pass enforce_eager=True). Last lines of its output:\n"
                       f"{self.log_tail()}", retryable=False)

    def client(self, **kwargs: Any) -> Any:
        """An :class:`~lmgraph.lm.openai_http.OpenAIServerLM` for this server: ``json_mode="json_schema"``
        (vLLM's structured outputs, so no request is spent negotiating), the served model name,
        and whatever else ``kwargs`` set (``top_logprobs``, ``timeout``, ``extra``...)."""
        from .openai_http import OpenAIServerLM

        kwargs.setdefault("json_mode", "json_schema")
        kwargs.setdefault("timeout", 300.0)
        return OpenAIServerLM(self.base_url, self.served_model_name, **kwargs)

    def litellm(self, **kwargs: Any) -> Any:
        """A :class:`~lmgraph.lm.litellm.LiteLLM` for this server (``json_mode="json_schema"``)."""
        from .litellm import openai_compatible

        kwargs.setdefault("json_mode", "json_schema")
        return openai_compatible(self.base_url, self.served_model_name, **kwargs)

    def __repr__(self) -> str:
        state = f"running at {self.base_url}" if self.running else "stopped"
        return f"VLLMServer({self.model_path.name!r}, {state})"
