"""The candidates the default compiler races: what one changes, how its demos are chosen, what a
row costs, and which backends score label options."""

from __future__ import annotations

import random
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..context import RunContext
from ..errors import DefinitionError
from ..modules.predict import check_score_signature
from ..modules.verbalizer import Verbalizer, label_field, normalise_verbalizer, plain_words
from ..pipeline.program import Program
from ..signatures import literal_options
from .fewshot import _demo_sig
from .joint import accepts_format

Demo = dict[str, Any]


@dataclass(eq=False)  # a candidate is itself: compared (and hashed) by identity, never field by field
class Spec:
    """One candidate: a label, per-node parameter changes and the search rows its demos use."""

    label: str
    params: dict[str, dict[str, Any]]
    demo_rows: frozenset[int] = frozenset()
    program: Program | None = None
    calls_per_row: float = 1.0
    rows: list[int] = field(default_factory=list)    # search rows scored so far
    scores: list[float] = field(default_factory=list)
    calls: int = 0
    tokens: int = 0
    dollars: float = 0.0
    unparsed: int = 0  # search rows whose reply could not be read
    alive: bool = True
    finished: bool = False  # scored on every search row (a finalist)
    note: str = ""
    # the levers it sets (e.g. {"json", "knn"}): one lever = a single-lever candidate, screened first
    levers: frozenset[str] = frozenset()
    draw: int = 1  # which draw of its demo sets (2, 3, ...: drawn again with budget left, see redraws)

    @property
    def family(self) -> str:
        """The label without its ``(draw N)`` suffix: what every draw of one demo set shares."""
        return self.label.split(" (draw ")[0]

    def changes(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for node, p in self.params.items():
            ch = {k: (len(v) if k in ("demos", "demo_pool") else v) for k, v in p.items()}
            if "instructions" in ch:
                text = str(ch["instructions"])
                ch["instructions"] = text if len(text) <= 80 else text[:77] + "..."
            out[node] = ch
        return out


def signature_instruction(sig: Any) -> str:
    """An instruction written from the signature alone: what to read, what to give, the options."""
    ins = ", ".join(f.name.replace("_", " ") for f in sig.inputs) or "input"
    parts = []
    for f in sig.outputs:
        opts = literal_options(f.annotation)
        what = f.name.replace("_", " ")
        if f.desc and f.desc != what:
            what += f" ({f.desc})"
        if opts:
            what += " -- exactly one of: " + ", ".join(str(o) for o in opts)
        parts.append(what)
    return f"Read the {ins} and give the {'; and the '.join(parts)}."


def _label_value(demo: Mapping[str, Any], sig: Any) -> str | None:
    outs = [f for f in sig.outputs if literal_options(f.annotation)]
    return str(demo.get(outs[0].name)) if len(outs) == 1 else None


def balanced(pool: Sequence[tuple[int, Demo]], sig: Any, k: int, rng: random.Random) -> list[tuple[int, Demo]]:
    """``k`` demos, round-robin over the label values when the node has one label output (a small
    model copies the label of the demos it sees: every label shown, none twice before all once)."""
    items = list(pool)
    rng.shuffle(items)
    groups: dict[str | None, list[tuple[int, Demo]]] = {}
    for item in items:
        groups.setdefault(_label_value(item[1], sig), []).append(item)
    order = sorted(groups, key=lambda g: str(g))
    rng.shuffle(order)
    out: list[tuple[int, Demo]] = []
    while len(out) < k and any(groups.values()):
        for g in order:
            if groups[g] and len(out) < k:
                out.append(groups[g].pop(0))
    return out


def _scores_labels(module: Any) -> bool:
    if "decode" not in module.tunable:
        return False
    try:
        check_score_signature(module.signature)
    except DefinitionError:
        return False
    return True


def backend_scores(ctx: RunContext, lm_name: str | None) -> bool:
    """Whether the backend behind ``lm_name`` scores continuations (log-prob decoding)."""
    backend = ctx.lm if lm_name is None else ctx.lms.get(lm_name)
    if backend is None:
        return lm_name is None  # the default model: the embedded llama.cpp backend, which scores
    caps = getattr(backend, "capabilities", None)
    if caps is not None and hasattr(caps, "scoring"):
        return bool(caps.scoring)
    return bool(getattr(backend, "supports_scoring", False))

def tunable_modules(program: Program) -> dict[str, Any]:
    """Every module with tunable parameters, nested ones included, by path (schedule order)."""
    paths = dict.fromkeys(path.rsplit(".", 1)[0] for path, _ in program.named_parameters())
    return {p: program.module(p) for p in paths}


def _per_row(program: Program, spec: Spec | None = None) -> float:
    """Upper bound of logical model calls per row: a generating node may need a repair call; a
    calibrated scoring node makes two scoring calls; other modules say themselves."""
    prog = spec.program if spec is not None and spec.program is not None else program
    total = 0.0
    for n in prog.nodes:
        m = n.module
        dec = getattr(m, "decode", None)
        if dec == "calibrated":
            total += 2
        elif dec == "score":
            total += 1
        elif getattr(m, "repair", False) and m.kind in ("predict", "chain_of_thought"):
            total += m.estimated_calls()  # counts the repair call
        else:
            total += m.estimated_calls()
    return max(1.0, total)




def compile_specs(opt: Any, program: Program, boot: Mapping[str, list[tuple[int, Demo]]],
                  labelled: Mapping[str, list[tuple[int, Demo]]], ctx: RunContext | None,
                  rng: random.Random) -> list[Spec]:
    """The default compiler's candidate list, in order of prior promise: decodes, formats, demo
    sets (bootstrapped ``boot``, labelled ``labelled``, nearest-neighbour), instructions written
    from the signature, and models of the context -- deduplicated by program, never the program
    itself. ``opt`` is the :class:`~.auto.Compile` whose settings (``max_demos``, ``decodes``,
    ``formats``, ``instructions``, the models) choose them; ``rng`` draws the demo sets."""
    k = opt.max_demos
    mods = tunable_modules(program)
    fmt_nodes = [n for n, m in mods.items() if "format" in m.tunable]
    decodes: tuple[str, ...]
    if opt.decodes == "auto":
        score_nodes = [n for n, m in mods.items() if _scores_labels(m)
                       and backend_scores(ctx if ctx is not None else RunContext(), getattr(m, "lm", None))]
        decodes = ("calibrated", "score") if score_nodes else ()
    else:
        score_nodes = [n for n, m in mods.items() if _scores_labels(m)]
        decodes = tuple(opt.decodes) if score_nodes else ()

    def demos_of(pool: Mapping[str, list[tuple[int, Demo]]], count: int) -> tuple[dict[str, Any], set[int]]:
        out, used = {}, set()
        for node, items in pool.items():
            if not items:
                continue
            pick = balanced(items, _demo_sig(program, node), count, random.Random(f"{rng.random()}"))
            out[node] = [d for _, d in pick]
            used |= {i for i, _ in pick}
        return out, used

    def knn(pool: Mapping[str, list[tuple[int, Demo]]]) -> dict[str, dict[str, Any]]:
        # per-input demos from the whole pool; a row is never its own demo (leave-one-out)
        return {n: {"knn": k, "demo_pool": [d for _, d in items], **knn_match(n)} for n, items in pool.items()
                if items and "knn" in mods[n].tunable}

    def knn_match(node: str) -> dict[str, Any]:
        # Compile(knn_match="text"): a node that sees lists (retrieved passages) beside text inputs
        # has its nearest demos matched on the text inputs -- unless the node names its own fields
        m = mods[node]
        if opt.knn_match != "text" or "knn_fields" not in m.tunable or m.knn_fields:
            return {}
        text = tuple(f.name for f in m.signature.inputs if typing.get_origin(f.annotation) not in (list, tuple))
        return {"knn_fields": text} if text and len(text) < len(m.signature.inputs) else {}

    knn_pool = {n: labelled.get(n) or boot.get(n) or [] for n in set(labelled) | set(boot)}
    boot_k, boot_rows = demos_of(boot, k)
    boot_2k, boot2_rows = demos_of(boot, 2 * k)
    lab_k, lab_rows = demos_of(labelled, k)

    def decode(d: str) -> dict[str, dict[str, Any]]:
        return {n: {"decode": d, **({} if mods[n].format in ("auto", "completion")
                                    else {"format": "completion"})} for n in score_nodes}

    def fmt(f: str) -> dict[str, dict[str, Any]]:
        return {n: {"format": f} for n in fmt_nodes if mods[n].format != f
                and f in opt.formats and accepts_format(mods[n], f)}

    def demos(d: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {n: {"demos": v} for n, v in d.items()}

    def instr() -> dict[str, dict[str, Any]]:
        out = {}
        for n, m in mods.items():
            if opt.instructions and "instructions" in m.tunable:
                text = signature_instruction(m.signature)
                if text != getattr(m, "instructions", None):
                    out[n] = {"instructions": text}
        return out

    words = verbalizers(opt, mods)

    def verbal() -> dict[str, dict[str, Any]]:
        return {n: {"verbalizer": w} for n, w in words.items()}

    def verbal_instr() -> dict[str, dict[str, Any]]:
        # the signature instruction names the options as the model sees them: the words
        out = {}
        for n, w in words.items():
            if opt.instructions and "instructions" in mods[n].tunable:
                v = Verbalizer.of(normalise_verbalizer(w, mods[n].signature), mods[n].signature)
                out[n] = {"instructions": signature_instruction(v.signature(mods[n].signature))}
        return out

    def merge(*parts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for p in parts:
            for n, v in p.items():
                out.setdefault(n, {}).update(v)
        return out

    lead = decodes[0] if decodes else None
    near = knn(knn_pool)
    Raw = tuple[str, dict[str, dict[str, Any]], set[int], frozenset[str]]

    by_text = any("knn_fields" in v for v in near.values())  # Compile(knn_match="text") applied

    def one(label: str, params: dict[str, dict[str, Any]], used: set[int], *levers: str) -> Raw:
        if by_text and "knn" in levers:
            label = label.replace(f"{k} nearest demos", f"{k} nearest demos by text inputs")
        return (label, params, used, frozenset(levers))

    # single levers first, in order of prior promise on small models (per-input demos, calibrated
    # label scoring, constrained JSON, instructions that name the options, demo sets): the compiler
    # screens them, then orders the combinations below by the levers' measured effects
    singles: list[Raw] = [one(f"{k} nearest demos", near, set(), "knn")]
    if lead:
        singles.append(one(f"{lead}, zero-shot", decode(lead), set(), lead))
    singles += [one("json, zero-shot", fmt("json"), set(), "json"),
                one("signature instruction, zero-shot", instr(), set(), "instr"),
                one(f"{k} bootstrapped demos", demos(boot_k), boot_rows, "boot"),
                one(f"{k} labelled demos", demos(lab_k), lab_rows, "labelled"),
                one(f"{2 * k} bootstrapped demos", demos(boot_2k), boot2_rows, "boot2k"),
                one("chat, zero-shot", fmt("chat"), set(), "chat")]
    combos: list[Raw] = []
    if lead:
        combos += [one(f"{lead} + signature instruction", merge(decode(lead), instr()), set(), lead, "instr"),
                   one(f"{lead} + {k} nearest demos", merge(decode(lead), near), set(), lead, "knn")]
    combos += [one(f"json + {k} nearest demos + signature instruction", merge(fmt("json"), near, instr()), set(),
                   "json", "knn", "instr")]
    if lead:
        combos.append(one(f"{lead} + {k} nearest demos + signature instruction",
                          merge(decode(lead), near, instr()), set(), lead, "knn", "instr"))
    combos += [one(f"json + {k} nearest demos", merge(fmt("json"), near), set(), "json", "knn"),
               one(f"{k} nearest demos + signature instruction", merge(near, instr()), set(), "knn", "instr")]
    if lead:
        combos.append(one(f"{lead} + {k} bootstrapped demos", merge(decode(lead), demos(boot_k)), boot_rows,
                          lead, "boot"))
        if "score" in decodes and lead != "score":
            combos.append(one(f"score + {k} nearest demos", merge(decode("score"), near), set(), "score", "knn"))
    combos.append(one(f"json + {k} bootstrapped demos", merge(fmt("json"), demos(boot_k)), boot_rows,
                      "json", "boot"))
    if lead:
        combos.append(one(f"{lead} + {k} labelled demos", merge(decode(lead), demos(lab_k)), lab_rows,
                          lead, "labelled"))
    combos.append(one("json + signature instruction", merge(fmt("json"), instr()), set(), "json", "instr"))
    if lead:
        combos.append(one(f"{lead} + {2 * k} bootstrapped demos", merge(decode(lead), demos(boot_2k)), boot2_rows,
                          lead, "boot2k"))
    combos += [one(f"{k} bootstrapped demos + signature instruction", merge(demos(boot_k), instr()), boot_rows,
                   "boot", "instr"),
               one(f"completion + {k} bootstrapped demos", merge(fmt("completion"), demos(boot_k)), boot_rows,
                   "completion", "boot"),
               one(f"chat + {k} bootstrapped demos", merge(fmt("chat"), demos(boot_k)), boot_rows, "chat", "boot")]
    if words:  # label words (Compile(verbalize=...)): alone, then with the levers that lead on labels
        singles.append(one("verbalized labels, zero-shot", verbal(), set(), "verbal"))
        combos[:0] = [one(f"json + {k} nearest demos + verbalized labels", merge(fmt("json"), near, verbal()),
                          set(), "json", "knn", "verbal"),
                      one(f"{k} nearest demos + verbalized labels", merge(near, verbal()), set(), "knn", "verbal"),
                      one(f"json + {k} nearest demos + verbalized labels + signature instruction",
                          merge(fmt("json"), near, verbal(), verbal_instr()), set(), "json", "knn", "verbal", "instr")]
        if lead:  # scored continuations are the words too
            combos.insert(2, one(f"{lead} + {k} nearest demos + verbalized labels", merge(decode(lead), near, verbal()),
                                 set(), lead, "knn", "verbal"))
    # model choice: every node on each other model of the context, then (several model nodes)
    # one node at a time -- single levers, screened early, since a user who lists models wants
    # them compared
    lm_nodes = [n for n, m in mods.items() if "lm" in m.tunable]
    model_specs: list[Raw] = []
    for name in opt._model_names(ctx):
        model_specs.append(one(f"model {name}", {n: {"lm": name} for n in lm_nodes
                                                 if getattr(mods[n], "lm", None) != name}, set(), f"model {name}"))
        if len(lm_nodes) > 1:
            model_specs += [one(f"{n} on model {name}", {n: {"lm": name}}, set(), f"{n} on model {name}")
                            for n in lm_nodes if getattr(mods[n], "lm", None) != name]
    singles[3:3] = model_specs
    raw = singles + combos
    out, seen = [], set()
    for label, params, used, levers in raw:
        params = {n: p for n, p in params.items() if p}
        if not params:
            continue
        try:
            prog = program.with_parameters({f"{n}.{k}": v for n, p in params.items() for k, v in p.items()})
        except DefinitionError:
            continue
        h = prog.content_hash()
        if h in seen or h == program.content_hash():
            continue
        seen.add(h)
        out.append(Spec(label, params, frozenset(used), prog, _per_row(prog), levers=levers))
    return out


def verbalizers(opt: Any, mods: Mapping[str, Any]) -> dict[str, dict[Any, str]]:
    """The label words the compile tries, by node (``opt.verbalize``): ``True`` -- for each node
    with one Literal/Enum output whose labels read as identifiers, :func:`plain_words`; a mapping
    -- the user's words for the nodes it names (``{node: {label: word}}``); else none. With
    ``True``, nodes that already have a verbalizer keep it, and the words a proposer model wrote
    for a node (``opt._proposed_words``, see :mod:`.proposals`) stand in for its plain words."""
    how = getattr(opt, "verbalize", False)
    proposed: Mapping[str, dict[Any, str]] = getattr(opt, "_proposed_words", None) or {}
    out: dict[str, dict[Any, str]] = {}
    unknown = [n for n in how if n not in mods] if isinstance(how, Mapping) else []
    if unknown:
        raise DefinitionError(f"Compile(verbalize=...) names node {unknown[0]!r}, which has no tunable module",
                              fix=f"nodes: {', '.join(mods) or 'none'}; e.g. verbalize={{'classify': {{'pos': "
                                  "'positive'}}}}, or verbalize=True for plain words from identifier labels.")
    for n, m in mods.items():
        if "verbalizer" not in m.tunable:
            if isinstance(how, Mapping) and n in how:
                raise DefinitionError(f"Compile(verbalize=...) names node {n!r}, whose module has no label words "
                                      "to set", node=n, fix="name Predict or ChainOfThought nodes.")
            continue
        if isinstance(how, Mapping):
            if n in how:
                normalise_verbalizer(how[n], m.signature, node=n)  # bad words fail here, before any call
                out[n] = dict(how[n])
        elif how and not m.verbalizer:
            field = label_field(m.signature)
            words = plain_words(literal_options(field.annotation) or ()) if field is not None else {}
            words = proposed.get(n) or words  # a proposer model's names stand in for the plain words
            if words:
                out[n] = words
    return out


#: the levers whose demo sets are a random draw, and the pool each is drawn from
DRAWN_LEVERS = {"labelled": "labelled", "boot": "boot", "boot2k": "boot"}


def redraws(ranked: Sequence[Spec], program: Program, boot: Mapping[str, list[tuple[int, Demo]]],
            labelled: Mapping[str, list[tuple[int, Demo]]], seed: int, known: set[str], max_draws: int) -> list[Spec]:
    """The next draw of every candidate in ``ranked`` (best first) whose demos are a random draw
    (labelled or bootstrapped demo sets): the same changes, each node's demos drawn again,
    label-balanced and as many, from the pool the first draw came from -- a draw can matter as
    much as the lever (a 135M model's HotPotQA F1 moves by 0.1 between draws of 4 labelled demos).
    Candidates at ``max_draws`` already, and draws whose program is in ``known`` (content hashes,
    updated here), are skipped."""
    out: list[Spec] = []
    for s in ranked:
        source = next((DRAWN_LEVERS[lv] for lv in sorted(s.levers) if lv in DRAWN_LEVERS), None)
        if source is None or s.draw >= max_draws:
            continue
        pool = labelled if source == "labelled" else boot
        label = f"{s.family} (draw {s.draw + 1})"
        rng = random.Random(f"redraw:{seed}:{label}")
        params = {node: dict(p) for node, p in s.params.items()}
        used: set[int] = set()
        for node, p in params.items():
            if "demos" in p and pool.get(node):
                pick = balanced(pool[node], _demo_sig(program, node), len(p["demos"]), rng)
                p["demos"] = [d for _, d in pick]
                used |= {i for i, _ in pick}
        try:
            prog = program.with_parameters({f"{n}.{k}": v for n, p in params.items() for k, v in p.items()})
        except DefinitionError:
            continue
        h = prog.content_hash()
        if h in known:
            continue
        known.add(h)
        out.append(Spec(label, params, frozenset(used), prog, _per_row(prog), levers=s.levers, draw=s.draw + 1))
    return out


__all__ = ["DRAWN_LEVERS", "Spec", "backend_scores", "balanced", "compile_specs", "redraws", "signature_instruction",
           "tunable_modules", "verbalizers"]
