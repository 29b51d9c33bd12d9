"""Tools: Python functions a model may call -- validated, time-limited and contained.

A :class:`Tool` wraps a function: its parameters become a pydantic model (the arguments are
validated before the function sees them) and a JSON schema. Running one is contained:

* **a time limit** -- ``timeout`` seconds per call (the :class:`~lmgraph.modules.CallTool`'s
  ``tool_timeout``, 30 s by default, unless the tool sets its own). The caller's wait ends at
  the limit whatever a sync or process-isolated tool does; an ``async`` tool is cancelled there,
  which works as long as it awaits (one that blocks the event loop blocks the whole run).
* **threads of its own** -- a sync function runs on a daemon thread drawn from a bounded
  :class:`ToolThreads` set (one per CallTool node), never on the event loop's shared default
  executor (which the embedded model uses too). A Python thread cannot be killed: a sync tool
  that overruns its limit keeps running in the background (holding its slot) until it returns,
  but nobody waits for it -- not the run, not ``run_sync``, not the interpreter's exit.
* **a process, if asked** -- ``isolation="process"`` runs each call in a fresh subprocess
  (``multiprocessing`` "spawn": the function must be importable by name) that is killed at the
  time limit or when the run is cancelled; ``memory_limit_mb`` caps its address space with
  ``resource.setrlimit`` where the platform has it (Linux, macOS).
* **every outcome reported** -- :func:`invoke` returns what the function returned or raised,
  ``SystemExit`` included (argparse raises it); only ``KeyboardInterrupt`` and cancellation pass
  through. The CallTool turns a failure into an observation for the model.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import math
import pickle
import re
import threading
import typing
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from ..errors import ConfigError, DefinitionError, RunError
from ..lm.values import jsonable

__all__ = ["DEFAULT_MAX_OUTPUT_CHARS", "DEFAULT_TOOL_THREADS", "DEFAULT_TOOL_TIMEOUT", "Tool",
           "ToolArgumentError", "ToolCrashed", "ToolError", "ToolThreads", "ToolTimeout", "as_tools",
           "error_type_name", "invoke", "observation_text"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FINISH = "finish"
DEFAULT_TOOL_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT_CHARS = 2000
DEFAULT_TOOL_THREADS = 8
ISOLATIONS = ("thread", "process")
#: exceptions a tool may raise that are never turned into observations
PASS_THROUGH: tuple[type[BaseException], ...] = (KeyboardInterrupt, asyncio.CancelledError)


class ToolArgumentError(ValueError):
    """The model's arguments do not fit the tool's parameters."""


class ToolError(RunError):
    """A tool call failed: it raised, timed out or its process died. A CallTool records it as an
    observation (``on_tool_error="observe"``, the default) or fails the row with it (``"fail"``).
    ``tool`` names the tool, ``error_type`` the kind of failure (``"timeout"``, ``"SystemExit"``...)."""

    def __init__(self, message: str, *, tool: str | None = None, error_type: str | None = None,
                 node: str | None = None) -> None:
        self.tool = tool
        self.error_type = error_type
        super().__init__(message, node=node)


class ToolTimeout(ToolError):
    """A tool call did not finish within its time limit."""


class ToolCrashed(ToolError):
    """A tool run with ``isolation="process"`` ended without a result (killed, out of memory, a crash)."""


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def check_timeout(value: Any, what: str, *, allow_none: bool = True) -> float | None:
    """A time limit in seconds: a positive number (``math.inf``: none), or None where allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}",
                          fix=f"pass {what}=30 (or math.inf for no limit).")
    return float(value)


@typing.overload
def check_positive_int(value: Any, what: str, *, allow_none: typing.Literal[False]) -> int: ...
@typing.overload
def check_positive_int(value: Any, what: str, *, allow_none: bool = True) -> int | None: ...
def check_positive_int(value: Any, what: str, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}", fix=f"pass {what}=... (>= 1).")
    return value


