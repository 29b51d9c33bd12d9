"""Cache keys for model calls.

A key is the SHA-256 of the canonical JSON of the model identity plus everything in the
request that determines the completion. Accounting-only fields (``node``, ``use_cache``)
are not part of it, and credential-looking entries of the identity are dropped first so
keys (and anything derived from them) never depend on, or leak, secrets.
"""

from __future__ import annotations

import hashlib
import math
import re
from json.encoder import encode_basestring as _json_str  # what json.dumps(ensure_ascii=False) uses
from typing import Any

from .._canonical import canonical_json
from ..lm.base import LMRequest

KEY_VERSION = 1

_SENSITIVE_MARKERS = ("api_key", "apikey", "secret", "password", "authorization")


def is_sensitive(name: object) -> bool:
    """Credential-like key names; 'token' counts only as a whole word (not ``max_tokens``)."""
    lowered = str(name).lower()
    return any(marker in lowered for marker in _SENSITIVE_MARKERS) or \
        "token" in re.split(r"[^a-z0-9]+", lowered)


def strip_credentials(value: Any) -> Any:
    """Return a copy of ``value`` without dict entries whose key names look like credentials.

    Recurses through dicts, lists and tuples; other values are returned unchanged.
    """
    if isinstance(value, dict):
        return {k: strip_credentials(v) for k, v in value.items() if not is_sensitive(k)}
    if isinstance(value, (list, tuple)):
        return [strip_credentials(v) for v in value]
    return value


def cache_key(identity: dict[str, Any], request: LMRequest) -> str:
    """SHA-256 hex digest identifying the completion of ``request`` by the model ``identity``."""
    payload = {"v": KEY_VERSION, "lm": strip_credentials(identity), "request": request.canonical()}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class KeyMaker:
    """``cache_key`` for one model, with the identity's canonical JSON computed once per identity.

    Produces exactly ``cache_key(identity, request)`` (the payload's keys sort as ``lm``,
    ``request``, ``v``, so the text can be assembled around the memoised identity part).
    """

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: tuple[dict[str, Any], str] | None = None  # (identity, its key prefix): swapped atomically

    def __call__(self, identity: dict[str, Any], request: LMRequest) -> str:
        memo = self._memo
        if memo is None or memo[0] != identity:
            memo = (identity, '{"lm":' + canonical_json(strip_credentials(identity)) + ',"request":')
            self._memo = memo
        text = memo[1] + request_json(request) + ',"v":' + str(KEY_VERSION) + "}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


_INT, _FLOAT = int, float


def request_json(request: LMRequest) -> str:
    """``canonical_json(request.canonical())``, assembled field by field (the cache-key hot path).

    Byte-identical to the generic path (tested) for the usual field types (str texts, int
    counts, finite float sampling values, bool logprobs); anything else takes the generic path.
    """
    r = request
    t, top_p, mt, seed, rollout = r.temperature, r.top_p, r.max_tokens, r.seed, r.rollout
    if not (type(t) is _FLOAT and type(top_p) is _FLOAT and type(mt) is _INT and type(seed) is _INT
            and type(rollout) is _INT and math.isfinite(t) and math.isfinite(top_p)
            and type(r.logprobs) is bool):
        return canonical_json(r.canonical())
    s = _json_str
    try:
        if r.messages is not None:
            messages = "[" + ",".join(['{"content":' + s(m.content) + ',"role":' + s(m.role) + "}"
                                       for m in r.messages]) + "]"
            prompt = "null"
        elif r.prompt is None:  # neither text: let the generic encoder decide
            return canonical_json(r.canonical())
        else:
            messages, prompt = "null", s(r.prompt)
        stop = "[" + ",".join([s(x) for x in r.stop]) + "]"
        head = "" if r.choices is None else '"choices":[' + ",".join([s(x) for x in r.choices]) + "],"
    except TypeError:  # a non-str text: let the generic encoder decide
        return canonical_json(r.canonical())
    schema = "null" if r.json_schema is None else canonical_json(r.json_schema)
    return (f'{{{head}"json_schema":{schema},"logprobs":{"true" if r.logprobs else "false"},'
            f'"max_tokens":{_INT.__repr__(mt)},"messages":{messages},"prompt":{prompt},'
            f'"rollout":{_INT.__repr__(rollout)},"seed":{_INT.__repr__(seed)},"stop":{stop},'
            f'"temperature":{_FLOAT.__repr__(t)},"top_p":{_FLOAT.__repr__(top_p)}}}')
