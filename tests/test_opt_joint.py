"""JointSearch: (instruction, demos, format) chosen jointly across a 2-node pipeline."""

from __future__ import annotations

import json

import pytest

import lmgraph as lg
from lmgraph.cache import MemoryCache
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import JointSearch, save_artifact
from lmgraph.testing import FunctionLM, request_text

GOOD = "Decide the polarity of the keyword."


def _last(text: str, label: str) -> str:
    return text.rsplit(f"{label}:", 1)[-1].split("\n", 1)[0].strip()


def task_fn(req):
    """extract: right only in a chat prompt. classify: right on every row only with the polarity
    instruction AND demos AND the completion format; each condition met makes more rows right."""
    text = request_text(req)
    completion = req.prompt is not None
    classify = text.rstrip().endswith("Sentiment:") if completion else "Reply with 'Sentiment:" in text
    if not classify:
        return "unclear" if completion else _last(text, "Sentence").split()[0]
    idx = int(_last(text, "Sentence").split()[-1])
    gold = {"good": "positive", "bad": "negative"}.get(_last(text, "Keyword"))
    met = ("polarity" in text) + (text.count("Keyword:") >= 2) + completion
    if gold is None:
        return "positive"
    return gold if met == 3 or idx % 3 < met else "positive"


def proposer_fn(req):
    text = request_text(req)
    if "Sentiment:" in text:
        return [GOOD, "Answer positive.", "Read the sentence."][req.rollout % 3]
    return ["Copy the first word.", "Extract the keyword."][req.rollout % 2]


def program():
    p = lg.Pipeline("two_step")
    s = p.input("sentence")
    a = p.add(lg.Predict("sentence -> keyword"), name="extract", sentence=s)
    b = p.add(lg.Predict("sentence, keyword -> sentiment: Literal['negative', 'positive']"), name="classify",
              sentence=s, keyword=a.keyword)
    p.output(label=b.sentiment)
    return p.build()


ROWS = [{"sentence": f"{'good' if i % 2 else 'bad'} film {i}", "label": "positive" if i % 2 else "negative"}
        for i in range(60)]
TRAIN, VAL = ROWS[:20], ROWS[20:]
METRIC = label_accuracy()


MINIBATCH = ("advanced", "dropped", "stopped")  # statuses of rows scored on part of the valset


def ctx(cache=False):
    return lg.RunContext(lm=FunctionLM(task_fn), lms={"proposer": FunctionLM(proposer_fn)}, cache=cache)


def opt(**kw):
    args = dict(num_trials=30, num_instructions=2, num_demo_sets=2, max_demos=3, minibatch_size=8,
                confirm_top=1, race_top=6, proposer_lm="proposer")
    args.update(kw)
    return JointSearch(**args)


def test_finds_the_only_right_combination():
    new, rep = opt().optimize(program(), TRAIN, METRIC, valset=VAL, ctx=ctx())
    cls, ext = new.module("classify"), new.module("extract")
    assert cls.instructions == GOOD and cls.demos and cls.format == "completion"
    assert ext.format != "completion"
    assert rep.baseline.mean == 0.5 and rep.best.mean == 1.0
    assert rep.stopped is None
    trials = [c for c in rep.candidates if c.label.startswith("trial ") and c.status in MINIBATCH]
    assert len(trials) == 30 and all(len(c.scores) >= 8 and c.reason for c in trials)
    assert sum("minibatch: " in c.reason for c in trials) >= 20  # not raced further
    assert any("dropped in round" in c.reason for c in trials)  # raced on more rows, then dropped
    assert sum("confirmed as" in c.reason for c in trials) == 1
    assert sum(c.status == "accepted" for c in rep.candidates) >= 1
    json.dumps(opt().config())


def test_minibatch_trials_cost_less_than_full_evaluation():
    _, rep = opt().optimize(program(), TRAIN, METRIC, valset=VAL, ctx=ctx())
    per = 2  # two model calls per example
    assert rep.spent["calls"] < 30 * len(VAL) * per
    trials = [c for c in rep.candidates if c.status in MINIBATCH]
    assert sum(len(c.scores) == 8 for c in trials) >= 30 - 6  # only the 6 best are raced on more rows


def test_dry_run_bounds_the_spend():
    for kw in ({}, {"minibatch_size": 64, "num_trials": 5}, {"refine": False}):
        o = opt(**kw)
        est = o.dry_run(program(), TRAIN, VAL)
        _, rep = o.optimize(program(), TRAIN, METRIC, valset=VAL, ctx=ctx())
        assert est.calls >= rep.spent["calls"], (kw, est, rep.spent)
        assert {"baseline", "bootstrap", "proposals", "trials"} <= set(est.breakdown)


