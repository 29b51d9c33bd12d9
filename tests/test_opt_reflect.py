"""Reflect (GEPA-style): reflection on feedback finds the known edit, Pareto front, merges, budget, resume."""

from __future__ import annotations

import asyncio
import json

import pytest

import lmgraph as lg
from lmgraph.optimizers import CompileSession, Reflect
from lmgraph.optimizers.reflect import Member, merge_plan, pareto_front, reflection_input, weakly_dominated
from lmgraph.testing import FunctionLM, request_text

PHRASE = "answer in uppercase"
FEEDBACK = "the answer must be uppercase"
WORDS = ["hot", "big", "up", "fast", "light", "old", "happy", "early", "open", "full", "hard", "high",
         "long", "rich", "strong", "wet", "cold", "small", "down", "slow", "dark", "new", "sad", "late"]
ROWS = [{"word": w} for w in WORDS]


def word_of(text: str) -> str:
    return text.rsplit("Word:", 1)[-1].split("\n", 1)[0].strip()


def instruction_of(text: str) -> str:
    """The instruction: the prompt's first paragraph (completion format)."""
    return text.split("\n\n", 1)[0]


def task_fn(req):
    """Uppercases the word only when the node's instruction holds the magic phrase."""
    text = request_text(req)
    w = word_of(text)
    return " " + (w.upper() if PHRASE in instruction_of(text).lower() else w)


def metric(example, pred, trace=None):
    want = example["word"].upper()
    if pred["answer"] == want:
        return 1.0, "correct"
    return 0.0, f"{FEEDBACK}: expected {want!r}, got {pred['answer']!r}"


def reflector_fn(req):
    """Writes the phrase only when the metric's feedback reached its prompt."""
    text = request_text(req)
    if FEEDBACK in text:
        return "Read the word and answer in uppercase."
    return "Read the word and repeat it."


def program():
    p = lg.Pipeline("upper")
    n = p.add(lg.Predict("word -> answer", format="completion", repair=False), name="up", word=p.input("word"))
    p.output(answer=n.answer)
    return p.build()


def ctx(reflector=reflector_fn):
    return lg.RunContext(lm=FunctionLM(task_fn), lms={"reflector": FunctionLM(reflector)}, cache=False)


def split():
    return ROWS[:12], ROWS[12:]


def test_reflection_on_feedback_finds_the_instruction():
    train, val = split()
    c = ctx()
    opt = Reflect(reflection_lm="reflector", minibatch_size=4)
    new, rep = opt.optimize(program(), train, metric, valset=val, ctx=c)
    assert PHRASE in new.module("up").instructions.lower()
    assert rep.baseline.mean == 0.0 and rep.best.mean == 1.0
    assert rep.stopped is None
    best = rep.best
    assert best.status == "accepted" and best.id != 0
    assert best.evidence["p_better"] >= 0.95 and best.evidence["diff"] == 1.0
    assert "shrunk_gain" in best.evidence and "ranked first" in best.reason
    assert best.changes == {"up": {"instructions": "Read the word and answer in uppercase."}}
    # the proposal is a report row: its text, parent, node, minibatch scores, why kept
    prop = next(x for x in rep.candidates if x.label.startswith("iteration 1: up of pool #0"))
    assert "answer in uppercase" in prop.label and prop.status == "pool"
    assert prop.evidence["minibatch_parent"] == 0.0 and prop.evidence["minibatch_child"] == 1.0
    assert "better than its parent on the minibatch of 4 training rows" in prop.reason
    # the reflector saw the node, its current instruction, the node's I/O and the feedback
    seen = request_text(c.lms["reflector"].calls[0])
    assert "Step: up (word -> answer)" in seen and "Given the fields `word`" in seen
    assert FEEDBACK in seen and "Score: 0" in seen
    assert any(n.startswith("pool #1 scores 1 on every validation row") for n in rep.notes)
    json.dumps(rep.to_dict())
    json.dumps(opt.config())


