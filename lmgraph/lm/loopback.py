"""A model server as a child process bound to loopback: start, wait for health, log tail, stop.

:class:`LoopbackServer` is the lifecycle that :class:`~lmgraph.lm.server.LlamaServer` and
:class:`~lmgraph.lm.vllm_server.VLLMServer` share; a subclass says what to run
(:meth:`LoopbackServer.command`), what to probe, how long to wait and what its errors say.
"""

from __future__ import annotations

import collections
import ipaddress
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from typing import Any, TypeVar

from ..errors import LMError

__all__ = ["LoopbackServer", "free_port", "is_loopback", "stop_process"]

_S = TypeVar("_S", bound="LoopbackServer")

# Never send loopback probes through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``."""
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


class LoopbackServer:
    """The shared lifecycle. Subclasses set ``host``, ``port``, ``startup_timeout`` and implement
    :meth:`command`, :meth:`check_installed`, :meth:`probe_url`, :meth:`exit_error` and
    :meth:`timeout_error`; the class attributes tune the wait and the stop."""

    #: prefix of the temporary log file
    log_prefix = "lmgraph-server-"
    #: seconds a health probe may take; the longest pause between probes; SIGTERM grace
    probe_timeout_s = 2.0
    max_probe_delay_s = 0.5
    stop_grace_s = 10.0

    host: str
    port: int | None
    startup_timeout: float
    _proc: subprocess.Popen[bytes] | None = None
    _log: Any = None
    _finalizer: weakref.finalize[..., Any] | None = None

    # ---- what subclasses say
    def command(self) -> list[str]:
        raise NotImplementedError

    def check_installed(self) -> None:
        """Raise a DefinitionError naming the install command when the server can't be run."""

    def env(self) -> dict[str, str] | None:
        """The child's environment (None: inherit)."""
        return None

    def probe_url(self) -> str:
        raise NotImplementedError

    def exit_error(self, code: int) -> LMError:
        raise NotImplementedError

    def timeout_error(self, probe: str) -> LMError:
        raise NotImplementedError

    # ---- properties
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

    # ---- lifecycle
    def start(self: _S) -> _S:
        if self.running:
            return self
        self.check_installed()
        if self.port is None:
            self.port = free_port(self.host)
        self._log = tempfile.TemporaryFile(prefix=self.log_prefix)  # noqa: SIM115 - closed by stop()
        self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=self.env())
        self._finalizer = weakref.finalize(self, stop_process, self._proc, self.stop_grace_s)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        probe = self.probe_url()
        delay = 0.05
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self.exit_error(code)
            try:
                with _OPENER.open(probe, timeout=self.probe_timeout_s) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise self.timeout_error(probe)
            time.sleep(delay)
            delay = min(delay * 1.5, self.max_probe_delay_s)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``stop_grace_s``)."""
        if self._finalizer is not None:
            self._finalizer()  # runs stop_process once
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

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
