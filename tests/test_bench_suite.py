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

import answers  # noqa: E402
import suite  # noqa: E402


def _fake_upstream(answer):
    """A stdlib OpenAI-style upstream on 127.0.0.1: ``answer(n, body)`` -> (text, prompt_tokens,
    completion_tokens) for the n-th request; a body with ``"bad"`` gets status 400."""
    seen = []

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            text, prompt_tokens, completion_tokens = answer(len(seen), body)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
            data = json.dumps({"choices": [{"text": text}], "usage": usage}).encode()
            self.send_response(400 if body.get("bad") else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}", seen


@pytest.fixture()
def upstream():
    srv, url, seen = _fake_upstream(lambda n, body: ("ok", 7, 3))
    yield url, seen
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
    proxy = answers.CountingProxy([url])
    try:
        assert proxy.base_url.startswith("http://127.0.0.1:")
        before = proxy.snapshot()
        status, body = _post(proxy.base_url + "/completions", {"prompt": "hi"})
        assert status == 200 and body["choices"][0]["text"] == "ok"
        status, _ = _post(proxy.base_url + "/completions", {"bad": True})
        assert status == 400
        d = answers.delta(proxy.snapshot(), before)
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


def test_a_resumed_run_keeps_the_date_it_started_under(tmp_path):
    import datetime as dt

    today = dt.date.today().isoformat()
    path = tmp_path / "records.jsonl"
    st = suite.RunState(path, fresh=False)
    assert st.run_date("2026-11-24") == "2026-11-24"  # a new run: the date given
    st.add({"task": "trec", "system": "a"})
    again = suite.RunState(path, fresh=False)
    assert again.run_date(None) == "2026-11-24"  # resumed another day without --date
    assert again.run_date("2026-12-01") == "2026-12-01"  # an explicit --date still wins
    assert again.run_date(None) == "2026-11-24"
    assert suite.RunState(path, fresh=True).run_date(None) == today  # --fresh starts anew
    assert suite.RunState(tmp_path / "other" / "records.jsonl", fresh=False).run_date(None) == today



def test_a_run_restored_from_the_committed_results_resumes_the_unfinished_unit(tmp_path):
    """Machine A stops mid-unit and publishes; machine B, with only the committed files, resumes."""
    a, b = tmp_path / "a", tmp_path / "b"
    st = suite.RunState(a / "records.jsonl", fresh=False)
    st.add({"task": "t", "system": "done", "x": 1})
    st.add({"task": "t", "system": "broken", "failed": "boom"})
    j = answers.Journal(a / "journal" / "t__going.jsonl")
    j.phase("compile")
    j.put("k1", 200, "application/json", '{"x": 1}')
    j.close()
    carried = tmp_path / "results" / "2026-11-24-journal"
    assert [p.name for p in suite.carry_journals(a / "journal", carried)] == ["t__going.jsonl"]
    assert suite.carry_journals(tmp_path / "nothing", carried) == []
    doc = {"mode": "full", "seed": 0, "records": st.latest()}

    st_b = suite.RunState(b / "records.jsonl", fresh=False)
    assert suite.restore_state(st_b, doc, carried, b / "journal") == (2, 1)
    again = suite.RunState(b / "records.jsonl", fresh=False)  # written through to B's state file
    assert again.done("t", "done") and again.done("t", "broken") and not again.done("t", "going")
    jb = answers.Journal(b / "journal" / "t__going.jsonl")
    assert jb.segments_before == 1 and jb.take("k1") == (200, "application/json", '{"x": 1}')
    jb.put("k2", 200, "application/json", '{"x": 2}')
    jb.close()
    # a second restore adds nothing and keeps B's own (longer) journal
    assert suite.restore_state(again, doc, carried, b / "journal") == (0, 0)
    assert '"k2"' in (b / "journal" / "t__going.jsonl").read_text()


