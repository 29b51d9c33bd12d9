"""Is the output format a per-node lever on the graph tasks? The default compiler's format
candidates set one format on every node ("json, zero-shot"); JointSearch chooses one per node, and
its pick on multi-hop HotPotQA in the suite (generate_query: chat, answer: json) scored F1 0.163
against ``lg.compile``'s 0.123 (``results/2026-12-07.md``). This scores, zero-shot, every
assignment of {as given, json} to the program's format nodes, plus ``--extra`` assignments, on the
same test rows as the oracle grid, and each against the all-nodes JSON program (paired):

    .venv/bin/python benchmarks/pernode_formats.py --task hotpotqa_multihop --seeds 0,1 --rows 200 --test 50

Diagnostic only, like the grid (``benchmarks/headroom.py``): scored ON THE TEST ROWS, never used for
selection. Each (task, seed, assignment) is appended to ``results/headroom-graph/pernode_formats.jsonl``
as it finishes (a rerun skips what is there) and ``pernode_formats.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import headroom  # noqa: E402

import lmgraph as lg  # noqa: E402
from lmgraph.evaluation import evaluate_sync, paired_bootstrap  # noqa: E402
from lmgraph.lm.llamacpp import LlamaCppLM  # noqa: E402
from lmgraph.optimizers.candidates import tunable_modules  # noqa: E402

from tasks import load  # noqa: E402

OUT = HERE / "results" / "headroom-graph"
ALL_JSON = "every node: json"


def assignments(program: lg.Program, extra: list[str]) -> dict[str, dict[str, str]]:
    """Label -> {node: format}: zero-shot as given, every non-empty subset of the format nodes on
    json (the full set labelled ``ALL_JSON``), and each ``--extra`` ("node=fmt,node=fmt")."""
    nodes = [n for n, m in tunable_modules(program).items() if "format" in m.tunable]
    out: dict[str, dict[str, str]] = {"zero-shot (as given)": {}}
    for r in range(1, len(nodes) + 1):
        for sub in itertools.combinations(nodes, r):
            label = ALL_JSON if r == len(nodes) else "json on " + ", ".join(sub)
            out[label] = {n: "json" for n in sub}
    for spec in extra:
        pairs = dict(p.split("=", 1) for p in spec.split(","))
        unknown = set(pairs) - set(nodes)
        if unknown:
            raise SystemExit(f"--extra {spec!r}: no format node {sorted(unknown)}; the nodes are {nodes}")
        out[", ".join(f"{n}: {f}" for n, f in pairs.items())] = pairs
    return out


def measure(task_name: str, seed: int, label: str, formats: dict[str, str], rows: int, test: int) -> dict:
    args = SimpleNamespace(rows=rows, test=test, budget=0, grid=3)
    task = load(task_name)
    _train, _val, test_rows = headroom.splits(task, seed, args)
    program = task.lmgraph_program()
    if formats:
        program = program.with_parameters({f"{n}.format": f for n, f in formats.items()})
    ctx = lg.RunContext(lm=LlamaCppLM(), max_concurrency=2)
    res = evaluate_sync(program, test_rows, headroom._metric(task), ctx=ctx, concurrency=2)
    print(f"{task_name} seed {seed} {label}: {res.mean:.4f} [{res.ci[0]:.3f}, {res.ci[1]:.3f}]", flush=True)
    return {"task": task_name, "seed": seed, "test_n": len(test_rows), "config": label, "formats": formats,
            "mean": round(res.mean, 4), "ci": [round(x, 4) for x in res.ci], "calls": res.usage.get("calls"),
            "unparsed": sum(1 for r in res.results if r.error), "scores": [round(s, 4) for s in res.scores],
            "program_hash": program.content_hash(), "runtime": headroom.compile_default.RUNTIME_REV}


def render(units: list[dict]) -> str:
    lines = ["# Output format per node, zero-shot, on the graph tasks' test rows", "",
             "`.venv/bin/python benchmarks/pernode_formats.py --task <task> --seeds <seeds> --rows 200 --test 50` -- "
             "SmolLM2-135M-Instruct Q4_1 (embedded llama.cpp, greedy), the task's program with each node's "
             "format set as shown (no demos, no instruction change). Diagnostic only: scored on the TEST rows "
             "(the oracle grid's, `README.md`), never used for selection. Paired differences by bootstrap "
             "over the test rows.", ""]
    keys = sorted({(u["task"], u["seed"]) for u in units})
    for task, seed in keys:
        mine = [u for u in units if (u["task"], u["seed"]) == (task, seed)]
        base = next((u for u in mine if not u["formats"]), None)
        ref = next((u for u in mine if u["config"] == ALL_JSON), None)
        lines += [f"## {task} seed {seed} (n={mine[0]['test_n']})", "",
                  "| formats | test mean [95% CI] | vs zero-shot [95% CI] | vs every node json [95% CI] | calls | "
                  "rows failed |", "|---|---|---|---|---|---|"]
        for u in mine:
            cells = []
            for other in (base, ref):
                if other is None or other is u:
                    cells.append("-")
                    continue
                pb = paired_bootstrap(other["scores"], u["scores"])
                cells.append(f"{pb['diff']:+.3f} [{pb['ci_low']:+.3f}, {pb['ci_high']:+.3f}]")
            lines.append(f"| {u['config']} | {u['mean']:.3f} [{u['ci'][0]:.3f}, {u['ci'][1]:.3f}] | "
                         f"{cells[0]} | {cells[1]} | {u['calls']} | {u['unparsed']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="hotpotqa_multihop")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--rows", type=int, default=200, help="labelled rows, as in headroom.py (fixes the test split)")
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--extra", action="append", default=[],
                    help='another assignment, "node=fmt,node=fmt" (default: JointSearch\'s suite pick on multi-hop)')
    args = ap.parse_args()
    extra = args.extra or (["generate_query=chat,answer=json"] if args.task == "hotpotqa_multihop" else [])
    path = OUT / "pernode_formats.jsonl"
    task = load(args.task)
    for seed in (int(s) for s in args.seeds.split(",")):
        for label, formats in assignments(task.lmgraph_program(), extra).items():
            done = {(u["task"], u["seed"], u["test_n"], u["config"]) for u in headroom.read_lines(path)}
            if (args.task, seed, args.test, label) in done:
                continue
            headroom.append_line(path, measure(args.task, seed, label, formats, args.rows, args.test))
            (OUT / "pernode_formats.md").write_text(render(headroom.read_lines(path)))
    print(render(headroom.read_lines(path)))


if __name__ == "__main__":
    main()