def test_without_feedback_no_reflection_helps():
    """The same run with a metric that gives no feedback: the reflector never writes the phrase."""
    train, val = split()

    def plain(example, pred, trace=None):
        return metric(example, pred)[0]

    prog = program()
    new, rep = Reflect(reflection_lm="reflector", max_iterations=3).optimize(prog, train, plain, valset=val,
                                                                               ctx=ctx())
    assert new == prog
    rows = [x for x in rep.candidates if x.label.startswith("iteration")]
    assert len(rows) == 3 and all(x.status == "dropped" for x in rows)
    assert all("not better than its parent on the minibatch" in x.reason for x in rows)
    assert any("no reflection beat its parent on a minibatch" in n for n in rep.notes)


def test_dropped_proposals_are_reported_with_the_reason():
    train, val = split()

    def reflector(req):  # the first reflection misses, the next finds it
        return "Read the word and repeat it." if req.rollout == 1 else reflector_fn(req)

    new, rep = Reflect(reflection_lm="reflector").optimize(program(), train, metric, valset=val,
                                                           ctx=ctx(reflector))
    first = next(x for x in rep.candidates if x.label.startswith("iteration 1:"))
    assert first.status == "dropped" and "not better than its parent" in first.reason
    assert first.scores == [0.0] * 4 and "'Read the word and repeat it.'" in first.label
    second = next(x for x in rep.candidates if x.label.startswith("iteration 2:"))
    assert second.status == "pool" and PHRASE in new.module("up").instructions.lower()


def test_unusable_and_repeated_reflections_are_dropped():
    train, val = split()
    current = program().module("up").instructions
    replies = {1: "", 2: current}

    def reflector(req):
        return replies.get(req.rollout, "Repeat the word.")

    _, rep = Reflect(reflection_lm="reflector", max_iterations=2, merge=False).optimize(
        program(), train, metric, valset=val, ctx=ctx(reflector))
    r1, r2 = (next(x for x in rep.candidates if x.label.startswith(f"iteration {i}:")) for i in (1, 2))
    assert r1.status == r2.status == "dropped"
    assert "no usable instruction" in r1.reason and "repeated the current instruction" in r2.reason


@pytest.mark.parametrize("max_calls", [12, 13, 16, 17, 20, 21, 25, 30, 40])
def test_budget_is_never_exceeded(max_calls):
    train, val = split()
    prog = program()
    c = ctx()
    new, rep = Reflect(reflection_lm="reflector").optimize(prog, train, metric, valset=val, ctx=c,
                                                           budget=lg.Budget(max_calls=max_calls))
    made = len(c.lm.calls) + len(c.lms["reflector"].calls)
    assert made == rep.spent["calls"] <= max_calls
    # 12 baseline + 4 parent minibatch + 1 reflection + 4 child minibatch + 12 validation = 33
    if max_calls < 33:
        assert rep.stopped and rep.stopped.startswith("reflection stopped in iteration 1")
        assert new == prog
    else:
        assert rep.stopped is None and PHRASE in new.module("up").instructions.lower()


def test_budget_stop_keeps_the_best_pool_member():
    """The budget runs out after the child joined the pool: the best so far is judged and taken."""
    train, val = split()

    def task(req):  # 2 of 12 validation rows stay wrong: the run keeps going after pool #1
        text = request_text(req)
        w = word_of(text)
        return " " + (w.upper() if PHRASE in instruction_of(text).lower() and w not in ("new", "sad") else w)

    c = lg.RunContext(lm=FunctionLM(task), lms={"reflector": FunctionLM(reflector_fn)}, cache=False)
    new, rep = Reflect(reflection_lm="reflector").optimize(program(), train, metric, valset=val, ctx=c,
                                                           budget=lg.Budget(max_calls=40))
    assert rep.stopped and "best of the 2 pool candidates" in rep.stopped
    assert rep.spent["calls"] <= 40
    assert PHRASE in new.module("up").instructions.lower() and rep.best.status == "accepted"


