"""Loading is a trust boundary: one checked loader (envelope, hash, optional HMAC signature, size
and depth limits), hashed checkpoint lines, and malformed cache entries treated as misses."""

from __future__ import annotations

import json
from pathlib import Path

import diskcache
import pytest

import lmgraph as lg
from lmgraph.cache import DiskCache
from lmgraph.errors import ArtifactError, ConfigError, SignatureError
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import BootstrapRandomSearch, load_artifact, read_artifact, save_artifact
from lmgraph.optimizers.artifact import artifact_dict
from lmgraph.pipeline.loading import canonical_json, content_hash, envelope, read_document, read_json_file
from lmgraph.testing import FunctionLM

from helpers import sentiment_fn, sentiment_program, sentiment_rows

KEY = b"team-signing-key"


# ----------------------------------------------------------------------------- the envelope


def test_program_save_writes_an_envelope_that_load_checks(tmp_path: Path) -> None:
    prog = sentiment_program()
    path = prog.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert list(data) == ["lmgraph_artifact", "program", "content_hash"]
    assert data["content_hash"] == content_hash(data) and lg.Program.load(path) == prog
    # removing the envelope does not get a tampered program past the check (the issue's probe)
    tampered = dict(data["program"])
    tampered["nodes"][0]["module"]["instructions"] = "Always answer positive."
    path.write_text(json.dumps(tampered))
    with pytest.raises(ArtifactError, match="no envelope") as ei:
        lg.Program.load(path)
    assert str(path) in str(ei.value) and "trusted=True" in ei.value.fix
    assert lg.Program.load(path, trusted=True).module("clf").instructions == "Always answer positive."
    # an envelope whose hash was deleted is refused the same way (loadable when trusted)
    data["program"]["nodes"][0]["module"]["instructions"] = "edited on purpose"
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "content_hash"}))
    with pytest.raises(ArtifactError, match="no content hash"):
        lg.Program.load(path)
    assert lg.Program.load(path, trusted=True).module("clf").instructions == "edited on purpose"
    # a wrong hash is refused even when trusted: it says the file is not what was saved
    path.write_text(json.dumps({**data, "content_hash": "0" * 64}))
    with pytest.raises(ArtifactError, match="does not match its content hash"):
        lg.Program.load(path, trusted=True)


def test_unsigned_artifacts_keep_their_bytes(tmp_path: Path) -> None:
    prog = sentiment_program()
    body = artifact_dict(prog)
    # the hash is what it always was: sha256 of the canonical JSON without the hash itself
    import hashlib

    legacy = {"lmgraph_artifact": 1, "program": prog.to_dict()}
    assert body["content_hash"] == hashlib.sha256(canonical_json(legacy).encode()).hexdigest()
    assert "signature" not in body


# ----------------------------------------------------------------------------- signatures


def test_signed_artifacts_verify_with_the_key_and_only_with_it(tmp_path: Path) -> None:
    prog = sentiment_program()
    path = save_artifact(tmp_path / "a.json", prog, sign_key=KEY)
    data = json.loads(path.read_text())
    assert data["signature"].startswith("hmac-sha256:") and KEY.decode() not in path.read_text()
    assert load_artifact(path, verify_key=KEY)[0] == prog
    assert load_artifact(path, verify_key=KEY.decode())[0] == prog  # str keys are UTF-8
    assert load_artifact(path)[0] == prog  # no key asked: the hash is still checked
    with pytest.raises(ArtifactError, match="signature that does not match verify_key") as ei:
        load_artifact(path, verify_key=b"another key")
    assert str(path) in str(ei.value) and ei.value.fix
    # an attacker who edits the file and recomputes the content hash cannot recompute the signature
    data["program"]["nodes"][0]["module"]["instructions"] = "Always answer positive."
    data["content_hash"] = content_hash(data)
    path.write_text(json.dumps(data))
    assert load_artifact(path)[0].module("clf").instructions == "Always answer positive."  # intact, not authentic
    with pytest.raises(ArtifactError, match="signature that does not match"):
        load_artifact(path, verify_key=KEY)
    # an unsigned file is refused when a signature is asked for
    unsigned = save_artifact(tmp_path / "u.json", prog)
    with pytest.raises(ArtifactError, match="not signed"):
        read_artifact(unsigned, verify_key=KEY)
    # a bare file cannot pass for signed even when trusted
    (tmp_path / "bare.json").write_text(json.dumps(prog.to_dict()))
    with pytest.raises(ArtifactError, match="not signed"):
        lg.Program.load(tmp_path / "bare.json", trusted=True, verify_key=KEY)


def test_programs_can_be_signed_too(tmp_path: Path) -> None:
    prog = sentiment_program()
    path = prog.save(tmp_path / "p.json", sign_key=KEY)
    assert lg.Program.load(path, verify_key=KEY) == prog
    with pytest.raises(ArtifactError, match="signature"):
        lg.Program.load(path, verify_key=b"nope")
    for bad in (b"", "", 42):
        with pytest.raises(ConfigError):
            prog.save(tmp_path / "q.json", sign_key=bad)
        with pytest.raises(ConfigError):
            lg.Program.load(path, verify_key=bad)


# ----------------------------------------------------------------------------- limits and odd files


def test_size_and_depth_limits(tmp_path: Path) -> None:
    path = sentiment_program().save(tmp_path / "p.json")
    with pytest.raises(ArtifactError, match="over the 100-byte limit") as ei:
        read_document(path, max_bytes=100)
    assert str(path) in str(ei.value) and "max_bytes" in ei.value.fix
    deep = tmp_path / "deep.json"
    for depth in (300, 100_000):  # under and over Python's recursion limit
        deep.write_text("[" * depth + "]" * depth)
        with pytest.raises(ArtifactError, match="nested too deeply"):
            lg.Program.load(deep)
    deep.write_text(json.dumps({"program": {"a": [[[[1]]]]}}))
    assert read_json_file(deep, max_depth=6)
    with pytest.raises(ArtifactError):
        read_json_file(deep, max_depth=5)