def test_restore_names_the_results_file_it_cannot_use(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "WORK", tmp_path / "work")
    monkeypatch.setattr(suite, "RESULTS", tmp_path / "results")
    with pytest.raises(SystemExit, match=r"cannot read .*2026-11-24\.json"):
        suite.main(["--restore", "2026-11-24", "--report-only"])
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "2026-11-24.json").write_text(json.dumps({"mode": "quick", "seed": 0}))
    with pytest.raises(SystemExit, match="is mode 'quick' seed 0, this run is mode 'full' seed 0"):
        suite.main(["--restore", "2026-11-24", "--report-only"])
    with pytest.raises(SystemExit, match="--fresh discards the run state that --restore seeds"):
        suite.main(["--restore", "2026-11-24", "--fresh"])
    assert not (tmp_path / "work" / "full-s0" / "records.jsonl").exists()

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
    # the score half is a point estimate: a paired CI that includes 0 is said to be within noise
    def goal_row(goal):
        text = report.markdown({"mode": "quick", "date": "d", "model": "m", "server": {"servers": 1, "threads": 1},
                                "seed": 0, "command": "c", "wall_s": 60, "goals": [goal], "tasks": ["t"],
                                "records": recs, "overhead": None})
        return next(line for line in text.splitlines() if line.startswith("| t (accuracy) |"))

    assert goal_row({**g, "paired_ci95": [0.1, 0.6]}).endswith("| score only |")
    assert goal_row({**g, "paired_ci95": [-0.1, 0.6], "met": True}).endswith("| yes (score: ahead within noise) |")
    assert goal_row({**g, "paired_ci95": [0.0, 0.6], "met": True}).endswith("| yes (score: ahead within noise) |")
    assert "| lg B (0.750) | 60 / 100 = 0.6 |" in md
    # an optimizer that returned the program as given reaches DSPy's score with the zero-shot prompt: say so
    recs[2]["compile"]["chosen"] = "baseline (the program as given)"
    (g2,) = report.goals(recs, ["t"])
    assert g2["lmgraph_cheapest_unchanged"] is True
    md2 = report.markdown({"mode": "quick", "date": "d", "model": "m", "server": {"servers": 1, "threads": 1},
                           "seed": 0, "command": "c", "wall_s": 60, "goals": [g2], "tasks": ["t"],
                           "records": recs, "overhead": None})
    assert "| lg B (0.750, returned the program as given) | 60 / 100 = 0.6 |" in md2
    del recs[2]["compile"]["chosen"]
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


def test_tied_dspy_systems_count_the_cheapest_and_in_process_rows_show_no_requests():
    # Banking77 full mode: four DSPy systems tie at 2/150; the 0-call one is DSPy's best, so the
    # calls goal is judged against the hardest bar, not against the 1,448-call random search
    recs = [_rec("lg A", "lmgraph", "A", [1, 1, 0, 0], 40),
            _rec("ds search", "dspy", "S", [1, 0, 0, 0], 1448),
            _rec("ds labeled", "dspy", "L", [0, 1, 0, 0], 0)]
    (g,) = report.goals(recs, ["t"])
    assert g["dspy_best"] == "ds labeled" and g["dspy_calls"] == 0 and g["calls_goal"] is False
    recs.append(_rec("lg in-process", "lmgraph", "B", [1, 1, 1, 0], 10))
    recs[-1]["compile"].update(requests=None, request_tokens=None, wall_s=5.0)  # no HTTP in-process
    recs[0]["compile"].update(requests=38, request_tokens=1234, wall_s=9.0)
    md = report.markdown({"mode": "quick", "date": "d", "model": "m", "server": {"servers": 1, "threads": 1},
                          "seed": 0, "command": "c", "wall_s": 60, "goals": report.goals(recs, ["t"]),
                          "tasks": ["t"], "records": recs, "overhead": None})
    assert "None" not in md
    (row,) = [line for line in md.splitlines() if line.startswith("| lg in-process |")]
    assert "| 10 | - | 5.0 |" in row
    (row,) = [line for line in md.splitlines() if line.startswith("| lg A |")]
    assert "| 40 | 38 (1234) | 9.0 |" in row


def test_every_task_file_defines_a_task_with_disjoint_seeded_splits():
    from lmgraph.errors import DefinitionError
    from lmgraph.evaluation import data_dir

    import tasks

    try:
        data_dir()
    except DefinitionError:  # a checkout away from ../shared/data, no LMGRAPH_DATA_DIR
        pytest.skip("shared/data not available")

    for t in tasks.all_tasks([*tasks.ORDER, *tasks.UNSEEN_TASKS]):
        a = t.splits(0, t.quick)
        b = t.splits(0, t.quick)
        assert a == b, t.name
        train, val, test = a
        assert (len(train), len(val), len(test)) == (t.quick.train, t.quick.val, t.quick.test)
        ids = lambda rows, t=t: {json.dumps({k: r[k] for k in t.inputs}, sort_keys=True) for r in rows}  # noqa: E731
        assert not ids(train) & ids(val), t.name
        assert not (ids(train) | ids(val)) & ids(test), t.name
        assert t.main in t.metrics and all(k in train[0] for k in t.inputs)
        assert t.lmgraph_program().name == t.name


