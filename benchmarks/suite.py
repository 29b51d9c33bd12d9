"""lmgraph vs DSPy on the same local model: quality, compile cost, overhead, scheduling.

One command (sets up its own environment first; see benchmarks/README.md):

    bash benchmarks/run.sh --quick      # < 15 min on 2 cores
    bash benchmarks/run.sh              # full mode: hours; resumable (rerun the same command)

What it does: starts llama.cpp OpenAI-compatible servers (llama-cpp-python's server, bound to
127.0.0.1) on the embedded SmolLM2-135M-Instruct GGUF behind a small counting proxy (also on
127.0.0.1), runs every system on every task with greedy decoding and the same max tokens, stops
the servers and writes ``benchmarks/results/<date>[-quick].json``, a Markdown table (``.md``)
and a PNG plot (test score vs compile LM calls). Both frameworks reach the model through
litellm (DSPy with ``engine="litellm"``); lmgraph's in-process llama.cpp runs are reported
separately. Splits are seeded in ``benchmarks/tasks/``; optimizers see train/val only.

Counting: "compile calls" are logical LM calls made while compiling (cache hits included;
DSPy: every ``LM`` call recorded by DSPy, lmgraph: its budget meter); "requests" are the HTTP
requests that reached the servers (cache misses), counted by the proxy, with their tokens.
Every system starts with empty caches (fresh in-memory caches on both sides).

Resuming: each (task, system) result is appended to ``benchmarks/.work/runs/<mode>-s<seed>/
records.jsonl`` when it finishes; a rerun skips finished units. A unit in progress keeps a
journal of the answers it got (``journal/``, see ``answers.Journal``): killed, it resumes where it
stopped, with the same counts as an uninterrupted run. ``--fresh`` discards that state.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import tasks as task_defs  # noqa: E402
from tasks import Sizes, Task  # noqa: E402
from answers import ROUTING, CountingProxy, Journal, JournalLM, SharedAnswers, delta  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE / ".work" / "runs"


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class System:
    """One column of the comparison: a framework, an optimizer and its settings."""

    name: str
    framework: str          # "lmgraph" | "dspy" | "lmgraph-inprocess"
    optimizer: str          # "zero-shot" or the optimizer's name
    variant: str = ""       # DSPy adapter ("chat"/"json")
    settings: tuple[tuple[str, Any], ...] = ()

    def opts(self) -> dict[str, Any]:
        return dict(self.settings)


def systems_for(mode: str) -> list[System]:
    quick = mode.startswith("quick")
    rs_candidates = 2 if quick else 6
    out = [
        System("lmgraph zero-shot", "lmgraph", "zero-shot"),
        System("lmgraph LabeledFewShot", "lmgraph", "LabeledFewShot", settings=(("k", 4),)),
        System("lmgraph BootstrapFewShot", "lmgraph", "BootstrapFewShot"),
        System("lmgraph BootstrapRandomSearch", "lmgraph", "BootstrapRandomSearch",
               settings=(("num_candidates", rs_candidates),)),
        System("lmgraph InstructionSearch", "lmgraph", "InstructionSearch",
               settings=(("num_candidates", 3 if quick else 6),)),
        System("lmgraph JointSearch", "lmgraph", "JointSearch", settings=(("num_trials", 4 if quick else 12),)),
        # the default compiler (lg.compile): pooled rows, raced levers, held-out confirmation
        System("lmgraph Compile", "lmgraph", "Compile"),
        # plan -> per-step answers -> combine, accepted only on evidence (no demos for the new nodes)
        System("lmgraph Decompose", "lmgraph", "Decompose", settings=(("max_steps", 3),)),
    ]
    for adapter in ("chat", "json"):
        out += [
            System(f"DSPy zero-shot [{adapter}]", "dspy", "zero-shot", adapter),
            System(f"DSPy LabeledFewShot [{adapter}]", "dspy", "LabeledFewShot", adapter, (("k", 4),)),
            System(f"DSPy BootstrapFewShot [{adapter}]", "dspy", "BootstrapFewShot", adapter),
            System(f"DSPy BootstrapFewShotWithRandomSearch [{adapter}]", "dspy", "BootstrapFewShotWithRandomSearch",
                   adapter, (("num_candidate_programs", rs_candidates),)),
            System(f"DSPy MIPROv2-light [{adapter}]", "dspy", "MIPROv2", adapter),
        ]
    out += [
        System("lmgraph zero-shot (in-process)", "lmgraph-inprocess", "zero-shot"),
        System("lmgraph JointSearch (in-process)", "lmgraph-inprocess", "JointSearch",
               settings=(("num_trials", 4 if quick else 12),)),
        System("lmgraph Compile (in-process)", "lmgraph-inprocess", "Compile"),
    ]
    if quick:  # the quick mode keeps the cheaper half of each framework's line-up
        keep = {"lmgraph zero-shot", "lmgraph BootstrapFewShot", "lmgraph JointSearch", "lmgraph Compile",
                "DSPy zero-shot [chat]", "DSPy zero-shot [json]", "DSPy BootstrapFewShot [chat]",
                "DSPy BootstrapFewShot [json]"}
        out = [s for s in out if s.name in keep]
    return out


QUICK_TASKS = ("trec", "sst2")


# --------------------------------------------------------------------------- statistics

def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def bootstrap_ci(xs: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> list[float]:
    from lmgraph.evaluation import bootstrap_ci as ci

    lo, hi = ci(list(xs), n_resamples=resamples, seed=seed)
    return [round(lo, 4), round(hi, 4)]


# --------------------------------------------------------------------------- lmgraph systems

def _lmgraph_optimizer(system: System, task: Task, seed: int) -> Any:
    from lmgraph import optimizers as O

    o = system.opts()
    if system.optimizer == "LabeledFewShot":
        return O.LabeledFewShot(k=o.get("k", 4))
    if system.optimizer == "BootstrapFewShot":
        return O.BootstrapFewShot(max_demos=4, max_labeled=4)
    if system.optimizer == "BootstrapRandomSearch":
        return O.BootstrapRandomSearch(max_demos=4, max_labeled=4, num_candidates=o["num_candidates"])
    if system.optimizer == "InstructionSearch":
        return O.InstructionSearch(num_candidates=o["num_candidates"], minibatch_size=10)
    if system.optimizer == "JointSearch":
        return O.JointSearch(num_trials=o["num_trials"], num_instructions=2, num_demo_sets=3, max_demos=4,
                             formats=("chat", "completion", "json"), minibatch_size=10)
    if system.optimizer == "Decompose":
        return O.Decompose(max_steps=o["max_steps"])
    if system.optimizer == "Compile":
        return O.Compile(max_demos=4)
    raise ValueError(f"unknown lmgraph optimizer {system.optimizer!r}")


def _timed(journal: Journal | None, phase: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run one phase of a unit: (its result, its wall time including killed segments' time)."""
    if journal is not None:
        journal.phase(phase)
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    if journal is not None:
        journal.phase_end(phase, wall)
        wall += journal.prior_s(phase)
    return result, wall


