"""Few-shot optimizers: labelled / bootstrapped demos, random search, per-node demos, purity, budgets."""

from __future__ import annotations

import re

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import BootstrapFewShot, BootstrapRandomSearch, LabeledFewShot, diff
from lmgraph.testing import FunctionLM, request_text

from helpers import sentiment_fn, sentiment_program, sentiment_rows

# ---------------------------------------------------------------- one node: right only with demos


ROWS = sentiment_rows(40)
TRAIN, VAL = ROWS[:20], ROWS[20:]


def ctx(fn=sentiment_fn, **kw) -> lg.RunContext:  # noqa: ANN001
    return lg.RunContext(lm=FunctionLM(fn), cache=False, **kw)


OPTIMIZERS = [
    lambda: LabeledFewShot(2),
    lambda: BootstrapFewShot(2),
    lambda: BootstrapRandomSearch(2, num_candidates=3),
]


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["labeled", "bootstrap", "random_search"])
def test_demos_fix_the_task_and_are_accepted_on_evidence(make) -> None:  # noqa: ANN001
    prog = sentiment_program()
    new, rep = make().optimize(prog, TRAIN, label_accuracy(), valset=VAL, ctx=ctx())
    assert rep.baseline.mean == 0.5 and rep.best.mean == 1.0
    assert rep.best.status == "accepted" and rep.best.evidence["p_better"] >= 0.95
    demos = new.module("clf").demos
    assert 1 <= len(demos) <= 2
    for d in demos:  # demos are real (sentence, gold label) pairs
        assert set(d) == {"sentence", "sentiment"}
        assert d["sentiment"] == ("positive" if "good" in d["sentence"] else "negative")
    assert diff(prog, new)["changed"]["clf"]["demos"]["after"] == len(demos)
    assert rep.stopped is None
    assert "what made the difference" in rep.notes[-1]


def test_random_search_evaluates_every_candidate_and_only_accepts_improvements() -> None:
    new, rep = BootstrapRandomSearch(2, num_candidates=4).optimize(
        sentiment_program(), TRAIN, label_accuracy(), valset=VAL, ctx=ctx())
    labels = [c.label for c in rep.candidates]
    assert labels[0].startswith("baseline") and labels[1] == "first 2 bootstrapped demos"
    assert [lab.split(" (")[0] for lab in labels[2:]] == [f"random set #{i}" for i in range(1, 5)]
    # once the incumbent is perfect, equally good candidates are rejected (no evidence of better)
    assert [c.status for c in rep.candidates[2:]] == ["rejected"] * 4
    assert all(c.reason for c in rep.candidates)
    # same seed -> same search; the report is deterministic apart from timing
    new2, rep2 = BootstrapRandomSearch(2, num_candidates=4).optimize(
        sentiment_program(), TRAIN, label_accuracy(), valset=VAL, ctx=ctx())
    assert new2 == new and rep2.to_dict(timing=False) == rep.to_dict(timing=False)


def test_no_passing_run_means_no_candidate_and_unchanged_program() -> None:
    prog = sentiment_program()
    new, rep = BootstrapFewShot(2).optimize(prog, TRAIN, label_accuracy(), valset=VAL,
                                            ctx=ctx(lambda r: " neutral"))
    assert new == prog and len(rep.candidates) == 1
    assert any("nothing to bootstrap" in n for n in rep.notes)
    assert any("every reply failed to parse" in n for n in rep.notes)  # ' neutral' is not a label
    _, rep = BootstrapFewShot(2).optimize(prog, TRAIN, lambda ex, pred, trace=None: 0.0, valset=VAL, ctx=ctx())
    note = next(n for n in rep.notes if "nothing to bootstrap" in n)
    assert "threshold=1" in note and "best 0 over 20 runs, 0 above 0" in note and "pass threshold" not in note


def test_graded_metric_below_the_mark_names_the_threshold_that_would_bootstrap() -> None:
    acc = label_accuracy()

    def partial(example, pred, trace=None):  # noqa: ANN001, ANN202 -- partial credit, never 1.0
        return 0.6 * acc(example, pred)

    prog = sentiment_program()
    new, rep = BootstrapFewShot(2).optimize(prog, TRAIN, partial, valset=VAL, ctx=ctx())
    assert new == prog and len(rep.candidates) == 1
    note = next(n for n in rep.notes if "nothing to bootstrap" in n)
    assert "best 0.6 over 20 runs, 10 above 0" in note
    assert "pass threshold=0.6 (it keeps 10 of these runs)" in note
    # the named threshold does what the note says: the runs are kept and the demos fix the task
    new, rep = BootstrapFewShot(2, threshold=0.6).optimize(prog, TRAIN, partial, valset=VAL, ctx=ctx())
    assert rep.best.label == "bootstrapped demos" and rep.best.mean == pytest.approx(0.6)
    assert not any("nothing to bootstrap" in n for n in rep.notes)


