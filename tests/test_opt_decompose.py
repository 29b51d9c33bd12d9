"""Decompose: plan -> per-step answers -> combine as a graph rewrite, accepted on evidence; and its reverse."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError
from lmgraph.optimizers import (
    Decompose,
    collapse_node,
    decompose_node,
    diff,
    find_decompositions,
    lint_rewrite,
    load_artifact,
    save_artifact,
)
from lmgraph.optimizers.decompose import decomposable_nodes, with_decomposition_demos
from lmgraph.testing import FunctionLM

# The task: add up the numbers. A single call gets it wrong ("0"); the plan lists one sub-question
# per number, each step answers with its number, and the combine node adds up the step answers.


def make_fn(*, single_right: bool = False, combine_right: bool = True, combine_needs_demos_for_odd: bool = False,
            single_wrong_on: Callable[[int], bool] = lambda total: False) -> Callable[[lg.LMRequest], str]:
    def fn(req: lg.LMRequest) -> str:
        assert req.messages is not None  # chat format (the fake's preferred one)
        last = req.messages[-1].content
        has_demos = len(req.messages) > 2
        nums = [int(x) for x in re.search(r"Numbers: (.*)", last).group(1).split()]
        node = req.node or ""
        if node.endswith("__plan"):
            return "Steps:\n" + "\n".join(f"{i + 1}. what is the value of {n}?" for i, n in enumerate(nums))
        if node.endswith("__step"):
            step = re.search(r"Step: (.*)", last).group(1)
            return "Step answer: " + re.search(r"value of (\d+)", step).group(1)
        if "Step answers:" in last:  # the combine node
            answers = [int(v) for v in re.findall(r"^\[\d+\] (\d+)", last.split("Step answers:", 1)[1], re.M)]
            total = sum(answers)
            if not combine_right or (combine_needs_demos_for_odd and total % 2 and not has_demos):
                return "Total: 0"
            return f"Total: {total}"
        total = sum(nums)
        return f"Total: {total if single_right and not single_wrong_on(total) else 0}"
    return fn


def adder(module: lg.Module | None = None) -> lg.Program:
    p = lg.Pipeline("adder")
    n = p.add(module or lg.Predict("numbers -> total: int"), name="add", numbers=p.input("numbers"))
    p.output(total=n.total)
    return p.build()


ROWS = [{"numbers": f"{i} {i + 1} {i + 3}", "total": 3 * i + 4} for i in range(24)]
TRAIN, VAL = ROWS[:12], ROWS[12:]


def metric(example, pred, trace=None) -> float:  # noqa: ANN001
    return float(pred["total"] == example["total"])


def ctx(fn: Callable[[lg.LMRequest], str]) -> lg.RunContext:
    return lg.RunContext(lm=FunctionLM(fn), cache=False)


def test_decomposition_that_pays_is_found_and_accepted() -> None:
    prog = adder()
    before = prog.to_json()
    c = ctx(make_fn())
    new, rep = Decompose().optimize(prog, TRAIN, metric, valset=VAL, ctx=c)
    assert prog.to_json() == before  # a pure pass
    assert rep.baseline.mean == 0.0 and rep.best.mean == 1.0
    assert rep.best.label == "decompose add" and rep.best.status == "accepted"
    assert list(new.order) == ["add__plan", "add__steps", "add"]
    assert [new.module(n).kind for n in new.order] == ["plan", "map", "predict"]
    assert find_decompositions(new) == ["add"] and lint_rewrite(prog, new) == []
    assert "add: decompose=" in rep.notes[-1]
    out = new.run_sync(c, numbers="5 6 7")
    assert out.total == 18
    # the plan's sub-questions were each answered once, inside the Map
    nt = out.trace.node("add__steps")
    assert nt.meta["items"] == 3 and [ch.outputs for ch in nt.children] == [
        {"step_answer": "5"}, {"step_answer": "6"}, {"step_answer": "7"}]


@pytest.mark.parametrize("single_right, combine_right", [(True, True), (True, False), (False, False)],
                         ids=["tie", "worse", "both-wrong"])
def test_decomposition_that_does_not_pay_is_rejected(single_right: bool, combine_right: bool) -> None:
    prog = adder()
    new, rep = Decompose().optimize(prog, TRAIN, metric, valset=VAL,
                                    ctx=ctx(make_fn(single_right=single_right, combine_right=combine_right)))
    assert new == prog and new.to_json() == prog.to_json()
    assert [c.status for c in rep.candidates] == ["baseline", "rejected"]
    assert rep.candidates[1].label == "decompose add"
    assert "unchanged" in rep.notes[-1]


def test_bootstrapped_demos_for_plan_solver_and_combine() -> None:
    prog = adder()
    new, rep = Decompose(max_demos=2).optimize(
        prog, TRAIN, metric, valset=VAL, ctx=ctx(make_fn(combine_needs_demos_for_odd=True)))
    labels = [(c.label, c.status) for c in rep.candidates]
    assert labels == [("baseline (the program as given)", "baseline"), ("decompose add", "accepted"),
                      ("decompose add + bootstrapped demos", "accepted")]
    assert rep.candidates[1].mean == 0.5 and rep.best.mean == 1.0
    plan_demos = new.module("add__plan").demos
    combine_demos = new.module("add").demos
    step_demos = new.module("add__steps").program.module("add__step").demos
    assert len(plan_demos) == len(combine_demos) == len(step_demos) == 2
    assert set(plan_demos[0]) == {"numbers", "steps"}
    assert set(combine_demos[0]) == {"numbers", "steps", "step_answers", "total"}
    assert set(step_demos[0]) == {"step", "numbers", "step_answer"}
    for d in combine_demos:  # demos come from passing runs only
        assert d["total"] == sum(int(x) for x in d["numbers"].split())
    for d in step_demos:
        assert d["step"] == f"what is the value of {d['step_answer']}?"
    assert rep.best.changes["add"]["demos[add__step]"] == 2


def test_reverse_collapse_is_accepted_on_a_tie() -> None:
    single = adder()
    dec = decompose_node(single, "add")
    c = ctx(make_fn(single_right=True))
    new, rep = Decompose().optimize(dec, TRAIN, metric, valset=VAL, ctx=c)
    assert new == single  # the smaller graph wins a tie
    assert [(x.label, x.status) for x in rep.candidates] == [
        ("baseline (the program as given)", "baseline"), ("collapse add", "accepted")]
    assert "ties favour the smaller graph" in rep.best.reason
    assert rep.best.calls < rep.baseline.calls  # one call per example instead of five


def test_collapse_that_loses_is_rejected_and_not_redecomposed() -> None:
    dec = decompose_node(adder(), "add")
    new, rep = Decompose().optimize(dec, TRAIN, metric, valset=VAL, ctx=ctx(make_fn()))
    assert new == dec
    assert [(x.label, x.status) for x in rep.candidates] == [
        ("baseline (the program as given)", "baseline"), ("collapse add", "rejected")]


def test_collapse_tolerance() -> None:
    dec = decompose_node(adder(), "add")
    fn = make_fn(single_right=True, single_wrong_on=lambda total: total == 3 * 12 + 4)  # wrong on 1 of 12
    new0, _ = Decompose().optimize(dec, TRAIN, metric, valset=VAL, ctx=ctx(fn))
    assert new0 == dec
    new1, rep1 = Decompose(collapse_tolerance=0.1).optimize(dec, TRAIN, metric, valset=VAL, ctx=ctx(fn))
    assert new1 == adder() and rep1.best.mean == pytest.approx(11 / 12)
    new2, rep2 = Decompose(collapse=False).optimize(dec, TRAIN, metric, valset=VAL, ctx=ctx(fn))
    assert new2 == dec and len(rep2.candidates) == 1


def test_collapse_is_the_inverse_of_decompose() -> None:
    for module in (lg.Predict("numbers -> total: int", instructions="Add them up.", format="completion",
                              temperature=0.3, max_tokens=20),
                   lg.ChainOfThought("numbers -> total: int", lm="big")):
        prog = adder(module)
        dec = decompose_node(prog, "add", max_steps=4)
        assert dec.module("add").kind == module.kind and dec.module("add__plan").max_steps == 4
        assert {dec.module(n).format for n in ("add__plan", "add")} == {module.format}
        assert dec.module("add__steps").program.module("add__step").lm == module.lm
        assert collapse_node(dec, "add") == prog
    # demos: the combine node starts without any (the old ones lack the new fields); collapsing keeps
    # the combine's demos minus the sub-question fields
    prog = adder(lg.Predict("numbers -> total: int", demos=[{"numbers": "1 2", "total": 3}]))
    dec = decompose_node(prog, "add")
    assert dec.module("add").demos == ()
    demo = {"numbers": "1 2", "steps": ["a", "b"], "step_answers": ["1", "2"], "total": 3}
    with_d = with_decomposition_demos(dec, "add", {"add": [demo]})
    assert collapse_node(with_d, "add").module("add").demos == ({"numbers": "1 2", "total": 3},)


def test_rewritten_program_round_trips_through_json(tmp_path) -> None:  # noqa: ANN001
    c = ctx(make_fn())
    new, rep = Decompose(max_demos=1).optimize(adder(), TRAIN, metric, valset=VAL, ctx=c)
    assert find_decompositions(new) == ["add"]
    again = lg.Program.from_dict(new.to_dict())
    assert again == new and again.to_json() == new.to_json() and again.content_hash() == new.content_hash()
    path = save_artifact(tmp_path / "a.json", new, rep)
    loaded, report = load_artifact(path)
    assert loaded == new and find_decompositions(loaded) == ["add"]
    assert report["best_score"] == 1.0
    assert loaded.run_sync(c, numbers="1 2 3").total == 6
    # and the reverse pass works on the loaded program
    assert collapse_node(loaded, "add") == adder()


def test_field_names_that_clash_get_fresh_names() -> None:
    p = lg.Pipeline("clash")
    n = p.add(lg.Predict("steps, step -> step_answers"), name="x", steps=p.input("steps"), step=p.input("step"))
    p.output(out=n.step_answers)
    prog = p.build()
    dec = decompose_node(prog, "x")
    sig = dec.module("x").signature
    assert sig.input_names == ("steps", "step", "steps_2", "step_answers_2")
    assert dec.module("x__steps").over == ("step_2",)
    assert lint_rewrite(prog, dec) == [] and collapse_node(dec, "x") == prog


def two_nodes() -> lg.Program:
    p = lg.Pipeline("two")
    a = p.add(lg.Predict("numbers -> cleaned"), name="clean", numbers=p.input("numbers"))
    b = p.add(lg.ChainOfThought("cleaned -> total: int"), name="add", cleaned=a.cleaned)
    p.output(total=b.total)
    return p.build()


def test_targets_default_and_explicit() -> None:
    prog = two_nodes()
    assert decomposable_nodes(prog) == ["add"]  # only nodes whose outputs are program outputs
    assert Decompose().targets(prog) == ([], ["add"])
    # an inner node can be named: the combine node keeps its name, so downstream bindings stay valid
    dec = decompose_node(prog, "clean")
    assert dec.node_map["add"].binding("cleaned") == lg.pipeline.ir.Ref("clean", "cleaned")
    assert lint_rewrite(prog, dec) == []
    assert Decompose(["clean", "add"]).targets(prog) == ([], ["clean", "add"])
    assert Decompose(["add"]).targets(decompose_node(prog, "add")) == (["add"], [])
    assert Decompose().targets(decompose_node(prog, "add")) == (["add"], [])
    # the changed interface is caught by the lint
    p = lg.Pipeline("two")
    a = p.add(lg.Predict("numbers -> cleaned"), name="clean", numbers=p.input("numbers"))
    p.output(total=a.cleaned)
    assert lint_rewrite(prog, p.build()) == ["outputs changed: [('total', 'int')] -> [('total', 'str')]"]


@pytest.mark.parametrize("nodes, match", [
    (["nope"], "no node 'nope'"),
    (["add__plan"], "it is a plan node"),
])
def test_bad_nodes_fail_before_any_model_call(nodes: list[str], match: str) -> None:
    lm = FunctionLM(make_fn())
    prog = decompose_node(adder(), "add") if nodes == ["add__plan"] else adder()
    with pytest.raises(DefinitionError, match=match):
        Decompose(nodes).optimize(prog, TRAIN, metric, valset=VAL, ctx=lg.RunContext(lm=lm, cache=False))
    with pytest.raises(DefinitionError, match=match):
        Decompose(nodes).dry_run(prog, TRAIN, VAL)
    assert lm.calls == []


def test_taken_node_names_and_bad_settings() -> None:
    p = lg.Pipeline("taken")
    x = p.input("numbers")
    a = p.add(lg.Predict("numbers -> total: int"), name="add", numbers=x)
    p.add(lg.Predict("numbers -> other"), name="add__plan", numbers=x)
    p.output(total=a.total)
    prog = p.build()
    assert decomposable_nodes(prog) == []
    with pytest.raises(DefinitionError, match="'add__plan' the rewrite needs is taken"):
        decompose_node(prog, "add")
    with pytest.raises(DefinitionError, match="not a recognisable decomposition"):
        collapse_node(prog, "add")
    with pytest.raises(DefinitionError, match="max_steps"):
        Decompose(max_steps=0)
    with pytest.raises(DefinitionError, match="collapse_tolerance"):
        Decompose(collapse_tolerance=2)


def test_dry_run_bounds_the_spend() -> None:
    for opt, prog, fn in [(Decompose(max_demos=2), adder(), make_fn(combine_needs_demos_for_odd=True)),
                          (Decompose(), decompose_node(adder(), "add"), make_fn(single_right=True))]:
        lm = FunctionLM(fn)
        est = opt.dry_run(prog, TRAIN, VAL)
        _, rep = opt.optimize(prog, TRAIN, metric, valset=VAL, ctx=lg.RunContext(lm=lm, cache=False))
        assert est.calls >= rep.spent["calls"] == len(lm.calls) > 0


@pytest.mark.parametrize("budget", [30, 50])
def test_budget_stop_before_an_unaffordable_decomposition(budget: int) -> None:
    # 12 validation rows: the baseline takes 12 calls, the decomposition up to 12 * 5 (its Map counted at
    # the plan's max_steps items); counting the Map as one call would start it with 50 and lose the spend
    lm = FunctionLM(make_fn())
    prog = adder()
    new, rep = Decompose().optimize(prog, TRAIN, metric, valset=VAL, ctx=lg.RunContext(lm=lm, cache=False),
                                    budget=lg.Budget(max_calls=budget))
    assert new == prog and rep.stopped and "budget left" in rep.stopped
    assert rep.spent["calls"] == len(lm.calls) == 12


def test_budget_stop_keeps_the_best_so_far() -> None:
    lm = FunctionLM(make_fn(combine_needs_demos_for_odd=True))
    new, rep = Decompose(max_demos=2).optimize(adder(), TRAIN, metric, valset=VAL,
                                               ctx=lg.RunContext(lm=lm, cache=False), budget=lg.Budget(max_calls=80))
    assert find_decompositions(new) == ["add"] and rep.best.label == "decompose add"
    assert "bootstrapping demos" in rep.stopped
    assert rep.spent["calls"] == len(lm.calls) == 12 + 60


def test_diff_of_a_decomposition() -> None:
    prog = adder()
    d = diff(prog, decompose_node(prog, "add"))
    assert d["added"] == ["add__plan", "add__steps"] and set(d["changed"]) == {"add"}
