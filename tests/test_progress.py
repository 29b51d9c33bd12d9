"""Progress on long work (issue 19 item 5): live displays on stderr for evaluate, batch and compile,
quiet by default off a terminal, and ``lmgraph run --data`` streaming JSON lines as rows finish."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import lmgraph as lg
from lmgraph import cli
from lmgraph.evaluation import evaluate_sync, label_accuracy
from lmgraph.optimizers import BootstrapFewShot, JointSearch
from lmgraph.progress import RowProgress, display_stream, progress_mode
from lmgraph.testing import FunctionLM, request_text

from helpers import sentiment_fn, sentiment_program, sentiment_rows

METRIC = label_accuracy(pred_field="label", label="label")


def failing_fn(req: lg.LMRequest) -> str:
    """The sentiment fake, except that 'film 3' makes the model call fail."""
    if "film 3" in request_text(req).rsplit("Sentence:", 1)[-1]:
        raise RuntimeError("backend down")
    return sentiment_fn(req)


def ctx(fn=sentiment_fn) -> lg.RunContext:  # noqa: ANN001
    return lg.RunContext(lm=FunctionLM(fn), cache=False, retries=1)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---------------------------------------------------------------- settings

def test_progress_settings() -> None:
    assert progress_mode(True) == "auto" and progress_mode(False) == progress_mode(None) == "never"
    assert progress_mode("always") == "always"
    with pytest.raises(lg.DefinitionError, match="progress='loud'"):
        progress_mode("loud")
    tty, pipe = FakeTTY(), io.StringIO()
    assert display_stream(True, tty) is tty and display_stream(True, pipe) is None
    assert display_stream("always", pipe) is pipe and display_stream(False, tty) is None


# ---------------------------------------------------------------- evaluate / batch

def test_evaluate_shows_rows_failures_and_running_mean(capsys) -> None:  # noqa: ANN001
    rows = sentiment_rows(6)
    res = evaluate_sync(sentiment_program(), rows, METRIC, ctx=ctx(failing_fn), progress="always", concurrency=1)
    err = capsys.readouterr().err
    assert res.n == 6 and len(res.failures) == 1
    assert "evaluating sentiment" in err and "6/6" in err
    assert "failures 1" in err
    assert f"mean {res.mean:.3f}" in err  # the running mean, final value


def test_evaluate_with_progress_true_is_silent_off_a_terminal(capsys) -> None:  # noqa: ANN001
    evaluate_sync(sentiment_program(), sentiment_rows(4), METRIC, ctx=ctx(), progress=True)
    assert capsys.readouterr().err == ""  # stderr is captured here: not a terminal


def test_evaluate_draws_on_a_terminal(monkeypatch) -> None:  # noqa: ANN001
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    evaluate_sync(sentiment_program(), sentiment_rows(4), METRIC, ctx=ctx(), progress=True)
    assert "4/4" in tty.getvalue() and "\x1b[" in tty.getvalue()  # a live (ANSI) display


def test_running_mean_is_updated_row_by_row() -> None:
    seen: list[tuple[int, float | None]] = []

    class Spy(RowProgress):
        def row(self, ok: bool, score: float | None = None) -> None:
            super().row(ok, score)
            seen.append((self.done, self.mean))

    spy = Spy(4, "spy")
    rows = sentiment_rows(4)  # no demos: the fake always says positive -> rows 0, 2 wrong
    evaluate_sync(sentiment_program(), rows, METRIC, ctx=ctx(), progress=spy, concurrency=1)
    assert seen == [(1, 0.0), (2, 0.5), (3, 1 / 3), (4, 0.5)]


def test_batch_progress_and_on_result(capsys) -> None:  # noqa: ANN001
    finished = []
    results = sentiment_program().batch_sync(sentiment_rows(5), ctx=ctx(failing_fn), progress="always",
                                             on_result=lambda r: finished.append((r.index, r.ok)))
    err = capsys.readouterr().err
    assert "sentiment" in err and "5/5" in err and "failures 1" in err
    assert sorted(finished) == [(r.index, r.ok) for r in results] and (3, False) in finished


# ---------------------------------------------------------------- compile

def test_compile_status_line(capsys) -> None:  # noqa: ANN001
    rows = sentiment_rows(24)
    _, rep = BootstrapFewShot(2, progress="always").optimize(sentiment_program(), rows[:12], METRIC,
                                                             valset=rows[12:], ctx=ctx(),
                                                             budget=lg.Budget(max_calls=200))
    err = capsys.readouterr().err
    assert "bootstrap_fewshot: scoring the baseline" in err
    assert "bootstrap_fewshot: bootstrapping demos from training rows" in err  # phases the optimizer labels
    assert "bootstrap_fewshot: scoring the bootstrapped demos" in err
    assert "0 candidates tried" in err and "1 candidate tried" in err
    assert f"calls {rep.spent['calls']}/200" in err  # calls spent vs the budget
    base = rep.baseline
    lo, hi = base.ci
    assert f"best {base.mean:.3f} [{lo:.3f}, {hi:.3f}] (baseline)" in err  # the best so far with its CI
    assert "scoring 12 rows" in err and "12/12" in err


def test_compile_is_quiet_by_default(capsys) -> None:  # noqa: ANN001
    rows = sentiment_rows(12)
    BootstrapFewShot(2).optimize(sentiment_program(), rows[:6], METRIC, valset=rows[6:], ctx=ctx())
    assert capsys.readouterr().err == ""


def test_joint_search_labels_its_trials(capsys) -> None:  # noqa: ANN001
    rows = sentiment_rows(24)
    JointSearch(3, num_instructions=0, minibatch_size=4, progress="always").optimize(
        sentiment_program(), rows[:12], METRIC, valset=rows[12:], ctx=ctx(), budget=lg.Budget(max_calls=400))
    err = capsys.readouterr().err
    assert "joint_search: trial 1 of 3 on a minibatch of 4" in err
    assert "joint_search: bootstrapping demos from training rows" in err


def test_no_rich_at_import_time() -> None:
    code = ("import lmgraph, lmgraph.optimizers, lmgraph.cli, lmgraph.evaluation, lmgraph.progress, sys; "
            "assert 'rich' not in sys.modules, 'rich imported at import time'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- the command line

def write_jsonl(path, rows) -> str:  # noqa: ANN001
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_run_data_streams_rows_as_they_finish(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Row 1's model call waits until the test has read row 0's line from the output file: it can
    only finish (in time) when results are written as rows finish, not at the end of the batch."""
    first_line_read = threading.Event()
    waited: list[bool] = []

    def fn(req: lg.LMRequest) -> str:
        if "film 1" in request_text(req).rsplit("Sentence:", 1)[-1]:
            waited.append(first_line_read.wait(10))
        return sentiment_fn(req)

    monkeypatch.setattr(cli, "make_lm", lambda spec: FunctionLM(fn))
    prog = str(sentiment_program().save(tmp_path / "prog.json"))
    data = write_jsonl(tmp_path / "rows.jsonl", [{"sentence": f"good film {i}"} for i in range(3)])
    out = tmp_path / "res.jsonl"
    rc: list[int] = []
    worker = threading.Thread(target=lambda: rc.append(cli.main(
        ["run", prog, "--data", data, "--out", str(out), "--no-cache", "--concurrency", "1", "--quiet"])))
    worker.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") >= 1):
        time.sleep(0.01)
    first = out.read_text().splitlines()[0] if out.exists() else ""
    first_line_read.set()
    worker.join(30)
    assert rc == [0] and waited == [True]
    assert json.loads(first) == {"index": 0, "outputs": {"label": "positive"}}
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in recs) == [0, 1, 2]  # every line says which row it is