def test_threshold_note_cases() -> None:
    from lmgraph.optimizers.fewshot import threshold_note
    assert "every reply failed to parse" in threshold_note([], 1.0, 4)
    assert "2 of 3 training runs scored >= threshold=1 but none recorded" in threshold_note([1.0, 1.0, 0.0], 1.0, 4)
    # the suggested mark keeps ``want`` runs when that many scored above 0
    note = threshold_note([0.9, 0.2, 0.5, 0.0, 0.7], 1.0, 2)
    assert "best 0.9 over 5 runs, 4 above 0" in note and "pass threshold=0.7 (it keeps 2 of these runs)" in note


def test_labeled_fewshot_needs_mappable_nodes_and_label_map_helps() -> None:
    p = lg.Pipeline("s")
    n = p.add(lg.Predict("sentence -> sentiment: Literal['negative', 'positive']", format="completion"),
              name="clf", sentence=p.input("sentence"))
    p.output(verdict=n.sentiment)  # output name differs from the row key "label"
    prog = p.build()
    with pytest.raises(DefinitionError, match="label_map"):
        LabeledFewShot(2).optimize(prog, TRAIN, label_accuracy("verdict"), valset=VAL, ctx=ctx())
    new, rep = LabeledFewShot(2, label_map={"verdict": "label"}).optimize(
        prog, TRAIN, label_accuracy("verdict"), valset=VAL, ctx=ctx())
    assert len(new.module("clf").demos) == 2 and rep.best.mean == 1.0


# ---------------------------------------------------------------- two nodes: each needs its own demos

CODES = {i: f"c{i * 7 % 100}" for i in range(40)}
LABELS = {c: f"L{i % 3}" for i, c in CODES.items()}


def two_node_fn(req: lg.LMRequest) -> str:
    """encode: text -> code; decide: code -> label. Each node is right without its own demos only on
    even items, and always right with them (demos are extra chat turns)."""
    assert req.messages is not None
    has_demos = len(req.messages) > 2
    last = req.messages[-1].content
    if req.node == "encode":
        i = int(re.search(r"Text: item (\d+)", last).group(1))
        return f"Code: {CODES[i] if has_demos or i % 2 == 0 else 'c?'}"
    assert req.node == "decide"
    code = re.search(r"Code: (\S+)", last).group(1)
    ok = code in LABELS and (has_demos or int(code[1:]) % 2 == 0)
    return f"Label: {LABELS[code] if ok else 'none'}"


def two_node_program() -> lg.Program:
    p = lg.Pipeline("two")
    a = p.add(lg.Predict("text -> code"), name="encode", text=p.input("text"))
    b = p.add(lg.Predict("code -> label"), name="decide", code=a.code)
    p.output(label=b.label)
    return p.build()


TWO_ROWS = [{"text": f"item {i}", "label": LABELS[CODES[i]]} for i in range(40)]


def test_each_node_of_a_pipeline_gets_its_own_demos_from_traces() -> None:
    lm = FunctionLM(two_node_fn)
    new, rep = BootstrapFewShot(3).optimize(two_node_program(), TWO_ROWS[:20], label_accuracy(),
                                           valset=TWO_ROWS[20:], ctx=lg.RunContext(lm=lm, cache=False))
    assert rep.baseline.mean == 0.5 and rep.best.mean == 1.0
    enc, dec = new.module("encode").demos, new.module("decide").demos
    assert len(enc) == 3 and len(dec) == 3
    assert all(set(d) == {"text", "code"} for d in enc)
    assert all(set(d) == {"code", "label"} for d in dec)
    # the demos are the intermediate values of passing runs: encode's codes feed decide's demos
    assert [d["code"] for d in enc] == [d["code"] for d in dec]
    for d in enc:
        assert d["code"] == CODES[int(d["text"].split()[1])]
    assert rep.best.changes == {"encode": {"demos": 3}, "decide": {"demos": 3}}


