"""A persistent cache of model calls: :mod:`diskcache` on disk, an LRU in memory in front.

Values are stored as JSON text, never pickles, so a cache directory can be inspected,
shared and loaded without executing anything. An entry that is not a well-formed model response
(corrupt, hand-edited, written by something else) is a miss: it is logged, deleted and replaced by
the next call's answer -- never raised into a run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import diskcache

from .memory import MemoryCache

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "LMGRAPH_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$LMGRAPH_CACHE_DIR`` if set, else ``~/.cache/lmgraph/calls``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lmgraph" / "calls"


_OPTIONAL_STR = ("model", "finish_reason")


def entry_problem(value: object) -> str | None:
    """Why ``value`` is not a cached model response (what ``LMResponse.to_dict`` writes), or None:
    ``text`` a string; ``usage`` null or an object of non-negative integer token counts; ``model``
    and ``finish_reason`` strings or null; ``logprobs`` null or a list of objects; ``cost`` null or
    a finite non-negative number."""
    if not isinstance(value, dict):
        return f"a JSON {type(value).__name__}, not an object"
    if not isinstance(value.get("text"), str):
        return "no text string"
    usage = value.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            return "usage is not an object"
        for k in ("prompt_tokens", "completion_tokens"):
            n = usage.get(k, 0)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                return f"usage.{k} is not a non-negative integer"
    for k in _OPTIONAL_STR:
        if value.get(k) is not None and not isinstance(value.get(k), str):
            return f"{k} is not a string"
    logprobs = value.get("logprobs")
    if logprobs is not None and not (isinstance(logprobs, list) and all(isinstance(x, dict) for x in logprobs)):
        return "logprobs is not a list of objects"
    cost = value.get("cost")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float))
                             or not math.isfinite(cost) or cost < 0):
        return "cost is not a non-negative number"
    return None


class DiskCache:
    """Persistent key -> dict cache of model responses.

    The on-disk store is opened lazily on the first :meth:`get`/:meth:`set`; constructing a
    ``DiskCache`` touches nothing on disk. ``size_limit`` (bytes) is enforced by diskcache's
    LRU eviction. ``check(value) -> problem or None`` decides which stored entries are usable
    (default :func:`entry_problem`: well-formed model responses); an unusable one is a miss and
    is deleted. ``check=None`` keeps every JSON object (a generic key -> dict store).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *,
                 memory_size: int = 4096, size_limit: int = 2**30,
                 check: Callable[[Any], str | None] | None = entry_problem) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.check = check
        self.size_limit = size_limit
        self.memory = MemoryCache(memory_size)
        self._disk: diskcache.Cache | None = None
        self._open_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._counts = {"memory_hits": 0, "disk_hits": 0, "misses": 0}

    def _store(self) -> diskcache.Cache:
        disk = self._disk
        if disk is None:
            with self._open_lock:
                disk = self._disk
                if disk is None:
                    import diskcache

                    disk = diskcache.Cache(str(self.directory), size_limit=self.size_limit)
                    self._disk = disk
        return disk

    def open(self) -> DiskCache:
        """Open the on-disk store now rather than on first use (opening costs ~15-25 ms)."""
        self._store()
        return self

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self._counts[what] += 1

    def get(self, key: str) -> dict[str, Any] | None:
        """The value stored under ``key``, or None. Disk hits are copied to the memory front."""
        value = self.memory.get(key)
        if value is not None:
            self._count("memory_hits")
            return value
        store = self._store()
        raw = store.get(key, default=None, retry=True)
        value = self._decode(key, raw, self.check)
        if value is None:
            if raw is not None:  # malformed: gone now, and the next answer is stored in its place
                store.delete(key, retry=True)
            self._count("misses")
            return None
        self._count("disk_hits")
        self.memory.set_text(key, raw)  # _decode checked it is JSON text
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` (which must be JSON-serialisable) on disk and in memory."""
        text = json.dumps(value, ensure_ascii=False)
        self._store().set(key, text, retry=True)
        self.memory.set_text(key, text)

    @staticmethod
    def _decode(key: str, raw: object, check: Callable[[Any], str | None] | None = entry_problem
                ) -> dict[str, Any] | None:
        """The entry as a response dict, or None (a miss) when it is missing or malformed."""
        if raw is None:
            return None
        if not isinstance(raw, str):
            logger.warning("ignoring non-JSON cache entry %s (%s)", key, type(raw).__name__)
            return None
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            logger.warning("ignoring corrupt cache entry %s", key)
            return None
        if not isinstance(value, dict):
            logger.warning("ignoring cache entry %s: not a JSON object", key)
            return None
        problem = check(value) if check is not None else None
        if problem is not None:
            logger.warning("ignoring malformed cache entry %s: %s", key, problem)
            return None
        return value

    def stats(self) -> dict[str, int]:
        """Lookup counts since construction: ``hits``, ``memory_hits``, ``disk_hits``, ``misses``."""
        with self._stats_lock:
            c = self._counts
            return {"hits": c["memory_hits"] + c["disk_hits"], "memory_hits": c["memory_hits"],
                    "disk_hits": c["disk_hits"], "misses": c["misses"]}

    def clear(self) -> None:
        """Remove every entry, on disk and in memory."""
        self.memory.clear()
        self._store().clear(retry=True)

    def close(self) -> None:
        """Close the on-disk store (it is reopened on next use) and drop the memory front."""
        with self._open_lock:
            disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()
        self.memory.clear()

    def __enter__(self) -> DiskCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskCache({str(self.directory)!r})"
