"""The pictures of a compile report page: the program as an inline SVG graph (drawn here, no
JavaScript and no Mermaid runtime needed) and the candidates' scores against calls spent
(matplotlib, the optional extra ``[report]``, imported only when a plot is drawn).

Both return SVG markup to inline in an HTML page; neither fetches anything.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline.program import Program

#: fill colours of the graph's boxes and of the plot's statuses
COLOURS = {"input": "#dbeafe", "node": "#fef9c3", "output": "#dcfce7"}
STATUS_COLOURS = {"baseline": "#1f2937", "accepted": "#15803d", "rejected": "#b91c1c", "advanced": "#7c3aed",
                  "incumbent": "#1f2937", "dropped": "#9ca3af", "stopped": "#d97706", "raced": "#2563eb",
                  "minibatch": "#9ca3af", "pending": "#9ca3af"}

_CHAR_W = 7.0   # px per character at the 12 px font (a safe over-estimate for DejaVu/Arial)
_LINE_H = 16
_PAD = 10
_LAYER_GAP = 90
_ROW_GAP = 22


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _boxes(program: Program) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, str]]]:
    """The boxes (id -> kind, lines, layer) and edges (source id, target id, label) of ``program``."""
    from .pipeline.ir import INPUT, Ref
    from .pipeline.render import _subprograms
    from .signatures import type_to_str

    boxes: dict[str, dict[str, Any]] = {}
    edges: list[tuple[str, str, str]] = []
    for s in program.inputs:
        boxes[f"in:{s.name}"] = {"kind": "input", "lines": [s.name, type_to_str(s.annotation)], "layer": 0}
    for n in program.nodes:
        lines = [n.name, _short(n.module.describe())]
        for _suffix, title, sub, _back in _subprograms(n.module):
            lines.append(_short(f"{title}: " + " → ".join(m.name for m in sub.nodes), 60))
        layer = 1
        for f, b in n.bindings:
            if isinstance(b, Ref):
                src = f"in:{b.field}" if b.node == INPUT else f"n:{b.node}"
                edges.append((src, f"n:{n.name}", f if b.node == INPUT else f"{b.field} → {f}"))
                layer = max(layer, boxes[src]["layer"] + 1)
        boxes[f"n:{n.name}"] = {"kind": "node", "lines": lines, "layer": layer}
    last = max((b["layer"] for b in boxes.values()), default=0) + 1
    for o, r in program.outputs:
        boxes[f"out:{o}"] = {"kind": "output", "lines": [o], "layer": last}
        src = f"in:{r.field}" if r.node == INPUT else f"n:{r.node}"
        edges.append((src, f"out:{o}", r.field if r.field != o else ""))
    return boxes, edges


def _order_layers(boxes: Mapping[str, dict[str, Any]], edges: Sequence[tuple[str, str, str]]) -> list[list[str]]:
    """Boxes per layer, each layer ordered by the mean position of its sources (one barycentre
    sweep, declaration order breaking ties): fewer crossings than declaration order alone."""
    layers: dict[int, list[str]] = {}
    for key, b in boxes.items():
        layers.setdefault(b["layer"], []).append(key)
    ordered = [layers[i] for i in sorted(layers)]
    pos = {k: i for i, k in enumerate(ordered[0])} if ordered else {}
    for layer in ordered[1:]:
        first = {k: i for i, k in enumerate(layer)}

        def centre(k: str, first: dict[str, int] = first) -> tuple[float, int]:
            srcs = [pos[s] for s, t, _ in edges if t == k and s in pos]
            return (sum(srcs) / len(srcs) if srcs else float(first[k]), first[k])
        layer.sort(key=centre)
        pos.update({k: i for i, k in enumerate(layer)})
    return ordered


def program_svg(program: Program) -> str:
    """``program`` as an SVG flowchart, left to right: inputs, nodes in dependency layers, outputs;
    each edge labelled with the field it carries (``source field → target field``)."""
    boxes, edges = _boxes(program)
    layers = _order_layers(boxes, edges)
    for b in boxes.values():
        b["w"] = max(len(line) for line in b["lines"]) * _CHAR_W + 2 * _PAD
        b["h"] = len(b["lines"]) * _LINE_H + _PAD
    heights = [sum(boxes[k]["h"] for k in layer) + _ROW_GAP * (len(layer) - 1) for layer in layers]
    total_h = max(heights, default=40) + 2 * 20
    x = 20.0
    for layer, lh in zip(layers, heights):
        width = max(boxes[k]["w"] for k in layer)
        y = (total_h - lh) / 2
        for k in layer:
            b = boxes[k]
            b["x"], b["y"] = x + (width - b["w"]) / 2, y
            y += b["h"] + _ROW_GAP
        x += width + _LAYER_GAP
    total_w = x - _LAYER_GAP + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img" '
           f'aria-label="{_esc(f"graph of program {program.name}")}" width="{total_w:.0f}" height="{total_h:.0f}" '
           f'viewBox="0 0 {total_w:.0f} {total_h:.0f}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#475569"/></marker></defs>']
    for src, dst, label in edges:
        a, b = boxes[src], boxes[dst]
        x1, y1 = a["x"] + a["w"], a["y"] + a["h"] / 2
        x2, y2 = b["x"], b["y"] + b["h"] / 2
        if x2 <= x1:  # a box in the same or an earlier column: leave from its bottom instead
            x1, y1 = a["x"] + a["w"] / 2, a["y"] + a["h"]
        mid = (x1 + x2) / 2
        out.append(f'<path d="M {x1:.1f} {y1:.1f} C {mid:.1f} {y1:.1f}, {mid:.1f} {y2:.1f}, {x2 - 2:.1f} {y2:.1f}" '
                   'fill="none" stroke="#475569" stroke-width="1.3" marker-end="url(#arrow)"/>')
        if label:
            lx, ly = mid, (y1 + y2) / 2 - 4
            out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle" font-size="10" fill="#334155" '
                       f'stroke="#ffffff" stroke-width="3" paint-order="stroke">{_esc(label)}</text>')
    for key, b in boxes.items():
        rx = 14 if b["kind"] != "node" else 4
        out.append(f'<g class="{b["kind"]}"><title>{_esc(key)}</title>'
                   f'<rect x="{b["x"]:.1f}" y="{b["y"]:.1f}" width="{b["w"]:.1f}" height="{b["h"]:.1f}" rx="{rx}" '
                   f'fill="{COLOURS[b["kind"]]}" stroke="#475569"/>')
        for i, line in enumerate(b["lines"]):
            weight = ' font-weight="bold"' if i == 0 else ' fill="#334155"'
            ty = b["y"] + _PAD / 2 + _LINE_H * (i + 1) - 4
            out.append(f'<text x="{b["x"] + b["w"] / 2:.1f}" y="{ty:.1f}" text-anchor="middle"{weight}>'
                       f'{_esc(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- the candidates plot

def accepted_path(candidates: Sequence[Mapping[str, Any]], best_id: int) -> list[Mapping[str, Any]]:
    """The candidates that became the incumbent, in order: the baseline, every accepted one, and
    the final pick when it is not among them (a resumed or partial report)."""
    if not candidates:
        return []
    path = [candidates[0], *(c for c in candidates[1:] if c.get("status") == "accepted")]
    if best_id not in {c["id"] for c in path}:
        path += [c for c in candidates if c["id"] == best_id]
    return path


def own_calls(candidates: Sequence[Mapping[str, Any]]) -> list[int]:
    """The calls each candidate's evaluation added: its ``calls``, less those of an earlier
    candidate it extends (the default compiler's confirmed pick repeats its race winner's calls:
    same changes, status ``advanced``, the winner's rows first)."""
    out = []
    for i, c in enumerate(candidates):
        calls = int(c.get("calls") or 0)
        for p in candidates[:i]:
            if p.get("status") == "advanced" and p.get("changes") == c.get("changes") and \
                    (c.get("rows") is None or p.get("rows") is None or c["rows"][: len(p["rows"])] == p["rows"]):
                calls -= int(p.get("calls") or 0)
                break
        out.append(max(0, calls))
    return out


def scores_plot_svg(candidates: Sequence[Mapping[str, Any]], best_id: int) -> str:
    """Every candidate's mean score with its 95% CI (error bars) against the model calls spent up to
    and including its evaluation (cumulative, in report order), coloured by status; the accepted
    path as a step line. Needs matplotlib (``pip install 'lmgraph[report]'``)."""
    import matplotlib as mpl
    from matplotlib.figure import Figure  # the optional extra; Figure needs no pyplot/global backend

    xs, spent = [], 0
    for calls in own_calls(candidates):
        spent += calls
        xs.append(spent)
    at = {c["id"]: x for c, x in zip(candidates, xs)}
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "lmgraph", "font.family": "DejaVu Sans",
                         "font.size": 9}):
        fig = Figure(figsize=(10.0, 4.4), dpi=100)
        ax = fig.add_subplot()
        seen: set[str] = set()
        for c, x in zip(candidates, xs):
            status = str(c.get("status", "pending"))
            lo, hi = c.get("ci95") or (c["score"], c["score"])
            colour = STATUS_COLOURS.get(status, "#6b7280")
            ax.errorbar([x], [c["score"]], yerr=[[max(0.0, c["score"] - lo)], [max(0.0, hi - c["score"])]],
                        fmt="o", color=colour, ecolor=colour, elinewidth=1.2, capsize=3, markersize=5,
                        label=status if status not in seen else None, zorder=3)
            seen.add(status)
            ax.annotate(f"#{c['id']}", (x, c["score"]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color="#374151")
        path = accepted_path(candidates, best_id)
        if len(path) >= 1:
            px = [at[c["id"]] for c in path] + [xs[-1]]
            py = [c["score"] for c in path] + [path[-1]["score"]]
            ax.step(px, py, where="post", color="#15803d", linewidth=1.5, alpha=0.7, label="incumbent (accepted path)",
                    zorder=2)
        ax.set_xlabel("model calls spent (cumulative, candidates in report order)")
        ax.set_ylabel("score (mean over its rows, 95% CI)")
        ax.set_title("Candidates: score against calls spent")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = re.sub(r"^<\?xml[^>]*>\s*", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>\s*", "", svg)
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)  # RDF boilerplate naming outside URIs
    return svg.replace("<svg ", '<svg class="plot" role="img" aria-label="candidate scores against calls spent" ', 1)
