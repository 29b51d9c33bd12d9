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

Tools are contained (:mod:`lmgraph.modules.tools`): each call has a time limit (``tool_timeout``,
30 s, unless the tool sets its own ``timeout``), its output is cut to ``max_output_chars`` with a
marker, sync tools run on this node's own bounded daemon threads (``tool_threads``), and whatever
a tool raises -- ``SystemExit`` from argparse included -- is an observation for the model and an
``error`` in the step's trace record (``on_tool_error="fail"`` fails the row with a
:class:`~lmgraph.modules.tools.ToolError` instead); only ``KeyboardInterrupt`` and cancellation
propagate. ``Tool(fn, isolation="process")`` runs a tool in a subprocess killed at its limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import ConfigError, DefinitionError, OutputParseError
from ..lm.values import jsonable
from ..signatures import FieldSpec, Signature, ensure_signature
from .base import IORecord, Module, need_resource, normalise_demos
from .predict import GenerationSettings, predict
from .tools import (
    DEFAULT_MAX_OUTPUT_CHARS,
    DEFAULT_TOOL_THREADS,
    DEFAULT_TOOL_TIMEOUT,
    FINISH,
    PASS_THROUGH,
    Tool,
    ToolArgumentError,
    ToolError,
    ToolThreads,
    as_tools,
    check_positive_int,
    check_timeout,
    error_type_name,
    invoke,
    observation_text,
    truncate,
)

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall
    from ..pipeline.trace import NodeTrace

__all__ = ["CallTool", "Tool", "ToolArgumentError", "ToolError", "as_tools", "observation_text"]