def test_every_full_mode_lmgraph_optimizer_applies_to_every_task_program():
    """Each lmgraph system of the full mode builds its optimizer, and it can plan a compile of
    every task's program (dry_run: no model calls) within the suite's call budget."""
    from lmgraph.errors import DefinitionError
    from lmgraph.evaluation import data_dir

    import tasks

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


def test_unit_estimate_ignores_a_zero_shot_time_made_of_shared_answers():
    recs = [{"task": "trec", "system": "DSPy BootstrapFewShot [json]", "unit_wall_s": 200.0},
            {"task": "trec", "system": "DSPy zero-shot [json]", "unit_wall_s": 100.0},
            {"task": "trec", "system": "DSPy zero-shot [chat]", "unit_wall_s": 150.0},
            {"task": "sst2", "system": "DSPy zero-shot [chat]", "unit_wall_s": 450.0},
            # answered from the [chat] unit's identical fallback requests: 4 s says nothing
            {"task": "sst2", "system": "DSPy zero-shot [json]", "unit_wall_s": 4.0,
             "test_eval": {"shared_answers": 150}}]
    bfs = suite.System("DSPy BootstrapFewShot [json]", "dspy", "BootstrapFewShot", "json")
    assert suite.estimate_unit_s(recs, "sst2", bfs) == 600.0  # scaled by the [chat] zero-shot: x3


def test_stop_by_takes_the_next_clock_time_or_an_iso_datetime():
    import datetime as dt

    now = dt.datetime(2026, 11, 24, 23, 30).timestamp()
    assert suite.parse_stop_by("23:45", now) == dt.datetime(2026, 11, 24, 23, 45).timestamp()
    assert suite.parse_stop_by("01:40", now) == dt.datetime(2026, 11, 25, 1, 40).timestamp()
    assert suite.parse_stop_by("2026-11-25T02:00", now) == dt.datetime(2026, 11, 25, 2, 0).timestamp()
    with pytest.raises(SystemExit, match="HH:MM"):
        suite.parse_stop_by("soon", now)
    # passed within the last hour: reached already (a chained second command stops), not tomorrow
    assert suite.parse_stop_by("23:10", now) == dt.datetime(2026, 11, 24, 23, 10).timestamp()
    assert suite.parse_stop_by("22:00", now) == dt.datetime(2026, 11, 25, 22, 0).timestamp()


def test_a_passed_stop_by_runs_nothing(tmp_path, monkeypatch, capsys):
    import datetime as dt
    import signal

    monkeypatch.setattr(suite, "WORK", tmp_path)
    past = (dt.datetime.now() - dt.timedelta(minutes=5)).isoformat(timespec="minutes")
    before = signal.getsignal(signal.SIGTERM)
    assert suite.main(["--quick", "--tasks", "trec", "--no-overhead", "--stop-by", past]) == 0
    assert "has passed already: nothing run" in capsys.readouterr().out
    assert not (tmp_path / "quick-s0" / "records.jsonl").exists()
    # main() turns SIGTERM into an unwinding exit while it runs, and gives the caller's handler back
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_published_command_keeps_what_shapes_results_only():
    assert suite.run_command(["--report-only", "--date", "2026-11-24", "--stop-by=01:40"]) == "bash benchmarks/run.sh"
    assert suite.run_command(["--quick", "--stop-by", "01:40", "--tasks", "trec", "--seed", "1"]) == \
        "bash benchmarks/run.sh --quick --seed 1"
    assert suite.run_command(["--no-overhead", "--tasks=hotpotqa", "--systems", "DSPy", "--redo", "x",
                              "--retry-failed", "--sizes", "4,4,8"]) == \
        "bash benchmarks/run.sh --no-overhead --sizes 4,4,8"