def test_dry_run_bounds_the_spend():
    train, val = split()

    def reflector(req):  # never helps: every iteration runs
        return f"Variant {req.rollout}: repeat the word."

    for kw in ({}, {"max_iterations": 3, "minibatch_size": 8}, {"merge": False}):
        opt = Reflect(reflection_lm="reflector", **kw)
        est = opt.dry_run(program(), train, val)
        _, rep = opt.optimize(program(), train, metric, valset=val, ctx=ctx(reflector))
        assert est.calls >= rep.spent["calls"], (kw, est, rep.spent)
        assert est.breakdown["reflections"] == opt.max_iterations


def test_resume_from_checkpoint_replays_without_model_calls(tmp_path):
    train, val = split()
    ck = tmp_path / "reflect.ckpt"
    opt = Reflect(reflection_lm="reflector", checkpoint=ck)
    c1 = ctx()
    first, rep1 = opt.optimize(program(), train, metric, valset=val, ctx=c1)
    c = ctx()
    again, rep2 = opt.optimize(program(), train, metric, valset=val, ctx=c)
    assert len(c.lm.calls) == 0 and len(c.lms["reflector"].calls) == 0
    assert again.content_hash() == first.content_hash()
    assert rep2.to_dict(timing=False) == rep1.to_dict(timing=False)
    assert rep2.runtime["cache_misses"] == 0 and rep2.runtime["replayed_evaluations"] > 0
    # a compile killed part-way (the checkpoint cut after its first entries) ends the same
    lines = ck.read_text().splitlines(keepends=True)
    ck.write_text("".join(lines[:3]))
    c3 = ctx()
    third, rep3 = opt.optimize(program(), train, metric, valset=val, ctx=c3)
    assert 0 < len(c3.lm.calls) < len(c1.lm.calls)
    assert third.content_hash() == first.content_hash()
    assert rep3.to_dict(timing=False) == rep1.to_dict(timing=False)


def test_reflection_model_defaults_to_the_task_model_with_a_warning():
    train, val = split()

    def both(req):
        text = request_text(req)
        if "You improve the instruction" in text:
            return reflector_fn(req)
        return task_fn(req)

    c = lg.RunContext(lm=FunctionLM(both), cache=False)
    new, rep = Reflect().optimize(program(), train, metric, valset=val, ctx=c)
    assert PHRASE in new.module("up").instructions.lower()
    assert any("a small model writes poor reflections" in n for n in rep.notes)


def test_bad_arguments_fail_before_any_call():
    train, val = split()
    c = ctx()
    with pytest.raises(lg.DefinitionError, match="no proposer model named 'judge'"):
        Reflect(reflection_lm="judge").optimize(program(), train, metric, valset=val, ctx=c)
    with pytest.raises(lg.DefinitionError, match="no node .nope."):
        Reflect(nodes=["up", "nope"]).optimize(program(), train, metric, valset=val, ctx=c)
    with pytest.raises(lg.DefinitionError, match="max_iterations"):
        Reflect(max_iterations=0)
    assert not c.lm.calls and not c.lms["reflector"].calls


# --------------------------------------------------------------------------- Pareto front

def test_pareto_front_on_a_hand_made_matrix():
    m = [[1, 0, 0, 1],   # 0: best on e0, e3
         [1, 1, 0, 0],   # 1: best on e0, e1
         [0, 0, 1, 0],   # 2: best on e2
         [1, 0, 0, 0],   # 3: best only on e0, which 0 and 1 also win: covered, out
         [0, 0, 0, 0]]   # 4: best nowhere
    assert pareto_front(m) == {0: 2, 1: 2, 2: 1}
    # identical candidates: the one with the lower id stays; fractional scores: only the top wins
    assert pareto_front([[0.5, 0.5], [0.5, 0.5]]) == {0: 2}
    assert pareto_front([[0.2, 0.9], [0.3, 0.1], [0.25, 0.95]]) == {1: 1, 2: 1}
    # a candidate worse on average but alone at the top of one example stays
    assert pareto_front([[1, 1, 1, 0], [0, 0, 0, 1]]) == {0: 3, 1: 1}
    assert weakly_dominated([1, 0], [[0, 1], [1, 0.5]]) == 1
    assert weakly_dominated([1, 0], [[0, 1]]) is None
    with pytest.raises(ValueError):
        pareto_front([[1, 0], [1]])


