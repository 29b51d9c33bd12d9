"""Credentials of HTTP backends: where an API key comes from, and keeping it out of every text.

A key may reach a backend as an argument (``api_key=``), through an environment variable
(``api_key_env=``, default ``OPENAI_API_KEY``), or inside the URL (``http://user:KEY@host/v1``,
``...?api_key=KEY``). Whatever the route, :func:`redact_url` and :class:`Secrets` keep it out
of ``repr(lm)``, ``identity()`` (so out of cache keys, traces, checkpoints and artifacts) and
every :class:`~lmgraph.errors.LMError` message.
"""

from __future__ import annotations

import base64
import os
import re
import urllib.parse
from collections.abc import Iterable
from typing import overload

from ..errors import DefinitionError

__all__ = ["DEFAULT_API_KEY_ENV", "LOCAL_PLACEHOLDER_KEY", "REDACTED", "Secrets", "extra_secrets", "redact_url",
           "resolve_api_key", "split_userinfo", "url_secrets"]

#: The environment variable read for a key when none is passed (what OpenAI's own client reads).
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
#: What litellm's OpenAI route sends when there is no key (it refuses to send none); a local
#: server without authentication ignores it.
LOCAL_PLACEHOLDER_KEY = "sk-local"
REDACTED = "***"

# Query parameter names that carry credentials (compared case-insensitively, by word).
_SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pwd", "auth",
                           "authorization", "sig", "signature", "credential", "credentials",
                           "access_token", "session"})


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    words = {w for w in re.split(r"[^a-z0-9]+", lowered) if w}
    return bool(words & _SECRET_WORDS) or lowered.replace("-", "_") in _SECRET_WORDS \
        or "apikey" in lowered.replace("-", "").replace("_", "")


def url_secrets(url: str | None) -> list[str]:
    """The credential values inside ``url``: the user-info (user and password) and the values of
    key-like query parameters."""
    if not url:
        return []
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, _, password = userinfo.partition(":")
        found += [s for s in (userinfo, password, user, urllib.parse.unquote(password),
                              urllib.parse.unquote(user)) if s]
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=False):
        if _is_secret_param(name):
            found += [value, urllib.parse.quote(value, safe="")]
    return found


def extra_secrets(value: object) -> list[str]:
    """The values of credential-like entries (``api_key``, ``Authorization``, ``token`` ...) at any
    depth of a backend's extra settings (litellm's ``extra_headers``, body fields), and the
    token of an ``Authorization`` value (``Bearer <token>``), so an error echoing them is scrubbed."""
    from ..cache.keys import is_sensitive

    found: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if is_sensitive(k) and isinstance(x, str):
                    found.append(x)
                    scheme, _, token = x.partition(" ")
                    if token and scheme.isalpha():
                        found.append(token.strip())
                elif isinstance(x, (dict, list, tuple)):
                    stack.append(x)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return found


@overload
def redact_url(url: str) -> str: ...
@overload
def redact_url(url: None) -> None: ...
def redact_url(url: str | None) -> str | None:
    """``url`` without credentials: the user-info becomes ``***`` and so do the values of
    key-like query parameters (``api_key``, ``key``, ``token``, ``sig`` ...)."""
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{urllib.parse.quote(k, safe='')}=" +
                         (REDACTED if _is_secret_param(k) else urllib.parse.quote(v, safe=""))
                         for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def split_userinfo(url: str | None) -> tuple[str | None, str | None]:
    """``url`` without its user-info, and that user-info as an ``Authorization: Basic`` value
    (None when the URL has none). HTTP clients refuse user-info in the URL next to a header."""
    if not url:
        return url, None
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
                             .encode()).decode("ascii")
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), \
        f"Basic {token}"


def resolve_api_key(api_key: str | None, api_key_env: str | None, *, owner: str) -> str | None:
    """The key to send: ``api_key``; else the variable ``api_key_env`` names (an error when it
    is named and unset); else ``$OPENAI_API_KEY`` when set; else None."""
    if api_key is not None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise DefinitionError(f"{owner}: api_key must be a non-empty string.",
                                  fix="pass the key as a string, or api_key_env='NAME_OF_THE_VARIABLE'.")
        return api_key
    if api_key_env is not None:
        if not isinstance(api_key_env, str) or not api_key_env:
            raise DefinitionError(f"{owner}: api_key_env must name an environment variable, "
                                  f"got {api_key_env!r}.", fix="e.g. api_key_env='OPENAI_API_KEY'.")
        value = os.environ.get(api_key_env)
        if not value:
            raise DefinitionError(f"{owner}: the environment variable {api_key_env} (api_key_env) is "
                                  "not set.", fix=f"export {api_key_env}=... or pass api_key=.")
        return value
    return os.environ.get(DEFAULT_API_KEY_ENV) or None


class Secrets:
    """Known secret strings; :meth:`scrub` replaces each in a text with ``***``."""

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        # longest first, so a secret containing another is replaced whole; very short strings
        # (a user name such as "a") would mangle ordinary text and are left alone
        self._values = sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)

    def add(self, *values: str | None) -> None:
        self._values = sorted({*self._values, *(v for v in values if v and len(v) >= 4)},
                              key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def __bool__(self) -> bool:
        return bool(self._values)

    def __repr__(self) -> str:  # never the values
        return f"Secrets({len(self._values)} values)"
