"""Evaluation harness: metrics, bootstrap CIs, evaluate() with failures, dataset loaders and splits."""

from __future__ import annotations

import pytest

import lmgraph as lg
from lmgraph.evaluation import (
    bootstrap_ci,
    evaluate_sync,
    exact_match,
    f1_score,
    fingerprint,
    label_accuracy,
    normalize_answer,
    normalized_em,
    numeric_match,
    paired_bootstrap,
    parse_number,
    split,
    token_f1,
)
from lmgraph.testing import FunctionLM


def test_metrics():
    ex = {"answer": "The Eiffel Tower", "answers": ["Eiffel Tower", "la tour Eiffel"]}
    assert normalize_answer("The  Eiffel, Tower!") == "eiffel tower"
    assert normalized_em()(ex, {"answer": "eiffel tower"}) == 1.0
    assert normalized_em()(ex, {"answer": "La Tour Eiffel"}) == 1.0
    assert normalized_em()(ex, None) == 0.0
    assert exact_match()(ex, {"answer": "eiffel tower"}) == 0.0
    assert f1_score("the big eiffel tower", "eiffel tower") == pytest.approx(0.8)
    assert token_f1()(ex, {"answer": "tower"}) == pytest.approx(2 / 3)
    assert label_accuracy()({"label": "Positive"}, {"label": "positive "}) == 1.0
    assert parse_number("so 3 + 4 = 7.\n#### 1,234") == 1234
    assert parse_number("no digits") is None
    assert numeric_match()({"answer": "18"}, {"answer": "She makes $18.00 a day"}) == 1.0
    assert numeric_match()({"answer": "18"}, {"answer": "17"}) == 0.0


def test_bootstrap_is_seeded_and_sane():
    scores = [1.0] * 30 + [0.0] * 10
    lo, hi = bootstrap_ci(scores)
    assert lo < 0.75 < hi and (lo, hi) == bootstrap_ci(scores)
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0)
    better = paired_bootstrap([0.0] * 20, [1.0] * 15 + [0.0] * 5)
    assert better["diff"] == 0.75 and better["p_better"] == 1.0
    same = paired_bootstrap([1.0, 0.0] * 10, [1.0, 0.0] * 10)
    assert same["diff"] == 0.0 and same["p_better"] == 0.0
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 0.0])


def _program() -> lg.Program:
    p = lg.Pipeline("clf")
    x = p.input("text")
    n = p.add(lg.Predict("text -> label: Literal['a', 'b']", format="completion"), name="clf", text=x)
    p.output(label=n.label)
    return p.build()


def test_evaluate_scores_failures_as_zero_and_keeps_them():
    def fn(req):
        text = req.prompt.rsplit("Text:", 1)[1]
        if "broken" in text:
            return " ???"
        return " a" if "apple" in text else " b"

    lm = FunctionLM(fn)
    rows = [{"text": "apple pie", "label": "a"}, {"text": "banana", "label": "b"},
            {"text": "broken row", "label": "a"}, {"text": "apple", "label": "b"}]
    res = evaluate_sync(_program(), rows, label_accuracy(), ctx=lg.RunContext(lm=lm, cache=False), concurrency=2)
    assert res.scores == [1.0, 1.0, 0.0, 0.0]
    assert len(res.failures) == 1 and isinstance(res.failures[0].error, lg.OutputParseError)
    assert res.parse_failure_rate == 0.25
    assert res.feedback[2].startswith("run failed")
    assert res.usage["calls"] == 5  # 4 rows + one repair call for the broken one
    summary = res.summary()
    assert summary["n"] == 4 and summary["mean"] == 0.5 and len(summary["ci95"]) == 2


def test_metric_feedback_tuple():
    lm = FunctionLM(lambda req: " a")
    rows = [{"text": "x", "label": "a"}]
    res = evaluate_sync(_program(), rows, lambda ex, pred, trace: (0.5, "half right"),
                        ctx=lg.RunContext(lm=lm, cache=False))
    assert res.scores == [0.5] and res.feedback == ["half right"]


def test_split_is_seeded_disjoint_and_checked():
    rows = [{"i": i} for i in range(50)]
    a1, b1 = split(rows, [10, 20], seed=3)
    a2, b2 = split(rows, [10, 20], seed=3)
    assert a1 == a2 and b1 == b2 and fingerprint(a1) == fingerprint(a2)
    assert not {r["i"] for r in a1} & {r["i"] for r in b1}
    assert split(rows, [10], seed=4)[0] != a1
    with pytest.raises(lg.DefinitionError):
        split(rows, [40, 20], seed=0)


def test_dataset_loaders_read_shared_data():
    from lmgraph.evaluation import data_dir, load_gsm8k, load_sst2, load_trec

    try:
        data_dir()
    except lg.DefinitionError:
        pytest.skip("shared/data not available")
    sst = load_sst2("test")
    assert len(sst) == 872 and {r["label"] for r in sst} == {"negative", "positive"}
    trec = load_trec("test")
    assert len(trec) == 499 and len({r["label"] for r in trec}) == 6
    gsm = load_gsm8k("test")
    assert len(gsm) == 1319 and gsm[0]["answer"] == "18"