# --------------------------------------------------------------------------- merge (2-node pipeline)

def two_node_program():
    p = lg.Pipeline("shout")
    a = p.add(lg.Predict("word -> shout", format="completion", repair=False), name="a", word=p.input("word"))
    b = p.add(lg.Predict("shout -> answer", format="completion", repair=False), name="b", shout=a.shout)
    p.output(answer=b.answer)
    return p.build()


def two_node_fn(req):
    """Node a uppercases with 'PHRASE A' in its instruction; node b appends '!' with 'PHRASE B'."""
    text = request_text(req)
    ins = instruction_of(text)
    if text.rstrip().endswith("Answer:"):  # node b
        s = text.rsplit("Shout:", 1)[-1].split("\n", 1)[0].strip()
        return " " + (s + "!" if "PHRASE B" in ins else s)
    w = word_of(text)
    return " " + (w.upper() if "PHRASE A" in ins else w)


def two_node_metric(example, pred, trace=None):
    """Half the rows check the case, half the final '!': each node's fix helps its own half."""
    ans = pred["answer"]
    if example["kind"] == "case":
        ok = ans.rstrip("!") == example["word"].upper()
        return float(ok), None if ok else "the answer must be uppercase"
    ok = ans.endswith("!")
    return float(ok), None if ok else "the answer must end with '!'"


TWO_ROWS = [{"word": w, "kind": "case" if i % 2 else "bang"} for i, w in enumerate(WORDS)]


def test_merge_combines_two_single_node_improvements():
    prog = two_node_program()
    rows = TWO_ROWS[:12]
    c = lg.RunContext(lm=FunctionLM(two_node_fn), cache=False)
    session = CompileSession(optimizer="reflect", config={}, program=prog, trainset=rows, valset=rows,
                             metric=two_node_metric, ctx=c, budget=None, seed=0, checkpoint=None, concurrency=4,
                             accept_confidence=0.95, progress=False)
    prog_a = prog.with_module("a", prog.module("a").replace(instructions="PHRASE A: shout the word."))
    prog_b = prog.with_module("b", prog.module("b").replace(instructions="PHRASE B: add a bang."))

    async def go():
        await session.baseline()
        pool = []
        for i, (p, anc) in enumerate([(prog, {0}), (prog_a, {0, 1}), (prog_b, {0, 2})]):
            entry = await session.run(p, rows)
            pool.append(Member(i, p, list(entry["scores"]), parents=(0,) if i else (),
                               ancestors=frozenset(anc)))
        front = pareto_front([m.scores for m in pool])
        assert set(front) == {1, 2}  # each wins its own half; the program as given is covered
        # neither a descendant pair nor overlapping changes merge
        assert merge_plan(pool, {0: 1, 1: 1}, ["a", "b"], set()) is None
        opt = Reflect()
        state = {"merges": 0, "tried": set()}
        merged = await opt._try_merge(session, pool, ["a", "b"], state)
        return pool, merged, state

    pool, merged, state = asyncio.run(go())
    assert merged is not None and merged.idx == 3 and merged.parents == (1, 2)
    assert merged.program.module("a") == prog_a.module("a") and merged.program.module("b") == prog_b.module("b")
    assert merged.mean == 1.0 and pool[1].mean == pool[2].mean == 0.5
    assert state == {"merges": 1, "tried": {(1, 2)}}
    row = session.report.candidates[-1]
    assert row.label == "merge of pool #1 (a) and #2 (b) over #0" and row.status == "pool"
    assert set(row.changes) == {"a", "b"}
    # the same pair is not merged twice; a conflicting pair (both changed node a) is not merged
    assert merge_plan(pool, {1: 1, 2: 1}, ["a", "b"], state["tried"]) is None
    prog_a2 = prog.with_module("a", prog.module("a").replace(instructions="PHRASE A, louder."))
    other = Member(4, prog_a2, [0.0] * 12, parents=(0,), ancestors=frozenset({0, 4}))
    assert merge_plan([*pool, other], {1: 1, 4: 1}, ["a", "b"], set()) is None


