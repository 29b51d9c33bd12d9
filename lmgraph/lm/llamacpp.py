"""In-process llama.cpp backend (llama-cpp-python), the embedded local default.

``llama_cpp`` is imported lazily, on the first call that needs it, so importing this module
costs nothing and works without the optional dependency.

Concurrency: a ``Llama`` object is not thread-safe, so :class:`LlamaCppLM` keeps a pool of
``n_instances`` of them. Each ``complete`` call waits for a free instance (an asyncio
semaphore per event loop, so waiting callers hold no worker thread), then runs the blocking
generation in a worker thread (``asyncio.to_thread``) with that instance checked out.
Instances are created lazily, one per concurrent caller, up to ``n_instances``.

Determinism: each call starts from a reset context (``llm.reset()``), so llama.cpp never
reuses a previous call's KV-cache prefix and an output never depends on call order. With
``temperature == 0`` sampling is greedy (no RNG involved); otherwise the RNG is seeded with
``request.sampling_seed`` (seed mixed with rollout, so each rollout is a fresh sample).

Log-probabilities need ``logits_all=True`` on the ``Llama`` object, which makes prompt
evaluation slower and keeps an ``n_ctx x n_vocab`` float array, so requests with
``logprobs=True`` use a second pool, created only when such a request arrives.

Streaming (``stream``): the generation runs in a worker thread with llama-cpp-python's
``stream=True``; each chunk crosses to the event loop through an ``asyncio.Queue``, and the
final response counts tokens as ``complete`` does (the prompt tokens and the sampled tokens,
an end-of-generation token not included). Closing the stream stops the generation at the next
token. Requests with ``logprobs`` or ``choices`` are answered by ``complete``, all at once.

Scoring (``request.choices``) needs neither: it runs on the ordinary pool. The prompt is
evaluated once (llama.cpp keeps only its last token's logits); each choice is then evaluated
after it, asking logits for the choice's tokens only, with the KV cache cut back to the
prompt between choices so the prompt is never evaluated twice. A one-token choice costs no
evaluation at all: the prompt's last logits already score it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import re
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ..errors import DefinitionError, LMError, LmgraphWarning
from .base import LMRequest, LMResponse, Usage
from .capabilities import Capabilities
from .embedded import check_threads, default_instances, default_threads, local_model_path
from .openai_compat import MalformedResponse, input_fields, logprob_fields, parse_completion

__all__ = ["INSTALL_COMMAND", "LlamaCppLM", "import_llama_cpp"]

INSTALL_COMMAND = "pip install 'llama-cpp-python>=0.3.8'  (or: pip install 'lmgraph[local]')"

# Model loading goes through process-global llama.cpp state (backend init, log callback,
# and with verbose=False a temporary redirect of fds 1/2): do one load at a time.
_LOAD_LOCK = threading.Lock()

_CTX_PAD = 256

_CTX_OVERFLOW = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


def check_gpu_options(n_gpu_layers: Any, main_gpu: Any,
                      tensor_split: Any) -> tuple[int, int, tuple[float, ...] | None]:
    """Validated llama.cpp GPU options: layers to offload (-1: all), main device, per-device shares."""
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
        raise DefinitionError(f"n_gpu_layers must be an int >= -1, got {n_gpu_layers!r}.",
                              fix="pass n_gpu_layers=-1 (every layer on the GPU), 0 (CPU only) or a layer count.")
    if isinstance(main_gpu, bool) or not isinstance(main_gpu, int) or main_gpu < 0:
        raise DefinitionError(f"main_gpu must be a device index >= 0, got {main_gpu!r}.", fix="pass main_gpu=0.")
    split: tuple[float, ...] | None = None
    if tensor_split is not None:
        try:
            split = tuple(float(x) for x in tensor_split)
        except (TypeError, ValueError):
            split = None
        if not split or any(x < 0 for x in split) or sum(split) <= 0:
            raise DefinitionError(f"tensor_split must list each GPU's non-negative share, got {tensor_split!r}.",
                                  fix="pass e.g. tensor_split=[0.5, 0.5] for two GPUs, or leave it None.")
    return int(n_gpu_layers), int(main_gpu), split


def import_llama_cpp() -> Any:
    """``llama_cpp``, or a DefinitionError naming the install command when it is missing."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise DefinitionError(
            "The in-process llama.cpp backend needs the optional package llama-cpp-python, "
            "which is not installed.",
            fix=f"run `{INSTALL_COMMAND}`.",
        ) from exc
    return llama_cpp


