"""A bounded, thread-safe, in-process LRU cache of JSON-able dicts."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any


class MemoryCache:
    """Least-recently-used cache holding at most ``maxsize`` entries.

    Values are kept as JSON text and parsed on the way out, so callers can never mutate a cached
    entry by accident (and a hit costs one C-speed ``json.loads``, not a deep copy). Values
    must be JSON-serialisable. ``maxsize=0`` stores nothing.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        """The value stored under ``key`` (marking it most recently used), or None."""
        with self._lock:
            text = self._data.get(key)
            if text is None:
                return None
            self._data.move_to_end(key)
        value: dict[str, Any] = json.loads(text)
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` under ``key``, evicting the least recently used entries if full."""
        if self.maxsize == 0:
            return
        self.set_text(key, json.dumps(value, ensure_ascii=False))

    def set_text(self, key: str, text: str) -> None:
        """Store a value given as its JSON text (a JSON object), as :meth:`set` would."""
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = text
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._data.clear()
