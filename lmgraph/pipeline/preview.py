"""See every prompt before running: what each model-calling node will send, without a model call.

:func:`preview_prompts` walks the program in schedule order and runs each node's own ``forward``
with a :class:`PreviewCall` in place of the executor's handle: the module resolves its prompt
format and renders its request exactly as in a run (the same ``predict`` code, the same
``resolve_format``, the same model preference from the run context), and the first request it
tries to send is recorded and the call stopped there -- no model is called.

* Inputs that only a model could compute (an upstream node's outputs) are shown as
  placeholders: ``<classify.answer_type>``; pipeline inputs not given: ``<question>``.
* Model-free nodes (``estimated_calls() == 0``, e.g. Retrieve) with known inputs run for real
  (a search), so their downstream prompts show the actual passages.
* Composite modules show their first call: ChainOfThought / Plan / Critique their one call;
  Refine its generator's first draft; BestOfN its first sample (the others differ only in
  rollout); CallTool its first step (empty trajectory); Map each sub-program node for the first
  item (a placeholder item when the list comes from a model).
* Control flow: a Loop shows its body's first iteration; a Route the branch its selector (or
  predicate) picks when what it reads is known, else its first branch.
* Repair / continuation calls happen only after a reply that could not be read; they are not
  shown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..context import RunContext
from ..errors import DefinitionError, RunError
from ..lm.base import LMRequest, LMResponse
from ..lm.values import jsonable
from .executor import NodeCall, _check_models, check_inputs
from .ir import INPUT, Const
from .trace import CallRecord, NodeTrace

if TYPE_CHECKING:
    from .program import Program

__all__ = ["Placeholder", "PromptList", "PromptPreview", "preview_prompts"]


class Placeholder(str):
    """A value only a model run would know, shown in prompts as ``<node.field>``."""

    __slots__ = ()


class _Captured(BaseException):
    """Stops a module at its first model call (BaseException: ``except Exception`` in module code
    must not swallow it)."""


class PreviewCall(NodeCall):
    """A node handle that records the first request a module sends and stops it there."""

    __slots__ = ()

    async def generate(self, request: LMRequest, *, lm: str | None = None,
                       format: str | None = None) -> tuple[LMResponse, CallRecord]:
        self.lm(lm)  # the same model lookup as a run: an unknown model name fails here too
        self.record(self.prepare(request), format)
        raise _Captured

    async def run_program(self, program: Program, inputs: Mapping[str, Any]) -> Any:
        raise DefinitionError("a prompt preview cannot run sub-programs of a custom module",
                              node=self.node, fix="run the program with a scripted model instead "
                              "(lmgraph.testing.FunctionLM) and read the trace.")


@dataclass(frozen=True)
class PromptPreview:
    """One node's request as it will be sent: ``request`` holds the messages (chat, json) or the
    prompt text (completion) and the decoding settings."""

    node: str
    kind: str
    format: str | None
    request: LMRequest
    note: str = ""
    placeholders: tuple[str, ...] = ()

    @property
    def messages(self) -> list[dict[str, str]] | None:
        return [m.to_dict() for m in self.request.messages] if self.request.messages is not None else None

    @property
    def prompt(self) -> str | None:
        return self.request.prompt

    @property
    def settings(self) -> dict[str, Any]:
        """Decoding settings: temperature, max_tokens, stop, seed, top_p, rollout, json_schema,
        choices (a scoring call) and logprobs -- those that are set."""
        r = self.request
        out: dict[str, Any] = {"temperature": r.temperature, "max_tokens": r.max_tokens, "stop": list(r.stop),
                               "seed": r.seed, "top_p": r.top_p, "rollout": r.rollout}
        if r.json_schema is not None:
            out["json_schema"] = r.json_schema
        if r.choices is not None:
            out["choices"] = list(r.choices)
        if r.logprobs:
            out["logprobs"] = True
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "kind": self.kind, "format": self.format, "messages": self.messages,
                "prompt": self.prompt, "settings": jsonable(self.settings), "note": self.note,
                "placeholders": list(self.placeholders)}

    def __str__(self) -> str:
        s = self.settings
        shown = {k: v for k, v in s.items() if k not in ("json_schema", "choices")}
        if s["top_p"] == 1.0:
            shown.pop("top_p")
        if not s["rollout"]:
            shown.pop("rollout")
        head = f"=== {self.node} ({self.kind}, format={self.format}) ==="
        lines = [head, "settings: " + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in shown.items())]
        if "choices" in s:
            lines.append("scores the choices: " + json.dumps(s["choices"], ensure_ascii=False))
        if "json_schema" in s:
            lines.append("json_schema: " + json.dumps(s["json_schema"], ensure_ascii=False))
        if self.note:
            lines.append("note: " + self.note)
        if self.request.prompt is not None:
            lines += ["--- prompt ---", self.request.prompt]
        else:
            for m in self.request.messages or ():
                lines += [f"--- {m.role} ---", m.content]
        return "\n".join(lines)


class PromptList(list[PromptPreview]):
    """The previews of a program in schedule order (a list of :class:`PromptPreview`), plus
    ``notes`` on nodes that could not be previewed or run."""

    def __init__(self, items: Any = (), notes: Any = ()) -> None:
        super().__init__(items)
        self.notes: list[str] = list(notes)

    def node(self, name: str) -> PromptPreview:
        for p in self:
            if p.node == name:
                return p
        raise KeyError(f"no prompt for node {name!r}; nodes with prompts: {', '.join(p.node for p in self) or 'none'}")

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": [p.to_dict() for p in self], "notes": list(self.notes)}

    def __str__(self) -> str:
        parts = [str(p) for p in self] or ["(no node of this program calls a model)"]
        if self.notes:
            parts.append("notes:\n" + "\n".join(f"- {n}" for n in self.notes))
        return "\n\n".join(parts)


def _placeholders_in(value: Any) -> list[str]:
    if isinstance(value, Placeholder):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _placeholders_in(v)]
    if isinstance(value, Mapping):
        return [p for v in value.values() for p in _placeholders_in(v)]
    return []


def _note(module: Any) -> str:
    from ..modules.best_of_n import BestOfN
    from ..modules.call_tool import CallTool
    from ..modules.critique import Refine

    if isinstance(module, BestOfN):
        return (f"sample 1 of {module.n} (the others differ only in rollout)"
                + ("; then a judge call per sample until one is accepted" if module.select == "judge" else ""))
    if isinstance(module, Refine):
        more = module.max_rounds - 1
        return "the first draft; then the judge" + (
            f", and up to {more} revision{'s' if more > 1 else ''} written from its feedback" if more else "")
    if isinstance(module, CallTool):
        return f"step 1 (no steps yet); up to {module.max_steps} steps, then a final answer call"
    from ..modules.base import calls_of

    estimated = calls_of(module, repairs=False)  # repair calls are not shown (module docstring)
    return f"call 1 of up to {estimated}" if estimated > 1 else ""


async def _forward(node: str, module: Any, kwargs: dict[str, Any], ctx: RunContext, *, model_free: bool = False
                   ) -> tuple[dict[str, Any] | None, CallRecord | None, BaseException | None]:
    """Run ``module.forward`` until its first model call: (outputs if it finished, the first call, error).
    ``node`` is the node's own name (what its requests carry)."""
    nt = NodeTrace(node, module.kind, dict(kwargs))
    try:
        out = await module.forward(dict(kwargs), PreviewCall(node, module, ctx, nt))
    except _Captured:
        return None, nt.calls[0], None
    except DefinitionError as e:
        if not model_free:
            raise  # the program or the context is wrong: the same error a run would raise
        return None, None, e  # e.g. a retriever not bound (the command line): a note
    except Exception as e:  # noqa: BLE001 - reported as a note, the preview goes on
        return None, (nt.calls[0] if nt.calls else None), e
    return dict(out), (nt.calls[0] if nt.calls else None), None


