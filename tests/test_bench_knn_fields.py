"""benchmarks/knn_fields.py: its rows are the labelled rows only (never a test row), its two kNN
programs differ only in the fields the demos are matched on, and its table renders. No model call;
the HotPotQA files are needed (skipped without them)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

import lmgraph as lg

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import knn_fields  # noqa: E402


def _hotpotqa_data() -> None:
    try:
        from lmgraph.evaluation import load_hotpotqa

        load_hotpotqa()
    except lg.DefinitionError as e:
        pytest.skip(f"HotPotQA data not found: {e}")


def test_the_cut_is_the_labelled_rows_and_never_a_test_row() -> None:
    _hotpotqa_data()
    import headroom

    from tasks import load

    pool, scored = knn_fields.labelled_cut(1)
    _, _, test = headroom.splits(load("hotpotqa"), 1, argparse.Namespace(rows=400, test=100))
    ids = [r["id"] for r in pool + scored]
    assert (len(pool), len(scored), len(set(ids))) == (300, 100, 400)
    assert not set(ids) & {r["id"] for r in test}
    assert [r["id"] for r in knn_fields.labelled_cut(1)[1]] == [r["id"] for r in scored]  # seeded


def test_the_two_nearest_demo_programs_differ_only_in_the_matched_fields() -> None:
    _hotpotqa_data()
    pool, _ = knn_fields.labelled_cut(0)
    (_, zero), (_, every), (_, by_q) = knn_fields.programs(pool[:20], lg.RunContext())
    a, b = every.module("answer"), by_q.module("answer")
    assert (a.knn, a.knn_fields, b.knn_fields, len(a.demo_pool)) == (4, (), ("question",), 20)
    assert a.demo_pool == b.demo_pool and not zero.module("answer").knn
    assert all(isinstance(d["context"], list) and d["context"] for d in a.demo_pool)  # the passages it would see


def test_the_table_renders_each_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knn_fields, "OUT", tmp_path / "knn_fields")
    unit = {"seed": 0, "configs": [{"config": c, "mean": m, "vs_zero": [m - 0.1, m - 0.15, m - 0.05]}
                                   for c, m in zip(knn_fields.CONFIGS, (0.1, 0.2, 0.3))],
            "by_question_vs_every": [0.1, 0.02, 0.18]}
    knn_fields.write_md([unit, {**unit, "seed": 1}])
    text = (tmp_path / "knn_fields.md").read_text()
    assert "| 0 | 0.100 | 0.200 [+0.100" in text and "+0.100 [+0.020, +0.180]" in text
    assert "Mean over 2 seeds of (by question - every input): +0.100." in text
    json.dumps(unit)