def test_reflect_tunes_each_node_of_a_pipeline():
    """Round robin over nodes: each node's reflection sees that node and fixes its half of the rows."""
    def reflector(req):
        text = request_text(req)
        if "Step: a (" in text and "uppercase" in text:
            return "PHRASE A: write the word in capitals."
        if "Step: b (" in text and "end with '!'" in text:
            return "PHRASE B: copy the shout and end it with an exclamation mark."
        return "Copy the input."

    rows = TWO_ROWS
    c = lg.RunContext(lm=FunctionLM(two_node_fn), lms={"reflector": FunctionLM(reflector)}, cache=False)
    new, rep = Reflect(reflection_lm="reflector", minibatch_size=6).optimize(
        two_node_program(), rows[:12], two_node_metric, valset=rows[12:], ctx=c)
    assert "PHRASE A" in new.module("a").instructions and "PHRASE B" in new.module("b").instructions
    assert rep.best.mean == 1.0 and rep.best.status == "accepted"
    assert set(rep.best.changes) == {"a", "b"}
    nodes_tried = {x.label.split(":")[1].split()[0] for x in rep.candidates if x.label.startswith("iteration")}
    assert nodes_tried == {"a", "b"}



def test_merges_happen_in_the_search_loop():
    """Rows that want the word as given keep the program as given on the front, so a node-b
    rewrite can grow from it beside the node-a one; the merge then combines them. Whichever way a
    seed goes (merge, or b rewritten on top of a), the search ends at the combination."""
    kinds = ["case", "bang", "case", "bang", "plain", "bang"]
    rows = [{"word": w, "kind": kinds[i % 6]} for i, w in enumerate(WORDS)]

    def metric3(example, pred, trace=None):
        if example["kind"] == "plain":
            ok = pred["answer"] == example["word"]
            return float(ok), None if ok else "the answer must be the word as given"
        return two_node_metric(example, pred)

    def reflector(req):
        text = request_text(req)
        if "Step: a (" in text and "uppercase" in text:
            return "PHRASE A: write the word in capitals."
        if "Step: b (" in text and "end with '!'" in text:
            return "PHRASE B: end with an exclamation mark."
        return "Copy the input."

    merged_wins = 0
    for seed in range(6):
        c = lg.RunContext(lm=FunctionLM(two_node_fn), lms={"reflector": FunctionLM(reflector)}, cache=False)
        opt = Reflect(reflection_lm="reflector", minibatch_size=12, max_iterations=4)
        new, rep = opt.optimize(two_node_program(), rows[:12], metric3, valset=rows[12:], ctx=c, seed=seed)
        assert "PHRASE A" in new.module("a").instructions and "PHRASE B" in new.module("b").instructions
        assert rep.best.status == "accepted" and abs(rep.best.mean - 10 / 12) < 1e-9
        assert rep.spent["calls"] <= opt.dry_run(two_node_program(), rows[:12], rows[12:]).calls
        merges = [x for x in rep.candidates if x.label.startswith("merge of")]
        if merges and "merge of" in rep.best.label:
            assert merges[0].status == "pool" and "no pool member is as good on every example" in merges[0].reason
            merged_wins += 1
    assert merged_wins >= 1

def test_reflection_input_shows_failed_runs_and_program_outputs():
    prog = two_node_program()
    examples = [{"score": 0.0, "ok": True, "feedback": "too quiet", "outputs": {"answer": "hot"},
                 "nodes": {"a": {"inputs": {"word": "hot"}, "outputs": {"shout": "hot"}}}},
                {"score": 0.0, "ok": False, "feedback": "run failed: boom", "error": "LMError: boom"}]
    text = reflection_input(prog, "a", [{"word": "hot"}, {"word": "cold"}], examples)
    assert "Step: a (word -> shout)" in text and "Current instruction:" in text
    assert "Step inputs:\n  word: hot" in text and "Program outputs:\n  answer: hot" in text
    assert "Feedback: too quiet" in text
    assert "Program inputs:\n  word: cold" in text and "The run failed: LMError: boom" in text