async def _preview(program: Program, given: dict[str, Any], ctx: RunContext, prefix: str,
                   out: PromptList, note: str = "") -> None:
    from ..modules.loop import Loop
    from ..modules.map import Map
    from ..modules.route import Route

    values: dict[str, dict[str, Any]] = {INPUT: given}
    for node in program.nodes:
        name = prefix + node.name
        module = node.module
        kwargs = {f: (b.value if isinstance(b, Const) else values[b.node][b.field]) for f, b in node.bindings}
        unknown = _placeholders_in(kwargs)
        outputs: dict[str, Any] | None = None
        if isinstance(module, Map):
            await _preview_map(name, module, kwargs, ctx, out)
        elif isinstance(module, (Route, Loop)):
            await _preview_control(name, module, kwargs, ctx, out, note)
        elif module.estimated_calls() == 0 and not unknown:
            # model-free (a search): run it for real so downstream prompts show its outputs
            outputs, rec, err = await _forward(node.name, module, kwargs, ctx, model_free=True)
            if rec is not None:
                out.append(_record(name, module, rec, unknown, note))
            if err is not None:
                out.notes.append(f"{name}: not run ({type(err).__name__}: {err}); its outputs are placeholders")
        elif module.estimated_calls() == 0:
            pass  # model-free on model outputs: its outputs stay placeholders
        else:
            outputs, rec, err = await _forward(node.name, module, kwargs, ctx)
            if rec is not None:
                out.append(_record(name, module, rec, unknown, "; ".join(x for x in (note, _note(module)) if x)))
            elif err is not None:
                out.notes.append(f"{name}: no prompt ({type(err).__name__}: {err})")
            else:
                out.notes.append(f"{name}: made no model call with these inputs")
        if outputs is None:
            outputs = {f: Placeholder(f"<{name}.{f}>") for f in module.signature.output_names}
        values[node.name] = outputs


