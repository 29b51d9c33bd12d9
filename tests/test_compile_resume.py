"""Checkpointed compiles: kill one mid-run, resume it, get the same artifact bytes; seeds and caches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lmgraph as lg
from lmgraph.cache import DiskCache, MemoryCache
from lmgraph.errors import ArtifactError
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import BootstrapRandomSearch, load_artifact, read_artifact, save_artifact
from lmgraph.testing import FunctionLM

from helpers import sentiment_fn, sentiment_program, sentiment_rows

REPO = Path(__file__).resolve().parents[1]

# The compile, as a script: its own process so that it can be SIGKILLed. Deterministic answers
# (right only with demos in the prompt), a small sleep per call, concurrency 1 so the run is long
# enough to be killed between evaluations. Writes the artifact and its stats when it finishes.
COMPILE = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import lmgraph as lg
    from lmgraph.cache import DiskCache
    from lmgraph.evaluation import label_accuracy
    from lmgraph.optimizers import BootstrapRandomSearch, save_artifact
    from lmgraph.testing import FunctionLM

    from helpers import sentiment_fn, sentiment_program, sentiment_rows

    work, seed, latency = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

    rows = sentiment_rows(36, period=3)
    lm = FunctionLM(sentiment_fn, latency_s=latency)
    ctx = lg.RunContext(lm=lm, cache=DiskCache(work / "cache"))
    opt = BootstrapRandomSearch(2, num_candidates=6, concurrency=1, checkpoint=work / "ckpt.json")
    new, rep = opt.optimize(sentiment_program(), rows[:16], label_accuracy(), valset=rows[16:], seed=seed,
                            ctx=ctx, budget=lg.Budget(max_calls=2000))
    save_artifact(work / "artifact.json", new, rep)
    (work / "stats.json").write_text(json.dumps({"backend_calls": len(lm.calls), "runtime": rep.runtime,
                                                 "spent": rep.spent}))
''')


def _launch(work: Path, seed: int = 0, latency: float = 0.004) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    script = work.parent / "compile.py"
    if not script.exists():
        script.write_text(COMPILE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "LMGRAPH_CACHE": "0"}
    return subprocess.Popen([sys.executable, str(script), str(work), str(seed), str(latency)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _evaluations(ckpt: Path) -> int:
    """Complete memo entries in a checkpoint (JSON lines: a header, then one line per entry)."""
    try:
        return max(0, ckpt.read_text(encoding="utf-8").count("\n") - 1)
    except FileNotFoundError:
        return 0


def _finish(proc: subprocess.Popen) -> None:
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()


def test_killed_compile_resumes_to_the_same_artifact(tmp_path: Path) -> None:
    fresh = _launch(tmp_path / "fresh")  # the uninterrupted reference run, in parallel
    work = tmp_path / "run"
    proc = _launch(work)
    deadline = time.monotonic() + 30
    while _evaluations(work / "ckpt.json") < 2:
        assert proc.poll() is None, "the compile finished before it could be killed: make it slower"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "artifact.json").exists()
    done_before = _evaluations(work / "ckpt.json")
    assert done_before >= 2

    resumed = _launch(work)  # same arguments, same checkpoint and cache
    _finish(resumed)
    _finish(fresh)
    a = (work / "artifact.json").read_bytes()
    b = (tmp_path / "fresh" / "artifact.json").read_bytes()
    assert a == b
    stats_r = json.loads((work / "stats.json").read_text())
    stats_f = json.loads((tmp_path / "fresh" / "stats.json").read_text())
    assert stats_r["runtime"]["replayed_evaluations"] >= done_before > 0
    assert stats_f["runtime"]["replayed_evaluations"] == 0
    assert stats_r["backend_calls"] < stats_f["backend_calls"]
    assert stats_r["spent"] == stats_f["spent"]  # replayed evaluations are charged what they cost
    prog, report = load_artifact(work / "artifact.json")
    assert report["best_score"] == 1.0 and len(prog.module("clf").demos) >= 1


# ---------------------------------------------------------------- in-process: seeds, caches, checkpoints

ROWS = sentiment_rows(36, period=3)


def compile_to(path: Path, *, seed: int = 0, cache: object = False, checkpoint: Path | None = None,
               num_candidates: int = 4, model: str | None = None) -> tuple[FunctionLM, dict]:
    lm = FunctionLM(sentiment_fn, name=model)
    opt = BootstrapRandomSearch(2, num_candidates=num_candidates, checkpoint=checkpoint)
    new, rep = opt.optimize(sentiment_program(), ROWS, label_accuracy(), seed=seed,
                            ctx=lg.RunContext(lm=lm, cache=cache))
    save_artifact(path, new, rep)
    return lm, rep.runtime


def test_same_seed_and_cache_give_identical_bytes(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache")
    lm1, _rt1 = compile_to(tmp_path / "a.json", cache=cache)
    lm2, rt2 = compile_to(tmp_path / "b.json", cache=cache)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert len(lm1.calls) > 0 and len(lm2.calls) == 0  # the second compile ran from the cache
    assert rt2["cache_misses"] == 0
    # and without any cache, the same seed still gives the same bytes
    compile_to(tmp_path / "c.json")
    assert (tmp_path / "c.json").read_bytes() == (tmp_path / "a.json").read_bytes()


def test_different_seed_gives_a_valid_artifact(tmp_path: Path) -> None:
    compile_to(tmp_path / "s0.json", seed=0, cache=MemoryCache())
    compile_to(tmp_path / "s1.json", seed=1, cache=MemoryCache())
    a, b = read_artifact(tmp_path / "s0.json"), read_artifact(tmp_path / "s1.json")
    assert a["report"]["seed"] == 0 and b["report"]["seed"] == 1
    assert a["data"]["val"]["sha256_16"] != b["data"]["val"]["sha256_16"]  # another held-out split
    prog, report = load_artifact(tmp_path / "s1.json")
    assert report["best_score"] >= report["baseline_score"]
    out = prog.run_sync(lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False), sentence="a good film")
    assert out.label in ("positive", "negative")


def test_checkpoint_from_other_arguments_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.json"
    compile_to(tmp_path / "a.json", checkpoint=ckpt)
    assert _evaluations(ckpt) >= 2
    for kwargs in ({"seed": 1}, {"num_candidates": 5}, {"model": "another-model"}):
        with pytest.raises(ArtifactError, match="belongs to a compile with other arguments") as e:
            compile_to(tmp_path / "b.json", checkpoint=ckpt, **kwargs)
        assert "Fix:" in str(e.value) and "delete the checkpoint" in str(e.value)
    # the same arguments resume from it: every evaluation replays, no model call
    lm, rt = compile_to(tmp_path / "b.json", checkpoint=ckpt)
    assert lm.calls == [] and rt["replayed_evaluations"] == _evaluations(ckpt)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    ckpt.write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match="not valid JSON") as e:
        compile_to(tmp_path / "c.json", checkpoint=ckpt)
    assert "delete it" in str(e.value)


def test_checkpoint_is_appended_and_a_cut_off_last_line_is_ignored(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.jsonl"
    lm_a, _ = compile_to(tmp_path / "a.json", checkpoint=ckpt)
    lines = ckpt.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header["lmgraph_checkpoint"] == 3 and set(header) == {"lmgraph_checkpoint", "fingerprint"}
    entries = [json.loads(line) for line in lines[1:]]
    assert len(entries) >= 2 and all(set(e) == {"key", "entry", "sha256"} for e in entries)
    # a kill mid-write: the last entry is cut off half-way (no newline)
    full = ckpt.read_bytes()
    cut = full[:len(full) - len(lines[-1].encode()) // 2 - 1]
    ckpt.write_bytes(cut)
    assert not cut.endswith(b"\n")
    lm_b, rt = compile_to(tmp_path / "b.json", checkpoint=ckpt)
    assert rt["replayed_evaluations"] == len(entries) - 1  # every complete entry replays
    assert 0 < len(lm_b.calls) < len(lm_a.calls)  # only the lost evaluation runs again
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    # the partial line was dropped and the evaluation appended again on a line of its own
    assert ckpt.read_bytes() == full
    # a header from another checkpoint format is refused with a fix
    ckpt.write_text(json.dumps({"lmgraph_checkpoint": 1, "fingerprint": header["fingerprint"], "memo": {}}))
    with pytest.raises(ArtifactError, match="format version 1") as e:
        compile_to(tmp_path / "c.json", checkpoint=ckpt)
    assert "delete it" in str(e.value)
