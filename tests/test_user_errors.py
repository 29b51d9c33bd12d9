"""Issue 19, item 6: every user mistake is a typed error naming the row, field or node and the fix.

Each test drives one mistake a newcomer made (a metric that raises, rows without the label, a
2-argument metric, a metric returning a string, ``"temperature": "hot"`` in a program file, a
negative budget, an unknown render format, saving a custom module, ``run_sync({...})``, a compile
budget smaller than the baseline) through the scripted fake models.
"""

from __future__ import annotations

import asyncio
import json
import warnings

import pytest

import lmgraph as lg
from lmgraph import cli
from lmgraph.evaluation import evaluate_sync, label_accuracy
from lmgraph.optimizers import BootstrapFewShot, LabeledFewShot
from lmgraph.pipeline.loading import envelope
from lmgraph.signatures import Signature
from lmgraph.testing import FunctionLM

from helpers import sentiment_fn, sentiment_program, sentiment_rows


def ctx(lm: FunctionLM) -> lg.RunContext:
    return lg.RunContext(lm=lm, cache=False)


def rows_with_ids(n: int) -> list[dict[str, str]]:
    return [{**r, "id": f"ex{i}"} for i, r in enumerate(sentiment_rows(n))]


# --------------------------------------------------------------------------- a metric that raises


def fragile_metric(example, pred, trace):  # noqa: ANN001, ANN201
    if example["id"] == "ex2":
        return 1 / 0
    return float(pred["label"] == example["label"])


def test_a_metric_raising_on_a_row_scores_it_0_and_records_it() -> None:
    lm = FunctionLM(sentiment_fn)
    with pytest.warns(lg.MetricWarning, match=r"raised on 1 of 4 rows .*row 2 \(id 'ex2'\): ZeroDivisionError"):
        res = evaluate_sync(sentiment_program(), rows_with_ids(4), fragile_metric, ctx=ctx(lm))
    # no demos: the fake always answers 'positive', right on the odd rows
    assert res.scores == [0.0, 1.0, 0.0, 1.0]
    assert len(res.metric_errors) == 1
    err = res.metric_errors[0]
    assert (err.index, err.row_id, err.metric, err.error_type) == (2, "ex2", "fragile_metric", "ZeroDivisionError")
    assert "division by zero" in err.message
    assert res.feedback[2] == "metric failed: ZeroDivisionError: division by zero"
    assert res.summary()["metric_errors"] == 1 and "metric_errors=1" in str(res)
    assert res.failures == []  # the program ran fine on that row


def test_strict_raises_a_metric_error_naming_the_row_with_the_cause_chained() -> None:
    with pytest.raises(lg.MetricError) as ei:
        evaluate_sync(sentiment_program(), rows_with_ids(4), fragile_metric, ctx=ctx(FunctionLM(sentiment_fn)),
                      strict=True)
    err = ei.value
    assert isinstance(err, lg.DefinitionError) and err.row == 2 and err.metric == "fragile_metric"
    assert isinstance(err.__cause__, ZeroDivisionError)
    assert "'fragile_metric'" in str(err) and "row 2 (id 'ex2')" in str(err) and "ZeroDivisionError" in str(err)


def test_optimize_carries_on_past_a_metric_that_raises_on_a_row() -> None:
    rows = rows_with_ids(12)
    with pytest.warns(lg.MetricWarning):
        _new, report = LabeledFewShot(2).optimize(sentiment_program(), rows[6:], fragile_metric, valset=rows[:6],
                                                 ctx=ctx(FunctionLM(sentiment_fn)))
    assert report.baseline.scores[2] == 0.0 and len(report.baseline.scores) == 6  # ex2: scored 0


# --------------------------------------------------------------------------- rows without the label


def test_rows_missing_the_label_fail_before_any_model_call() -> None:
    lm = FunctionLM(sentiment_fn)
    rows = sentiment_rows(4)
    rows[2] = {"sentence": "good film", "gold": "positive"}
    with pytest.raises(lg.DatasetError) as ei:
        evaluate_sync(sentiment_program(), rows, label_accuracy(), ctx=ctx(lm))
    err = ei.value
    assert isinstance(err, lg.DefinitionError) and err.row == 2 and err.field == "label"
    text = str(err)
    assert "row 2" in text and "'label'" in text and "sentence, gold" in text and "label=" in text
    assert lm.calls == []


def test_optimize_checks_the_labels_of_train_and_val_before_any_model_call() -> None:
    lm = FunctionLM(sentiment_fn)
    rows = sentiment_rows(10)
    val = [{k: v for k, v in r.items() if k != "label"} for r in rows[5:]]
    with pytest.raises(lg.DatasetError, match="valset row 0 lacks the field 'label'"):
        BootstrapFewShot(2).optimize(sentiment_program(), rows[:5], label_accuracy(), valset=val, ctx=ctx(lm))
    assert lm.calls == []