class ToolThreads:
    """At most ``max_threads`` sync tool calls at once, each on a daemon thread of its own.

    A slot is held until the function really returns -- also after its caller gave up at the time
    limit -- so hung tools can't pile up threads without bound; a call waiting for a slot waits
    within its own time limit. Daemon threads: a tool still running never delays the
    interpreter's exit. Usable from several event loops (each ``run_sync`` thread has its own)."""

    def __init__(self, max_threads: int = DEFAULT_TOOL_THREADS) -> None:
        self.max_threads = check_positive_int(max_threads, "tool_threads", allow_none=False)
        self._lock = threading.Lock()
        self._busy = 0
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = \
            collections.deque()

    @property
    def busy(self) -> int:
        """Slots held now (by running tools, finished or abandoned by their callers or not)."""
        with self._lock:
            return self._busy

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._busy < self.max_threads and not self._waiters:
                self._busy += 1
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, fut))
        try:
            await fut
        except BaseException:
            with self._lock:
                waiting = (loop, fut) in self._waiters
                if waiting:  # never granted: nothing to give back
                    self._waiters.remove((loop, fut))
            if not waiting and fut.done() and not fut.cancelled():
                self._release()  # granted and delivered, but the caller is gone: pass it on
            # (granted but not delivered: _grant sees the cancelled future and passes it on)
            raise

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.done():
            self._release()
        else:
            fut.set_result(None)

    def _release(self) -> None:
        while True:
            with self._lock:
                if not self._waiters:
                    self._busy -= 1
                    return
                loop, fut = self._waiters.popleft()  # the slot moves to the next waiter
            try:
                loop.call_soon_threadsafe(self._grant, fut)
                return
            except RuntimeError:  # that waiter's loop is closed: try the next one
                continue

    async def run(self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], *,
                  name: str = "tool") -> Any:
        """``fn(*args, **kwargs)`` on a thread of its own; what it raised is raised here."""
        await self._acquire()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[bool, Any]] = loop.create_future()

        def deliver(outcome: tuple[bool, Any]) -> None:
            if not fut.done():
                fut.set_result(outcome)

        def target() -> None:
            try:
                outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the caller (SystemExit included)
                outcome = (False, e)
            finally:
                self._release()
            try:
                loop.call_soon_threadsafe(deliver, outcome)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting
                pass

        try:
            threading.Thread(target=target, name=f"lmgraph-tool-{name}", daemon=True).start()
        except BaseException:
            self._release()
            raise
        ok, value = await fut
        if not ok:
            raise value
        return value

    # a copy of a module (a compiled program's) gets threads of its own; pickling keeps the size
    def __copy__(self) -> ToolThreads:
        return ToolThreads(self.max_threads)

    def __deepcopy__(self, memo: dict[int, Any]) -> ToolThreads:
        return ToolThreads(self.max_threads)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ToolThreads, (self.max_threads,))

    def __repr__(self) -> str:
        return f"ToolThreads(max_threads={self.max_threads}, busy={self.busy})"


_DEFAULT_THREADS = ToolThreads()


