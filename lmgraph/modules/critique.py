"""Critique (a judge) and Refine (generate -> judge -> revise, a declared bounded loop)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError
from ..lm.values import format_value
from ..signatures import FieldSpec, Signature, ensure_signature
from .base import IORecord, Module, calls_of, child_from_dict
from .plan import is_default_instructions
from .predict import Predict, predict

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall
    from ..pipeline.trace import NodeTrace

__all__ = ["CRITIQUE_INSTRUCTIONS", "CRITIQUE_MAX_TOKENS", "Critique", "Refine", "collapse_repeats"]

FEEDBACK = FieldSpec("feedback", str, "what is wrong and how to fix it, or why it is fine")
VERDICT = FieldSpec("verdict", bool, "yes if acceptable, no otherwise")
#: the default token limit of a judgement: short feedback and a verdict (a loop stops early)
CRITIQUE_MAX_TOKENS = 128
_REPEATS = re.compile(r"(\w[\w' ]{0,60}?)(?:[\s,;.!?-]+\1(?!\w)){3,}", re.IGNORECASE)
CRITIQUE_INSTRUCTIONS = ("Judge whether the {last} is correct and acceptable given the other fields. "
                         "First give short, specific feedback (what is wrong and how to fix it), then "
                         "the verdict: yes if it is acceptable, no otherwise.")


def critique_signature(signature: str | Signature | type[Signature],
                       types: Mapping[str, Any] | None = None) -> Signature:
    """The judge's signature: the declared inputs (and extra outputs) + ``feedback`` + ``verdict: bool``."""
    if isinstance(signature, str) and "->" not in signature:
        signature = signature + " -> feedback"
    sig = ensure_signature(signature, types=dict(types or {}))
    for f in sig.inputs:
        if f.name in ("feedback", "verdict"):
            raise DefinitionError(f"a Critique input may not be called {f.name!r} (it is an output)",
                                  field=f.name, fix="rename the input.")
    declared = {f.name: f for f in sig.outputs}
    extras = [f for f in sig.outputs if f.name not in ("feedback", "verdict")]
    fb = declared.get("feedback")
    vd = declared.get("verdict")
    outs = [*extras, FieldSpec("feedback", str, fb.desc or FEEDBACK.desc, fb.prefix) if fb else FEEDBACK,
            FieldSpec("verdict", bool, vd.desc or VERDICT.desc, vd.prefix) if vd else VERDICT]
    default = is_default_instructions(sig)
    new = Signature(sig.inputs, outs)
    if default:
        last = sig.inputs[-1].name if sig.inputs else "output"
        return new.with_instructions(CRITIQUE_INSTRUCTIONS.format(last=f"`{last}`"))
    return new.with_instructions(sig.instructions)


def collapse_repeats(text: str) -> str:
    """``text`` with a phrase repeated four or more times in a row kept once: a small model's
    degenerate loop ("no, no, no, no, ...") read as feedback."""
    return _REPEATS.sub(r"\1", text)


class Critique(Predict):
    """A judge: ``<declared inputs> -> feedback, verdict: bool`` (verdict yes = acceptable).

    Feedback is meant to be short: ``max_tokens`` defaults to :data:`CRITIQUE_MAX_TOKENS`, the
    call stops where the model starts writing an input field again (an invented next record),
    and a phrase looped four or more times in the feedback is kept once (the trace's
    ``meta["feedback_repeats_collapsed"]`` says so).
    """

    kind = "critique"
    config_model = "CritiqueConfig"

    def __init__(self, signature: str | Signature | type[Signature], *,
                 types: Mapping[str, Any] | None = None, max_tokens: int = CRITIQUE_MAX_TOKENS,
                 **predict_kwargs: Any) -> None:
        super().__init__(critique_signature(signature, types), types=types, max_tokens=max_tokens,
                         **predict_kwargs)

    def stop_sequences(self) -> tuple[str, ...]:
        """Where a judgement is over: the model writing an input's label on a new line."""
        return tuple("\n" + f.label + ":" for f in self.signature.inputs)

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        out = await predict(call, self.signature, inputs, instructions=self.instructions, demos=self.demos,
                            format=self.format, lm=self.lm, temperature=self.temperature,
                            max_tokens=self.max_tokens, repair=self.repair, decode=self.decode,
                            stop=self.stop_sequences())
        feedback = out.get("feedback")
        if isinstance(feedback, str):
            short = collapse_repeats(feedback)
            if short != feedback:
                call.trace.meta["feedback_repeats_collapsed"] = True
                out["feedback"] = short
        return out

    def describe(self) -> str:
        extra = f", {len(self.demos)} demos" if self.demos else ""
        return f"Critique[{', '.join(self.signature.input_names)}; {self.format}{extra}]"


def default_judge(module: Module) -> Critique:
    """A Critique over a module's inputs and (non-reasoning) outputs."""
    sig = getattr(module, "base_signature", module.signature)
    outs = [f for f in sig.outputs if f.name != "reasoning"]
    return Critique(Signature([*sig.inputs, *outs], []))


def check_judge(judge: Any, available: tuple[str, ...], owner: str) -> None:
    if not isinstance(judge, Critique):
        raise DefinitionError(f"{owner}: judge must be a Critique, got {type(judge).__name__}",
                              fix="pass judge=Critique('question, answer') or leave it out.")
    missing = [n for n in judge.signature.input_names if n not in available]
    if missing:
        raise DefinitionError(f"{owner}: the judge reads {missing[0]!r}, which the judged module neither "
                              "takes nor produces", field=missing[0],
                              fix=f"the judge's inputs must come from: {', '.join(available)}.")