def test_a_metric_reading_an_output_the_program_lacks_fails_up_front() -> None:
    lm = FunctionLM(sentiment_fn)
    with pytest.raises(lg.MetricError, match="reads the prediction field 'answer'.*outputs label"):
        evaluate_sync(sentiment_program(), sentiment_rows(2), label_accuracy("answer", "label"), ctx=ctx(lm))
    assert lm.calls == []


# --------------------------------------------------------------------------- metric shapes


def test_a_two_argument_metric_is_adapted_and_said_once() -> None:
    def dspy_metric(example, pred):  # noqa: ANN001, ANN202
        return example["label"] == pred["label"]

    program, rows = sentiment_program(), sentiment_rows(4)
    with pytest.warns(lg.MetricWarning, match="takes \\(example, prediction\\)") as record:
        res = evaluate_sync(program, rows, dspy_metric, ctx=ctx(FunctionLM(sentiment_fn)))
        evaluate_sync(program, rows, dspy_metric, ctx=ctx(FunctionLM(sentiment_fn)))
    assert res.scores == [0.0, 1.0, 0.0, 1.0]
    assert sum("takes (example, prediction)" in str(w.message) for w in record) == 1


def test_a_metric_of_one_argument_names_the_fix() -> None:
    lm = FunctionLM(sentiment_fn)
    with pytest.raises(lg.MetricError) as ei:
        evaluate_sync(sentiment_program(), sentiment_rows(2), lambda pred: 1.0, ctx=ctx(lm))
    assert "metrics take (example, prediction, trace); got a 1-argument function" in str(ei.value)
    assert "lambda ex, pred, trace" in str(ei.value)
    assert lm.calls == []


@pytest.mark.parametrize("returned, shown", [("yes", "a str ('yes')"), (None, "a NoneType"),
                                             (float("nan"), "NaN")])
def test_a_metric_returning_no_score_is_a_metric_error(returned, shown) -> None:  # noqa: ANN001
    def metric(example, pred, trace):  # noqa: ANN001, ANN202
        return returned

    with pytest.raises(lg.MetricError) as ei:
        evaluate_sync(sentiment_program(), sentiment_rows(2), metric, ctx=ctx(FunctionLM(sentiment_fn)))
    text = str(ei.value)
    assert "metric 'metric'" in text and f"returned {shown}" in text and "on row 0" in text
    assert "a number in [0,1], a bool, or (score, feedback)" in text


def test_score_and_feedback_tuples_are_kept_per_row() -> None:
    def metric(example, pred, trace):  # noqa: ANN001, ANN202
        ok = pred["label"] == example["label"]
        return (1.0 if ok else 0.0), (None if ok else f"expected {example['label']}")

    res = evaluate_sync(sentiment_program(), sentiment_rows(2), metric, ctx=ctx(FunctionLM(sentiment_fn)))
    assert res.scores == [0.0, 1.0] and res.feedback == ["expected negative", None]


# --------------------------------------------------------------------------- program files and the CLI


def hot_program_file(tmp_path) -> str:  # noqa: ANN001
    data = sentiment_program().to_dict()
    data["nodes"][0]["module"]["temperature"] = "hot"
    path = tmp_path / "hot.json"
    path.write_text(json.dumps(envelope({"program": data})), encoding="utf-8")  # a validly hashed file
    return str(path)


