"""Provider faults never change a result: compiles and batches against a loopback
OpenAI-compatible server that injects faults (tests/fault_server.py), through both HTTP backends.

Scenarios (each through ``OpenAIServerLM`` and litellm's ``openai_compatible``):

* compile -- BootstrapRandomSearch over a small scripted sentiment task, fault-free and then with
  20% of requests faulted (429 with retry-after-ms or an HTTP-date Retry-After, 500, 503,
  connection resets, stalls past the client timeout, truncated JSON, bodies cut mid-transfer, an
  HTML page instead of JSON), for three fault seeds; and with truncated bodies alone (20%). The
  artifact bytes (``save_artifact``) must equal the fault-free ones.
* rate limit -- a 300-row batch at concurrency 64 behind a 50 req/s token bucket answering 429
  with ``Retry-After: 1``: rows lost, requests, wall time.

In every scenario the budget's request count is compared with what the server received.
Writes benchmarks/results/faults.json and faults.md.

    .venv/bin/python benchmarks/faults.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import lmgraph as lg  # noqa: E402
from lmgraph.cache import MemoryCache  # noqa: E402
from lmgraph.evaluation import label_accuracy  # noqa: E402
from lmgraph.lm.faults import reset_rate_limiters  # noqa: E402
from lmgraph.optimizers import BootstrapRandomSearch, save_artifact  # noqa: E402

from fault_server import FAULTS, FaultServer  # noqa: E402
from helpers import sentiment_program, sentiment_rows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def answer(text: str) -> str:
    """Canned answers: right when the prompt holds demos, else always 'positive'."""
    has_demo = text.count("Sentence:") > 1
    last = re.findall(r"Sentence: (.*)", text)[-1]
    return " " + (("positive" if "good" in last else "negative") if has_demo else "positive")


def client(kind: str, url: str, timeout: float):  # noqa: ANN201
    if kind == "OpenAIServerLM":
        from lmgraph.lm.openai_http import OpenAIServerLM

        return OpenAIServerLM(url, timeout=timeout)
    from lmgraph.lm.litellm import openai_compatible

    return openai_compatible(url, timeout=timeout)


def compile_once(kind: str, srv: FaultServer, work: Path, name: str) -> dict:
    rows = sentiment_rows(40, period=3)
    ctx = lg.RunContext(lm=client(kind, srv.base_url, timeout=1.0), cache=MemoryCache())  # default retries
    opt = BootstrapRandomSearch(2, num_candidates=4, concurrency=8, checkpoint=work / f"{name}.ckpt")
    t0 = time.perf_counter()
    new, rep = opt.optimize(sentiment_program(), rows[:20], label_accuracy(), valset=rows[20:], ctx=ctx,
                            budget=lg.Budget(max_calls=800))
    wall = time.perf_counter() - t0
    data = save_artifact(work / f"{name}.json", new, rep).read_bytes()
    ckpt = (work / f"{name}.ckpt").read_text(encoding="utf-8")
    return {"sha256": hashlib.sha256(data).hexdigest(), "baseline": round(rep.baseline.mean, 4),
            "best": round(rep.best.mean, 4), "calls": rep.spent["calls"], "requests": rep.faults["requests"],
            "server_received": srv.received, "injected": {k: v for k, v in sorted(srv.outcomes.items()) if k != "ok"},
            "rows_rerun": rep.faults["rows_without_answer"], "reruns": rep.faults["reruns"],
            "errors_in_checkpoint": ckpt.count("LMError"), "wall_s": round(wall, 2)}


def compile_scenarios(kinds: list[str], seeds: list[int]) -> list[dict]:
    out = []
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp, FaultServer(answer, stall_s=2.0) as srv:
            work = Path(tmp)
            reset_rate_limiters()
            clean = compile_once(kind, srv, work, "clean")
            out.append({"scenario": "compile", "backend": kind, "faults": "none", **clean, "identical": True})
            print(f"{kind}: fault-free {clean}", flush=True)
            plans = [(f"20% mixed (seed {s})", s, FAULTS) for s in seeds] + [("20% truncated", 0, ("truncated",))]
            for label, seed, faults in plans:
                srv.reset_counts()
                srv.seed, srv.fault_rate, srv.faults = seed, 0.2, tuple(faults)
                got = compile_once(kind, srv, work, f"faulty-{seed}-{len(faults)}")
                got["identical"] = got["sha256"] == clean["sha256"]
                out.append({"scenario": "compile", "backend": kind, "faults": label, **got})
                print(f"{kind}: {label} {got}", flush=True)
    return out


def rate_limit_scenarios(kinds: list[str], rows: int = 300, concurrency: int = 64, limit: int = 50) -> list[dict]:
    out = []
    for kind in kinds:
        reset_rate_limiters()
        with FaultServer(answer, rate_limit=limit) as srv:
            lm = client(kind, srv.base_url, timeout=30.0)
            ctx = lg.RunContext(lm=lm, cache=False, max_concurrency=concurrency, budget=lg.Budget())
            t0 = time.perf_counter()
            results = sentiment_program().batch_sync(sentiment_rows(rows), ctx=ctx, concurrency=concurrency)
            wall = time.perf_counter() - t0
            snap = ctx.budget_meter.snapshot()
            rec = {"scenario": "rate limit", "backend": kind, "rows": rows, "concurrency": concurrency,
                   "limit_rps": limit, "lost_rows": sum(not r.ok for r in results), "calls": snap["calls"],
                   "requests": snap["requests"], "server_received": srv.received,
                   "answered_429": srv.outcomes["rate-limited"], "wall_s": round(wall, 2),
                   "rows_per_s": round(rows / wall, 1), "learned_rate": lm.rate_limiter.snapshot()["rate"]}
        out.append(rec)
        print(f"{kind}: {rec}", flush=True)
    return out


def markdown(records: list[dict], command: str) -> str:
    lines = ["# Provider faults (benchmarks/faults.py)", "", f"Command: `{command}`", "",
             "## Compile at 20% injected faults vs fault-free (BootstrapRandomSearch, 20 train / 20 val rows)", "",
             "| backend | faults | artifact identical | baseline | best | calls | requests (budget) | "
             "server received | injected | rows re-run | errors in checkpoint | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["scenario"] != "compile":
            continue
        inj = sum(r["injected"].values())
        lines.append(f"| {r['backend']} | {r['faults']} | {'yes' if r['identical'] else '**no**'} | {r['baseline']} | "
                     f"{r['best']} | {r['calls']} | {r['requests']} | {r['server_received']} | {inj} | "
                     f"{r['rows_rerun']} | {r['errors_in_checkpoint']} | {r['wall_s']} |")
    lines += ["", "## A 300-row batch at concurrency 64 behind a 50 req/s limiter (429 + Retry-After: 1)", "",
              "| backend | lost rows | calls | requests (budget) | server received | 429s | wall s | rows/s | "
              "learned rate (req/s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["scenario"] == "rate limit":
            lines.append(f"| {r['backend']} | {r['lost_rows']} | {r['calls']} | {r['requests']} | "
                         f"{r['server_received']} | {r['answered_429']} | {r['wall_s']} | {r['rows_per_s']} | "
                         f"{r['learned_rate']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--backends", nargs="+", default=["OpenAIServerLM", "openai_compatible"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t0 = time.perf_counter()
    records = compile_scenarios(args.backends, args.seeds) + rate_limit_scenarios(args.backends)
    ok = all(r.get("identical", True) for r in records) and all(
        r.get("lost_rows", 0) == 0 and r["requests"] == r["server_received"] for r in records)
    args.out.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python benchmarks/faults.py"
    (args.out / "faults.json").write_text(json.dumps(
        {"command": command, "date": time.strftime("%Y-%m-%d"), "all_ok": ok,
         "wall_s": round(time.perf_counter() - t0, 1), "records": records}, indent=2) + "\n", encoding="utf-8")
    (args.out / "faults.md").write_text(markdown(records, command), encoding="utf-8")
    print(f"all ok: {ok}; wrote {args.out / 'faults.json'} and faults.md in {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
