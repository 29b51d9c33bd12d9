"""What a proposer model writes for the default compiler (``Compile(proposer_lm=...)``).

* **Instructions** (APE forward generation): the proposer is shown input/output pairs of a node
  from the search rows and writes the instruction that produced them; each proposal is a candidate.
* **Label words** (with ``Compile(verbalize=True)``): for a node with one Literal/Enum output, the
  proposer is shown the labels (and one search-row input of each, when there are not too many) and
  writes a short plain-English name for each -- a *verbalizer*, the names or descriptions of the
  options the model is shown instead of the codes. Its answer (``label: name`` lines) is parsed and
  checked like a user's verbalizer: unknown labels, empty or overlong names and names two labels
  would share are dropped (those labels are shown as themselves). The words stand in for the plain
  words written from identifier labels (``card_arrival`` -> ``card arrival``) in the verbalized
  candidates, so a proposer can name labels that are already words, or say what a code means.

Both go through the compile's session: budgeted, traced, and memoised in its checkpoint (a resumed
compile sees the same proposals). A 135M task model writes nonsense as a proposer, so nothing is
proposed unless ``proposer_lm`` names a model of the run context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import DefinitionError
from ..lm.values import format_value
from ..modules.predict import Predict
from ..modules.verbalizer import _norm, label_field, normalise_verbalizer
from ..pipeline.builder import Pipeline
from ..pipeline.program import Program
from ..signatures import Signature, literal_options
from .candidates import Spec, _per_row, tunable_modules
from .fewshot import _demo_sig
from .instructions import _memo_generate, propose_instructions
from .session import BudgetStop, CompileSession

Demo = dict[str, Any]

#: The proposer's instructions for label words.
LABEL_WORDS_INSTRUCTIONS = (
    "A classifier answers with one of the labels listed below. For every label, write a short plain-English "
    "name (one to five words) that says what the label means, so that someone who has never seen the "
    "labels could pick the right one. Answer with one line per label, in the form `label: name`, in the "
    "order given, and nothing else.")

#: names longer than this (characters / words) are not label words but sentences: dropped
MAX_WORD_CHARS = 60
MAX_WORD_WORDS = 8

_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)])\s*")
_SEP = re.compile(r"\s*(?::|->|=>|=|\s-\s)\s*")


async def instruction_specs(session: CompileSession, program: Program, pool: Mapping[str, list[tuple[int, Demo]]],
                            *, proposer_lm: str | None, num_proposals: int, max_demos: int) -> list[Spec]:
    """Candidates with instructions a proposer model wrote from search-row examples (APE)."""
    if proposer_lm is None or not num_proposals:
        return []
    out: list[Spec] = []
    mods = tunable_modules(program)
    for node, items in pool.items():
        m = mods.get(node)
        if m is None or "instructions" not in m.tunable or not items:
            continue
        session.reporter.phase(f"{node}: a proposer model writes instructions")
        examples = [d for _, d in items[:2 * max_demos]]
        try:
            texts = await propose_instructions(session, _demo_sig(program, node), examples, num_proposals,
                                               proposer_lm=proposer_lm, exclude=[m.instructions])
        except BudgetStop:
            break
        for i, text in enumerate(texts, 1):
            params = {node: {"instructions": text}}
            try:
                prog = program.with_parameters({f"{node}.instructions": text})
            except DefinitionError:
                continue
            used = frozenset(r for r, _ in items[:2 * max_demos])  # the proposer saw these rows
            out.append(Spec(f"{node}: proposed instruction {i} ({text[:40]!r})", params, used, prog,
                            _per_row(prog)))
    return out


def label_word_nodes(program: Program) -> list[str]:
    """Nodes whose label words a proposer may write: one Literal/Enum output of text labels, a
    tunable verbalizer, none set yet."""
    out = []
    for n, m in tunable_modules(program).items():
        if "verbalizer" not in m.tunable or m.verbalizer:
            continue
        field = label_field(m.signature)
        if field is not None and all(isinstance(o, str) for o in literal_options(field.annotation) or ()):
            out.append(n)
    return out


def label_words_prompt(sig: Signature, examples: Mapping[Any, Mapping[str, Any]], *, max_value_chars: int = 200
                       ) -> str:
    """What the proposer reads: the labels in order, then one input of each label it has one for."""
    field = label_field(sig)
    options = literal_options(field.annotation) if field is not None else None
    lines = ["Labels:", *(f"- {o}" for o in options or ())]
    if examples:
        lines += ["", "An example input of each label:"]
        for label, d in examples.items():
            shown = "; ".join(f"{f.label}: {_cut(format_value(d[f.name]), max_value_chars)}"
                              for f in sig.inputs if f.name in d)
            lines.append(f"{label} <- {shown}")
    return "\n".join(lines)


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + " ..."


def parse_label_words(text: str | None, sig: Signature) -> dict[Any, str]:
    """``{label: word}`` from a proposer's ``label: name`` lines: labels matched as the parser
    matches them, names cleaned; unknown labels, names that are sentences, names equal to their
    label and names another label already has are dropped (the rest still form a valid verbalizer)."""
    field = label_field(sig)
    if not text or field is None:
        return {}
    options = literal_options(field.annotation) or ()
    by_norm = {_norm(str(o)): o for o in options}
    out: dict[Any, str] = {}
    for line in text.splitlines():
        line = _BULLET.sub("", line.strip().strip("`"))
        parts = _SEP.split(line, maxsplit=1)
        if len(parts) != 2:
            continue
        label = by_norm.get(_norm(parts[0]))
        word = " ".join(parts[1].strip().strip("\"'`*").rstrip(".;,").split())
        if label is None or label in out or not word or word == str(label):
            continue
        if len(word) > MAX_WORD_CHARS or len(word.split()) > MAX_WORD_WORDS:
            continue
        try:
            normalise_verbalizer({**out, label: word}, sig)  # a word two labels would share is dropped
        except DefinitionError:
            continue
        out[label] = word
    return out


def _proposer(lm: str, n_labels: int) -> Program:
    p = Pipeline("label_word_proposer")
    src = p.input("labels")
    node = p.add(Predict("labels -> names", instructions=LABEL_WORDS_INSTRUCTIONS, lm=lm, temperature=0.0,
                         max_tokens=min(2048, 16 * n_labels + 32), repair=False), "propose",
                 inputs={src.field: src})
    p.output(text=node.names)
    return p.build()


async def label_words(session: CompileSession, program: Program, labelled: Mapping[str, list[tuple[int, Demo]]],
                      *, proposer_lm: str | None, max_example_labels: int = 30) -> dict[str, dict[Any, str]]:
    """The label words ``proposer_lm`` writes for each node of :func:`label_word_nodes` (one call a
    node; one search-row input per label shown when there are at most ``max_example_labels``
    labels). Nodes whose answer gave no usable word are left out; the report says what was written."""
    if proposer_lm is None:
        return {}
    out: dict[str, dict[Any, str]] = {}
    mods = tunable_modules(program)
    for node in label_word_nodes(program):
        sig = mods[node].signature
        field = label_field(sig)
        assert field is not None  # label_word_nodes keeps nodes with one label output
        options = literal_options(field.annotation) or ()
        examples: dict[Any, Mapping[str, Any]] = {}
        if len(options) <= max_example_labels:
            for _, d in labelled.get(node, []):
                if d.get(field.name) in options:
                    examples.setdefault(d[field.name], d)
            examples = {o: examples[o] for o in options if o in examples}
        session.reporter.phase(f"{node}: a proposer model names the labels")
        try:
            text = (await _memo_generate(session, _proposer(proposer_lm, len(options)),
                                         [({"labels": label_words_prompt(sig, examples)}, 0)]))[0]
        except BudgetStop:
            break
        words = parse_label_words(text, sig)
        report = session.report
        if words:
            out[node] = words
            report.data.setdefault("label_words", {})[node] = {str(k): v for k, v in words.items()}
            shown = ", ".join(f"{k} -> {v}" for k, v in list(words.items())[:6])
            report.notes.append(f"{node}: the proposer model named {len(words)} of {len(options)} labels "
                                f"({shown}{', ...' if len(words) > 6 else ''}); the verbalized candidates show them")
        else:
            report.notes.append(f"{node}: the proposer model's label words were unusable "
                                f"({_cut(text or 'no answer', 80)!r}); the verbalized candidates use plain "
                                "words, if any")
    return out