def test_results_cover_every_recorded_unit_not_only_the_last_invocations_tasks():
    # a resumed full run with --tasks hotpotqa once rewrote the date's results with HotPotQA alone
    records = [{"task": "trec", "system": "a"}, {"task": "hotpotqa", "system": "a"},
               {"task": "hotpotqa", "system": "b"}, {"task": "extra", "system": "a"}]
    tasks, missing = suite.report_scope(records, ("trec", "sst2", "hotpotqa"), ["hotpotqa"], ["a", "b"])
    assert tasks == ["trec", "sst2", "hotpotqa", "extra"]
    assert missing == ["trec / b", "sst2 / a", "sst2 / b", "extra / b"]


def test_each_unit_records_the_invocation_that_ran_it_and_the_results_say_so():
    # the results files' command is the plain run that resumes what is missing; units run by
    # --tasks/--systems invocations said nothing of how they were run
    argv = ["--no-overhead", "--tasks", "hotpotqa", "--systems", "=lmgraph zero-shot,=DSPy GEPA [schema]",
            "--date", "2026-12-05", "--restore", "2026-12-05", "--stop-by=01:15"]
    inv = suite.invocation(argv)
    assert inv == ("python benchmarks/suite.py --no-overhead --tasks hotpotqa --systems "
                   "'=lmgraph zero-shot,=DSPy GEPA [schema]' --date 2026-12-05")
    assert suite.run_command(argv) == "bash benchmarks/run.sh --no-overhead"
    recs = [_rec("lg A", "lmgraph", "A", [1, 0], 4), _rec("lg B", "lmgraph", "B", [1, 1], 4),
            _rec("ds", "dspy", "D", [0, 0], 4)]
    recs[0]["invocation"] = recs[1]["invocation"] = inv
    md = report.markdown({"mode": "full", "date": "d", "model": "m", "server": {"servers": 1, "threads": 1},
                          "seed": 0, "command": "bash benchmarks/run.sh --no-overhead", "wall_s": 60,
                          "goals": report.goals(recs, ["t"]), "tasks": ["t"], "records": recs, "overhead": None})
    (line,) = [ln for ln in md.splitlines() if ln.startswith("Units made by: ")]
    assert f"`{inv}` (2)" in line and "1 older unit(s)" in line


@pytest.fixture()
def counting_upstream():
    """An upstream whose answers number themselves: a replayed answer is told apart from a new one."""
    srv, url, seen = _fake_upstream(lambda n, body: (f"answer {n}", 10 * n, 1))
    yield url, seen
    srv.shutdown()
    srv.server_close()


def _journaled_run(proxy, path, payloads):
    """One run (segment) of a unit through the proxy; returns (answers, counted delta, journal)."""
    journal = answers.Journal(path)
    proxy.journal = journal
    before = proxy.snapshot()
    journal.phase("compile")
    got = [_post(proxy.base_url + "/chat/completions", p) for p in payloads]
    proxy.journal = None
    return [(s, b["choices"][0]["text"]) for s, b in got], answers.delta(proxy.snapshot(), before), journal


def test_a_killed_unit_resumes_from_its_journal_with_the_counts_of_one_uninterrupted_run(counting_upstream, tmp_path):
    url, seen = counting_upstream
    path = tmp_path / "journal" / "trec__dspy.jsonl"
    proxy = answers.CountingProxy([url])
    try:
        # run 1 is killed after three requests (two of them identical, as a sampling optimizer may send)
        first, d1, j1 = _journaled_run(proxy, path, [{"q": 1}, {"q": 1}, {"q": 2}, {"bad": True}])
        j1.close()  # a kill: the file stays
        assert first == [(200, "answer 1"), (200, "answer 2"), (200, "answer 3"), (400, "answer 4")]
        with path.open("a") as f:
            f.write('{"k": "torn')  # killed mid-write
        # run 2 asks the same requests again, then goes on: only what was not answered reaches the model
        second, d2, j2 = _journaled_run(proxy, path, [{"q": 1}, {"q": 1}, {"q": 2}, {"bad": True}, {"q": 1}])
        assert second == [(200, "answer 1"), (200, "answer 2"), (200, "answer 3"), (400, "answer 5"),
                          (200, "answer 6")]
        assert [body for _, body in seen[4:]] == [{"bad": True}, {"q": 1}]  # errors are not journaled: asked again
        assert j2.replayed == 3 and j2.journaled == 3
        # counted as if every request had reached the model, tokens included
        assert d2["requests"] == 5 and d2["prompt_tokens"] == 10 + 20 + 30 + 50 + 60 and d2["errors"] == 1
        assert d1["requests"] == 4
        assert j2.summary()["segments"] == 2 and j2.summary()["replayed_requests"] == 3
        j2.close(delete=True)
        assert not path.exists()
    finally:
        proxy.close()