def test_a_bad_setting_in_a_program_file_names_the_node_field_and_value(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(lg.DefinitionError) as ei:
        lg.Program.load(hot_program_file(tmp_path))
    err = ei.value
    assert err.node == "clf" and err.field == "temperature"
    assert '"hot"' in str(err) and "a number" in str(err)


def test_cli_prints_one_line_and_exits_2_for_a_bad_program_file(tmp_path, capsys) -> None:  # noqa: ANN001
    assert cli.main(["render", hot_program_file(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmgraph: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "'clf'" in err and "'temperature'" in err and '"hot"' in err


def test_cli_eval_rows_without_the_label_exit_2_before_any_call(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    lms: list[FunctionLM] = []
    monkeypatch.setattr(cli, "make_lm", lambda *a, **k: lms.append(FunctionLM(sentiment_fn)) or lms[-1])
    prog = str(sentiment_program().save(tmp_path / "prog.json"))
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"sentence": r["sentence"]}) + "\n" for r in sentiment_rows(3)))
    assert cli.main(["eval", prog, "--data", str(data), "--metric", "accuracy", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "row 0" in err and "'label'" in err and "(the row has: sentence)" in err
    assert all(lm.calls == [] for lm in lms)


def test_cli_compile_with_a_budget_below_the_baseline_exits_2(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setattr(cli, "make_lm", lambda *a, **k: FunctionLM(sentiment_fn))
    prog = str(sentiment_program().save(tmp_path / "prog.json"))
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(20)))
    assert cli.main(["compile", prog, "--train", str(train), "--metric", "accuracy", "--optimizer", "labeled",
                     "--max-calls", "3", "--no-cache", "--out", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "at least 10 calls" in err


def test_cli_user_error_classes() -> None:
    assert cli._exit_code(json.JSONDecodeError("bad", "{", 0)) == 2
    assert cli._exit_code(FileNotFoundError(2, "No such file", "x.json")) == 2
    assert cli._exit_code(lg.InputError("missing input 'q'")) == 2
    assert cli._exit_code(lg.LMError("backend down")) == 1
    assert cli._exit_code(RuntimeError("a bug")) is None  # bugs keep their traceback
    many = lg.PipelineValidationError([lg.DefinitionError("a"), lg.DefinitionError("b")])
    assert cli._one_line(many) == "2 problems: a; b"


# --------------------------------------------------------------------------- settings


def test_a_negative_budget_names_the_field_and_the_valid_range() -> None:
    with pytest.raises(lg.ConfigError) as ei:
        lg.Budget(max_calls=-5)
    assert isinstance(ei.value, lg.DefinitionError) and isinstance(ei.value, ValueError)
    assert ei.value.field == "max_calls" and "-5" in str(ei.value) and ">= 0" in str(ei.value)
    with pytest.raises(lg.ConfigError, match="max_tokens"):
        lg.Budget(max_tokens="lots")  # type: ignore[arg-type]


def test_an_unknown_render_format_names_the_valid_ones() -> None:
    with pytest.raises(lg.ConfigError) as ei:
        sentiment_program().render("dot")
    assert isinstance(ei.value, lg.DefinitionError)
    assert "'dot'" in str(ei.value) and "'text'" in str(ei.value) and "'mermaid'" in str(ei.value)


class Shout(lg.Module):
    """A custom module without config(): it runs, but cannot be saved."""

    def __init__(self) -> None:
        self._freeze()

    @property
    def signature(self) -> Signature:
        return Signature.parse("text -> loud")

    async def forward(self, inputs, call):  # noqa: ANN001, ANN201
        return {"loud": inputs["text"].upper()}


def test_saving_a_custom_module_says_what_to_implement(tmp_path) -> None:  # noqa: ANN001
    p = lg.Pipeline("shout")
    n = p.add(Shout(), name="shouter", text=p.input("text"))
    p.output(loud=n.loud)
    program = p.build()
    assert program.run_sync(lg.RunContext(lm=FunctionLM(sentiment_fn), cache=False), text="hi").loud == "HI"
    with pytest.raises(lg.DefinitionError) as ei:
        program.save(tmp_path / "shout.json")
    err = ei.value
    assert err.node == "shouter" and "Shout" in str(err)
    assert "config()" in str(err) and "from_config" in str(err) and "kind" in str(err)
    assert "Program.load" in str(err)


def test_a_module_saved_without_a_kind_says_how_to_load_it() -> None:
    data = sentiment_program().to_dict()
    data["nodes"][0]["module"]["kind"] = ""
    with pytest.raises(lg.ArtifactError) as ei:
        lg.Program.from_dict(data)
    assert ei.value.node == "clf" and "without a kind" in str(ei.value) and "import it" in str(ei.value)


# --------------------------------------------------------------------------- calling convention


def test_run_sync_with_a_dict_says_to_pass_keywords() -> None:
    program = sentiment_program()
    with pytest.raises(lg.UsageError) as ei:
        program.run_sync({"sentence": "good film"})  # type: ignore[arg-type]
    assert isinstance(ei.value, lg.DefinitionError) and isinstance(ei.value, TypeError)
    assert "RunContext" in str(ei.value) and "program.run_sync(**row)" in str(ei.value)
    with pytest.raises(lg.UsageError, match="run_sync\\(\\*\\*row\\)"):
        asyncio.run(program.run({"sentence": "good film"}))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- compile budget


def test_a_budget_below_the_baseline_names_the_minimum_before_any_call() -> None:
    lm = FunctionLM(sentiment_fn)
    rows = sentiment_rows(20)
    with pytest.raises(lg.BudgetError) as ei:
        BootstrapFewShot(2).optimize(sentiment_program(), rows[:8], label_accuracy(), valset=rows[8:],
                                     ctx=ctx(lm), budget=lg.Budget(max_calls=5))
    err = ei.value
    assert isinstance(err, lg.DefinitionError) and err.field == "max_calls"
    assert "cannot even cover the baseline" in str(err) and "at least 12 calls" in str(err)
    assert "12 validation rows" in str(err)
    assert lm.calls == []


def test_no_warning_for_a_clean_evaluation() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = evaluate_sync(sentiment_program(), sentiment_rows(2), label_accuracy(),
                            ctx=ctx(FunctionLM(sentiment_fn)))
    assert res.metric_errors == [] and res.summary()["metric_errors"] == 0
