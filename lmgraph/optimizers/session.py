"""CompileSession: the one path every optimizer evaluates through.

It owns the compile's RunContext (a hard budget that counts *logical* model calls, so cached
and uncached runs spend alike), memoises every evaluation by (program hash, rows hash) and
appends each one to a checkpoint on disk (JSON lines: a header, then one line per memo entry,
flushed and fsynced), so a killed compile restarted with the same
arguments replays completed evaluations (charging their recorded spend) instead of repeating
them, and ends with the same result. Acceptance of a candidate is decided here, on a paired
bootstrap over validation examples.

A provider failure is not an answer: rows the provider never answered (after the retry layer's
tries) are re-run, up to ``provider_reruns`` times, and an evaluation is memoised, checkpointed
and used only once every row has a real outcome (right, wrong or unreadable). The logical calls
of a re-run row count once. If rows still fail -- or at once with ``on_provider_failure="stop"``
-- the compile stops with a :class:`~lmgraph.errors.ProviderFailureError`; with a checkpoint it
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cache.keys import strip_credentials
from ..context import RunContext
from ..errors import ArtifactError, ConfigError, ProviderFailureError
from ..evaluation.datasets import fingerprint
from ..evaluation.evaluate import evaluate, paired_bootstrap
from ..evaluation.metrics import Metric
from ..lm.values import jsonable
from ..lm.wrappers import Budget
from ..pipeline.program import Program
from .progress import CompileProgress
from .report import Candidate, Report

PROVIDER_FAILURE_POLICIES = ("retry", "stop")
CHECKPOINT_VERSION = 3  # 3: each entry line carries a hash chained to the header and the lines before it


class BudgetStop(Exception):
    """Raised inside a search when the budget cannot cover the next evaluation."""


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                     default=str).encode()).hexdigest()


def check_provider_policy(on_provider_failure: str, provider_reruns: int) -> None:
    """The optimizer's provider-failure policy must be one it knows (ConfigError otherwise)."""
    if on_provider_failure not in PROVIDER_FAILURE_POLICIES:
        raise ConfigError(f"on_provider_failure is {on_provider_failure!r}; it must be one of "
                          f"{', '.join(map(repr, PROVIDER_FAILURE_POLICIES))}", field="on_provider_failure",
                          fix="'retry' re-runs rows the provider never answered (provider_reruns times) and stops "
                              "if they still fail; 'stop' stops at the first such row.")
    if isinstance(provider_reruns, bool) or not isinstance(provider_reruns, int) or provider_reruns < 0:
        raise ConfigError(f"provider_reruns is {provider_reruns!r}; it must be a whole number >= 0",
                          field="provider_reruns", fix="e.g. provider_reruns=3.")


def static_calls_per_example(program: Program) -> int:
    """A guess of model calls per example before anything was measured: each module's
    ``estimated_calls()`` (a Map's fan-out, Refine's rounds, a tool loop's steps counted), repair
    calls aside (a budget paced by the upper bound would afford half the evaluations it can;
    ``dry_run`` reports the upper bound)."""
    return max(1, program.estimated_calls(repairs=False))