@pytest.mark.integration
def test_reflect_on_the_embedded_model_runs_within_budget():
    """The real 135M model as task and reflection model: the loop runs, stays in budget, reports
    every proposal -- answers are not asserted (the model is small)."""
    pytest.importorskip("llama_cpp")
    sentences = [("a gorgeous, witty, seductive movie.", "positive"),
                 ("an utterly incompetent conclusion.", "negative"),
                 ("it's a charming and often affecting journey.", "positive"),
                 ("unflinchingly bleak and desperate", "negative"),
                 ("the acting and music are all astounding.", "positive"),
                 ("boilerplate cliches from start to finish.", "negative"),
                 ("a delightful, funny film.", "positive"), ("dull, lifeless and tedious.", "negative")]
    rows = [{"sentence": s, "label": y} for s, y in sentences]
    p = lg.Pipeline("sst2")
    node = p.add(lg.Predict("sentence -> sentiment: Literal['negative', 'positive']", format="completion",
                            max_tokens=4, repair=False), name="classify", sentence=p.input("sentence"))
    p.output(label=node.sentiment)

    def graded(example, pred, trace=None):
        ok = pred["label"] == example["label"]
        return float(ok), "correct" if ok else f"expected {example['label']!r}, got {pred['label']!r}"

    opt = Reflect(max_iterations=2, minibatch_size=4, merge=False)
    _new, rep = opt.optimize(p.build(), rows[:4], graded, valset=rows[4:], ctx=lg.RunContext(cache=False),
                            budget=lg.Budget(max_calls=40))
    assert rep.spent["calls"] <= 40
    assert any("a small model writes poor reflections" in n for n in rep.notes)
    props = [c for c in rep.candidates if c.label.startswith("iteration")]
    assert all(c.status in ("pool", "dropped") and c.reason for c in props)
    json.dumps(rep.to_dict())


# ---- credit assignment: which node a reflection works on

def chain3_program():
    """word -> draft (first) -> shout (middle) -> answer (last): the middle step is the one to fix."""
    p = lg.Pipeline("chain3")
    a = p.add(lg.Predict("word -> draft", format="completion", repair=False), name="first", word=p.input("word"))
    b = p.add(lg.Predict("draft -> shout", format="completion", repair=False), name="middle", draft=a.draft)
    c = p.add(lg.Predict("shout -> answer", format="completion", repair=False), name="last", shout=b.shout)
    p.output(answer=c.answer)
    return p.build()


def chain3_fn(req):
    """first and last copy their input; middle uppercases only with 'PHRASE M' in its instruction."""
    text = request_text(req)
    ins = instruction_of(text)
    if text.rstrip().endswith("Shout:"):  # middle
        d = text.rsplit("Draft:", 1)[-1].split("\n", 1)[0].strip()
        return " " + (d.upper() if "PHRASE M" in ins else d)
    if text.rstrip().endswith("Answer:"):  # last
        return " " + text.rsplit("Shout:", 1)[-1].split("\n", 1)[0].strip()
    return " " + word_of(text)


def chain3_metric(example, pred, trace=None):
    ok = pred["answer"] == example["word"].upper()
    return float(ok), None if ok else "the shout was not in capitals, so neither is the answer"


def chain3_reflector(req):
    text = request_text(req)
    if "Step: middle (" in text and "capitals" in text:
        return "PHRASE M: write the draft in capitals."
    return "Copy the input exactly."