# ---------------------------------------------------------------- purity, budgets, dry runs, bad data


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["labeled", "bootstrap", "random_search"])
def test_optimizer_never_mutates_its_input(make) -> None:  # noqa: ANN001
    prog = sentiment_program()
    before, module_before = prog.to_json(), prog.module("clf")
    train, val = [dict(r) for r in TRAIN], [dict(r) for r in VAL]
    new, _ = make().optimize(prog, train, label_accuracy(), valset=val, ctx=ctx())
    assert prog.to_json() == before and prog.module("clf") is module_before
    assert prog.module("clf").demos == ()
    assert new is not prog and new.to_json() != before
    assert train == TRAIN and val == VAL


def test_budget_stop_returns_best_so_far_within_budget() -> None:
    lm = FunctionLM(sentiment_fn)
    budget = 75
    new, rep = BootstrapRandomSearch(2, num_candidates=6).optimize(
        sentiment_program(), TRAIN, label_accuracy(), valset=VAL, ctx=lg.RunContext(lm=lm, cache=False),
        budget=lg.Budget(max_calls=budget))
    assert rep.stopped and "budget" in rep.stopped
    assert rep.spent["calls"] <= budget and len(lm.calls) <= budget
    # the candidate accepted before the budget ran out is what comes back
    assert rep.best.status == "accepted" and rep.best.mean == 1.0
    assert len(new.module("clf").demos) >= 1
    assert len(rep.candidates) < 2 + 6
    assert "stopped:" in rep.table()


def test_budget_too_small_for_the_baseline_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="cannot even cover the baseline"):
        BootstrapFewShot(2).optimize(sentiment_program(), TRAIN, label_accuracy(), valset=VAL, ctx=ctx(),
                                     budget=lg.Budget(max_calls=5))


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["labeled", "bootstrap", "random_search"])
def test_dry_run_is_an_upper_bound(make) -> None:  # noqa: ANN001
    lm = FunctionLM(sentiment_fn)
    opt = make()
    est = opt.dry_run(sentiment_program(), TRAIN, VAL)
    assert est.calls == sum(est.breakdown.values()) and "baseline" in est.breakdown
    assert lm.calls == []  # a dry run makes no model call
    _, rep = opt.optimize(sentiment_program(), TRAIN, label_accuracy(), valset=VAL,
                          ctx=lg.RunContext(lm=lm, cache=False))
    assert est.calls >= rep.spent["calls"] == len(lm.calls)
    assert est.tokens > 0 and "model calls" in str(est)


@pytest.mark.parametrize("which", ["trainset", "valset"])
def test_bad_row_fails_before_any_model_call(which: str) -> None:
    lm = FunctionLM(sentiment_fn)
    rows = [dict(r) for r in (TRAIN if which == "trainset" else VAL)]
    del rows[3]["sentence"]
    train, val = (rows, VAL) if which == "trainset" else (TRAIN, rows)
    with pytest.raises(DefinitionError, match=rf"{which} row 3 lacks the program input 'sentence'") as e:
        BootstrapFewShot(2).optimize(sentiment_program(), train, label_accuracy(), valset=val,
                                     ctx=lg.RunContext(lm=lm, cache=False))
    assert e.value.field == "sentence" and "Fix:" in str(e.value)
    assert lm.calls == []
    with pytest.raises(DefinitionError, match="row 1 is a str"):
        LabeledFewShot(2).optimize(sentiment_program(), [TRAIN[0], "oops"], label_accuracy(), valset=VAL,
                                   ctx=lg.RunContext(lm=lm, cache=False))
    with pytest.raises(DefinitionError, match="trainset is empty"):
        LabeledFewShot(2).dry_run(sentiment_program(), [])
    assert lm.calls == []


def test_valset_auto_split_is_seeded() -> None:
    def data(seed: int) -> dict:
        _, rep = LabeledFewShot(2).optimize(sentiment_program(), ROWS, label_accuracy(), seed=seed, ctx=ctx())
        return rep.data

    a, b, c = data(0), data(0), data(1)
    assert a == b and a["val"]["sha256_16"] != c["val"]["sha256_16"]
    assert a["val"]["n"] == 20 and a["train"]["n"] == 20
    assert "held out (seed 0)" in a["note"] and "held out (seed 1)" in c["note"]
    opt = LabeledFewShot(2, val_fraction=0.25)
    # 10 held-out rows, one call each, doubled for the possible repair call
    assert opt.dry_run(sentiment_program(), ROWS).breakdown["baseline"] == 2 * 10
    with pytest.raises(DefinitionError, match="at least 2 training examples"):
        opt.dry_run(sentiment_program(), ROWS[:1])


