"""Compiled artifacts: round trip, content hash, loading without optimizer code, diff and its text."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lmgraph as lg
from lmgraph.errors import ArtifactError, DefinitionError
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import (
    BootstrapFewShot,
    decompose_node,
    diff,
    format_diff,
    load_artifact,
    read_artifact,
    save_artifact,
)
from lmgraph.optimizers.artifact import _canonical, artifact_dict
from lmgraph.testing import FunctionLM

from helpers import sentiment_fn, sentiment_program, sentiment_rows

REPO = Path(__file__).resolve().parents[1]


ROWS = sentiment_rows(24)


@pytest.fixture(scope="module")
def compiled() -> tuple[lg.Program, lg.Program, object]:
    prog = sentiment_program()
    new, rep = BootstrapFewShot(2).optimize(prog, ROWS[:12], label_accuracy(), valset=ROWS[12:],
                                            ctx=lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False))
    assert len(new.module("clf").demos) == 2
    return prog, new, rep


def test_round_trip_keeps_program_and_report(tmp_path: Path, compiled) -> None:  # noqa: ANN001
    _, new, rep = compiled
    path = save_artifact(tmp_path / "sub" / "a.json", new, rep)
    loaded, report = load_artifact(path)
    assert loaded == new and loaded.content_hash() == new.content_hash()
    assert report == json.loads(json.dumps(rep.to_dict(timing=False)))
    assert report["best_score"] == 1.0 and report["candidates"][1]["status"] == "accepted"
    data = read_artifact(path)
    assert data["data"] == rep.data and "wall_s" not in data["report"] and "runtime" not in data["report"]
    # deterministic bytes: sorted keys, no timestamps; saving again gives the same file
    again = save_artifact(tmp_path / "b.json", *load_artifact(path)[:1], rep)
    assert again.read_bytes() == path.read_bytes()
    # the loaded program runs and the demos do their work
    out = loaded.run_sync(lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False), sentence="a bad film")
    assert out.label == "negative"
    # an artifact without a report is fine too, and Program.load reads artifacts
    bare = save_artifact(tmp_path / "bare.json", new)
    assert load_artifact(bare) == (new, {}) and lg.Program.load(bare) == new


def test_content_hash_is_verified(tmp_path: Path, compiled) -> None:  # noqa: ANN001
    _, new, rep = compiled
    path = save_artifact(tmp_path / "a.json", new, rep)
    data = json.loads(path.read_text())
    assert data["content_hash"] == artifact_dict(new, rep)["content_hash"]
    # tamper with a demo: still valid JSON, but not the file that was saved
    node = next(n for n in data["program"]["nodes"] if n["name"] == "clf")
    node["module"]["demos"][0]["sentiment"] = "positive" if node["module"]["demos"][0]["sentiment"] == "negative" \
        else "negative"
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    with pytest.raises(ArtifactError, match="does not match its content hash") as e:
        load_artifact(path)
    assert "Fix:" in str(e.value)
    # the report is covered by the hash too
    data = json.loads(save_artifact(path, new, rep).read_text())
    data["report"]["best_score"] = 0.99
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="content hash"):
        read_artifact(path)


def test_program_load_verifies_artifact_hash(tmp_path: Path, compiled) -> None:  # noqa: ANN001
    _, new, rep = compiled
    path = save_artifact(tmp_path / "a.json", new, rep)
    assert lg.Program.load(path) == new
    data = json.loads(path.read_text())
    data["program"]["nodes"][0]["module"]["instructions"] = "Always say positive."
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="does not match its content hash") as e:
        lg.Program.load(path)
    assert "Fix:" in str(e.value)
    # Program.save writes the same envelope; a bare program or a plain wrapper (no hash) loads
    # only when the caller says it trusts the file
    saved = new.save(tmp_path / "saved.json")
    assert lg.Program.load(saved) == new
    for name, body in (("bare.json", new.to_dict()), ("wrapped.json", {"program": new.to_dict()})):
        (tmp_path / name).write_text(json.dumps(body))
        with pytest.raises(ArtifactError, match="no envelope"):
            lg.Program.load(tmp_path / name)
        assert lg.Program.load(tmp_path / name, trusted=True) == new
    (tmp_path / "v99.json").write_text(json.dumps({"lmgraph_artifact": 99, "program": new.to_dict()}))
    with pytest.raises(ArtifactError, match="not an lmgraph artifact"):
        lg.Program.load(tmp_path / "v99.json")


@pytest.mark.parametrize("content, match", [
    (None, "no artifact"),
    ("{oops", "not valid JSON"),
    ('{"lmgraph_artifact": 99}', "not an lmgraph artifact"),
    ('{"program": {}}', "not an lmgraph artifact"),
])
def test_unreadable_artifacts(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "x.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ArtifactError, match=match):
        load_artifact(path)


def _walk(obj: object) -> list[object]:
    out = [obj]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += [k, *_walk(v)]
    elif isinstance(obj, list):
        for v in obj:
            out += _walk(v)
    return out


def test_artifact_is_plain_data_and_loads_without_optimizer_code(tmp_path: Path, compiled) -> None:  # noqa: ANN001
    _, new, rep = compiled
    path = save_artifact(tmp_path / "a.json", new, rep)
    text = path.read_text(encoding="utf-8")
    values = _walk(json.loads(text))  # JSON parses: no pickle bytes
    assert all(v is None or isinstance(v, (str, int, float, bool, list, dict)) for v in values)
    assert not any(isinstance(v, str) and re.search(r"py/object|__reduce__|<function|<lambda>|\bgASV", v)
                   for v in values)
    # a fresh interpreter loads and runs it with no optimizer module imported
    code = (
        "import sys, lmgraph as lg\n"
        "from lmgraph.testing import FunctionLM\n"
        f"p = lg.Program.load({str(path)!r})\n"
        "lm = FunctionLM(lambda r: ' negative')\n"
        "out = p.run_sync(lg.RunContext(lm=lm, cache=False), sentence='a bad film')\n"
        "assert out.label == 'negative', out\n"
        "assert len(p.module('clf').demos) == 2\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('lmgraph.optimizers'))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO), "LMGRAPH_CACHE": "0"})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@pytest.mark.parametrize("where", ["kind", "type"])
def test_loading_executes_no_code(tmp_path: Path, compiled, where: str) -> None:  # noqa: ANN001
    _, new, _ = compiled
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    data = artifact_dict(new)
    if where == "kind":
        data["program"]["nodes"][0]["module"]["kind"] = payload
    else:
        data["program"]["inputs"][0]["type"] = payload
    body = {k: v for k, v in data.items() if k != "content_hash"}
    data["content_hash"] = hashlib.sha256(_canonical(body).encode()).hexdigest()  # passes the hash check
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(data))
    # an unknown kind is an ArtifactError; a type expression is read by an AST walker, never evaluated
    with pytest.raises(ArtifactError if where == "kind" else DefinitionError, match="Fix:"):
        load_artifact(path)
    assert not marker.exists()


def test_diff_shows_demo_and_instruction_changes(tmp_path: Path, compiled) -> None:  # noqa: ANN001
    prog, new, rep = compiled
    d = diff(prog, new)
    assert d["added"] == [] and d["removed"] == [] and list(d["changed"]) == ["clf"]
    assert d["changed"]["clf"] == {"demos": {"before": 0, "after": 2, "added": 2, "removed": 0}}
    text = format_diff(d)
    assert text.splitlines() == ["~ node clf", "    demos: 0 -> 2 (+2 -0)"]
    # instructions and format changes; from saved files as well as programs
    b = new.with_module("clf", new.module("clf").replace(instructions="Classify the sentiment.", format="chat",
                                                         demos=new.module("clf").demos[:1]))
    pa = save_artifact(tmp_path / "a.json", new, rep)
    pb = b.save(tmp_path / "b.json")
    d2 = diff(pa, pb)
    ch = d2["changed"]["clf"]
    assert ch["instructions"]["after"] == "Classify the sentiment."
    assert ch["format"] == {"before": "completion", "after": "chat"}
    assert ch["demos"] == {"before": 2, "after": 1, "added": 0, "removed": 1}
    text2 = format_diff(d2)
    assert "    format: completion -> chat" in text2 and "    demos: 2 -> 1 (+0 -1)" in text2
    assert "instructions: " in text2 and "Classify the sentiment." in text2
    assert format_diff(diff(new, new)) == "(no differences)"
    assert diff(new, new) == {"added": [], "removed": [], "changed": {}}


def test_diff_shows_added_and_removed_nodes() -> None:
    prog = sentiment_program()
    dec = decompose_node(prog, "clf", max_steps=2)
    d = diff(prog, dec)
    assert d["added"] == ["clf__plan", "clf__steps"] and d["removed"] == []
    assert "signature" in d["changed"]["clf"] and "bindings" in d["changed"]["clf"]
    assert "outputs" not in d  # the combine node kept the old name: outputs unchanged
    text = format_diff(d)
    assert text.startswith("+ node clf__plan\n+ node clf__steps\n~ node clf")
    back = diff(dec, prog)
    assert back["removed"] == ["clf__plan", "clf__steps"] and back["added"] == []
    assert "- node clf__plan" in format_diff(back)
    # an output rebinding shows up too
    p = lg.Pipeline("sentiment")
    n = p.add(lg.Predict("sentence -> sentiment: Literal['negative', 'positive']", format="completion"),
              name="other", sentence=p.input("sentence"))
    p.output(label=n.sentiment)
    d3 = diff(prog, p.build())
    assert d3["added"] == ["other"] and d3["removed"] == ["clf"]
    assert d3["outputs"] == {"before": {"label": "clf.sentiment"}, "after": {"label": "other.sentiment"}}
    assert "~ outputs:" in format_diff(d3)
