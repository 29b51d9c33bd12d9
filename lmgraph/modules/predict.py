"""Predict and ChainOfThought: one model call from signature + instructions + demos.

Two decoding modes (``decode``, tunable):

* ``"generate"`` -- the model writes the outputs; they are parsed (one repair call on failure).
* ``"score"`` -- classification without generation: for a single Literal/Enum output, the prompt
  (completion format, ending with the output label) is sent with every option as a choice
  (``" " + option``); the backend scores each by log-probability and the best one is the output.
  Small local models pick the right label far more often this way, and never produce an
  unparseable answer. Needs a backend that scores continuations (the llama.cpp backend).
* ``"calibrated"`` -- ``"score"`` with contextual calibration (Zhao et al., 2021, "Calibrate
  before use"): the same prompt with every input replaced by ``"N/A"`` is scored too, and each
  option's log-probability (normalised over the options) is divided by that content-free prior.
  This removes the label bias a small model shows whatever the input (always "positive", always
  the first option). One extra scoring call per row, the same request every row (a cache hit
  after the first).

Demos that do not fit: when the backend says the prompt is longer than the model's context
window (an :class:`~lmgraph.errors.LMError` marked ``context_overflow``), the call is made again
with the demo farthest from the input (the first shown) left out, until the prompt fits or no demo
is left; the row is answered, not lost. The node's trace records how many were left out
(``meta["demos_dropped"]``) and keeps the refused call's record (with its error).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..errors import ContextFitWarning, DefinitionError, LMError, OutputParseError
from ..lm.prompt import get_format
from ..lm.values import coerce, format_value
from ..signatures import FieldSpec, Signature, ensure_signature, literal_options, type_to_str
from .base import FORMAT_CHOICES, Module, normalise_demos
from .verbalizer import Verbalizer, normalise_verbalizer

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall


_T = TypeVar("_T")
_WARNED_FIT: set[str] = set()  # nodes whose context-fit warning was shown (once per node and process)

DECODE_CHOICES = ("generate", "score", "calibrated")
SCORING_DECODES = ("score", "calibrated")

#: prompt formats a scoring Predict accepts ('auto' resolves to completion)
SCORE_FORMATS = ("auto", "completion")


def score_choices(sig: Signature) -> tuple[str, ...]:
    """The continuations a scoring Predict asks the model to score: ``" " + option`` each.

    Options are rendered as demos render them (an Enum by its value), so a demo's
    "Label: value" line and the scored continuation agree.
    """
    return _score_plan(sig)[1]


@functools.lru_cache(maxsize=512)
def _score_plan(sig: Signature) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """(options, choices) of a scoring signature, checked; cached (hot path)."""
    outs = sig.outputs
    if len(outs) != 1:
        raise DefinitionError(
            f"decode='score' picks one label, but {sig.shorthand()!r} has {len(outs)} outputs "
            f"({', '.join(sig.output_names)})",
            fix="keep a single Literal/Enum output (a ChainOfThought adds 'reasoning': use Predict), "
                "or use decode='generate'.")
    field = outs[0]
    options = literal_options(field.annotation)
    if not options:
        raise DefinitionError(
            f"decode='score' needs the output to be a Literal or an Enum, got {field.label!r} "
            f"typed {type_to_str(field.annotation)}", field=field.name,
            fix=f"declare the options, e.g. \"... -> {field.name}: Literal['a', 'b']\", "
                "or use decode='generate'.")
    choices = tuple(" " + format_value(o, as_input=False) for o in options)
    if any(c == " " for c in choices) or len(set(choices)) != len(choices):
        raise DefinitionError(
            f"decode='score' needs distinct, non-empty options, got {list(options)!r}",
            field=field.name, fix="give every option its own non-empty text.")
    return tuple(options), choices


def check_score_signature(sig: Signature) -> None:
    """Raise DefinitionError unless ``sig`` has exactly one Literal/Enum output with distinct options."""
    _score_plan(sig)


def resolve_format(fmt: str, sig: Signature, preferred: str, ctx_default: str) -> str:
    """'auto' -> json for structured outputs, else the context default or the model's preference."""
    if fmt != "auto":
        return fmt
    if sig.structured:
        return "json"
    return ctx_default if ctx_default != "auto" else preferred


