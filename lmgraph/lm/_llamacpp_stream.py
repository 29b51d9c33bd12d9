"""Streaming generation for :class:`~lmgraph.lm.llamacpp.LlamaCppLM` (its ``stream`` method runs
:func:`stream_blocking` in a worker thread; see that module's docstring)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import LMError
from .base import LMRequest, LMResponse, Usage
from .openai_compat import field, input_fields, stream_delta

if TYPE_CHECKING:
    from .llamacpp import LlamaCppLM


def stream_blocking(self: LlamaCppLM, request: LMRequest, post: Callable[[str, Any], None],
                    stop: threading.Event) -> None:
    """Generate with ``stream=True`` in this (worker) thread, posting ("delta", text) items and
    then ("end", LMResponse) or ("error", LMError)."""
    try:
        grammar = self._grammar(request.json_schema) if request.json_schema is not None else None
        llm = self._pool.acquire()
        try:
            parts, finish, counts = _stream_on(self, llm, request, grammar, post, stop)
        finally:
            self._pool.release(llm)
        if stop.is_set():
            return
        usage = Usage(prompt_tokens=counts.get("prompt", 0), completion_tokens=counts.get("completion", 0))
        post("end", LMResponse(text="".join(parts), usage=usage, model=self._identity["model"],
                               finish_reason=finish))
    except LMError as exc:
        post("error", exc)
    except Exception as exc:  # noqa: BLE001 - handed to the event loop
        post("error", self._wrap_error(exc))


def _stream_on(self: LlamaCppLM, llm: Any, request: LMRequest, grammar: Any, post: Callable[[str, Any], None],
               stop: threading.Event) -> tuple[list[str], str | None, dict[str, int]]:
    llama_cpp = _llama_cpp()
    llm.reset()  # as for complete: no KV prefix carried over from the previous call
    kwargs = self._sampling_kwargs(request)
    if grammar is not None:
        kwargs["grammar"] = grammar
    counts: dict[str, int] = {}
    generate = llm.generate

    def counted(tokens: Sequence[int], *args: Any, **kw: Any) -> Any:
        # the usage complete() reports: the prompt's tokens and the sampled ones (an
        # end-of-generation token is not part of the completion); the stream's chunks do not say
        counts["prompt"], counts["completion"] = len(tokens), 0
        for token in generate(tokens, *args, **kw):
            if not llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                counts["completion"] += 1
            yield token

    llm.generate = counted  # this instance is checked out to this call alone
    parts: list[str] = []
    finish: str | None = None
    try:
        chunks = self._create(llm, request)(**input_fields(request), stream=True, **kwargs)
        try:
            for chunk in chunks:
                if stop.is_set():
                    break
                choice = chunk["choices"][0]
                piece = stream_delta(choice, request)
                if piece:
                    parts.append(piece)
                    post("delta", piece)
                finish = field(choice, "finish_reason") or finish
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    finally:
        del llm.generate  # the class's method again
    return parts, finish, counts



def _llama_cpp() -> Any:
    from .llamacpp import import_llama_cpp

    return import_llama_cpp()
