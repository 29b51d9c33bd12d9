"""The suite's newer rows: reflective optimizers, per-node model choice over two real models, DSPy
GEPA / SIMBA / constrained-proposer MIPROv2 -- their wiring, with fakes (no model, no server)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import suite  # noqa: E402
import suite_systems  # noqa: E402

NEW = {"lmgraph Reflect", "lmgraph Reflect (in-process)", "lmgraph Compile + model choice (in-process)",
       "DSPy GEPA [chat]", "DSPy GEPA [json]", "DSPy SIMBA [chat]", "DSPy SIMBA [json]",
       "DSPy MIPROv2-light, constrained proposer [chat]", "DSPy MIPROv2-light, constrained proposer [json]",
       "DSPy zero-shot [schema]", "DSPy BootstrapFewShot [schema]", "DSPy MIPROv2-light [schema]",
       "DSPy GEPA [schema]", "DSPy SIMBA [schema]"}


def test_importing_the_suite_makes_no_model_and_loads_no_framework(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import suite, suite_systems, suite_dspy; "
            "bad = [m for m in ('llama_cpp', 'dspy', 'lmgraph.lm.llamacpp') if m in sys.modules]; "
            "print(bad)")
    env = {**os.environ, "LMGRAPH_MODELS_DIR": str(tmp_path / "models"), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "models").exists()  # the requantized model is made by its row only


def test_systems_for_lists_the_new_rows_and_quick_runs_them_only_when_named():
    for mode in ("quick", "full"):
        names = {s.name for s in suite.systems_for(mode)}
        assert names >= NEW, NEW - names
    quick = suite.systems_for("quick")
    assert suite.QUICK_OPT_IN == NEW
    plain = {s.name for s in suite.pick_systems(quick, None, quick=True)}
    assert not plain & NEW and "lmgraph Compile" in plain  # the plain quick run keeps its line-up
    picked = {s.name for s in suite.pick_systems(quick, "Reflect, GEPA", quick=True)}
    assert picked == {"lmgraph Reflect", "lmgraph Reflect (in-process)", "DSPy GEPA [chat]", "DSPy GEPA [json]",
                      "DSPy GEPA [schema]"}
    assert {s.name for s in suite.pick_systems(suite.systems_for("full"), None, quick=False)} >= NEW
    # "=" names a system exactly: the in-process rows that contain the name are left out
    exact = {s.name for s in suite.pick_systems(suite.systems_for("full"), "=lmgraph Compile, [schema]", quick=False)}
    assert exact == {"lmgraph Compile"} | {s.name for s in suite.systems_for("full") if "[schema]" in s.name}
    with pytest.raises(SystemExit, match="no system is named"):
        suite.pick_systems(quick, "=lmgraph compile (gpu)", quick=True)
    gepa = next(s for s in quick if s.name == "DSPy GEPA [json]")
    assert gepa.opts()["max_metric_calls"] == "budget" and "135M" in gepa.opts()["reflection_lm"]
    full_gepa = next(s for s in suite.systems_for("full") if s.name == "DSPy GEPA [json]")
    assert full_gepa.opts()["auto"] == "light"
    choice = next(s for s in quick if "model choice" in s.name)
    assert choice.framework == "lmgraph-inprocess" and len(choice.opts()["models"]) == 2


def test_lmgraph_optimizers_of_the_new_rows():
    from lmgraph.optimizers import Compile, Reflect

    rows = {s.name: s for s in suite.systems_for("quick")}
    r = suite._lmgraph_optimizer(rows["lmgraph Reflect"], None, 0)
    assert isinstance(r, Reflect) and r.reflection_lm == suite_systems.REFLECTOR and r.max_iterations == 6
    c = suite._lmgraph_optimizer(rows["lmgraph Compile + model choice (in-process)"], None, 0)
    assert isinstance(c, Compile) and list(c.models) == [suite_systems.MODEL_B]  # the other model is raced
    assert suite._lmgraph_optimizer(rows["lmgraph Compile"], None, 0).models == "auto"


def test_second_model_is_made_once_then_reused(tmp_path, monkeypatch):
    src = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    src.write_bytes(b"GGUF")
    monkeypatch.setenv("LMGRAPH_MODEL_PATH", str(src))
    made = []

    def fake_quantize(s, d, ftype):
        made.append((s, d, ftype))
        d.parent.mkdir(parents=True, exist_ok=True)
        d.write_bytes(b"GGUF2")
        return d

    first = suite_systems.second_model("Q2_K", tmp_path / "models", quantize=fake_quantize)
    assert first == tmp_path / "models" / "SmolLM2-135M-Instruct.Q2_K.gguf" and first.read_bytes() == b"GGUF2"
    assert [(m[0].name, m[1], m[2]) for m in made] == [(src.name, first, "Q2_K")]
    assert suite_systems.second_model("Q2_K", tmp_path / "models", quantize=fake_quantize) == first
    assert len(made) == 1  # reused


def test_requantize_says_why_it_cannot(tmp_path, monkeypatch):
    with pytest.raises(suite_systems.ModelUnavailable, match="no LLAMA_FTYPE_MOSTLY_Q9_Z"):
        suite_systems.requantize(tmp_path / "a.gguf", tmp_path / "b.gguf", "Q9_Z")
    with pytest.raises(suite_systems.ModelUnavailable, match="does not exist"):
        suite_systems.requantize(tmp_path / "missing.gguf", tmp_path / "b.gguf", "Q2_K")
    monkeypatch.setenv("LMGRAPH_MODEL_PATH", str(tmp_path / "nowhere.gguf"))
    with pytest.raises(suite_systems.ModelUnavailable, match="embedded model is missing"):
        suite_systems.second_model("Q2_K", tmp_path / "models")


def test_a_missing_second_model_is_recorded_as_a_skip_with_its_reason(tmp_path, monkeypatch):
    from lmgraph.errors import DefinitionError
    from lmgraph.evaluation import data_dir

    try:
        data_dir()
    except DefinitionError:
        pytest.skip("shared/data not available")

    def unavailable(*a, **k):
        raise suite_systems.ModelUnavailable("llama_model_quantize(x.gguf -> Q2_K) returned 1")

    monkeypatch.setattr(suite_systems, "second_model", unavailable)
    monkeypatch.setattr(suite, "WORK", tmp_path / "work")
    monkeypatch.setattr(suite, "RESULTS", tmp_path / "results")
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")  # its files too: never the real results/
    assert suite.main(["--quick", "--tasks", "trec", "--no-overhead", "--systems", "model choice",
                       "--sizes", "4,4,4", "--date", "2026-12-04"]) == 0
    records = tmp_path / "work" / "quick-sizes4x4x4-s0" / "records.jsonl"
    recs = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(recs) == 1
    rec = recs[0]
    assert rec["system"] == "lmgraph Compile + model choice (in-process)"
    assert rec["failed"].startswith("skipped: no second model") and "returned 1" in rec["skipped"]
    assert rec["traceback"] == ""
    assert (tmp_path / "results" / "2026-12-04-quick-sizes4x4x4.md").exists()


def test_a_run_stopped_by_stop_by_publishes_the_units_it_finished(tmp_path, monkeypatch):
    import datetime as dt

    from lmgraph.errors import DefinitionError
    from lmgraph.evaluation import data_dir

    try:
        data_dir()
    except DefinitionError:
        pytest.skip("shared/data not available")
    reached = []
    monkeypatch.setattr(suite, "_stop_at", lambda when, servers, **k: reached.append(k["reached"]))
    calls = []

    def second_model(*a, **k):  # the first unit ends (a recorded skip); the stop comes in the second
        calls.append(1)
        if len(calls) == 1:
            raise suite_systems.ModelUnavailable("llama_model_quantize(x.gguf -> Q2_K) returned 1")
        reached[0].set()
        raise SystemExit(143)  # what the SIGTERM handler raises

    monkeypatch.setattr(suite_systems, "second_model", second_model)
    monkeypatch.setattr(suite, "WORK", tmp_path / "work")
    monkeypatch.setattr(suite, "RESULTS", tmp_path / "results")
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    later = (dt.datetime.now() + dt.timedelta(hours=2)).isoformat(timespec="minutes")
    with pytest.raises(SystemExit):
        suite.main(["--quick", "--tasks", "trec,sst2", "--no-overhead", "--systems", "model choice",
                    "--sizes", "4,4,4", "--date", "2026-12-05", "--stop-by", later])
    assert len(calls) == 2
    records = tmp_path / "work" / "quick-sizes4x4x4-s0" / "records.jsonl"
    assert len(records.read_text().splitlines()) == 1
    md = (tmp_path / "results" / "2026-12-05-quick-sizes4x4x4.md").read_text()
    assert "no second model" in md or "skipped" in md


def test_a_units_budget_is_calls_per_row_and_a_system_may_set_its_own():
    full = {s.name: s for s in suite_systems.systems_for("full")}
    assert suite.unit_budget("trec", full["lmgraph Compile"], 100) == 800
    assert suite.unit_budget("gsm8k", full["lmgraph Compile"], 100) == 1600
    assert suite.unit_budget("banking77", full["lmgraph Compile (3 calls/row)"], 100) == 300
    assert "lmgraph Compile (3 calls/row)" not in {s.name for s in suite_systems.systems_for("quick")}


def test_feedback_metrics_say_what_was_expected():
    import tasks

    trec = tasks.load("trec")
    row = {"question": "Who?", "label": "human"}
    assert trec.score_feedback(row, {"answer_type": "human"}) == (1.0, "correct: 'human'")
    score, text = trec.score_feedback(row, {"answer_type": "location"})
    assert score == 0.0 and "expected answer_type 'human', got 'location'" in text and "not one of" not in text
    score, text = trec.score_feedback(row, {"answer_type": "a person"})
    assert score == 0.0 and "not one of the labels" in text
    assert trec.score_feedback(row, None)[0] == 0.0
    for t in (trec, tasks.load("sst2")):  # same score as the plain metric
        for pred in ({t.output: "human"}, {t.output: "positive"}, {t.output: ""}):
            labelled = {**row, "label": "positive"}
            assert t.score_feedback(labelled, pred)[0] == t.score(labelled, pred)
    gsm = tasks.load("gsm8k")  # no task-specific feedback: the generic one
    score, text = gsm.score_feedback({"question": "q", "answer": "42"}, {gsm.output: "41"})
    assert score == 0.0 and "expected" in text and "'41'" in text


def _classify_program():
    import tasks

    return tasks.classification_lmgraph("t", "question", "answer_type", ["human", "location"], "Classify.", 8)


def test_model_choice_row_records_the_chosen_model_and_the_front():
    from lmgraph.testing import FunctionLM

    a = FunctionLM(lambda req: "location", name="fake-a")  # always wrong
    b = FunctionLM(lambda req: "human", name="fake-b")     # always right
    rows = [{"question": f"who is {i}?", "label": "human", "answer_type": "human"} for i in range(24)]
    system = next(s for s in suite.systems_for("quick") if "model choice" in s.name)
    task = type("T", (), {})()
    task.lmgraph_program = _classify_program
    task.metrics = {"accuracy": None}
    task.output = "answer_type"
    task.score = lambda row, pred, m=None: float(bool(pred) and pred.get("answer_type") == row["label"])
    task.score_feedback = lambda row, pred: (task.score(row, pred), "fb")
    out = suite.run_lmgraph(system, task, (rows[:12], rows[12:], rows[:6]), seed=0, lm=a, proxy=None,
                            budget_calls=400, lms={suite_systems.MODEL_A: a, suite_systems.MODEL_B: b})
    mc = out["compile"]["model_choice"]
    assert mc["chosen"] == {"classify": suite_systems.MODEL_B}
    assert any(r["label"] == f"model {suite_systems.MODEL_B}" and r["mean"] == 1.0 for r in mc["raced"])
    assert mc["pareto"] and all({"score", "tokens_per_row", "label"} <= set(p) for p in mc["pareto"])
    assert out["scores"]["accuracy"] == [1.0] * 6  # the test rows ran on the chosen model


def test_reflect_row_gives_its_metric_feedback_and_a_reflector(monkeypatch):
    from lmgraph.optimizers import Reflect

    seen = {}
    real = Reflect.optimize

    def spy(self, program, train, metric, **kw):
        seen["lms"] = dict(kw["ctx"].lms)
        seen["metric"] = metric({"label": "human"}, {"answer_type": "location"})
        return real(self, program, train, metric, **kw)

    monkeypatch.setattr(Reflect, "optimize", spy)
    from lmgraph.testing import FunctionLM

    lm = FunctionLM(lambda req: "human")
    rows = [{"question": f"q{i}", "label": "human", "answer_type": "human"} for i in range(6)]
    system = next(s for s in suite.systems_for("quick") if s.name == "lmgraph Reflect")
    import dataclasses

    import tasks

    task = dataclasses.replace(tasks.load("trec"), lmgraph_program=_classify_program)
    suite.run_lmgraph(system, task, (rows, rows, rows[:2]), seed=0, lm=lm, proxy=None, budget_calls=200)
    assert seen["lms"] == {suite_systems.REFLECTOR: lm}
    assert seen["metric"][0] == 0.0 and "expected answer_type 'human'" in seen["metric"][1]


def _capture_lm(dspy):  # noqa: ANN001, ANN202
    """A DSPy LM that records each request's settings and fails it (no model is called)."""
    class Capture(dspy.BaseLM):
        def __init__(self):
            super().__init__("openai/capture")
            self.seen = []

        def forward(self, prompt=None, messages=None, **kwargs):
            self.seen.append(kwargs)
            raise RuntimeError("captured")

    return Capture()


