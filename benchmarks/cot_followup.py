"""The GSM8K chain-of-thought program in the chat (or JSON) format, on the first VALIDATION rows
of the suite's seeded split (never the test rows), against a loopback llama.cpp server with the
embedded SmolLM2-135M: accuracy, parse failures, calls, and what each row's answer was.

It is the measurement behind the follow-up call for missing fields (see ``ChatFormat.continuation``,
``JSONFormat.continuation`` and benchmarks/README.md, GSM8K). To compare the chat follow-up with the
JSON-only one it replaced, run it once at commit c365218 (e.g. in a ``git worktree``) and once here;
for the JSON format, ``--format json --instruction signature`` (the program ``lg.compile`` chose on
GSM8K) once with ``--no-continuation`` (the whole-object repair every JSON reply got before) and once
without.

    benchmarks/.work/venv/bin/python benchmarks/cot_followup.py [--rows 20] [--format chat|json]
        [--instruction task|signature] [--no-continuation] [--in-process] [--out FILE]
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
from lmgraph.lm.prompt import get_format
from lmgraph.lm.server import LlamaServer
from lmgraph.optimizers.candidates import signature_instruction

from provenance import git_commit  # benchmarks/provenance.py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20, help="the first N validation rows (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="the suite's split seed (default 0)")
    ap.add_argument("--format", choices=("chat", "json"), default="chat", help="the node's prompt format")
    ap.add_argument("--instruction", choices=("task", "signature"), default="task",
                    help="the task's instruction, or the one lg.compile writes from the signature")
    ap.add_argument("--no-continuation", action="store_true",
                    help="the format's whole-object repair instead of the follow-up for missing fields")
    ap.add_argument("--in-process", action="store_true",
                    help="the embedded model in-process (llama-cpp-python) instead of its server")
    ap.add_argument("--out", help="also write the figures and per-row answers here (JSON)")
    args = ap.parse_args()

    _, val, _ = gsm8k.splits(args.seed, gsm8k.TASK.full)
    rows = val[:args.rows]
    program = gsm8k.lmgraph_program()
    changes: dict[str, object] = {"solve.format": args.format}
    if args.instruction == "signature":
        changes["solve.instructions"] = signature_instruction(program.module("solve").signature)
    program = program.with_parameters(changes)
    if args.no_continuation:
        fmt = get_format(args.format)
        fmt.continuation = lambda *a, **k: None  # type: ignore[method-assign]  # this process only
    server = None if args.in_process else LlamaServer(n_ctx=4096, n_threads=2, startup_timeout=120).start()
    try:
        if server is None:
            from lmgraph.lm.llamacpp import LlamaCppLM

            lm: object = LlamaCppLM(n_ctx=4096)
        else:
            lm = openai_compatible(server.base_url, "local", json_mode="json_object", timeout=600)
        ctx = lg.RunContext(lm=lm, cache=False, max_concurrency=1)
        res = evaluate_sync(program, rows, lambda ex, pred, trace=None: gsm8k.numeric(ex, pred),
                            ctx=ctx, concurrency=1)
    finally:
        if server is not None:
            server.stop()
    per_row = [{"gold": parse_number(ex["answer"]), "answer": (r.outputs or {}).get("answer"),
                "error": str(r.error) if r.error else None,
                # each call's reply where the row failed to parse: what the model wrote
                "replies": [c.response.text if c.response else None for c in r.trace.node("solve").calls]
                if r.error and r.trace else None} for r, ex in zip(res.results, rows)]
    summary = {"lmgraph_commit": git_commit(), "format": args.format, "instruction": args.instruction,
               "continuation": not args.no_continuation,
               "backend": "in-process" if args.in_process else "server", "rows": len(rows),
               "correct": int(sum(res.scores)),
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
