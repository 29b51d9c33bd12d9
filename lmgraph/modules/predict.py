"""Predict and ChainOfThought: one model call from signature + instructions + demos."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError, OutputParseError
from ..lm.prompt import get_format
from ..signatures import FieldSpec, Signature, ensure_signature
from .base import FORMAT_CHOICES, Module, normalise_demos

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall


def resolve_format(fmt: str, sig: Signature, preferred: str, ctx_default: str) -> str:
    """'auto' -> json for structured outputs, else the context default or the model's preference."""
    if fmt != "auto":
        return fmt
    if sig.structured:
        return "json"
    return ctx_default if ctx_default != "auto" else preferred


async def predict(call: "NodeCall", sig: Signature, inputs: Mapping[str, Any], *,
                  instructions: str | None = None, demos: Sequence[Mapping[str, Any]] = (),
                  format: str = "auto", lm: str | None = None, temperature: float = 0.0,
                  max_tokens: int = 256, rollout: int = 0, repair: bool = True) -> dict[str, Any]:
    """Render, call the model, parse into the signature's types; one repair attempt on failure."""
    _, preferred = call.lm(lm)
    fmt_name = resolve_format(format, sig, preferred, call.ctx.default_format)
    fmt = get_format(fmt_name)
    call.trace.format = fmt_name
    request = fmt.render(sig, instructions or sig.instructions, demos, inputs,
                         temperature=temperature, max_tokens=max_tokens, rollout=rollout, node=call.node)
    resp, rec = await call.generate(request, lm=lm)
    try:
        return fmt.parse(sig, resp.text)
    except OutputParseError as e:
        rec.parse_error = str(e)
        if not repair:
            raise e.locate(call.node)
        first = e
    resp2, rec2 = await call.generate(fmt.repair(request, resp.text, first, sig), lm=lm)
    try:
        return fmt.parse(sig, resp2.text)
    except OutputParseError as e:
        rec2.parse_error = str(e)
        raise e.locate(call.node) from None


class Predict(Module):
    """One model call: inputs -> outputs of the signature."""

    kind = "predict"
    tunable = ("instructions", "demos", "format", "lm", "temperature", "max_tokens")

    def __init__(self, signature: "str | Signature | type[Signature]", *, instructions: str | None = None,
                 demos: Sequence[Mapping[str, Any]] = (), format: str = "auto", lm: str | None = None,
                 temperature: float = 0.0, max_tokens: int = 256, repair: bool = True,
                 types: Mapping[str, Any] | None = None) -> None:
        self.base_signature = ensure_signature(signature, types=dict(types or {}))
        self.instructions = instructions or self.base_signature.instructions
        self.format = format
        self.lm = lm
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.repair = repair
        self.demos = normalise_demos(demos, self.signature, optional=self.optional_demo_fields)
        self._check()
        self._freeze()

    def _check(self) -> None:
        if self.format not in FORMAT_CHOICES:
            raise DefinitionError(f"unknown prompt format {self.format!r}",
                                  fix=f"choose one of {', '.join(FORMAT_CHOICES)}.")
        if self.max_tokens < 1:
            raise DefinitionError("max_tokens must be >= 1", fix="pass max_tokens=1 or more.")
        if not self.signature.outputs:
            raise DefinitionError(f"signature {self.signature.shorthand()!r} has no output field",
                                  fix="declare at least one output, e.g. 'question -> answer'.")

    @property
    def signature(self) -> Signature:
        return self.base_signature

    @property
    def signature_for_demos(self) -> Signature:
        return self.signature

    @property
    def optional_demo_fields(self) -> tuple[str, ...]:
        """Demo fields that may be left out (labelled data has no reasoning)."""
        return ()

    async def forward(self, inputs: dict[str, Any], call: "NodeCall") -> dict[str, Any]:
        return await predict(call, self.signature, inputs, instructions=self.instructions, demos=self.demos,
                             format=self.format, lm=self.lm, temperature=self.temperature,
                             max_tokens=self.max_tokens, repair=self.repair)

    def config(self) -> dict[str, Any]:
        return {"signature": self.base_signature.to_dict(), "instructions": self.instructions,
                "demos": [dict(d) for d in self.demos], "format": self.format, "lm": self.lm,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "repair": self.repair}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> "Predict":
        return cls(Signature.from_dict(config["signature"], types=dict(types or {})),
                   instructions=config.get("instructions"), demos=config.get("demos", ()),
                   format=config.get("format", "auto"), lm=config.get("lm"),
                   temperature=config.get("temperature", 0.0), max_tokens=config.get("max_tokens", 256),
                   repair=config.get("repair", True))

    def describe(self) -> str:
        extra = f", {len(self.demos)} demos" if self.demos else ""
        return f"{type(self).__name__}[{self.format}{extra}]"

    def summary(self) -> list[str]:
        text = self.instructions if len(self.instructions) < 70 else self.instructions[:67] + "..."
        return [f"instructions: {text}"]


REASONING = FieldSpec("reasoning", str, "think step by step", "Reasoning")


class ChainOfThought(Predict):
    """Predict with a ``reasoning`` output produced before the others."""

    kind = "chain_of_thought"

    def __init__(self, signature: "str | Signature | type[Signature]", *, max_tokens: int = 384,
                 **kwargs: Any) -> None:
        super().__init__(signature, max_tokens=max_tokens, **kwargs)

    @property
    def signature(self) -> Signature:
        sig = self.base_signature
        if sig.output("reasoning") is not None:
            return sig
        return sig.prepend_output(REASONING)

    @property
    def optional_demo_fields(self) -> tuple[str, ...]:
        return () if self.base_signature.output("reasoning") is not None else ("reasoning",)
