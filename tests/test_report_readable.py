"""A compile report a person can read (issue 19 item 8): statuses that say what happened (the
winner's minibatch row "advanced", its confirmed row "accepted", never "skipped"), plain words
instead of "0 rounds", the smallest gain the validation rows can show when nothing is accepted,
and ``lmgraph compile --dry-run`` within ``--max-calls``."""

from __future__ import annotations

import json
import re

import pytest
import test_opt_instructions as ins
import test_opt_joint as joint

import lmgraph as lg
from lmgraph import cli
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import InstructionSearch, LabeledFewShot
from lmgraph.optimizers.auto import detectable_gain
from lmgraph.optimizers.report import STATUSES
from lmgraph.testing import FunctionLM, request_text

from helpers import sentiment_fn, sentiment_program, sentiment_rows

JARGON = re.compile(r"after 0 rounds|not among the top|halving stopped|P\(better\)=\d\.\d\d <")


def texts(rep) -> str:  # noqa: ANN001
    return rep.table() + "\n" + json.dumps(rep.to_dict())


def assert_readable(rep) -> None:  # noqa: ANN001
    assert all(c.status in STATUSES and c.status not in ("skipped", "pending") for c in rep.candidates)
    assert not JARGON.search(texts(rep)), JARGON.search(texts(rep))


def winner_rows(rep):  # noqa: ANN001, ANN201
    """(the minibatch row of the arm that won, its confirmed row)."""
    best = rep.best
    stage = [c for c in rep.candidates if f"confirmed as #{best.id} " in c.reason]
    assert len(stage) == 1, [c.reason for c in rep.candidates]
    return stage[0], best


def test_joint_search_winner_reads_advanced_then_accepted() -> None:
    _, rep = joint.opt().optimize(joint.program(), joint.TRAIN, joint.METRIC, valset=joint.VAL, ctx=joint.ctx())
    stage, best = winner_rows(rep)
    assert best.status == "accepted" and best.id != rep.baseline.id
    assert stage.status == "advanced"
    assert stage.reason.endswith(f"confirmed as #{best.id} on the full validation set: accepted")
    assert {c.status for c in rep.candidates} <= {"baseline", "accepted", "advanced", "dropped"}
    assert_readable(rep)
    table = rep.table()
    assert "statuses: " in table and "advanced = did well on part of the rows" in table


def test_instruction_search_winner_and_the_current_instruction() -> None:
    train, val = ins.split()
    opt = InstructionSearch(6, proposer_lm="proposer", minibatch_size=4)
    new, rep = opt.optimize(ins.program(), train, ins.metric, valset=val, ctx=ins.ctx())
    stage, best = winner_rows(rep)
    assert (stage.status, best.status) == ("advanced", "accepted")
    assert new.module("flip").instructions == ins.GOOD
    current = [c for c in rep.candidates if "(current)" in c.label]
    assert current and current[0].status in ("dropped", "incumbent")
    assert_readable(rep)


def test_no_race_round_is_said_in_plain_words() -> None:
    """A minibatch of half the valset: the race has no round before the full set."""
    _, rep = joint.opt(minibatch_size=20, num_trials=6).optimize(joint.program(), joint.TRAIN, joint.METRIC,
                                                                 valset=joint.VAL, ctx=joint.ctx())
    assert_readable(rep)
    cut = [c for c in rep.candidates if "went on to the full validation set" in c.reason]
    assert cut and all("on its minibatch" in c.reason and c.status == "dropped" for c in cut)


def test_budget_stop_leaves_stopped_rows_not_pending() -> None:
    prog = joint.program()
    budget = lg.Budget(max_calls=2 * len(joint.VAL) + 40 + 4 + 2 * 8 * 3)
    _, rep = joint.opt().optimize(prog, joint.TRAIN, joint.METRIC, valset=joint.VAL, ctx=joint.ctx(), budget=budget)
    assert rep.stopped
    assert_readable(rep)


def six_row_fn(req: lg.LMRequest) -> str:
    """With demos right on every row but 'film 7'; without demos always 'positive'."""
    text = request_text(req)
    answer = sentiment_fn(req)
    if text.count("Sentence:") > 1 and "film 7" in text.rsplit("Sentence:", 1)[-1]:
        return " negative" if "positive" in answer else " positive"
    return answer