@functools.lru_cache(maxsize=128)
def _gbnf_for_schema(schema_json: str) -> str:
    """JSON schema (as JSON text, property order kept) -> GBNF grammar text, cached."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf: str = json_schema_to_gbnf(schema_json)
    return gbnf


class _Pool:
    """Up to ``size`` objects made by ``factory``, created on demand, checked out one at a time."""

    def __init__(self, factory: Callable[[], Any], size: int) -> None:
        self._factory = factory
        self._size = size
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._all: list[Any] = []
        self._creating = 0
        self._cond = threading.Condition()

    def acquire(self) -> Any:
        with self._cond:
            while True:
                try:
                    return self._idle.get_nowait()
                except queue.Empty:
                    pass
                if len(self._all) + self._creating < self._size:
                    self._creating += 1
                    break
                self._cond.wait()
        try:
            with _LOAD_LOCK:
                item = self._factory()
        except BaseException:
            with self._cond:
                self._creating -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._creating -= 1
            self._all.append(item)
        return item

    def release(self, item: Any) -> None:
        with self._cond:
            self._idle.put(item)
            self._cond.notify()

    def fill(self) -> None:
        """Create every instance now (warm-up)."""
        taken = [self.acquire() for _ in range(self._size)]
        for item in taken:
            self.release(item)

    @property
    def loaded(self) -> int:
        with self._cond:
            return len(self._all)

    def close(self) -> None:
        with self._cond:
            items, self._all = self._all, []
            self._idle = queue.SimpleQueue()
        for item in items:
            closer = getattr(item, "close", None)
            if closer is not None:
                try:
                    closer()
                except Exception:  # pragma: no cover - best effort
                    pass


class LlamaCppLM:
    """A GGUF model run in-process through llama.cpp.

    ``model_path`` defaults to the embedded SmolLM2-135M-Instruct
    (:func:`~lmgraph.lm.embedded.embedded_model_path`). ``n_ctx`` is rounded up to a multiple
    of 256, as llama.cpp does internally. ``n_instances`` (model copies loaded on demand, one per
    concurrent call) defaults to one per usable CPU, at most 4, for model files up to 1 GiB (the
    embedded model) and 1 for larger ones. ``n_threads`` defaults to half the usable CPUs divided
    among the instances, at least 1 (robust when other work shares the machine; pass
    ``n_threads=os.cpu_count()`` with ``n_instances=1`` on an idle machine for ~1.5x decode speed
    of a single call).
    ``chat_format`` overrides the chat template stored in the GGUF file (a llama-cpp-python
    format name such as ``"chatml"``). ``top_logprobs`` is how many alternatives each token's
    entry lists when a request asks for log-probabilities.

    GPU offload (a CUDA/Metal/Vulkan build of llama-cpp-python, e.g.
    ``LMGRAPH_LLAMA_CMAKE_ARGS="-DGGML_CUDA=on" bash scripts/setup.sh``): ``n_gpu_layers`` layers
    go to the GPU (``-1``: all of them; ``0``, the default: none), ``main_gpu`` picks the device
    and ``tensor_split`` the share of each device (llama.cpp's own options, passed as they are).
    A CPU-only build ignores them, with a warning. Offloaded arithmetic may round differently, so
    a nonzero ``n_gpu_layers`` is part of :meth:`identity` (CPU and GPU results are cached apart).
    """

    #: small local models follow "Field: value" completion prompts with demos best (DESIGN.md)
    preferred_format = "completion"
    supports_scoring = True  # scores given continuations (LMRequest.choices): decode="score"
    #: what it can do: a JSON schema becomes a grammar; log-probabilities and choice scoring
    capabilities = Capabilities(json_modes=("json_schema", "none"), json_mode="json_schema",
                                logprobs=True, scoring=True, streaming=True)

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, n_ctx: int = 2048,
                 n_threads: int | None = None, n_instances: int | None = None,
                 chat_format: str | None = None, verbose: bool = False,
                 top_logprobs: int = 5, n_gpu_layers: int = 0, main_gpu: int = 0,
                 tensor_split: Sequence[float] | None = None) -> None:
        if n_ctx < 1:
            raise DefinitionError(f"n_ctx must be positive, got {n_ctx}.", fix="pass n_ctx=2048.")
        self.model_path = local_model_path(model_path)
        if n_instances is None:
            n_instances = default_instances(self.model_path.stat().st_size)
        if n_instances < 1:
            raise DefinitionError(f"n_instances must be >= 1, got {n_instances}.",
                                  fix="pass n_instances=1 (one model copy per concurrent call).")
        check_threads(n_threads)
        self.n_gpu_layers, self.main_gpu, self.tensor_split = check_gpu_options(
            n_gpu_layers, main_gpu, tensor_split)
        # llama.cpp pads the context to a multiple of 256; llama-cpp-python sizes its token
        # buffer by the requested value and then crashes on prompts between the two sizes
        # (0.3.36). Asking for the padded size up front keeps both in agreement.
        self.n_ctx = -(-int(n_ctx) // _CTX_PAD) * _CTX_PAD
        self.n_instances = int(n_instances)
        self.n_threads = int(n_threads) if n_threads is not None else default_threads(n_instances)
        self.chat_format = chat_format
        self.verbose = verbose
        self.top_logprobs = int(top_logprobs)
        stat = self.model_path.stat()
        self._identity: dict[str, Any] = {
            "backend": "llama.cpp",
            "model": self.model_path.name,
            "file_size": stat.st_size,
            "file_mtime_ns": stat.st_mtime_ns,
            "n_ctx": self.n_ctx,
        }
        if chat_format is not None:
            self._identity["chat_format"] = chat_format
        if self.n_gpu_layers:
            self._identity["n_gpu_layers"] = self.n_gpu_layers
        self._pool = _Pool(lambda: self._new_llama(logits_all=False), self.n_instances)
        self._lp_pool = _Pool(lambda: self._new_llama(logits_all=True), self.n_instances)
        self._vocab: Any = None
        self._vocab_lock = threading.Lock()
        self._sems: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())
        self._sems_lock = threading.Lock()
        self.load_seconds: float | None = None  # wall time of the first model load
        self._warned_cpu_build = False

    # ------------------------------------------------------------------ public API

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def __repr__(self) -> str:
        return (f"LlamaCppLM({self.model_path.name!r}, n_ctx={self.n_ctx}, "
                f"n_instances={self.n_instances}, n_threads={self.n_threads})")

    def load(self) -> LlamaCppLM:
        """Load every pooled instance now, so the first call does not pay for it."""
        self._pool.fill()
        return self

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a raw completion prompt (BOS included if the model adds one)."""
        with self._vocab_lock:
            if self._vocab is None:
                llama_cpp = import_llama_cpp()
                with _LOAD_LOCK:
                    self._vocab = llama_cpp.Llama(str(self.model_path), vocab_only=True,
                                                  verbose=self.verbose)
            return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def close(self) -> None:
        """Free the loaded models (a later call loads them again)."""
        self._pool.close()
        self._lp_pool.close()
        with self._vocab_lock:
            vocab, self._vocab = self._vocab, None
        if vocab is not None:
            try:
                vocab.close()
            except Exception:  # pragma: no cover - best effort
                pass

    def __enter__(self) -> LlamaCppLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def complete(self, request: LMRequest) -> LMResponse:
        start = time.perf_counter()
        async with self._semaphore():
            response = await asyncio.to_thread(self._complete_blocking, request)
        return response.replace(latency_s=time.perf_counter() - start)

    async def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """Text deltas as llama.cpp generates them, then the final response (see the module docstring)."""
        if request.choices is not None or request.logprobs:
            response = await self.complete(request)
            if response.text:
                yield response.text
            yield response
            return
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def post(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop has closed: nobody is listening any more
                stop.set()

        async with self._semaphore():
            from ._llamacpp_stream import stream_blocking

            loop.run_in_executor(None, stream_blocking, self, request, post, stop)
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "delta":
                        yield value
                    elif kind == "error":
                        raise value
                    else:
                        response = value
                        break
            finally:
                stop.set()  # a closed or failed stream: the worker stops at the next token
        yield response.replace(latency_s=time.perf_counter() - start)

    # ------------------------------------------------------------------ internals

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._sems_lock:
            sem = self._sems.get(loop)
            if sem is None:
                sem = self._sems[loop] = asyncio.Semaphore(self.n_instances)
            return sem

    def _new_llama(self, *, logits_all: bool) -> Any:
        llama_cpp = import_llama_cpp()
        t0 = time.perf_counter()
        try:
            llm = llama_cpp.Llama(
                str(self.model_path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                n_threads_batch=self.n_threads, chat_format=self.chat_format,
                logits_all=logits_all, verbose=self.verbose, **self._gpu_kwargs(llama_cpp),
            )
        except Exception as exc:
            raise LMError(f"llama.cpp could not load {str(self.model_path)!r}: {exc}") from exc
        if self.load_seconds is None:
            self.load_seconds = time.perf_counter() - t0
        return llm

    def _gpu_kwargs(self, llama_cpp: Any) -> dict[str, Any]:
        """``Llama(...)``'s GPU options; a warning (once) when this build cannot offload."""
        if not self.n_gpu_layers:
            return {}
        supports = getattr(llama_cpp, "llama_supports_gpu_offload", None)
        if supports is not None and not supports() and not self._warned_cpu_build:
            self._warned_cpu_build = True
            warnings.warn(
                f"LlamaCppLM(n_gpu_layers={self.n_gpu_layers}): this llama-cpp-python build has no GPU "
                "support, so the model runs on the CPU. Rebuild it with CUDA: "
                "LMGRAPH_LLAMA_CMAKE_ARGS=\"-DGGML_CUDA=on\" bash scripts/setup.sh", LmgraphWarning, stacklevel=2)
        kwargs: dict[str, Any] = {"n_gpu_layers": self.n_gpu_layers, "main_gpu": self.main_gpu}
        if self.tensor_split is not None:
            kwargs["tensor_split"] = list(self.tensor_split)
        return kwargs

    def _complete_blocking(self, request: LMRequest) -> LMResponse:
        if request.choices is not None:
            return self._score_blocking(request)
        grammar = self._grammar(request.json_schema) if request.json_schema is not None else None
        pool = self._lp_pool if request.logprobs else self._pool
        llm = pool.acquire()
        try:
            llm.reset()  # never reuse a previous call's KV prefix: outputs independent of order
            kwargs = self._sampling_kwargs(request)
            if grammar is not None:
                kwargs["grammar"] = grammar
            kwargs.update(logprob_fields(request, self.top_logprobs))  # the OpenAI shapes: see .openai_compat
            out = self._create(llm, request)(**input_fields(request), **kwargs)
        except LMError:
            raise
        except Exception as exc:
            raise self._wrap_error(exc) from exc
        finally:
            pool.release(llm)
        return self._to_response(out, request)

    def _score_blocking(self, request: LMRequest) -> LMResponse:
        """Total log-probability of each choice as a continuation of the prompt; best = text."""
        assert request.prompt is not None and request.choices is not None  # LMRequest checks
        llm = self._pool.acquire()
        try:
            llm.reset()  # as for generation: nothing carried over from the previous call
            prompt_tokens, choice_tokens = _tokenize_choices(llm, request.prompt, request.choices)
            longest = max(len(t) for t in choice_tokens)
            if len(prompt_tokens) + longest > self.n_ctx:
                # same wording as llama-cpp-python's overflow error, so _wrap_error explains it
                raise ValueError(f"Requested tokens ({len(prompt_tokens) + longest}) exceed "
                                 f"context window of {self.n_ctx}")
            import numpy as np

            n_vocab = llm.n_vocab()
            llm.eval(prompt_tokens)  # logits of the last prompt token only (logits_all=False)
            first = _log_softmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)))
            scores: list[dict[str, Any]] = []
            for choice, tokens in zip(request.choices, choice_tokens):
                total = float(first[tokens[0]])
                if len(tokens) > 1:
                    rows = _decode_all_logits(llm, tokens[:-1], len(prompt_tokens), n_vocab)
                    for row, token in zip(rows, tokens[1:]):
                        total += float(_log_softmax(row)[token])
                scores.append({"choice": choice, "logprob": total, "tokens": len(tokens)})
        except LMError:
            raise
        except Exception as exc:
            raise self._wrap_error(exc) from exc
        finally:
            self._pool.release(llm)
        best = 0
        for i, item in enumerate(scores):
            if item["logprob"] > scores[best]["logprob"]:  # strict: ties keep the earlier choice
                best = i
        return LMResponse(
            text=request.choices[best],
            usage=Usage(prompt_tokens=len(prompt_tokens),
                        completion_tokens=sum(item["tokens"] for item in scores)),
            model=self._identity["model"],
            finish_reason="score",
            logprobs=scores,
        )

    @staticmethod
    def _sampling_kwargs(request: LMRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_tokens": max(1, int(request.max_tokens)),
            "stop": list(request.stop),
            "seed": request.sampling_seed,
            "repeat_penalty": 1.0,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "typical_p": 1.0,
            "min_p": 0.0,
        }
        if request.temperature <= 0:
            # temperature 0 selects llama.cpp's greedy sampler (argmax, no RNG).
            kwargs.update(temperature=0.0, top_k=1, top_p=1.0)
        else:
            # OpenAI semantics: only temperature and top_p (llama.cpp's top_k/min_p off).
            kwargs.update(temperature=float(request.temperature), top_k=0,
                          top_p=float(request.top_p))
        return kwargs

    def _grammar(self, schema: dict[str, Any]) -> Any:
        import_llama_cpp()  # clear error if missing
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            gbnf = _gbnf_for_schema(json.dumps(schema))  # key order matters: it fixes field order
        except Exception as exc:
            err = LMError(f"llama.cpp cannot turn this JSON schema into a grammar: {exc}. "
                          "Simplify the output schema (plain objects, strings, numbers, "
                          "booleans, enums and lists are supported).")
            err.retryable = False
            raise err from exc
        return LlamaGrammar.from_string(gbnf, verbose=self.verbose)

    def _wrap_error(self, exc: Exception) -> LMError:
        match = _CTX_OVERFLOW.search(str(exc))
        if match:
            n_prompt, n_ctx = match.groups()
            err = LMError(f"the prompt is {n_prompt} tokens, which does not fit the model's "
                          f"context window (n_ctx={n_ctx}). Raise n_ctx (LlamaCppLM(n_ctx=...)) "
                          "or shorten the prompt (fewer demos, shorter inputs).", context_overflow=True)
            return err
        return LMError(f"llama.cpp failed ({type(exc).__name__}): {exc}")

    @staticmethod
    def _create(llm: Any, request: LMRequest) -> Callable[..., Any]:
        """llama-cpp-python's call for ``request``: ``create_chat_completion`` for a chat,
        ``create_completion`` for a raw prompt (both take and return the OpenAI shapes)."""
        create: Callable[..., Any] = (llm.create_chat_completion if request.messages is not None
                                      else llm.create_completion)
        return create

    def _to_response(self, out: dict[str, Any], request: LMRequest) -> LMResponse:
        try:
            return parse_completion(out, request, model=self._identity["model"])
        except MalformedResponse as exc:  # not expected of llama-cpp-python: a version that answers otherwise
            err = LMError(f"llama.cpp returned {exc}.")
            err.retryable = False  # the same call answers the same way
            raise err from None


