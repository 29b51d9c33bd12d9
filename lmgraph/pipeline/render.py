"""Text and Mermaid views of a program."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..signatures import type_to_str
from .ir import INPUT, Const, Ref

if TYPE_CHECKING:
    from .program import Program


def _src(b: Ref | Const) -> str:
    if isinstance(b, Const):
        return f"const {b.value!r}"[:40]
    return f"input.{b.field}" if b.node == INPUT else str(b)


def render_text(p: Program) -> str:
    lines = [f"Program {p.name!r} ({len(p.nodes)} nodes)"]
    lines.append("  inputs: " + ", ".join(f"{s.name}: {type_to_str(s.annotation)}" for s in p.inputs))
    for n in p.nodes:
        sig = n.module.signature
        binds = ", ".join(f"{f} <- {_src(b)}" for f, b in n.bindings)
        outs = ", ".join(f.name if f.annotation is str else f"{f.name}: {type_to_str(f.annotation)}"
                         for f in sig.outputs)
        lines.append(f"  [{n.name}] {n.module.describe()}")
        lines.append(f"      in:  {binds or '-'}")
        lines.append(f"      out: {outs}")
        extra = getattr(n.module, "summary", None)
        if callable(extra):
            for s in extra():
                lines.append(f"      {s}")
    lines.append("  outputs: " + ", ".join(f"{o} <- {_src(r)}" for o, r in p.outputs))
    return "\n".join(lines)


def _esc(s: str) -> str:
    return s.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def render_mermaid(p: Program) -> str:
    lines = ["flowchart LR"]
    for s in p.inputs:
        lines.append(f'  in_{s.name}(["{_esc(s.name)}: {_esc(type_to_str(s.annotation))}"])')
    for n in p.nodes:
        lines.append(f'  n_{n.name}["{_esc(n.name)}<br/><i>{_esc(n.module.describe())}</i>"]')
        _mermaid_subprograms(f"n_{n.name}", n.module, lines, "  ")
    for n in p.nodes:
        for f, b in n.bindings:
            if isinstance(b, Ref):
                src = f"in_{b.field}" if b.node == INPUT else f"n_{b.node}"
                label = f if b.node == INPUT else f"{b.field} → {f}"
                lines.append(f'  {src} -->|"{_esc(label)}"| n_{n.name}')
    for o, r in p.outputs:
        lines.append(f'  out_{o}(["{_esc(o)}"])')
        src = f"in_{r.field}" if r.node == INPUT else f"n_{r.node}"
        lines.append(f'  {src} -->|"{_esc(r.field)}"| out_{o}')
    return "\n".join(lines)


def _subprograms(module: object) -> list[tuple[str, str, Program, str]]:
    """The sub-programs a control-flow node holds, drawn inside it: (id suffix, title, program,
    label of the edge back to the node or "") -- a Route's branches, a Loop's body."""
    from ..modules.loop import Loop
    from ..modules.route import Route

    if isinstance(module, Route):
        return [(name, f"branch {name}", prog, "") for name, prog in module.branches.items()]
    if isinstance(module, Loop):
        back = ", ".join(f"{k} ← {v}" for k, v in module.carry.items())
        return [("body", f"loop body (at most {module.max_iters}x, {module.until_text()})", module.body,
                 f"next iteration: {back}" if back else "next iteration")]
    return []


def _mermaid_subprograms(owner: str, module: object, lines: list[str], indent: str) -> None:
    """A Route's branches / a Loop's body as subgraphs (nested ones inside), linked to ``owner``."""
    for suffix, title, prog, back in _subprograms(module):
        sg = f"{owner}__{suffix}"
        lines.append(f'{indent}subgraph {sg}["{_esc(title)}"]')
        for n in prog.nodes:
            lines.append(f'{indent}  {sg}__{n.name}["{_esc(n.name)}<br/><i>{_esc(n.module.describe())}</i>"]')
            _mermaid_subprograms(f"{sg}__{n.name}", n.module, lines, indent + "  ")
        for n in prog.nodes:
            for f, b in n.refs():
                if b.node != INPUT:
                    lines.append(f'{indent}  {sg}__{b.node} -->|"{_esc(f"{b.field} → {f}")}"| {sg}__{n.name}')
        lines.append(f"{indent}end")
        lines.append(f'{indent}{owner} -.->|"{_esc(suffix)}"| {sg}')
        if back:
            lines.append(f'{indent}{sg} -.->|"{_esc(back)}"| {owner}')


#: the views ``Program.render(fmt)`` can produce
RENDER_FORMATS = ("text", "mermaid")


def render(p: Program, fmt: str = "text") -> str:
    """``p`` as text or a Mermaid flowchart; any other ``fmt`` is a ConfigError naming the valid ones."""
    if fmt == "text":
        return render_text(p)
    if fmt == "mermaid":
        return render_mermaid(p)
    raise ConfigError(f"unknown render format {fmt!r}", field="fmt",
                      fix=f"use one of {', '.join(repr(f) for f in RENDER_FORMATS)}.")
