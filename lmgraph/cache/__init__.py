"""Call caches: content-addressed keys, an in-memory LRU and a persistent disk cache."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .disk import DiskCache, default_cache_dir
from .keys import cache_key, strip_credentials
from .memory import MemoryCache


@runtime_checkable
class Cache(Protocol):
    """What :class:`~lmgraph.lm.wrappers.CachedLM` needs from a cache."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, value: dict[str, Any]) -> None: ...


__all__ = ["Cache", "DiskCache", "MemoryCache", "cache_key", "default_cache_dir", "strip_credentials"]
