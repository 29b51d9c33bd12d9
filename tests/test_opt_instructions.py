"""InstructionSearch (APE): proposals from pairs, successive halving, confirmation, budget, determinism."""

from __future__ import annotations

import json

import pytest

import lmgraph as lg
from lmgraph.cache import MemoryCache
from lmgraph.optimizers import InstructionSearch, save_artifact
from lmgraph.optimizers.instructions import clean_instruction, halving_cost
from lmgraph.testing import FunctionLM, request_text

ANTONYMS = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "light": "dark", "old": "new",
            "happy": "sad", "early": "late", "open": "closed", "full": "empty", "hard": "soft",
            "high": "low", "long": "short", "rich": "poor", "strong": "weak", "wet": "dry"}
WORDS = sorted(ANTONYMS)
ROWS = [{"word": w, "antonym": ANTONYMS[w]} for w in WORDS] * 3  # 48 rows
ROWS = [dict(r, i=i) for i, r in enumerate(ROWS)]

PROPOSALS = ["Repeat the word.", "Write a word that rhymes with the word.", "Write the opposite of the word.",
             "Translate the word into French.", "Spell the word backwards.", "Repeat the word."]
GOOD = "Write the opposite of the word."


def metric(example, pred, trace=None):
    return float(pred["antonym"] == example["antonym"])


def last_word(text: str) -> str:
    return text.rsplit("Word:", 1)[-1].split("\n", 1)[0].strip()


def task_fn(req):
    text = request_text(req)
    w = last_word(text)
    return ANTONYMS.get(w, w) if "opposite of" in text else w


def proposer_fn(req):
    text = request_text(req)
    if "Generate a variation" in text:
        ins = text.rsplit("Instruction:", 1)[-1].strip().splitlines()[0]
        return "Give the opposite of the word." if "opposite of" in ins else "Say the word once more."
    return PROPOSALS[req.rollout % len(PROPOSALS)]


def program():
    p = lg.Pipeline("antonyms")
    w = p.input("word")
    n = p.add(lg.Predict("word -> antonym", format="completion"), name="flip", word=w)
    p.output(antonym=n.antonym)
    return p.build()


def ctx(**kw):
    return lg.RunContext(lm=FunctionLM(task_fn), lms={"proposer": FunctionLM(proposer_fn)}, cache=False, **kw)


def split():
    return ROWS[:16], ROWS[16:]


def test_finds_the_opposite_instruction():
    train, val = split()
    c = ctx()
    opt = InstructionSearch(6, proposer_lm="proposer", minibatch_size=4)
    new, rep = opt.optimize(program(), train, metric, valset=val, ctx=c)
    assert new.module("flip").instructions == GOOD
    assert rep.best.mean == 1.0 and rep.baseline.mean == 0.0
    assert rep.stopped is None
    # every arm is in the report with its minibatch scores and a reason
    arms = [c for c in rep.candidates if "instruction arm" in c.label
            and c.status in ("advanced", "dropped", "incumbent", "stopped")]
    assert len(arms) == 6  # current + 5 distinct proposals ("Repeat the word." twice -> once)
    assert all(a.scores and a.reason for a in arms)
    assert any("dropped in round" in a.reason for a in arms)
    assert any("confirmed as" in a.reason for a in arms)
    # the proposer saw the node's input/output pairs (labelled rows map onto this node)
    prop_lm = c.lms["proposer"]
    assert any("Word: " in request_text(r) and "Antonym: " in request_text(r) for r in prop_lm.calls)
    assert {r.rollout for r in prop_lm.calls} == set(range(6))
    assert all(r.temperature == 0.7 for r in prop_lm.calls)
    json.dumps(opt.config())


def test_halving_spends_less_than_full_evaluation():
    train, val = split()
    opt = InstructionSearch(6, proposer_lm="proposer", minibatch_size=4)
    _, rep = opt.optimize(program(), train, metric, valset=val, ctx=ctx())
    n_val = len(val)
    proposals = 6
    full = n_val + 5 * n_val + proposals  # baseline + every distinct proposal on the full valset
    assert rep.spent["calls"] < full
    # the current instruction costs nothing in the race (its scores come from the baseline)
    assert sum(c.calls for c in rep.candidates) + proposals == rep.spent["calls"]


def test_dry_run_bounds_the_spend():
    train, val = split()
    for kw in ({"minibatch_size": 4}, {"minibatch_size": 4, "resample_top": 2}, {"minibatch_size": 64}):
        opt = InstructionSearch(6, proposer_lm="proposer", **kw)
        est = opt.dry_run(program(), train, val)
        _, rep = opt.optimize(program(), train, metric, valset=val, ctx=ctx())
        assert est.calls >= rep.spent["calls"], (kw, est, rep.spent)
        assert "proposals" in est.breakdown and "bootstrap" not in est.breakdown


def test_resampling_adds_variants():
    train, val = split()
    opt = InstructionSearch(6, proposer_lm="proposer", minibatch_size=4, resample_top=2)
    new, rep = opt.optimize(program(), train, metric, valset=val, ctx=ctx())
    labels = [c.label for c in rep.candidates]
    assert any("variant of" in lab for lab in labels)
    assert "opposite of" in new.module("flip").instructions


def test_small_valset_evaluates_every_arm_fully():
    train, val = ROWS[:16], ROWS[16:22]
    opt = InstructionSearch(3, proposer_lm="proposer", minibatch_size=8)
    new, rep = opt.optimize(program(), train, metric, valset=val, ctx=ctx())
    assert new.module("flip").instructions == GOOD
    full = [c for c in rep.candidates if c.status in ("accepted", "rejected")]
    assert len(full) == 3 and all(len(c.scores) == len(val) for c in full)


