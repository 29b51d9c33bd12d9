"""Map: run a sub-program once per item of one or more list inputs (bounded concurrency).

For each sub-program input ``x``: the node takes ``x: list[T]`` when ``x`` is in ``over``
(zipped item by item) and ``x: T`` otherwise (the same value for every item). Every
sub-program output ``y: T`` becomes ``y: list[T]``, in item order.

``on_error``: ``"raise"`` (default) fails the node when an item fails, naming the item;
``"none"`` keeps going and puts ``None`` at a failed item's position (every output list stays
as long as the inputs and lines up with them; the outputs are typed ``list[Optional[T]]``), with
the item's error in the node trace's ``meta["failed"]`` (``{index: "ErrorType: message"}``).
``"skip"`` is an alias of ``"none"`` kept for saved programs: it no longer drops failed items
(dropping them shifted every later item against its input).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from ..errors import BudgetExceeded, DefinitionError, RunError
from ..signatures import FieldSpec, Signature
from .base import IORecord, Module

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall, Prediction
    from ..pipeline.program import Program
    from ..pipeline.trace import NodeTrace

__all__ = ["Map"]

ON_ERROR = ("raise", "none", "skip")
#: on_error values that keep going past a failed item (None at its position)
KEEP_GOING = ("none", "skip")
#: the guessed item count of a mapped list whose length nothing upstream bounds
FAN_OUT_GUESS = 4


def _output_type(program: Program, node: str, field: str) -> Any:
    if node == "input":
        return program.input_specs[field]
    spec = program.node_map[node].module.signature.output(field)
    return spec.annotation if spec is not None else Any


class Map(Module):
    """Fan a sub-program out over list inputs; outputs are lists in item order."""

    kind = "map"
    program: Program  # the sub-program run per item (built and checked in __init__)
    _signature: Signature  # built in __init__ from the children
    config_model = "MapConfig"
    tunable = ("program", "concurrency")
    child_attrs = ("program",)

    def __init__(self, program: Any, *, over: str | list[str] | tuple[str, ...],
                 concurrency: int = 4, on_error: str = "raise") -> None:
        from ..pipeline.builder import Pipeline

        if isinstance(program, Pipeline):
            program = program.build()
        self.program = program
        self.over = (over,) if isinstance(over, str) else tuple(over)
        self.concurrency = concurrency
        self.on_error = on_error
        self._check()
        self._freeze()

    def _check(self) -> None:
        from ..pipeline.program import Program

        p = self.program
        if not isinstance(p, Program):
            raise DefinitionError(f"Map needs a Program, got {type(p).__name__}",
                                  fix="build the per-item pipeline first: Map(pipeline.build(), over='x').")
        if not self.over:
            raise DefinitionError("Map needs at least one input to map over",
                                  fix=f"pass over=... naming one of {', '.join(p.input_specs)}.")
        for name in self.over:
            if name not in p.input_specs:
                raise DefinitionError(f"Map over {name!r}, but {p.name!r} has no such input", field=name,
                                      fix=f"its inputs are: {', '.join(p.input_specs)}.")
        if len(set(self.over)) != len(self.over):
            raise DefinitionError("Map names an input in over= twice", fix="list each input once.")
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise DefinitionError(f"concurrency must be a positive integer, got {self.concurrency!r}",
                                  fix="pass concurrency=4 (or another positive integer).")
        if self.on_error not in ON_ERROR:
            raise DefinitionError(f"unknown on_error {self.on_error!r}",
                                  fix="choose 'raise' (fail the node) or 'none' (None at a failed item's "
                                      "position, the error in the trace).")
        clash = set(p.input_specs) & {o for o, _ in p.output_refs}
        if clash:
            raise DefinitionError(f"{p.name!r} has an input and an output both named {sorted(clash)[0]!r}",
                                  fix="rename the sub-program's output (pipeline.output(other_name=...)).")
        object.__setattr__(self, "_signature", self._make_signature())

    def _make_signature(self) -> Signature:
        p = self.program
        ins = [FieldSpec(n, list[t] if n in self.over else t,  # type: ignore[valid-type]
                         "one item per run" if n in self.over else "the same for every item")
               for n, t in p.input_specs.items()]
        keep_going = self.on_error in KEEP_GOING

        def item_type(node: str, field: str) -> Any:
            t = _output_type(p, node, field)
            return Optional[t] if keep_going and t is not Any else t  # noqa: UP045 - a runtime type (typing.Optional, as the parser builds)

        desc = "of each item (None where the item failed)" if keep_going else "of each item"
        outs = [FieldSpec(o, list[item_type(r.node, r.field)], f"{o} {desc}")  # type: ignore[misc]
                for o, r in p.output_refs]
        return Signature(ins, outs, f"Run {p.name!r} for each item of {', '.join(self.over)}.")

    @property
    def signature(self) -> Signature:
        return self._signature

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        for n in self.over:
            if not isinstance(inputs[n], (list, tuple)):
                raise RunError(f"Map over {n!r} needs a list, got {type(inputs[n]).__name__}", node=call.node)
        lengths = {n: len(inputs[n]) for n in self.over}
        if len(set(lengths.values())) > 1:
            raise RunError("the lists mapped over differ in length: "
                           + ", ".join(f"{n}={k}" for n, k in lengths.items()), node=call.node)
        count = next(iter(lengths.values()))
        sem = asyncio.Semaphore(self.concurrency)
        n_children = len(call.trace.children)

        async def one(i: int) -> Prediction:
            item = {n: (inputs[n][i] if n in self.over else inputs[n]) for n in self.program.input_specs}
            async with sem:
                return await call.run_program(self.program, item)

        results: list[Any] = [None] * count
        errors: dict[int, BaseException] = {}
        pending = {asyncio.ensure_future(one(i)): i for i in range(count)}
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for task in sorted(done, key=pending.__getitem__):
                    i = pending.pop(task)
                    if task.exception() is None:
                        results[i] = task.result()
                    else:
                        errors[i] = task.exception()  # type: ignore[assignment]
                if errors and self.on_error == "raise":
                    break
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            # child traces in item order (run_program appends them as items finish)
            traces = [r.trace if r is not None else getattr(errors.get(i), "trace", None)
                      for i, r in enumerate(results)]
            call.trace.children[n_children:] = [t for t in traces if t is not None]
        call.trace.meta["items"] = count
        if errors:
            call.trace.meta["failed"] = {str(i): f"{type(e).__name__}: {e}" for i, e in sorted(errors.items())}
            if self.on_error == "raise":
                i, e = min(errors.items())
                if isinstance(e, BudgetExceeded):
                    raise e
                raise RunError(f"item {i} of {count} failed: {type(e).__name__}: {e}", node=call.node) from e
        # a failed item (on_error='none'/'skip') is None at its own position: lists stay aligned
        return {o: [r[o] if r is not None else None for r in results] for o, _ in self.program.output_refs}

    def kind_config(self) -> dict[str, Any]:
        return {"program": self.program.to_dict()}

    @classmethod
    def kind_kwargs(cls, config: Any, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> dict[str, Any]:
        from ..pipeline.program import Program

        return {"program": Program.from_dict(config.program, resources=resources, types=types)}

    def resources(self) -> dict[str, Any]:
        return self.program.resources()

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        """The sub-program's calls per item x the items: the shortest known length among the lists
        mapped over (a Plan's ``max_steps``, a constant list's length), else FAN_OUT_GUESS."""
        known = [n for f, n in (list_lengths or {}).items() if f in self.over]
        return self.program.estimated_calls(repairs=repairs) * (min(known) if known else FAN_OUT_GUESS)

    def submodules(self) -> dict[str, Module]:
        """The sub-program's nodes, by node name (parameter paths: ``<map node>.<sub-node>.<param>``)."""
        return {n.name: n.module for n in self.program.nodes}

    def replace_child(self, name: str, module: Module) -> Map:
        return self._copy_with({"program": self.program.with_module(name, module)})  # type: ignore[return-value]

    def child_io(self, trace: NodeTrace) -> dict[str, list[IORecord]]:
        """One record per item for every sub-program node that finished (nested ones too, by path)."""
        out: dict[str, list[IORecord]] = {}
        for run in trace.children:
            for nt in run.nodes:
                node = self.program.node_map.get(nt.node)
                if node is None or nt.outputs is None:
                    continue
                out.setdefault(nt.node, []).append({"inputs": dict(nt.inputs), "outputs": dict(nt.outputs)})
                for path, records in node.module.child_io(nt).items():
                    out.setdefault(f"{nt.node}.{path}", []).extend(records)
        return out

    def child_fields(self, child: str) -> dict[str, tuple[str, bool]]:
        """A sub-node's inputs bound to sub-program inputs map to the Map's inputs of the same
        name (per item when mapped over); its outputs the sub-program exports map to the Map's
        list outputs (per item)."""
        from ..pipeline.ir import INPUT, Ref

        node = self.program.node_map.get(child)
        if node is None:
            return {}
        out: dict[str, tuple[str, bool]] = {}
        for f, b in node.bindings:
            if isinstance(b, Ref) and b.node == INPUT:
                out[f] = (b.field, b.field in self.over)
        for o, r in self.program.output_refs:
            if r.node == child:
                out.setdefault(r.field, (o, True))
        return out

    def describe(self) -> str:
        keep = ", failed items -> None" if self.on_error in KEEP_GOING else ""
        return f"Map[{self.program.name} over {', '.join(self.over)}, concurrency={self.concurrency}{keep}]"

    def summary(self) -> list[str]:
        return [f"per item: {' -> '.join(self.program.order)}"]
