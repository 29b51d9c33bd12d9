"""In-process vLLM backend (:class:`VLLMLM`): vLLM's offline engine (``vllm.LLM``) on a local GPU.

``vllm`` is imported lazily, on the first call (or :meth:`VLLMLM.load`), so importing this module
costs nothing and works without the optional dependency (``pip install 'lmgraph[vllm]'``; vLLM
needs a CUDA GPU).

Batching: vLLM is fastest when it gets many prompts at once, while lmgraph's ``batch`` and
``evaluate`` issue one ``complete`` per row, concurrently. :class:`VLLMLM` collects the requests
that arrive together (within ``batch_window_s`` of each other, at most ``max_batch``) and answers
them with **one** ``LLM.generate`` call, run in a worker thread; requests arriving meanwhile form
the next batch. One engine serves every event loop and thread of the process (calls are
serialised on a lock). When a batch's ``generate`` raises, its requests are run once more one at
a time, so a bad request (a prompt longer than ``max_model_len``) fails alone.

Requests map onto vLLM as follows:

* a raw ``prompt`` goes as text (vLLM tokenizes it, BOS included); ``messages`` are rendered with
  the tokenizer's chat template (``add_generation_prompt=True``) and sent as token ids;
* sampling: ``temperature`` (0: greedy), ``top_p``, ``max_tokens``, ``stop``, and ``seed`` = the
  request's sampling seed (seed mixed with rollout) -- nothing else, so vLLM's neutral defaults
  apply (no repetition penalty, no top-k) and greedy decoding is deterministic;
* ``json_schema``: structured outputs, ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``
  (vLLM >= 0.10; older versions: ``guided_decoding=GuidedDecodingParams(json=schema)``);
* ``logprobs``: ``SamplingParams(logprobs=top_logprobs)``, returned as
  ``[{"token", "logprob", "top": {token: logprob}}]`` like the other backends;
* ``choices`` (scoring, ``decode="score"``): one prompt per choice, ``prompt + choice`` as token
  ids, with ``prompt_logprobs``; a choice's score is the sum of its tokens' prompt log-probabilities.
  Its tokens are those of ``prompt + choice`` past the prompt's own (the choice tokenized alone
  where the two merge across the boundary). All choices of all scoring requests of a batch go in
  the same ``generate`` call, so vLLM's prefix cache evaluates a shared prompt once.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from ..errors import DefinitionError, LMError
from .base import LMRequest, LMResponse, Usage
from .capabilities import Capabilities

__all__ = ["VLLMLM", "import_vllm"]

VLLM_INSTALL_COMMAND = "pip install vllm  (or: pip install 'lmgraph[vllm]'; it needs a CUDA GPU)"

_TOO_LONG = re.compile(r"prompt \(length (\d+)\) is longer than the maximum model length of (\d+)")


def import_vllm() -> Any:
    """``vllm``, or a DefinitionError naming the install command when it is missing."""
    try:
        import vllm
    except ImportError as exc:
        raise DefinitionError("The in-process vLLM backend (VLLMLM) needs the optional package vllm, which "
                              "is not installed.", fix=f"run `{VLLM_INSTALL_COMMAND}`.") from exc
    return vllm


def _structured_output_field(schema: dict[str, Any]) -> dict[str, Any]:
    """The ``SamplingParams`` keyword that constrains decoding to ``schema``, for this vLLM version."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        try:
            from vllm.sampling_params import GuidedDecodingParams
        except ImportError as exc:
            raise LMError("this vLLM version has neither StructuredOutputsParams nor GuidedDecodingParams: "
                          "it cannot constrain output to a JSON schema. Install vllm>=0.8.",
                          retryable=False) from exc
        return {"guided_decoding": GuidedDecodingParams(json=schema)}
    return {"structured_outputs": StructuredOutputsParams(json=schema)}


