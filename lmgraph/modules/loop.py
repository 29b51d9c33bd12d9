"""Loop: repeat a sub-program (the body) until a condition holds, at most ``max_iters`` times.

``Loop(body, max_iters=3, until="verdict", carry={"draft": "answer"})``:

* the node takes the body's inputs; the first iteration runs on them;
* ``carry`` is the typed loop state: ``{body input: body output}`` -- the next iteration's input
  ``draft`` is this iteration's output ``answer`` (checked at build time: both must exist and the
  output's type must fit the input's); inputs not carried keep their value;
* ``until`` stops the loop after an iteration: the name of a ``bool`` output of the body (a
  Critique's ``verdict``), or a predicate ``until(values) -> bool`` called with that iteration's
  inputs and outputs (a dict; may be async) -- a named function or ``lg.resource("name", fn)``,
  saved by name and bound again with ``Program.load(..., resources={"name": fn})``; without
  ``until`` the body runs ``max_iters`` times;
* ``max_iters`` (required, >= 1) bounds it.

Outputs: the last iteration's outputs plus ``iterations: int``. Every iteration's sub-run is in
the node trace's ``children`` and ``trace.meta["iterations"]`` lists ``{"iteration": i, "done":
bool}``. Parameter paths reach into the body as into a Map's sub-program:
``<loop node>.<body node>.<param>``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union

from ..errors import DefinitionError
from ..signatures import FieldSpec, Signature, type_to_str
from .base import IORecord, Module
from .control import (
    as_program,
    call_predicate,
    named_callable,
    output_types,
    predicate_from_config,
    program_io,
    subprogram_fields,
)

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall
    from ..pipeline.trace import NodeTrace

__all__ = ["Loop"]

ITERATIONS = FieldSpec("iterations", int, "how many times the body ran")


def _is_bool(t: Any) -> bool:
    if t is bool:
        return True
    if typing.get_origin(t) in (Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args == [bool]
    return False


class Loop(Module):
    """Run ``body`` again and again -- carrying some outputs into the next iteration's inputs --
    until ``until`` holds or ``max_iters`` iterations ran; outputs: the last iteration's outputs
    plus ``iterations``."""

    kind = "loop"
    _signature: Signature  # built in __init__ from the children
    config_model = "LoopConfig"
    tunable = ("body", "max_iters")
    child_attrs = ("body",)

    def __init__(self, body: Any, *, max_iters: int | None = None, until: Any = None,
                 carry: Mapping[str, str] | None = None) -> None:
        self.body = as_program(body, "Loop", "body")
        self.max_iters = max_iters
        if until is None or isinstance(until, str):
            self.until: str | None = until
            self.predicate: Any = None
            self.predicate_name: str | None = None
        else:
            self.until = None
            self.predicate_name, self.predicate = named_callable(until, "Loop", "until predicate")
        if carry is not None and not isinstance(carry, Mapping):
            raise DefinitionError(f"Loop carry must be a mapping of body input -> body output, got "
                                  f"{type(carry).__name__}", field="carry",
                                  fix="pass carry={'draft': 'answer'} (the next draft is this answer).")
        self.carry = dict(carry or {})
        self._check()
        self._freeze()

    def _check(self) -> None:
        from ..pipeline.validate import fits

        object.__setattr__(self, "body", as_program(self.body, "Loop", "body"))  # replace(body=...) too
        n = self.max_iters
        if n is None:
            raise DefinitionError("Loop needs max_iters (the most iterations it may run)", field="max_iters",
                                  fix="pass max_iters=3 (or another positive integer): a loop is always bounded.")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DefinitionError(f"max_iters must be a positive integer, got {n!r}", field="max_iters",
                                  fix="pass max_iters=1 or more.")
        body = self.body
        ins = dict(body.input_specs)
        outs = output_types(body)
        clash = [k for k in outs if k in ins]
        if clash:
            raise DefinitionError(f"the loop body {body.name!r} has an input and an output both named {clash[0]!r} "
                                  "(the Loop node takes the body's inputs and gives its outputs)", field=clash[0],
                                  fix=f"rename the body's input (e.g. previous_{clash[0]}) and carry it: "
                                      f"carry={{'previous_{clash[0]}': {clash[0]!r}}}.")
        if "iterations" in outs:
            raise DefinitionError(f"the loop body {body.name!r} exports an output called 'iterations'",
                                  field="iterations", fix="rename that output; Loop adds its own.")
        for inp, out in self.carry.items():
            if not isinstance(inp, str) or not isinstance(out, str):
                raise DefinitionError(f"Loop carry entry {inp!r}: {out!r} is not a pair of field names",
                                      field="carry", fix="pass carry={'draft': 'answer'}.")
            if inp not in ins:
                reversed_ = inp in outs and out in ins
                raise DefinitionError(
                    f"Loop carry names {inp!r}, which is not an input of the body {body.name!r}", field=inp,
                    fix=(f"carry maps body input -> body output: write carry={{{out!r}: {inp!r}}}." if reversed_
                         else f"the body's inputs are: {', '.join(ins) or 'none'}."))
            if out not in outs:
                raise DefinitionError(f"Loop carry feeds {inp!r} from {out!r}, which the body {body.name!r} does "
                                      "not export", field=inp,
                                      fix=f"export it (body.output({out}=...)); its outputs: {', '.join(outs)}.")
            if not fits(outs[out], ins[inp]):
                raise DefinitionError(f"Loop carry type mismatch: the body output {out!r} is "
                                      f"{type_to_str(outs[out])} but the input {inp!r} it feeds is "
                                      f"{type_to_str(ins[inp])}", field=inp,
                                      fix=f"declare both with one type ({inp}: {type_to_str(outs[out])} in the body's "
                                          f"input, or {out}: {type_to_str(ins[inp])} in its signature).")
        if self.until is not None:
            if self.until not in outs:
                raise DefinitionError(f"Loop until={self.until!r}, but the body {body.name!r} has no such output",
                                      field="until", fix=f"name a bool output (its outputs: {', '.join(outs)}) or "
                                                         "pass a predicate until=fn(values) -> bool.")
            if not _is_bool(outs[self.until]):
                raise DefinitionError(f"Loop until={self.until!r} is {type_to_str(outs[self.until])}, not bool",
                                      field="until", fix="name a bool output (a Critique's 'verdict') or pass a "
                                                         "predicate until=fn(values) -> bool.")
        sig = Signature([FieldSpec(k, t) for k, t in ins.items()],
                        [*(FieldSpec(k, t) for k, t in outs.items()), ITERATIONS],
                        f"Repeat {body.name!r} (at most {n} times).")
        object.__setattr__(self, "_signature", sig)

    @property
    def signature(self) -> Signature:
        return self._signature

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        state = {k: inputs[k] for k in self.body.input_specs}
        record: list[dict[str, Any]] = []
        call.trace.meta["iterations"] = record
        names = [o for o, _ in self.body.output_refs]
        for i in range(1, self.max_iters + 1):  # type: ignore[operator]
            pred = await call.run_program(self.body, state)
            out = {o: pred[o] for o in names}
            if self.until is not None:
                done = bool(out[self.until])
            elif self.predicate is not None:
                done = bool(await call_predicate(self.predicate, self.predicate_name or "", {**state, **out},
                                                 call.node))
            else:
                done = False
            record.append({"iteration": i, "done": done})
            if done or i == self.max_iters:
                return {**out, "iterations": i}
            state = {**state, **{inp: out[o] for inp, o in self.carry.items()}}
        raise AssertionError("unreachable")  # pragma: no cover

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        """``max_iters`` times the body's calls."""
        return self.max_iters * self.body.estimated_calls(repairs=repairs)  # type: ignore[operator]

    # ---- saving
    def kind_config(self) -> dict[str, Any]:
        return {"body": self.body.to_dict(),
                "until": self.until if self.predicate is None else {"predicate": self.predicate_name}}

    @classmethod
    def kind_kwargs(cls, config: Any, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> dict[str, Any]:
        from ..pipeline.program import Program

        until = config.until
        if until is not None and not isinstance(until, str):  # a predicate saved by name
            until = predicate_from_config(resources, until.predicate, "loop predicate")
        return {"body": Program.from_dict(config.body, resources=resources, types=types), "until": until}

    def resources(self) -> dict[str, Any]:
        out = dict(self.body.resources())
        if self.predicate is not None and self.predicate_name:
            out[self.predicate_name] = self.predicate
        return out

    # ---- the parameter tree
    def submodules(self) -> dict[str, Module]:
        """The body's nodes, by node name (parameter paths: ``<loop node>.<body node>.<param>``)."""
        return {n.name: n.module for n in self.body.nodes}

    def replace_child(self, name: str, module: Module) -> Loop:
        return self._copy_with({"body": self.body.with_module(name, module)})  # type: ignore[return-value]

    def child_io(self, trace: NodeTrace) -> dict[str, list[IORecord]]:
        """The last iteration's records (what the loop's outputs come from; earlier iterations were
        not accepted by ``until``), for every body node that finished."""
        if not trace.children or trace.outputs is None:
            return {}
        return program_io(self.body, trace.children[-1])

    def child_fields(self, child: str) -> dict[str, tuple[str, bool]]:
        """A body node's fields bound to body inputs, or exported by the body, are the Loop's own
        fields of the same name."""
        return subprogram_fields(self.body, child)

    # ---- views
    def until_text(self) -> str:
        if self.predicate is not None:
            return f"until {self.predicate_name}()"
        return f"until {self.until}" if self.until is not None else "no condition"

    def describe(self) -> str:
        carry = ", ".join(f"{k} <- {v}" for k, v in self.carry.items())
        return (f"Loop[{self.body.name}, max_iters={self.max_iters}, {self.until_text()}"
                + (f", carry {carry}" if carry else "") + "]")

    def summary(self) -> list[str]:
        from ..pipeline.render import render_text

        return ["body:", *("  " + line for line in render_text(self.body).splitlines())]

