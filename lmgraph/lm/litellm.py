"""API models through litellm (OpenAI, Anthropic, ... and any OpenAI-compatible local server).

``litellm`` is imported lazily, inside the first call: importing it takes seconds, and unless
``LITELLM_LOCAL_MODEL_COST_MAP`` is set it fetches a price list from the network. This module
sets that variable (``setdefault``) just before the import, so lmgraph never makes that request.

Chat requests go to ``litellm.acompletion``, raw-prompt requests to ``litellm.atext_completion``.
Every litellm/provider failure surfaces as :class:`~lmgraph.errors.LMError` with the original
exception as ``__cause__``, the HTTP ``status`` when the provider answered one and the wait it
asked for (``retry_after_s``, from ``Retry-After`` / ``retry-after-ms``); errors that retrying
cannot fix (bad request, authentication, unknown model, context window exceeded) carry
``retryable = False``. litellm's own retries stay off (``num_retries=0``): lmgraph's
:class:`~lmgraph.lm.wrappers.RetryLM` retries, so each request is counted and paced by the
endpoint's :class:`~lmgraph.lm.faults.AdaptiveRateLimiter` (AIMD on 429s).

:meth:`LiteLLM.stream` calls litellm with ``stream=True`` (usage asked for with
``stream_options.include_usage``; the cost priced from the rebuilt response where litellm knows
the model) and yields each content delta. A request with a JSON schema streams once the
endpoint's JSON mode is known; until then, and for ``logprobs``/``choices``, ``complete`` answers.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import urllib.parse
import warnings
from collections.abc import AsyncIterator
from typing import Any

from ..cache.keys import strip_credentials
from ..errors import DefinitionError, LMError, LmgraphError
from .base import LMRequest, LMResponse
from .capabilities import JsonModeNegotiator, NegotiatedJsonMode, mark_json_mode_rejection
from .credentials import (
    LOCAL_PLACEHOLDER_KEY,
    Secrets,
    extra_secrets,
    redact_url,
    resolve_api_key,
    split_userinfo,
    url_secrets,
)
from .faults import count_request, endpoint_limiter, mark_context_overflow, retry_after
from .openai_compat import (
    STREAM_FIELDS,
    MalformedResponse,
    field,
    input_fields,
    json_mode_fields,
    logprob_fields,
    parse_completion,
    parse_usage,
    sampling_fields,
    schema_in_prompt,
    stream_delta,
)

__all__ = ["INSTALL_COMMAND", "LiteLLM", "openai_compatible"]

INSTALL_COMMAND = "pip install 'litellm>=1.40'  (or: pip install 'lmgraph[litellm]')"

_IMPORT_LOCK = threading.Lock()
_READONLY_WARNING = r".*(is|are) using the `ReadOnly` qualifier"
_litellm: Any = None

# litellm exception class names that no retry can fix.
_NOT_RETRYABLE = frozenset({
    "BadRequestError", "InvalidRequestError", "AuthenticationError", "PermissionDeniedError",
    "NotFoundError", "ContextWindowExceededError", "UnsupportedParamsError",
    "ContentPolicyViolationError", "UnprocessableEntityError", "LiteLLMUnknownProvider",
    "PaymentRequiredError", "BudgetExceededError",
})
_TIMEOUTS = frozenset({"Timeout", "APITimeoutError", "TimeoutError", "ConnectTimeout", "ReadTimeout",
                       "ConnectionTimeoutError"})
# the request never reached the provider
_UNREACHED = frozenset({"ConnectError", "ClientConnectorError", "ConnectionRefusedError", "ConnectTimeout",
                        "ClientConnectorDNSError", "gaierror", "ConnectionError"})
# no HTTP answer came back (litellm then reports a made-up status 500)
_NO_ANSWER = frozenset({"APIConnectionError", "ReadError", "RemoteProtocolError",
                        "ServerDisconnectedError", "ClientPayloadError", "ClientOSError"}) | _TIMEOUTS | _UNREACHED


def _import_litellm() -> Any:
    """Import litellm once, offline (local cost map), quiet."""
    global _litellm
    if _litellm is not None:
        return _litellm
    with _IMPORT_LOCK:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            try:
                import litellm
            except ImportError as exc:
                raise DefinitionError(
                    "The litellm backend needs the optional package litellm, which is not "
                    "installed.", fix=f"run `{INSTALL_COMMAND}`.") from exc
            # litellm's pydantic types emit these (lazily, on first use); they are noise.
            warnings.filterwarnings("ignore", message=_READONLY_WARNING, category=UserWarning)
            litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners
            litellm.telemetry = False
            _litellm = litellm
    return _litellm


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes/contexts, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


class LiteLLM(NegotiatedJsonMode):
    """A model reached through litellm.

    ``model`` is a litellm model string (``"openai/gpt-4o-mini"``, ``"anthropic/..."``,
    ``"openai/local"`` with ``api_base`` for an OpenAI-compatible server). ``extra`` is
    passed to every litellm call (it may override the defaults below, e.g.
    ``{"drop_params": False}``). By default ``drop_params=True``, so parameters a provider
    does not support (``seed``, ``top_p``) are dropped instead of failing the call.
    ``num_retries`` is litellm's own retrying; lmgraph's ``RetryLM`` usually does that job.
    ``json_mode`` says how ``request.json_schema`` is sent: ``"auto"`` (default) negotiates it
    (``"json_schema"``, then ``"json_object"``, then ``"none"``, falling back when the provider
    rejects ``response_format``; see :mod:`lmgraph.lm.capabilities`); ``"json_schema"`` (OpenAI
    structured outputs; also vLLM, Ollama), ``"json_object"`` (``{"type": "json_object",
    "schema": ...}``, which llama-cpp-python's server needs: it rejects ``json_schema``) or
    ``"none"`` (the schema in the prompt) skip negotiation.

    ``api_key`` (or the environment variable ``api_key_env`` names) is passed to litellm; without
    either litellm reads the provider's own variable. User-info in ``api_base``
    (``http://user:pass@host/v1``) is sent as basic authentication instead. Credentials never
    appear in ``repr()``, ``identity()``, ``api_base`` or an error message, nor do those inside
    ``api_base`` (user-info, ``?api_key=``).

    ``rate_limit=True`` paces requests by the provider's 429s (one limiter per ``api_base``, or
    per model without one, shared in the process). Each request sent is counted for the budget's
    ``requests``.
    """

    reports_requests = True  # counts each request for the budget itself (lmgraph.lm.faults)

    def __init__(self, model: str, *, api_base: str | None = None, api_key: str | None = None,
                 api_key_env: str | None = None, timeout: float = 60.0, num_retries: int = 0,
                 extra: dict[str, Any] | None = None, top_logprobs: int = 5,
                 json_mode: str = "auto", rate_limit: bool = True) -> None:
        if not model or not isinstance(model, str):
            raise DefinitionError(f"LiteLLM needs a model name, got {model!r}.",
                                  fix="pass a litellm model string such as 'openai/gpt-4o-mini'.")
        if api_base is not None and not isinstance(api_base, str):
            raise DefinitionError(f"LiteLLM: api_base must be a URL string, got {type(api_base).__name__}.",
                                  fix="e.g. api_base='http://127.0.0.1:8080/v1'.")
        if api_key is None and api_key_env is not None:
            api_key = resolve_api_key(None, api_key_env, owner="LiteLLM")
        elif api_key is not None:
            api_key = resolve_api_key(api_key, None, owner="LiteLLM")
        self.model = model
        # user-info goes as a header (litellm's HTTP client refuses it in the URL next to one)
        try:
            self._api_base, self._basic_auth = split_userinfo(api_base)
            query = urllib.parse.urlsplit(self._api_base).query if self._api_base else ""
        except ValueError:
            raise DefinitionError(f"LiteLLM: api_base {redact_url(api_base)!r} is not a valid URL.",
                                  fix="e.g. api_base='http://127.0.0.1:8080/v1'.") from None
        if query:
            raise DefinitionError(
                f"LiteLLM: api_base {redact_url(api_base)!r} has a query string, which litellm's OpenAI "
                "client does not send (it appends the request path after it).",
                fix="pass the key as api_key= (or api_key_env=), or use the lean client "
                    "OpenAIServerLM(url) (--model http:URL), which sends the query with every request.")
        self.api_base = redact_url(api_base)  # what repr, identity and errors show
        self._api_key = api_key
        self._secrets = Secrets([api_key, *url_secrets(api_base), *extra_secrets(extra)])
        if self._basic_auth:
            self._secrets.add(self._basic_auth.split()[1])
        self.timeout = float(timeout)
        self.num_retries = int(num_retries)
        self.extra = dict(extra or {})
        self.top_logprobs = int(top_logprobs)
        # the negotiated mode is shared per server and model name, with OpenAIServerLM too
        served = model.partition("/")[2] if api_base and model.startswith("openai/") else model
        self._json = JsonModeNegotiator(json_mode, endpoint=(self.api_base or "").rstrip("/"),
                                        model=served, owner="LiteLLM")
        root = urllib.parse.urlsplit(self._api_base) if self._api_base else None
        key = (urllib.parse.urlunsplit((root.scheme, root.netloc.rpartition("@")[2], root.path.rstrip("/"), "", ""))
               if root is not None else f"litellm:{model}")
        self.rate_limiter = endpoint_limiter(key) if rate_limit else None

    def identity(self) -> dict[str, Any]:
        # Never the API key: identities end up in cache keys, traces and artifacts.
        ident: dict[str, Any] = {"backend": "litellm", "model": self.model, "api_base": self.api_base}
        if self.extra:  # extra call arguments (sampling settings, extra_body) change the completion
            ident["extra"] = strip_credentials(self.extra)
        return ident

    def __repr__(self) -> str:
        base = f", api_base={self.api_base!r}" if self.api_base else ""
        return f"LiteLLM({self.model!r}{base})"

    async def aclose(self) -> None:
        """Close litellm's cached HTTP clients (avoids "Unclosed client session" warnings).

        litellm shares those clients process-wide, so this affects every litellm user.
        """
        if _litellm is None:
            return
        closer = getattr(_litellm, "close_litellm_async_clients", None)
        if closer is not None:
            try:
                await closer()
            except Exception:  # pragma: no cover - best effort
                pass

    def _kwargs(self, request: LMRequest, mode: str | None = None) -> dict[str, Any]:
        """litellm's keyword arguments for ``request`` (already in JSON mode ``mode``) but its
        messages or prompt: the OpenAI fields (:mod:`.openai_compat`) and litellm's own settings."""
        kwargs: dict[str, Any] = {"model": self.model, **sampling_fields(request), "timeout": self.timeout,
                                  "num_retries": self.num_retries, "drop_params": True}
        if self._api_base is not None:
            kwargs["api_base"] = self._api_base
        if self._api_key is not None:
            kwargs["api_key"] = self._api_key
        if request.json_schema is not None:
            kwargs.update(json_mode_fields(request, mode or self._json.candidates(request.mode)[0]))
        kwargs.update(logprob_fields(request, self.top_logprobs))
        if self._basic_auth:  # replaces the bearer header of api_key
            kwargs["extra_headers"] = {**(self.extra.get("extra_headers") or {}),
                                       "Authorization": self._basic_auth}
        kwargs.update({k: v for k, v in self.extra.items() if not (k == "extra_headers" and self._basic_auth)})
        return kwargs

    async def complete(self, request: LMRequest) -> LMResponse:
        if request.choices is not None:
            err = LMError(
                f"{self.model}: scoring choices (decode='score') needs a backend that returns "
                "the log-probabilities of given continuation tokens, which the litellm backend "
                "does not provide. Use the in-process llama.cpp backend (LlamaCppLM) for "
                "scoring, or decode='generate' with this model.")
            err.retryable = False
            raise err
        return await self._json.complete(request, self._send)

    async def _send(self, request: LMRequest, mode: str | None) -> LMResponse:
        litellm = _import_litellm()
        kwargs = self._kwargs(request, mode)
        limiter = self.rate_limiter
        sent = await limiter.acquire() if limiter is not None else 0.0
        start = time.perf_counter()
        try:
            call = litellm.acompletion if request.messages is not None else litellm.atext_completion
            raw = await call(**input_fields(request), **kwargs)
        except LmgraphError:
            raise
        except Exception as exc:
            err = self._wrap_error(exc, mode)
            if err.reached:  # type: ignore[attr-defined]
                count_request()
            if err.status == 429 and limiter is not None:
                limiter.throttle(sent, err.retry_after_s)
            # the cause goes along unless a secret is in its text (or its causes')
            raise err from (None if _shows_secret(exc, self._secrets) else exc)
        count_request()
        if limiter is not None:
            limiter.success()
        latency = time.perf_counter() - start
        return self._to_response(raw, request, latency, litellm)

    async def stream(self, request: LMRequest) -> AsyncIterator[str | LMResponse]:
        """Content deltas through litellm's ``stream=True``, then the final response (see the module
        docstring); failures as :meth:`complete` raises them."""
        mode = self._json.mode(request.mode) if request.json_schema is not None else None
        if not self._streamable(request, mode):
            async for item in self._complete_as_stream(request):
                yield item
            return
        litellm = _import_litellm()
        sent_request = schema_in_prompt(request) if mode == "none" else request
        kwargs = self._kwargs(sent_request, mode)
        kwargs.update(STREAM_FIELDS)
        limiter = self.rate_limiter
        sent = await limiter.acquire() if limiter is not None else 0.0
        start = time.perf_counter()
        chunks: list[Any] = []
        parts: list[str] = []
        try:
            call = litellm.acompletion if sent_request.messages is not None else litellm.atext_completion
            raw = await call(**input_fields(sent_request), **kwargs)
            count_request()
            if limiter is not None:
                limiter.success()
            async for chunk in raw:
                chunks.append(chunk)
                for choice in field(chunk, "choices") or []:
                    piece = stream_delta(choice, request)
                    if piece:
                        parts.append(piece)
                        yield piece
        except LmgraphError:
            raise
        except Exception as exc:
            err = self._wrap_error(exc, mode)
            if err.reached and not chunks:  # type: ignore[attr-defined]
                count_request()
            if err.status == 429 and limiter is not None:
                limiter.throttle(sent, err.retry_after_s)
            raise err from (None if _shows_secret(exc, self._secrets) else exc)
        try:
            usage = parse_usage(next((u for u in (field(c, "usage") for c in reversed(chunks)) if u), None))
            finish = next((f for f in (field(ch, "finish_reason") for c in reversed(chunks)
                                       for ch in (field(c, "choices") or [])) if f), None)
        except MalformedResponse as exc:
            raise self._malformed(exc) from None
        if not usage.completion_tokens:  # none reported: one token per content delta
            usage = dataclasses.replace(usage, completion_tokens=len(parts))
        model = next((str(m) for m in (field(c, "model") for c in chunks) if m), self.model)
        cost = None
        try:
            rebuilt = litellm.stream_chunk_builder(
                chunks, messages=[m.to_dict() for m in sent_request.messages] if sent_request.messages else None)
            cost = _cost(rebuilt, litellm) if rebuilt is not None else None
        except Exception:  # noqa: BLE001 - no price for this stream: cost unknown
            cost = None
        yield LMResponse(text="".join(parts), usage=usage, model=model, finish_reason=finish, cost=cost,
                         latency_s=time.perf_counter() - start)

    def _wrap_error(self, exc: Exception, mode: str | None = None) -> LMError:
        # litellm re-wraps transport failures (a refused connection arrives as
        # InternalServerError), so classify by the whole cause chain.
        chain = _chain(exc)
        names = {type(e).__name__ for e in chain}
        where = f"{self.model}" + (f" at {self.api_base}" if self.api_base else "")
        if names & _TIMEOUTS:
            msg = f"{where} timed out after {self.timeout:g} s ({exc})."
        elif names & _UNREACHED:
            msg = (f"could not connect to {where} (is the server running?): "
                   f"{type(exc).__name__}: {exc}")
        elif names & _NO_ANSWER:
            msg = f"the connection to {where} broke before a full answer came ({type(exc).__name__}): {exc}"
        else:
            msg = f"{where} failed ({type(exc).__name__}): {exc}"
        status = None if names & _NO_ANSWER else next(
            (s for s in (getattr(e, "status_code", None) for e in chain) if isinstance(s, int)), None)
        wait = None
        for e in chain:
            headers = getattr(e, "litellm_response_headers", None) or getattr(getattr(e, "response", None),
                                                                             "headers", None)
            wait = retry_after(headers) if headers is not None else None
            if wait is not None:
                break
        err = LMError(self._secrets.scrub(msg), retryable=type(exc).__name__ not in _NOT_RETRYABLE,
                      status=status, retry_after_s=wait)
        err.reached = not (names & _UNREACHED)  # type: ignore[attr-defined]
        mark_context_overflow(err, " ".join([*sorted(names), str(exc)]))
        return mark_json_mode_rejection(err, status, str(exc), mode)

    def _to_response(self, raw: Any, request: LMRequest, latency: float,
                     litellm: Any) -> LMResponse:
        try:
            return parse_completion(raw, request, model=self.model, reported_model=True, latency_s=latency,
                                    cost=_cost(raw, litellm))
        except MalformedResponse as exc:
            raise self._malformed(exc) from None

    def _malformed(self, exc: MalformedResponse) -> LMError:
        """What a litellm answer that is not a completion raises (e.g. "... returned no choices.")."""
        return LMError(self._secrets.scrub(f"{self.model} returned {exc}."))


def _cost(raw: Any, litellm: Any) -> float | None:
    """The call's price in dollars, or None where litellm knows none (local servers, unmapped models).

    litellm prices every completion itself and keeps the figure (None when unknown) in
    ``raw._hidden_params["response_cost"]``; pricing it again would cost ~0.3 ms of CPU per
    call, several percent of a throughput-bound batch. Computed here only when that is absent.
    """
    hidden = getattr(raw, "_hidden_params", None)
    try:
        if isinstance(hidden, dict) and "response_cost" in hidden:
            value = hidden["response_cost"]
            return None if value is None else float(value)
        return float(litellm.completion_cost(completion_response=raw))
    except Exception:
        return None


def openai_compatible(base_url: str, model: str = "local", *, api_key: str | None = None,
                      api_key_env: str | None = None, json_mode: str = "auto", **kwargs: Any) -> LiteLLM:
    """A :class:`LiteLLM` for an OpenAI-compatible server (llama.cpp server, vLLM, Ollama).

    ``base_url`` is the API root including ``/v1``, e.g. ``LlamaServer().base_url``.
    ``json_mode="auto"`` negotiates how a JSON schema is sent (llama-cpp-python's server takes
    only ``"json_object"``; see :class:`LiteLLM`). The key is ``api_key``, else the variable
    ``api_key_env`` names, else ``$OPENAI_API_KEY`` when set, else the placeholder ``"sk-local"``
    (litellm's OpenAI route needs some key; a server without authentication ignores it).
    ``kwargs`` go to :class:`LiteLLM` (``timeout``, ``extra`` ...).
    """
    if split_userinfo(base_url)[1] and (api_key is not None or api_key_env is not None):
        raise DefinitionError("openai_compatible got credentials twice: in the URL (user:password@) "
                              "and as api_key/api_key_env.",
                              fix="pass the key once: api_key= (sent as a bearer token), or in the URL.")
    key = resolve_api_key(api_key, api_key_env, owner="openai_compatible") or LOCAL_PLACEHOLDER_KEY
    return LiteLLM(f"openai/{model}", api_base=base_url, api_key=key, json_mode=json_mode, **kwargs)


def _shows_secret(exc: BaseException, secrets: Any) -> bool:
    """Whether the text of ``exc`` or of an exception it chains holds one of ``secrets``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{current!s} {current!r}"
        if secrets.scrub(text) != text:
            return True
        current = current.__cause__ or current.__context__
    return False