class _Batcher:
    """Collects the requests of one event loop that arrive together and runs them as one batch."""

    def __init__(self, owner: VLLMLM) -> None:
        self.owner = owner
        self.pending: list[tuple[LMRequest, asyncio.Future[LMResponse]]] = []
        self.task: asyncio.Task[None] | None = None

    async def submit(self, request: LMRequest) -> LMResponse:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LMResponse] = loop.create_future()
        self.pending.append((request, future))
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        owner = self.owner
        while self.pending:
            await asyncio.sleep(owner.batch_window_s)  # let the other requests of this moment arrive
            batch = [(r, f) for r, f in self.pending[:owner.max_batch] if not f.done()]
            del self.pending[:owner.max_batch]
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(owner.run_batch, [r for r, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else LMError(f"vLLM batch: {exc!r}"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results):
                if future.done():  # the caller went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class VLLMLM:
    """A local model run in-process by vLLM's offline engine (``vllm.LLM``), batched across concurrent calls.

    ``model``: a local model folder (Hugging Face layout) or a GGUF file; ``tokenizer`` another
    folder for its tokenizer. ``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
    ``tensor_parallel_size``, ``seed`` and ``enforce_eager`` are ``vllm.LLM``'s arguments of the same
    names; ``engine_kwargs`` adds others (``quantization``, ``enable_prefix_caching``...).
    ``top_logprobs``: alternatives per token when a request asks for log-probabilities.
    ``batch_window_s``: how long the first request of a batch waits for others (seconds);
    ``max_batch``: most requests in one ``generate`` call. ``preferred_format`` is the prompt
    format modules use under ``format="auto"`` (``"completion"``, as for the other local backends;
    ``"chat"`` suits instruction-tuned models with a chat template). See the module docstring for
    how requests map onto vLLM.
    """

    supports_scoring = True
    capabilities = Capabilities(json_modes=("json_schema", "none"), json_mode="json_schema",
                                logprobs=True, scoring=True, streaming=False)

    def __init__(self, model: str | pathlib.Path, *, tokenizer: str | pathlib.Path | None = None,
                 dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1, seed: int = 0,
                 enforce_eager: bool = False, top_logprobs: int = 5, batch_window_s: float = 0.002,
                 max_batch: int = 256, preferred_format: str = "completion",
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        path = pathlib.Path(model).expanduser()
        if not path.exists():
            raise DefinitionError(f"VLLMLM: model path {str(path)!r} does not exist.",
                                  fix="pass a local model folder (config.json, weights, tokenizer) or a .gguf file.")
        if max_model_len is not None and max_model_len < 1:
            raise DefinitionError(f"max_model_len must be positive, got {max_model_len}.",
                                  fix="pass e.g. max_model_len=4096, or None for the model's own.")
        if not 0 < gpu_memory_utilization <= 1:
            raise DefinitionError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}.",
                                  fix="pass e.g. gpu_memory_utilization=0.5 (a share of the GPU's memory).")
        if tensor_parallel_size < 1 or max_batch < 1 or batch_window_s < 0 or top_logprobs < 0:
            raise DefinitionError("tensor_parallel_size and max_batch must be >= 1, batch_window_s and "
                                  "top_logprobs >= 0.", fix="e.g. tensor_parallel_size=1, max_batch=256, "
                                  "batch_window_s=0.002, top_logprobs=5.")
        if preferred_format not in ("completion", "chat"):
            raise DefinitionError(f"preferred_format must be 'completion' or 'chat', got {preferred_format!r}.",
                                  fix="pass preferred_format='chat' for an instruction-tuned model.")
        self.model_path = path
        self.tokenizer_path = None if tokenizer is None else pathlib.Path(tokenizer).expanduser()
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = float(gpu_memory_utilization)
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.seed = int(seed)
        self.enforce_eager = bool(enforce_eager)
        self.top_logprobs = int(top_logprobs)
        self.batch_window_s = float(batch_window_s)
        self.max_batch = int(max_batch)
        self.preferred_format = preferred_format
        self.engine_kwargs = dict(engine_kwargs or {})
        self._identity: dict[str, Any] = {"backend": "vllm", "model": path.name, "dtype": dtype}
        if "quantization" in self.engine_kwargs:
            self._identity["quantization"] = self.engine_kwargs["quantization"]
        self._llm: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        self._engine_lock = threading.Lock()  # one generate at a time: the engine is not thread-safe
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = weakref.WeakKeyDictionary()
        self._batchers_lock = threading.Lock()
        self.load_seconds: float | None = None
        self.generate_calls = 0  # LLM.generate calls made (each a batch)

    # ------------------------------------------------------------------ public API

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def __repr__(self) -> str:
        return f"VLLMLM({self.model_path.name!r}, dtype={self.dtype!r})"

    def engine_args(self) -> dict[str, Any]:
        """The keyword arguments ``vllm.LLM`` is built with."""
        kwargs: dict[str, Any] = {"model": str(self.model_path), "dtype": self.dtype, "seed": self.seed,
                                  "gpu_memory_utilization": self.gpu_memory_utilization,
                                  "tensor_parallel_size": self.tensor_parallel_size,
                                  "enforce_eager": self.enforce_eager}
        if self.tokenizer_path is not None:
            kwargs["tokenizer"] = str(self.tokenizer_path)
        if self.max_model_len is not None:
            kwargs["max_model_len"] = int(self.max_model_len)
        kwargs.update(self.engine_kwargs)
        return kwargs

    def load(self) -> VLLMLM:
        """Build the engine now (load the model onto the GPU), so the first call does not pay for it."""
        self._engine()
        return self

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a raw prompt (special tokens such as BOS included)."""
        self._engine()
        return len(self._tokenizer.encode(text))

    def close(self) -> None:
        """Drop the engine (its GPU memory is freed once nothing else holds it); a later call loads it again."""
        with self._load_lock, self._engine_lock:
            llm, self._llm, self._tokenizer = self._llm, None, None
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # pragma: no cover - best effort
                    pass
            del llm
            import gc

            gc.collect()

    def __enter__(self) -> VLLMLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def complete(self, request: LMRequest) -> LMResponse:
        start = time.perf_counter()
        response = await self._batcher().submit(request)
        return response.replace(latency_s=time.perf_counter() - start)

    # ------------------------------------------------------------------ batching

    def _batcher(self) -> _Batcher:
        loop = asyncio.get_running_loop()
        with self._batchers_lock:
            batcher = self._batchers.get(loop)
            if batcher is None:
                batcher = self._batchers[loop] = _Batcher(self)
            return batcher

    def _engine(self) -> Any:
        with self._load_lock:
            if self._llm is None:
                vllm = import_vllm()
                t0 = time.perf_counter()
                try:
                    llm = vllm.LLM(**self.engine_args())
                    tokenizer = llm.get_tokenizer()
                except Exception as exc:
                    raise LMError(f"vLLM could not load {str(self.model_path)!r}: {type(exc).__name__}: {exc}",
                                  retryable=False) from exc
                self._llm, self._tokenizer = llm, tokenizer
                if self.load_seconds is None:
                    self.load_seconds = time.perf_counter() - t0
            return self._llm

    def run_batch(self, requests: Sequence[LMRequest]) -> list[LMResponse | Exception]:
        """Answer ``requests`` with one ``LLM.generate`` call (blocking); a failed batch is re-run
        one request at a time. Each item is the response or the error of that request."""
        llm = self._engine()
        with self._engine_lock:
            try:
                return self._generate(llm, requests)
            except Exception as exc:
                if len(requests) == 1:
                    return [self._wrap_error(exc)]
            out: list[LMResponse | Exception] = []
            for request in requests:
                try:
                    out.extend(self._generate(llm, [request]))
                except Exception as exc:
                    out.append(self._wrap_error(exc))
            return out

    def _generate(self, llm: Any, requests: Sequence[LMRequest]) -> list[LMResponse | Exception]:
        prompts: list[Any] = []
        params: list[Any] = []
        plans: list[Any] = []  # per request: (start index, count, scoring plan or None) or an error
        for request in requests:
            try:
                items, plan = self._request_items(request)
            except LMError as exc:
                plans.append(exc)
                continue
            plans.append((len(prompts), len(items), plan))
            for prompt, sampling in items:
                prompts.append(prompt)
                params.append(sampling)
        outputs = list(llm.generate(prompts, params, use_tqdm=False)) if prompts else []
        self.generate_calls += 1 if prompts else 0
        if len(outputs) != len(prompts):
            raise LMError(f"vLLM answered {len(outputs)} outputs for {len(prompts)} prompts.")
        results: list[LMResponse | Exception] = []
        for request, plan in zip(requests, plans):
            if isinstance(plan, Exception):
                results.append(plan)
                continue
            start, count, scoring = plan
            try:
                if scoring is None:
                    results.append(self._to_response(outputs[start], request))
                else:
                    results.append(self._score_response(outputs[start:start + count], request, scoring))
            except LMError as exc:
                results.append(exc)
            except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
                results.append(LMError(f"vLLM returned an unreadable output ({type(exc).__name__}: {exc}).",
                                       retryable=False))
        return results

    # ------------------------------------------------------------------ request mapping

    def sampling_params(self, request: LMRequest) -> Any:
        """The ``vllm.SamplingParams`` of a generation request."""
        vllm = import_vllm()
        kwargs: dict[str, Any] = {"n": 1, "max_tokens": max(1, int(request.max_tokens)),
                                  "temperature": max(0.0, float(request.temperature)),
                                  "top_p": float(request.top_p) if request.temperature > 0 else 1.0,
                                  "seed": request.sampling_seed}
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.logprobs:
            kwargs["logprobs"] = self.top_logprobs
        if request.json_schema is not None:
            kwargs.update(_structured_output_field(request.json_schema))
        return vllm.SamplingParams(**kwargs)

    def _request_items(self, request: LMRequest) -> tuple[list[tuple[Any, Any]], Any]:
        """The (prompt, SamplingParams) pairs of one request, and its scoring plan (None: generation)."""
        if request.choices is not None:
            return self._score_items(request)
        if request.messages is not None:
            prompt: Any = {"prompt_token_ids": self._chat_tokens(request)}
        else:
            prompt = {"prompt": request.prompt}
        return [(prompt, self.sampling_params(request))], None

    def _chat_tokens(self, request: LMRequest) -> list[int]:
        tok = self._tokenizer
        assert request.messages is not None
        if not getattr(tok, "chat_template", None):
            raise LMError(f"{self.model_path.name}: the tokenizer has no chat template, so a chat request "
                          "cannot be rendered. Use a raw prompt (format='completion'), or a model folder "
                          "whose tokenizer_config.json has a chat_template.", retryable=False)
        text = tok.apply_chat_template([m.to_dict() for m in request.messages], tokenize=False,
                                       add_generation_prompt=True)
        # the template writes BOS itself: tokenizing with special tokens would add a second one
        return list(tok.encode(text, add_special_tokens=False))

    def _score_items(self, request: LMRequest) -> tuple[list[tuple[Any, Any]], Any]:
        vllm = import_vllm()
        assert request.prompt is not None and request.choices is not None
        prompt_tokens, choice_tokens = _tokenize_choices(self._tokenizer, request.prompt, request.choices)
        # max_tokens=1: vLLM generates at least one token; prompt_logprobs=1 returns each prompt
        # token's own log-probability (always included) and the top alternative
        sampling = vllm.SamplingParams(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=1, seed=0)
        items = [({"prompt_token_ids": prompt_tokens + tokens}, sampling) for tokens in choice_tokens]
        return items, (len(prompt_tokens), choice_tokens)

    # ------------------------------------------------------------------ responses

    def _to_response(self, out: Any, request: LMRequest) -> LMResponse:
        if not out.outputs:
            raise LMError("vLLM returned no completion for a request.", retryable=False)
        comp = out.outputs[0]
        token_ids = list(comp.token_ids or ())
        logprobs = self._logprob_entries(comp.logprobs, token_ids) if request.logprobs else None
        return LMResponse(text=comp.text or "", model=self._identity["model"],
                          usage=Usage(prompt_tokens=len(out.prompt_token_ids or ()), completion_tokens=len(token_ids)),
                          finish_reason=comp.finish_reason, logprobs=logprobs)

    def _decode(self, token_id: int, entry: Any) -> str:
        text = getattr(entry, "decoded_token", None)
        return str(text) if text is not None else str(self._tokenizer.decode([token_id]))

    def _logprob_entries(self, raw: Any, token_ids: list[int]) -> list[dict[str, Any]]:
        if raw is None:
            raise LMError("vLLM returned no log-probabilities though the request asked for them.", retryable=False)
        entries = []
        for token_id, alternatives in zip(token_ids, raw):
            chosen = alternatives[token_id]
            top = {self._decode(tid, lp): float(lp.logprob) for tid, lp in alternatives.items()}
            entries.append({"token": self._decode(token_id, chosen), "logprob": float(chosen.logprob), "top": top})
        return entries

    def _score_response(self, outputs: Sequence[Any], request: LMRequest, plan: Any) -> LMResponse:
        n_prompt, choice_tokens = plan
        assert request.choices is not None
        scores: list[dict[str, Any]] = []
        for choice, tokens, out in zip(request.choices, choice_tokens, outputs):
            rows = out.prompt_logprobs
            if rows is None:
                raise LMError("vLLM returned no prompt log-probabilities for a scoring request.", retryable=False)
            total = 0.0
            for j, token in enumerate(tokens):
                total += float(rows[n_prompt + j][token].logprob)
            scores.append({"choice": choice, "logprob": total, "tokens": len(tokens)})
        best = 0
        for i, item in enumerate(scores):
            if item["logprob"] > scores[best]["logprob"]:  # strict: ties keep the earlier choice
                best = i
        return LMResponse(text=request.choices[best], model=self._identity["model"],
                          usage=Usage(prompt_tokens=n_prompt, completion_tokens=sum(s["tokens"] for s in scores)),
                          finish_reason="score", logprobs=scores)

    def _wrap_error(self, exc: Exception) -> LMError:
        if isinstance(exc, LMError):
            return exc
        match = _TOO_LONG.search(str(exc))
        if match:
            return LMError(f"the prompt is {match.group(1)} tokens, which does not fit the model's context "
                           f"(max_model_len={match.group(2)}). Raise max_model_len (VLLMLM(max_model_len=...)) "
                           "or shorten the prompt (fewer demos, shorter inputs).", retryable=False)
        return LMError(f"vLLM failed ({type(exc).__name__}): {exc}")


def _tokenize_choices(tokenizer: Any, prompt: str, choices: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """The prompt's token ids (as vLLM tokenizes a text prompt, special tokens included) and each
    choice's continuation tokens (see the module docstring)."""
    prompt_tokens = list(tokenizer.encode(prompt))
    if not prompt_tokens:
        raise LMError("cannot score choices after an empty prompt (no token to condition on); give the "
                      "request some prompt text.", retryable=False)
    n = len(prompt_tokens)
    out: list[list[int]] = []
    for choice in choices:
        full = list(tokenizer.encode(prompt + choice))
        if len(full) > n and full[:n] == prompt_tokens:
            tokens = full[n:]
        else:
            tokens = list(tokenizer.encode(choice, add_special_tokens=False))
        if not tokens:
            raise LMError(f"choice {choice!r} has no tokens to score.", retryable=False)
        out.append(tokens)
    return prompt_tokens, out
