"""CallTool: a ReAct-style loop -- think, call a Python tool, observe -- then extract the outputs.

Each step is two model calls:

1. *choose*: ``<inputs>, trajectory -> thought, tool: Literal[<tools>, "finish"]`` -- the next
   tool by name;
2. *fill*: ``<inputs>, trajectory, thought -> args: <the chosen tool's parameters>`` -- the
   arguments, under the chosen tool's own JSON schema, so they can only be that tool's arguments. A
   small model shown a schema in free text copies it (``{"type": "string", ...}``) instead of
   filling it; under the tool's schema it cannot. Skipped for ``finish`` and for tools without
   parameters.

Both use the ``json`` format when the node's format is ``auto``: the request carries the schema
(a grammar on llama.cpp, structured outputs on servers), so the tool is one of the names and the
arguments fit. An explicit format is used as given (the reply is still validated against the
schema, and a repair call carries it).

The arguments are validated against the schema before the tool runs; arguments that do not fit
(after one repair call) are an error in the trajectory and in ``trace.meta["steps"]``, not a
crash, and the loop goes on. The tool's result (or its error) is appended to the trajectory.
The loop stops at ``finish`` or after ``max_steps`` steps; a final call reads the trajectory and
produces the declared outputs (plus ``trajectory: str``). Tools are resources bound by name on
load.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import pydantic

from ..errors import DefinitionError, OutputParseError
from ..lm.values import jsonable
from ..signatures import FieldSpec, Signature, ensure_signature
from .base import IORecord, Module, need_resource, normalise_demos
from .predict import GenerationSettings, predict

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall
    from ..pipeline.trace import NodeTrace

__all__ = ["CallTool", "Tool"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FINISH = "finish"
MAX_OBSERVATION_CHARS = 2000


class ToolArgumentError(ValueError):
    """The model's arguments do not fit the tool's parameters."""


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


class Tool:
    """A Python function the model may call; arguments are validated with pydantic."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None) -> None:
        if not callable(fn):
            raise DefinitionError(f"a tool must be callable, got {type(fn).__name__}",
                                  fix="pass a function or Tool(fn, name=...).")
        name = name or getattr(fn, "__name__", None) or type(fn).__name__
        if not _IDENT.match(name) or name == FINISH:
            raise DefinitionError(f"tool name {name!r} is not usable",
                                  fix=f"pass Tool(fn, name='an_identifier'); {FINISH!r} is reserved.")
        self.fn = fn
        self.name = name
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
        extra = "forbid"
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
        self._model = pydantic.create_model(f"{name}_args", __config__=pydantic.ConfigDict(extra=extra),
                                            **fields)  # type: ignore[call-overload]
        self.parameters_schema = _strip_titles(self._model.model_json_schema(by_alias=True))

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

    async def run(self, args: Any) -> Any:
        """Validate ``args`` and call the function (sync functions run in a worker thread)."""
        pos, kw = self.validate(args)
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(*pos, **kw)
        out = await asyncio.to_thread(self.fn, *pos, **kw)
        return await out if inspect.isawaitable(out) else out

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
            tool = t if key in (None, t.name) else Tool(t.fn, name=key, description=t.description)
        else:
            tool = Tool(t, name=key)
        if tool.name in out:
            raise DefinitionError(f"two tools are named {tool.name!r}", fix="give each tool a distinct name.")
        out[tool.name] = tool
    if not out:
        raise DefinitionError("CallTool needs at least one tool", fix="pass tools=[my_function, ...].")
    return out


def observation_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(jsonable(value), ensure_ascii=False)
    return text if len(text) <= MAX_OBSERVATION_CHARS else text[:MAX_OBSERVATION_CHARS] + " ...(truncated)"