async def predict(call: NodeCall, sig: Signature, inputs: Mapping[str, Any], *,
                  instructions: str | None = None, demos: Sequence[Mapping[str, Any]] = (),
                  format: str = "auto", lm: str | None = None, temperature: float = 0.0,
                  max_tokens: int = 256, rollout: int = 0, repair: bool = True,
                  decode: str = "generate", stop: Sequence[str] = (), stream: bool = False) -> dict[str, Any]:
    """Render, call the model, parse into the signature's types; one repair attempt on failure.
    ``stop``: stop sequences added to the format's own. ``stream``: in a streamed run, the
    first call's reply streams to the run's events (a repair or follow-up call never does).

    With ``decode="score"`` the model scores the output's options instead (see
    :func:`score_predict`); ``format``, ``temperature``, ``max_tokens`` and ``repair`` then
    play no part.
    """
    if decode in SCORING_DECODES:
        return await score_predict(call, sig, inputs, instructions=instructions, demos=demos, lm=lm,
                                   rollout=rollout, calibrate=decode == "calibrated")
    _, preferred = call.lm(lm)
    fmt_name = resolve_format(format, sig, preferred, call.ctx.default_format)
    fmt = get_format(fmt_name)
    call.trace.format = fmt_name

    async def send(shown: tuple[Mapping[str, Any], ...]) -> tuple[Any, Any, Any]:
        request = fmt.render(sig, instructions or sig.instructions, shown, inputs,
                             temperature=temperature, max_tokens=max_tokens, rollout=rollout, node=call.node)
        if stop:
            request = request.replace(stop=tuple(dict.fromkeys((*request.stop, *stop))))
        if stream and call.streaming:
            return request, *(await call.stream_generate(request, sig, lm=lm))
        return request, *(await call.generate(request, lm=lm))

    request, resp, rec = await fitting_demos(call, demos, send)
    try:
        return fmt.parse(sig, resp.text)
    except OutputParseError as e:
        rec.parse_error = str(e)
        if not repair:
            raise e.locate(call.node)  # noqa: B904 - the caught error itself, located
        first = e
    cont = fmt.continuation(request, resp.text, sig)
    second, prefix = cont if cont is not None else (fmt.repair(request, resp.text, first, sig), "")
    resp2, rec2 = await call.generate(second, lm=lm)
    try:
        if cont is not None:
            return fmt.parse_continuation(sig, prefix, resp2.text)
        return fmt.parse_repair(sig, resp2.text)
    except OutputParseError as e:
        rec2.parse_error = str(e)
        raise e.locate(call.node) from None


async def score_predict(call: NodeCall, sig: Signature, inputs: Mapping[str, Any], *,
                        instructions: str | None = None, demos: Sequence[Mapping[str, Any]] = (),
                        lm: str | None = None, rollout: int = 0, calibrate: bool = False) -> dict[str, Any]:
    """Pick the single Literal/Enum output by scoring every option (one scoring call; with
    ``calibrate`` a second one scores the content-free prompt and its prior is divided out)."""
    options, choices = _score_plan(sig)
    field = sig.outputs[0]
    fmt = get_format("completion")
    call.trace.format = "completion"

    async def scored(shown: tuple[Mapping[str, Any], ...]) -> tuple[tuple[Mapping[str, Any], ...], Any, Any]:
        # sampling settings do not change a score: fixed values keep the cache key independent of them
        request = fmt.render(sig, instructions or sig.instructions, shown, inputs, temperature=0.0,
                             max_tokens=1, rollout=rollout, node=call.node)
        return shown, *(await call.generate(request.replace(stop=(), choices=choices), lm=lm))

    demos, resp, rec = await fitting_demos(call, demos, scored)  # the prior is scored with the same demos
    if resp.logprobs:
        call.trace.meta["scores"] = {str(item.get("choice", "")).strip(): item.get("logprob")
                                     for item in resp.logprobs if isinstance(item, Mapping)}
    if calibrate:
        free = fmt.render(sig, instructions or sig.instructions, demos, content_free_inputs(sig),
                          temperature=0.0, max_tokens=1, rollout=rollout, node=call.node)
        free_resp, free_rec = await call.generate(free.replace(stop=(), choices=choices), lm=lm)
        best = calibrated_choice(choices, resp.logprobs, free_resp.logprobs)
        if best is None:
            free_rec.parse_error = rec.parse_error = (
                "decode='calibrated' needs the option log-probabilities, and the backend returned none")
            raise OutputParseError(rec.parse_error, field=field.name, raw=resp.text).locate(call.node)
        call.trace.meta["calibrated"] = True
        return {field.name: _option_value(field.annotation, options[best])}
    try:
        value = options[choices.index(resp.text)]
    except ValueError:  # a backend (or a test fake) answered with the option's text, not the choice
        try:
            value = coerce(resp.text, field.annotation)
        except ValueError as e:
            rec.parse_error = f"the scored answer {resp.text!r} is not one of the choices: {e}"
            raise OutputParseError(rec.parse_error, field=field.name, raw=resp.text).locate(call.node) from None
        return {field.name: value}
    return {field.name: _option_value(field.annotation, value)}