@pytest.mark.parametrize("content, match", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "not an lmgraph artifact"),
    (b'{"lmgraph_artifact": true, "program": {}}', "format version True"),
    (b'{"lmgraph_artifact": 1, "program": {}, "content_hash": 5}', "does not match its content hash"),
])
def test_odd_files_are_artifact_errors(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match=match) as ei:
        lg.Program.load(path)
    assert str(path) in str(ei.value) and ei.value.fix
    with pytest.raises(ArtifactError, match="is a directory"):
        lg.Program.load(tmp_path)


def _with_type(spec: object) -> dict:
    data = sentiment_program().to_dict()
    data["types"] = {"Thing": spec}  # every saved type is rebuilt on load, used or not
    return data


@pytest.mark.parametrize("spec, match", [
    ({"kind": "model", "schema": {"properties": {"a": {"$ref": "#/$defs/A"}},
                                  "$defs": {"A": {"properties": {"a": {"$ref": "#/$defs/A"}}}}}}, "recursive"),
    ({"kind": "model", "schema": {"properties": {"__class__": {"type": "string"}}}}, "cannot be rebuilt"),
    ({"kind": "model", "schema": {"properties": {"x": {"type": "string", "pattern": "(["}}}}, "cannot be rebuilt"),
    ({"kind": "model", "schema": "nope"}, "cannot be rebuilt"),
    ({"kind": "enum", "values": 5}, "cannot be rebuilt"),
])
def test_the_issues_malformed_types_are_artifact_errors(tmp_path: Path, spec: object, match: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(envelope({"program": _with_type(spec)})))
    with pytest.raises(ArtifactError, match=match) as ei:
        lg.Program.load(path)
    assert ei.value.fix and isinstance(ei.value.__cause__, SignatureError)


# ----------------------------------------------------------------------------- checkpoints


def _compile(ckpt: Path) -> FunctionLM:
    lm = FunctionLM(sentiment_fn)
    rows = sentiment_rows(36, period=3)
    BootstrapRandomSearch(2, num_candidates=3, checkpoint=ckpt).optimize(
        sentiment_program(), rows, label_accuracy(), seed=0, ctx=lg.RunContext(lm=lm, cache=False))
    return lm


def test_checkpoint_lines_are_hashed_and_edits_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.jsonl"
    _compile(ckpt)
    lines = ckpt.read_text().splitlines()
    assert len(lines) >= 3 and all("sha256" in json.loads(line) for line in lines[1:])
    assert len(_compile(ckpt).calls) == 0  # intact: everything replays
    # the issue's probe: scores edited to 1.0 were trusted
    rec = json.loads(lines[1])
    rec["entry"]["scores"] = [1.0] * len(rec["entry"]["scores"])
    ckpt.write_text("\n".join([lines[0], json.dumps(rec), *lines[2:]]) + "\n")
    with pytest.raises(ArtifactError, match="line 2 does not match its hash") as ei:
        _compile(ckpt)
    assert str(ckpt) in str(ei.value) and "delete it" in ei.value.fix
    # lines moved around (each intact) break the chain too
    ckpt.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    with pytest.raises(ArtifactError, match="line 2 does not match its hash"):
        _compile(ckpt)
    # a line without its hash (the previous format) is refused with the fix
    ckpt.write_text("\n".join([lines[0], json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "sha256"})])
                    + "\n")
    with pytest.raises(ArtifactError, match="corrupted at line 2"):
        _compile(ckpt)


def test_old_checkpoint_format_is_refused_clearly(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.jsonl"
    _compile(ckpt)
    head = json.loads(ckpt.read_text().splitlines()[0])
    ckpt.write_text(json.dumps({**head, "lmgraph_checkpoint": 2}) + "\n")
    with pytest.raises(ArtifactError, match="format version 2; this lmgraph reads version 3") as ei:
        _compile(ckpt)
    assert "delete it" in ei.value.fix


# ----------------------------------------------------------------------------- cache entries


@pytest.mark.parametrize("bad", [
    '{"text": 5}', '{"usage": {"prompt_tokens": "many"}, "text": "x"}', '{"no": "text"}', "[1, 2]",
    '{"text": "x", "usage": []}', '{"text": "x", "logprobs": "high"}', '{"text": "x", "cost": -1}',
])
def test_malformed_cache_entries_are_misses_and_get_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             bad: str) -> None:
    prog = sentiment_program()
    lm = FunctionLM(sentiment_fn)
    directory = tmp_path / "cache"
    with DiskCache(directory) as cache:
        assert prog.run_sync(lg.RunContext(lm=lm, cache=cache), sentence="a good film").label == "positive"
    raw = diskcache.Cache(str(directory))
    (key,) = list(raw)
    raw.set(key, bad)  # valid JSON (mostly), not a response
    raw.close()
    with DiskCache(directory) as cache:  # a fresh process: nothing in memory
        out = prog.run_sync(lg.RunContext(lm=lm, cache=cache), sentence="a good film")
        assert out.label == "positive" and len(lm.calls) == 2  # a miss: the model answered again
        assert "malformed cache entry" in caplog.text or "not a JSON object" in caplog.text
    raw = diskcache.Cache(str(directory))
    assert json.loads(raw[key])["text"] == " positive"  # replaced by the new answer
    raw.close()
    with DiskCache(directory) as cache:
        prog.run_sync(lg.RunContext(lm=lm, cache=cache), sentence="a good film")
    assert len(lm.calls) == 2  # and served from the cache again