def run_lmgraph(system: System, task: Task, data: tuple[list, list, list], *, seed: int, lm: Any,
                proxy: CountingProxy | None, budget_calls: int, journal: Journal | None = None) -> dict[str, Any]:
    import lmgraph as lg
    from lmgraph.cache import MemoryCache
    from lmgraph.errors import OutputParseError
    from lmgraph.evaluation import evaluate_sync

    train, val, test = data
    cache = MemoryCache()
    program = task.lmgraph_program()

    def metric(ex: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> float:
        return task.score(dict(ex), pred)

    out: dict[str, Any] = {"compile": None}
    if system.optimizer != "zero-shot":
        ctx = lg.RunContext(lm=lm, cache=cache, max_concurrency=2)
        opt = _lmgraph_optimizer(system, task, seed)
        before = proxy.snapshot() if proxy else None
        (program, report), wall = _timed(journal, "compile", lambda: opt.optimize(
            program, train, metric, valset=val, budget=lg.Budget(max_calls=budget_calls), seed=seed, ctx=ctx))
        served = delta(proxy.snapshot(), before) if proxy else {}
        out["compile"] = {
            "calls": int(report.spent.get("calls", 0)), "tokens": int(report.spent.get("tokens", 0)),
            "cache_misses": report.runtime.get("cache_misses"), "requests": served.get("requests"),
            "request_tokens": (served.get("prompt_tokens", 0) + served.get("completion_tokens", 0)) if served else None,
            "wall_s": round(wall, 1), "budget_calls": budget_calls, "stopped": report.stopped,
            "chosen": report.best.label, "val_baseline": round(report.baseline.mean, 4),
            "val_best": round(report.best.mean, 4),
        }
    ctx = lg.RunContext(lm=lm, cache=cache, max_concurrency=2)
    before = proxy.snapshot() if proxy else None
    res, wall = _timed(journal, "test", lambda: evaluate_sync(program, test, metric, ctx=ctx, concurrency=2))
    preds, scores = [], {m: [] for m in task.metrics}
    parse_fail = errors = 0
    for row, r in zip(test, res.results):
        pred = dict(r.outputs) if r.ok else None
        if not r.ok:
            parse_fail += isinstance(r.error, OutputParseError)
            errors += not isinstance(r.error, OutputParseError)
        for m in task.metrics:
            scores[m].append(task.score(row, pred, m))
        preds.append(None if pred is None else str(pred.get(task.output))[:200])
    out.update(scores=scores, predictions=preds, parse_failures=parse_fail, errors=errors,
               test_eval={"wall_s": round(wall, 1),
                          **({"requests": delta(proxy.snapshot(), before)["requests"]} if proxy else {})})
    return out


# --------------------------------------------------------------------------- DSPy systems

class DSPyCounter:
    """Counts DSPy's logical LM calls (cache hits included).

    DSPy 3.4.1 ends every ``LM`` call (sync or async, any engine) in
    ``dspy.clients.execution.finalize(lm, call, result)``, which ``LM.__call__`` imports at call
    time; wrapping that module attribute sees each call once, with ``result.cache_hit``.
    """

    def __init__(self) -> None:
        from dspy.clients import execution

        self.calls = 0
        self.cache_hits = 0
        self._lock = threading.Lock()
        original = execution.finalize
        counter = self

        def counting(lm: Any, call: Any, result: Any, *args: Any, **kwargs: Any) -> Any:
            with counter._lock:
                counter.calls += 1
                counter.cache_hits += bool(getattr(result, "cache_hit", False))
            return original(lm, call, result, *args, **kwargs)

        execution.finalize = counting

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"calls": self.calls, "cache_hits": self.cache_hits}