TRAJECTORY = FieldSpec("trajectory", str, "the steps taken so far: thoughts, tool calls and observations")
NO_STEPS = "(no steps yet)"
STEP_PROTOCOL = ("You solve the task step by step with tools. At each step write a short thought, then "
                 "choose one tool by its name (its arguments are asked for next). The trajectory shows "
                 "your earlier steps and what each tool returned (including errors). When you know "
                 "enough to give {outputs}, choose the tool \"finish\".\n\nTools:\n{tools}\n"
                 "- finish: stop; the final answer is written afterwards from the trajectory.")
FILL_PROTOCOL = ("Write the arguments for the tool `{name}`{description}. Its arguments: {args}. "
                 "Use the actual values the task needs (from the task, the thought and what earlier "
                 "tools returned), not a description of the arguments.")
THOUGHT = FieldSpec("thought", str, "why this tool, and what to call it with")


class CallTool(GenerationSettings, Module):
    """ReAct: ``signature`` inputs -> (think, call tool, observe)* -> signature outputs + trajectory.

    Parameters: ``instructions`` (the task, shown in every call), ``demos`` (the final answer
    call: ``<inputs> -> <outputs>``), ``step.demos`` (the choose call: ``<inputs>, trajectory ->
    thought, tool``; bootstrapped from the steps of passing runs), ``format``, ``lm``,
    ``temperature``, ``max_tokens``, ``max_steps``.
    """

    kind = "call_tool"
    tunable = ("instructions", "demos", "format", "lm", "max_steps", "temperature", "max_tokens", "step_demos")
    param_attrs = {"step.demos": "step_demos"}

    def __init__(self, signature: "str | Signature | type[Signature]", tools: Any, *, max_steps: int = 5,
                 instructions: str | None = None, demos: Sequence[Mapping[str, Any]] = (),
                 format: str = "auto", lm: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 256, repair: bool = True, types: Mapping[str, Any] | None = None,
                 cache: bool = True, step_demos: Sequence[Mapping[str, Any]] = ()) -> None:
        self.base_signature = ensure_signature(signature, types=dict(types or {}))
        self.tools = as_tools(tools)
        self._init_generation(instructions=instructions, format=format, lm=lm, temperature=temperature,
                              max_tokens=max_tokens, repair=repair, cache=cache)
        self.max_steps = max_steps
        sig = self.base_signature
        for f in sig.inputs:
            if f.name in ("trajectory", "thought", "tool", "args"):
                raise DefinitionError(f"CallTool reserves the field name {f.name!r}", field=f.name,
                                      fix="rename that input.")
        if sig.output("trajectory") is not None:
            raise DefinitionError("CallTool adds its own 'trajectory' output", field="trajectory",
                                  fix="rename that output.")
        self.demos = normalise_demos(demos, sig)
        self.step_demos = normalise_demos(step_demos, self.step_signature())
        self._check()
        self._freeze()

    def _check(self) -> None:
        self._check_generation()
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise DefinitionError(f"max_steps must be a positive integer, got {self.max_steps!r}",
                                  fix="pass max_steps=5 (or another positive integer).")

    @property
    def signature(self) -> Signature:
        sig = self.base_signature
        return Signature(sig.inputs, (*sig.outputs, TRAJECTORY), sig.instructions)

    @property
    def signature_for_demos(self) -> Signature:
        return self.base_signature

    def demo_spec(self, attr: str) -> tuple[Signature, tuple[str, ...]] | None:
        if attr == "step_demos":
            return self.step_signature(), ()
        return super().demo_spec(attr)

    def step_signature(self) -> Signature:
        """The *choose* call: ``<inputs>, trajectory -> thought, tool: Literal[<tools>, "finish"]``."""
        names = (*self.tools, FINISH)
        return Signature((*self.base_signature.inputs, TRAJECTORY), (
            THOUGHT, FieldSpec("tool", Literal[names], "the tool to call")))  # type: ignore[valid-type]

    def fill_signature(self, tool: str) -> Signature:
        """The *fill* call: ``<inputs>, trajectory, thought -> args`` typed by ``tool``'s parameters
        (a pydantic model, so the JSON format sends that tool's schema and validates the reply)."""
        t = self.tools[tool]
        return Signature((*self.base_signature.inputs, TRAJECTORY, THOUGHT), (
            FieldSpec("args", t.args_model, f"the arguments of {tool} as a JSON object: {t.describe_args()}"),))

    def step_instructions(self) -> str:
        outs = ", ".join(f"`{n}`" for n in self.base_signature.output_names)
        return self.instructions.strip() + "\n\n" + STEP_PROTOCOL.format(
            outputs=outs, tools="\n".join(t.render() for t in self.tools.values()))

    def fill_instructions(self, tool: str) -> str:
        t = self.tools[tool]
        return self.instructions.strip() + "\n\n" + FILL_PROTOCOL.format(
            name=tool, description=f" ({t.description.rstrip('.')})" if t.description else "",
            args=t.describe_args())

    def step_format(self) -> str:
        """The choose and fill calls' format: ``json`` (the schema -- the tool names, then the chosen
        tool's parameters -- goes with the request) unless the node's format is set explicitly.
        The final answer call resolves ``auto`` as a Predict does."""
        return "json" if self.format == "auto" else self.format

    async def _step_call(self, call: "NodeCall", sig: Signature, inputs: dict[str, Any],
                         instructions: str, demos: Sequence[Mapping[str, Any]] = (),
                         format: str | None = None) -> dict[str, Any]:
        return await predict(call, sig, inputs, instructions=instructions, demos=demos,
                             format=format or self.format, lm=self.lm, temperature=self.temperature,
                             max_tokens=self.max_tokens, repair=self.repair)

    async def forward(self, inputs: dict[str, Any], call: "NodeCall") -> dict[str, Any]:
        step_sig, step_instr = self.step_signature(), self.step_instructions()
        lines: list[str] = []
        steps: list[dict[str, Any]] = []
        call.trace.meta["steps"] = steps
        # each choose call: where its trajectory ends in the final one, its thought and tool, and
        # whether the step went through (the source of bootstrapped step demos, see child_io)
        chosen: list[dict[str, Any]] = []
        call.trace.meta["step_calls"] = chosen
        for i in range(1, self.max_steps + 1):
            traj = "\n".join(lines) or NO_STEPS
            try:
                step = await self._step_call(call, step_sig, {**inputs, "trajectory": traj}, step_instr,
                                             self.step_demos, format=self.step_format())
            except OutputParseError as e:
                lines.append(f"Step {i}: the reply could not be read ({e}). Reply with a valid tool name.")
                steps.append({"step": i, "error": str(e)})
                continue
            tool, thought = step["tool"], step["thought"]
            choice = {"at": len("\n".join(lines)), "thought": thought, "tool": tool, "ok": tool == FINISH}
            chosen.append(choice)
            lines.append(f"Thought {i}: {thought}")
            if tool == FINISH:
                lines.append(f"Action {i}: {FINISH}()")
                steps.append({"step": i, "tool": FINISH})
                break
            record: dict[str, Any] = {"step": i, "tool": tool}
            steps.append(record)
            args: dict[str, Any] = {}
            if self.tools[tool].takes_args:
                try:
                    filled = await self._step_call(
                        call, self.fill_signature(tool), {**inputs, "trajectory": traj, "thought": thought},
                        self.fill_instructions(tool), format=self.step_format())
                except OutputParseError as e:
                    error = f"the arguments for {tool} do not fit its parameters ({e})"
                    lines += [f"Action {i}: {tool}(?)", f"Observation {i}: Error: {error}."]
                    record.update(ok=False, error=error, observation=f"Error: {error}.")
                    continue
                args = filled["args"].model_dump(by_alias=True, exclude_unset=True)
            lines.append(f"Action {i}: {tool}({json.dumps(jsonable(args), ensure_ascii=False)})")
            observation, ok, error = await self._run_tool(tool, args)
            lines.append(f"Observation {i}: {observation}")
            record.update(args=jsonable(args), ok=ok, observation=observation)
            choice["ok"] = ok
            if error:
                record["error"] = error
        trajectory = "\n".join(lines) or NO_STEPS
        extract_sig = self.base_signature.append_input(TRAJECTORY)
        demos = [{**d, "trajectory": "(omitted)"} for d in self.demos]
        out = await self._step_call(call, extract_sig, {**inputs, "trajectory": trajectory},
                                    self.instructions, demos)
        return {**out, "trajectory": trajectory}

    async def _run_tool(self, name: str, args: Any) -> tuple[str, bool, str | None]:
        """(observation, ok, error): a tool's failure or bad arguments are observations, not crashes."""
        tool = self.tools.get(name)
        if tool is None:  # only reachable with a non-Literal parse; kept for safety
            error = f"unknown tool {name!r}; tools: {', '.join(self.tools)}, {FINISH}"
            return f"Error: {error}.", False, error
        try:
            tool.validate(args)  # checked before the call: the function never sees bad arguments
        except ToolArgumentError as e:
            return f"Error: bad arguments for {name}: {e}", False, f"bad arguments: {e}"
        try:
            return observation_text(await tool.run(args)), True, None
        except ToolArgumentError as e:
            return f"Error: bad arguments for {name}: {e}", False, f"bad arguments: {e}"
        except Exception as e:  # noqa: BLE001 - a tool failure is an observation, not a crash
            return f"Error: {name} raised {type(e).__name__}: {e}", False, f"{type(e).__name__}: {e}"

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        # per step: choose the tool, then fill its arguments (when any tool takes some); then the
        # answer; each call may be followed by one repair call
        fill = 1 if any(t.takes_args for t in self.tools.values()) else 0
        calls = self.max_steps * (1 + fill) + 1
        return 2 * calls if repairs and self.repair else calls

    def child_io(self, trace: "NodeTrace") -> dict[str, list[IORecord]]:
        """The choose calls whose step went through (the tool ran without error, or ``finish``),
        as ``step`` records: the inputs and the trajectory so far -> the thought and the tool."""
        outs = trace.outputs or {}
        final = outs.get("trajectory")
        if not isinstance(final, str):
            return {}
        names = self.base_signature.input_names
        if not all(n in trace.inputs for n in names):
            return {}
        records: list[IORecord] = []
        for c in trace.meta.get("step_calls") or ():
            if not c.get("ok"):
                continue
            so_far = final[:c["at"]] or NO_STEPS
            records.append({"inputs": {**{n: trace.inputs[n] for n in names}, "trajectory": so_far},
                            "outputs": {"thought": c["thought"], "tool": c["tool"]}})
        return {"step": records} if records else {}

    def config(self) -> dict[str, Any]:
        config = {"signature": self.base_signature.to_dict(), "tools": list(self.tools),
                  "max_steps": self.max_steps, **self._generation_config()}
        if self.step_demos:  # written only when set: existing artifacts keep their bytes/hash
            config["step_demos"] = [dict(d) for d in self.step_demos]
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> "CallTool":
        tools = {n: need_resource(resources, n, "tool") for n in config["tools"]}
        return cls(Signature.from_dict(config["signature"], types=dict(types or {})), tools,
                   max_steps=config.get("max_steps", 5), step_demos=config.get("step_demos", ()),
                   **cls._generation_kwargs(config))

    def resources(self) -> dict[str, Any]:
        return dict(self.tools)

    def describe(self) -> str:
        extra = f", {len(self.demos)} demos" if self.demos else ""
        extra += f", {len(self.step_demos)} step demos" if self.step_demos else ""
        return f"CallTool[{', '.join(self.tools)}; max_steps={self.max_steps}, {self.format}{extra}]"

    def summary(self) -> list[str]:
        return [f"tools: {', '.join(self.tools)}"]
