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
import collections
import importlib.util
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from typing import Any

from ..errors import DefinitionError, LMError
from .embedded import check_threads, default_threads, local_model_path

__all__ = ["SERVER_INSTALL_COMMAND", "LlamaServer"]

SERVER_INSTALL_COMMAND = "pip install 'llama-cpp-python[server]>=0.3.8'  (or: pip install 'lmgraph[server]')"
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                   "pydantic_settings")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Never send loopback probes through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)
    except ProcessLookupError:  # pragma: no cover - already gone
        pass


#: llama.cpp sampling settings that make the server decode as OpenAI's API describes (and as
#: the in-process backend does): no repeat penalty, no top-k / min-p cut.
SAMPLING_PARITY: dict[str, float] = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}


class LlamaServer:
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
        if not _is_loopback(host):
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
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._finalizer: weakref.finalize[..., Any] | None = None

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, ``http://127.0.0.1:PORT/v1``."""
        return self.url + "/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

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

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LlamaServer:
        if self.running:
            return self
        missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise DefinitionError(
                f"LlamaServer needs llama-cpp-python's server extra; missing: {', '.join(missing)}.",
                fix=f"run `{SERVER_INSTALL_COMMAND}`.")
        if self.port is None:
            self.port = _free_port(self.host)
        self._log = tempfile.TemporaryFile(prefix="lmgraph-llama-server-")  # noqa: SIM115 - closed by stop()
        self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT)
        self._finalizer = weakref.finalize(self, _stop_process, self._proc)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        probe = self.base_url + "/models"
        delay = 0.05
        while True:
            code = self._proc.poll()
            if code is not None:
                raise LMError(f"llama.cpp server exited with code {code} during startup "
                              f"(command: {' '.join(self.command())}). Log tail:\n{self.log_tail()}")
            try:
                with _OPENER.open(probe, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise LMError(f"llama.cpp server did not answer {probe} within "
                              f"{self.startup_timeout:g} s; raise startup_timeout. "
                              f"Log tail:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s)."""
        if self._finalizer is not None:
            self._finalizer()  # runs _stop_process once
            self._finalizer = None
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's combined stdout/stderr."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        tail = collections.deque(self._log.read().decode("utf-8", "replace").splitlines(), lines)
        self._log.seek(0, os.SEEK_END)
        return "\n".join(tail)

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

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