def _dspy_lm(base_url: str, max_tokens: int) -> Any:
    import dspy

    return dspy.LM("openai/local", api_base=base_url, api_key="sk-local", engine="litellm",
                   temperature=0.0, max_tokens=max_tokens, cache=True, num_retries=0)


def _dspy_fresh_cache() -> None:
    import dspy

    # A new, empty in-memory cache per system (no disk): every system starts cold.
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)


# DSPy optimizers abort a compile after `max_errors` failed examples (default 10); a 135M model
# fails to parse often, so (as a user would) we let them go on: failures then just score 0.
MAX_ERRORS = 100_000


def _dspy_optimizer(system: System, metric: Callable, base_url: str, seed: int) -> Callable[[Any, list, list], Any]:
    import dspy

    o = system.opts()
    if system.optimizer == "LabeledFewShot":
        return lambda prog, tr, va: dspy.LabeledFewShot(k=o.get("k", 4)).compile(prog, trainset=tr)
    if system.optimizer == "BootstrapFewShot":
        return lambda prog, tr, va: dspy.BootstrapFewShot(
            metric=metric, max_bootstrapped_demos=4, max_labeled_demos=4,
            max_errors=MAX_ERRORS).compile(prog, trainset=tr)
    if system.optimizer == "BootstrapFewShotWithRandomSearch":
        return lambda prog, tr, va: dspy.BootstrapFewShotWithRandomSearch(
            metric=metric, max_bootstrapped_demos=4, max_labeled_demos=4,
            num_candidate_programs=o["num_candidate_programs"], num_threads=2,
            max_errors=MAX_ERRORS).compile(prog, trainset=tr, valset=va)
    if system.optimizer == "MIPROv2":
        # The instruction proposer needs room to write; same server, same greedy default.
        prompt_lm = _dspy_lm(base_url, 256)
        return lambda prog, tr, va: dspy.MIPROv2(
            metric=metric, prompt_model=prompt_lm, auto="light", num_threads=2, max_bootstrapped_demos=4,
            max_labeled_demos=4, seed=seed, verbose=False, max_errors=MAX_ERRORS).compile(prog, trainset=tr, valset=va)
    raise ValueError(f"unknown DSPy optimizer {system.optimizer!r}")


def run_dspy(system: System, task: Task, data: tuple[list, list, list], *, seed: int, base_url: str,
             proxy: CountingProxy, counter: DSPyCounter, journal: Journal | None = None) -> dict[str, Any]:
    import dspy
    from dspy.utils.exceptions import AdapterParseError

    train, val, test = data
    # `import dspy` sets its logger to INFO; failures are counted in the records, and per-example
    # parse errors from its optimizers would bury the run's log (hundreds of MB over a full run)
    logging.getLogger("dspy").setLevel(logging.CRITICAL)
    _dspy_fresh_cache()
    lm = _dspy_lm(base_url, task.max_tokens)
    adapter = dspy.JSONAdapter() if system.variant == "json" else dspy.ChatAdapter()
    dspy.configure(lm=lm, adapter=adapter)

    def to_ex(row: Mapping[str, Any]) -> Any:
        return dspy.Example(**row).with_inputs(*task.inputs)

    def metric(example: Any, pred: Any, trace: Any = None) -> float:
        return task.score(example.toDict(), {task.output: getattr(pred, task.output, None)})

    program = task.dspy_program()
    out: dict[str, Any] = {"compile": None}
    if system.optimizer != "zero-shot":
        compile_fn = _dspy_optimizer(system, metric, base_url, seed)
        before, cbefore = proxy.snapshot(), counter.snapshot()
        random.seed(seed)
        program, wall = _timed(journal, "compile",
                               lambda: compile_fn(program, [to_ex(r) for r in train], [to_ex(r) for r in val]))
        served, calls = delta(proxy.snapshot(), before), delta(counter.snapshot(), cbefore)
        out["compile"] = {"calls": calls["calls"], "cache_hits": calls["cache_hits"],
                          "requests": served["requests"],
                          "request_tokens": served["prompt_tokens"] + served["completion_tokens"],
                          "tokens": served["prompt_tokens"] + served["completion_tokens"],
                          "wall_s": round(wall, 1)}

    def one(row: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        try:
            with dspy.context(lm=lm, adapter=adapter):
                pred = program(**{k: row[k] for k in task.inputs})
            return {task.output: getattr(pred, task.output, None)}, None
        except AdapterParseError:
            return None, "parse"
        except Exception as exc:  # recorded, never crashes the batch
            return None, f"{type(exc).__name__}: {exc}"[:300]

    def run_test() -> list[tuple[dict[str, Any] | None, str | None]]:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(one, test))

    before = proxy.snapshot()
    got, wall = _timed(journal, "test", run_test)
    scores = {m: [task.score(row, pred, m) for row, (pred, _) in zip(test, got)] for m in task.metrics}
    errs = [e for _, e in got if e and e != "parse"]
    out.update(scores=scores, predictions=[None if p is None else str(p[task.output])[:200] for p, _ in got],
               parse_failures=sum(e == "parse" for _, e in got), errors=len(errs),
               error_examples=errs[:3],
               test_eval={"wall_s": round(wall, 1), "requests": delta(proxy.snapshot(), before)["requests"]})
    return out