async def fitting_demos(call: NodeCall, demos: Sequence[Mapping[str, Any]],
                        attempt: Callable[[tuple[Mapping[str, Any], ...]], Awaitable[_T]]) -> _T:
    """``attempt(demos)``; while the backend says the prompt does not fit the model's context
    window, ``attempt`` again without the demo farthest from the input (the first shown). The
    trace's ``meta["demos_dropped"]`` says how many were left out; with no demo left to drop, the
    overflow is raised (its message names n_ctx and the fix)."""
    shown = tuple(demos)
    while True:
        try:
            return await attempt(shown)
        except LMError as e:
            if not e.context_overflow or not shown:
                raise
            shown = shown[1:]
            call.trace.meta["demos_dropped"] = len(demos) - len(shown)
            if call.node not in _WARNED_FIT:
                _WARNED_FIT.add(call.node)
                warnings.warn(f"node {call.node!r}: the prompt did not fit the model's context window with all "
                              f"{len(demos)} demos, so the demos farthest from the input are left out where needed "
                              "(the node's trace: meta['demos_dropped']); a larger context window (e.g. "
                              "LlamaCppLM(n_ctx=4096)) or fewer/shorter demos shows them whole",
                              ContextFitWarning, stacklevel=2)


def _option_value(annotation: Any, value: Any) -> Any:
    return annotation(value) if isinstance(annotation, type) else value


def content_free_inputs(sig: Signature) -> dict[str, Any]:
    """Every input replaced by the content-free ``"N/A"`` (the calibration prompt's inputs)."""
    return {f.name: "N/A" for f in sig.inputs}


def calibrated_choice(choices: Sequence[str], logprobs: Any, prior: Any) -> int | None:
    """Index of the option with the best calibrated score: log p(option | x) - log p(option | N/A),
    each normalised over the options (a log-softmax); ties keep the earlier option. None when
    either response lacks a log-probability for some option."""
    def table(raw: Any) -> list[float] | None:
        if not isinstance(raw, Sequence):
            return None
        got = {str(item.get("choice")): item.get("logprob") for item in raw if isinstance(item, Mapping)}
        vals = [v for v in (got.get(c) for c in choices) if isinstance(v, (int, float))]
        if len(vals) != len(choices):
            return None
        top = max(vals)
        norm = top + math.log(sum(math.exp(v - top) for v in vals))
        return [v - norm for v in vals]
    x, free = table(logprobs), table(prior)
    if x is None or free is None:
        return None
    adjusted = [a - b for a, b in zip(x, free)]
    return max(range(len(adjusted)), key=lambda i: (adjusted[i], -i))


