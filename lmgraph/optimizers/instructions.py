"""Instruction search (APE style): propose instructions from input/output pairs, race them.

For each node with tunable instructions (topological order, or a ``nodes=`` subset):

1. *forward generation* -- a proposer model (``proposer_lm``, default the task model) is shown
   input/output pairs of the node (from labelled rows when the node's fields map onto row keys,
   else from successful bootstrapped runs) and asked, under distinct rollouts at temperature
   ~0.7, for the instruction that produced them (Zhou et al. 2022). Proposals are cleaned,
   deduplicated, and the current instruction always competes.
2. optional *resampling* -- after the first minibatch round, the proposer writes a paraphrase
   of each of the ``resample_top`` best instructions; the variants join the race.
3. *successive halving* -- every arm is scored on a minibatch of validation rows, the better
   half survives, and survivors are scored on the next (twice as large) slice of rows, so an
   arm's score is always over the same rows as its rivals'. The current instruction's scores
   come free from the incumbent's validation run. The survivor(s) are confirmed on the full
   validation set through ``session.consider`` (paired-bootstrap acceptance).

Every arm appears in the report with its minibatch scores and why it was dropped. The proposer
calls go through the compile's RunContext (budgeted, cached, traced) and are memoised in the
session checkpoint, so a resumed compile sees the same proposals.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BudgetExceeded, DefinitionError, LmgraphError, ProviderFailureError
from ..lm.faults import is_provider_failure
from ..lm.values import format_value
from ..modules.predict import Predict
from ..pipeline.builder import Pipeline
from ..pipeline.program import Program
from ..signatures import Signature
from .base import Optimizer
from .checkpoint import _hash
from .fewshot import _demo_sig, bootstrap_pool, labeled_demos
from .race import Arm, Race, confirm, halving_cost, record, settle, successive_halving  # also importable here
from .report import Report
from .session import BudgetStop, CompileSession, static_calls_per_example

Demo = dict[str, Any]

#: APE's forward-generation template, as the proposer's instructions.
PROPOSE_INSTRUCTIONS = (
    "I gave a friend an instruction and some inputs. The friend read the instruction and wrote an "
    "output for every one of the inputs. Here are the input-output pairs. Write the instruction "
    "the friend was given: one or two plain sentences addressed to the friend, nothing else.")
#: APE's resampling template.
PARAPHRASE_INSTRUCTIONS = "Generate a variation of the following instruction while keeping the semantic meaning."


# --------------------------------------------------------------------------- helpers (shared with joint.py)

def instruction_nodes(program: Program, nodes: Sequence[str] | None = None, *, param: str = "instructions"
                      ) -> list[str]:
    """Nodes (schedule order; nested ones by path) with the tunable ``param``; checks a ``nodes=`` subset."""
    if nodes is None:
        return [n.name for n in program.nodes if param in n.module.tunable]
    for name in nodes:
        if param not in program.module(name).tunable:  # program.module raises for unknown names
            raise DefinitionError(f"node {name!r} ({program.module(name).kind}) has no tunable {param}",
                                  node=name, fix="leave it out of nodes=.")
    tree = [p.rsplit(".", 1)[0] for p, prm in program.named_parameters() if prm.kind == param]  # "refine.generator"
    return [n for n in tree if n in set(nodes)]


class _AnyRow(dict[str, Any]):  # a row that has every key: which nodes *could* take labelled demos
    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


def mappable_nodes(program: Program, label_map: Mapping[str, str] | None = None) -> set[str]:
    """Nodes whose every demo field maps onto a training-row key (see ``labeled_demos``)."""
    return set(labeled_demos(program, [_AnyRow()], 1, label_map))


def check_proposer(ctx: Any, proposer_lm: str | None) -> None:
    """Fail before any model call when ``proposer_lm`` names no model of the run context."""
    lms = getattr(ctx, "lms", None) or {}
    if proposer_lm is not None and proposer_lm not in lms:
        raise DefinitionError(f"no proposer model named {proposer_lm!r} in the run context",
                              fix=f"pass RunContext(lms={{{proposer_lm!r}: model}}) or proposer_lm=None "
                                  "to let the task model propose.")


def format_pairs(sig: Signature, demos: Sequence[Mapping[str, Any]], *, max_value_chars: int = 400) -> str:
    """Input/output pairs as the proposer sees them."""
    def block(fields: Sequence[Any], d: Mapping[str, Any]) -> str:
        lines = []
        for f in fields:
            if f.name in d:
                v = format_value(d[f.name])
                if len(v) > max_value_chars:
                    v = v[:max_value_chars] + " ..."
                lines.append(f"{f.label}: {v}")
        return "\n".join(lines)

    parts = [f"Input:\n{block(sig.inputs, d)}\nOutput:\n{block(sig.outputs, d)}" for d in demos]
    return "\n\n".join(parts)


_LABEL = re.compile(r"^\s*(?:the\s+)?(?:instruction|variation|new instruction)s?\s*(?:was|is)?\s*:\s*", re.I)
_TEMPLATES = (PROPOSE_INSTRUCTIONS.lower(), PARAPHRASE_INSTRUCTIONS.lower())


def clean_instruction(text: str | None, *, max_chars: int = 1000) -> str | None:
    """Strip labels, an echo of the proposer's own prompt and quotes; None for empty, too short
    or too long proposals."""
    if not text:
        return None
    t = _LABEL.sub("", text.strip()).strip()
    head, sep, rest = t.partition(":")
    if sep and len(head.strip()) >= 12 and any(head.strip().lower() in tpl for tpl in _TEMPLATES):
        t = _LABEL.sub("", rest.strip()).strip()  # "Write the instruction the friend was given: ..."
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
        t = t[1:-1].strip()
    if len(t) < 3 or len(t) > max_chars or any(_norm(t) in tpl for tpl in _TEMPLATES):
        return None  # empty, too long, or a piece of the proposer's own prompt
    return t


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def _proposer_program(shorthand: str, instructions: str, lm: str | None, temperature: float) -> Program:
    p = Pipeline("instruction_proposer")
    src = p.input(shorthand.split("->")[0].strip())
    node = p.add(Predict(shorthand, instructions=instructions, lm=lm, temperature=temperature,
                         max_tokens=200, repair=False), "propose", inputs={src.field: src})
    p.output(text=node[shorthand.split("->")[1].strip()])
    return p.build()


async def _memo_generate(session: CompileSession, program: Program,
                         jobs: Sequence[tuple[Mapping[str, Any], int]]) -> list[str | None]:
    """Run ``program`` once per (inputs, rollout) job, concurrently, through the session's
    context; memoised in the session checkpoint.

    A replayed result charges its recorded spend, like ``session.run``. Failed generations
    (empty/unparseable) give None. BudgetStop when the budget runs out.
    """
    base_rollout = session.ctx.rollout

    async def one(inputs: Mapping[str, Any], r: int) -> str | None:
        key = _hash({"kind": "propose", "program": program.content_hash(), "inputs": dict(inputs), "rollout": r})
        hit = session.recall(key)  # charged its recorded spend
        text: str | None
        if hit is not None:
            text = hit["text"]
            return text
        trace = None
        text = None
        try:
            pred = await program.run(session.ctx.replace(rollout=base_rollout + r), **inputs)
            trace, text = pred.trace, str(pred["text"])
        except BudgetExceeded:
            raise
        except LmgraphError as e:  # an empty or failed proposal: recorded as None
            if is_provider_failure(e):  # no answer is not an empty proposal: never memoised
                raise ProviderFailureError(f"the proposer got no answer from the provider after retries: {e}",
                                           failed=1, total=1, last_error=str(e)) from e
            trace = getattr(e, "trace", None)
        usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "dollars": 0.0}
        if trace is not None:
            for k in ("calls", "prompt_tokens", "completion_tokens"):
                usage[k] = int(trace.usage.get(k, 0))
            usage["dollars"] = float(trace.cost or 0.0)
        session.remember(key, {"text": text, "usage": usage})
        return text

    if session.meter.exhausted:
        raise BudgetStop("budget spent before proposing instructions")
    results = await asyncio.gather(*(one(i, r) for i, r in jobs), return_exceptions=True)
    for res in results:
        if isinstance(res, BudgetExceeded):
            raise BudgetStop(f"budget spent while proposing instructions ({res})")
        if isinstance(res, BaseException):
            raise res
    return list(results)  # type: ignore[arg-type]


async def propose_instructions(session: CompileSession, sig: Signature, demos: Sequence[Mapping[str, Any]],
                               n: int, *, proposer_lm: str | None = None, temperature: float = 0.7,
                               max_chars: int = 1000, exclude: Sequence[str] = ()) -> list[str]:
    """APE forward generation: ``n`` proposals from ``demos`` of a node with signature ``sig``;
    cleaned, deduplicated, without those in ``exclude``. Budgeted, cached, traced via the session.

    Proposal ``i`` uses rollout ``i`` and sees the pairs rotated by ``i``, so proposals differ even
    where a backend's sampler ignores the rollout (or decodes greedily).
    """
    if n <= 0 or not demos:
        return []
    prog = _proposer_program("examples -> instruction", PROPOSE_INSTRUCTIONS, proposer_lm, temperature)
    k = len(demos)
    jobs = [({"examples": format_pairs(sig, [*demos[i % k:], *demos[:i % k]])}, i) for i in range(n)]
    texts = await _memo_generate(session, prog, jobs)
    return _unique(texts, exclude, max_chars)


async def paraphrase_instructions(session: CompileSession, instructions: Sequence[str], *,
                                  proposer_lm: str | None = None, temperature: float = 0.7,
                                  max_chars: int = 1000, exclude: Sequence[str] = ()) -> list[tuple[str, str]]:
    """APE resampling: one variant per instruction -> [(original, variant)], deduplicated."""
    if not instructions:
        return []
    prog = _proposer_program("instruction -> variation", PARAPHRASE_INSTRUCTIONS, proposer_lm, temperature)
    out: list[tuple[str, str]] = []
    seen = {_norm(e) for e in exclude}
    texts = await _memo_generate(session, prog, [({"instruction": ins}, 0) for ins in instructions])
    for ins, text in zip(instructions, texts):
        t = clean_instruction(text, max_chars=max_chars)
        if t is not None and _norm(t) not in seen:
            seen.add(_norm(t))
            out.append((ins, t))
    return out


def _unique(texts: Sequence[str | None], exclude: Sequence[str], max_chars: int) -> list[str]:
    seen = {_norm(e) for e in exclude}
    out = []
    for text in texts:
        t = clean_instruction(text, max_chars=max_chars)
        if t is not None and _norm(t) not in seen:
            seen.add(_norm(t))
            out.append(t)
    return out


def short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."



async def node_examples(session: CompileSession, node: str, k: int, label_map: Mapping[str, str],
                        pool_cache: dict[str, Any], threshold: float) -> tuple[list[Demo], str]:
    """Up to ``k`` input/output pairs of ``node``: labelled rows if they map, else bootstrapped runs."""
    program = session.incumbent
    if "labeled" not in pool_cache:
        rows = list(session.trainset)
        session.rng.shuffle(rows)
        pool_cache["labeled"] = labeled_demos(program, rows, k, label_map, nested=True)
    lab = pool_cache["labeled"].get(node)
    if lab:
        return list(lab[:k]), "labelled training rows"
    if "bootstrap" not in pool_cache:
        pool_cache["bootstrap"] = await bootstrap_pool(session, program, program, k, threshold,
                                                       chunk=max(8, 2 * k), nested=True)
    boot = pool_cache["bootstrap"].get(node) or []
    return list(boot[:k]), "successful bootstrapped runs"


# --------------------------------------------------------------------------- InstructionSearch

class InstructionSearch(Optimizer):
    """APE-style instruction search per node, raced by successive halving on minibatches."""

    name = "instruction_search"

    def __init__(self, num_candidates: int = 6, *, proposer_lm: str | None = None,
                 nodes: Sequence[str] | None = None, num_examples: int = 5, resample_top: int = 0,
                 minibatch_size: int = 8, confirm_top: int = 1, temperature: float = 0.7,
                 max_instruction_chars: int = 1000, threshold: float = 1.0,
                 label_map: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_candidates < 1 or minibatch_size < 1 or confirm_top < 1 or num_examples < 1 or resample_top < 0:
            raise DefinitionError("num_candidates, num_examples, minibatch_size and confirm_top must be >= 1 "
                                  "and resample_top >= 0")
        self.num_candidates = num_candidates
        self.proposer_lm = proposer_lm
        self.nodes = list(nodes) if nodes is not None else None
        self.num_examples = num_examples
        self.resample_top = resample_top
        self.minibatch_size = minibatch_size
        self.confirm_top = confirm_top
        self.temperature = float(temperature)
        self.max_instruction_chars = max_instruction_chars
        self.threshold = threshold
        self.label_map = dict(label_map or {})

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_candidates": self.num_candidates, "proposer_lm": self.proposer_lm,
                "nodes": self.nodes, "num_examples": self.num_examples, "resample_top": self.resample_top,
                "minibatch_size": self.minibatch_size, "confirm_top": self.confirm_top,
                "temperature": self.temperature, "max_instruction_chars": self.max_instruction_chars,
                "threshold": self.threshold, "label_map": self.label_map}

    def estimate(self, program: Program, n_train: int, n_val: int) -> dict[str, int]:
        nodes = instruction_nodes(program, self.nodes)
        per = static_calls_per_example(program)
        out: dict[str, int] = {}
        if any(n not in mappable_nodes(program, self.label_map) for n in nodes):
            out["bootstrap"] = n_train * per
        out["proposals"] = len(nodes) * (self.num_candidates + self.resample_top)
        mini, full = halving_cost(self.num_candidates + 1, self.resample_top, n_val, self.minibatch_size,
                                  self.confirm_top)
        out["minibatches"] = len(nodes) * mini * per
        out["confirmation"] = len(nodes) * full * per
        return out

    async def aoptimize(self, program: Program, *args: Any, **kwargs: Any) -> tuple[Program, Report]:
        if isinstance(program, Program):  # fail before any model call
            instruction_nodes(program, self.nodes)
            check_proposer(kwargs.get("ctx"), self.proposer_lm)
        return await super().aoptimize(program, *args, **kwargs)

    async def search(self, session: CompileSession) -> None:
        pool_cache: dict[str, Any] = {}
        nodes = instruction_nodes(session.incumbent, self.nodes)
        if not nodes:
            session.report.notes.append("no node has tunable instructions: nothing to search")
            return
        for node in nodes:
            await self._search_node(session, node, pool_cache)

    # ---- one node
    async def _search_node(self, session: CompileSession, node: str, pool_cache: dict[str, Any]) -> None:
        base = session.incumbent
        module = base.module(node)
        current = module.instructions  # type: ignore[attr-defined]
        demos, source = await node_examples(session, node, self.num_examples, self.label_map, pool_cache,
                                            self.threshold)
        if not demos:
            session.report.notes.append(f"{node}: no input/output pairs (no labels map and no training run "
                                        "passed the metric): instructions not searched")
            return
        session.reporter.phase(f"{node}: proposing instructions")
        proposals = await propose_instructions(session, _demo_sig(base, node), demos, self.num_candidates,
                                               proposer_lm=self.proposer_lm, temperature=self.temperature,
                                               max_chars=self.max_instruction_chars, exclude=[current])
        session.report.notes.append(f"{node}: {len(proposals)} distinct instructions proposed from "
                                    f"{len(demos)} pairs ({source}); {self.num_candidates} asked for")
        if not proposals and not self.resample_top:
            return

        arms: list[Arm] = []

        def make(idx: int, text: str, origin: str) -> Arm:
            prog = base.with_module(node, module.replace(instructions=text))
            free = prog.content_hash() == base.content_hash()
            return Arm(idx, f"{node}: instruction arm {idx} ({origin}): {short(text)!r}", prog,
                       changes={} if free else {node: {"instructions": short(text, 120)}}, free=free,
                       payload=text)

        for origin, text in [("current", current)] + [(f"proposal {i + 1}", t) for i, t in enumerate(proposals)]:
            arms.append(make(len(arms), text, origin))

        async def resample(ranked: list[Arm]) -> list[Arm]:
            top = ranked[:self.resample_top]
            pairs = await paraphrase_instructions(session, [a.payload for a in top], proposer_lm=self.proposer_lm,
                                                  temperature=self.temperature,
                                                  max_chars=self.max_instruction_chars,
                                                  exclude=[a.payload for a in arms])
            src = {a.payload: a.idx for a in top}
            return [make(len(arms) + j, v, f"variant of #{src[o]}") for j, (o, v) in enumerate(pairs)]

        race = Race(session)
        perm = list(range(len(session.valset)))
        session.rng.shuffle(perm)
        if len(perm) <= self.minibatch_size:
            await self._no_race(session, node, arms, race, resample)
            return
        recorded, stopped = False, True
        try:
            finalists, _ = await successive_halving(race, arms, perm, self.minibatch_size, self.confirm_top,
                                                    what=f"{node}: ",
                                                    after_first=resample if self.resample_top else None)
            for a in arms:
                a.candidate = record(session, a.label, a.changes, a.scores, a.calls, a.tokens, a.reason,
                                     rows=a.rows, unparsed=a.unparsed)
            recorded = True
            await confirm(race, finalists, lambda a: f"{node}: instruction arm {a.idx} on the full valset")
            stopped = False
        finally:
            if not recorded:  # stopped by the budget mid-race: keep what was measured
                for a in arms:
                    if a.scores:
                        a.reason = a.reason or f"the budget ran out during the race: {race.describe(a)}"
                        a.candidate = record(session, a.label, a.changes, a.scores, a.calls, a.tokens, a.reason,
                                             rows=a.rows, unparsed=a.unparsed)
            settle(arms, stopped=stopped)

    async def _no_race(self, session: CompileSession, node: str, arms: list[Arm], race: Race, resample: Any
                       ) -> None:
        """The validation set is no bigger than a minibatch: every arm is scored on all of it."""
        session.report.notes.append(f"{node}: the validation set ({len(session.valset)}) is no bigger than a "
                                    f"minibatch ({self.minibatch_size}): every instruction is scored on all of it")

        async def run(batch: list[Arm]) -> None:
            for a in batch:
                session.reporter.phase(f"{node}: instruction arm {a.idx} on all {len(session.valset)} rows")
                if a.free:
                    a.scores = list(race.inc_scores)
                    continue
                a.candidate = await session.consider(a.program, a.label, a.changes, early_stop=False)
                a.scores = list(a.candidate.scores)

        await run(arms)
        if self.resample_top:
            new = await resample(sorted(arms, key=lambda a: (-a.mean, a.idx)))
            arms.extend(new)
            await run(new)


__all__ = [
    "PARAPHRASE_INSTRUCTIONS",
    "PROPOSE_INSTRUCTIONS",
    "InstructionSearch",
    "clean_instruction",
    "format_pairs",
    "paraphrase_instructions",
    "propose_instructions",
]