def test_blame_reads_errors_empty_outputs_and_feedback_that_names_an_upstream_step():
    from lmgraph.optimizers.reflect import blame

    prog = chain3_program()
    nodes = ["first", "middle", "last"]

    def ex(feedback=None, outputs=None, ok=True, error=""):
        io = {"first": {"outputs": {"draft": "hot"}}, "middle": {"outputs": {"shout": "hot"}},
              "last": {"outputs": {"answer": "hot"}}}
        io.update(outputs or {})
        return {"ok": ok, "feedback": feedback, "nodes": io if ok else {}, "error": error, "score": 0.0}

    # naming an upstream step's output field (as words or as the identifier) accuses that step
    assert blame(prog, nodes, [ex("the shout is lowercase")]) == {"first": 0, "middle": 1, "last": 0}
    assert blame(prog, nodes, [ex("bad draft")])["first"] == 1
    # the last step's own outputs are where every mistake shows: naming them accuses nobody
    assert blame(prog, nodes, [ex("the answer is wrong")]) == {"first": 0, "middle": 0, "last": 0}
    # a failed run whose error names a node, and a node that returned nothing, accuse that node
    failed = ex(ok=False, error="ParseError: node 'last': no answer field")
    assert blame(prog, nodes, [failed])["last"] == 1
    assert blame(prog, nodes, [ex(outputs={"middle": {"outputs": {"shout": ""}}})])["middle"] == 1
    # one vote a row, shared among the nodes it accuses
    assert blame(prog, nodes, [ex("the draft and the shout")]) == {"first": 0.5, "middle": 0.5, "last": 0}
    # a node name under 3 characters is never read as mentioned (two_node_program's a and b)
    assert blame(two_node_program(), ["a", "b"], [ex("a word, b side")]) == {"a": 0, "b": 0}


@pytest.mark.parametrize("select", ["blame", "round_robin"])
def test_credit_assignment_reflects_on_the_step_the_feedback_points_at(select):
    rows = [{"word": w} for w in WORDS]
    c = lg.RunContext(lm=FunctionLM(chain3_fn), lms={"reflector": FunctionLM(chain3_reflector)}, cache=False)
    opt = Reflect(reflection_lm="reflector", minibatch_size=4, max_iterations=1, select=select)
    new, rep = opt.optimize(chain3_program(), rows[:12], chain3_metric, valset=rows[12:], ctx=c)
    first = next(x for x in rep.candidates if x.label.startswith("iteration 1:"))
    if select == "blame":  # the feedback names the middle step's output: one reflection fixes it
        assert first.label.startswith("iteration 1: middle of pool #0")
        assert "the step: chosen from the traces: 4 of the 4 rows that fell short point at it" in first.reason
        assert "PHRASE M" in new.module("middle").instructions and rep.best.mean == 1.0
    else:  # round robin starts at the first step, which the feedback does not concern
        assert first.label.startswith("iteration 1: first of pool #0") and "the step: round robin" in first.reason
        assert new == chain3_program()
    assert json.loads(json.dumps(opt.config()))["select"] == select


def test_select_is_checked_before_any_call():
    with pytest.raises(lg.DefinitionError, match="select must be 'blame' or 'round_robin'"):
        Reflect(select="random")


# ---- nested modules: Refine's generator is rewritten like a node

def refine_program():
    p = lg.Pipeline("refined")
    n = p.add(lg.Refine(lg.Predict("word -> answer", format="completion", repair=False), max_rounds=1),
              name="refine", word=p.input("word"))
    p.output(answer=n.answer)
    return p.build()


def refine_fn(req):
    """The judge always accepts; the generator uppercases only with the phrase in its instruction."""
    text = request_text(req)
    if "Verdict" in text:
        return " fine\nVerdict: yes"
    return task_fn(req)


def test_reflect_rewrites_a_nested_modules_instruction_from_its_own_calls():
    from lmgraph.optimizers.reflect import reflect_nodes

    prog = refine_program()
    assert reflect_nodes(prog, None) == ["refine.generator", "refine.judge"]
    assert reflect_nodes(prog, ["refine.generator"]) == ["refine.generator"]
    train, val = split()
    c = lg.RunContext(lm=FunctionLM(refine_fn), lms={"reflector": FunctionLM(reflector_fn)}, cache=False)
    new, rep = Reflect(reflection_lm="reflector", minibatch_size=4, max_iterations=2).optimize(
        prog, train, metric, valset=val, ctx=c)
    assert PHRASE in new.module("refine.generator").instructions.lower(), rep.table()
    assert new.module("refine.judge") == prog.module("refine.judge")
    assert rep.best.mean == 1.0 and rep.best.changes == {
        "refine.generator": {"instructions": "Read the word and answer in uppercase."}}
    # the reflector read the generator's own call: its inputs and outputs, not just the program's
    seen = request_text(c.lms["reflector"].calls[0])
    assert "Step: refine.generator (word -> answer)" in seen
    assert "Step inputs:\n  word: " in seen and "Step outputs:\n  answer: " in seen


