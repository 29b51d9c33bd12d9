"""Structured traces: every node's inputs, prompts, completions, parsed outputs, usage, timing."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..lm.base import LMRequest, LMResponse
from ..lm.values import jsonable


@dataclass(slots=True)
class CallRecord:
    """One model call made by a node; ``format`` is the prompt format it was rendered in
    (``completion``, ``chat`` or ``json``; a module that renders its own requests: the request's
    shape, ``completion`` or ``chat``)."""

    request: LMRequest
    response: LMResponse | None = None
    error: str | None = None
    parse_error: str | None = None
    latency_s: float = 0.0
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        r = self.request
        data: dict[str, Any] = {
            "format": self.format,
            "prompt": r.prompt,
            "messages": [m.to_dict() for m in r.messages] if r.messages is not None else None,
            "params": {"temperature": r.temperature, "max_tokens": r.max_tokens, "stop": list(r.stop),
                       "seed": r.seed, "rollout": r.rollout, "json_schema": r.json_schema is not None},
            "completion": self.response.text if self.response else None,
            "usage": ({"prompt_tokens": self.response.usage.prompt_tokens,
                       "completion_tokens": self.response.usage.completion_tokens}
                      if self.response else None),
            "cost": self.response.cost if self.response else None,
            "cached": bool(self.response and self.response.cached),
            "latency_s": round(self.latency_s, 6),
            "error": self.error,
            "parse_error": self.parse_error,
        }
        if r.choices is not None:  # a scoring call: what was scored, and each choice's log-prob
            data["params"]["choices"] = list(r.choices)
            data["scores"] = self.response.logprobs if self.response else None
        return data


@dataclass(slots=True)
class NodeTrace:
    node: str
    kind: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    calls: list[CallRecord] = field(default_factory=list)
    children: list[Trace] = field(default_factory=list)
    error: str | None = None
    started: float = 0.0
    latency_s: float = 0.0
    format: str | None = None  # resolved prompt format of the last model call (``formats``: every call's)
    meta: dict[str, Any] = field(default_factory=dict)  # kind-specific details (retrieval scores, tool steps...)

    @property
    def formats(self) -> list[str | None]:
        """The prompt format of each of this node's model calls, in call order (a repair call
        keeps its call's format; sub-runs of Map and friends are in ``children``)."""
        return [c.format for c in self.calls]

    @property
    def usage(self) -> dict[str, int]:
        u = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for c in self.calls:
            if c.response is not None:
                u["calls"] += 1
                u["cache_hits"] += c.response.cached
                u["prompt_tokens"] += c.response.usage.prompt_tokens
                u["completion_tokens"] += c.response.usage.completion_tokens
        for ch in self.children:
            for k, v in ch.usage.items():
                u[k] = u.get(k, 0) + v
        return u

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "kind": self.kind, "inputs": jsonable(self.inputs),
                "outputs": jsonable(self.outputs), "format": self.format, "formats": self.formats,
                "calls": [c.to_dict() for c in self.calls],
                "children": [c.to_dict() for c in self.children], "error": self.error,
                "latency_s": round(self.latency_s, 6), "usage": self.usage,
                **({"meta": jsonable(self.meta)} if self.meta else {})}


@dataclass(slots=True)
class Trace:
    """The record of one pipeline run."""

    program: str
    inputs: dict[str, Any]
    nodes: list[NodeTrace] = field(default_factory=list)
    outputs: dict[str, Any] | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    latency_s: float = 0.0

    def node(self, name: str) -> NodeTrace:
        for n in self.nodes:
            if n.node == name:
                return n
        raise KeyError(f"no node {name!r} in this trace; nodes: {', '.join(n.node for n in self.nodes)}")

    @property
    def usage(self) -> dict[str, int]:
        total = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for n in self.nodes:
            for k, v in n.usage.items():
                total[k] += v
        return total

    @property
    def cost(self) -> float | None:
        costs = [c.response.cost for n in self.nodes for c in n.calls
                 if c.response is not None and c.response.cost is not None]
        return sum(costs) if costs else None

    def _repr_html_(self) -> str:  # a notebook's view: one row per node, escaped
        from ..report_html import trace_html

        return trace_html(self)

    def to_dict(self) -> dict[str, Any]:
        return {"program": self.program, "inputs": jsonable(self.inputs), "outputs": jsonable(self.outputs),
                "error": self.error, "started": self.started, "latency_s": round(self.latency_s, 6),
                "usage": self.usage, "nodes": [n.to_dict() for n in self.nodes]}