class GenerationSettings:
    """What every module that prompts a model itself (Predict and its kinds, CallTool) is configured
    with: instructions, demos, prompt format, model name and decoding settings."""

    base_signature: Signature
    instructions: str
    demos: tuple[dict[str, Any], ...]
    format: str
    lm: str | None
    temperature: float
    max_tokens: int
    repair: bool
    cache: bool

    def _init_generation(self, *, instructions: str | None, format: str, lm: str | None, temperature: float,
                         max_tokens: int, repair: bool, cache: bool = True) -> None:
        self.instructions = instructions or self.base_signature.instructions
        self.format = format
        self.lm = lm
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.repair = repair
        self.cache = bool(cache)  # False: this node's calls bypass the cache (per-node opt-out)

    def _check_generation(self) -> None:
        if self.format not in FORMAT_CHOICES:
            raise DefinitionError(f"unknown prompt format {self.format!r}",
                                  fix=f"choose one of {', '.join(FORMAT_CHOICES)}.")
        if self.max_tokens < 1:
            raise DefinitionError("max_tokens must be >= 1", fix="pass max_tokens=1 or more.")

    def kind_config(self) -> dict[str, Any]:
        return {"signature": self.base_signature.to_dict()}

    @classmethod
    def kind_kwargs(cls, config: Any, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"signature": Signature.from_dict(config.signature.json_data(), types=dict(types or {}))}


