"""The GSM8K chain-of-thought program in the chat format, on the first VALIDATION rows of the
suite's seeded split (never the test rows), against a loopback llama.cpp server with the
embedded SmolLM2-135M: accuracy, parse failures, calls, and what each row's answer was.

It is the measurement behind the chat format's follow-up call for missing fields (see
``ChatFormat.continuation`` and benchmarks/README.md, GSM8K). To compare with the JSON-only
follow-up it replaced, run it once at commit c365218 (e.g. in a ``git worktree``) and once here.

    benchmarks/.work/venv/bin/python benchmarks/cot_followup.py [--rows 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmgraph as lg
from benchmarks.tasks import gsm8k
from lmgraph.evaluation import evaluate_sync, parse_number
from lmgraph.lm.litellm import openai_compatible
from lmgraph.lm.server import LlamaServer

from provenance import git_commit  # benchmarks/provenance.py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20, help="the first N validation rows (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="the suite's split seed (default 0)")
    ap.add_argument("--out", help="also write the figures and per-row answers here (JSON)")
    args = ap.parse_args()

    _, val, _ = gsm8k.splits(args.seed, gsm8k.TASK.full)
    rows = val[:args.rows]
    server = LlamaServer(n_ctx=4096, n_threads=2, startup_timeout=120).start()
    try:
        lm = openai_compatible(server.base_url, "local", json_mode="json_object", timeout=600)
        ctx = lg.RunContext(lm=lm, cache=False, max_concurrency=1)
        res = evaluate_sync(gsm8k.lmgraph_program(), rows, lambda ex, pred, trace=None: gsm8k.numeric(ex, pred),
                            ctx=ctx, concurrency=1)
    finally:
        server.stop()
    per_row = [{"gold": parse_number(ex["answer"]), "answer": (r.outputs or {}).get("answer"),
                "error": str(r.error) if r.error else None} for r, ex in zip(res.results, rows)]
    summary = {"lmgraph_commit": git_commit(), "rows": len(rows), "correct": int(sum(res.scores)),
               "parse_failure_rate": res.parse_failure_rate, "calls": res.usage.get("calls"),
               "wall_s": round(res.wall_s, 1)}
    print(json.dumps(summary))
    for row in per_row:
        print(json.dumps(row)[:300])
    if args.out:
        Path(args.out).write_text(json.dumps({**summary, "per_row": per_row}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
