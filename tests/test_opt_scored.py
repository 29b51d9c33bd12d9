"""How many labelled rows the default compiler scores: ``Compile(max_scored_rows="measured")`` runs the
baseline on a first batch of rows and scores as many as a quarter of the budget covers at the calls a
row those took (lmgraph.optimizers.scored), with scripted fake models."""

from __future__ import annotations

import re

import pytest
from test_opt_compile import demo_lover, even_rows_unreadable, program, rows

import lmgraph as lg
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers.auto import Compile
from lmgraph.optimizers.scored import PROBE
from lmgraph.testing import FunctionLM


def _measured_note(report: lg.optimizers.Report) -> str:
    return next(n for n in report.notes if n.startswith("the baseline took"))


def test_measured_scores_what_a_quarter_of_the_budget_covers_at_the_rate_rows_take():
    # every answer parses: one call a row, where the upper bound counts two (a repair call each)
    data = rows(300)
    ctx = lg.RunContext(lm=FunctionLM(demo_lover), cache=False)
    budget = lg.Budget(max_calls=400)
    _, auto = Compile(decodes=()).optimize(program(), data, label_accuracy(), budget=budget, ctx=ctx)
    assert auto.data["val"]["n"] == 50 and auto.data["folds"]["demo_only"] == 250  # 400 / 4 at 2 a row
    _, rep = Compile(decodes=(), max_scored_rows="measured").optimize(program(), data, label_accuracy(),
                                                                      budget=budget, ctx=ctx)
    assert rep.data["val"]["n"] == 100, rep.notes  # 400 / 4 at the 1.00 calls a row measured
    assert rep.data["folds"]["demo_only"] == 200 and rep.data["folds"]["search"] + rep.data["folds"]["confirm"] == 100
    assert len(rep.baseline.scores) == 100 and rep.baseline.calls == 100  # the two batches, charged once
    assert "1.00 calls a row on the first 50 rows: 100 rows scored" in _measured_note(rep)
    assert rep.spent["calls"] <= 400


def test_measured_rate_counts_the_repair_calls_rows_really_take_and_stays_in_budget():
    # completions are unreadable on even-numbered rows (a repair call follows): the rate lies between
    # 1 and 2, and the rows scored are what a quarter of the budget covers at it
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    mixed = even_rows_unreadable

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(n=st.integers(60, 400), calls=st.integers(250, 900), seed=st.integers(0, 3))
    def check(n: int, calls: int, seed: int) -> None:
        ctx = lg.RunContext(lm=FunctionLM(mixed), cache=False)
        _, rep = Compile(max_scored_rows="measured").optimize(program(), rows(n, seed), label_accuracy(),
                                                              budget=lg.Budget(max_calls=calls), seed=seed, ctx=ctx)
        assert rep.spent["calls"] <= calls
        assert "no budget to confirm" not in (rep.stopped or ""), rep.stopped
        note = _measured_note(rep)
        rate = float(re.search(r"took ([\d.]+) calls a row", note).group(1))  # type: ignore[union-attr]
        assert 1.0 < rate < 2.0, note
        k = rep.data["val"]["n"]
        assert k == min(n, max(PROBE, int(calls / (4 * rate)))) or k == n, (k, note)
        assert rep.data["folds"]["demo_only"] == n - k

    check()


def test_a_measured_compile_resumes_from_its_checkpoint_to_the_same_rows_and_result(tmp_path):
    calls = {"n": 0}

    def counting(request):
        calls["n"] += 1
        return demo_lover(request)

    data = rows(240)
    ckpt = tmp_path / "c.jsonl"

    def run():
        ctx = lg.RunContext(lm=FunctionLM(counting), cache=False)
        return Compile(decodes=(), max_scored_rows="measured", checkpoint=ckpt).optimize(
            program(), data, label_accuracy(), budget=lg.Budget(max_calls=300), seed=1, ctx=ctx)

    first, rep1 = run()
    made = calls["n"]
    second, rep2 = run()
    assert calls["n"] == made  # every evaluation replayed
    assert rep2.data["val"] == rep1.data["val"] and rep2.spent["calls"] == rep1.spent["calls"]
    assert second.content_hash() == first.content_hash()
    assert [c.scores for c in rep2.candidates] == [c.scores for c in rep1.candidates]


def test_max_scored_rows_names_its_choices_and_the_session_narrows_only_before_the_baseline():
    with pytest.raises(lg.DefinitionError, match="measured"):
        Compile(max_scored_rows="some")
    assert Compile(max_scored_rows="measured").config()["max_scored_rows"] == "measured"
    # the dry run plans at the upper bound, as "auto" does: it never promises more than the budget
    data = rows(300)
    plan = Compile(decodes=(), max_scored_rows="measured").dry_run(program(), data, budget=lg.Budget(max_calls=400))
    assert plan.calls <= 400
    assert any("the run scores up to 100" in n for n in plan.notes), plan.notes
    assert not any("the run scores up to" in n for n in Compile(decodes=()).dry_run(
        program(), data, budget=lg.Budget(max_calls=400)).notes)
    # a compile without a call budget scores every row, measured or not
    ctx = lg.RunContext(lm=FunctionLM(demo_lover), cache=False)
    _, rep = Compile(decodes=(), max_scored_rows="measured", max_candidates=2).optimize(
        program(), rows(40), label_accuracy(), ctx=ctx)
    assert rep.data["val"]["n"] == 40 and not any(n.startswith("the baseline took") for n in rep.notes)


def test_narrowing_the_validation_rows_after_the_baseline_is_an_error():
    import asyncio

    from lmgraph.optimizers.session import CompileSession

    ctx = lg.RunContext(lm=FunctionLM(demo_lover), cache=False)
    s = CompileSession(optimizer="t", config={}, program=program(), trainset=rows(4), valset=rows(10),
                       metric=label_accuracy(), ctx=ctx, budget=None, seed=0, checkpoint=None, concurrency=2,
                       accept_confidence=0.95, progress=False)
    s.narrow_valset(6)
    assert len(s.valset) == 6 and s.report.data["val"]["n"] == 6
    asyncio.run(s.baseline())
    assert len(s.report.baseline.scores) == 6
    with pytest.raises(RuntimeError):
        s.narrow_valset(3)
