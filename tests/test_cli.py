"""The command line, driven in-process with a fake model (``make_lm`` patched)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import lmgraph as lg
from lmgraph import cli
from lmgraph.optimizers import load_artifact
from lmgraph.testing import FunctionLM, request_text

from helpers import sentiment_fn, sentiment_program, sentiment_rows


@pytest.fixture
def prog_path(tmp_path):  # noqa: ANN001, ANN201
    return str(sentiment_program().save(tmp_path / "prog.json"))


@pytest.fixture
def fake(monkeypatch):  # noqa: ANN001, ANN201
    specs: list[str] = []

    def make_lm(spec: str) -> FunctionLM:
        specs.append(spec)
        return FunctionLM(sentiment_fn)

    monkeypatch.setattr(cli, "make_lm", make_lm)
    return specs


def write_jsonl(path, rows) -> str:  # noqa: ANN001
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_render_text_and_mermaid(prog_path, capsys) -> None:  # noqa: ANN001
    assert cli.main(["render", prog_path]) == 0
    text = capsys.readouterr().out
    assert "clf" in text and text.strip() == sentiment_program().render().strip()
    assert cli.main(["render", prog_path, "--mermaid"]) == 0
    assert capsys.readouterr().out.strip() == sentiment_program().render("mermaid").strip()


def test_run_with_inputs(prog_path, fake, capsys) -> None:  # noqa: ANN001
    assert cli.main(["run", prog_path, "--input", "sentence=bad film", "--model", "openai:http://x/v1",
                     "--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out) == {"label": "positive"}  # no demos: always positive
    assert fake == ["openai:http://x/v1"]


def test_run_over_data_records_a_bad_row(prog_path, fake, tmp_path, capsys) -> None:  # noqa: ANN001
    rows = [{"sentence": "good film"}, {"text": "no sentence here"}, {"sentence": "bad film"}]
    data, out = write_jsonl(tmp_path / "rows.jsonl", rows), tmp_path / "res.jsonl"
    assert cli.main(["run", prog_path, "--data", data, "--out", str(out), "--no-cache"]) == 0
    captured = capsys.readouterr()
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1, 2]
    assert recs[0]["outputs"] == {"label": "positive"} and recs[2]["outputs"] == {"label": "positive"}
    assert "error" in recs[1] and "sentence" in recs[1]["error"]
    assert "3 rows, 1 failed" in captured.err
    assert [json.loads(line) for line in captured.out.splitlines()] == recs


def test_eval_prints_numbers(prog_path, fake, tmp_path, capsys) -> None:  # noqa: ANN001
    data = write_jsonl(tmp_path / "rows.jsonl", sentiment_rows(10))
    assert cli.main(["eval", prog_path, "--data", data, "--metric", "accuracy:label", "--no-cache",
                     "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 10 and s["mean"] == 0.5 and s["failures"] == 0 and s["calls"] == 10
    assert s["tokens"] > 0 and len(s["ci95"]) == 2 and "wall_s" in s
    assert cli.main(["eval", prog_path, "--data", data, "--metric", "accuracy", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "mean:     0.5000" in out and "95% CI" in out and "failures: 0" in out and "calls:    10" in out


def test_compile_dry_run(prog_path, fake, tmp_path, capsys) -> None:  # noqa: ANN001
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20))
    assert cli.main(["compile", prog_path, "--train", train, "--metric", "accuracy",
                     "--optimizer", "bootstrap", "--dry-run"]) == 0
    assert "model calls" in capsys.readouterr().out
    assert fake == []  # no model built for an estimate


@pytest.mark.parametrize("optimizer", ["labeled", "bootstrap"])
def test_compile_writes_an_artifact(prog_path, fake, tmp_path, capsys, optimizer) -> None:  # noqa: ANN001
    rows = sentiment_rows(40)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:20])
    val = write_jsonl(tmp_path / "val.jsonl", rows[20:])
    art, rep = tmp_path / "out" / "compiled.json", tmp_path / "report.json"
    assert cli.main(["compile", prog_path, "--train", train, "--val", val, "--metric", "accuracy:label:label",
                     "--optimizer", optimizer, "--max-calls", "500", "--seed", "1", "--no-cache",
                     "--checkpoint", str(tmp_path / "ckpt.json"), "--out", str(art),
                     "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    assert "best 1.000" in out and "baseline 0.500" in out
    program, summary = load_artifact(art)
    assert program.module("clf").demos and summary["best_score"] == 1.0
    report = json.loads(rep.read_text())
    assert report["best_score"] == 1.0 and "wall_s" in report and report["seed"] == 1

    # the compiled artifact runs, renders and diffs from the command line too
    assert cli.main(["eval", str(art), "--data", val, "--metric", "accuracy", "--json", "--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out)["mean"] == 1.0
    assert cli.main(["render", str(art)]) == 0
    capsys.readouterr()
    assert cli.main(["diff", prog_path, str(art)]) == 0
    d = capsys.readouterr().out
    assert "~ node clf" in d and "demos: 0 ->" in d


def test_diff(prog_path, tmp_path, capsys) -> None:  # noqa: ANN001
    prog = sentiment_program()
    other = prog.with_module("clf", prog.module("clf").replace(instructions="Classify."))
    b = str(other.save(tmp_path / "b.json"))
    assert cli.main(["diff", prog_path, prog_path]) == 0
    assert capsys.readouterr().out.strip() == "(no differences)"
    assert cli.main(["diff", prog_path, b]) == 0
    out = capsys.readouterr().out
    assert "~ node clf" in out and "instructions" in out


def test_errors_exit_2_without_traceback(prog_path, fake, tmp_path, capsys) -> None:  # noqa: ANN001
    assert cli.main(["render", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "Traceback" not in err

    data = write_jsonl(tmp_path / "rows.jsonl", sentiment_rows(4))
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", prog_path, "--data", data, "--metric", "bleu"])
    assert exc.value.code == 2 and "bad metric 'bleu'" in capsys.readouterr().err

    assert cli.main(["eval", prog_path, "--data", str(tmp_path / "nope.jsonl"), "--metric", "em"]) == 2
    assert "nope.jsonl" in capsys.readouterr().err

    assert cli.main(["eval", prog_path, "--data", data, "--metric", "em:answer"]) == 2
    assert "'answer'" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        cli.main(["compile", prog_path, "--train", data, "--metric", "em", "--optimizer", "labeled"])
    assert exc.value.code == 2  # --out is required without --dry-run


def test_program_needing_a_resource_is_a_clear_error(fake, tmp_path, capsys) -> None:  # noqa: ANN001
    p = lg.Pipeline("rag")
    q = p.input("question")
    docs = p.add(lg.Retrieve(lg.BM25Retriever(["a doc"], name="wiki"), k=1), name="ret", query=q)
    ans = p.add(lg.Predict("context: list[str], question -> answer"), name="qa", context=docs.passages,
                question=q)
    p.output(answer=ans.answer)
    path = str(p.build().save(tmp_path / "rag.json"))
    assert cli.main(["run", path, "--input", "question=hi"]) == 2
    err = capsys.readouterr().err
    assert "'wiki'" in err and "Python API" in err and "resources=" in err and "Traceback" not in err


def test_unknown_model_spec_is_an_error(prog_path, capsys) -> None:  # noqa: ANN001
    assert cli.main(["run", prog_path, "--input", "sentence=x", "--model", "gpt-4o"]) == 2
    assert "unknown --model" in capsys.readouterr().err


def test_python_m_lmgraph_help() -> None:
    done = subprocess.run([sys.executable, "-m", "lmgraph", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "compile" in done.stdout


def test_render_shows_a_program_whose_resources_are_not_bound(tmp_path, capsys) -> None:  # noqa: ANN001
    p = lg.Pipeline("rag")
    q = p.input("question")
    docs = p.add(lg.Retrieve(lg.BM25Retriever(["a doc"], name="wiki"), k=1), name="ret", query=q)
    p.output(passages=docs.passages)
    path = str(p.build().save(tmp_path / "rag.json"))
    assert cli.main(["render", path]) == 0
    assert "Retrieve[wiki, k=1]" in capsys.readouterr().out


def test_model_specs_build_the_named_backends() -> None:
    from lmgraph.lm.litellm import LiteLLM
    from lmgraph.lm.openai_http import OpenAIServerLM

    lean = cli.make_lm("http:http://127.0.0.1:8080/v1")
    assert isinstance(lean, OpenAIServerLM) and lean.base_url == "http://127.0.0.1:8080/v1"
    via = cli.make_lm("openai:http://127.0.0.1:8080/v1")
    assert isinstance(via, LiteLLM) and via.api_base == "http://127.0.0.1:8080/v1"
    assert isinstance(cli.make_lm("litellm:gpt-4o-mini"), LiteLLM)


def test_compile_min_gain_reaches_the_compiler_and_only_the_compiler(prog_path, fake, tmp_path, capsys) -> None:  # noqa: ANN001
    rows = sentiment_rows(40)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    rep = tmp_path / "report.json"
    assert cli.main(["compile", prog_path, "--train", train, "--metric", "accuracy:label:label", "--no-cache",
                     "--max-calls", "300", "--min-gain", "0.9", "--report", str(rep),
                     "--out", str(tmp_path / "a.json")]) == 0
    report = json.loads(rep.read_text())
    assert report["config"]["min_gain"] == 0.9
    capsys.readouterr()
    built = len(fake)
    assert cli.main(["compile", prog_path, "--train", train, "--metric", "accuracy:label:label",
                     "--optimizer", "labeled", "--min-gain", "0.1", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "--min-gain applies to --optimizer compile" in err and len(fake) == built  # refused before any model


def test_compile_no_early_stop_is_passed_to_the_optimizer(prog_path, fake, tmp_path, capsys) -> None:  # noqa: ANN001
    rows = sentiment_rows(40)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:20])
    val = write_jsonl(tmp_path / "val.jsonl", rows[20:])
    for flag, expected in (([], True), (["--no-early-stop"], False)):
        rep = tmp_path / f"report{len(flag)}.json"
        assert cli.main(["compile", prog_path, "--train", train, "--val", val, "--metric", "accuracy:label:label",
                         "--optimizer", "labeled", "--no-cache", "--report", str(rep),
                         "--out", str(tmp_path / "a.json"), *flag]) == 0
        assert json.loads(rep.read_text())["config"]["early_stop"] is expected
    capsys.readouterr()


def test_named_models_reach_the_context_and_the_compiler(prog_path, fake, tmp_path, capsys) -> None:  # noqa: ANN001
    rows = sentiment_rows(40)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    rep = tmp_path / "report.json"
    assert cli.main(["compile", prog_path, "--train", train, "--metric", "accuracy:label:label", "--no-cache",
                     "--max-calls", "400", "--lm", "big=openai:http://127.0.0.1:9/v1", "--lm", "writer=litellm:x",
                     "--proposer", "writer", "--verbalize", "--stratify", "--report", str(rep),
                     "--out", str(tmp_path / "a.json")]) == 0
    assert fake == ["embedded", "openai:http://127.0.0.1:9/v1", "litellm:x"]  # --model, then each --lm
    report = json.loads(rep.read_text())
    config = report["config"]
    assert config["proposer_lm"] == "writer" and config["verbalize"] is True and config["stratify"] is True
    raced = [c["label"] for c in report["candidates"]]
    assert any(lab == "model big" for lab in raced) and not any("writer" in lab for lab in raced)  # not the proposer
    capsys.readouterr()
    # --models picks which to race; none races none
    assert cli.main(["compile", prog_path, "--train", train, "--metric", "accuracy:label:label", "--no-cache",
                     "--max-calls", "300", "--lm", "big=litellm:y", "--models", "none", "--report", str(rep),
                     "--out", str(tmp_path / "b.json")]) == 0
    assert not any(c["label"].startswith("model ") for c in json.loads(rep.read_text())["candidates"])
    assert json.loads(rep.read_text())["config"]["models"] == []


@pytest.mark.parametrize(("argv", "says"), [
    (["--lm", "big"], "is not NAME=MODEL"),
    (["--lm", "a=litellm:x", "--lm", "a=litellm:y"], "names 'a' twice"),
    (["--proposer", "nope"], "--proposer 'nope' is not a model given with --lm"),
    (["--lm", "a=litellm:x", "--models", "a,b"], "names 'b', which no --lm names"),
    (["--optimizer", "labeled", "--verbalize"], "--verbalize applies to --optimizer compile"),
    (["--optimizer", "bootstrap", "--lm", "a=litellm:x", "--proposer", "a"], "--proposer applies to"),
])
def test_bad_model_options_fail_before_any_model_is_built(prog_path, fake, tmp_path, capsys, argv, says) -> None:  # noqa: ANN001
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20))
    assert cli.main(["compile", prog_path, "--train", train, "--metric", "accuracy:label:label",
                     "--out", str(tmp_path / "a.json"), *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and "fix" in err.lower()
    assert fake == []


def test_run_binds_a_node_saved_with_a_named_model(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    built: dict[str, FunctionLM] = {}

    def make_lm(spec: str) -> FunctionLM:
        built[spec] = FunctionLM(lambda r, s=spec: "Label: negative" if s == "litellm:big" else "Label: positive")
        return built[spec]

    monkeypatch.setattr(cli, "make_lm", make_lm)
    p = lg.Pipeline("named")
    s = p.input("sentence")
    n = p.add(lg.Predict("sentence -> label: Literal['negative', 'positive']", lm="big"), name="clf", sentence=s)
    p.output(label=n.label)
    path = str(p.build().save(tmp_path / "named.json"))
    assert cli.main(["run", path, "--input", "sentence=x", "--no-cache", "--lm", "big=litellm:big"]) == 0
    assert json.loads(capsys.readouterr().out) == {"label": "negative"}  # the node ran on 'big'
    assert len(built["litellm:big"].calls) == 1 and not built["embedded"].calls
    # show --prompts previews it too (without --lm the node's model is unknown: exit 2, naming it)
    assert cli.main(["show", path, "--prompts", "--inputs", '{"sentence": "x"}', "--lm", "big=litellm:big"]) == 0
    assert "Sentence: x" in capsys.readouterr().out
    assert cli.main(["show", path, "--prompts", "--inputs", '{"sentence": "x"}']) == 2
    assert "'big'" in capsys.readouterr().err


def test_reflect_from_the_command_line_reads_what_each_failing_row_expected(prog_path, tmp_path, monkeypatch,
                                                                             capsys) -> None:  # noqa: ANN001
    from helpers import sentiment_fn

    built: dict[str, FunctionLM] = {}

    def reflector(request):  # writes an instruction; the task model ignores it (it answers 'positive')
        return "Instruction: Say negative when the sentence says bad."

    def make_lm(spec: str) -> FunctionLM:
        built[spec] = FunctionLM(reflector if spec == "litellm:r" else sentiment_fn)
        return built[spec]

    monkeypatch.setattr(cli, "make_lm", make_lm)
    rows = sentiment_rows(24)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:12])
    val = write_jsonl(tmp_path / "val.jsonl", rows[12:])
    rep = tmp_path / "report.json"
    assert cli.main(["compile", prog_path, "--train", train, "--val", val, "--metric", "accuracy:label:label",
                     "--optimizer", "reflect", "--lm", "r=litellm:r", "--proposer", "r", "--no-cache",
                     "--max-calls", "200", "--report", str(rep), "--out", str(tmp_path / "a.json")]) == 0
    report = json.loads(rep.read_text())
    assert report["optimizer"] == "reflect" and report["config"]["reflection_lm"] == "r"
    asked = [request_text(c) for c in built["litellm:r"].calls]
    assert asked and all("Feedback: wrong (score 0): expected 'negative', got 'positive'" in a for a in asked)


def test_with_feedback_names_what_was_expected():
    from lmgraph.evaluation import label_accuracy, with_feedback

    m = with_feedback(label_accuracy())
    assert m({"label": "human"}, {"label": "human"}) == (1.0, None)
    assert m({"label": "human"}, {"label": "entity"}) == (0.0, "wrong (score 0): expected 'human', got 'entity'")
    assert m({"label": "human"}, None)[1] == "wrong (score 0): expected 'human', no output (the run failed)"
    assert m.fields == ("label",) and m.pred_fields == ("label",)
    with pytest.raises(lg.DefinitionError, match="declares its fields"):
        with_feedback(lambda ex, pred, trace=None: 1.0)
