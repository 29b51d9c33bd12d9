"""Route: run exactly one of several sub-programs (branches) per row.

The branch is picked either

* by a **selector input** (``Route("choice", branches=...)``, the default selector name is
  ``"choice"``): the node takes an extra input holding the branch name, bound like any input to
  an upstream ``Literal`` output (``p.add(lg.Route(branches={...}), choice=classify.route, ...)``).
  Without ``default`` the input is typed ``Literal[<branch names>]``, so the build fails when the
  upstream output has an option no branch takes; with ``default`` it is ``str`` and any value that
  names no branch runs the default branch; or
* by a **predicate** (``Route(pick, branches=...)`` or ``Route(lg.resource("pick", pick), ...)``):
  ``pick(values) -> branch name`` is called with the node's inputs (a dict) and may be async. It
  is a resource: the program file keeps its name, ``Program.load(..., resources={"pick": pick})``
  binds it again.

Every branch takes its inputs from the Route node (the node's inputs are the union of the
branches' inputs; a name two branches share must have one type) and every branch exports the same
outputs with the same types -- the node's outputs. The trace records the branch that ran
(``trace.meta["branch"]``) and its sub-run (``trace.children``). Parameter paths reach inside the
branches: ``<route node>.<branch>.<sub-node>.<param>``.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from ..errors import DefinitionError, RunError
from ..signatures import FieldSpec, Signature, type_to_str
from .base import IORecord, Module
from .control import Branch, as_program, call_predicate, named_callable, output_types, predicate_from_config, program_io

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall
    from ..pipeline.program import Program
    from ..pipeline.trace import NodeTrace

__all__ = ["Route"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Route(Module):
    """Pick one branch (a sub-program) per row, by a selector input or a predicate; its outputs are
    the node's outputs."""

    kind = "route"
    branches: dict[str, Program]  # the built branch programs (checked in _check)
    _signature: Signature  # built in __init__ from the children
    config_model = "RouteConfig"
    tunable = ("branches",)
    child_attrs = ("branches",)

    def __init__(self, selector: Any = "choice", branches: Mapping[str, Any] | None = None, *,
                 default: str | None = None) -> None:
        if branches is None:
            raise DefinitionError("Route needs branches={name: program, ...}",
                                  fix="pass lg.Route('choice', branches={'calc': calc_program, 'search': "
                                      "search_program}).")
        if not isinstance(branches, Mapping) or not branches:
            raise DefinitionError(f"Route's branches must be a non-empty mapping of name -> program, got "
                                  f"{type(branches).__name__ if not isinstance(branches, Mapping) else 'none'}",
                                  fix="pass branches={'calc': calc_program, 'search': search_program}.")
        self.branches = dict(branches)  # checked and built in _check
        if isinstance(selector, str):
            self.selector: str | None = selector
            self.predicate: Any = None
            self.predicate_name: str | None = None
        else:
            self.selector = None
            self.predicate_name, self.predicate = named_callable(selector, "Route", "selector")
        self.default = default
        self._check()
        self._freeze()

    # ---- checks and the node's signature
    def _check(self) -> None:
        if not isinstance(self.branches, Mapping) or not self.branches:
            raise DefinitionError("Route's branches must be a non-empty mapping of name -> program",
                                  fix="pass branches={'calc': calc_program, 'search': search_program}.")
        # replace(branches=...) and replace_child come through here too: pipelines are built
        object.__setattr__(self, "branches", {k: as_program(v, "Route", f"branch {k!r}")
                                              for k, v in self.branches.items()})
        names = list(self.branches)
        for b in names:
            if not isinstance(b, str) or not _IDENT.match(b):
                raise DefinitionError(f"Route branch name {b!r} is not an identifier",
                                      fix="name branches like Python variables (letters, digits, _): they are "
                                          "the selector's values and parts of parameter paths.")
        if self.default is not None and self.default not in self.branches:
            raise DefinitionError(f"Route default {self.default!r} is not a branch", field="default",
                                  fix=f"pass default= one of {', '.join(map(repr, names))}, or leave it out.")
        inputs: dict[str, tuple[Any, str]] = {}
        for b, prog in self.branches.items():
            for n, t in prog.input_specs.items():
                if n in inputs and inputs[n][0] != t:
                    other, first = inputs[n][1], inputs[n][0]
                    raise DefinitionError(f"Route branches {other!r} and {b!r} both take {n!r}, as "
                                          f"{type_to_str(first)} and {type_to_str(t)}", field=n,
                                          fix=f"declare {n!r} with one type in every branch (they all read the "
                                              "same node input).")
                inputs.setdefault(n, (t, b))
        for b, prog in self.branches.items():
            clash = [o for o in output_types(prog) if o in inputs]
            if clash:
                raise DefinitionError(f"Route branch {b!r} exports {clash[0]!r}, which is also an input of "
                                      f"branch {inputs[clash[0]][1]!r} (the Route node takes every branch's "
                                      "inputs and gives their outputs)", field=clash[0],
                                      fix="rename that input or that output in the branch's pipeline.")
        if self.selector is not None:
            if not _IDENT.match(self.selector):
                raise DefinitionError(f"Route selector {self.selector!r} is not an input name",
                                      fix="pass the name of the input that holds the branch name, e.g. "
                                          "Route('choice', ...), bound with choice=classify.route.")
            if self.selector in inputs:
                raise DefinitionError(f"Route selector input {self.selector!r} is also an input of branch "
                                      f"{inputs[self.selector][1]!r}", field=self.selector,
                                      fix="name the selector input differently: Route('choice', ...).")
        first_name = names[0]
        want = output_types(self.branches[first_name])
        for b in names[1:]:
            got = output_types(self.branches[b])
            for o, t in want.items():
                if o not in got:
                    raise DefinitionError(f"Route branch {b!r} has no output {o!r} (branch {first_name!r} has)",
                                          field=o, fix=f"every branch exports the same outputs: add "
                                                       f"{b}.output({o}=...) or drop {o!r} from {first_name!r}.")
                if got[o] != t:
                    raise DefinitionError(f"Route branch {b!r} exports {o!r} as {type_to_str(got[o])}, but branch "
                                          f"{first_name!r} as {type_to_str(t)}", field=o,
                                          fix="every branch exports each output with the same type: change one "
                                              "signature so both say the type the value really has.")
            extra = [o for o in got if o not in want]
            if extra:
                raise DefinitionError(f"Route branch {b!r} exports {extra[0]!r}, which branch {first_name!r} "
                                      "does not", field=extra[0],
                                      fix=f"every branch exports the same outputs: add it to {first_name!r} or "
                                          f"drop it from {b!r}.")
        ins = []
        if self.selector is not None:
            if self.default is None:
                ann: Any = Literal.__getitem__(tuple(names))
                desc = f"the branch to run: {', '.join(names)}"
            else:
                ann = str
                desc = f"the branch to run: {', '.join(names)} (others: {self.default})"
            ins.append(FieldSpec(self.selector, ann, desc))
        ins += [FieldSpec(n, t) for n, (t, _) in inputs.items()]
        outs = [FieldSpec(o, t) for o, t in want.items()]
        object.__setattr__(self, "_signature", Signature(ins, outs, f"Run one of the branches {', '.join(names)}."))

    @property
    def signature(self) -> Signature:
        return self._signature

    def edge_problem(self, field: str, source: Any, ref: str) -> tuple[str, str] | None:
        """Why ``ref`` (of type ``source``) cannot be the selector input: an option with no branch."""
        if field != self.selector:
            return None
        names = ", ".join(map(repr, self.branches))
        if typing.get_origin(source) is Literal:
            missing = [v for v in typing.get_args(source) if v not in self.branches]
            if missing:
                return (f"{ref} may be {', '.join(map(repr, missing))}, but no branch is called so "
                        f"(branches: {names})",
                        f"add a branch for {missing[0]!r} (branches={{..., {missing[0]!r}: program}}), or pass "
                        f"default=<a branch> to run that one for the other options.")
        return (f"the selector picks a branch by name, but {ref} is {type_to_str(source)}",
                f"bind an output typed Literal[{names}] (e.g. a Predict 'question -> route: Literal[{names}]')"
                + (", or pass default=<a branch> to accept any string" if self.default is None else "") + ".")

    # ---- running
    def pick(self, value: Any, node: str | None = None) -> str:
        """The branch for a selector value: that branch, else the default, else a RunError."""
        if isinstance(value, str) and value in self.branches:
            return value
        if self.default is not None:
            return self.default
        how = f"the predicate {self.predicate_name!r} returned" if self.predicate is not None else "the selector is"
        raise RunError(f"{how} {value!r}, which names no branch (branches: {', '.join(self.branches)}). "
                       "Fix: return a branch name, or pass default=<a branch>.", node=node)

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        if self.predicate is not None:
            values = {n: inputs[n] for n in self.signature.input_names}
            value = await call_predicate(self.predicate, self.predicate_name or "", values, call.node)
        else:
            value = inputs[self.selector]  # type: ignore[index]
        name = self.pick(value, call.node)
        call.trace.meta["branch"] = name
        if name != value:
            call.trace.meta["selected"] = value if isinstance(value, (str, int, float, bool)) or value is None \
                else repr(value)
        branch = self.branches[name]
        pred = await call.run_program(branch, {n: inputs[n] for n in branch.input_specs})
        return {o: pred[o] for o in self.signature.output_names}

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        """The most calls any one branch makes (exactly one runs)."""
        return max(p.estimated_calls(repairs=repairs) for p in self.branches.values())

    # ---- saving
    def kind_config(self) -> dict[str, Any]:
        return {"selector": self.selector if self.predicate is None else {"predicate": self.predicate_name},
                "branches": {n: p.to_dict() for n, p in self.branches.items()}}

    @classmethod
    def kind_kwargs(cls, config: Any, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> dict[str, Any]:
        from ..pipeline.program import Program

        selector = config.selector
        if not isinstance(selector, str):  # a predicate saved by name
            selector = predicate_from_config(resources, selector.predicate, "route predicate")
        return {"selector": selector,
                "branches": {n: Program.from_dict(d, resources=resources, types=types)
                             for n, d in config.branches.items()}}

    def resources(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.branches.values():
            out.update(p.resources())
        if self.predicate is not None and self.predicate_name:
            out[self.predicate_name] = self.predicate
        return out

    # ---- the parameter tree
    def submodules(self) -> dict[str, Module]:
        """Each branch, by name, as a :class:`~lmgraph.modules.control.Branch` whose children are
        its nodes (paths ``<route>.<branch>.<node>.<param>``)."""
        return {n: Branch(p) for n, p in self.branches.items()}

    def replace_child(self, name: str, module: Module) -> Route:
        if name not in self.branches:
            raise DefinitionError(f"Route has no branch {name!r}", fix=f"branches: {', '.join(self.branches)}.")
        program = module.program if isinstance(module, Branch) else module
        return self._copy_with({"branches": {**self.branches, name: program}})  # type: ignore[return-value]

    def child_io(self, trace: NodeTrace) -> dict[str, list[IORecord]]:
        """The branch that ran: its inputs/outputs, and each of its nodes' (by path)."""
        name = trace.meta.get("branch")
        if name not in self.branches or not trace.children:
            return {}
        run = trace.children[-1]
        out: dict[str, list[IORecord]] = {}
        if run.outputs is not None:
            out[name] = [{"inputs": dict(run.inputs), "outputs": dict(run.outputs)}]
        for path, records in program_io(self.branches[name], run).items():
            out[f"{name}.{path}"] = records
        return out

    def child_fields(self, child: str) -> dict[str, tuple[str, bool]]:
        """A branch's inputs and outputs are the Route's own, under the same names."""
        program = self.branches.get(child)
        if program is None:
            return {}
        return {n: (n, False) for n in (*program.input_specs, *output_types(program))}

    # ---- views
    def describe(self) -> str:
        how = self.selector if self.predicate is None else f"predicate {self.predicate_name}"
        default = f", default={self.default}" if self.default is not None else ""
        return f"Route[by {how}: {' | '.join(self.branches)}{default}]"

    def summary(self) -> list[str]:
        from ..pipeline.render import render_text

        lines = []
        for n, p in self.branches.items():
            lines.append(f"branch {n}:")
            lines += ["  " + line for line in render_text(p).splitlines()]
        return lines