def test_journal_credits_the_killed_runs_time_per_phase(tmp_path):
    path = tmp_path / "u.jsonl"
    j1 = answers.Journal(path)
    assert j1.summary() is None and j1.prior_s("compile") == 0.0
    _, wall = suite._timed(j1, "compile", lambda: None)  # run 1 finishes compiling ...
    j1._write({"phase_end": "compile", "seg": 1, "t": 120.0})  # (as if it had taken 120 s)
    j1.phase("test")
    j1.put("k1", 200, "application/json", "{}")
    j1._write({"k": "k2", "s": 200, "ct": "application/json", "d": "{}", "seg": 1, "ph": "test", "t": 30.0})
    j1.close()  # ... and is killed 30 s into the test set
    j2 = answers.Journal(path)
    assert j2.prior_s("compile") == 120.0 and j2.prior_s("test") == 30.0
    result, wall = suite._timed(j2, "compile", lambda: "compiled")
    assert result == "compiled" and 120.0 <= wall < 121.0  # this run's (replayed) compile plus run 1's
    j2.close()
    j3 = answers.Journal(path)  # killed again: both earlier runs count
    assert 120.0 <= j3.prior_s("compile") < 121.0  # run 1's 120 s + run 2's (replay-only) compile
    assert j3.summary()["segments"] == 3
    j3.close()


def test_journal_lm_replays_an_in_process_models_answers(tmp_path):
    import asyncio

    from lmgraph.lm.base import LMRequest, Message
    from lmgraph.testing import FunctionLM

    inner = FunctionLM(lambda req: f"reply {len(inner.calls)}")
    req = LMRequest(messages=(Message(role="user", content="hi"),), max_tokens=8)
    j = answers.Journal(tmp_path / "inproc.jsonl")
    r1 = asyncio.run(answers.JournalLM(inner, j).complete(req))
    j.close()
    j2 = answers.Journal(tmp_path / "inproc.jsonl")
    lm2 = answers.JournalLM(inner, j2)
    assert lm2.identity() == inner.identity()
    r2 = asyncio.run(lm2.complete(req))
    assert r2.text == r1.text and r2.usage == r1.usage and len(inner.calls) == 1 and not r2.cached
    r3 = asyncio.run(lm2.complete(req))  # beyond the journal: the model answers
    assert len(inner.calls) == 2 and r3.text != r1.text
    j2.close()


def test_units_that_would_not_end_by_stop_by_go_last_but_still_run():
    t = type("T", (), {"name": "banking77"})()
    mk = lambda n: suite.System(n, "dspy", n, "json")  # noqa: E731
    todo = [(t, mk("long")), (t, mk("short")), (t, mk("unknown"))]
    recs = [{"task": "trec", "system": "long", "unit_wall_s": 5000.0},
            {"task": "trec", "system": "short", "unit_wall_s": 100.0}]
    order = [s.name for _, s in suite.order_units(todo, recs, stop_by=1000.0, now=lambda: 0.0)]
    assert order == ["short", "unknown", "long"]
    assert [s.name for _, s in suite.order_units(todo, recs, stop_by=None)] == ["long", "short", "unknown"]


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_stop_by_ends_the_run_then_forces_it(ignores_sigterm, tmp_path):
    import subprocess
    import time

    handler = "signal.SIG_IGN" if ignores_sigterm else "lambda s, f: sys.exit(128 + s)"
    code = (f"import signal, sys, time; sys.path.insert(0, {str(BENCH)!r}); import suite; "
            f"signal.signal(signal.SIGTERM, {handler}); "
            "suite._stop_at(time.time() + 0.3, [], grace_s=0.5); time.sleep(30)")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=25)
    assert proc.returncode == 128 + 15, proc.stderr
    assert "--stop-by reached" in proc.stdout and time.time() - t0 < 20


