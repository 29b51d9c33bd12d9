"""The one canonical JSON text lmgraph hashes, keys caches by, signs and compares values by.

Every place that turns a value into text to hash it (artifact content hashes and signatures,
program content hashes, model-call cache keys, checkpoint hash chains, data fingerprints) or to
compare values by content (vote keys, de-duplicated demos, custom types in a signature's
identity) calls :func:`canonical_json`; nothing else in ``lmgraph/`` passes ``sort_keys=True``
for that purpose (``tests/test_canonical_json.py`` checks it). A pretty-printed file (an
``indent=`` for people to read) may sort its keys too: that is layout, not identity.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["canonical_json"]

_COMPACT = (",", ":")
_SPACED = (", ", ": ")  # json.dumps' own default separators


def canonical_json(value: Any, *, default: Callable[[Any], Any] | None = None, compact: bool = True) -> str:
    """Deterministic JSON text of ``value``: keys sorted, unicode unescaped, no whitespace.

    ``default`` turns values JSON has no form for into ones it has (e.g. ``str``; without it such
    a value raises ``TypeError``). ``compact=False`` writes ``json.dumps``' default separators
    (``", "`` and ``": "``): only for texts already recorded that way -- the data fingerprints in
    reports, artifacts and checkpoints, and best-of-n vote keys shown in traces -- which must
    stay byte-for-byte what they were.
    """
    return json.dumps(value, sort_keys=True, separators=_COMPACT if compact else _SPACED,
                      ensure_ascii=False, default=default)