def test_budget_too_small_stops_cleanly():
    train, val = split()
    prog = program()
    opt = InstructionSearch(6, proposer_lm="proposer", minibatch_size=4)
    new, rep = opt.optimize(prog, train, metric, valset=val, ctx=ctx(), budget=lg.Budget(max_calls=len(val) + 12))
    assert rep.stopped
    assert rep.spent["calls"] <= len(val) + 12
    assert new == prog  # nothing confirmed: the program as given
    assert new.run_sync(ctx(), word="hot").antonym == "hot"


def test_proposer_defaults_to_task_model_and_bootstraps_pairs():
    """A 2-step pipeline whose first node maps onto no row key: pairs come from bootstrapped runs."""
    def fn(req):
        text = request_text(req)
        if "I gave a friend" in text:
            return PROPOSALS[req.rollout % len(PROPOSALS)]
        if text.rstrip().endswith("Antonym:"):  # second node; right without the instruction for a few words
            w = text.rsplit("Cleaned:", 1)[-1].split("\n", 1)[0].strip()
            return ANTONYMS.get(w, w) if "opposite of" in text or w[0] in "abcdef" else w
        return last_word(text)  # first node: clean the word
    p = lg.Pipeline("two")
    w = p.input("word")
    a = p.add(lg.Predict("word -> cleaned", format="completion"), name="clean", word=w)
    b = p.add(lg.Predict("cleaned -> antonym", format="completion"), name="flip", cleaned=a.cleaned)
    p.output(antonym=b.antonym)
    prog = p.build()
    c = lg.RunContext(lm=FunctionLM(fn), cache=False)
    train, val = split()
    new, rep = InstructionSearch(6, minibatch_size=4, nodes=["flip"]).optimize(prog, train, metric, valset=val,
                                                                                ctx=c)
    assert new.module("flip").instructions == GOOD
    assert new.module("clean") == prog.module("clean")
    assert rep.baseline.mean == 0.25 and rep.best.mean == 1.0
    assert any("flip:" in n and "successful bootstrapped runs" in n for n in rep.notes)


def test_same_seed_same_artifact(tmp_path):
    train, val = split()
    outs = []
    for i in range(2):
        c = lg.RunContext(lm=FunctionLM(task_fn), lms={"proposer": FunctionLM(proposer_fn)}, cache=MemoryCache())
        new, rep = InstructionSearch(6, proposer_lm="proposer", minibatch_size=4, resample_top=1).optimize(
            program(), train, metric, valset=val, ctx=c, seed=3)
        outs.append(save_artifact(tmp_path / f"a{i}.json", new, rep).read_bytes())
    assert outs[0] == outs[1]


def test_checkpoint_replays_proposals(tmp_path):
    train, val = split()
    ck = tmp_path / "ck.json"
    c1 = ctx()
    opt = InstructionSearch(6, proposer_lm="proposer", minibatch_size=4, checkpoint=ck)
    new1, rep1 = opt.optimize(program(), train, metric, valset=val, ctx=c1)
    c2 = ctx()
    new2, rep2 = opt.optimize(program(), train, metric, valset=val, ctx=c2)
    assert new1 == new2 and rep1.spent == rep2.spent
    assert c2.lms["proposer"].calls == [] and c2.lm.calls == []


def test_definition_errors_before_any_call():
    c = ctx()
    with pytest.raises(lg.DefinitionError, match="no proposer model"):
        InstructionSearch(proposer_lm="nope").optimize(program(), ROWS, metric, ctx=c)
    with pytest.raises(lg.DefinitionError, match="no node"):
        InstructionSearch(nodes=["missing"]).optimize(program(), ROWS, metric, ctx=c)
    assert c.lm.calls == []


def test_clean_and_schedule_helpers():
    assert clean_instruction('Instruction: "Write the opposite."') == "Write the opposite."
    assert clean_instruction("  ") is None
    assert clean_instruction("x" * 50, max_chars=10) is None
    mini, full = halving_cost(6, 0, 32, 4, 1)
    assert mini == 6 * 4 + 3 * 4 + 2 * 8 and full == 32
    assert halving_cost(4, 1, 6, 8, 1) == (0, 30)


def test_budget_spent_while_proposing():
    train, val = split()
    prog = program()
    new, rep = InstructionSearch(6, proposer_lm="proposer").optimize(prog, train, metric, valset=val, ctx=ctx(),
                                                                     budget=lg.Budget(max_calls=len(val) + 3))
    assert rep.stopped and "proposing" in rep.stopped
    assert rep.spent["calls"] == len(val) + 3 and new == prog


def test_clean_strips_an_echo_of_the_prompt():
    assert clean_instruction("Write the instruction the friend was given: use the opposite.") == "use the opposite."
    assert clean_instruction("Note: be brief.") == "Note: be brief."
    assert clean_instruction("one or two plain sentences addressed to the friend, nothing else.") is None


def test_proposals_differ_even_when_the_model_ignores_rollouts():
    """Each proposal sees the pairs in another order, so a greedy proposer still varies."""
    def greedy(req):
        text = request_text(req)
        if "I gave a friend" in text:
            first = text.split("Word:", 1)[1].split("\n", 1)[0].strip()
            return f"Start from {first}." if first != "fast" else GOOD
        return task_fn(req)
    c = lg.RunContext(lm=FunctionLM(greedy), cache=False)
    train, val = split()
    _new, rep = InstructionSearch(5, minibatch_size=4, num_examples=5).optimize(program(), train, metric,
                                                                              valset=val, ctx=c, seed=1)
    assert any("5 distinct instructions" in n for n in rep.notes)
