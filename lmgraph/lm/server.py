"""A loopback llama.cpp OpenAI-compatible server, for the real HTTP path.

:class:`LlamaServer` starts ``python -m llama_cpp.server`` (llama-cpp-python's ``[server]``
extra) as a child process on 127.0.0.1, waits until ``GET /v1/models`` answers, and stops it
on exit. Use the clients it hands out::

    with LlamaServer() as server:
        lm = server.client()      # lean aiohttp client; or server.litellm() through litellm

The clients it hands out (:meth:`LlamaServer.client`, :meth:`LlamaServer.litellm`) send
:data:`SAMPLING_PARITY` with every request: llama-cpp-python's server applies its own sampling
defaults (``repeat_penalty`` 1.1, ``top_k`` 40, ``min_p`` 0.05) to every request, even at
temperature 0, where the repeat penalty changes which token is the most likely. With these
settings temperature 0 is plain greedy decoding and the server answers exactly as the
in-process backend (:class:`~lmgraph.lm.llamacpp.LlamaCppLM`) does.

From a shell (benchmarks): ``python -m lmgraph.lm.server --port 8081`` prints the base URL
and serves until interrupted or terminated.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..errors import DefinitionError, LMError
from .embedded import check_threads, default_threads, local_model_path
from .loopback import LoopbackServer, is_loopback

__all__ = ["SERVER_INSTALL_COMMAND", "LlamaServer"]

SERVER_INSTALL_COMMAND = "pip install 'llama-cpp-python[server]>=0.3.8'  (or: pip install 'lmgraph[server]')"
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                   "pydantic_settings")


#: llama.cpp sampling settings that make the server decode as OpenAI's API describes (and as
#: the in-process backend does): no repeat penalty, no top-k / min-p cut.
SAMPLING_PARITY: dict[str, float] = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}


class LlamaServer(LoopbackServer):
    """A ``llama_cpp.server`` child process bound to loopback; a context manager.

    ``port=None`` picks a free port. ``base_url`` (``http://127.0.0.1:PORT/v1``) is the
    OpenAI-compatible endpoint. Only loopback hosts are accepted: this server has no
    authentication and must never be reachable from the network.
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *,
                 host: str = "127.0.0.1", port: int | None = None, n_ctx: int = 2048,
                 startup_timeout: float = 60, n_threads: int | None = None,
                 model_alias: str = "local", logits_all: bool = False,
                 extra_args: Sequence[str] = ()) -> None:
        if not is_loopback(host):
            raise DefinitionError(
                f"LlamaServer refuses host {host!r}: it serves an unauthenticated model and "
                "binds to loopback only.",
                fix="use host='127.0.0.1' (the default).")
        check_threads(n_threads)
        self.model_path = local_model_path(model_path)
        self.host = host
        self.port = port
        self.n_ctx = int(n_ctx)
        self.startup_timeout = float(startup_timeout)
        self.n_threads = int(n_threads) if n_threads is not None else default_threads()
        self.model_alias = model_alias
        self.logits_all = logits_all
        self.extra_args = tuple(extra_args)

    def command(self) -> list[str]:
        assert self.port is not None
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", self.model_alias,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--logits_all", str(self.logits_all),
            *self.extra_args,
        ]

    # ------------------------------------------------------------------ lifecycle (LoopbackServer)

    log_prefix = "lmgraph-llama-server-"

    def check_installed(self) -> None:
        missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise DefinitionError(
                f"LlamaServer needs llama-cpp-python's server extra; missing: {', '.join(missing)}.",
                fix=f"run `{SERVER_INSTALL_COMMAND}`.")

    def probe_url(self) -> str:
        return self.base_url + "/models"

    def exit_error(self, code: int) -> LMError:
        return LMError(f"llama.cpp server exited with code {code} during startup "
                       f"(command: {' '.join(self.command())}). Log tail:\n{self.log_tail()}")

    def timeout_error(self, probe: str) -> LMError:
        return LMError(f"llama.cpp server did not answer {probe} within "
                       f"{self.startup_timeout:g} s; raise startup_timeout. "
                       f"Log tail:\n{self.log_tail()}")

    def litellm(self, **kwargs: Any) -> Any:
        """A :class:`~lmgraph.lm.litellm.LiteLLM` for this server (``json_mode="json_object"``, the
        mode this server takes, so no request is spent negotiating it; :data:`SAMPLING_PARITY` in
        ``extra_body``, which ``extra={"extra_body": {...}}`` may override)."""
        from .litellm import openai_compatible

        kwargs.setdefault("json_mode", "json_object")
        extra = dict(kwargs.pop("extra", None) or {})
        extra["extra_body"] = {**SAMPLING_PARITY, **extra.get("extra_body", {})}
        return openai_compatible(self.base_url, self.model_alias, extra=extra, **kwargs)

    def client(self, **kwargs: Any) -> Any:
        """An :class:`~lmgraph.lm.openai_http.OpenAIServerLM` for this server (the lean aiohttp
        client; ``json_mode="json_object"``, the mode this server takes, so no request is spent
        negotiating it; :data:`SAMPLING_PARITY` in every body, which ``extra=`` may override).
        A client built from the URL alone (``OpenAIServerLM(server.base_url)``) negotiates the
        same mode on its first request with a schema (one rejected request)."""
        from .openai_http import OpenAIServerLM

        kwargs.setdefault("json_mode", "json_object")
        extra = {**SAMPLING_PARITY, **(kwargs.pop("extra", None) or {})}
        return OpenAIServerLM(self.base_url, self.model_alias, extra=extra, **kwargs)

    def __repr__(self) -> str:
        state = f"running at {self.base_url}" if self.running else "stopped"
        return f"LlamaServer({self.model_path.name!r}, {state})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lmgraph.lm.server",
        description="Serve a GGUF model (default: the embedded SmolLM2) on 127.0.0.1 through "
                    "llama-cpp-python's OpenAI-compatible server, until interrupted.")
    parser.add_argument("--model", default=None, help="GGUF file (default: the embedded model)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument("--n_ctx", type=int, default=2048)
    parser.add_argument("--n_threads", type=int, default=None)
    parser.add_argument("--startup_timeout", type=float, default=60)
    args = parser.parse_args(argv)

    def _terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    server = LlamaServer(args.model, host=args.host, port=args.port, n_ctx=args.n_ctx,
                         n_threads=args.n_threads, startup_timeout=args.startup_timeout)
    with server:
        print(server.base_url, flush=True)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        if not server.running:
            print(f"server exited. Log tail:\n{server.log_tail()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
