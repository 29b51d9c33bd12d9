"""The shipped examples stay runnable and in sync (no model calls)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import lmgraph as lg

ROOT = Path(__file__).resolve().parents[1]


def _demo():
    spec = importlib.util.spec_from_file_location("demo_example", ROOT / "examples" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_saved_demo_program_is_the_demo_program():
    saved = lg.Program.load(ROOT / "examples" / "trec.json")
    assert saved.content_hash() == _demo().build().content_hash()


def test_show_prompts_of_the_saved_demo_program_prints_the_completion_prompt():
    out = subprocess.run([sys.executable, "-m", "lmgraph", "show", str(ROOT / "examples" / "trec.json"), "--prompts",
                          "--inputs", '{"question": "How far is it from Denver to Aspen?"}'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "format=completion" in out.stdout
    assert "Question: How far is it from Denver to Aspen?\nAnswer type:" in out.stdout


def test_cli_trusted_flag_loads_a_program_file_without_the_envelope(tmp_path):
    import json

    doc = json.loads((ROOT / "examples" / "trec.json").read_text())
    bare = tmp_path / "old.json"
    bare.write_text(json.dumps(doc["program"]))  # as an older lmgraph wrote it: no version/hash envelope
    cmd = [sys.executable, "-m", "lmgraph"]
    refused = subprocess.run([*cmd, "render", str(bare)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "trusted" in refused.stderr
    ok = subprocess.run([*cmd, "--trusted", "render", str(bare)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "classify" in ok.stdout
