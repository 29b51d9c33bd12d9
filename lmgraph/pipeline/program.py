"""Program: a built, validated, immutable pipeline you can run, render, save and rewrite."""

from __future__ import annotations

import asyncio
import contextvars
import difflib
import hashlib
import json
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from .._canonical import canonical_json
from ..context import RunContext, check_context
from ..errors import DefinitionError, UsageError
from ..modules.base import IORecord, Module, Param, UnknownParameterError
from .executor import Prediction, Result, execute, execute_batch
from .ir import INPUT, Const, InputSpec, Node, Ref
from .validate import validate

if TYPE_CHECKING:
    from .preview import PromptList
    from .stream import Event
    from .trace import Trace

_loops = threading.local()
_T = TypeVar("_T")


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to the end from sync code; the one sync entry point of the async core.

    Outside an event loop it runs on a per-thread loop (reused across calls). Inside a running
    loop (a Jupyter notebook, async code) it runs on a fresh loop in a worker thread while the
    caller waits (``await program.run(...)`` avoids the thread). Either way, every task the call
    started is cancelled and awaited before it returns or raises: an aborted batch (an exception,
    Ctrl-C, a tool's ``SystemExit``) leaves nothing running into the next call.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return _run_in_worker(coro)
    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loops.loop = loop
    return _run_to_end(loop, coro)


def _run_to_end(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _T]) -> _T:
    if getattr(loop, "_lmgraph_dirty", False):  # an earlier call's clean-up was itself interrupted
        _cancel_pending(loop)
    loop._lmgraph_dirty = True  # type: ignore[attr-defined]
    task = loop.create_task(coro)
    try:
        return loop.run_until_complete(task)
    finally:
        _cancel_pending(loop)
        loop._lmgraph_dirty = False  # type: ignore[attr-defined]


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every unfinished task of ``loop`` (a loop only ``_run_sync`` runs) and wait for them.

    A ``SystemExit``/``KeyboardInterrupt`` raised inside a task stops ``run_until_complete`` before
    the batch's own clean-up has run, and may re-raise out of it while the tasks unwind: keep draining.
    """
    for _ in range(64):
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if not pending:
            return
        for t in pending:
            t.cancel()
        try:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except (SystemExit, KeyboardInterrupt):
            continue


def _run_in_worker(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on a fresh loop in a worker thread and wait for it (called inside a running loop)."""
    box: dict[str, Any] = {}
    ready = threading.Event()

    def work() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        ready.set()
        try:
            box["result"] = _run_to_end(loop, coro)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    thread = threading.Thread(target=contextvars.copy_context().run, args=(work,),
                              name="lmgraph-run-sync", daemon=True)
    try:
        thread.start()  # inside the try: a Ctrl-C while it starts the worker must stop the worker too
        while thread.is_alive():  # a timed wait: a pending Ctrl-C is raised here, not after the run
            thread.join(0.1)
    except BaseException:  # Ctrl-C in the caller: stop the worker's run too, then re-raise
        # the worker sets `ready` first thing; not set after a while: it was never started
        if not ready.wait(_WORKER_START_S):
            coro.close()
            raise
        try:
            box["loop"].call_soon_threadsafe(_cancel_all, box["loop"])
        except RuntimeError:  # the loop has just closed: the run is over
            pass
        thread.join()
        raise
    if "error" in box:
        raise box["error"]
    result: _T = box["result"]
    return result


#: how long an interrupted caller waits for a worker it may have started to come up (see _run_in_worker)
_WORKER_START_S = 2.0


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for t in asyncio.all_tasks(loop):
        t.cancel()


def _replace_at(module: Module, path: str, new: Module) -> Module:
    """``module`` with its nested module at the dotted ``path`` replaced by ``new``."""
    head, _, rest = path.partition(".")
    child = module.submodules()[head]
    return module.replace_child(head, _replace_at(child, rest, new) if rest else new)


