"""A compile report as one self-contained HTML page, and small HTML views for notebooks.

``render(source)`` takes a compiled artifact's path (``save_artifact``) or a ``(program, report)``
pair straight from an optimizer and returns one HTML document: the program drawn as an inline
SVG graph (its Mermaid source alongside, as text), every candidate's score with its 95% CI
against the calls spent (a matplotlib plot inlined as SVG: ``pip install 'lmgraph[report]'``),
the accepted path, what changed per node and each node's prompt before and after (with
``baseline=``), per-node calls and tokens, and per-example wins and losses against the baseline.
Nothing in the page is fetched: no CDN, no web font, no external script (its Content-Security-
Policy refuses them). ``lmgraph report ARTIFACT -o report.html`` writes it from the command line.

``program_html`` / ``report_html`` / ``trace_html`` are the small views behind
``Program._repr_html_``, ``Report._repr_html_`` and ``Trace._repr_html_``.
"""

from __future__ import annotations

import difflib
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DefinitionError, LmgraphError

if TYPE_CHECKING:
    from .optimizers.report import Report
    from .pipeline.program import Program
    from .pipeline.trace import Trace

_CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;font-size:14px;margin:24px auto;max-width:1180px;
color:#111827;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #e5e7eb;
padding-bottom:4px}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #e5e7eb;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f4f6;cursor:default}th.sortable{cursor:pointer}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{background:#f9fafb;border:1px solid #e5e7eb;padding:8px;overflow-x:auto;
white-space:pre-wrap;font-size:12px;margin:4px 0}
.muted{color:#6b7280}.note{color:#374151;margin:4px 0}.best{background:#ecfdf5}.path{font-weight:bold}
.win{background:#bbf7d0}.loss{background:#fecaca}.tie{background:#f3f4f6}.none{background:#fff}
table.grid td{padding:0 4px;text-align:center;font-size:11px;min-width:14px}
.add{background:#dcfce7;display:block}.del{background:#fee2e2;display:block}.hunk{color:#6b7280;display:block}
.ctx{display:block}
.figure{overflow-x:auto;border:1px solid #e5e7eb;padding:6px;margin:6px 0;background:#fff}
.status{font-size:12px}
"""

# sorts a table by a clicked header (numbers numerically); marks the page ready when it ran
_JS = """
(function(){
  document.querySelectorAll("table.sortable").forEach(function(t){
    t.querySelectorAll("th").forEach(function(th,i){
      th.classList.add("sortable");
      th.addEventListener("click",function(){
        var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=th.dataset.dir!=="asc";
        rows.sort(function(a,b){
          var x=a.cells[i].dataset.v||a.cells[i].textContent,y=b.cells[i].dataset.v||b.cells[i].textContent;
          var nx=parseFloat(x),ny=parseFloat(y);
          var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;
          return asc?c:-c;});
        rows.forEach(function(r){body.appendChild(r);});
        th.dataset.dir=asc?"asc":"desc";});});});
  document.documentElement.dataset.ready="1";
})();
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "font-src 'none'; connect-src 'none'")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    return f'<td class="num" data-v="{_e(value)}">{_e(fmt.format(value))}</td>'


class _ViewOnly(dict[str, Any]):
    """Resources for drawing a saved program: any name resolves to a stub that refuses to run."""

    def __missing__(self, name: str) -> Any:
        def unbound(*args: Any, **kwargs: Any) -> Any:
            raise DefinitionError(f"resource {name!r} is not bound in a report",
                                  fix="load the program with Program.load(path, resources={...}) to run it.")
        unbound.__name__ = name
        return unbound


def _load(path: str | Path, **kw: Any) -> tuple[Program, dict[str, Any]]:
    from .optimizers.artifact import load_artifact

    return load_artifact(path, resources=_ViewOnly(), **kw)


def _as_program(value: Program | str | Path | None) -> Program | None:
    from .pipeline.program import Program

    if value is None or isinstance(value, Program):
        return value
    return Program.load(value, resources=_ViewOnly())


# --------------------------------------------------------------------------- the page

def render(source: str | Path | tuple[Program, Report | Mapping[str, Any]], *,
           baseline: Program | str | Path | None = None, full_report: str | Path | Mapping[str, Any] | None = None,
           lm: Any = None, title: str | None = None) -> str:
    """One self-contained HTML page for a compile.

    ``source``: a compiled artifact's path, or ``(program, report)`` (a :class:`Report` or its
    ``to_dict()``). ``baseline``: the program as given to the compiler (a Program or a saved
    file): its prompts are shown before/after and the parameter diff per node; without it the
    page shows the changes the report names. ``full_report``: the report written by
    ``lmgraph compile --report`` (it holds the per-node usage an artifact does not keep).
    ``lm``: the model whose prompt format the prompts are previewed in (default: the embedded
    model, not loaded; no model is called).
    """
    from .pipeline.program import Program

    if isinstance(source, (str, Path)):
        program, rep = _load(source)
        origin = str(source)
    elif isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], Program):
        program, given = source[0], source[1]
        rep = dict(given) if isinstance(given, Mapping) else given.to_dict(timing=True)
        origin = "in memory"
    else:
        raise DefinitionError(f"render() takes an artifact path or a (program, report) pair, got "
                              f"{type(source).__name__}",
                              fix="pass render('compiled.json') or render((compiled, report)).")
    rep = dict(rep or {})
    if full_report is not None:
        extra = (json.loads(Path(full_report).read_text(encoding="utf-8"))
                 if isinstance(full_report, (str, Path)) else dict(full_report))
        rep = {**extra, **{k: v for k, v in rep.items() if v}}
        rep["runtime"] = extra.get("runtime", rep.get("runtime", {}))
    base = _as_program(baseline)
    title = title or f"lmgraph compile report: {program.name}"
    after, notes = _previews(program, lm)
    before, notes_before = _previews(base, lm)
    sections = [_summary(program, rep, origin), _graph_section(program), _plot_section(rep),
                _candidates_section(rep), _front_section(rep), _path_section(rep), _changes_section(program, base, rep),
                _prompts_section(after, before, [*notes_before, *notes]), _usage_section(program, after, before, rep),
                _winloss_section(rep)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n<h1>{_e(title)}</h1>\n"
            + "\n".join(s for s in sections if s) + f"\n<script>{_JS}</script>\n</body></html>\n")


def write(path: str | Path, source: Any, **kwargs: Any) -> Path:
    """``render(source, **kwargs)`` written to ``path`` (UTF-8)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render(source, **kwargs), encoding="utf-8")
    return p


def _summary(program: Program, rep: Mapping[str, Any], origin: str) -> str:
    cands = rep.get("candidates") or []
    spent = rep.get("spent") or {}
    rows = [("program", f"{program.name} ({len(program.nodes)} nodes), content hash {program.content_hash()[:16]}"),
            ("source", origin)]
    if rep.get("optimizer"):
        rows.append(("optimizer", f"{rep['optimizer']}, seed {rep.get('seed', 0)}"))
    if cands:
        from .optimizers.report import baseline_on_rows

        best = next((c for c in cands if c["id"] == rep.get("best_id", 0)), cands[0])
        base, where = baseline_on_rows(cands[0].get("scores") or [cands[0]["score"]], best.get("rows"),
                                       best.get("n", 0))
        rows.append(("result", f"best {best['score']:.3f} (candidate #{best['id']}) vs baseline "
                               f"{base:.3f}{where} ({best['score'] - base:+.3f}); {len(cands)} candidates"))
    if spent:
        rows.append(("spent", f"{spent.get('calls', 0)} calls, {spent.get('tokens', 0)} tokens"
                              + (f", ${spent['dollars']:.4f}" if spent.get("dollars") else "")))
    budget = {k: v for k, v in (rep.get("budget") or {}).items() if v is not None}
    if budget:
        rows.append(("budget", ", ".join(f"{k}={v}" for k, v in budget.items())))
    if rep.get("wall_s"):
        rows.append(("wall time", f"{rep['wall_s']:.1f} s"))
    if rep.get("stopped"):
        rows.append(("stopped", rep["stopped"]))
    fails = {k: v for k, v in (rep.get("failures") or {}).items() if v}
    if fails:
        rows.append(("row failures", ", ".join(f"{k}: {v}" for k, v in fails.items())))
    if not rep:
        rows.append(("report", "none: this file holds a program without a compile report"))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    notes = "".join(f'<li class="note">{_e(n)}</li>' for n in rep.get("notes") or [])
    return f'<section id="summary"><table>{body}</table>' + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "") \
        + "</section>"


def _graph_section(program: Program) -> str:
    from .report_figures import program_svg

    return (f'<section id="graph"><h2>The program</h2><div class="figure">{program_svg(program)}</div>'
            f"<details><summary>Mermaid source</summary><pre>{_e(program.render('mermaid'))}</pre></details>"
            f"<details><summary>Text view</summary><pre>{_e(program.render('text'))}</pre></details></section>")


def _plot_section(rep: Mapping[str, Any]) -> str:
    cands = rep.get("candidates") or []
    if not cands:
        return ""
    head = '<section id="plot"><h2>Candidates: score against calls spent</h2>'
    try:
        from .report_figures import scores_plot_svg

        svg = scores_plot_svg(cands, rep.get("best_id", 0))
    except ImportError:
        return head + ('<p class="note">The plot needs matplotlib: <code>pip install "lmgraph[report]"</code>. '
                       "The table below has the same figures.</p></section>")
    from .report_figures import own_calls

    unattributed = (rep.get("spent") or {}).get("calls", 0) - sum(own_calls(cands))
    note = (f'<p class="muted">{unattributed} of the {rep["spent"]["calls"]} calls went to work no candidate row '
            "counts (bootstrapping demos, proposing instructions).</p>" if unattributed > 0 else "")
    return head + f'<div class="figure">{svg}</div>{note}</section>'


def _candidates_section(rep: Mapping[str, Any]) -> str:
    from .optimizers.report import STATUSES

    cands = rep.get("candidates") or []
    if not cands:
        return ""
    from .report_figures import accepted_path

    path = {c["id"] for c in accepted_path(cands, rep.get("best_id", 0))}
    rows = []
    for c in cands:
        lo, hi = c.get("ci95") or (c["score"], c["score"])
        cls = "best" if c["id"] == rep.get("best_id") else ""
        rows.append(f'<tr class="{cls}"><td class="num{" path" if c["id"] in path else ""}" data-v="{c["id"]}">'
                    f'#{c["id"]}</td><td class="status" title="{_e(STATUSES.get(c["status"], ""))}">{_e(c["status"])}'
                    f'</td><td>{_e(c["label"])}</td>{_num(c.get("n", 0), "{}")}{_num(c["score"])}'
                    f'<td class="num" data-v="{lo}">[{lo:.3f}, {hi:.3f}]</td>{_num(c.get("calls", 0), "{}")}'
                    f'{_num(c.get("tokens", 0), "{}")}{_unread(c)}<td>{_e(c.get("reason", ""))}</td></tr>')
    return ('<section id="candidates"><h2>Every candidate</h2><p class="muted">Click a column to sort. '
            "Bold ids: the accepted path; shaded: the program chosen.</p><table class=\"sortable\"><thead><tr>"
            "<th>id</th><th>status</th><th>label</th><th>rows</th><th>score</th><th>95% CI</th><th>calls</th>"
            f"<th>tokens</th><th title=\"share of its scored rows whose reply could not be read (scored as wrong)\">"
            f"unread</th><th>why</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def _front_section(rep: Mapping[str, Any]) -> str:
    """The default compiler's score/cost front (``data["pareto"]``), the chosen point shaded."""
    from .optimizers.report import raced_label

    points = (rep.get("data") or {}).get("pareto") or []
    if len(points) < 2:
        return ""
    best = next((c["label"] for c in rep.get("candidates") or [] if c["id"] == rep.get("best_id")), "")
    best = raced_label(best)
    rows = "".join(
        f'<tr class="{"best" if p["label"] == best else ""}"><td>{_e(p["label"])}</td>{_num(p["score"])}'
        f'{_num(p.get("calls_per_row", 0), "{:.2f}")}{_num(p.get("tokens_per_row", 0), "{:.0f}")}'
        f'{_num(p.get("dollars_per_row", 0), "{:.6f}")}</tr>' for p in points)
    axis = "dollars" if (rep.get("data") or {}).get("pareto_cost") == "dollars_per_row" else "tokens"
    return ('<section id="front"><h2>Score against cost</h2><p class="muted">The program as given and every raced '
            f"candidate that no other beats on both score (the program as given's mean plus the candidate's paired "
            f"gain on its search rows) and {axis} per row, cheapest first; shaded: "
            "the point of the program chosen (<code>report.front()</code> holds each point's program).</p>"
            '<table class="sortable"><thead><tr><th>candidate</th><th>score</th><th>calls / row</th>'
            f"<th>tokens / row</th><th>dollars / row</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _unread(c: Mapping[str, Any]) -> str:
    """A candidate's share of scored rows whose reply could not be read ('-': not recorded, or no rows)."""
    n, bad = c.get("n") or 0, c.get("unparsed")
    if bad is None or not n:
        return '<td class="num" data-v="-1">-</td>'
    return f'<td class="num" data-v="{bad / n}">{bad / n:.0%}</td>'


def _path_section(rep: Mapping[str, Any]) -> str:
    from .report_figures import accepted_path

    path = accepted_path(rep.get("candidates") or [], rep.get("best_id", 0))
    if not path:
        return ""
    items = []
    for prev, c in zip([None, *path], path):
        gain = "" if prev is None else f" ({c['score'] - prev['score']:+.3f} over #{prev['id']})"
        changes = "; ".join(f"{node}: " + ", ".join(f"{k}={v}" for k, v in ch.items())
                            for node, ch in (c.get("changes") or {}).items())
        items.append(f"<li><b>#{c['id']}</b> {_e(c['label'])}: {c['score']:.3f} on {c.get('n', 0)} rows{_e(gain)}"
                     + (f'<br><span class="muted">{_e(changes)}</span>' if changes else "") + "</li>")
    if len(path) == 1:
        items.append('<li class="muted">no candidate replaced the program as given</li>')
    return f'<section id="path"><h2>The accepted path</h2><ol>{"".join(items)}</ol></section>'


def _changes_section(program: Program, base: Program | None, rep: Mapping[str, Any]) -> str:
    from .optimizers.artifact import diff, format_diff

    if base is not None:
        text = format_diff(diff(base, program))
        return f'<section id="changes"><h2>What changed, per node</h2><pre>{_e(text)}</pre></section>'
    cands = rep.get("candidates") or []
    best = next((c for c in cands if c["id"] == rep.get("best_id")), None)
    if best is None:
        return ""
    lines = [f"~ node {node}\n" + "\n".join(f"    {k}: {v}" for k, v in ch.items())
             for node, ch in (best.get("changes") or {}).items()] or ["(no differences)"]
    return ('<section id="changes"><h2>What changed, per node</h2><p class="muted">As the report names the chosen '
            "candidate's changes; pass the program as given (<code>--baseline</code>) for the full diff and the "
            f"prompts before.</p><pre>{_e(chr(10).join(lines))}</pre></section>")


def _previews(program: Program | None, lm: Any) -> tuple[dict[str, Any], list[str]]:
    if program is None:
        return {}, []
    try:
        pl = program.prompts(lm) if lm is not None else program.prompts()
    except (LmgraphError, ImportError, OSError) as e:
        return {}, [f"{program.name}: prompts could not be previewed ({type(e).__name__}: {e})"]
    return {p.node: p for p in pl}, list(pl.notes)


def _prompt_text(p: Any) -> str:
    if p.prompt is not None:
        return str(p.prompt)
    return "\n".join(f"--- {m['role']} ---\n{m['content']}" for m in p.messages or ())


def _prompts_section(after: Mapping[str, Any], before: Mapping[str, Any], notes: Sequence[str]) -> str:
    if not after and not notes:
        return ""
    parts = ['<section id="prompts"><h2>Prompts per node</h2><p class="muted">Each model-calling node\'s request '
             "with placeholder inputs (&lt;name&gt;), previewed without a model call"
             + (", before and after the compile" if before else "") + ".</p>"]
    for node, p in after.items():
        text = _prompt_text(p)
        parts.append(f"<h3>{_e(node)} <span class=\"muted\">({_e(p.kind)}, format {_e(p.format)})</span></h3>")
        if node not in before:
            parts.append(f"<pre>{_e(text)}</pre>")
            continue
        old = _prompt_text(before[node])
        if old == text:
            parts.append(f'<p class="muted">unchanged</p><pre>{_e(text)}</pre>')
            continue
        lines = []
        for line in list(difflib.unified_diff(old.splitlines(), text.splitlines(), lineterm=""))[2:]:
            cls = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "ctx")
            lines.append(f'<span class="{cls}">{_e(line) or "&nbsp;"}</span>')
        parts.append(f"<details open><summary>diff: before → after</summary><pre>{''.join(lines)}</pre></details>"
                     f"<details><summary>after, in full</summary><pre>{_e(text)}</pre></details>")
    parts += [f'<p class="note">{_e(n)}</p>' for n in notes]
    return "".join(parts) + "</section>"


def _usage_section(program: Program, after: Mapping[str, Any], before: Mapping[str, Any],
                   rep: Mapping[str, Any]) -> str:
    from .modules.base import calls_of

    measured = (rep.get("runtime") or {}).get("nodes") or {}
    size_after = {k: len(_prompt_text(p)) for k, p in after.items()}
    size_before = {k: len(_prompt_text(p)) for k, p in before.items()}
    rows = []
    for n in program.nodes:
        m = measured.get(n.name, {})
        size = (f"{size_before[n.name]} → {size_after[n.name]}" if n.name in size_before and n.name in size_after
                else str(size_after.get(n.name, "-")))
        rows.append(f"<tr><td>{_e(n.name)}</td><td>{_e(n.module.kind)}</td>{_num(calls_of(n.module), '{}')}"
                    f"<td class=\"num\">{_e(size)}</td>"
                    + "".join(_num(m[k], "{}") if k in m else '<td class="num muted">-</td>'
                              for k in ("requests", "calls", "cache_hits", "prompt_tokens", "completion_tokens"))
                    + (_num(m["dollars"], "{:.4f}") if m.get("dollars") else '<td class="num muted">-</td>')
                    + "</tr>")
    extra = [k for k in measured if k not in program.node_map]
    note = ("Measured columns: what the compile sent per node (requests, cache hits included; calls that reached "
            "the model; their tokens)." if measured else
            "Measured per-node usage is not stored in an artifact: pass the report written by "
            "<code>lmgraph compile --report REPORT.json</code> (<code>--full-report</code>), or render a "
            "(program, report) pair in Python.")
    if extra:
        note += " Also: " + _e(", ".join(f"{k} ({measured[k].get('requests', 0)} requests)" for k in extra)) + "."
    return ('<section id="usage"><h2>Per node: calls and tokens</h2><table class="sortable"><thead><tr><th>node</th>'
            "<th>kind</th><th>calls per run (at most)</th><th>prompt chars (before → after)</th><th>requests</th>"
            "<th>model calls</th><th>cache hits</th><th>prompt tokens</th><th>completion tokens</th><th>dollars</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table><p class=\"muted\">{note}</p></section>")


def shared_rows(base: Mapping[str, Any], cand: Mapping[str, Any]) -> dict[int, tuple[float, float]] | None:
    """{row: (baseline score, candidate score)} over the rows both were scored on, or None when
    the report does not say which rows the candidate's scores are on."""
    bs = base.get("scores")
    cs = cand.get("scores")
    if bs is None or cs is None:
        return None
    rows = cand.get("rows")
    if rows is None:
        if len(cs) != len(bs):  # a partial evaluation without its rows recorded
            return None
        rows = range(len(cs))
    return {int(i): (float(bs[i]), float(s)) for i, s in zip(rows, cs) if 0 <= int(i) < len(bs)}


def _winloss_section(rep: Mapping[str, Any]) -> str:
    cands = rep.get("candidates") or []
    if len(cands) < 2:
        return ""
    base = cands[0]
    if base.get("scores") is None:
        return ('<section id="winloss"><h2>Per example: wins and losses against the baseline</h2><p class="muted">'
                "This report has no per-row scores (an artifact written before they were kept): re-run the compile "
                "to see them.</p></section>")
    summary, grid_cols = [], []
    for c in cands[1:]:
        pairs = shared_rows(base, c)
        if pairs is None:
            summary.append(f"<tr><td>#{c['id']}</td><td>{_e(c['label'])}</td>"
                           '<td colspan="5" class="muted">scored on a subset whose rows the report does not name'
                           "</td></tr>")
            continue
        w = sum(1 for b, s in pairs.values() if s > b)
        lo = sum(1 for b, s in pairs.values() if s < b)
        t = len(pairs) - w - lo
        summary.append(f"<tr><td>#{c['id']}</td><td>{_e(c['label'])}</td>{_num(len(pairs), '{}')}"
                       f"{_num(w, '{}')}{_num(lo, '{}')}{_num(t, '{}')}{_num(w - lo, '{:+d}')}</tr>")
        grid_cols.append((c, pairs))
    n = len(base["scores"])
    head = "".join(f'<th title="{_e(c["label"])}">#{c["id"]}</th>' for c, _ in grid_cols)
    body = []
    for i in range(n):
        cells = []
        for _c, pairs in grid_cols:
            if i not in pairs:
                cells.append('<td class="none"></td>')
                continue
            b, s = pairs[i]
            cls, mark = ("win", "+") if s > b else ("loss", "−") if s < b else ("tie", "=")
            cells.append(f'<td class="{cls}" title="{s:.3g} vs {b:.3g}">{mark}</td>')
        body.append(f"<tr><td>row {i}</td><td class=\"num\">{float(base['scores'][i]):.3g}</td>{''.join(cells)}</tr>")
    folds = (rep.get("data") or {}).get("folds")
    rows_are = ("the rows the compile scored, train and validation rows pooled (its search and confirmation "
                "folds), numbered in the order it was given them" if folds else "the validation rows, in order")
    return ('<section id="winloss"><h2>Per example: wins and losses against the baseline</h2>'
            f'<p class="muted">Rows are {_e(rows_are)}. Each candidate is compared with the baseline only on the rows '
            "it was scored on (a raced candidate sees a subset; the confirmed one also the held-out rows).</p>"
            '<table class="sortable"><thead><tr><th>candidate</th><th>label</th><th>shared rows</th><th>wins</th>'
            f"<th>losses</th><th>ties</th><th>net</th></tr></thead><tbody>{''.join(summary)}</tbody></table>"
            '<details><summary>Every row (+ win, − loss, = tie, blank: not scored there)</summary>'
            f'<table class="grid"><thead><tr><th>row</th><th>baseline</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></details></section>")


# --------------------------------------------------------------------------- notebook views

_MAX_ROWS = 30


def program_html(program: Program) -> str:
    """A small HTML view of a program (``Program._repr_html_``): its name and text rendering."""
    return (f"<div><b>Program {_e(program.name)}</b> <span style=\"color:#6b7280\">({len(program.nodes)} nodes, "
            f"{program.content_hash()[:12]})</span><pre>{_e(program.render('text'))}</pre></div>")


def report_html(report: Report) -> str:
    """A small HTML view of a compile report (``Report._repr_html_``): one row per candidate."""
    rows = []
    for c in report.candidates[:_MAX_ROWS]:
        lo, hi = c.ci
        mark = " style=\"background:#ecfdf5\"" if c.id == report.best_id else ""
        rows.append(f"<tr{mark}><td>#{c.id}</td><td>{_e(c.status)}</td><td>{c.mean:.3f}</td>"
                    f"<td>[{lo:.3f}, {hi:.3f}]</td><td>{c.calls}</td>"
                    f"<td>{f'{c.unparsed_rate:.0%}' if c.scores else '-'}</td><td>{_e(c.label)}</td></tr>")
    more = len(report.candidates) - _MAX_ROWS
    base, where = report.baseline_on(report.best) if report.candidates else (0.0, "")
    head = (f"<b>{_e(report.optimizer)}</b>: best {report.best.mean:.3f} (#{report.best_id}) vs baseline "
            f"{base:.3f}{_e(where)}; spent {_e(report.spent.get('calls', 0))} calls" if report.candidates
            else f"<b>{_e(report.optimizer)}</b>: no candidates")
    return (f"<div>{head}<table><tr><th>id</th><th>status</th><th>score</th><th>95% CI</th><th>calls</th>"
            f"<th>unread</th><th>label</th></tr>{''.join(rows)}</table>"
            + (f"<i>{more} more candidates: report.table()</i>" if more > 0 else "") + "</div>")


def trace_html(trace: Trace) -> str:
    """A small HTML view of a run's trace (``Trace._repr_html_``): one row per node."""
    rows = []
    for n in trace.nodes[:_MAX_ROWS]:
        u = n.usage
        rows.append(f"<tr><td>{_e(n.node)}</td><td>{_e(n.kind)}</td><td>{u['calls']}</td>"
                    f"<td>{u['prompt_tokens'] + u['completion_tokens']}</td><td>{n.latency_s * 1000:.0f} ms</td>"
                    f"<td>{_e(n.error or '')}</td></tr>")
    u = trace.usage
    status = f"failed: {_e(trace.error)}" if trace.error else "ok"
    return (f"<div><b>Trace of {_e(trace.program)}</b>: {status}, {u['calls']} calls, "
            f"{u['prompt_tokens'] + u['completion_tokens']} tokens, {trace.latency_s:.2f} s"
            "<table><tr><th>node</th><th>kind</th><th>calls</th><th>tokens</th><th>latency</th><th>error</th></tr>"
            + "".join(rows) + "</table></div>")


__all__ = ["program_html", "render", "report_html", "shared_rows", "trace_html", "write"]