def test_the_proxy_prints_no_traceback_when_a_client_hangs_up(capsys):
    from http.server import BaseHTTPRequestHandler

    srv = answers.QuietHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    try:
        for exc in (BrokenPipeError(), ConnectionResetError()):  # a stopped run closing its connections
            try:
                raise exc
            except OSError:
                srv.handle_error(None, ("127.0.0.1", 1))
        assert capsys.readouterr().err == ""
        try:
            raise ValueError("boom")  # a real error still shows
        except ValueError:
            srv.handle_error(None, ("127.0.0.1", 1))
        assert "boom" in capsys.readouterr().err
    finally:
        srv.server_close()


def test_units_share_test_answers_but_never_compile_answers(counting_upstream, tmp_path):
    url, seen = counting_upstream
    proxy = answers.CountingProxy([url])
    proxy.shared = answers.SharedAnswers(tmp_path / "shared.jsonl")
    try:
        def unit(name):
            j = answers.Journal(tmp_path / "journal" / f"{name}.jsonl")
            proxy.journal = j
            before = proxy.snapshot()
            j.phase("compile")
            c = _post(proxy.base_url + "/chat/completions", {"q": "compile"})[1]["choices"][0]["text"]
            j.phase("test")
            t = [_post(proxy.base_url + "/chat/completions", {"q": i})[1]["choices"][0]["text"] for i in (1, 2)]
            proxy.journal = None
            j.close(delete=True)
            return c, t, answers.delta(proxy.snapshot(), before), j.shared

        c1, t1, d1, shared1 = unit("a")
        c2, t2, d2, shared2 = unit("b")
        assert (c1, c2) == ("answer 1", "answer 4")  # compile requests always reach the model
        assert t2 == t1 and shared1 == 0 and shared2 == 2  # the test answers were shared ...
        assert d2["requests"] == d1["requests"] == 3  # ... and counted all the same
        assert d2["prompt_tokens"] == 40 + 20 + 30 and len(seen) == 4
        # the store outlives the process (a later session's units share it too)
        again = answers.SharedAnswers(tmp_path / "shared.jsonl")
        assert again.get(answers.Journal.key("POST", "/v1/chat/completions", json.dumps({"q": 1}).encode())) is not None
    finally:
        proxy.close()


def test_common_prefix_len():
    assert answers.common_prefix_len(b"", b"abc") == 0
    assert answers.common_prefix_len(b"abcdef", b"abcxyz") == 3
    assert answers.common_prefix_len(b"abc", b"abc") == 3 and answers.common_prefix_len(b"ab", b"abc") == 2
    a = bytes(range(256)) * 40
    assert answers.common_prefix_len(a, a[:5000] + b"!" + a[5001:]) == 5000


def test_prefix_affinity_routes_to_the_server_holding_the_prompt_prefix():
    import time

    proxy = answers.CountingProxy(["s1", "s2"], affinity_wait_s=2.0, slack=4)
    chat, js = b"SYSTEM chat layout " * 10, b"SYSTEM json layout " * 10
    try:
        a = proxy._acquire(chat + b"row 1")
        b = proxy._acquire(js + b"row 1")
        assert {a, b} == {"s1", "s2"}
        proxy._release(a)
        proxy._release(b)
        # the next chat request goes where the chat prompt was, even though both are free
        assert proxy._acquire(chat + b"row 2") == a
        proxy._release(a)
        # the chat server is busy: a chat request waits for it rather than re-read the prompt elsewhere
        assert proxy._acquire(chat + b"row 3") == a
        got = []
        t = threading.Thread(target=lambda: got.append(proxy._acquire(chat + b"row 4")))
        t.start()
        time.sleep(0.3)
        assert got == []  # waiting, although s2 is free
        proxy._release(a)
        t.join(2)
        assert got == [a]
        # ... but not forever: after affinity_wait_s it takes the free server
        t0 = time.monotonic()
        assert proxy._acquire(chat + b"row 5") == b and time.monotonic() - t0 >= 1.9
        proxy._release(a)
        proxy._release(b)
        # prefixes within the slack: any free server, no waiting
        same = answers.CountingProxy(["s1", "s2"], affinity_wait_s=30.0, slack=1024)
        x = same._acquire(chat + b"row 1")
        t0 = time.monotonic()
        y = same._acquire(chat + b"row 2")
        assert x != y and time.monotonic() - t0 < 1.0
        same.close()
    finally:
        proxy.close()


