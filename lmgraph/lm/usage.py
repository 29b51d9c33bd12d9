"""Per-node accounting of model use (:class:`UsageMeter`); re-exported by :mod:`lmgraph.lm.wrappers`,
whose :class:`~lmgraph.lm.wrappers.MeteredLM` records into it."""

from __future__ import annotations

import threading

from .base import LMRequest, LMResponse

__all__ = ["UNNAMED_NODE", "UsageMeter"]

UNNAMED_NODE = "<unnamed>"


def _zero_usage() -> dict[str, float | int]:
    return {"requests": 0, "calls": 0, "cache_hits": 0, "errors": 0,
            "prompt_tokens": 0, "completion_tokens": 0, "dollars": 0.0}


class UsageMeter:
    """Thread-safe per-node accounting of model use (node from ``request.node``).

    ``requests`` counts every response, ``calls`` those that reached the backend and
    ``cache_hits`` those that did not; tokens and dollars are summed over real calls only.
    ``errors`` counts requests that raised.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, dict[str, float | int]] = {}

    def _entry(self, node: str | None) -> dict[str, float | int]:
        name = node or UNNAMED_NODE
        entry = self._nodes.get(name)
        if entry is None:
            entry = self._nodes[name] = _zero_usage()
        return entry

    def record(self, request: LMRequest, response: LMResponse) -> None:
        with self._lock:
            entry = self._entry(request.node)
            entry["requests"] += 1
            if response.cached:
                entry["cache_hits"] += 1
                return
            entry["calls"] += 1
            entry["prompt_tokens"] += response.usage.prompt_tokens
            entry["completion_tokens"] += response.usage.completion_tokens
            if response.cost is not None:
                entry["dollars"] += response.cost

    def record_error(self, request: LMRequest) -> None:
        with self._lock:
            self._entry(request.node)["errors"] += 1

    def by_node(self) -> dict[str, dict[str, float | int]]:
        """A copy of the counters per node name."""
        with self._lock:
            return {name: dict(entry) for name, entry in self._nodes.items()}

    def total(self) -> dict[str, float | int]:
        """The counters summed over all nodes."""
        out = _zero_usage()
        for entry in self.by_node().values():
            for k, v in entry.items():
                out[k] += v
        return out

    def reset(self) -> None:
        with self._lock:
            self._nodes.clear()