def test_feedback_per_step_is_the_metrics_own_word_on_which_step_went_wrong():
    from lmgraph.evaluation.metrics import feedback_text, score_value
    from lmgraph.optimizers.reflect import blame

    assert feedback_text({"middle": "the shout is lowercase", "last": "", "first": None}) == \
        "[middle] the shout is lowercase"
    assert score_value((0.0, {"last": "copied its input"})) == (0.0, "[last] copied its input")
    assert feedback_text({}) is None and feedback_text("plain") == "plain"
    prog = chain3_program()
    nodes = ["first", "middle", "last"]
    ok = {"first": {"outputs": {"draft": "hot"}}, "middle": {"outputs": {"shout": "hot"}},
          "last": {"outputs": {"answer": "hot"}}}

    def ex(fb):
        return {"ok": True, "feedback": fb, "nodes": ok, "score": 0.0}

    # a tag accuses the step it names, the last one too; the words around it are not read for names
    assert blame(prog, nodes, [ex("[last] the answer dropped the shout")]) == {"first": 0, "middle": 0, "last": 1}
    assert blame(prog, nodes, [ex("[first] bad draft\n[middle] bad shout")]) == \
        {"first": 0.5, "middle": 0.5, "last": 0}
    # a tag naming no node is ignored, and the plain reading applies
    assert blame(prog, nodes, [ex("[judge] the shout is lowercase")])["middle"] == 1
    # nested paths: a tag may name the nested module
    assert blame(refine_program(), ["refine.generator", "refine.judge"],
                 [{"ok": True, "feedback": "[refine.generator] lowercase", "nodes": {}, "score": 0.0}]) == \
        {"refine.generator": 1, "refine.judge": 0}


def test_a_metric_with_feedback_per_step_steers_the_reflection_to_the_last_step():
    """The last step is never accused by plain feedback; a metric that tags it is taken at its word."""
    rows = [{"word": w} for w in WORDS]

    def fn(req):  # first and middle uppercase; last keeps the shout only with 'PHRASE L'
        text = request_text(req)
        if text.rstrip().endswith("Answer:"):
            shout = text.rsplit("Shout:", 1)[-1].split("\n", 1)[0].strip()
            return " " + (shout if "PHRASE L" in instruction_of(text) else shout.lower())
        if text.rstrip().endswith("Shout:"):
            return " " + text.rsplit("Draft:", 1)[-1].split("\n", 1)[0].strip().upper()
        return " " + word_of(text)

    def tagged(example, pred, trace=None):
        ok = pred["answer"] == example["word"].upper()
        return float(ok), None if ok else {"last": "it lowercased the shout it was given"}

    def reflector(req):
        text = request_text(req)
        return "PHRASE L: copy the shout as it is." if "Step: last (" in text else "Copy the input."

    c = lg.RunContext(lm=FunctionLM(fn), lms={"reflector": FunctionLM(reflector)}, cache=False)
    new, rep = Reflect(reflection_lm="reflector", minibatch_size=4, max_iterations=1).optimize(
        chain3_program(), rows[:12], tagged, valset=rows[12:], ctx=c)
    first = next(x for x in rep.candidates if x.label.startswith("iteration 1:"))
    assert first.label.startswith("iteration 1: last of pool #0"), first.label
    assert "PHRASE L" in new.module("last").instructions and rep.best.mean == 1.0
    assert "[last] it lowercased the shout" in request_text(c.lms["reflector"].calls[0])