class Predict(GenerationSettings, Module):
    """One model call: inputs -> outputs of the signature.

    ``decode="score"`` (single Literal/Enum output only) scores each option instead of
    generating text; see the module docstring.
    """

    kind = "predict"
    config_model = "PredictConfig"
    tunable: ClassVar[tuple[str, ...]] = ("instructions", "demos", "format", "lm", "temperature", "max_tokens",
                                          "decode", "knn", "demo_pool", "knn_fields", "verbalizer")

    def __init__(self, signature: str | Signature | type[Signature], *, instructions: str | None = None,
                 demos: Sequence[Mapping[str, Any]] = (), format: str = "auto", lm: str | None = None,
                 temperature: float = 0.0, max_tokens: int = 256, repair: bool = True,
                 types: Mapping[str, Any] | None = None, decode: str = "generate", cache: bool = True,
                 knn: int = 0, demo_pool: Sequence[Mapping[str, Any]] = (), knn_fields: Sequence[str] = (),
                 verbalizer: Mapping[Any, str] | Sequence[Mapping[str, Any]] = ()) -> None:
        self.base_signature = ensure_signature(signature, types=dict(types or {}))
        self._init_generation(instructions=instructions, format=format, lm=lm, temperature=temperature,
                              max_tokens=max_tokens, repair=repair, cache=cache)
        self.decode = decode
        self.demos = normalise_demos(demos, self.signature, optional=self.optional_demo_fields)
        # per-input demos: the `knn` entries of `demo_pool` most similar to the inputs (BM25), after `demos`
        self.knn = knn
        self.demo_pool = normalise_demos(demo_pool, self.signature, optional=self.optional_demo_fields)
        # the input fields the nearest demos are matched on (empty: all of them) -- e.g. the question
        # alone, where a long passage field would decide the match; kept when knn is 0, for when it is on
        self.knn_fields = (knn_fields,) if isinstance(knn_fields, str) else tuple(knn_fields)
        # the words the model is shown for the label output's options (modules/verbalizer.py)
        self.verbalizer = normalise_verbalizer(verbalizer, self.signature)
        self._check()
        self._freeze()

    def _check(self) -> None:
        self._check_generation()
        if not self.signature.outputs:
            raise DefinitionError(f"signature {self.signature.shorthand()!r} has no output field",
                                  fix="declare at least one output, e.g. 'question -> answer'.")
        if not isinstance(self.knn, int) or self.knn < 0:
            raise DefinitionError(f"knn must be a whole number >= 0, got {self.knn!r}",
                                  fix="knn=4 shows the 4 pool demos most similar to each input; 0 turns it off.")
        if self.knn and not self.demo_pool:
            raise DefinitionError(f"knn={self.knn} needs a demo_pool to choose from",
                                  fix="pass demo_pool=[{...}, ...] (labelled examples) or knn=0.")
        inputs = [f.name for f in self.signature.inputs]
        bad = [f for f in self.knn_fields if f not in inputs]
        if bad or len(set(self.knn_fields)) != len(self.knn_fields):
            raise DefinitionError(
                f"knn_fields {list(self.knn_fields)!r}: " + (f"{bad[0]!r} is not an input of "
                f"{self.signature.shorthand()!r}" if bad else "a field is named twice"),
                fix=f"name inputs to match the nearest demos on, each once, from: {', '.join(inputs)} "
                    "(or leave knn_fields empty to match on all of them).")
        if self.decode not in DECODE_CHOICES:
            raise DefinitionError(f"unknown decode mode {self.decode!r}",
                                  fix=f"choose one of {', '.join(DECODE_CHOICES)}.")
        if self.decode in SCORING_DECODES:
            check_score_signature(self.signature)
            if self.format not in SCORE_FORMATS:
                raise DefinitionError(
                    f"decode='score' scores a completion prompt; format {self.format!r} cannot be scored",
                    fix="use format='completion' (or 'auto'), or decode='generate'.")

    @property
    def signature(self) -> Signature:
        return self.base_signature

    def demos_for(self, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
        """The demos shown for these inputs: the fixed ones, then the ``knn`` most similar of the pool."""
        if not self.knn:
            return self.demos
        cached = self.__dict__.get("_knn_index")
        fields = self.knn_fields or tuple(f.name for f in self.signature.inputs)
        if cached is None or cached.pool is not self.demo_pool or cached.fields != fields:
            from .knn import DemoIndex

            cached = DemoIndex(self.demo_pool, fields)
            object.__setattr__(self, "_knn_index", cached)  # a cache, not configuration
        return (*self.demos, *cached.select(inputs, self.knn))

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        sig, demos = self.signature, self.demos_for(inputs)
        if not self.verbalizer:
            return await predict(call, sig, inputs, instructions=self.instructions, demos=demos,
                                 format=self.format, lm=self.lm, temperature=self.temperature,
                                 max_tokens=self.max_tokens, repair=self.repair, decode=self.decode, stream=True)
        cached = self.__dict__.get("_verbal")
        if cached is None or cached[0] is not self.verbalizer:  # a copy with other words rebuilds it
            cached = (self.verbalizer, Verbalizer.of(self.verbalizer, sig))
            object.__setattr__(self, "_verbal", cached)  # a cache, not configuration
        v = cached[1]
        out = await predict(call, v.signature(sig), inputs, instructions=self.instructions, demos=v.demos(demos),
                            format=self.format, lm=self.lm, temperature=self.temperature,
                            max_tokens=self.max_tokens, repair=self.repair, decode=self.decode, stream=True)
        field = sig.output(v.field)
        return v.labels(out, field.annotation if field is not None else None)

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        """One call (calibrated scoring: two); generating with ``repair`` on, a reply that cannot be
        read is followed by one repair or continuation call: two at most."""
        if self.decode in SCORING_DECODES:
            return 2 if self.decode == "calibrated" else 1
        return 2 if repairs and self.repair else 1

    def describe(self) -> str:
        extra = f", {len(self.demos)} demos" if self.demos else ""
        if self.knn:
            extra += f", {self.knn} nearest of {len(self.demo_pool)}" + (
                f" by {'+'.join(self.knn_fields)}" if self.knn_fields else "")
        mode = f", {self.decode}" if self.decode in SCORING_DECODES else ""
        if self.verbalizer:
            extra += f", {len(self.verbalizer)} label{'s' if len(self.verbalizer) != 1 else ''} verbalized"
        return f"{type(self).__name__}[{self.format}{mode}{extra}]"

    def summary(self) -> list[str]:
        text = self.instructions if len(self.instructions) < 70 else self.instructions[:67] + "..."
        return [f"instructions: {text}"]


REASONING = FieldSpec("reasoning", str, "think step by step", "Reasoning")


class ChainOfThought(Predict):
    """Predict with a ``reasoning`` output produced before the others."""

    kind = "chain_of_thought"
    config_model = "ChainOfThoughtConfig"

    def __init__(self, signature: str | Signature | type[Signature], *, max_tokens: int = 384,
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