class Tool:
    """A Python function the model may call; arguments are validated with pydantic.

    ``timeout`` (seconds; ``math.inf`` for none) and ``max_output_chars`` override the
    CallTool's ``tool_timeout`` / ``max_output_chars`` for this tool; None inherits them.
    ``isolation="process"`` runs each call in a subprocess, killed at the time limit, with an
    address-space limit of ``memory_limit_mb`` where the platform supports it.
    """

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                 timeout: float | None = None, max_output_chars: int | None = None,
                 isolation: str = "thread", memory_limit_mb: int | None = None) -> None:
        if not callable(fn):
            raise DefinitionError(f"a tool must be callable, got {type(fn).__name__}",
                                  fix="pass a function or Tool(fn, name=...).")
        name = name or getattr(fn, "__name__", None) or type(fn).__name__
        if not _IDENT.match(name) or name == FINISH:
            raise DefinitionError(f"tool name {name!r} is not usable",
                                  fix=f"pass Tool(fn, name='an_identifier'); {FINISH!r} is reserved.")
        self.fn = fn
        self.name = name
        self.timeout = check_timeout(timeout, "timeout")
        self.max_output_chars = check_positive_int(max_output_chars, "max_output_chars")
        if isolation not in ISOLATIONS:
            raise ConfigError(f"tool {name!r}: isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}",
                              fix="pass isolation='thread' (the default) or isolation='process'.")
        self.isolation = isolation
        self.memory_limit_mb = check_positive_int(memory_limit_mb, "memory_limit_mb")
        if memory_limit_mb is not None and isolation != "process":
            raise ConfigError(f"tool {name!r}: memory_limit_mb needs isolation='process' (a thread shares the "
                              "process's memory)", fix="pass isolation='process' with memory_limit_mb.")
        if isolation == "process":
            try:
                pickle.dumps(fn)
            except Exception as e:  # noqa: BLE001 - lambdas, closures, bound methods of odd objects
                raise DefinitionError(
                    f"tool {name!r} cannot run with isolation='process': the function cannot be sent to "
                    f"another process ({type(e).__name__}: {e})",
                    fix="define it at module level (importable by name), or use isolation='thread'.") from None
        doc = inspect.getdoc(fn) or ""
        self.description = (description or (doc.strip().splitlines()[0] if doc.strip() else "")).strip()
        self._params: list[inspect.Parameter] = []
        fields: dict[str, Any] = {}
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            raise DefinitionError(f"cannot read the parameters of tool {name!r}",
                                  fix="wrap it in a plain Python function with annotated parameters.") from None
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the raw ones
            hints = {}
        extra: typing.Literal["allow", "ignore", "forbid"] = "forbid"
        for i, p in enumerate(sig.parameters.values()):
            if p.kind is p.VAR_KEYWORD:
                extra = "allow"
                continue
            if p.kind is p.VAR_POSITIONAL:
                continue
            ann = hints.get(p.name, p.annotation)
            ann = Any if ann is p.empty or isinstance(ann, str) else ann
            default = ... if p.default is p.empty else p.default
            fields[f"p{i}"] = (ann, pydantic.Field(default, alias=p.name))
            self._params.append(p)
        self._model: type[pydantic.BaseModel] = pydantic.create_model(
            f"{name}_args", __config__=pydantic.ConfigDict(extra=extra), **fields)
        self.parameters_schema = _strip_titles(self._model.model_json_schema(by_alias=True))

    def with_name(self, name: str) -> Tool:
        """The same function, description, limits and isolation under another name."""
        return Tool(self.fn, name=name, description=self.description, timeout=self.timeout,
                    max_output_chars=self.max_output_chars, isolation=self.isolation,
                    memory_limit_mb=self.memory_limit_mb)

    def validate(self, args: Any) -> tuple[list[Any], dict[str, Any]]:
        if not isinstance(args, Mapping):
            raise ToolArgumentError(f"args must be a JSON object, got {type(args).__name__}")
        try:
            m = self._model.model_validate(dict(args))
        except pydantic.ValidationError as e:
            msgs = [f"{'.'.join(map(str, err['loc'])) or 'args'}: {err['msg']}" for err in e.errors()]
            raise ToolArgumentError("; ".join(msgs)) from None
        pos, kw = [], dict(m.model_extra or {})
        for i, p in enumerate(self._params):
            value = getattr(m, f"p{i}")
            (pos.append(value) if p.kind is p.POSITIONAL_ONLY else kw.__setitem__(p.name, value))
        return pos, kw

    async def run(self, args: Any, *, timeout: float | None = None, threads: ToolThreads | None = None) -> Any:
        """Validate ``args`` and call the function within its time limit: ``timeout``, else the
        tool's own, else 30 s. Returns what it returned; raises what it raised (``SystemExit``
        too), :class:`ToolTimeout` at the limit, :class:`ToolCrashed` when its process died."""
        pos, kw = self.validate(args)
        limit = timeout if timeout is not None else self.timeout if self.timeout is not None \
            else DEFAULT_TOOL_TIMEOUT
        ok, value = await invoke(self, pos, kw, timeout=limit, threads=threads)
        if not ok:
            raise value
        return value

    @property
    def args_model(self) -> type[pydantic.BaseModel]:
        """The arguments as a pydantic model (aliases = parameter names): the fill step's output type."""
        return self._model

    @property
    def takes_args(self) -> bool:
        """False for a tool without parameters (no fill step: it is called with ``{}``)."""
        return bool(self._params) or self._model.model_config.get("extra") == "allow"

    def describe_args(self) -> str:
        """The parameters in plain words: ``a (integer, required), b (integer, default 0)``.

        Plain words, not a JSON schema: a small model shown the schema copies it as arguments."""
        props = self.parameters_schema.get("properties", {})
        req = set(self.parameters_schema.get("required", []))
        parts = []
        for name, prop in props.items():
            bits = [_type_words(prop)]
            if name in req:
                bits.append("required")
            elif "default" in prop:
                bits.append(f"default {json.dumps(prop['default'], ensure_ascii=False)}")
            parts.append(f"{name} ({', '.join(b for b in bits if b)})")
        if self._model.model_config.get("extra") == "allow":
            parts.append("any other named arguments")
        return ", ".join(parts) or "none"

    def render(self) -> str:
        head = f"- {self.name}: {self.description}" if self.description else f"- {self.name}"
        return f"{head} Arguments: {self.describe_args()}." if self.takes_args else head

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


