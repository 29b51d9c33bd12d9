"""One canonical JSON function (lmgraph/_canonical.py) for everything lmgraph hashes, keys or
compares by content -- and the texts it gives are the ones recorded before it existed."""

from __future__ import annotations

import ast
import datetime
import hashlib
import json
from pathlib import Path

import pydantic

from lmgraph._canonical import canonical_json

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmgraph"
VALUES = [
    {"b": [1, 2.5, None, True, -0.0], "a": {"é": "ü\u2028\"\\", "z": {"y": [], "x": {}}}},
    [{"k": 1e-7}, "plain", 3], "text", 12, None,
    {"request": {"messages": [{"role": "user", "content": "héllo 😀"}], "stop": ["\n"], "temperature": 0.7}},
]


def _sorting_json_calls(path: Path) -> list[tuple[int, bool]]:
    """(line, has indent=) of every json.dump/json.dumps call in ``path`` that passes sort_keys."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
        keywords = {k.arg for k in node.keywords}
        if name in ("dumps", "dump") and "sort_keys" in keywords:
            found.append((node.lineno, "indent" in keywords))
    return found


def test_sort_keys_is_passed_only_by_the_canonical_function() -> None:
    """Anything hashed, used as a cache key or signed goes through canonical_json; the only other
    sorted JSON allowed is a pretty-printed file (indent=), whose key order is layout for people."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "_canonical.py":
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line}" for line, indented in _sorting_json_calls(path)
                      if not indented]
    assert not offenders, ("json.dumps(..., sort_keys=True) outside lmgraph/_canonical.py -- use "
                           "canonical_json(value) there:\n" + "\n".join(offenders))


def test_the_scan_sees_a_sorting_call() -> None:
    """The scan above is not vacuous: it finds the canonical function's own call and a pretty-printed one."""
    assert len(_sorting_json_calls(PACKAGE / "_canonical.py")) == 1
    assert (True in {ind for _, ind in _sorting_json_calls(PACKAGE / "optimizers" / "artifact.py")})


def test_every_hashing_module_uses_the_one_function() -> None:
    from lmgraph.cache import keys
    from lmgraph.pipeline import loading, serialize

    assert keys.canonical_json is loading.canonical_json is serialize.canonical_json is canonical_json


def test_byte_for_byte_the_texts_recorded_before() -> None:
    for value in VALUES:
        assert canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical_json(value, compact=False) == json.dumps(value, sort_keys=True, ensure_ascii=False)
    odd = {"when": datetime.date(2026, 12, 4), "set": {1}}
    assert canonical_json(odd, default=str) == json.dumps(odd, sort_keys=True, separators=(",", ":"),
                                                          ensure_ascii=False, default=str)


def test_pinned_cache_key_and_fingerprint() -> None:
    """Cache keys and data fingerprints computed before the function was shared (literal digests)."""
    from lmgraph.cache.keys import KeyMaker, cache_key
    from lmgraph.evaluation.datasets import fingerprint
    from lmgraph.lm.base import LMRequest, Message

    ident = {"backend": "llama.cpp", "model": "m.gguf", "n_ctx": 2048, "api_key": "sk-x"}
    req = LMRequest(messages=(Message(role="user", content="héllo"),), temperature=0.0, max_tokens=8, stop=("\n",),
                    json_schema={"type": "object", "b": 1, "a": 2})
    key = "976a309fdab577a9fd41f5d99633e9ed90cdd457e7a7eec15ad65d8fb795b54d"
    assert cache_key(ident, req) == KeyMaker()(ident, req) == key
    assert fingerprint([{"q": "é?", "label": 1}, {"q": "b", "label": 2, "x": None}]) == "be0e7ddd9137dfb8"


def test_the_committed_artifact_still_verifies_and_hashes_the_same() -> None:
    from lmgraph.optimizers.artifact import read_artifact
    from lmgraph.pipeline.program import Program

    data = read_artifact(ROOT / "examples" / "trec.compiled.json")  # content hash checked
    program = Program.from_dict(data["program"])
    old = hashlib.sha256(json.dumps(program.to_dict(), sort_keys=True, separators=(",", ":"),
                                    ensure_ascii=False).encode()).hexdigest()
    assert program.content_hash() == old


def test_vote_keys_and_signature_identity() -> None:
    from lmgraph.modules.best_of_n import vote_key
    from lmgraph.signatures import Signature

    assert vote_key({"b": 1, "a": ["é"]}) == '{"a": ["é"], "b": 1}'  # spaced, as traces have shown it

    def person(field_type):  # noqa: ANN001, ANN202 - a fresh class named Person each time
        return pydantic.create_model("Person", name=(field_type, ...))

    same_a, same_b, other = person(str), person(str), person(int)
    sig = lambda t: Signature.parse("q -> p: Person", types={"Person": t})  # noqa: E731
    # custom types count by content (their canonical JSON), not by identity or name alone
    assert sig(same_a) == sig(same_b) and hash(sig(same_a)) == hash(sig(same_b))
    assert sig(same_a) != sig(other)
