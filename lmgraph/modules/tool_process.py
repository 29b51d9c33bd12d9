"""``Tool(isolation="process")``: one call in a fresh subprocess, killed at its time limit.

The process is started with ``multiprocessing``'s "spawn" method (no copy of the caller's threads
and locks, as "fork" would make), so the function travels by name: it must be importable (defined
at module level). The child applies the memory limit (``resource.setrlimit(RLIMIT_AS)``, where
the platform has it), calls the function and sends back ``("ok", result)`` or ``("error", type,
message)`` through a pipe. The parent polls the pipe without blocking the event loop; on a time
limit or a cancellation (the ``finally``) the child is killed.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

__all__ = ["run_in_process"]

_MAX_MESSAGE_CHARS = 20_000


class RemoteToolError(Exception):
    """What a tool raised in its subprocess: ``type_name`` and the message travel, not the object."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(message)


def _limit_memory(memory_bytes: int | None) -> None:
    if not memory_bytes:
        return
    try:
        import resource
    except ImportError:  # Windows: no rlimits; the time limit still holds
        return
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    except (ValueError, OSError):  # a hard limit already lower, or not permitted
        pass


def _child(conn: Any, fn: Any, args: list[Any], kwargs: dict[str, Any], memory_bytes: int | None) -> None:
    """The subprocess: limit memory, call, report (never raises: the report is the result)."""
    _limit_memory(memory_bytes)
    try:
        out = fn(*args, **kwargs)
        if inspect.isawaitable(out):
            async def wait() -> Any:
                return await out
            out = asyncio.run(wait())
        msg: tuple[Any, ...] = ("ok", out)
    except BaseException as e:  # noqa: BLE001 - SystemExit, MemoryError ... all reported
        msg = ("error", type(e).__name__, str(e)[:_MAX_MESSAGE_CHARS])
    try:
        try:
            conn.send(msg)
        except Exception as e:  # noqa: BLE001 - a result that cannot be pickled
            conn.send(("error", type(e).__name__,
                       f"the tool's result could not be sent back from its process: {e}"[:_MAX_MESSAGE_CHARS]))
    finally:
        conn.close()


async def run_in_process(fn: Any, args: list[Any], kwargs: dict[str, Any], *, memory_limit_mb: int | None,
                         name: str) -> Any:
    """``fn(*args, **kwargs)`` in a subprocess; what it raised comes back as :class:`RemoteToolError`
    (a :class:`~lmgraph.modules.tools.ToolCrashed` when the process ended without a word).
    Cancelling the awaiting task (a time limit, a cancelled run) kills the process."""
    import multiprocessing

    from .tools import ToolCrashed

    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    memory_bytes = memory_limit_mb * 1024 * 1024 if memory_limit_mb else None
    proc = ctx.Process(target=_child, args=(sender, fn, args, kwargs, memory_bytes), daemon=True,
                       name=f"lmgraph-tool-{name}")
    started = False
    try:
        proc.start()
        started = True
        sender.close()  # the child holds the only writing end: EOF when it dies
        msg: Any = None
        delay = 0.002
        while True:
            if receiver.poll():
                try:
                    msg = receiver.recv()
                except (EOFError, OSError):
                    msg = None
                break
            if proc.exitcode is not None:
                if receiver.poll():
                    continue
                break
            await asyncio.sleep(delay)
            delay = min(0.05, delay * 2)
    finally:
        if started:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        else:
            sender.close()
        receiver.close()
    if msg is None:
        code = proc.exitcode
        hint = f"; it may have run out of memory (memory_limit_mb={memory_limit_mb})" if memory_limit_mb else ""
        raise ToolCrashed(f"tool {name!r}: its process ended without a result (exit code {code}){hint}",
                          tool=name, error_type="crashed")
    if msg[0] == "ok":
        return msg[1]
    raise RemoteToolError(msg[1], msg[2])