class CompileSession:
    def __init__(self, *, optimizer: str, config: Mapping[str, Any], program: Program,
                 trainset: Sequence[Mapping[str, Any]], valset: Sequence[Mapping[str, Any]], metric: Metric,
                 ctx: RunContext | None, budget: Budget | None, seed: int, checkpoint: str | Path | None,
                 concurrency: int, accept_confidence: float, progress: bool, data_note: str = "",
                 early_stop: bool = True, early_stop_min: int = 8, on_provider_failure: str = "retry",
                 provider_reruns: int = 3) -> None:
        check_provider_policy(on_provider_failure, provider_reruns)
        self.on_provider_failure = on_provider_failure
        self.provider_reruns = provider_reruns
        base = ctx if ctx is not None else RunContext()
        self.ctx = base.replace(budget=budget or Budget(), budget_counts_cache_hits=True)
        self.meter = self.ctx.budget_meter
        assert self.meter is not None
        self.metric = metric
        self.trainset = list(trainset)
        self.valset = list(valset)
        self.seed = seed
        self.rng = random.Random(seed)
        self.concurrency = concurrency
        self.accept_confidence = accept_confidence
        self.progress = progress
        self.early_stop = early_stop
        self.early_stop_min = max(1, early_stop_min)
        # the order in which validation rows are scored when a candidate is evaluated in stages: a
        # seeded permutation of its own (a valset sorted by label must not make a stage one-sided)
        self._stage_perm = list(range(len(self.valset)))
        random.Random(f"stages:{seed}").shuffle(self._stage_perm)
        self.observed_calls: float | None = None
        self._val_fp = fingerprint(self.valset)
        data = {"train": {"n": len(self.trainset), "sha256_16": fingerprint(self.trainset)},
                "val": {"n": len(self.valset), "sha256_16": self._val_fp}}
        if data_note:
            data["note"] = data_note
        b = budget or Budget()
        self.report = Report(optimizer=optimizer, seed=seed, config=dict(config),
                             budget={"max_calls": b.max_calls, "max_tokens": b.max_tokens,
                                     "max_dollars": b.max_dollars},
                             data=data)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        # the models are arguments too: a memo made with another model must not be replayed
        models = {"lm": strip_credentials(base.lm.identity()) if base.lm is not None else "default",
                  "lms": {k: strip_credentials(v.identity()) for k, v in sorted(base.lms.items())}}
        self._fingerprint = _hash({"optimizer": optimizer, "config": config, "seed": seed,
                                   "program": program.content_hash(), "data": data, "models": models,
                                   "budget": self.report.budget, "metric": getattr(metric, "__name__", "")})
        self.memo: dict[str, dict[str, Any]] = {}
        self.replayed = 0
        # provider faults seen (run to run these differ; the result must not): rows that got no
        # answer and were re-run, re-run passes, and rows still without one when the compile stopped
        self.faults: dict[str, int] = {"rows_without_answer": 0, "reruns": 0, "stopped": 0}
        self._counted: set[str] = set()  # memo keys whose outcomes are in report.failures
        self._charged: set[str] = set()  # memo keys already paid for in this process
        self._checkpoint_open = False  # the checkpoint file exists with this compile's header
        self._checkpoint_chain = ""  # the hash of the last line written or read (see _chain)
        self._load_checkpoint()
        self.incumbent: Program = program
        self.incumbent_candidate: Candidate | None = None
        # the live status line (drawn only when progress is on); optimizers may label phases on it
        self.reporter = CompileProgress(self, progress, optimizer=optimizer, baseline=program)

    # ---- checkpointing: a JSON-lines file, a header line then one line per memo entry; each entry
    # line carries ``sha256`` = sha256(previous hash + the entry's canonical JSON), the chain
    # starting from the header's, so an edited, reordered or transplanted line is refused
    @staticmethod
    def _chain(previous: str, record: Mapping[str, Any]) -> str:
        body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256((previous + body).encode("utf-8")).hexdigest()

    def _load_checkpoint(self) -> None:
        path = self.checkpoint
        if path is None or not path.exists():
            return
        raw = path.read_bytes()
        header, sep, _ = raw.partition(b"\n")
        try:
            head = json.loads(header.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ArtifactError(f"checkpoint {path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})",
                                fix="delete it to start the compile afresh.") from None
        version = head.get("lmgraph_checkpoint") if isinstance(head, dict) else None
        if version != CHECKPOINT_VERSION:
            raise ArtifactError(f"checkpoint {path} has format version {version!r}; this lmgraph reads "
                                f"version {CHECKPOINT_VERSION}", fix="delete it to start the compile afresh.")
        if head.get("fingerprint") != self._fingerprint:
            raise ArtifactError(f"checkpoint {path} belongs to a compile with other arguments",
                                fix="use the same program, data, seed, budget and settings, "
                                    "or delete the checkpoint / pass another path.")
        if not sep:  # a header without its newline (not written by lmgraph): rewrite it on first append
            return
        chain = self._chain("", head)
        end = raw.rfind(b"\n") + 1  # past the last complete line: a kill mid-append leaves a partial one
        for i, line in enumerate(raw[len(header) + len(sep):end].split(b"\n")[:-1], start=2):
            try:
                rec = json.loads(line.decode("utf-8"))
                key, entry, digest = rec["key"], rec["entry"], rec["sha256"]
                if not isinstance(key, str) or not isinstance(entry, dict):
                    raise TypeError("an entry line is {\"key\": str, \"entry\": object, \"sha256\": str}")
            except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as e:
                raise ArtifactError(f"checkpoint {path} is corrupted at line {i} ({type(e).__name__}: {str(e)[:200]})",
                                    fix="delete it to start the compile afresh.") from None
            chain = self._chain(chain, {"key": key, "entry": entry})
            if digest != chain:
                raise ArtifactError(f"checkpoint {path} line {i} does not match its hash: the file was edited or "
                                    "corrupted, and its evaluations cannot be trusted",
                                    fix="delete it to start the compile afresh (with the call cache on, the "
                                        "evaluations are re-run from the cache).")
            self.memo[key] = entry
        if end < len(raw):
            os.truncate(path, end)  # drop the partial line, so that appends start on a fresh line
        self._checkpoint_chain = chain
        self._checkpoint_open = True

    def _append(self, line: dict[str, Any]) -> None:
        assert self.checkpoint is not None
        self._checkpoint_chain = self._chain(self._checkpoint_chain, line)
        line = {**line, "sha256": self._checkpoint_chain}
        with open(self.checkpoint, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")  # the newline goes last: a cut-off line has none
            f.flush()
            os.fsync(f.fileno())

    def remember(self, key: str, entry: dict[str, Any]) -> None:
        """Memoise ``entry`` under ``key`` and append it to the checkpoint (durably, before returning)."""
        self.memo[key] = entry
        if self.checkpoint is None:
            return
        if not self._checkpoint_open:  # the header goes in atomically: a checkpoint always has one
            self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint.with_suffix(self.checkpoint.suffix + ".tmp")
            head = {"lmgraph_checkpoint": CHECKPOINT_VERSION, "fingerprint": self._fingerprint}
            tmp.write_text(json.dumps(head) + "\n", encoding="utf-8")
            os.replace(tmp, self.checkpoint)
            self._checkpoint_chain = self._chain("", head)
            self._checkpoint_open = True
        self._append({"key": key, "entry": entry})

    # ---- budget
    def remaining_calls(self) -> int | None:
        return self.meter.remaining()["calls"]  # type: ignore[return-value]

    def calls_per_example(self, program: Program) -> float:
        static = static_calls_per_example(program)
        return max(static, self.observed_calls or 0.0)

    def can_afford(self, program: Program, n_rows: int) -> bool:
        rem = self.remaining_calls()
        if self.meter.exhausted:
            return False
        return rem is None or n_rows * self.calls_per_example(program) <= rem

    # ---- evaluation (memoised, checkpointed)
    async def run(self, program: Program, rows: Sequence[Mapping[str, Any]], *, kind: str = "eval"
                  ) -> dict[str, Any]:
        """Evaluate ``program`` on ``rows``: per-example scores, outputs and node I/O, and spend.

        Raises BudgetStop (before any call) when the remaining budget can't cover it.
        """
        key = _hash({"kind": kind, "program": program.content_hash(), "rows": fingerprint(rows)})
        self.reporter.evaluating(program, kind)
        hit = self.memo.get(key)
        if hit is not None:
            self._count_outcomes(key, hit)
            if key not in self._charged:  # replayed from a checkpoint: charge what it cost then
                u = hit["usage"]
                self.meter.charge(calls=u["calls"], prompt_tokens=u["prompt_tokens"],
                                  completion_tokens=u["completion_tokens"], dollars=u.get("dollars", 0.0))
                self._charged.add(key)
                self.replayed += 1
                if kind != "propose" and hit.get("scores") is not None:
                    # same state as the original run: later can_afford() decisions must match
                    self.observed_calls = max(self.observed_calls or 0.0, u["calls"] / max(1, len(rows)))
            return hit
        if not self.can_afford(program, len(rows)):
            rem = self.remaining_calls()
            raise BudgetStop(f"budget left ({rem} calls) cannot cover evaluating {len(rows)} examples "
                             f"at ~{self.calls_per_example(program):.1f} calls each")
        before = self.meter.snapshot()
        results, scores, feedback, statuses = await self._evaluate_all(program, rows, kind)
        after = self.meter.snapshot()
        usage = {k: after[k] - before[k] for k in ("calls", "prompt_tokens", "completion_tokens", "dollars")}
        examples = []
        for r, s, fb, st in zip(results, scores, feedback, statuses):
            # fb: the metric's text, if any; status: ok / parse_failure / error (never a provider failure)
            ex: dict[str, Any] = {"score": s, "ok": r.ok, "feedback": fb, "status": st}
            if r.ok:
                ex["outputs"] = jsonable(dict(r.outputs))
                ex["nodes"] = {n.node: {"inputs": jsonable(n.inputs), "outputs": jsonable(n.outputs)}
                               for n in r.trace.nodes} if r.trace else {}
                nested = program.nested_io(r.trace) if r.trace else {}
                if nested:  # nested modules' I/O by path (Refine's generator, a Map's sub-nodes...)
                    ex["params_io"] = jsonable(nested)
            else:
                ex["error"] = f"{type(r.error).__name__}: {r.error}"
            examples.append(ex)
        entry = {"scores": scores, "examples": examples, "usage": usage}
        per_ex = usage["calls"] / max(1, len(rows))
        self.observed_calls = max(self.observed_calls or 0.0, per_ex)
        self.remember(key, entry)
        self._charged.add(key)
        self._count_outcomes(key, entry)
        return entry

    async def _evaluate_all(self, program: Program, rows: Sequence[Mapping[str, Any]], kind: str
                            ) -> tuple[list[Any], list[float], list[str | None], list[str]]:
        """Evaluate ``program`` on ``rows`` until every row has a real outcome: rows the provider
        never answered are re-run (``provider_reruns`` times at most; their calls are given back to
        the budget first, so a re-run row counts its logical calls once). BudgetStop when the budget
        ran out mid-way; ProviderFailureError when rows still have no answer."""
        res = await evaluate(program, rows, self.metric, ctx=self.ctx, concurrency=self.concurrency,
                             progress=self.reporter.rows(len(rows), kind) or False, provider_warning=False)
        results, scores = list(res.results), list(res.scores)
        feedback, statuses = list(res.feedback), list(res.statuses)
        reruns = 0
        while True:
            if "budget" in statuses:
                raise BudgetStop("budget spent during an evaluation (it is not used)")
            lost = [i for i, st in enumerate(statuses) if st == "provider_failure"]
            if not lost:
                return results, scores, feedback, statuses
            self._give_back([results[i] for i in lost])
            self.faults["rows_without_answer"] += len(lost)
            last = results[lost[-1]].error
            if self.on_provider_failure == "stop" or reruns >= self.provider_reruns:
                self.faults["stopped"] = len(lost)
                self._faults_to_report()
                tries = (f"after {reruns} re-run{'s' if reruns != 1 else ''} of the failed rows"
                         if self.on_provider_failure == "retry" else "(on_provider_failure='stop')")
                raise ProviderFailureError(
                    f"{len(lost)} of {len(rows)} rows got no answer from the provider {tries}, each after "
                    f"the retry layer's tries; last error: {type(last).__name__}: {last}. Nothing failed was "
                    "scored, memoised or checkpointed. Fix: check the server/provider, then run the compile again "
                    "(with checkpoint= it resumes where it stopped); give retries more room with "
                    "RunContext(retries=RetryPolicy(attempts=..., deadline_s=...)) or the optimizer more "
                    "re-runs (provider_reruns=...).", failed=len(lost), total=len(rows),
                    last_error=f"{type(last).__name__}: {last}") from last
            reruns += 1
            self.faults["reruns"] += 1
            sub = await evaluate(program, [rows[i] for i in lost], self.metric, ctx=self.ctx,
                                 concurrency=self.concurrency, progress=self.reporter.rows(len(lost), kind) or False,
                                 provider_warning=False)
            for j, i in enumerate(lost):
                results[i], scores[i] = sub.results[j], sub.scores[j]
                feedback[i], statuses[i] = sub.feedback[j], sub.statuses[j]
            self._faults_to_report()

    def _give_back(self, failed: Sequence[Any]) -> None:
        """Return to the budget the logical calls (and their tokens) that rows without an answer
        made before failing: their re-run makes them again, and counts them then."""
        calls = hits = prompt = completion = 0
        dollars = 0.0
        for r in failed:
            if r.trace is None:
                continue
            u = r.trace.usage
            calls += u.get("calls", 0)
            hits += u.get("cache_hits", 0)
            prompt += u.get("prompt_tokens", 0)
            completion += u.get("completion_tokens", 0)
            dollars += r.trace.cost or 0.0
        if calls:
            self.meter.charge(calls=-calls, prompt_tokens=-prompt, completion_tokens=-completion,
                              dollars=-dollars, cache_hits=-hits)

    def _count_outcomes(self, key: str, entry: Mapping[str, Any]) -> None:
        """Add an evaluation's row outcomes to ``report.failures`` (once per evaluation)."""
        if key in self._counted or entry.get("examples") is None:
            return
        self._counted.add(key)
        fails = self.report.failures
        for ex in entry["examples"]:
            st = ex.get("status") or ("ok" if ex.get("ok") else "error")
            if st != "ok":
                fails[st] = fails.get(st, 0) + 1
        self._faults_to_report()

    def _faults_to_report(self) -> None:
        self.report.faults = {**self.faults, "requests": int(self.meter.snapshot().get("requests", 0))}

    # ---- candidates
    def _new_candidate(self, label: str, changes: Mapping[str, Any], entry: Mapping[str, Any]) -> Candidate:
        u = entry["usage"]
        c = Candidate(id=len(self.report.candidates), label=label, changes=dict(changes),
                      scores=list(entry["scores"]), calls=u["calls"],
                      tokens=u["prompt_tokens"] + u["completion_tokens"])
        self.report.candidates.append(c)
        return c

    async def baseline(self) -> Candidate:
        entry = await self.run(self.incumbent, self.valset)
        c = self._new_candidate("baseline (the program as given)", {}, entry)
        c.status, c.reason = "baseline", "starting point"
        self.incumbent_candidate = c
        self.reporter.phase("searching")
        return c

    def stages(self) -> list[int]:
        """How many validation rows (of the stage permutation) are scored before each look:
        a quarter, a half, then all -- one stage when the valset is too small to look early."""
        n = len(self.valset)
        if not self.early_stop or n < 2 * self.early_stop_min:
            return [n]
        ends = sorted({max(self.early_stop_min, math.ceil(n / 4)), max(self.early_stop_min, math.ceil(n / 2)), n})
        return [e for e in ends if e <= n]

    async def _staged(self, program: Program) -> tuple[dict[str, Any], int]:
        """Score ``program`` on the validation set in stages, stopping after a stage when it is
        clearly worse than the incumbent on the rows scored so far (the 95% CI of the paired
        difference lies below 0). Returns the merged entry (scores in stage order) and how many
        rows were scored."""
        inc = self.incumbent_candidate
        assert inc is not None
        scores: list[float] = []
        usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "dollars": 0.0}
        ends, start = self.stages(), 0
        for end in ends:
            idx = self._stage_perm[start:end]
            entry = await self.run(program, [self.valset[i] for i in idx])
            scores += entry["scores"]
            for k in usage:
                usage[k] += entry["usage"].get(k, 0)
            start = end
            if end < len(self.valset):
                seen = self._stage_perm[:end]
                ev = paired_bootstrap([inc.scores[i] for i in seen], scores, seed=self.seed)
                if ev["ci_high"] < 0:
                    return {"scores": scores, "usage": usage, "evidence": ev}, end
        order = {i: k for k, i in enumerate(self._stage_perm)}
        full = [scores[order[i]] for i in range(len(self.valset))]  # back in valset order
        return {"scores": full, "usage": usage}, len(self.valset)

    async def consider(self, program: Program, label: str, changes: Mapping[str, Any], *,
                       rows: Sequence[Mapping[str, Any]] | None = None, early_stop: bool = True) -> Candidate:
        """Evaluate a candidate on the validation set; it replaces the incumbent only on evidence.

        With the session's ``early_stop`` (and ``early_stop=True`` here) the candidate is scored
        in stages (a quarter of the rows, half, all) and rejected as soon as it is clearly worse
        than the incumbent on the rows scored so far; its report row then holds the partial scores.
        """
        inc = self.incumbent_candidate
        assert inc is not None
        if rows is None and early_stop and len(self.stages()) > 1:
            entry, scored = await self._staged(program)
            if scored < len(self.valset):
                cand = self._new_candidate(label, changes, entry)
                ev = entry["evidence"]
                cand.evidence = ev
                cand.status = "rejected"
                cand.reason = (f"stopped early after {scored} of {len(self.valset)} validation rows: worse than "
                               f"#{inc.id} by {ev['diff']:+.3f} there (95% CI {ev['ci_low']:+.3f}..{ev['ci_high']:+.3f})")
                return cand
        else:
            entry = await self.run(program, self.valset if rows is None else rows)
        cand = self._new_candidate(label, changes, entry)
        if rows is not None and len(rows) != len(self.valset):
            cand.status = "minibatch"
            cand.reason = (f"scored on a minibatch of {len(rows)} of the {len(self.valset)} validation rows; "
                           "not compared")
            return cand
        ev = paired_bootstrap(inc.scores, cand.scores, seed=self.seed)
        cand.evidence = ev
        if ev["diff"] > 0 and ev["p_better"] >= self.accept_confidence:
            cand.status = "accepted"
            cand.reason = (f"better than #{inc.id} by {ev['diff']:+.3f} "
                           f"(95% CI {ev['ci_low']:+.3f}..{ev['ci_high']:+.3f}, P(better)={ev['p_better']:.2f})")
            self.incumbent, self.incumbent_candidate = program, cand
        else:
            cand.status = "rejected"
            n = len(cand.scores)
            cand.reason = (f"not better than #{inc.id}: {ev['diff']:+.3f} on the {n} validation rows"
                           if ev["diff"] <= 0 else
                           f"better than #{inc.id} by {ev['diff']:+.3f} on the {n} validation rows, but that may be "
                           f"noise: {ev['p_better']:.0%} of bootstrap resamples favour it, "
                           f"{self.accept_confidence:.0%} needed")
        return cand

    def best_by_mean(self) -> Candidate:
        """The best-scoring candidate evaluated on the full validation set (ties: earliest)."""
        n = len(self.valset)
        full = [c for c in self.report.candidates
                if c.status in ("baseline", "accepted", "rejected") and len(c.scores) == n]
        return max(full, key=lambda c: (c.mean, -c.id))
