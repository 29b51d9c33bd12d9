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
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import tasks as task_defs  # noqa: E402
from answers import ROUTING, CountingProxy, Journal, SharedAnswers  # noqa: E402
from suite_dspy import MAX_ERRORS, DSPyCounter, _dspy_optimizer, run_dspy  # noqa: E402,F401

# The systems (suite_systems.py) and DSPy's side (suite_dspy.py); re-exported: callers and tests
# reach them as suite.<name>.
from suite_systems import (  # noqa: E402,F401
    QUICK_OPT_IN,
    ModelUnavailable,
    Runners,
    System,
    _lmgraph_optimizer,
    _timed,
    run_lmgraph,
    systems_for,
)
from tasks import Sizes, Task  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE / ".work" / "runs"


QUICK_TASKS = ("trec", "sst2")
# a unit's compile budget: this many model calls per train+val row (twice that on GSM8K); a
# system's own "budget_per_row" setting overrides it
BUDGET_PER_ROW = 8


# --------------------------------------------------------------------------- statistics

def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def bootstrap_ci(xs: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> list[float]:
    from lmgraph.evaluation import bootstrap_ci as ci

    lo, hi = ci(list(xs), n_resamples=resamples, seed=seed)
    return [round(lo, 4), round(hi, 4)]


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
    return " ".join(["bash benchmarks/run.sh", *_without(argv, _PACING_OPTS, _PACING_FLAGS)])


def _without(argv: Sequence[str], opts: Sequence[str], flags: Sequence[str] = ()) -> list[str]:
    """``argv`` less the options ``opts`` (with their values, spaced or ``=``) and the flags ``flags``."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in opts:
            skip = True
        elif a not in flags and not a.startswith(tuple(o + "=" for o in opts)):
            kept.append(a)
    return kept


_SESSION_OPTS = ("--stop-by", "--restore")


def invocation(argv: Sequence[str]) -> str:
    """The ``suite.py`` invocation that ran a unit: its arguments less those that only pace a machine
    session (``--stop-by``, ``--restore``), so that units run by ``--tasks``/``--systems`` invocations
    say which, where the results files' command is the plain run that resumes what is missing."""
    return " ".join(["python benchmarks/suite.py", *(shlex.quote(a) for a in _without(argv, _SESSION_OPTS))])


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


def pick_systems(systems: Sequence[System], patterns: str | None, quick: bool) -> list[System]:
    """The systems an invocation runs: those whose name contains one of the comma-separated
    ``patterns`` (``--systems``); without patterns all of them, less (quick mode) the opt-in
    rows of ``QUICK_OPT_IN``, which run only when named. A pattern that starts with ``=`` names one
    system exactly (``=lmgraph Compile`` leaves out ``lmgraph Compile (in-process)``)."""
    if patterns:
        pats = [p.strip().lower() for p in patterns.split(",") if p.strip()]
        exact = {p[1:].strip() for p in pats if p.startswith("=")}
        subs = [p for p in pats if not p.startswith("=")]
        picked = [s for s in systems if s.name.lower() in exact or any(p in s.name.lower() for p in subs)]
        unknown = exact - {s.name.lower() for s in systems}
        if unknown:
            raise SystemExit(f"--systems: no system is named {sorted(unknown)}; the names are "
                             f"{[s.name for s in systems]}")
        return picked
    return [s for s in systems if not (quick and s.name in QUICK_OPT_IN)]


# optional packages that a DSPy optimizer imports only when it runs (after the units before it)
OPTIONAL_DEPS = {"MIPROv2": "optuna"}


def missing_optional(systems: Sequence[System]) -> list[str]:
    """The systems whose optimizer needs a package this interpreter lacks, as messages -- found before
    the run starts, not as a FAILED unit an hour into it."""
    import importlib.util
    out = []
    for s in systems:
        dep = OPTIONAL_DEPS.get(s.optimizer) if s.framework == "dspy" else None
        if dep and importlib.util.find_spec(dep) is None:
            out.append(f"{s.name} needs {dep}")
    return out


def unit_budget(task_name: str, system: System, rows: int) -> int:
    """A unit's compile budget in model calls: ``BUDGET_PER_ROW`` (or the system's own
    ``budget_per_row``) per train+val row, twice that on GSM8K."""
    per_row = int(system.opts().get("budget_per_row", BUDGET_PER_ROW))
    return per_row * rows * (2 if task_name == "gsm8k" else 1)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _stop_at(when: float, servers: Sequence[Any], grace_s: float = 90.0,
             reached: threading.Event | None = None) -> threading.Thread:
    """At ``when``, end the run as a kill would (SIGTERM: servers stopped, the unit in progress
    keeps its journal); if it has not ended ``grace_s`` later, stop the servers and exit.
    ``reached`` is set first, so the run can tell a stop it asked for from a kill."""
    def watch() -> None:
        time.sleep(max(0.0, when - time.time()))
        if reached is not None:
            reached.set()
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
    ap.add_argument("--redo", help="comma-separated substrings (=NAME: that system exactly, as in --systems): "
                                   "run the matching systems again even where finished (e.g. after a change "
                                   "to lmgraph); the newest record counts")
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
    all_systems = systems_for(mode)
    systems = pick_systems(all_systems, args.systems, args.quick)
    missing_deps = [] if args.report_only else missing_optional(systems)  # --report-only runs nothing
    if missing_deps:
        raise SystemExit("; ".join(missing_deps) + f" -- not importable by {sys.executable}: run the suite with "
                         "benchmarks/.work/venv/bin/python (bash benchmarks/setup.sh installs them there), or "
                         "leave those systems out with --systems")
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
    stop_reached = threading.Event()  # set by --stop-by

    def write_report(overhead: dict[str, Any] | None) -> None:
        import report as report_mod  # benchmarks/report.py

        latest = state.latest()
        shown = [s.name for s in all_systems if s.name not in QUICK_OPT_IN or not args.quick or s in systems
                 or any(r["system"] == s.name for r in latest)]
        tasks, missing = report_scope(latest, QUICK_TASKS if args.quick else task_defs.ORDER,
                                      [t.name for t in chosen_tasks], shown)
        # wall time: this invocation's, when it made every record; else the units' own, summed
        fresh_run = not args.report_only and records_before == 0 and not stop_reached.is_set()
        wall_s = time.perf_counter() - t_start if fresh_run else sum(r.get("unit_wall_s", 0) for r in latest)
        paths = report_mod.write(latest, mode=mode, date=args.date, seed=args.seed, tasks=tasks,
                                 systems=shown, overhead=overhead, wall_s=wall_s,
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

    redo = {s.name for s in pick_systems(systems, args.redo, args.quick)} if args.redo else set()
    todo = [(t, s) for t in chosen_tasks for s in systems
            if not state.done(t.name, s.name, retry_failed=args.retry_failed) or s.name in redo]
    from provenance import git_commit  # benchmarks/provenance.py

    commit = git_commit()
    made_with = invocation(argv if argv is not None else sys.argv[1:])
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
        runners = Runners(proxy, n_threads=args.threads * max(1, args.servers))
        if stop_by is not None:
            _stop_at(stop_by, servers, reached=stop_reached)
        for task, system in order_units(todo, state.records, stop_by):
            sizes = override or (task.quick if args.quick else task.full)
            train, val, test = splits[task.name]
            # Labels also under the predicted field's name, so labelled demos (both frameworks)
            # find them; the metric reads the task's own label field.
            train, val = ([{**r, task.output: r[task.label_field]} for r in part] for part in (train, val))
            data = (train, val, test)
            data_sizes = {"train": len(data[0]), "val": len(data[1]), "test": len(data[2])}
            budget = unit_budget(task.name, system, sizes.train + sizes.val)
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
                raw = runners.run(system, task, data, seed=args.seed, budget=budget, journal=journal)
                rec = summarise(task, system, raw, data_sizes)
            except Exception as exc:  # a system that fails is recorded, the suite goes on
                rec = {"task": task.name, "system": system.name, "framework": system.framework,
                       "optimizer": system.optimizer, "variant": system.variant, "main": task.main,
                       "failed": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
                if isinstance(exc, ModelUnavailable):  # not run at all: say why, no traceback
                    rec.update(failed=f"skipped: no second model ({exc})", skipped=str(exc), traceback="")
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
            rec["invocation"] = made_with
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
        if stop_reached.is_set() and len(state.records) > records_before:
            write_report(overhead)  # the units finished before the stop are published too

    write_report(overhead)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