# --------------------------------------------------------------------------- the run

def summarise(task: Task, system: System, raw: dict[str, Any], data_sizes: dict[str, int]) -> dict[str, Any]:
    test = {}
    for m, xs in raw["scores"].items():
        test[m] = {"mean": round(mean(xs), 4), "ci95": bootstrap_ci(xs)}
    n = len(raw["scores"][task.main])
    return {"task": task.name, "system": system.name, "framework": system.framework,
            "optimizer": system.optimizer, "variant": system.variant, "settings": system.opts(),
            "splits": data_sizes, "test": test, "main": task.main,
            "parse_failure_rate": round(raw["parse_failures"] / n, 4) if n else 0.0,
            "error_rate": round(raw["errors"] / n, 4) if n else 0.0,
            "error_examples": raw.get("error_examples", []),
            "compile": raw["compile"], "test_eval": raw["test_eval"],
            "scores": raw["scores"], "predictions": raw["predictions"]}


class RunState:
    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and path.exists():
            path.unlink()
        self.records: list[dict[str, Any]] = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    pass  # a torn last line from a kill: that unit reruns

    def run_date(self, given: str | None) -> str:
        """The date that names the results files: ``given`` (``--date``), else the one this run
        state started under -- a full run resumed over several days keeps writing one date's
        files -- else today. A new run state keeps the date it starts with."""
        meta = self.path.parent / "run.json"
        try:
            started = json.loads(meta.read_text()).get("date")
        except (OSError, ValueError):
            started = None
        if not self.records:  # a new (or --fresh) run starts its own date
            started = None
        date = given or started or _dt.date.today().isoformat()
        if started is None:
            meta.write_text(json.dumps({"date": date}) + "\n")
        return date

    def done(self, task: str, system: str, retry_failed: bool = False) -> bool:
        """Has a record: finished, or failed with a recorded exception. A recorded failure is final
        unless `retry_failed` (a deterministic failure, e.g. a DSPy optimizer that cannot parse this
        model's output, would otherwise cost its minutes again on every resume). A unit killed
        mid-run leaves no record and always reruns."""
        return any(r["task"] == task and r["system"] == system and (not retry_failed or "failed" not in r)
                   for r in self.records)

    def latest(self) -> list[dict[str, Any]]:
        """One record per (task, system): the last one written."""
        last: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self.records:
            last[(r["task"], r["system"])] = r
        return list(last.values())

    def add(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


def results_stem(mode: str, date: str) -> str:
    """The name the results files of ``mode`` and ``date`` share (``report.write`` uses it)."""
    return date if mode == "full" else f"{date}-{mode}"


def restore_state(state: RunState, doc: Mapping[str, Any], carried: Path, journals: Path) -> tuple[int, int]:
    """Seed a run state from its published results: a full run goes on on a fresh machine.

    The state lives in ``benchmarks/.work/`` (not committed), so a new machine starts with none.
    ``doc`` is a results file (``results/<date>.json``): every finished or failed unit's record is
    added where the state has none for that (task, system); ``carried`` (``results/<date>-journal/``)
    holds the journals of units that were in progress when a run stopped, committed with the results,
    and each is copied in where the state has no journal of its own for that unit. Returns
    (records added, journals copied). What is not restored: the shared test answers (a later unit
    then asks the model again: same answers, only its test wall time differs)."""
    have = {(r["task"], r["system"]) for r in state.records}
    added = 0
    for rec in doc.get("records", []):
        if (rec["task"], rec["system"]) not in have:
            state.add(rec)
            have.add((rec["task"], rec["system"]))
            added += 1
    copied = 0
    if carried.is_dir():
        journals.mkdir(parents=True, exist_ok=True)
        for src in sorted(carried.glob("*.jsonl")):
            dst = journals / src.name
            if not dst.exists():
                dst.write_bytes(src.read_bytes())
                copied += 1
    return added, copied


def carry_journals(journals: Path, carried: Path) -> list[Path]:
    """Copy the journals of units still in progress (a stopped run) next to the results, where they
    can be committed and a run on another machine resumes them (``--restore``)."""
    out = []
    for src in sorted(journals.glob("*.jsonl")) if journals.is_dir() else []:
        carried.mkdir(parents=True, exist_ok=True)
        dst = carried / src.name
        dst.write_bytes(src.read_bytes())
        out.append(dst)
    return out


def estimate_unit_s(records: Sequence[dict[str, Any]], task: str, system: System) -> float | None:
    """A rough duration of (task, system) from finished units: the same system on other tasks,
    scaled by how long the same framework's zero-shot took here vs there; the largest such
    guess, or None when the system has not finished anywhere yet."""
    wall = {(r["task"], r["system"]): r["unit_wall_s"] for r in records
            if "failed" not in r and r.get("unit_wall_s")}
    # zero-shot units whose test answers were shared with an earlier unit did not decode: no scale
    timed = {(r["task"], r["system"]) for r in records if not (r.get("test_eval") or {}).get("shared_answers")}
    zeros = {"lmgraph": ["lmgraph zero-shot"], "lmgraph-inprocess": ["lmgraph zero-shot (in-process)"],
             "dspy": [f"DSPy zero-shot [{v}]" for v in (system.variant, "chat", "json")]}.get(system.framework, [])
    guesses = []
    for (t, name), w in wall.items():
        if name != system.name or t == task:
            continue
        here = there = None
        for zero in zeros:  # the framework's own zero-shot here and there, timed on both tasks
            if (task, zero) in timed and (t, zero) in timed:
                here, there = wall.get((task, zero)), wall.get((t, zero))
                break
        guesses.append(w * here / there if here and there else w)
    if not guesses and system.variant:
        # not finished anywhere yet: the same optimizer with the framework's other variant(s)
        # (e.g. DSPy MIPROv2 with the ChatAdapter for the JSONAdapter), on any task
        same = {r["system"]: r for r in records if r.get("framework") == system.framework
                and r.get("optimizer") == system.optimizer and r.get("variant") != system.variant}
        guesses = [w for (t, name), w in wall.items() if name in same and t == task] or \
                  [w for (t, name), w in wall.items() if name in same]
    return max(guesses) if guesses else None


def order_units(todo: Sequence[tuple[Task, System]], records: Sequence[dict[str, Any]], stop_by: float | None,
                now: Callable[[], float] = time.time) -> Any:
    """The units in run order. With ``stop_by``, a unit that finished units suggest would not end
    in the time left goes behind the rest (it still runs if time is left: its journal keeps
    what it did when the run stops). ``records`` may grow while this is consumed."""
    deferred = []
    for task, system in todo:
        if stop_by is not None:
            est, left = estimate_unit_s(records, task.name, system), stop_by - now()
            if est is not None and est > left:
                print(f"[suite] {task.name} / {system.name}: deferred (about {est / 60:.0f} min; "
                      f"{left / 60:.0f} min left before --stop-by)", flush=True)
                deferred.append((task, system))
                continue
        yield task, system
    yield from deferred


STOP_BY_PAST_S = 3600.0


def parse_stop_by(text: str, now: float | None = None) -> float:
    """``HH:MM`` or an ISO date-time -> a Unix time. ``HH:MM`` is the next such local time, unless
    it passed within the last hour: then it is that (past) time, reached already -- so that a
    second command chained after a first with the same ``--stop-by`` stops instead of running
    until tomorrow."""
    now = time.time() if now is None else now
    try:
        if len(text) <= 5 and ":" in text:
            hh, mm = (int(x) for x in text.split(":"))
            base = _dt.datetime.fromtimestamp(now)
            at = base.replace(hour=hh, minute=mm, second=0, microsecond=0)
            if at.timestamp() < now - STOP_BY_PAST_S:
                at += _dt.timedelta(days=1)
            return at.timestamp()
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise SystemExit(f"--stop-by {text!r}: give HH:MM (local time) or an ISO date-time, "
                         "e.g. 01:40 or 2026-11-25T01:40") from None


_PACING_OPTS = ("--date", "--stop-by", "--tasks", "--systems", "--redo", "--restore")
_PACING_FLAGS = ("--report-only", "--retry-failed")


def run_command(argv: Sequence[str]) -> str:
    """The command that reproduces the results files: ``run.sh`` with the arguments that shape
    the results. Not those that name, pace or pick this invocation's share of the work
    (``--date``, ``--stop-by``, ``--report-only``, ``--tasks``, ``--systems``, ``--redo``,
    ``--retry-failed``): the files cover every recorded unit of the mode and seed, and the
    plain command resumes what is missing."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _PACING_OPTS:
            skip = True
        elif a not in _PACING_FLAGS and not a.startswith(tuple(o + "=" for o in _PACING_OPTS)):
            kept.append(a)
    return " ".join(["bash benchmarks/run.sh", *kept])


def report_scope(records: Sequence[dict[str, Any]], default_tasks: Sequence[str], chosen_tasks: Sequence[str],
                 systems: Sequence[str]) -> tuple[list[str], list[str]]:
    """(tasks, missing units) the results files cover: the mode's tasks, those run now and those
    with records -- not just the ``--tasks`` of the last invocation, which would overwrite a
    date's full results with one task's -- and the ``"task / system"`` units not run yet."""
    tasks = list(default_tasks)
    for name in [*chosen_tasks, *(r["task"] for r in records)]:
        if name not in tasks:
            tasks.append(name)
    done = {(r["task"], r["system"]) for r in records}
    return tasks, [f"{t} / {s}" for t in tasks for s in systems if (t, s) not in done]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _stop_at(when: float, servers: Sequence[Any], grace_s: float = 90.0) -> threading.Thread:
    """At ``when``, end the run as a kill would (SIGTERM: servers stopped, the unit in progress
    keeps its journal); if it has not ended ``grace_s`` later, stop the servers and exit."""
    def watch() -> None:
        time.sleep(max(0.0, when - time.time()))
        print("[suite] --stop-by reached: stopping; the unit in progress resumes on the next run", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        for s in servers:
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        os._exit(128 + signal.SIGTERM)

    t = threading.Thread(target=watch, name="stop-by", daemon=True)
    t.start()
    return t


def start_servers(n: int, threads: int, n_ctx: int) -> list[Any]:
    from lmgraph.lm.server import LlamaServer

    servers = []
    try:
        for _ in range(n):
            servers.append(LlamaServer(n_ctx=n_ctx, n_threads=threads, startup_timeout=120).start())
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


def main(argv: Sequence[str] | None = None) -> int:
    # A kill (SIGTERM) unwinds like Ctrl-C, so the servers are stopped; the run resumes later.
    # The caller's handler comes back afterwards (tests call main() inside pytest's process).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small splits, fewer systems (< 15 min on 2 cores)")
    ap.add_argument("--tasks", help="comma-separated task names (default: all in full mode, "
                                    f"{','.join(QUICK_TASKS)} in quick mode)")
    ap.add_argument("--systems", help="comma-separated substrings; run only systems whose name contains one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--servers", type=int, default=2, help="llama.cpp server processes (requests are balanced)")
    ap.add_argument("--threads", type=int, default=1, help="threads per server")
    ap.add_argument("--affinity-wait", type=float, default=5.0,
                    help="prefix-affinity routing: seconds a request may wait for the server whose KV cache "
                         "holds the longest prefix of its prompt (0: any free server)")
    ap.add_argument("--no-overhead", action="store_true", help="skip the overhead/scheduling part")
    ap.add_argument("--fresh", action="store_true", help="discard this mode's saved progress")
    ap.add_argument("--redo", help="comma-separated substrings: run the matching systems again even where "
                                   "finished (e.g. after a change to lmgraph); the newest record counts")
    ap.add_argument("--retry-failed", action="store_true",
                    help="run again the units whose last run failed with an exception (by default a "
                         "recorded failure is final and shows as FAILED in the results)")
    ap.add_argument("--stop-by", help="HH:MM or ISO date-time (e.g. the end of a machine session): stop "
                                       "then, the unit in progress keeps its journal and resumes on the next "
                                       "run; units that finished units suggest would not end by then go last")
    ap.add_argument("--report-only", action="store_true",
                    help="write the results files from the saved progress without running anything "
                         "(e.g. the finished part of an interrupted full run)")
    ap.add_argument("--sizes", help="override every task's split sizes: TRAIN,VAL,TEST (smoke runs; results "
                                    "go to a separate state dir)")
    ap.add_argument("--date", help="names the results files (default: the date the run state "
                                   "started under, so a resumed run keeps its files; else today)")
    ap.add_argument("--restore", metavar="DATE",
                    help="seed this machine's run state from the committed results/DATE[-quick].json and "
                         "the journals of unfinished units in results/DATE[-quick]-journal/ (a fresh "
                         "machine), then go on as a resume; implies --date DATE")
    args = ap.parse_args(argv)

    if args.fresh and args.restore:
        raise SystemExit("--fresh discards the run state that --restore seeds: give one of them")
    mode = "quick" if args.quick else "full"
    # Failures are counted in the records; per-example tracebacks from DSPy's optimizers and
    # aiohttp's "Unclosed client session" notices (litellm's shared sessions) would bury the log.
    logging.getLogger("dspy").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    names = args.tasks.split(",") if args.tasks else list(QUICK_TASKS if args.quick else task_defs.ORDER)
    chosen_tasks = task_defs.all_tasks(names)
    systems = all_systems = systems_for(mode)
    if args.systems:
        pats = [p.strip().lower() for p in args.systems.split(",")]
        systems = [s for s in systems if any(p in s.name.lower() for p in pats)]
    override = Sizes(*(int(x) for x in args.sizes.split(","))) if args.sizes else None
    if override:
        mode = f"{mode}-sizes{override.train}x{override.val}x{override.test}"
    state = RunState(WORK / f"{mode}-s{args.seed}" / "records.jsonl", args.fresh)
    journals = state.path.parent / "journal"
    if args.restore:
        src = RESULTS / f"{results_stem(mode, args.restore)}.json"
        try:
            doc = json.loads(src.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--restore {args.restore}: cannot read {src} ({exc}); give the date of a "
                             f"committed results file of this mode ({mode})") from None
        if doc.get("mode") != mode or doc.get("seed") != args.seed:
            raise SystemExit(f"--restore {args.restore}: {src.name} is mode {doc.get('mode')!r} seed "
                             f"{doc.get('seed')!r}, this run is mode {mode!r} seed {args.seed}")
        added, copied = restore_state(state, doc, RESULTS / f"{results_stem(mode, args.restore)}-journal",
                                      journals)
        print(f"[suite] restored {added} unit record(s) and {copied} unfinished unit journal(s) from "
              f"{src.relative_to(HERE.parent)}", flush=True)
        args.date = args.date or args.restore
    args.date = state.run_date(args.date)
    carried = RESULTS / f"{results_stem(mode, args.date)}-journal"
    if args.fresh:
        for f in [*journals.glob("*.jsonl"), state.path.parent / "shared-test-answers.jsonl"]:
            f.unlink(missing_ok=True)
    t_start = time.perf_counter()

    # Load every split first: a missing dataset fails here, before minutes of other work.
    splits: dict[str, tuple[list, list, list]] = {}
    for task in chosen_tasks:
        splits[task.name] = task.splits(args.seed, override or (task.quick if args.quick else task.full))

    overhead = None
    stop_by = parse_stop_by(args.stop_by) if args.stop_by and not args.report_only else None
    if stop_by is not None and stop_by <= time.time():
        print(f"[suite] --stop-by {args.stop_by} has passed already: nothing run (rerun with a later time "
              "to resume)", flush=True)
        return 0
    records_before = len(state.records)

    def write_report(overhead: dict[str, Any] | None) -> None:
        import report as report_mod  # benchmarks/report.py

        latest = state.latest()
        tasks, missing = report_scope(latest, QUICK_TASKS if args.quick else task_defs.ORDER,
                                      [t.name for t in chosen_tasks], [s.name for s in all_systems])
        # wall time: this invocation's, when it made every record; else the units' own, summed
        fresh_run = not args.report_only and records_before == 0
        wall_s = time.perf_counter() - t_start if fresh_run else sum(r.get("unit_wall_s", 0) for r in latest)
        paths = report_mod.write(latest, mode=mode, date=args.date, seed=args.seed, tasks=tasks,
                                 systems=[s.name for s in all_systems], overhead=overhead, wall_s=wall_s,
                                 command=run_command(argv if argv is not None else sys.argv[1:]),
                                 server={"servers": args.servers, "threads": args.threads}, missing=missing)
        print("[suite] wrote " + ", ".join(str(p) for p in paths), flush=True)

    if args.report_only:
        write_report(None)
        return 0
    if not args.no_overhead:
        import overhead as overhead_mod  # benchmarks/overhead.py

        print(f"[suite] overhead and scheduling ({mode})", flush=True)
        overhead = overhead_mod.run_all(quick=args.quick)

    redo = [p.strip().lower() for p in args.redo.split(",")] if args.redo else []
    todo = [(t, s) for t in chosen_tasks for s in systems
            if not state.done(t.name, s.name, retry_failed=args.retry_failed)
            or any(p in s.name.lower() for p in redo)]
    from provenance import git_commit  # benchmarks/provenance.py

    commit = git_commit()
    print(f"[suite] {mode}: {len(chosen_tasks)} tasks x {len(systems)} systems; "
          f"{len(todo)} to run, {len(chosen_tasks) * len(systems) - len(todo)} already done", flush=True)
    servers: list[Any] = []
    proxy = None
    try:
        if any(s.framework in ("lmgraph", "dspy") for _, s in todo):
            servers = start_servers(args.servers, args.threads, n_ctx=4096)
            proxy = CountingProxy([s.url for s in servers], affinity_wait_s=args.affinity_wait)
            proxy.shared = SharedAnswers(state.path.parent / "shared-test-answers.jsonl")
            print(f"[suite] {len(servers)} llama.cpp server(s) x {args.threads} thread(s) behind {proxy.base_url}",
                  flush=True)
        counter = None
        inproc_lm = None
        if stop_by is not None:
            _stop_at(stop_by, servers)
        for task, system in order_units(todo, state.records, stop_by):
            sizes = override or (task.quick if args.quick else task.full)
            train, val, test = splits[task.name]
            # Labels also under the predicted field's name, so labelled demos (both frameworks)
            # find them; the metric reads the task's own label field.
            train, val = ([{**r, task.output: r[task.label_field]} for r in part] for part in (train, val))
            data = (train, val, test)
            data_sizes = {"train": len(data[0]), "val": len(data[1]), "test": len(data[2])}
            budget = 8 * (sizes.train + sizes.val) * (2 if task.name == "gsm8k" else 1)
            jpath = journals / f"{_slug(task.name)}__{_slug(system.name)}.jsonl"
            if state.done(task.name, system.name) and jpath.exists():
                jpath.unlink()  # --redo of a finished unit (left by a kill after its record was written)
            journal = Journal(jpath)
            resumed = (f" (resuming: {journal.journaled} journaled answers from {journal.segments_before} "
                       "earlier run(s))" if journal.segments_before else "")
            print(f"[suite] {task.name} / {system.name} ...{resumed}", flush=True)
            t0 = time.perf_counter()
            try:
                if proxy is not None:
                    proxy.journal = journal
                if system.framework == "dspy":
                    if counter is None:
                        counter = DSPyCounter()
                    raw = run_dspy(system, task, data, seed=args.seed, base_url=proxy.base_url, proxy=proxy,
                                   counter=counter, journal=journal)
                elif system.framework == "lmgraph":
                    from lmgraph.lm.litellm import openai_compatible

                    lm = openai_compatible(proxy.base_url, "local", json_mode="json_object", timeout=600)
                    raw = run_lmgraph(system, task, data, seed=args.seed, lm=lm, proxy=proxy, budget_calls=budget,
                                      journal=journal)
                else:
                    if inproc_lm is None:
                        from lmgraph.lm.llamacpp import LlamaCppLM

                        inproc_lm = LlamaCppLM(n_ctx=4096, n_threads=args.threads * max(1, args.servers))
                    raw = run_lmgraph(system, task, data, seed=args.seed, lm=JournalLM(inproc_lm, journal),
                                      proxy=None, budget_calls=budget, journal=journal)
                rec = summarise(task, system, raw, data_sizes)
            except Exception as exc:  # a system that fails is recorded, the suite goes on
                rec = {"task": task.name, "system": system.name, "framework": system.framework,
                       "optimizer": system.optimizer, "variant": system.variant, "main": task.main,
                       "failed": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
            finally:
                if proxy is not None:
                    proxy.journal = None
            unit_wall = time.perf_counter() - t0
            resumed_from = journal.summary()
            if resumed_from is not None:  # a resumed unit: its killed runs' time counts too
                rec["resumed"] = resumed_from
                unit_wall += journal.prior_s("compile") + journal.prior_s("test")
            if journal.shared and "test_eval" in rec:
                rec["test_eval"]["shared_answers"] = journal.shared
            rec["unit_wall_s"] = round(unit_wall, 1)
            rec["lmgraph_commit"] = commit
            if proxy is not None and system.framework != "lmgraph-inprocess":
                rec["affinity_wait_s"] = args.affinity_wait
                if args.affinity_wait > 0:  # with no wait the proxy takes any free server
                    rec["routing"] = ROUTING
            state.add(rec)
            journal.close(delete=True)  # the record holds what it was for
            (carried / jpath.name).unlink(missing_ok=True)
            if "failed" in rec:
                print(f"[suite]   FAILED: {rec['failed']}", flush=True)
            else:
                c = rec["compile"] or {}
                print(f"[suite]   {task.main} {rec['test'][task.main]['mean']:.3f} {rec['test'][task.main]['ci95']} "
                      f"parse-fail {rec['parse_failure_rate']:.2f} compile calls {c.get('calls', 0)} "
                      f"requests {c.get('requests', 0)} ({rec['unit_wall_s']} s)", flush=True)
    finally:
        if proxy is not None:
            proxy.close()
        for s in servers:
            s.stop()
        if not override:  # a smoke run's state is not published
            for kept in carry_journals(journals, carried):
                print(f"[suite] unfinished unit's journal kept in {kept.relative_to(HERE.parent)}: commit it "
                      f"with the results; on another machine `--restore {args.date}` resumes it", flush=True)
        if carried.is_dir() and not any(carried.iterdir()):
            carried.rmdir()

    write_report(overhead)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