def revision_prompt(outputs: Mapping[str, Any], feedback: str) -> str:
    prev = "\n".join(f"{k}: {format_value(v, as_input=False)}" for k, v in outputs.items())
    return f"A previous attempt was not accepted:\n{prev}\nWhat to fix: {feedback}"


NO_FEEDBACK = "(first attempt)"
REVISION = FieldSpec("feedback", str, "a previous attempt and what to fix; (first attempt) if none")


class Refine(Module):
    """Run ``generator``; let ``judge`` check it; revise with the feedback, at most ``max_rounds`` tries.

    Outputs: the generator's outputs + ``verdict: bool`` (the last judgement) + ``rounds: int``.
    """

    kind = "refine"
    config_model = "RefineConfig"
    tunable = ("generator", "judge", "max_rounds")
    child_attrs = ("generator", "judge")

    def __init__(self, generator: Predict, *, judge: Critique | None = None, max_rounds: int = 2) -> None:
        if not isinstance(generator, Predict):
            raise DefinitionError(f"Refine needs a Predict-like generator, got {type(generator).__name__}",
                                  fix="pass Refine(Predict('question -> answer')) or a ChainOfThought.")
        self.generator = generator
        self.judge = judge if judge is not None else default_judge(generator)
        self.max_rounds = max_rounds
        self._check()
        self._freeze()

    def _check(self) -> None:
        gen = self.generator
        if not isinstance(gen, Predict):
            raise DefinitionError("Refine's generator must be a Predict-like module",
                                  fix="pass a Predict or ChainOfThought.")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise DefinitionError(f"max_rounds must be a positive integer, got {self.max_rounds!r}",
                                  fix="pass max_rounds=2 (one draft and one revision).")
        sig = gen.signature
        if sig.input("feedback") is not None:
            raise DefinitionError("Refine's generator may not have an input named 'feedback'",
                                  field="feedback", fix="rename that input; Refine adds its own.")
        for name in ("verdict", "rounds"):
            if sig.output(name) is not None:
                raise DefinitionError(f"Refine's generator may not have an output named {name!r}",
                                      field=name, fix="rename that output; Refine adds its own.")
        check_judge(self.judge, sig.input_names + sig.output_names, "Refine")

    @property
    def signature(self) -> Signature:
        sig = self.generator.signature
        return Signature(sig.inputs, (*sig.outputs, FieldSpec("verdict", bool, "the judge accepted the output"),
                                      FieldSpec("rounds", int, "attempts made")), sig.instructions)

    def _reviser(self) -> Predict:
        """The generator with an extra ``feedback`` input (demos show it as a first attempt)."""
        gen = self.generator
        rev = copy.copy(gen)
        object.__setattr__(rev, "base_signature", gen.base_signature.append_input(REVISION))
        object.__setattr__(rev, "demos", tuple({**d, "feedback": NO_FEEDBACK} for d in gen.demos))
        return rev

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        out = await self.generator.forward(inputs, call)
        history: list[dict[str, Any]] = []
        call.trace.meta["rounds"] = history
        reviser = None
        for rnd in range(1, self.max_rounds + 1):
            seen = {**inputs, **out}
            verdict = await self.judge.forward({n: seen[n] for n in self.judge.signature.input_names}, call)
            history.append({"round": rnd, "verdict": verdict["verdict"], "feedback": verdict["feedback"]})
            if verdict["verdict"] or rnd == self.max_rounds:
                return {**out, "verdict": bool(verdict["verdict"]), "rounds": rnd}
            shown = {k: v for k, v in out.items() if k != "reasoning"}
            reviser = reviser or self._reviser()
            out = await reviser.forward({**inputs, "feedback": revision_prompt(shown, verdict["feedback"])}, call)
        raise AssertionError("unreachable")  # pragma: no cover

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        # at most max_rounds judgements and as many drafts (the first and max_rounds - 1 revisions),
        # each with its possible repair call
        return (calls_of(self.generator, list_lengths, repairs=repairs)
                + calls_of(self.judge, repairs=repairs)) * self.max_rounds

    def kind_config(self) -> dict[str, Any]:
        return {"generator": self.generator.to_dict(), "judge": self.judge.to_dict()}

    @classmethod
    def kind_kwargs(cls, config: Any, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> dict[str, Any]:
        return {key: child_from_dict(getattr(config, key), key, resources=resources, types=types)
                for key in ("generator", "judge")}

    def resources(self) -> dict[str, Any]:
        return {**self.generator.resources(), **self.judge.resources()}

    def submodules(self) -> dict[str, Module]:
        return {"generator": self.generator, "judge": self.judge}

    def child_io(self, trace: NodeTrace) -> dict[str, list[IORecord]]:
        """The generator's record: the node's inputs and its final (accepted or last) outputs.
        The judge has none: a passing run shows only its accepting judgements, and demos of those
        alone would teach it to accept everything."""
        if trace.outputs is None:
            return {}
        sig = self.generator.signature
        if not all(n in trace.inputs for n in sig.input_names):
            return {}
        outs = {n: trace.outputs[n] for n in sig.output_names if n in trace.outputs}
        return {"generator": [{"inputs": {n: trace.inputs[n] for n in sig.input_names}, "outputs": outs}]}

    def child_fields(self, child: str) -> dict[str, tuple[str, bool]]:
        """The generator's inputs and outputs are Refine's own, under the same names."""
        if child != "generator":
            return {}
        sig = self.generator.signature
        return {n: (n, False) for n in (*sig.input_names, *sig.output_names)}

    def describe(self) -> str:
        return f"Refine[{self.generator.describe()} + {self.judge.describe()}, max_rounds={self.max_rounds}]"

    def summary(self) -> list[str]:
        return [f"generator: {self.generator.describe()}", f"judge: {self.judge.describe()}"]