def test_bad_optimizer_settings_and_inputs() -> None:
    with pytest.raises(DefinitionError, match="accept_confidence"):
        BootstrapFewShot(accept_confidence=0.3)
    with pytest.raises(DefinitionError, match="built Program"):
        BootstrapFewShot().optimize(lg.Pipeline("x"), TRAIN, label_accuracy(), ctx=ctx())  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="metric must be callable"):
        BootstrapFewShot().optimize(sentiment_program(), TRAIN, "accuracy", ctx=ctx())  # type: ignore[arg-type]


# ---------------------------------------------------------------- labelled demos beyond one Predict

CAPITALS = {"France": "Paris", "Peru": "Lima", "Kenya": "Nairobi", "Japan": "Tokyo", "Chile": "Santiago",
            "Egypt": "Cairo", "Spain": "Madrid", "Italy": "Rome", "Ghana": "Accra", "Nepal": "Kathmandu"}
CORPUS = [f"{city} is the capital of {country}." for country, city in CAPITALS.items()]
QA_ROWS = [{"question": f"What is the capital of {c}?", "answer": a} for c, a in CAPITALS.items()]


def _gold_when_shown_demos(req: lg.LMRequest) -> str:
    """The answer that the last question's context names, but only when the prompt holds a demo."""
    text = request_text(req)
    if text.count("Question:") < 2:
        return " unknown"
    country = re.findall(r"capital of (\w+)\?", text)[-1]
    return " " + CAPITALS[country]


def rag_program() -> lg.Program:
    p = lg.Pipeline("rag")
    q = p.input("question")
    docs = p.add(lg.Retrieve(lg.BM25Retriever(CORPUS, name="capitals"), k=1), name="retrieve", query=q)
    ans = p.add(lg.Predict("context: list[str], question -> answer", format="completion"), name="answer",
                context=docs.passages, question=q)
    p.output(answer=ans.answer)
    return p.build()


def test_labeled_fewshot_computes_a_rag_nodes_context_with_the_retriever_and_no_model_call() -> None:
    lm = FunctionLM(_gold_when_shown_demos)
    prog = rag_program()
    train, val = QA_ROWS[:5], QA_ROWS[5:]
    new, rep = LabeledFewShot(2).optimize(prog, train, label_accuracy("answer", "answer"), valset=val,
                                          ctx=lg.RunContext(lm=lm, cache=False))
    assert rep.baseline.mean == 0.0 and rep.best.mean == 1.0
    demos = new.module("answer").demos
    assert len(demos) == 2
    for d in demos:  # each demo shows the passage the node really gets for that question
        assert set(d) == {"context", "question", "answer"}
        country = re.findall(r"capital of (\w+)\?", d["question"])[0]
        assert d["answer"] == CAPITALS[country]
        assert d["context"] == [f"{CAPITALS[country]} is the capital of {country}."]
    # only the evaluation asked the model: baseline + one candidate over the validation rows
    assert len(lm.calls) == 2 * len(val)
    assert any("computed per row by running retrieve (no model call)" in n for n in rep.notes)


def test_labeled_fewshot_skips_inputs_a_model_computes() -> None:
    p = lg.Pipeline("two_step")
    q = p.input("question")
    first = p.add(lg.Predict("question -> query"), name="rewrite", question=q)
    docs = p.add(lg.Retrieve(CORPUS, k=1), name="retrieve", query=first.query)
    ans = p.add(lg.Predict("context: list[str], question -> answer"), name="answer", context=docs.passages,
                question=q)
    p.output(answer=ans.answer)
    with pytest.raises(DefinitionError, match="no model call"):
        LabeledFewShot(2).optimize(p.build(), QA_ROWS[:5], label_accuracy("answer", "answer"),
                                   valset=QA_ROWS[5:], ctx=lg.RunContext(lm=FunctionLM(lambda r: " x"), cache=False))


def test_labeled_fewshot_fills_a_chain_of_thought_node_without_reasoning() -> None:
    p = lg.Pipeline("cot")
    n = p.add(lg.ChainOfThought("question -> answer", format="completion"), name="solve",
              question=p.input("question"))
    p.output(answer=n.answer)

    def fn(req: lg.LMRequest) -> str:
        ans = _gold_when_shown_demos(req).strip()
        return f" I recall it.\nAnswer: {ans}"

    new, rep = LabeledFewShot(3).optimize(p.build(), QA_ROWS[:5], label_accuracy("answer", "answer"),
                                          valset=QA_ROWS[5:], ctx=lg.RunContext(lm=FunctionLM(fn), cache=False))
    demos = new.module("solve").demos
    assert len(demos) == 3 and all(set(d) == {"question", "answer"} for d in demos)
    assert rep.baseline.mean == 0.0 and rep.best.mean == 1.0