class Program:
    """A frozen pipeline graph. Build one with :class:`lmgraph.Pipeline` or :meth:`load`."""

    __slots__ = (
        "_default_ctx",
        "_hash",
        "dependents",
        "deps",
        "input_specs",
        "inputs",
        "is_chain",
        "name",
        "node_map",
        "nodes",
        "order",
        "output_refs",
        "outputs",
    )

    # set once in __init__ (through object.__setattr__: the class refuses attribute assignment)
    name: str
    inputs: tuple[InputSpec, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[tuple[str, Ref], ...]
    order: tuple[str, ...]
    node_map: Mapping[str, Node]
    deps: Mapping[str, tuple[str, ...]]
    dependents: Mapping[str, tuple[str, ...]]
    is_chain: bool
    input_specs: Mapping[str, Any]
    output_refs: tuple[tuple[str, Ref], ...]
    _default_ctx: RunContext | None
    _hash: int | None

    def __init__(self, name: str, inputs: Iterable[InputSpec], nodes: Iterable[Node],
                 outputs: Iterable[tuple[str, Ref]]) -> None:
        inputs, nodes, outputs = tuple(inputs), tuple(nodes), tuple(outputs)
        order = validate(name, inputs, nodes, outputs)
        node_map = {n.name: n for n in nodes}
        deps = {n.name: tuple(sorted({r.node for _, r in n.refs() if r.node != INPUT})) for n in nodes}
        dependents_: dict[str, list[str]] = {n: [] for n in node_map}
        for n, ds in deps.items():
            for d in ds:
                dependents_[d].append(n)
        dependents = {n: tuple(ds) for n, ds in dependents_.items()}
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "inputs", inputs)
        set_(self, "nodes", tuple(node_map[n] for n in order))
        set_(self, "outputs", outputs)
        set_(self, "order", tuple(order))
        # read-only views: a Program is a value, its lookup tables cannot be edited behind its back
        set_(self, "node_map", MappingProxyType(node_map))
        set_(self, "deps", MappingProxyType(deps))
        set_(self, "dependents", MappingProxyType(dependents))
        # a chain: each node depends on (at most) the one before it and nothing can overlap
        set_(self, "is_chain", all(len(deps[n]) <= 1 and len(dependents[n]) <= 1 for n in order)
             and sum(1 for n in order if not deps[n]) <= 1)
        set_(self, "input_specs", MappingProxyType({s.name: s.annotation for s in inputs}))
        set_(self, "output_refs", outputs)
        set_(self, "_default_ctx", None)
        set_(self, "_hash", None)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Program is immutable; use with_module()/replace_modules() for a new one")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("Program is immutable")

    def __reduce__(self) -> tuple[Any, ...]:  # copy/deepcopy rebuild (and re-validate) it
        return (Program, (self.name, self.inputs, self.nodes, self.outputs))

    # ---- running
    def _ctx(self, ctx: RunContext | None) -> RunContext:
        if ctx is not None:
            return check_context(ctx)  # run_sync({...}): a UsageError saying to pass inputs as keywords
        if self._default_ctx is None:
            object.__setattr__(self, "_default_ctx", RunContext())
        return self._default_ctx  # type: ignore[return-value]

    def _split(self, inputs: dict[str, Any], name: str, given: Any) -> Any:
        """``name`` given by keyword is a run option only when the program has no input of that
        name (the inputs are never shadowed: a pipeline input called ``ctx`` is an input)."""
        if name in inputs and name not in self.input_specs:
            if given is not None:
                raise UsageError(f"{name} given twice (positionally and as {name}=)", fix=f"pass {name} once.")
            return inputs.pop(name)
        return given

    async def run(self, ctx: RunContext | None = None, /, **inputs: Any) -> Prediction:
        """Run once; returns a :class:`Prediction` (``.trace`` has the details). The context is
        positional, ``run(ctx, **inputs)``, so any input name (``ctx`` too) can be passed."""
        return await execute(self, inputs, self._ctx(self._split(inputs, "ctx", ctx)))

    def run_sync(self, ctx: RunContext | None = None, /, **inputs: Any) -> Prediction:
        return _run_sync(execute(self, inputs, self._ctx(self._split(inputs, "ctx", ctx))))

    def stream(self, ctx: RunContext | None = None, /, **inputs: Any) -> AsyncGenerator[Event, None]:
        """Run once, streamed: an async iterator of typed events, in order -- ``NodeStart``,
        ``TokenDelta`` (text of Predict/ChainOfThought outputs as the model writes it),
        ``FieldComplete`` (JSON-format outputs as each closes), ``NodeEnd``, then ``Final(outputs,
        trace)`` (see :mod:`lmgraph.pipeline.stream`). The same run as :meth:`run`; a failed run
        raises its error after its events. ``async for event in program.stream(ctx, question=...)``."""
        from .stream import stream_run

        return stream_run(self, inputs, self._ctx(self._split(inputs, "ctx", ctx)))

    async def batch(self, rows: Iterable[Mapping[str, Any]], *, ctx: RunContext | None = None,
                    concurrency: int = 8, progress: Any = False,
                    on_result: Callable[[Result], None] | None = None, executor: Any = None) -> list[Result]:
        """Run many examples concurrently; failures are recorded per example, never raised.

        ``progress=True`` draws a live bar on stderr when it is a terminal (``"always"``: even when
        not); ``on_result(result)`` is called as each row finishes (``result.index`` is its position).
        ``executor``: where the rows run (:mod:`lmgraph.executors`; default the context's, else here)."""
        return await execute_batch(self, rows, self._ctx(ctx), concurrency=concurrency, progress=progress,
                                   on_result=on_result, executor=executor)

    def batch_sync(self, rows: Iterable[Mapping[str, Any]], *, ctx: RunContext | None = None,
                   concurrency: int = 8, progress: Any = False,
                   on_result: Callable[[Result], None] | None = None, executor: Any = None) -> list[Result]:
        return _run_sync(self.batch(rows, ctx=ctx, concurrency=concurrency, progress=progress,
                                    on_result=on_result, executor=executor))

    # ---- prompts
    def prompts(self, lm: Any = None, ctx: RunContext | None = None, /, **inputs: Any) -> PromptList:
        """The request each model-calling node will send, in schedule order -- without calling a model.

        The prompt format resolves as in a run, for ``lm`` (default: the context's model; the
        embedded llama.cpp model when none, constructed without loading its weights):
        ``format='auto'`` is ``json`` for structured outputs, else ``completion`` for in-process
        llama.cpp and ``chat`` for API models. Inputs not given, and outputs of upstream model
        calls, appear as placeholders (``<question>``, ``<classify.answer_type>``); model-free
        upstream nodes (Retrieve) run for real. ``print(program.prompts(question="..."))``.
        """
        from .preview import preview_prompts

        lm, ctx = self._split(inputs, "lm", lm), self._split(inputs, "ctx", ctx)
        run_ctx = self._ctx(ctx)
        if lm is not None:
            if not callable(getattr(lm, "complete", None)):
                raise UsageError(f"prompts(lm=...) takes a model object, got {type(lm).__name__} {lm!r}",
                                      fix="pass e.g. lm=LlamaCppLM() or lm=LiteLLM('gpt-4o-mini'), or "
                                          "leave it out for the context's model.")
            run_ctx = run_ctx.replace(lm=lm)
        return _run_sync(preview_prompts(self, inputs, run_ctx))

    # ---- rewriting (optimizers use these; the original is never touched)
    def module(self, node: str) -> Module:
        """The module of ``node``; a dotted path reaches a nested one (``"refine.generator"``,
        ``"answer_each.solve"``: a child name of ``submodules()`` at each step)."""
        head, _, rest = node.partition(".")
        try:
            module = self.node_map[head].module
        except KeyError:
            raise DefinitionError(f"no node {head!r}", fix=f"nodes are: {', '.join(self.order)}.") from None
        walked = head
        for part in rest.split(".") if rest else ():
            children = module.submodules()
            if part not in children:
                raise DefinitionError(f"{walked!r} ({module.kind}) has no child module {part!r}",
                                      fix=f"its children: {', '.join(children) or 'none'}.")
            module, walked = children[part], f"{walked}.{part}"
        return module

    def with_module(self, node: str, module: Module) -> Program:
        return self.replace_modules({node: module})

    def replace_modules(self, modules: Mapping[str, Module]) -> Program:
        """A new program with modules swapped, by node name or by the dotted path of a nested
        module (``{"refine.generator": Predict(...)}``: its parents are rebuilt around it)."""
        top: dict[str, Module] = {}
        for path, new in modules.items():
            self.module(path)  # raises for unknown names and paths
            head, _, rest = path.partition(".")
            top[head] = _replace_at(top.get(head) or self.node_map[head].module, rest, new) if rest else new
        nodes = [n.with_module(top[n.name]) if n.name in top else n for n in self.nodes]
        return Program(self.name, self.inputs, nodes, self.outputs)

    # ---- the parameter tree
    def named_parameters(self) -> Iterator[tuple[str, Param]]:
        """``(path, Param)`` for every tunable parameter of every node, nested modules included, in
        schedule order: ``"classify.instructions"``, ``"refine.generator.demos"``,
        ``"answer_each.solve.instructions"`` (a Map's sub-program node), ``"agent.step.demos"``."""
        for n in self.nodes:
            yield from n.module.named_parameters(f"{n.name}.")

    def parameter(self, path: str) -> Param:
        """The parameter at ``path``; an unknown path is a DefinitionError listing close matches."""
        for p, param in self.named_parameters():
            if p == path:
                return param
        raise self._unknown_parameter(path)

    def with_parameters(self, values: Mapping[str, Any]) -> Program:
        """A new program with parameters changed by path (``{"refine.generator.demos": [...],
        "classify.format": "json"}``); nested modules are rebuilt immutably. Values are checked as
        the module's own constructor checks them; an unknown path is a DefinitionError naming it
        with the close matches."""
        by_node: dict[str, dict[str, Any]] = {}
        for path, value in values.items():
            head, _, rest = path.partition(".")
            if head not in self.node_map or not rest:
                raise self._unknown_parameter(path)
            by_node.setdefault(head, {})[rest] = value
        modules: dict[str, Module] = {}
        for node, changes in by_node.items():
            try:
                modules[node] = self.node_map[node].module.with_parameters(changes)
            except UnknownParameterError as e:
                raise self._unknown_parameter(f"{node}.{e.path}") from None
            except DefinitionError as e:
                if e.node is not None:
                    raise
                raise DefinitionError(e.message, node=node, field=e.field, fix=e.fix) from None
        return self.replace_modules(modules) if modules else self

    def _unknown_parameter(self, path: str) -> DefinitionError:
        paths = [p for p, _ in self.named_parameters()]
        close = difflib.get_close_matches(path, paths, n=3, cutoff=0.6)
        head = path.partition(".")[0]
        mine = [p for p in paths if p.startswith(head + ".")] if head in self.node_map else []
        if close:
            fix = f"did you mean {' or '.join(repr(c) for c in close)}?"
        elif mine:
            fix = f"node {head!r} has: {', '.join(mine[:16])}{' ...' if len(mine) > 16 else ''}."
        else:
            fix = f"parameter paths are '<node>.<parameter>'; nodes: {', '.join(self.order)}."
        return DefinitionError(f"no parameter {path!r} in {self.name!r}", fix=fix)

    def nested_io(self, trace: Trace) -> dict[str, list[IORecord]]:
        """What the nested modules were given and produced in a traced run of this program, by
        module path (``{"refine.generator": [{"inputs": ..., "outputs": ...}], "answer_each.solve":
        [one per item]}``); top-level nodes' I/O is in ``trace.nodes``."""
        out: dict[str, list[IORecord]] = {}
        for nt in trace.nodes:
            node = self.node_map.get(nt.node)
            if node is None:
                continue
            for path, records in node.module.child_io(nt).items():
                out.setdefault(f"{nt.node}.{path}", []).extend(records)
        return out

    def rewrite(self, *, inputs: Iterable[InputSpec] | None = None, nodes: Iterable[Node] | None = None,
                outputs: Iterable[tuple[str, Ref]] | None = None, name: str | None = None) -> Program:
        """A new program with some parts swapped; validated like any other."""
        return Program(name or self.name, self.inputs if inputs is None else inputs,
                       self.nodes if nodes is None else nodes, self.outputs if outputs is None else outputs)

    # ---- views
    def render(self, fmt: str = "text") -> str:
        from .render import render

        return render(self, fmt)  # an unknown fmt is a ConfigError naming the valid ones

    def __repr__(self) -> str:
        return f"Program({self.name!r}, nodes={list(self.order)})"

    def _repr_html_(self) -> str:  # a notebook's view: the name and the text rendering, escaped
        from ..report_html import program_html

        return program_html(self)

    # ---- serialization (JSON only; loading executes no code)
    def to_dict(self) -> dict[str, Any]:
        from .serialize import program_to_dict

        return program_to_dict(self)

    def to_json(self, *, indent: int | None = 2) -> str:
        # declaration order is kept (not sort_keys): output and binding order survive a save/load
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def save(self, path: str | Path, *, sign_key: str | bytes | None = None) -> Path:
        """Write the program as JSON in lmgraph's envelope (format version + content hash, and an
        HMAC-SHA256 signature with ``sign_key``), which :meth:`load` checks."""
        from .loading import envelope

        p = Path(path)
        # declaration order is kept (not sort_keys): output and binding order survive a save/load
        text = json.dumps(envelope({"program": self.to_dict()}, sign_key=sign_key), indent=2, ensure_ascii=False)
        p.write_text(text + "\n", encoding="utf-8")
        return p

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, resources: Mapping[str, Any] | None = None,
                  types: Mapping[str, Any] | None = None, kinds: Iterable[type[Module]] | None = None) -> Program:
        from .serialize import program_from_dict

        return program_from_dict(data, resources=resources if resources is not None else {}, types=types,
                                 kinds=kinds)

    @classmethod
    def load(cls, path: str | Path, *, resources: Mapping[str, Any] | None = None,
             types: Mapping[str, Any] | None = None, trusted: bool = False,
             verify_key: str | bytes | None = None, kinds: Iterable[type[Module]] | None = None) -> Program:
        """Load a saved program or compiled artifact. Retrievers/tools/reward functions are bound by
        name via ``resources``; ``kinds=[MyModule]``: custom module classes this load knows (besides
        those registered by being defined with a ``kind``). The file's format version and content
        hash are checked (and its signature with ``verify_key``); a file without them loads only
        with ``trusted=True``. Keys this lmgraph does not write are refused, not dropped."""
        from .serialize import load_json

        return cls.from_dict(load_json(path, trusted=trusted, verify_key=verify_key), resources=resources,
                             types=types, kinds=kinds)

    def estimated_calls(self, *, repairs: bool = True) -> int:
        """At most how many model calls one run makes, known before running (no model call): the
        sum of each node's ``module.estimated_calls()``, told the item counts of list inputs that an
        upstream node bounds (a Plan's ``max_steps``, a Retrieve's ``k``) or that are constant.
        ``repairs=False``: without the repair / follow-up calls a reply that cannot be read adds
        (a Map over a list nothing bounds counts a guessed length)."""
        from ..modules.base import calls_of

        total = 0
        for n in self.nodes:
            lengths: dict[str, int] = {}
            for f, b in n.bindings:
                if isinstance(b, Const):
                    if isinstance(b.value, (list, tuple)):
                        lengths[f] = len(b.value)
                elif b.node != INPUT:
                    bound = self.node_map[b.node].module.max_items(b.field)
                    if bound is not None:
                        lengths[f] = bound
            total += calls_of(n.module, lengths, repairs=repairs)
        return total

    def resources(self) -> dict[str, Any]:
        """Every named runtime resource the program's modules use (what ``load`` needs back)."""
        out: dict[str, Any] = {}
        for n in self.nodes:
            out.update(n.module.resources())
        return out

    def content_hash(self) -> str:
        if self._hash is None:
            blob = canonical_json(self.to_dict())
            object.__setattr__(self, "_hash", hashlib.sha256(blob.encode()).hexdigest())
        return self._hash  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Program) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.content_hash())
