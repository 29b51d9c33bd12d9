"""Does this machine give the published answers? Rerun zero-shot units and compare predictions.

A full run spans machines (each session may get a new one, with another CPU and a freshly built
llama-cpp-python), and its units are only comparable if the model answers the same requests the
same way on each. Zero-shot units make no compile call, so they are the cheap probe: this reruns
their test sets through the suite's own servers and proxy, with the suite's own code, and
compares each prediction with the one recorded in ``results/<date>.json``.

    benchmarks/.work/venv/bin/python benchmarks/same_answers.py --date 2026-11-24 \\
        --units "trec/lmgraph zero-shot,banking77/DSPy zero-shot [json]"

Writes ``results/same-answers-<today>.json`` (per unit: rows, identical predictions, score then
and now, the first differing rows, every prediction made now) and prints a line per unit.
Nothing is written to the run state.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import signal
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import suite  # noqa: E402  (benchmarks/suite.py)
import tasks as task_defs  # noqa: E402


def compare(recorded: list[Any], now: list[Any]) -> dict[str, Any]:
    """How many predictions agree, and the first rows that do not."""
    if len(recorded) != len(now):
        raise ValueError(f"{len(recorded)} recorded predictions vs {len(now)} now: not the same test split")
    diff = [i for i, (a, b) in enumerate(zip(recorded, now)) if a != b]
    return {"rows": len(now), "identical": len(now) - len(diff),
            "first_differences": [{"row": i, "recorded": recorded[i], "now": now[i]} for i in diff[:5]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--date", required=True, help="the results file to compare with (results/DATE.json)")
    ap.add_argument("--units", required=True, help="comma-separated task/system pairs of zero-shot units")
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    doc = json.loads((suite.RESULTS / f"{args.date}.json").read_text())
    records = {(r["task"], r["system"]): r for r in doc["records"]}
    systems = {s.name: s for s in suite.systems_for(doc["mode"])}
    units = []
    for item in args.units.split(","):
        task_name, _, system_name = item.strip().partition("/")
        rec = records.get((task_name, system_name))
        system = systems.get(system_name)
        if rec is None or system is None or "failed" in rec:
            raise SystemExit(f"{item!r}: no finished unit of that name in results/{args.date}.json")
        if system.optimizer != "zero-shot" or system.framework == "lmgraph-inprocess":
            raise SystemExit(f"{item!r}: only zero-shot units over the server are rerun here (no compile)")
        units.append((task_defs.all_tasks([task_name])[0], system, rec))

    # a kill (SIGTERM) unwinds like Ctrl-C, so the servers below are stopped, not orphaned
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    servers = suite.start_servers(args.servers, args.threads, n_ctx=4096)
    proxy = suite.CountingProxy([s.url for s in servers], affinity_wait_s=5.0)
    out: dict[str, Any] = {"compared_with": f"results/{args.date}.json", "date": _dt.date.today().isoformat(),
                           "machine": platform.machine(), "units": []}
    try:
        counter = None
        for task, system, rec in units:
            data = (([], [], task.splits(doc["seed"], task.full)[2]))
            if system.framework == "dspy":
                counter = counter or suite.DSPyCounter()
                raw = suite.run_dspy(system, task, data, seed=doc["seed"], base_url=proxy.base_url,
                                     proxy=proxy, counter=counter)
            else:
                from lmgraph.lm.litellm import openai_compatible

                lm = openai_compatible(proxy.base_url, "local", json_mode="json_object", timeout=600)
                raw = suite.run_lmgraph(system, task, data, seed=doc["seed"], lm=lm, proxy=proxy, budget_calls=0)
            entry = {"task": task.name, "system": system.name, **compare(rec["predictions"], raw["predictions"]),
                     "score_recorded": rec["test"][task.main]["mean"],
                     "score_now": round(suite.mean(raw["scores"][task.main]), 4),
                     "recorded_at_commit": rec.get("lmgraph_commit"), "predictions_now": raw["predictions"]}
            out["units"].append(entry)
            print(f"[same-answers] {task.name} / {system.name}: {entry['identical']}/{entry['rows']} identical; "
                  f"{task.main} {entry['score_recorded']} then, {entry['score_now']} now", flush=True)
    finally:
        proxy.close()
        for s in servers:
            s.stop()
    path = suite.RESULTS / f"same-answers-{out['date']}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"[same-answers] wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
