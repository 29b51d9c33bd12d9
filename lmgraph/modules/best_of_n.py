"""BestOfN: sample a module n times (distinct rollouts, so caching still works) and pick one.

Selection: ``"vote"`` (majority over one output field, ties to the earliest sample),
``"judge"`` (the first sample a :class:`Critique` accepts; else the vote) or ``"reward"``
(the highest ``reward(inputs, outputs) -> float``; a named resource, ties to the earliest).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._canonical import canonical_json
from ..errors import BudgetExceeded, DefinitionError, RunError
from ..lm.values import jsonable
from ..signatures import FieldSpec, Signature
from .base import IORecord, Module, calls_of, child_from_dict, need_resource
from .critique import Critique, check_judge, default_judge

if TYPE_CHECKING:
    from ..pipeline.executor import NodeCall
    from ..pipeline.trace import NodeTrace

__all__ = ["BestOfN", "vote_key"]

SELECT = ("vote", "judge", "reward")


def vote_key(value: Any) -> str:
    """Normalised form used for voting: case, spacing and trailing punctuation do not count."""
    if isinstance(value, str):
        return re.sub(r"\s+", " ", value.strip().lower()).strip(" .!?;:\"'`")
    return canonical_json(jsonable(value), compact=False)  # spaced, as traces have always shown it


class BestOfN(Module):
    """Run ``module`` ``n`` times at ``temperature`` and select one result; adds ``votes: int``."""

    kind = "best_of_n"
    config_model = "BestOfNConfig"
    tunable = ("module", "n", "temperature")
    child_attrs = ("module", "judge")

    def __init__(self, module: Module, *, n: int = 3, select: str = "vote", judge: Critique | None = None,
                 reward: Callable[[Mapping[str, Any], Mapping[str, Any]], Any] | None = None,
                 reward_name: str | None = None, temperature: float = 0.7, vote_on: str | None = None) -> None:
        if select == "judge" and judge is None and isinstance(module, Module):
            judge = default_judge(module)
        self.module = module
        self.n = n
        self.select = select
        self.judge = judge
        self.reward = reward
        name = reward_name or getattr(reward, "__name__", None)
        self.reward_name = name if reward is not None else None
        self.temperature = float(temperature)
        self.vote_on = vote_on
        self._check()
        self._freeze()

    def _check(self) -> None:
        m = self.module
        if not isinstance(m, Module) or "temperature" not in m.tunable:
            raise DefinitionError(f"BestOfN needs a module that samples (a tunable temperature), "
                                  f"got {type(m).__name__}", fix="wrap a Predict, ChainOfThought, Plan or CallTool.")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise DefinitionError(f"n must be a positive integer, got {self.n!r}", fix="pass n=3 (or more).")
        if self.select not in SELECT:
            raise DefinitionError(f"unknown select {self.select!r}", fix=f"choose one of {', '.join(SELECT)}.")
        if self.select == "judge":
            check_judge(self.judge, m.signature.input_names + m.signature.output_names, "BestOfN")
        elif self.judge is not None:
            raise DefinitionError("judge= is only used with select='judge'", fix="pass select='judge' or drop judge=.")
        if self.select == "reward":
            if not callable(self.reward):
                raise DefinitionError("select='reward' needs reward=fn(inputs, outputs) -> float",
                                      fix="pass reward=my_reward (a named function).")
            if not self.reward_name or self.reward_name == "<lambda>":
                raise DefinitionError("the reward function needs a name (it is stored by name, not as code)",
                                      fix="use a def function or pass reward_name='my_reward'.")
        elif self.reward is not None:
            raise DefinitionError("reward= is only used with select='reward'", fix="pass select='reward' or drop it.")
        if m.signature.output("votes") is not None:
            raise DefinitionError("BestOfN adds a 'votes' output; the module already has one", field="votes",
                                  fix="rename the module's output.")
        if self.vote_field not in m.signature.output_names:
            raise DefinitionError(f"vote_on={self.vote_on!r} is not an output of the module", field=self.vote_on,
                                  fix=f"choose one of {', '.join(m.signature.output_names)}.")

    @property
    def vote_field(self) -> str:
        if self.vote_on:
            return self.vote_on
        outs = self.module.signature.output_names
        return next((o for o in outs if o != "reasoning"), outs[0])

    @property
    def signature(self) -> Signature:
        sig = self.module.signature
        return Signature(sig.inputs, (*sig.outputs, FieldSpec("votes", int, "samples that agree with the pick")),
                         sig.instructions)

    async def _sample(self, inputs: dict[str, Any], call: NodeCall) -> list[Any]:
        sampler = self.module.replace(temperature=self.temperature)
        base = call.ctx.rollout * self.n  # fresh, non-overlapping rollouts per outer rollout

        async def one(i: int) -> dict[str, Any]:
            sub = type(call)(call.node, sampler, call.ctx.replace(rollout=base + i), call.trace)
            return await sampler.forward(dict(inputs), sub)

        return list(await asyncio.gather(*(one(i) for i in range(self.n)), return_exceptions=True))

    async def forward(self, inputs: dict[str, Any], call: NodeCall) -> dict[str, Any]:
        results = await self._sample(inputs, call)
        for r in results:
            if isinstance(r, BudgetExceeded) or (isinstance(r, BaseException) and not isinstance(r, RunError)):
                raise r
        ok = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
        meta: dict[str, Any] = {"failed": [i for i, r in enumerate(results) if isinstance(r, BaseException)]}
        call.trace.meta["best_of_n"] = meta
        if not ok:
            raise next(r for r in results if isinstance(r, BaseException))
        keys = [vote_key(r[self.vote_field]) for _, r in ok]
        counts = Counter(keys)
        meta["candidates"] = keys
        pick = None
        if self.select == "judge":
            assert self.judge is not None
            verdicts = []
            for j, (_, r) in enumerate(ok):
                seen = {**inputs, **r}
                v = await self.judge.forward({n: seen[n] for n in self.judge.signature.input_names}, call)
                verdicts.append(bool(v["verdict"]))
                if v["verdict"]:
                    pick = j
                    break
            meta["verdicts"] = verdicts
        elif self.select == "reward":
            scores = []
            for _, r in ok:
                s = self.reward(dict(inputs), dict(r))  # type: ignore[misc]
                scores.append(float(await s if inspect.isawaitable(s) else s))
            meta["scores"] = scores
            pick = max(range(len(ok)), key=lambda j: (scores[j], -j))
        if pick is None:  # vote (also the judge's fallback)
            top = max(counts.values())
            pick = next(j for j, k in enumerate(keys) if counts[k] == top)
        meta["picked"] = ok[pick][0]
        return {**ok[pick][1], "votes": counts[keys[pick]]}

    def estimated_calls(self, list_lengths: Mapping[str, int] | None = None, *, repairs: bool = True) -> int:
        judge = self.judge if self.select == "judge" else None
        judged = self.n * calls_of(judge, repairs=repairs) if judge is not None else 0
        return self.n * calls_of(self.module, list_lengths, repairs=repairs) + judged

    def kind_config(self) -> dict[str, Any]:
        return {"module": self.module.to_dict(), "judge": self.judge.to_dict() if self.judge is not None else None,
                "reward": self.reward_name}

    @classmethod
    def kind_kwargs(cls, config: Any, *, resources: Mapping[str, Any],
                    types: Mapping[str, Any] | None) -> dict[str, Any]:
        name = config.reward
        return {"module": child_from_dict(config.module, "module", resources=resources, types=types),
                "judge": child_from_dict(config.judge, "judge", resources=resources, types=types)
                if config.judge else None,
                "reward": need_resource(resources, name, "reward function") if name else None, "reward_name": name}

    def resources(self) -> dict[str, Any]:
        out = dict(self.module.resources())
        if self.judge is not None:
            out.update(self.judge.resources())
        if self.reward is not None and self.reward_name:
            out[self.reward_name] = self.reward
        return out

    def submodules(self) -> dict[str, Module]:
        return {"module": self.module, **({"judge": self.judge} if self.judge is not None else {})}

    def child_io(self, trace: NodeTrace) -> dict[str, list[IORecord]]:
        """The sampled module's record: the node's inputs and the picked sample's outputs. (The
        samples share the node's trace, so a composite module's own children are not attributed.)"""
        if trace.outputs is None:
            return {}
        sig = self.module.signature
        if not all(n in trace.inputs for n in sig.input_names):
            return {}
        outs = {n: trace.outputs[n] for n in sig.output_names if n in trace.outputs}
        return {"module": [{"inputs": {n: trace.inputs[n] for n in sig.input_names}, "outputs": outs}]}

    def child_fields(self, child: str) -> dict[str, tuple[str, bool]]:
        """The sampled module's inputs and outputs are BestOfN's own, under the same names."""
        if child != "module":
            return {}
        sig = self.module.signature
        return {n: (n, False) for n in (*sig.input_names, *sig.output_names)}

    def describe(self) -> str:
        how = f"reward {self.reward_name}" if self.select == "reward" else self.select
        return f"BestOfN[{self.module.describe()} x{self.n}, {how}, t={self.temperature:g}]"