def _tokenize_choices(llm: Any, prompt: str,
                      choices: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Prompt tokens (as ``create_completion`` makes them) and each choice's continuation tokens.

    A choice's tokens are those of ``prompt + choice`` past the prompt's own tokens, so they are
    what the model would emit after this prompt; where the two merge across the boundary (a
    prompt ending in a space, say) the choice is tokenized on its own instead.
    """
    prompt_tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    if not prompt_tokens:  # an empty prompt: condition on BOS, as create_completion does
        bos = llm.token_bos()
        if bos < 0:
            raise LMError("cannot score choices after an empty prompt with a model that has no "
                          "BOS token; give the request some prompt text.")
        prompt_tokens = [bos]
    n = len(prompt_tokens)
    out: list[list[int]] = []
    for choice in choices:
        full = llm.tokenize((prompt + choice).encode("utf-8"), add_bos=True, special=True)
        if len(full) > n and full[:n] == prompt_tokens:
            tokens = full[n:]
        else:
            tokens = llm.tokenize(choice.encode("utf-8"), add_bos=False, special=False)
        if not tokens:
            raise LMError(f"choice {choice!r} has no tokens to score.")
        out.append(list(tokens))
    return prompt_tokens, out


def _decode_all_logits(llm: Any, tokens: Sequence[int], n_past: int, n_vocab: int) -> Any:
    """Evaluate ``tokens`` at positions ``n_past...`` (dropping any KV entries from ``n_past`` on)
    and return the logits after each of them, one row per token."""
    import numpy as np

    rows = []
    llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
    for i in range(0, len(tokens), llm.n_batch):
        chunk = list(tokens[i:i + llm.n_batch])
        llm._batch.set_batch(batch=chunk, n_past=n_past + i, logits_all=True)
        llm._ctx.decode(llm._batch)
        rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(),
                                          shape=(len(chunk), n_vocab)).copy())
        llm.input_ids[n_past + i:n_past + i + len(chunk)] = chunk
        llm.n_tokens = n_past + i + len(chunk)
    return np.concatenate(rows)


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())