def _record(name: str, module: Any, rec: CallRecord, unknown: list[str], note: str) -> PromptPreview:
    return PromptPreview(node=name, kind=module.kind, format=rec.format, request=rec.request, note=note,
                         placeholders=tuple(dict.fromkeys(unknown)))


async def _preview_map(name: str, module: Any, kwargs: dict[str, Any], ctx: RunContext, out: PromptList) -> None:
    """A Map's sub-program, previewed for its first item."""
    item: dict[str, Any] = {}
    count: int | None = None
    for n in module.program.input_specs:
        v = kwargs[n]
        if n not in module.over:
            item[n] = v
        elif isinstance(v, (list, tuple)) and not isinstance(v, Placeholder):
            if not v:
                out.notes.append(f"{name}: maps over an empty list {n!r}; no prompts")
                return
            count = len(v) if count is None else min(count, len(v))
            item[n] = v[0]
        elif isinstance(v, Placeholder):
            item[n] = Placeholder(f"<{v.strip('<>')}[0]>")
        else:
            out.notes.append(f"{name}: maps over {n!r}, which is a {type(v).__name__}, not a list; no prompts")
            return
    per_item = f"item 1 of {count}" if count is not None else "the first item"
    await _preview(module.program, item, ctx, name + "/", out, note=f"Map {per_item}")


async def _preview_control(name: str, module: Any, kwargs: dict[str, Any], ctx: RunContext, out: PromptList,
                           note: str) -> None:
    """A Loop's body for its first iteration; a Route's branch: the one its selector (or predicate)
    picks when the inputs it reads are known, else the first branch."""
    from ..modules.control import call_predicate
    from ..modules.loop import Loop

    if isinstance(module, Loop):
        own = f"Loop iteration 1 of up to {module.max_iters}"
        sub, prefix = module.body, name + "/"
    else:
        branches = list(module.branches)
        chosen, own = branches[0], f"Route branch {branches[0]!r} (the first"
        reads = ({module.selector: kwargs[module.selector]} if module.predicate is None else
                 {n: kwargs[n] for n in module.signature.input_names})
        by = module.selector if module.predicate is None else f"{module.predicate_name}()"
        if _placeholders_in(reads):
            own += f"; {by} picks one at run time)"
        else:
            try:
                value = reads[module.selector] if module.predicate is None else \
                    await call_predicate(module.predicate, module.predicate_name, reads, name)
                chosen = module.pick(value, name)
                own = f"Route branch {chosen!r} (picked by {by}"
            except RunError as e:  # a value that names no branch: what the run would fail with
                out.notes.append(f"{name}: no branch to preview ({e})")
                return
            own += ")"
        sub, prefix = module.branches[chosen], f"{name}/{chosen}/"
    await _preview(sub, {n: kwargs[n] for n in sub.input_specs}, ctx, prefix, out,
                   note="; ".join(x for x in (note, own) if x))


async def preview_prompts(program: Program, inputs: Mapping[str, Any], ctx: RunContext) -> PromptList:
    """The request each model-calling node of ``program`` will send (see the module docstring).

    ``ctx`` decides the model each node resolves its prompt format for; its cache is not used
    and no model is called.
    """
    given = check_inputs(program, inputs, allow_missing=True)
    for n in program.input_specs:
        if n not in given:
            given[n] = Placeholder(f"<{n}>")
    _check_models(program, ctx)
    out = PromptList()
    await _preview(program, given, ctx.replace(cache=False), "", out)
    return out