def test_dry_run_within_a_budget_takes_the_phases_in_order_and_spends_no_more():
    o = opt()
    full = o.dry_run(program(), TRAIN, VAL)
    cap = full.breakdown["baseline"] + full.breakdown["bootstrap"] + 3
    est = o.dry_run(program(), TRAIN, VAL, budget=lg.Budget(max_calls=cap))
    assert est.calls == cap and list(est.breakdown) == list(full.breakdown)
    assert est.breakdown["baseline"] == full.breakdown["baseline"] and est.breakdown["proposals"] == 3
    assert est.breakdown["trials"] == 0 and est.tokens < full.tokens
    _, rep = o.optimize(program(), TRAIN, METRIC, valset=VAL, budget=lg.Budget(max_calls=cap), ctx=ctx())
    assert rep.spent["calls"] <= est.calls
    assert o.dry_run(program(), TRAIN, VAL, budget=lg.Budget(max_calls=10 ** 6)) == full  # a budget that fits
    with pytest.raises(lg.BudgetError, match="baseline"):  # under the baseline: the compile's own error
        o.dry_run(program(), TRAIN, VAL, budget=lg.Budget(max_calls=len(VAL) - 1))


def test_full_valset_trials_when_minibatch_is_too_big():
    _new, rep = opt(minibatch_size=100, num_trials=12).optimize(program(), TRAIN, METRIC, valset=VAL, ctx=ctx())
    assert all(c.status in ("baseline", "accepted", "rejected") for c in rep.candidates)
    assert all(len(c.scores) == len(VAL) for c in rep.candidates)


def test_budget_too_small_stops_cleanly():
    prog = program()
    budget = lg.Budget(max_calls=2 * len(VAL) + 40 + 4 + 2 * 8 * 3)  # baseline, bootstrap, proposals, 3 trials
    new, rep = opt().optimize(prog, TRAIN, METRIC, valset=VAL, ctx=ctx(), budget=budget)
    assert rep.stopped
    assert rep.spent["calls"] <= budget.max_calls
    assert isinstance(new, lg.Program) and new.run_sync(ctx(), sentence="good film 1").label == "positive"


def test_budget_is_kept_for_confirmation():
    """A budget that cannot cover all trials still confirms the best trial found so far."""
    # baseline 80 + bootstrap 40 + proposals 4 + trials 16 calls each; confirmation of one trial = 80
    _new, rep = opt(confirm_top=1).optimize(program(), TRAIN, METRIC, valset=VAL, ctx=ctx(),
                                          budget=lg.Budget(max_calls=124 + 16 * 20 + 80))
    # a search cut short says so in report.stopped, not only in a note
    assert rep.stopped and "trials stopped after" in rep.stopped and "kept for confirming" in rep.stopped
    assert any(c.status in ("accepted", "rejected") for c in rep.candidates)
    assert rep.spent["calls"] <= 124 + 16 * 20 + 80


def test_same_seed_same_artifact(tmp_path):
    outs = []
    for i in range(2):
        new, rep = opt().optimize(program(), TRAIN, METRIC, valset=VAL, ctx=ctx(MemoryCache()), seed=7)
        outs.append(save_artifact(tmp_path / f"a{i}.json", new, rep).read_bytes())
    assert outs[0] == outs[1]


def test_refined_sampling_prefers_good_options():
    _, rep = opt(num_trials=40).optimize(program(), TRAIN, METRIC, valset=VAL, ctx=ctx())
    trials = [c for c in rep.candidates if c.label.startswith("trial ") and c.status in MINIBATCH]
    early = [c.mean for c in trials[:20]]
    late = [c.mean for c in trials[20:]]
    assert sum(late) / len(late) > sum(early) / len(early)
    assert all("(refined)" in c.label for c in trials[20:])


def test_definition_errors():
    with pytest.raises(lg.DefinitionError, match="unknown prompt format"):
        JointSearch(formats=("telegram",))
    c = ctx()
    with pytest.raises(lg.DefinitionError, match="no proposer model"):
        JointSearch(proposer_lm="nope").optimize(program(), TRAIN, METRIC, valset=VAL, ctx=c)
    assert c.lm.calls == []
    with pytest.raises(lg.DefinitionError, match="no node"):
        JointSearch(nodes=["x"]).optimize(program(), TRAIN, METRIC, valset=VAL, ctx=c)


def test_nodes_subset_leaves_other_nodes_alone():
    prog = program()
    new, rep = opt(nodes=["classify"], num_trials=12).optimize(prog, TRAIN, METRIC, valset=VAL, ctx=ctx())
    assert new.module("extract") == prog.module("extract")
    assert all("extract" not in c.changes for c in rep.candidates)
    assert "extract:" not in rep.notes[0] and "classify:" in rep.notes[0]


def test_checkpoint_resume_replays_everything(tmp_path):
    ck = tmp_path / "ck.json"
    new1, rep1 = opt(checkpoint=ck).optimize(program(), TRAIN, METRIC, valset=VAL, ctx=ctx())
    c2 = ctx()
    new2, rep2 = opt(checkpoint=ck).optimize(program(), TRAIN, METRIC, valset=VAL, ctx=c2)
    assert new1 == new2 and rep1.spent == rep2.spent
    assert c2.lm.calls == [] and c2.lms["proposer"].calls == []
