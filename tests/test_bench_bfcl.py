"""The BFCL function-calling benchmark task (benchmarks/tasks/bfcl.py) on scripted fake models.

The metric tests use hand-made rows (no data needed); the loader, program and compile tests read
the BFCL files from shared/data (skipped without them). No network; the one test with the real
embedded model is marked ``integration``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

import lmgraph as lg
from lmgraph.evaluation import evaluate_sync
from lmgraph.evaluation.datasets import _shared_data_dir
from lmgraph.optimizers import Compile
from lmgraph.testing import FunctionLM, request_text

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import tasks  # noqa: E402
from tasks import Sizes, bfcl  # noqa: E402


def _have_data() -> bool:
    root = _shared_data_dir()
    return root is not None and (root / "bfcl" / "BFCL_v4_multiple.json").is_file()


needs_data = pytest.mark.skipif(not _have_data(), reason="shared/data/bfcl is not here")

SCHEMA = [{"name": "geo.area", "description": "Area of a place.", "parameters": {
    "type": "dict", "required": ["city", "size"], "properties": {
        "city": {"type": "string", "description": "The city."},
        "size": {"type": "integer", "description": "Its size."},
        "unit": {"type": "string", "description": "The unit."},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "dict"}}}},
    {"name": "geo.height", "description": "Height of a place.", "parameters": {
        "type": "dict", "required": ["city"], "properties": {"city": {"type": "string"}}}}]
GOLD = {"geo.area": {"city": ["New York", "NYC"], "size": [10], "unit": ["km", "", "kilometers"],
                     "tags": [["a", "b"], ""], "where": [{"state": ["NY"], "zip": ["", "10001"]}, ""]}}


def row(**over):
    name, args = bfcl.gold_arguments(GOLD)
    base = {"id": "t_0", "question": "How big is New York?", "functions": bfcl.render_functions(SCHEMA),
            "schemas": SCHEMA, "ground_truth": GOLD, "function": name, "call": bfcl.format_call(name, args)}
    return {**base, **over}


def score(call, metric="exact"):
    return tasks.load("bfcl").score(row(), {"call": call}, metric)


# --------------------------------------------------------------------------- metric

def test_the_gold_call_leaves_out_optional_arguments_and_scores_one():
    r = row()
    assert r["call"] == 'geo.area(city="New York", size=10)'
    assert score(r["call"]) == 1.0 and score(r["call"], "name") == 1.0


@pytest.mark.parametrize("call", [
    'geo.area(city="New York", size=10, unit="km")',                 # an allowed optional value
    'geo.area(city="NYC", size=10, unit="kilometers")',               # any allowed value, per argument
    'geo.area(city="new york", size=10.0)',                          # case; 10.0 == 10
    'geo.area(city=" New  York ", size=10)',                          # spaces ignored as BFCL does
    'geo.area(city="New-York", size=1e1)',
    'geo.area(size=10, city="New York", tags=["a", "b"])',            # order of arguments free
    'geo.area(city="New York", size=10, where={"state": "ny"})',      # a dict: "" key may be left out
    'geo.area(city="New York", size=10, where={"state": "NY", "zip": "10001"})',
    '{"name": "geo.area", "arguments": {"city": "New York", "size": 10}}',   # JSON form
    'Call: geo.area(city="New York", size=10) and that is all',      # text around the call
    '```python\ngeo.area(city="New York", size=10)\n```',
])
def test_calls_that_match_the_gold(call):
    assert score(call) == 1.0, tasks.load("bfcl").score_feedback(row(), {"call": call})


@pytest.mark.parametrize("call, name_ok, why", [
    ('geo.area(city="New York", size=10, unit="mm")', 1, "argument unit"),         # not an allowed value
    ('geo.area(city="New York")', 1, "missing required argument size"),
    ('geo.area(city="New York", size=11)', 1, "argument size=11"),
    ('geo.area(city="New York", size="10")', 1, "argument size"),                 # a string is not a number
    ('geo.area(city="Boston", size=10)', 1, "argument city"),
    ('geo.area(city="New York", size=10, color="red")', 1, "unknown argument color"),
    ('geo.area(city="New York", size=10, tags=["b", "a"])', 1, "argument tags"),   # list order matters
    ('geo.area(city="New York", size=10, where={"state": "NY", "x": 1})', 1, "argument where"),
    ('geo.area(city="New York", size=True)', 1, "argument size"),                  # a bool is not 1
    ('geo.height(city="New York")', 0, "wrong function"),
    ('area(city="New York", size=10)', 0, "not one of the listed functions"),
    ('geo.area("New York", 10)', 0, "positional"),
    ("I cannot help with that.", 0, "could not be read"),
    ("", 0, "could not be read"),
    (None, 0, "could not be read"),
])
def test_calls_that_do_not_match_say_why(call, name_ok, why):
    task = tasks.load("bfcl")
    assert task.score(row(), {"call": call}) == 0.0
    assert task.score(row(), {"call": call}, "name") == name_ok
    s, text = task.score_feedback(row(), {"call": call})
    assert s == 0.0 and why in text and 'geo.area(city="New York", size=10)' in text


def test_parse_call_reads_python_json_and_bfcl_forms():
    assert bfcl.parse_call('f.g(a=1, b=-2.5, c="x", d=[1, 2], e={"k": true}, n=None)') == (
        "f.g", {"a": 1, "b": -2.5, "c": "x", "d": [1, 2], "e": {"k": True}, "n": None})
    assert bfcl.parse_call('f(s="a (b) c")') == ("f", {"s": "a (b) c"})   # parentheses inside a string
    assert bfcl.parse_call('f(s="say \\"hi\\")")') == ("f", {"s": 'say "hi")'})
    assert bfcl.parse_call({"name": "f", "arguments": '{"a": 1}'}) == ("f", {"a": 1})
    assert bfcl.parse_call('{"f": {"a": 1}}') == ("f", {"a": 1})
    with pytest.raises(bfcl.CallParseError):
        bfcl.parse_call("f(a=b)")  # a bare name is not a value
    with pytest.raises(bfcl.CallParseError):
        bfcl.parse_call("f(a=1")


def test_a_task_score_of_no_prediction_is_zero_with_feedback():
    task = tasks.load("bfcl")
    assert task.score(row(), None) == 0.0
    assert task.score_feedback(row(), None)[0] == 0.0


# --------------------------------------------------------------------------- data

@needs_data
def test_loader_rows_line_up_with_the_gold_and_their_labels_score_one():
    task = tasks.load("bfcl")
    simple, multiple = bfcl.load_bfcl("simple_python"), bfcl.load_bfcl("multiple")
    assert (len(simple), len(multiple)) == (400, 200)
    root = _shared_data_dir()
    assert root is not None
    for cat, rows in (("simple_python", simple), ("multiple", multiple)):
        gold = [json.loads(line) for line in (root / "bfcl" / "possible_answer" / f"BFCL_v4_{cat}.json").open()]
        assert [r["id"] for r in rows] == [g["id"] for g in gold]
        assert all(r["ground_truth"] == g["ground_truth"][0] for r, g in zip(rows, gold))
        assert all(r["category"] == cat and r["question"] and r["function"] in r["functions"] for r in rows)
    assert {len(r["schemas"]) for r in simple} == {1} and {len(r["schemas"]) for r in multiple} == {2, 3, 4}
    for r in simple + multiple:
        assert r["function"] in [f["name"] for f in r["schemas"]]
        assert task.score(r, {"call": r["call"]}) == 1.0, (r["id"], r["call"])
    assert simple[0]["call"] == "calculate_triangle_area(base=10, height=5)"
    with pytest.raises(ValueError, match="unknown BFCL category"):
        bfcl.load_bfcl("parallel")


@needs_data
def test_splits_are_seeded_disjoint_and_mix_both_categories():
    task = tasks.load("bfcl")
    a = task.splits(0, Sizes(300, 100, 150))
    b = task.splits(0, Sizes(300, 100, 150))
    c = task.splits(1, Sizes(300, 100, 150))
    ids = [[r["id"] for r in part] for part in a]
    assert ids == [[r["id"] for r in part] for part in b]
    assert ids != [[r["id"] for r in part] for part in c]
    assert len(set(ids[0]) | set(ids[1]) | set(ids[2])) == 550
    for part in a:
        share = sum(r["category"] == "multiple" for r in part) / len(part)
        assert 0.2 < share < 0.47


# --------------------------------------------------------------------------- the graph on fake models

def _asked(text: str) -> str:
    """The question of the row the request is about (the last one in the prompt: demos come first)."""
    return re.findall(r"Question: (.*?)(?:\n|$)", text)[-1].strip()


def _row_of(rows, text: str) -> dict:
    """The row a request is about: its question, and its functions in the prompt's last part
    (a few questions come twice, with other candidate functions)."""
    last = text[text.rindex("Question:"):]
    found = [r for r in rows if r["question"] == _asked(text) and r["functions"] in last]
    return max(found, key=lambda r: len(r["functions"]))  # a twin's one function is in the other's list


def _chosen(text: str) -> str:
    found = re.findall(r"Function: (.*?)(?:\n|$)", text)
    return found[-1].strip() if found else ""


def oracle_lm(rows, *, write_needs_demos=frozenset(), choose_needs_demos=frozenset()):
    """A fake that answers each node with the gold (JSON keyed by the field, which every format
    reads) -- the write node only when told the right function; for the row ids listed it answers
    right only when the prompt carries a demo."""
    def answer(request):
        text = request_text(request)
        r = _row_of(rows, text)
        demos = text.count("Question:") > 1
        if request.node == "choose":
            right = demos or r["id"] not in choose_needs_demos
            return json.dumps({"function": r["function"] if right else "no_such_function"})
        if _chosen(text) != r["function"] or (r["id"] in write_needs_demos and not demos):
            return json.dumps({"call": r["call"].split("(")[0] + "(no_such_argument=1)"})
        return json.dumps({"call": r["call"]})
    return FunctionLM(answer)


@needs_data
def test_the_program_is_a_graph_of_two_tunable_model_nodes():
    prog = tasks.load("bfcl").lmgraph_program()
    assert [n.name for n in prog.nodes] == ["choose", "write"]
    assert all(n.module.kind == "predict" for n in prog.nodes)
    write = prog.node_map["write"]
    assert str(write.binding("function")) in ("choose.function", "Ref(node='choose', field='function')") or \
        write.binding("function").node == "choose"
    assert prog.deps["write"] and "choose" in prog.deps["write"]
    assert [name for name, _ in prog.outputs] == ["call", "function"]
    params = dict(prog.named_parameters())
    for path in ("choose.demos", "write.demos", "choose.instructions", "write.instructions",
                 "choose.format", "write.format"):
        assert path in params
    assert prog.estimated_calls() >= 2


@needs_data
def test_a_fake_model_run_produces_a_scored_call_through_both_nodes():
    task = tasks.load("bfcl")
    rows = task.splits(0, Sizes(0, 0, 6))[2]
    lm = oracle_lm(rows, write_needs_demos={rows[0]["id"]})
    prog = task.lmgraph_program()
    out = prog.run_sync(lg.RunContext(lm=lm, cache=False), question=rows[1]["question"],
                        functions=rows[1]["functions"])
    assert out.function == rows[1]["function"] and out.call == rows[1]["call"]
    assert len(lm.calls) == 2
    # the write call sees the chosen function
    assert f"Function: {rows[1]['function']}" in request_text(lm.calls[1])
    res = evaluate_sync(prog, rows, lambda ex, pred, trace=None: task.score(dict(ex), dict(pred)),
                        ctx=lg.RunContext(lm=lm, cache=False))
    assert res.scores == [0.0] + [1.0] * 5
    # a wrong choice reaches the call: the fake writes the gold call only when told the gold name
    wrong = oracle_lm(rows, choose_needs_demos={rows[1]["id"]})
    out = prog.run_sync(lg.RunContext(lm=wrong, cache=False), question=rows[1]["question"],
                        functions=rows[1]["functions"])
    assert out.function == "no_such_function" and task.score(rows[1], {"call": out.call}) == 0.0
    assert "Function: no_such_function" in request_text(wrong.calls[1])


@needs_data
def test_compile_under_a_small_budget_gives_the_write_node_demos_when_they_help():
    task = tasks.load("bfcl")
    train, val, test = task.splits(3, Sizes(40, 20, 16))
    rows = train + val + test
    # half the rows need a demo in the write call; the other half pass zero-shot (bootstrapped demos)
    hard = {r["id"] for i, r in enumerate(rows) if i % 2}
    lm = oracle_lm(rows, write_needs_demos=hard)
    ctx = lg.RunContext(lm=lm, cache=False)
    metric = lambda ex, pred, trace=None: task.score(dict(ex), dict(pred))  # noqa: E731
    labelled = [{**r, task.output: r[task.label_field]} for r in train + val]
    prog = task.lmgraph_program()
    budget = 420
    compiled, report = Compile(max_demos=2, min_race_rows=8).optimize(
        prog, labelled, metric, budget=lg.Budget(max_calls=budget), seed=0, ctx=ctx)
    assert len(lm.calls) <= budget and report.spent["calls"] <= budget
    base = evaluate_sync(prog, test, metric, ctx=ctx).mean
    after = evaluate_sync(compiled, test, metric, ctx=ctx).mean
    assert base == pytest.approx(sum(r["id"] not in hard for r in test) / len(test))
    assert after == 1.0 > base
    write = compiled.module("write")
    assert report.best.id != report.baseline.id
    assert write.demos or getattr(write, "knn", 0), report.table()  # bootstrapped: from the passing runs


@needs_data
def test_compile_gives_the_choose_node_labelled_demos_when_they_help():
    task = tasks.load("bfcl")
    train, val, test = task.splits(4, Sizes(40, 20, 16))
    rows = train + val + test
    lm = oracle_lm(rows, choose_needs_demos={r["id"] for r in rows})  # nothing passes zero-shot
    ctx = lg.RunContext(lm=lm, cache=False)
    metric = lambda ex, pred, trace=None: task.score(dict(ex), dict(pred))  # noqa: E731
    labelled = [{**r, task.output: r[task.label_field]} for r in train + val]
    compiled, report = Compile(max_demos=2, min_race_rows=8).optimize(
        task.lmgraph_program(), labelled, metric, budget=lg.Budget(max_calls=400), seed=0, ctx=ctx)
    assert report.spent["calls"] <= 400
    assert evaluate_sync(compiled, test, metric, ctx=ctx).mean == 1.0
    choose = compiled.module("choose")
    assert choose.demos or getattr(choose, "knn", 0)
    assert all("function" in d and "question" in d for d in (choose.demos or choose.demo_pool))


# --------------------------------------------------------------------------- DSPy

def test_the_dspy_program_has_the_same_two_steps():
    dspy = pytest.importorskip("dspy")
    prog = tasks.load("bfcl").dspy_program()
    preds = dict(prog.named_predictors())
    assert set(preds) == {"choose", "write"}
    assert list(preds["choose"].signature.output_fields) == ["function"]
    assert list(preds["write"].signature.input_fields) == ["question", "functions", "function"]
    assert list(preds["write"].signature.output_fields) == ["call"]
    lm = dspy.utils.DummyLM([{"function": "geo.area"}, {"call": 'geo.area(city="New York", size=10)'}])
    with dspy.context(lm=lm):
        pred = prog(question="How big is New York?", functions=bfcl.render_functions(SCHEMA))
    assert pred.function == "geo.area"
    assert tasks.load("bfcl").score(row(), {"call": pred.call}) == 1.0


# --------------------------------------------------------------------------- the real embedded model

@pytest.mark.integration
@needs_data
def test_three_rows_on_the_embedded_model_parse_and_score():
    task = tasks.load("bfcl")
    rows = task.splits(0, Sizes(0, 0, 3))[2]
    prog = task.lmgraph_program()
    t0 = time.perf_counter()
    res = evaluate_sync(prog, rows, lambda ex, pred, trace=None: task.score(dict(ex), dict(pred)),
                        ctx=lg.RunContext(max_concurrency=1, cache=False))
    assert time.perf_counter() - t0 < 300
    assert [r.error for r in res.results] == [None] * 3  # both nodes answered on every row
    for r, result in zip(rows, res.results):
        out = result.outputs
        assert isinstance(out["call"], str) and isinstance(out["function"], str)
        s, text = task.score_feedback(r, {"call": out["call"]})
        assert s in (0.0, 1.0) and text and s == task.score(r, {"call": out["call"]})
        assert result.trace.node("write").inputs["function"] == out["function"]  # the chosen name reached write