MAX_OBSERVATION_CHARS = DEFAULT_MAX_OUTPUT_CHARS
TOOL_ERROR_POLICIES = ("observe", "fail")


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
    config_model = "CallToolConfig"
    tunable = ("instructions", "demos", "format", "lm", "max_steps", "temperature", "max_tokens", "step_demos")
    param_attrs: ClassVar[dict[str, str]] = {"step.demos": "step_demos"}

    def __init__(self, signature: str | Signature | type[Signature], tools: Any, *, max_steps: int = 5,
                 instructions: str | None = None, demos: Sequence[Mapping[str, Any]] = (),
                 format: str = "auto", lm: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 256, repair: bool = True, types: Mapping[str, Any] | None = None,
                 cache: bool = True, step_demos: Sequence[Mapping[str, Any]] = (),
                 tool_timeout: float | None = DEFAULT_TOOL_TIMEOUT,
                 max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS, tool_threads: int = DEFAULT_TOOL_THREADS,
                 on_tool_error: str = "observe") -> None:
        self.base_signature = ensure_signature(signature, types=dict(types or {}))
        self.tools = as_tools(tools)
        self.tool_timeout = check_timeout(tool_timeout, "tool_timeout")
        self.max_output_chars = check_positive_int(max_output_chars, "max_output_chars", allow_none=False)
        if on_tool_error not in TOOL_ERROR_POLICIES:
            raise ConfigError(f"on_tool_error must be one of {', '.join(TOOL_ERROR_POLICIES)}, got {on_tool_error!r}",
                              fix="pass on_tool_error='observe' (the model reads the error and goes on) or "
                                  "'fail' (the row fails with a ToolError).")
        self.on_tool_error = on_tool_error
        self.tool_threads = ToolThreads(tool_threads)  # this node's own bounded threads for sync tools
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
            THOUGHT, FieldSpec("tool", Literal[names], "the tool to call")))

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

    async def _step_call(self, call: NodeCall, sig: Signature, inputs: dict[str, Any],
                         instructions: str, demos: Sequence[Mapping[str, Any]] = (),
                         format: str | None = None) -> dict[str, Any]:
        return await predict(call, sig, inputs, instructions=instructions, demos=demos,
                             format=format or self.format, lm=self.lm, temperature=self.temperature,
                             max_tokens=self.max_tokens, repair=self.repair)

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
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
                    error: str | None = f"the arguments for {tool} do not fit its parameters ({e})"
                    lines += [f"Action {i}: {tool}(?)", f"Observation {i}: Error: {error}."]
                    record.update(ok=False, error=error, observation=f"Error: {error}.")
                    continue
                args = filled["args"].model_dump(by_alias=True, exclude_unset=True)
            lines.append(f"Action {i}: {tool}({json.dumps(jsonable(args), ensure_ascii=False)})")
            observation, ok, error = await call.run_tool(tool, args, self._run_tool(tool, args))
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

    def limits(self, tool: Tool) -> tuple[float | None, int]:
        """(time limit in seconds or None, output cap in characters) for ``tool``: its own
        settings where it has them, else this node's ``tool_timeout`` / ``max_output_chars``."""
        timeout = tool.timeout if tool.timeout is not None else self.tool_timeout
        cap = tool.max_output_chars if tool.max_output_chars is not None else self.max_output_chars
        return timeout, cap

    async def _run_tool(self, name: str, args: Any) -> tuple[str, bool, str | None]:
        """(observation, ok, error): a tool's failure -- an exception of any kind, ``SystemExit``
        included, a time limit, bad arguments -- is an observation, not a crash (with
        ``on_tool_error="fail"`` it fails the row with a :class:`ToolError` instead).
        ``KeyboardInterrupt`` and cancellation are never caught."""
        tool = self.tools.get(name)
        if tool is None:  # only reachable with a non-Literal parse; kept for safety
            error = f"unknown tool {name!r}; tools: {', '.join(self.tools)}, {FINISH}"
            return f"Error: {error}.", False, error
        timeout, cap = self.limits(tool)
        try:
            pos, kw = tool.validate(args)  # checked before the call: the function never sees bad arguments
        except ToolArgumentError as e:
            return self._failed(name, f"Error: bad arguments for {name}: {e}", f"bad arguments: {e}", cap)
        ok, value = await invoke(tool, pos, kw, timeout=timeout, threads=self.tool_threads)
        if ok:
            return observation_text(value, cap), True, None
        if isinstance(value, PASS_THROUGH):  # a tool that returned a KeyboardInterrupt thread outcome
            raise value
        if isinstance(value, ToolArgumentError):
            return self._failed(name, f"Error: bad arguments for {name}: {value}", f"bad arguments: {value}", cap,
                                value)
        if isinstance(value, ToolError):  # a time limit, a dead process: already says what happened
            return self._failed(name, f"Error: {value}.", str(value), cap, value)
        kind = error_type_name(value)
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - an exception whose __str__ raises
            text = "(no message)"
        return self._failed(name, f"Error: {name} raised {kind}: {text}", f"{kind}: {text}", cap, value)

    def _failed(self, name: str, observation: str, error: str, cap: int,
                cause: BaseException | None = None) -> tuple[str, bool, str]:
        if self.on_tool_error == "fail":
            err = ToolError(f"tool {name!r} failed: {truncate(error, cap)}", tool=name,
                            error_type=getattr(cause, "error_type", None) or (
                                error_type_name(cause) if cause is not None else "bad arguments"))
            raise err from cause
        return truncate(observation, cap), False, truncate(error, cap)

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        # per step: choose the tool, then fill its arguments (when any tool takes some); then the
        # answer; each call may be followed by one repair call
        fill = 1 if any(t.takes_args for t in self.tools.values()) else 0
        calls = self.max_steps * (1 + fill) + 1
        return 2 * calls if repairs and self.repair else calls

    def child_io(self, trace: NodeTrace) -> dict[str, list[IORecord]]:
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

    def kind_config(self) -> dict[str, Any]:
        return {**super().kind_config(), "tools": list(self.tools), "tool_threads": self.tool_threads.max_threads}

    @classmethod
    def kind_kwargs(cls, config: Any, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> dict[str, Any]:
        return {**super().kind_kwargs(config, resources=resources, types=types),
                "tools": {n: need_resource(resources, n, "tool") for n in config.tools},
                "tool_threads": config.tool_threads}

    def resources(self) -> dict[str, Any]:
        return dict(self.tools)

    def describe(self) -> str:
        extra = f", {len(self.demos)} demos" if self.demos else ""
        extra += f", {len(self.step_demos)} step demos" if self.step_demos else ""
        return f"CallTool[{', '.join(self.tools)}; max_steps={self.max_steps}, {self.format}{extra}]"

    def summary(self) -> list[str]:
        return [f"tools: {', '.join(self.tools)}"]
