"""LiteLLM responses take litellm's own price when it has one (no second pricing per call).

No litellm import and no network: fake response objects and a fake ``litellm`` namespace.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lmgraph.lm.base import LMRequest, Message
from lmgraph.lm.litellm import LiteLLM


class Raw(dict):
    """A chat completion as litellm returns it: dict-like, with ``_hidden_params``."""

    def __init__(self, hidden: dict[str, Any] | None) -> None:
        super().__init__(model="gpt-4o-mini", usage={"prompt_tokens": 3, "completion_tokens": 1},
                         choices=[{"message": {"content": "answer: ok"}, "finish_reason": "stop"}])
        if hidden is not None:
            self._hidden_params = hidden


def fake_litellm(price: float | Exception) -> Any:
    calls: list[Any] = []

    def completion_cost(completion_response: Any) -> float:
        calls.append(completion_response)
        if isinstance(price, Exception):
            raise price
        return price

    return SimpleNamespace(completion_cost=completion_cost, calls=calls)


REQUEST = LMRequest(messages=(Message(role="user", content="hi"),))


@pytest.mark.parametrize("hidden_cost, expected", [(2.5e-6, 2.5e-6), (None, None)])
def test_uses_the_cost_litellm_already_computed(hidden_cost, expected):
    lm = LiteLLM("openai/gpt-4o-mini")
    fake = fake_litellm(RuntimeError("must not be priced twice"))
    resp = lm._to_response(Raw({"response_cost": hidden_cost}), REQUEST, 0.1, fake)
    assert resp.cost == expected
    assert fake.calls == []
    assert resp.text == "answer: ok" and resp.usage.prompt_tokens == 3


def test_prices_the_response_when_litellm_kept_no_cost():
    lm = LiteLLM("openai/gpt-4o-mini")
    fake = fake_litellm(1e-5)
    assert lm._to_response(Raw(None), REQUEST, 0.1, fake).cost == 1e-5
    assert lm._to_response(Raw({"model_id": None}), REQUEST, 0.1, fake).cost == 1e-5
    assert len(fake.calls) == 2


def test_unknown_price_is_none():
    lm = LiteLLM("openai/local")
    assert lm._to_response(Raw(None), REQUEST, 0.1, fake_litellm(ValueError("unmapped"))).cost is None
    assert lm._to_response(Raw({"response_cost": "n/a"}), REQUEST, 0.1, fake_litellm(0.0)).cost is None