async def invoke(tool: Tool, pos: list[Any], kw: dict[str, Any], *, timeout: float | None,
                 threads: ToolThreads | None = None) -> tuple[bool, Any]:
    """Call ``tool``'s function with validated arguments: ``(True, result)`` or ``(False, exception)``
    -- whatever it raised (``SystemExit``, ``GeneratorExit`` ...), :class:`ToolTimeout` at the
    limit (the wait ends there; a process is killed, a thread left to finish on its own),
    :class:`ToolCrashed` for a process that died. ``KeyboardInterrupt`` and cancellation propagate."""
    if tool.isolation == "process":
        from .tool_process import run_in_process

        def body() -> Any:
            return run_in_process(tool.fn, pos, kw, memory_limit_mb=tool.memory_limit_mb, name=tool.name)
    else:
        def body() -> Any:
            return _call(tool, pos, kw, threads or _DEFAULT_THREADS)
    guarded = _outcome(body)
    if timeout is None or math.isinf(timeout):
        return await guarded
    try:
        return await asyncio.wait_for(guarded, timeout)
    except asyncio.TimeoutError:
        where = " (the thread goes on in the background; its result is dropped)" \
            if tool.isolation == "thread" and not inspect.iscoroutinefunction(tool.fn) else ""
        return False, ToolTimeout(f"tool {tool.name!r} did not finish within {timeout:g} s{where}",
                                  tool=tool.name, error_type="timeout")


async def _call(tool: Tool, pos: list[Any], kw: dict[str, Any], threads: ToolThreads) -> Any:
    if inspect.iscoroutinefunction(tool.fn):
        return await tool.fn(*pos, **kw)
    out = await threads.run(tool.fn, pos, kw, name=tool.name)
    return await out if inspect.isawaitable(out) else out


async def _outcome(body: Callable[[], Any]) -> tuple[bool, Any]:
    """Run ``body()`` and catch whatever it raises, so that nothing but Ctrl-C and cancellation
    (and no ``SystemExit`` from a task ``wait_for`` made) can leave the event loop. The coroutine
    is made here, not by the caller: one cancelled before it starts leaves nothing un-awaited."""
    try:
        return True, await body()
    except PASS_THROUGH:
        raise
    except BaseException as e:  # noqa: BLE001 - a tool's failure of any kind is reported, not raised
        return False, e


def error_type_name(e: BaseException) -> str:
    """The name of what a tool raised (for a tool run in a process: the remote exception's type)."""
    return getattr(e, "type_name", None) or type(e).__name__


def _type_words(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(w for w in (_type_words(p) for p in prop["anyOf"]) if w)
    t = prop.get("type")
    if t == "array":
        item = _type_words(prop.get("items", {}))
        return f"list of {item}" if item else "list"
    if t == "null":
        return "null"
    return str(t) if t else ("object" if "$ref" in prop else "")


def as_tools(tools: Any) -> dict[str, Tool]:
    items = list(tools.items()) if isinstance(tools, Mapping) else [(None, t) for t in tools or ()]
    out: dict[str, Tool] = {}
    for key, t in items:
        if isinstance(t, Tool):
            tool = t if key in (None, t.name) else t.with_name(key)
        else:
            tool = Tool(t, name=key)
        if tool.name in out:
            raise DefinitionError(f"two tools are named {tool.name!r}", fix="give each tool a distinct name.")
        out[tool.name] = tool
    if not out:
        raise DefinitionError("CallTool needs at least one tool", fix="pass tools=[my_function, ...].")
    return out


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with a marker that says how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f" ...[truncated: {limit} of {len(text)} characters shown]"


def observation_text(value: Any, limit: int = DEFAULT_MAX_OUTPUT_CHARS) -> str:
    """A tool's result as the text the model reads (JSON for data), at most ``limit`` characters
    plus a truncation marker. A result that cannot be shown as JSON is shown by its ``repr``."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(jsonable(value), ensure_ascii=False)
        except Exception:  # noqa: BLE001 - circular, exotic, a __str__ that raises: shown another way
            try:
                text = repr(value)
            except Exception as e:  # noqa: BLE001 - a __repr__ that raises
                text = f"<unprintable {type(value).__name__}: {type(e).__name__}>"
    return truncate(text, limit)
