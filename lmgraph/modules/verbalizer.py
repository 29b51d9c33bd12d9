"""Label verbalizers: the words a model is shown for the options of a Literal/Enum output.

A classifier's labels are often codes a small model has never read as words (``card_arrival``,
``ENTY``, ``0``/``1``). ``Predict(..., verbalizer={"0": "negative", "1": "positive"})`` shows the
model the words instead -- in the options the prompt lists, in the demos' answers, in a JSON
format's enum and in the continuations a scoring decode ranks -- and maps the model's word back to
the label, so the node's output, its demos and the program's metric stay in the labels' terms.
Options left out of the mapping are shown as they are.

:func:`plain_words` writes a verbalizer from the labels alone (``card_arrival`` -> ``card
arrival``, ``cardArrival`` -> ``card arrival``): what the default compiler tries as a lever when it
is asked to (``Compile(verbalize=True)``).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import DefinitionError
from ..signatures import FieldSpec, Signature, literal_options

__all__ = ["Verbalizer", "label_field", "normalise_verbalizer", "plain_words"]


def label_field(sig: Signature) -> FieldSpec | None:
    """The signature's one Literal/Enum output (None when it has none or several)."""
    outs = [f for f in sig.outputs if literal_options(f.annotation)]
    return outs[0] if len(outs) == 1 else None


def _key_matches(key: Any, option: Any) -> bool:
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, bool) != isinstance(option, bool):
        return isinstance(key, str) and key == str(option)
    return key == option or (isinstance(key, str) and not isinstance(option, str) and key == str(option))


def _norm(word: str) -> str:
    return re.sub(r"[\s_\-]+", " ", word.strip().strip("\"'`*.,;:!()[]{}").lower()).strip()


def normalise_verbalizer(value: Any, sig: Signature, node: str | None = None) -> tuple[dict[str, Any], ...]:
    """A verbalizer as a module stores it: ``({"label": option, "word": text}, ...)`` in the
    options' order, from a mapping ``{label: word}`` or such a sequence; checked against ``sig``
    (one Literal/Enum output, known labels, distinct non-empty words). Empty: no verbalizer."""
    if not value:
        return ()
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and all(
            isinstance(p, Mapping) and set(p) == {"label", "word"} for p in value):
        pairs = [(p["label"], p["word"]) for p in value]
    else:
        raise DefinitionError(f"verbalizer must map labels to words, got {type(value).__name__}", node=node,
                              fix="e.g. verbalizer={'pos': 'positive', 'neg': 'negative'}.")
    field = label_field(sig)
    if field is None:
        n = sum(1 for f in sig.outputs if literal_options(f.annotation))
        raise DefinitionError(
            f"a verbalizer needs exactly one Literal/Enum output, and {sig.shorthand()!r} has {n}", node=node,
            fix="declare the label output as Literal['a', 'b'] (one such output), or drop the verbalizer.")
    options = literal_options(field.annotation) or ()
    words: dict[int, str] = {}
    for key, word in pairs:
        pos = next((i for i, o in enumerate(options) if _key_matches(key, o)), None)
        if pos is None:
            raise DefinitionError(f"verbalizer label {key!r} is not an option of {field.name!r}", node=node,
                                  field=field.name, fix=f"the options are: {', '.join(map(repr, options))}.")
        if not isinstance(word, str) or not word.strip():
            raise DefinitionError(f"verbalizer word for {key!r} must be non-empty text, got {word!r}", node=node,
                                  field=field.name, fix="map each label to the word the model should see.")
        words[pos] = word.strip()
    shown = [words.get(i, str(o)) for i, o in enumerate(options)]
    seen: dict[str, int] = {}
    for i, w in enumerate(shown):
        j = seen.setdefault(_norm(w), i)
        if j != i:
            raise DefinitionError(
                f"verbalizer shows {options[j]!r} and {options[i]!r} as the same word {w!r}: the model's answer "
                "could not be mapped back", node=node, field=field.name,
                fix="give every label its own word (an unmapped label is shown as itself).")
    return tuple({"label": options[i], "word": w} for i, w in sorted(words.items()))


@dataclass(frozen=True)
class Verbalizer:
    """A checked verbalizer of one label output (see :func:`normalise_verbalizer`)."""

    field: str
    words: tuple[tuple[Any, str], ...]  # (option, word shown) for every option, in the options' order

    @classmethod
    def of(cls, pairs: Sequence[Mapping[str, Any]], sig: Signature) -> Verbalizer:
        field = label_field(sig)
        if field is None:  # checked when the module was built
            raise DefinitionError("a verbalizer needs exactly one Literal/Enum output")
        given = {i: p["word"] for p in pairs for i, o in enumerate(literal_options(field.annotation) or ())
                 if _key_matches(p["label"], o)}
        return cls(field.name, tuple((o, given.get(i, str(o)))
                                     for i, o in enumerate(literal_options(field.annotation) or ())))

    def signature(self, sig: Signature) -> Signature:
        """``sig`` with the label output's options replaced by the words (what the model sees)."""
        return _verbalized(sig, self)

    def demos(self, demos: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
        """The demos with their label shown as its word."""
        to_word = {_token(o): w for o, w in self.words}
        return tuple({**d, self.field: to_word.get(_token(d[self.field]), d[self.field])}
                     if self.field in d else dict(d) for d in demos)

    def labels(self, outputs: Mapping[str, Any], annotation: Any) -> dict[str, Any]:
        """The model's outputs with its word mapped back to the label."""
        out = dict(outputs)
        if self.field in out:
            to_label = {w: o for o, w in self.words}
            word = out[self.field]
            if word in to_label:
                value = to_label[word]
                out[self.field] = annotation(value) if isinstance(annotation, type) else value
        return out


def _token(value: Any) -> tuple[str, Any]:
    """A hashable key telling ``True`` from ``1`` (an Enum member by its value)."""
    if isinstance(value, enum.Enum):
        value = value.value
    return type(value).__name__, value


@functools.lru_cache(maxsize=256)
def _verbalized(sig: Signature, v: Verbalizer) -> Signature:
    words = tuple(w for _, w in v.words)
    outs = tuple(FieldSpec(f.name, Literal[words], f.desc, f.prefix) if f.name == v.field else f
                 for f in sig.outputs)
    return Signature(sig.inputs, outs, sig.instructions)


def plain_words(options: Sequence[Any]) -> dict[Any, str]:
    """A verbalizer written from the labels alone: each text label that reads as an identifier
    shown as words -- ``_`` and ``-`` as spaces, camelCase split, lower case (``card_arrival`` ->
    ``card arrival``, ``cardArrival`` -> ``card arrival``). Labels already words, and non-text
    labels, are left out; empty when no label changes or two would read the same."""
    out: dict[Any, str] = {}
    for o in options:
        if not isinstance(o, str):
            continue
        w = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", o)
        w = re.sub(r"[_\-]+", " ", w).strip()
        w = re.sub(r"\s+", " ", w)
        if w != o and w:
            out[o] = w.lower() if w != w.upper() else w
    shown = [out.get(o, str(o)) for o in options]
    if not out or len({_norm(w) for w in shown}) != len(shown):
        return {}
    return out