def test_too_few_validation_rows_are_named_with_the_detectable_gain() -> None:
    rows = sentiment_rows(12)
    _new, rep = LabeledFewShot(2).optimize(sentiment_program(), rows[:6], label_accuracy(pred_field="label",
                                          label="label"), valset=rows[6:], ctx=lg.RunContext(lm=FunctionLM(six_row_fn),
                                                                                              cache=False))
    cand = rep.candidates[1]
    assert (rep.baseline.mean, round(cand.mean, 3), cand.status) == (0.5, 0.833, "rejected")  # the case
    assert cand.reason.startswith("better than #0 by +0.333 on the 6 validation rows, but that may be noise")
    mde = detectable_gain(rep.baseline.scores, 6)
    hint = (f"with 6 validation rows a gain under {mde:+.2f} cannot be shown (the best candidate, #1, scored "
            "+0.333 over the baseline: too little to tell from noise on so few rows); add validation rows")
    assert f"note: {hint}" in rep.table()
    assert rep.to_dict()["notes"][-1] == hint
    assert hint not in rep.notes  # derived when shown, never stored twice
    assert_readable(rep)


def test_no_hint_when_a_candidate_is_accepted() -> None:
    rows = sentiment_rows(24)
    _, rep = LabeledFewShot(2).optimize(sentiment_program(), rows[:12], label_accuracy(pred_field="label",
                                        label="label"), valset=rows[12:],
                                        ctx=lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False))
    assert rep.best.status == "accepted" and rep.too_few_rows() is None
    assert "cannot be shown" not in rep.table()


# ---------------------------------------------------------------- the command line

def write_jsonl(path, rows) -> str:  # noqa: ANN001
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path):  # noqa: ANN001, ANN201
    rows = sentiment_rows(40)
    return (str(sentiment_program().save(tmp_path / "prog.json")), write_jsonl(tmp_path / "t.jsonl", rows[:20]),
            write_jsonl(tmp_path / "v.jsonl", rows[20:]))


def dry_run(files, *extra: str) -> list[str]:  # noqa: ANN001
    prog, train, val = files
    return ["compile", prog, "--train", train, "--val", val, "--metric", "accuracy", "--dry-run", *extra]


@pytest.mark.parametrize("optimizer", ["compile", "joint", "random_search", "instructions"])
def test_dry_run_honours_max_calls(files, capsys, optimizer) -> None:  # noqa: ANN001
    assert cli.main(dry_run(files, "--optimizer", optimizer)) == 0
    full = int(re.search(r"<= (\d+) model calls", capsys.readouterr().out).group(1))
    assert full > 50
    assert cli.main(dry_run(files, "--optimizer", optimizer, "--max-calls", "50")) == 0
    out = capsys.readouterr().out
    assert int(re.search(r"<= (\d+) model calls", out).group(1)) <= 50
    assert f"--max-calls 50 cuts the plan (up to {full} calls without it): " in out
    assert "-> none" in out  # a phase the budget does not reach, named


def test_dry_run_budget_below_the_baseline_names_the_minimum(files, capsys) -> None:  # noqa: ANN001
    assert cli.main(dry_run(files, "--optimizer", "compile", "--max-calls", "30")) == 2
    err = capsys.readouterr().err
    assert "at least 40 calls" in err and "Traceback" not in err  # 40 pooled rows, one call each


def test_dry_run_within_a_large_budget_says_it_fits(files, capsys) -> None:  # noqa: ANN001
    assert cli.main(dry_run(files, "--optimizer", "joint", "--max-calls", "100000")) == 0
    assert "fits --max-calls 100000" in capsys.readouterr().out


def test_cli_compiles_with_the_default_compiler(files, tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setattr(cli, "make_lm", lambda spec: FunctionLM(sentiment_fn))
    prog, train, val = files
    art = tmp_path / "compiled.json"
    assert cli.main(["compile", prog, "--train", train, "--val", val, "--metric", "accuracy:label:label",
                     "--optimizer", "compile", "--max-calls", "400", "--no-cache", "--out", str(art)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compile: ") and f"artifact: {art}" in out
    assert json.loads(art.read_text())["report"]["optimizer"] == "compile"