def test_constrained_proposer_adapter_schema_for_every_signature_but_the_tasks():
    dspy = pytest.importorskip("dspy")
    import suite_dspy

    adapter = suite_dspy.proposer_schema_adapter(dspy.ChatAdapter(), {"answer_type"})
    assert isinstance(adapter, dspy.ChatAdapter)
    proposer = dspy.Signature("task_demos -> proposed_instruction")
    task_sig = dspy.Signature("question -> answer_type")
    lm = _capture_lm(dspy)
    for sig in (proposer, task_sig):
        with pytest.raises(Exception, match="captured"):
            adapter(lm, {}, sig, [], {name: "x" for name in sig.input_fields})
    fmt = lm.seen[0]["response_format"]
    assert fmt["type"] == "json_object" and fmt["schema"]["required"] == ["proposed_instruction"]
    assert all("response_format" not in k for k in lm.seen[1:])  # the task's own calls: plain ChatAdapter
    n = len(lm.seen)
    with pytest.raises(Exception):  # noqa: B017 - acall dispatches the same way (any failure after the capture)
        asyncio.run(adapter.acall(lm, {}, proposer, [], {"task_demos": "x"}))
    assert lm.seen[n:] == [] or lm.seen[n]["response_format"]["schema"]["required"] == ["proposed_instruction"]