def test_prefix_affinity_separates_two_alternating_layouts():
    """DSPy's ChatAdapter request, then its JSONAdapter fallback, one example after another:
    the two layouts share a head; longest-prefix routing alone would keep both on one server
    (each re-reading everything after the head), the LRU fallback parts them."""
    head, chat, js = b"H" * 100, b"C" * 100, b"J" * 100
    proxy = answers.CountingProxy(["s1", "s2"], affinity_wait_s=2.0, slack=16)
    try:
        got = []
        for row in range(1, 5):
            for layout in (chat, js):
                u = proxy._acquire(head + layout + b"row %d" % row)
                got.append(u)
                proxy._release(u)
        # the first fallback lands with the chat prompt (nothing better is known), the next chat
        # request finds its layout evicted and takes the idle server; from then on each stays
        assert got == ["s1", "s1", "s2", "s1", "s2", "s1", "s2", "s1"]
        # one layout only: it stays where its prefix is (no spurious moves)
        one = answers.CountingProxy(["s1", "s2"], affinity_wait_s=2.0, slack=16)
        seq = []
        for row in range(4):
            u = one._acquire(head + chat + b"row %d" % row)
            seq.append(u)
            one._release(u)
        assert seq == ["s1"] * 4
        one.close()
    finally:
        proxy.close()


def test_without_affinity_any_free_server_is_taken():
    proxy = answers.CountingProxy(["s1", "s2"])
    try:
        first = proxy._acquire(b"x" * 100)
        assert proxy._acquire(b"x" * 100) != first  # never waits for the busy one
    finally:
        proxy.close()


def test_same_answers_counts_identical_predictions_and_refuses_another_split():
    import same_answers

    got = same_answers.compare(["a", "b", None, "d"], ["a", "x", None, None])
    assert got["rows"] == 4 and got["identical"] == 2
    assert got["first_differences"] == [{"row": 1, "recorded": "b", "now": "x"},
                                        {"row": 3, "recorded": "d", "now": None}]
    with pytest.raises(ValueError, match="not the same test split"):
        same_answers.compare(["a"], ["a", "b"])


@pytest.mark.parametrize("quick, latencies", [(True, (0.1,)), (False, (0.1, 1.0))])
def test_overhead_quick_measures_http_at_the_headline_latency_only(monkeypatch, quick, latencies):
    import overhead

    seen = {}
    sched_entry = {"parallel_branches": {"ratio_wall_over_critical_path": 1.0},
                   "throughput": {"fraction_of_ideal": 1.0}}

    def fake_sched(**kw):
        seen.update(kw)
        return {"http": [{"latency_s": lat, "lmgraph": sched_entry} for lat in kw["latencies"]]}

    monkeypatch.setattr(overhead, "bench_lmgraph", lambda calls, repeats, chain: {
        "async_run_us": 1.0, "run_sync_us": 1.0, "chain_per_node_us": 1.0})
    monkeypatch.setattr(overhead, "bench_replay", lambda *a: {"ratio_x": 10.0})
    monkeypatch.setattr(overhead, "import_time", lambda module, repeats=7: 0.1)
    monkeypatch.setattr(overhead.scheduling, "run", fake_sched)
    out = overhead.run_all(quick, dspy=False)
    assert seen["latencies"] == latencies
    assert seen["repeats"] == (3 if quick else 5)
    # the headline targets come from the 100 ms row in both modes
    assert out["targets"]["throughput_fraction_of_ideal"]["met"] is True


def test_pick_systems_exact_names_and_substrings():
    """``--systems`` and ``--redo`` read patterns alike: ``=NAME`` is that system only (redoing
    ``lg.compile`` must not redo ``lmgraph Compile (3 calls/row)``), a bare pattern every name
    containing it, an unknown exact name an error that lists the names."""
    systems = suite.systems_for("full")
    names = lambda pats: [s.name for s in suite.pick_systems(systems, pats, quick=False)]  # noqa: E731
    assert names("=lmgraph Compile") == ["lmgraph Compile"]
    assert {"lmgraph Compile", "lmgraph Compile (3 calls/row)"} <= set(names("lmgraph compile"))
    with pytest.raises(SystemExit, match="no system is named"):
        names("=lmgraph Compil")