def test_cli_eval_progress_by_default_on_a_terminal_and_quiet(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setattr(cli, "make_lm", lambda spec: FunctionLM(sentiment_fn))
    prog = str(sentiment_program().save(tmp_path / "prog.json"))
    data = write_jsonl(tmp_path / "rows.jsonl", sentiment_rows(5))
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert cli.main(["eval", prog, "--data", data, "--metric", "accuracy", "--no-cache", "--json"]) == 0
    assert "5/5" in tty.getvalue() and "mean" in tty.getvalue()
    tty.seek(0)
    tty.truncate()
    assert cli.main(["eval", prog, "--data", data, "--metric", "accuracy", "--no-cache", "--json", "--quiet"]) == 0
    assert tty.getvalue() == ""
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 5


def test_cli_run_quiet_drops_the_summary(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setattr(cli, "make_lm", lambda spec: FunctionLM(sentiment_fn))
    prog = str(sentiment_program().save(tmp_path / "prog.json"))
    data = write_jsonl(tmp_path / "rows.jsonl", [{"sentence": "good film"}])
    assert cli.main(["run", prog, "--data", data, "--no-cache", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out) == {"index": 0, "outputs": {"label": "positive"}}


@pytest.mark.integration
def test_run_data_streams_and_shows_progress_with_the_embedded_model(tmp_path, capsys) -> None:  # noqa: ANN001
    """The real CLI path on the embedded model: JSON lines for every row and a progress line."""
    pytest.importorskip("llama_cpp")
    from lmgraph.lm.embedded import embedded_model_path

    try:
        embedded_model_path()
    except lg.DefinitionError as e:
        pytest.skip(str(e))
    prog = str(sentiment_program().save(tmp_path / "prog.json"))
    data = write_jsonl(tmp_path / "rows.jsonl", sentiment_rows(3))
    res = evaluate_sync(lg.Program.load(prog), sentiment_rows(3), METRIC, ctx=lg.RunContext(cache=False),
                        progress="always")
    err = capsys.readouterr().err
    assert "evaluating sentiment" in err and "3/3" in err and f"mean {res.mean:.3f}" in err
    assert cli.main(["run", prog, "--data", data, "--no-cache"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["index"] for r in recs) == [0, 1, 2] and all("outputs" in r for r in recs)