def test_schema_rows_constrain_the_tasks_own_signature_to_its_options():
    # the [schema] rows: every DSPy signature, the task program's included, asks the server for
    # JSON constrained by the output fields' schema -- a Literal output becomes an enum, so the
    # 135M model can only answer with an option (DSPy's parse failures removed as far as DSPy allows)
    from typing import Literal

    dspy = pytest.importorskip("dspy")
    import suite_dspy

    adapter = suite_dspy.schema_json_adapter()
    assert isinstance(adapter, dspy.JSONAdapter)
    sig = dspy.Signature({"question": dspy.InputField(), "answer_type": dspy.OutputField()})
    sig = sig.with_updated_fields("answer_type", type_=Literal["human", "location"])  # as tasks.classification_dspy
    lm = _capture_lm(dspy)
    with pytest.raises(Exception, match="captured"):
        adapter(lm, {}, sig, [], {"question": "who?"})
    fmt = lm.seen[0]["response_format"]
    assert fmt["type"] == "json_object" and fmt["schema"]["required"] == ["answer_type"]
    assert fmt["schema"]["properties"]["answer_type"]["enum"] == ["human", "location"]
    schema_rows = [s for s in suite.systems_for("quick") if s.variant == "schema"]
    assert {s.optimizer for s in schema_rows} == {"zero-shot", "BootstrapFewShot", "MIPROv2", "GEPA", "SIMBA"}


def test_a_system_whose_optional_package_is_missing_is_named_before_the_run(monkeypatch):
    """MIPROv2 imports optuna only when it runs: an interpreter without it is refused up front."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    full = suite.systems_for("full")
    assert suite.missing_optional(full) == [f"{s.name} needs optuna" for s in full
                                             if s.framework == "dspy" and s.optimizer == "MIPROv2"]
    assert suite.missing_optional([s for s in full if s.optimizer != "MIPROv2"]) == []
    with pytest.raises(SystemExit, match="DSPy MIPROv2-light \\[schema\\] needs optuna"):
        suite._main(["--no-overhead", "--tasks", "trec", "--systems", "=DSPy MIPROv2-light [schema]"])
