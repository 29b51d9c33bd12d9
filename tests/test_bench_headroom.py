"""benchmarks/headroom.py and compile_default.py: units longer than a machine session resume on the next one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import headroom  # noqa: E402

import compile_default  # noqa: E402


def _config(task: str, seed: int, h: str, mean: float, runtime: str = compile_default.RUNTIME_REV) -> dict:
    return {"task": task, "seed": seed, "test_n": 100, "config": f"cfg {h}", "mean": mean, "ci": [0, 1],
            "diff": 0.0, "diff_ci": [0, 0], "calls": 100, "program_hash": h, "runtime": runtime}


def test_grid_configurations_scored_before_a_kill_are_reused_and_leave_when_the_unit_is_done(monkeypatch, tmp_path):
    monkeypatch.setattr(headroom, "OUT", tmp_path)  # the default table's grids: none but these
    lines = [_config("banking77", 0, "a", 0.1), _config("banking77", 0, "b", 0.2),
             _config("banking77", 0, "c", 0.3, runtime="an older runtime"),  # another runtime: re-run
             _config("banking77", 1, "d", 0.4), _config("gsm8k", 0, "e", 0.5)]
    (tmp_path / headroom.PROGRESS).write_text("".join(json.dumps(g) + "\n" for g in lines) + '{"task": "bank')
    got = headroom._measured("banking77", 0, 100, tmp_path)
    assert sorted(got) == ["a", "b"] and got["b"]["mean"] == 0.2 and "task" not in got["a"]
    assert headroom._measured("banking77", 0, 50, tmp_path) == {}  # other test rows: nothing reused
    headroom._append_progress(tmp_path, _config("banking77", 0, "f", 0.6))  # after the torn line
    assert sorted(headroom._measured("banking77", 0, 100, tmp_path)) == ["a", "b", "f"]
    headroom._unit_done(tmp_path, "banking77", 0, 100)
    left = [json.loads(x) for x in (tmp_path / headroom.PROGRESS).read_text().splitlines()]
    assert [(g["task"], g["seed"]) for g in left] == [("banking77", 1), ("gsm8k", 0)]
    headroom._unit_done(tmp_path, "banking77", 1, 100)
    headroom._unit_done(tmp_path, "gsm8k", 0, 100)
    assert not (tmp_path / headroom.PROGRESS).exists()


def test_a_compile_checkpoint_is_named_by_unit_and_runtime_revision(monkeypatch, tmp_path):
    monkeypatch.setattr(compile_default, "CHECKPOINTS", tmp_path)
    a = compile_default.checkpoint_path("banking77", 0, 400, 800)
    assert a.parent == tmp_path and a != compile_default.checkpoint_path("banking77", 1, 400, 800)
    monkeypatch.setattr(compile_default, "RUNTIME_REV", "another runtime")
    b = compile_default.checkpoint_path("banking77", 0, 400, 800)
    assert b != a  # evaluations of another runtime are never replayed
    b.write_text("{}\n")
    compile_default.finished("banking77", 0, 400, 800)
    assert not b.exists()
    # a unit compiled with non-default options keeps its own checkpoint
    c = compile_default.checkpoint_path("banking77", 0, 400, 800, "-stratified")
    assert c != b and c.parent == tmp_path
    c.write_text("{}\n")
    compile_default.finished("banking77", 0, 400, 800)
    assert c.exists()
    compile_default.finished("banking77", 0, 400, 800, "-stratified")
    assert not c.exists()


def test_the_headroom_table_never_reuses_a_compile_made_with_non_default_options(monkeypatch, tmp_path):
    from types import SimpleNamespace

    unit = {"task": "trec", "seed": 0, "test_n": 100, "rows": 400, "budget": 800, "labels": True,
            "compiler": compile_default.COMPILER_REV, "runtime": compile_default.RUNTIME_REV}
    (tmp_path / "results" / "compile_default").mkdir(parents=True)
    (tmp_path / "results" / "compile_default" / "pilot.jsonl").write_text(
        json.dumps({**unit, "options": {"stratify": True}, "diff": 0.5}) + "\n")
    (tmp_path / "results" / "compile_default" / "plain.jsonl").write_text(json.dumps({**unit, "diff": 0.1}) + "\n")
    monkeypatch.setattr(headroom, "HERE", tmp_path)
    got = headroom.compile_unit("trec", 0, SimpleNamespace(test=100, rows=400, budget=800))
    assert got["diff"] == 0.1 and "options" not in got
    # and a table of those options takes only the compile made with exactly them
    (tmp_path / "results" / "compile_default" / "measured.jsonl").write_text(
        json.dumps({**unit, "options": {"max_scored_rows": "measured"}, "diff": 0.3}) + "\n")
    got = headroom.compile_unit("trec", 0, SimpleNamespace(test=100, rows=400, budget=800, max_scored_rows="measured"))
    assert got["diff"] == 0.3 and got["options"] == {"max_scored_rows": "measured"}


def test_a_table_of_other_options_reuses_the_default_tables_grid_without_a_call(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import lmgraph as lg

    default, other = tmp_path / "headroom", tmp_path / "headroom-scoredmeasured"
    default.mkdir()
    other.mkdir()
    monkeypatch.setattr(headroom, "OUT", default)
    p = lg.Pipeline("t")
    p.output(label=p.add(lg.Predict("question -> label"), name="classify", question=p.input("question")).label)
    program = p.build()
    h = program.content_hash()
    monkeypatch.setattr(headroom, "grid_programs", lambda *a, **k: [("zero again", program)])
    (default / headroom.PROGRESS).write_text(json.dumps(_config("trec", 0, h, 0.42)) + "\n")
    assert sorted(headroom._measured("trec", 0, 100, other)) == [h]  # the default table's grid, seen from the other

    def no_call(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a grid measured before must not be run again")

    monkeypatch.setattr(headroom, "evaluate_sync", no_call)
    monkeypatch.setattr(compile_default, "zero_shot", no_call)
    args = SimpleNamespace(test=100, rows=400, budget=800, grid=6, out=str(other))
    got = headroom.grid_unit("trec", 0, args, zero_mean=0.31)
    assert got["zero_shot"] == 0.31 and [g["mean"] for g in got["grid"]] == [0.42]


def test_a_unit_raced_on_more_rows_than_the_default_is_a_unit_of_its_own():
    from types import SimpleNamespace

    plain = SimpleNamespace(stratify=False, verbalize=False, min_race_rows=compile_default.DEFAULT_MIN_RACE_ROWS)
    assert compile_default.unit_options(plain) == {} and compile_default.option_suffix({}) == ""
    wide = SimpleNamespace(stratify=True, verbalize=False, min_race_rows=40)
    assert compile_default.unit_options(wide) == {"stratify": True, "min_race_rows": 40}
    assert compile_default.option_suffix(compile_default.unit_options(wide)) == "-stratified-race40"
    more = SimpleNamespace(stratify=False, verbalize=False, min_race_rows=compile_default.DEFAULT_MIN_RACE_ROWS,
                           max_scored_rows=185)
    assert compile_default.unit_options(more) == {"max_scored_rows": 185}
    assert compile_default.option_suffix(compile_default.unit_options(more)) == "-scored185"
    more.max_scored_rows = "measured"
    assert compile_default.option_suffix(compile_default.unit_options(more)) == "-scoredmeasured"
    by_text = SimpleNamespace(stratify=False, verbalize=False, knn_match="text")
    assert compile_default.unit_options(by_text) == {"knn_match": "text"}
    assert compile_default.option_suffix(compile_default.unit_options(by_text)) == "-knntext"
    by_text.knn_match = "all"  # the compiler's default is no option
    assert compile_default.unit_options(by_text) == {}


def test_the_zero_shot_scores_are_kept_while_a_unit_runs_and_reused_only_for_the_same_program_and_rows(
        monkeypatch, tmp_path):
    import lmgraph as lg
    from lmgraph.testing import FunctionLM

    from helpers import sentiment_fn, sentiment_program, sentiment_rows
    monkeypatch.setattr(compile_default, "CHECKPOINTS", tmp_path)
    rows = sentiment_rows(8)
    calls = []

    def fn(req):  # noqa: ANN001, ANN202
        calls.append(req)
        return sentiment_fn(req)

    ctx = lg.RunContext(lm=FunctionLM(fn), cache=False)
    path = compile_default.zero_path("sst2", 0, len(rows))

    def metric(ex, pred, trace=None):  # noqa: ANN001, ANN202
        return float(pred["label"] == ex["label"])

    first = compile_default.zero_shot(sentiment_program(), rows, metric, ctx, path)
    assert path.exists() and len(calls) == 8 and 0 < first.mean < 1
    again = compile_default.zero_shot(sentiment_program(), rows, metric, ctx, path)  # the next machine
    assert len(calls) == 8  # no model call: the kept scores
    assert again.scores == first.scores and again.mean == first.mean and again.ci == first.ci
    compile_default.zero_shot(sentiment_program(), rows[:7] + rows[:1], metric, ctx, path)  # other rows
    assert len(calls) == 16
    path.write_text('{"key": "ab')  # cut off by a kill mid-write: scored again, not a crash
    compile_default.zero_shot(sentiment_program(), rows, metric, ctx, path)
    assert len(calls) == 24
    compile_default.drop_zero("sst2", 0, len(rows))
    assert not path.exists()


def test_a_share_of_headroom_within_noise_on_every_seed_is_flagged(tmp_path):
    def unit(task: str, seed: int, compiled: float, best: float, lo: float) -> dict:
        return {"task": task, "seed": seed, "test_n": 100, "zero_shot": 0.02, "compiled": compiled,
                "diff": compiled - 0.02, "diff_ci": [-0.04, 0.04], "chosen": "x", "oracle": best,
                "oracle_config": "cfg", "headroom": best - 0.02, "recovered": None,
                "grid": [{"config": "cfg", "mean": best, "ci": [0, 1], "diff": best - 0.02,
                          "diff_ci": [lo, 0.1], "calls": 100}]}

    units = [unit("gsm8k", 0, 0.01, 0.02, -0.02), unit("gsm8k", 1, 0.02, 0.03, -0.03),
             unit("trec", 0, 0.5, 0.6, 0.1)]
    units[2]["chosen"] = "cfg (confirmed)"  # a choice the grid scored: its grid score stands beside it
    headroom.write_md(tmp_path, units, "cmd")
    text = (tmp_path / "README.md").read_text()
    assert "| 0.500 | +0.480 [-0.040, +0.040] | cfg (confirmed) | 0.600 | 0.600 (cfg) |" in text
    assert "| x | - | 0.020 (cfg) |" in text  # a choice the grid has no configuration for
    row = next(line for line in text.splitlines() if line.startswith("| gsm8k | 0, 1 |"))
    assert "(headroom within noise on every seed)" in row and "0 of 2" in row
    trec = next(line for line in text.splitlines() if line.startswith("| trec | 0 |") and "1 of 1" in line)
    assert "within noise" not in trec


def test_demo_draws_find_the_drawn_configurations_and_average_them_into_the_oracle(tmp_path):
    import draws
    grids = [[("zero", "z"), ("4 labelled demos", "d0"), ("4 nearest demos", "n")],
             [("zero", "z"), ("4 labelled demos", "d1"), ("4 nearest demos", "n")]]
    assert draws.drawn_configs(grids) == {"4 labelled demos"}
    unit = {"task": "hotpotqa", "seed": 1, "zero_shot": 0.1, "compiled": 0.2, "chosen": "4 labelled demos",
            "oracle": 0.4, "oracle_config": "4 labelled demos", "headroom": 0.3, "recovered": 0.333,
            "grid": [{"config": "4 labelled demos", "mean": 0.4}, {"config": "4 nearest demos", "mean": 0.3}]}
    new = [{"task": "hotpotqa", "seed": 1, "draw": 2, "config": "4 labelled demos", "mean": 0.2},
           {"task": "hotpotqa", "seed": 1, "draw": 1, "config": "4 labelled demos", "mean": 0.15}]
    s = draws.summarise(unit, new)
    labelled = next(r for r in s["configs"] if r["config"] == "4 labelled demos")
    assert labelled["scores"] == [0.4, 0.15, 0.2] and labelled["drawn"]  # draw 0 (the grid's) first
    # the lucky draw 0 no longer makes the oracle: the undrawn 0.3 does, and the compile recovers half of it
    assert s["oracle_avg_config"] == "4 nearest demos" and s["headroom_avg"] == 0.2 and s["recovered_avg"] == 0.5
    draws.write_md(tmp_path, [s], "python benchmarks/draws.py")
    md = (tmp_path / "draws.md").read_text()
    assert "| hotpotqa | 1 | +0.100 | +0.300 | 33% | +0.200 | 50% |" in md
    assert "| 4 labelled demos | 0.400, 0.150, 0.200 | 0.250 | 0.150-0.400 |" in md


def test_a_tables_command_names_its_own_tasks_folder_and_options():
    from types import SimpleNamespace

    def args(**kw):  # noqa: ANN003, ANN202
        base = {"test": 100, "rows": 400, "budget": 800, "grid": 6, "max_scored_rows": None,
                "out": str(headroom.OUT), "grids": None}
        return SimpleNamespace(**{**base, **kw})

    assert headroom.table_command(args(), ["sst2", "trec"], [0]) == \
        "python benchmarks/headroom.py --tasks trec,sst2,banking77,hotpotqa,gsm8k --seeds 0,1,2"
    unseen = headroom.OUT.parent / "headroom-unseen"
    got = headroom.table_command(args(rows=200, budget=400, out=str(unseen)), ["hover", "wic"], [0, 1])
    assert got == ("python benchmarks/headroom.py --tasks hover,wic --seeds 0,1,2 --rows 200 --budget 400 "
                   "--out benchmarks/results/headroom-unseen")
    measured = headroom.OUT.parent / "headroom-scoredmeasured"
    assert headroom.table_command(args(max_scored_rows="measured", out=str(measured)), ["trec"], [0]).endswith(
        "--seeds 0,1,2 --max-scored-rows measured")
    got = headroom.table_command(args(max_scored_rows="measured", out=str(unseen) + "-scoredmeasured",
                                      grids=str(unseen)), ["wic"], [2])
    assert got.endswith("--max-scored-rows measured --out benchmarks/results/headroom-unseen-scoredmeasured "
                        "--grids benchmarks/results/headroom-unseen")


def test_the_share_recovered_carries_an_interval_that_widens_with_the_noise(tmp_path):
    def unit(seed: int, gain_ci: list[float], head_ci: list[float]) -> dict:
        return {"task": "t", "seed": seed, "test_n": 100, "zero_shot": 0.1, "compiled": 0.18, "diff": 0.08,
                "diff_ci": gain_ci, "chosen": "x", "oracle": 0.2, "oracle_config": "cfg", "headroom": 0.1,
                "recovered": 0.8, "grid": [{"config": "cfg", "mean": 0.2, "ci": [0, 1], "diff": 0.1,
                                            "diff_ci": head_ci, "calls": 100}]}

    tight = [unit(s, [0.078, 0.082], [0.098, 0.102]) for s in range(3)]
    lo, hi, how = headroom.recovered_interval(tight)
    assert how == "approx."  # no per-row scores: from the CIs
    assert 0.75 < lo < 0.8 < hi < 0.85
    assert headroom.recovered_interval(tight) == (lo, hi, how)  # seeded: the same table every render
    wide = [unit(s, [0.0, 0.16], [-0.05, 0.25]) for s in range(3)]
    wlo, whi, _ = headroom.recovered_interval(wide)
    assert wlo < lo and whi > hi
    noisy = [unit(0, [0.0, 0.16], [-0.3, 0.5])]  # a headroom whose draws reach 0: no upper bound
    assert headroom.recovered_interval(noisy)[1] == float("inf")
    headroom.write_md(tmp_path, noisy, "cmd")
    lines = (tmp_path / "README.md").read_text().splitlines()
    row = next(line for line in lines if line.startswith("| t | 0 | +0.080 |"))
    assert "| 80% (headroom within noise on every seed) | [" in row and "unbounded] (approx.) |" in row


def test_units_with_per_row_scores_get_a_paired_bootstrap_interval():
    import random

    rng = random.Random(3)
    units = []
    for seed in range(3):
        zero = [float(rng.random() < 0.2) for _ in range(100)]
        # the oracle fixes 30 rows zero-shot got wrong, the compile 24 of those same rows: its gain is
        # mostly the oracle's, so the paired interval is far narrower than the CIs alone imply
        wrong = [i for i, z in enumerate(zero) if not z][:30]
        oracle = [1.0 if i in wrong else z for i, z in enumerate(zero)]
        comp = [1.0 if i in wrong[:24] else z for i, z in enumerate(zero)]
        mean = sum(oracle) / 100
        units.append({"task": "t", "seed": seed, "test_n": 100, "zero_shot": sum(zero) / 100,
                      "compiled": sum(comp) / 100, "diff": 0.24, "diff_ci": [0.16, 0.32], "chosen": "x",
                      "oracle": mean, "oracle_config": "cfg", "headroom": 0.3, "recovered": 0.8,
                      "zero_scores": zero, "compiled_scores": comp,
                      "grid": [{"config": "cfg", "mean": mean, "ci": [0, 1], "diff": 0.3, "diff_ci": [0.21, 0.39],
                                "calls": 100, "scores": oracle}]})
    lo, hi, how = headroom.recovered_interval(units)
    assert how == "paired bootstrap" and 0.7 < lo < 0.8 < hi < 0.9
    approx = headroom.recovered_interval([{k: v for k, v in u.items() if k != "zero_scores"} for u in units])
    assert approx[2] == "approx." and approx[1] - approx[0] > 2 * (hi - lo)
