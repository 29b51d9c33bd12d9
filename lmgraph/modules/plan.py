"""Plan: a Predict whose output is a short list of sub-steps / sub-questions."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError
from ..signatures import Signature, ensure_signature
from .predict import Predict

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall

__all__ = ["PLAN_INSTRUCTIONS", "Plan"]

PLAN_INSTRUCTIONS = ("Break the task into a few short, self-contained sub-questions that together "
                     "solve it. Write one sub-question per line, numbered, in the order they should "
                     "be answered. Do not answer them.")


def is_default_instructions(sig: Signature) -> bool:
    """True when the signature's instructions are the generated 'Given the fields ...' text."""
    return sig.instructions == Signature(sig.inputs, sig.outputs).instructions


def _list_field(sig: Signature) -> str | None:
    for f in sig.outputs:
        if typing.get_origin(f.annotation) in (list, tuple) or f.annotation in (list, tuple):
            return f.name
    return None


class Plan(Predict):
    """Decompose a task: ``task -> steps: list[str]``, truncated to ``max_steps`` items."""

    kind = "plan"
    tunable = (*Predict.tunable, "max_steps")

    def __init__(self, signature: "str | Signature | type[Signature]" = "task -> steps: list[str]", *,
                 max_steps: int = 5, instructions: str | None = None,
                 types: Mapping[str, Any] | None = None, **predict_kwargs: Any) -> None:
        sig = ensure_signature(signature, types=dict(types or {}))
        if instructions is None and is_default_instructions(sig):
            instructions = PLAN_INSTRUCTIONS
        self.max_steps = max_steps
        super().__init__(sig, instructions=instructions, types=types, **predict_kwargs)

    def _check(self) -> None:
        super()._check()
        if self.steps_field is None:
            raise DefinitionError(f"Plan needs a list output, got {self.base_signature.shorthand()!r}",
                                  fix="declare one, e.g. 'task -> steps: list[str]'.")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise DefinitionError(f"max_steps must be a positive integer, got {self.max_steps!r}",
                                  fix="pass max_steps=5 (or another positive integer).")

    @property
    def steps_field(self) -> str | None:
        """The list output that is truncated (the first list-typed output)."""
        return _list_field(self.base_signature)

    async def forward(self, inputs: dict[str, Any], call: "NodeCall") -> dict[str, Any]:
        out = await super().forward(inputs, call)
        name = self.steps_field
        steps = [s for s in out[name] if not (isinstance(s, str) and not s.strip())]
        if len(steps) > self.max_steps:
            call.trace.meta["truncated_steps"] = len(steps) - self.max_steps
        out[name] = steps[: self.max_steps]
        return out

    def max_items(self, field: str) -> int | None:
        return self.max_steps if field == self.steps_field else None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "max_steps": self.max_steps}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> "Plan":
        return cls(Signature.from_dict(config["signature"], types=dict(types or {})),
                   max_steps=config.get("max_steps", 5), instructions=config.get("instructions"),
                   demos=config.get("demos", ()), format=config.get("format", "auto"), lm=config.get("lm"),
                   temperature=config.get("temperature", 0.0), max_tokens=config.get("max_tokens", 256),
                   repair=config.get("repair", True), types=types)

    def describe(self) -> str:
        extra = f", {len(self.demos)} demos" if self.demos else ""
        return f"Plan[{self.format}, max_steps={self.max_steps}{extra}]"
