"""The benchmark suite's own machinery: counting proxy, resumable state, goal summary.

No model and no DSPy: a stdlib upstream on 127.0.0.1 stands in for the llama.cpp server.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import suite  # noqa: E402


@pytest.fixture()
def upstream():
    seen = []

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            status = 400 if body.get("bad") else 200
            data = json.dumps({"choices": [{"text": "ok"}],
                               "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()
    srv.server_close()


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_proxy_forwards_and_counts_requests_and_tokens(upstream):
    url, seen = upstream
    proxy = suite.CountingProxy([url])
    try:
        assert proxy.base_url.startswith("http://127.0.0.1:")
        before = proxy.snapshot()
        status, body = _post(proxy.base_url + "/completions", {"prompt": "hi"})
        assert status == 200 and body["choices"][0]["text"] == "ok"
        status, _ = _post(proxy.base_url + "/completions", {"bad": True})
        assert status == 400
        d = suite.delta(proxy.snapshot(), before)
        assert d == {"requests": 2, "prompt_tokens": 14, "completion_tokens": 6, "errors": 1}
        assert [p for p, _ in seen] == ["/v1/completions", "/v1/completions"]
    finally:
        proxy.close()


def test_run_state_resumes_skips_done_and_failed_unless_asked_and_ignores_torn_line(tmp_path):
    path = tmp_path / "records.jsonl"
    st = suite.RunState(path, fresh=False)
    st.add({"task": "trec", "system": "a", "x": 1})
    st.add({"task": "trec", "system": "b", "failed": "boom"})
    with path.open("a") as f:
        f.write('{"task": "trec", "sys')  # a kill mid-write
    again = suite.RunState(path, fresh=False)
    assert again.done("trec", "a") and again.done("trec", "b") and not again.done("sst2", "a")
    assert again.done("trec", "a", retry_failed=True) and not again.done("trec", "b", retry_failed=True)
    again.add({"task": "trec", "system": "b", "x": 2})
    latest = {r["system"]: r for r in again.latest()}
    assert latest["b"]["x"] == 2 and "failed" not in latest["b"]
    assert suite.RunState(path, fresh=True).records == []


def _rec(system, framework, optimizer, scores, calls):
    return {"task": "t", "system": system, "framework": framework, "optimizer": optimizer, "variant": "",
            "main": "accuracy", "scores": {"accuracy": scores},
            "test": {"accuracy": {"mean": sum(scores) / len(scores), "ci95": [0.0, 1.0]}},
            "compile": None if optimizer == "zero-shot" else {"calls": calls}, "parse_failure_rate": 0.0,
            "splits": {"train": 1, "val": 1, "test": len(scores)}}


def test_goals_compare_best_compiled_systems_and_call_ratio():
    recs = [_rec("lg zero", "lmgraph", "zero-shot", [0, 0, 0, 0], 0),
            _rec("lg A", "lmgraph", "A", [1, 1, 0, 0], 40),
            _rec("lg B", "lmgraph", "B", [1, 1, 1, 0], 60),
            _rec("ds zero", "dspy", "zero-shot", [1, 1, 1, 1], 0),   # zero-shot is not a compiled system
            _rec("ds A", "dspy", "A", [1, 0, 0, 0], 100)]
    (g,) = report.goals(recs, ["t"])
    assert g["lmgraph_best"] == "lg B" and g["dspy_best"] == "ds A"
    # calls: the cheapest lmgraph system that still scores >= DSPy's best (lg A: 0.5 >= 0.25)
    assert g["lmgraph_cheapest"] == "lg A" and g["lmgraph_best_calls"] == 60
    assert g["lmgraph_calls"] == 40 and g["dspy_calls"] == 100 and g["calls_ratio"] == 0.4
    assert g["score_goal"] is True and g["calls_goal"] is True and g["met"] is True
    assert g["paired_diff"] == pytest.approx(0.5)
    recs[1]["compile"]["calls"] = 70  # now both lmgraph systems cost more than half of DSPy's calls
    (g,) = report.goals(recs, ["t"])
    assert g["lmgraph_cheapest"] == "lg B" and g["calls_ratio"] == 0.6
    assert g["score_goal"] is True and g["calls_goal"] is False and g["met"] is False
    md = report.markdown({"mode": "quick", "date": "d", "model": "m", "server": {"servers": 1, "threads": 1},
                          "seed": 0, "command": "c", "wall_s": 60, "goals": [g], "tasks": ["t"],
                          "records": recs, "overhead": None})
    assert "| t (accuracy) | lg B | ds A | 0.750 vs 0.250 |" in md and "score only" in md
    assert "| lg B (0.750) | 60 / 100 = 0.6 |" in md
    failed = {"task": "t", "system": "ds M", "framework": "dspy", "optimizer": "M", "variant": "", "main": "accuracy",
              "failed": "AdapterParseError: could not parse\n\nLM Response: {\"a\": 1} | x"}
    md = report.markdown({"mode": "quick", "date": "d", "model": "m", "server": {"servers": 1, "threads": 1},
                          "seed": 0, "command": "c", "wall_s": 60, "goals": [g], "tasks": ["t"],
                          "records": [*recs, failed], "overhead": None})
    (row,) = [line for line in md.splitlines() if line.startswith("| ds M |")]  # one line: the table holds
    assert "FAILED: AdapterParseError: could not parse LM Response:" in row and row.count("|") == 9
    recs[4]["compile"]["calls"] = 0  # DSPy's best made no compile calls: only a 0-call system would do
    (g,) = report.goals(recs, ["t"])
    assert g["calls_ratio"] is None and g["calls_goal"] is False


def test_every_task_file_defines_a_task_with_disjoint_seeded_splits():
    import tasks

    from lmgraph.errors import DefinitionError
    from lmgraph.evaluation import data_dir

    try:
        data_dir()
    except DefinitionError:  # a checkout away from ../shared/data, no LMGRAPH_DATA_DIR
        pytest.skip("shared/data not available")

    for t in tasks.all_tasks():
        a = t.splits(0, t.quick)
        b = t.splits(0, t.quick)
        assert a == b, t.name
        train, val, test = a
        assert (len(train), len(val), len(test)) == (t.quick.train, t.quick.val, t.quick.test)
        ids = lambda rows: {json.dumps({k: r[k] for k in t.inputs}, sort_keys=True) for r in rows}  # noqa: E731
        assert not ids(train) & ids(val), t.name
        assert t.main in t.metrics and all(k in train[0] for k in t.inputs)
        assert t.lmgraph_program().name == t.name


def test_every_full_mode_lmgraph_optimizer_applies_to_every_task_program():
    """Each lmgraph system of the full mode builds its optimizer, and it can plan a compile of
    every task's program (dry_run: no model calls) within the suite's call budget."""
    import tasks

    from lmgraph.errors import DefinitionError
    from lmgraph.evaluation import data_dir

    try:
        data_dir()
    except DefinitionError:
        pytest.skip("shared/data not available")
    systems = [s for s in suite.systems_for("full") if s.framework == "lmgraph" and s.optimizer != "zero-shot"]
    assert {s.optimizer for s in systems} >= {"LabeledFewShot", "BootstrapFewShot", "BootstrapRandomSearch",
                                              "InstructionSearch", "JointSearch", "Decompose"}
    for t in tasks.all_tasks():
        train, val, _ = t.splits(0, t.quick)
        train, val = ([{**r, t.output: r[t.label_field]} for r in part] for part in (train, val))
        for s in systems:
            est = suite._lmgraph_optimizer(s, t, 0).dry_run(t.lmgraph_program(), train, val)
            assert est.calls > 0, (t.name, s.name)


def test_unit_duration_estimate_scales_by_the_frameworks_zero_shot_time():
    recs = [{"task": "trec", "system": "DSPy BootstrapFewShot [json]", "unit_wall_s": 200.0},
            {"task": "trec", "system": "DSPy zero-shot [json]", "unit_wall_s": 100.0},
            {"task": "sst2", "system": "DSPy zero-shot [json]", "unit_wall_s": 300.0},
            {"task": "sst2", "system": "DSPy BootstrapFewShot [json]", "failed": "boom", "unit_wall_s": 5.0},
            {"task": "sst2", "system": "lmgraph LabeledFewShot", "unit_wall_s": 50.0}]
    bfs = suite.System("DSPy BootstrapFewShot [json]", "dspy", "BootstrapFewShot", "json")
    assert suite.estimate_unit_s(recs, "sst2", bfs) == 600.0  # 200 s on TREC x (300 / 100)
    assert suite.estimate_unit_s(recs, "gsm8k", bfs) == 200.0  # no zero-shot time there: unscaled
    assert suite.estimate_unit_s(recs, "trec", bfs) is None  # only its own (failed elsewhere) runs
    lfs = suite.System("lmgraph LabeledFewShot", "lmgraph", "LabeledFewShot")
    assert suite.estimate_unit_s(recs, "trec", lfs) == 50.0
    # never finished anywhere: the other adapter's run of the same optimizer stands in
    mipro_chat = {"task": "sst2", "system": "DSPy MIPROv2-light [chat]", "framework": "dspy",
                  "optimizer": "MIPROv2", "variant": "chat", "unit_wall_s": 2300.0}
    mipro_json = suite.System("DSPy MIPROv2-light [json]", "dspy", "MIPROv2", "json")
    assert suite.estimate_unit_s(recs, "sst2", mipro_json) is None
    assert suite.estimate_unit_s([*recs, mipro_chat], "sst2", mipro_json) == 2300.0
    assert suite.estimate_unit_s([*recs, mipro_chat], "trec", mipro_json) == 2300.0


def test_stop_by_takes_the_next_clock_time_or_an_iso_datetime():
    import datetime as dt

    now = dt.datetime(2026, 11, 24, 23, 30).timestamp()
    assert suite.parse_stop_by("23:45", now) == dt.datetime(2026, 11, 24, 23, 45).timestamp()
    assert suite.parse_stop_by("01:40", now) == dt.datetime(2026, 11, 25, 1, 40).timestamp()
    assert suite.parse_stop_by("2026-11-25T02:00", now) == dt.datetime(2026, 11, 25, 2, 0).timestamp()
    with pytest.raises(SystemExit, match="HH:MM"):
        suite.parse_stop_by("soon", now)


def test_the_published_command_keeps_what_shapes_results_only():
    assert suite.run_command(["--report-only", "--date", "2026-11-24", "--stop-by=01:40"]) == "bash benchmarks/run.sh"
    assert suite.run_command(["--quick", "--stop-by", "01:40", "--tasks", "trec"]) == \
        "bash benchmarks/run.sh --quick --tasks trec"
