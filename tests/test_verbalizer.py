"""Label verbalizers (Predict(verbalizer=...), Compile(verbalize=...)) with scripted fake models."""

from __future__ import annotations

import enum
import json
import random
import re

import pytest

import lmgraph as lg
from lmgraph.evaluation import label_accuracy
from lmgraph.lm.base import LMResponse
from lmgraph.modules.verbalizer import plain_words
from lmgraph.optimizers.auto import Compile
from lmgraph.testing import FunctionLM, request_text

SIG = "text -> intent: Literal['card_arrival', 'lost_or_stolen_card']"
WORDS = {"card_arrival": "card arrival", "lost_or_stolen_card": "lost card"}


def one_node(module: lg.Predict) -> lg.Program:
    p = lg.Pipeline("verbal")
    x = p.input("text")
    n = p.add(module, name="classify", text=x)
    p.output(intent=n.intent)
    return p.build()


def _last_text(text: str) -> str:
    return re.findall(r"Text: (.*)", text)[-1]


def word_reader(request):
    """Answers with the option the prompt lists that shares a word with the text (else the first)."""
    text = request_text(request)
    listed = re.search(r"one of: (.*)", text)
    options = [o.strip() for o in listed.group(1).split(",")] if listed else []
    if request.choices:
        options = [c.strip() for c in request.choices]
    words = set(_last_text(text).lower().split())
    answer = next((o for o in options if set(re.split(r"[ _]", o.lower())) & words), options[0])
    if request.choices:
        return LMResponse(text=f" {answer}", logprobs=[{"choice": c, "logprob": 0.0 if c.strip() == answer else -4.0,
                                                        "tokens": 1} for c in request.choices])
    if request.json_schema is not None:
        return json.dumps({"intent": answer})
    return f"Intent: {answer}" if request.prompt is not None else answer


@pytest.mark.parametrize("fmt", ["completion", "chat", "json"])
def test_the_model_sees_the_words_and_the_program_gets_the_labels(fmt):
    seen = []

    def fn(request):
        seen.append(request)
        return word_reader(request)

    prog = one_node(lg.Predict(SIG, format=fmt, verbalizer=WORDS,
                               demos=[{"text": "where is my card", "intent": "card_arrival"}]))
    out = prog.run_sync(lg.RunContext(lm=FunctionLM(fn), cache=False), text="I lost it")
    assert out["intent"] == "lost_or_stolen_card"
    text = request_text(seen[-1])
    assert "card arrival" in text and "lost card" in text  # options and the demo's answer, as words
    assert "card_arrival" not in text and "lost_or_stolen_card" not in text
    if fmt == "json":
        schema = json.dumps(seen[-1].json_schema)
        assert '"lost card"' in schema and "lost_or_stolen_card" not in schema


def test_scoring_ranks_the_words_and_returns_the_label():
    seen = []

    def fn(request):
        seen.append(request)
        return word_reader(request)

    prog = one_node(lg.Predict(SIG, decode="score", verbalizer=WORDS))
    out = prog.run_sync(lg.RunContext(lm=FunctionLM(fn), cache=False), text="when will the card arrival be")
    assert out["intent"] == "card_arrival"
    assert seen[-1].choices == (" card arrival", " lost card")


def test_int_and_enum_labels_come_back_typed():
    class Mood(enum.Enum):
        NEG = "n"
        POS = "p"

    reply = {"answer": "positive"}
    ctx = lg.RunContext(lm=FunctionLM(lambda r: f"Label: {reply['answer']}"), cache=False)
    p = lg.Pipeline("ints")
    x = p.input("text")
    n = p.add(lg.Predict("text -> label: Literal[0, 1]", verbalizer={0: "negative", "1": "positive"}), name="c", text=x)
    p.output(label=n.label)
    assert p.build().run_sync(ctx, text="ok")["label"] == 1
    p = lg.Pipeline("enum")
    x = p.input("text")
    n = p.add(lg.Predict("text -> label: Mood", types={"Mood": Mood},
                         verbalizer={Mood.NEG: "negative", "p": "positive"}), name="c", text=x)
    p.output(label=n.label)
    reply["answer"] = "negative"
    assert p.build().run_sync(ctx, text="ok")["label"] is Mood.NEG


@pytest.mark.parametrize(("sig", "verbalizer", "says"), [
    (SIG, {"card": "card"}, "is not an option of 'intent'"),
    (SIG, {"card_arrival": "Lost or stolen card"}, "as the same word"),
    (SIG, {"card_arrival": "  "}, "must be non-empty text"),
    (SIG, "card arrival", "must map labels to words"),
    ("text -> intent: str", {"a": "b"}, "exactly one Literal/Enum output"),
    ("text -> a: Literal['x', 'y'], b: Literal['u', 'v']", {"x": "ex"}, "exactly one Literal/Enum output"),
])
def test_a_bad_verbalizer_is_refused_with_the_fix(sig, verbalizer, says):
    with pytest.raises(lg.DefinitionError, match=re.escape(says)) as e:
        lg.Predict(sig, verbalizer=verbalizer)
    assert e.value.fix


def test_saved_loaded_replaced_and_in_the_parameter_tree(tmp_path):
    plain = one_node(lg.Predict(SIG))
    assert "verbalizer" not in json.dumps(plain.to_dict())  # files saved before verbalizers keep their bytes
    prog = one_node(lg.Predict(SIG, verbalizer=WORDS))
    params = dict(prog.named_parameters())
    assert params["classify.verbalizer"].value == ({"label": "card_arrival", "word": "card arrival"},
                                                  {"label": "lost_or_stolen_card", "word": "lost card"})
    path = tmp_path / "p.json"
    prog.save(path)
    loaded = lg.Program.load(path)
    assert loaded.content_hash() == prog.content_hash() != plain.content_hash()
    assert loaded.module("classify").verbalizer == prog.module("classify").verbalizer
    again = plain.with_parameters({"classify.verbalizer": WORDS})
    assert again.content_hash() == prog.content_hash()
    with pytest.raises(lg.DefinitionError, match="classify.verbalizer|verbalizer"):
        plain.with_parameters({"classify.verbalizer": {"nope": "x"}})
    assert "2 labels verbalized" in prog.module("classify").describe()


def test_plain_words_from_identifier_labels():
    assert plain_words(["card_arrival", "getSpareCard", "top-up"]) == {
        "card_arrival": "card arrival", "getSpareCard": "get spare card", "top-up": "top up"}
    assert plain_words(["negative", "positive"]) == {}  # already words
    assert plain_words([0, 1]) == {}
    assert plain_words(["a_b", "a-b"]) == {}  # would read the same: left alone


# ---------------------------------------------------------------------------- the compile lever

CODES = {"good": "pos_sentiment", "great": "pos_sentiment", "fine": "pos_sentiment", "bad": "neg_sentiment",
         "awful": "neg_sentiment", "poor": "neg_sentiment"}
MEANING = {"pos_sentiment": "positive", "neg_sentiment": "negative"}


def code_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"sentence": f"a {w} film number {i}", "label": CODES[w]}
            for i, w in enumerate(rng.choice(sorted(CODES)) for _ in range(n))]


def code_program() -> lg.Program:
    p = lg.Pipeline("codes")
    s = p.input("sentence")
    node = p.add(lg.Predict("sentence -> label: Literal['neg_sentiment', 'pos_sentiment']", format="completion",
                            max_tokens=4), name="classify", sentence=s)
    p.output(label=node.label)
    return p.build()


def reads_words_only(request):
    """Right when the options are shown as plain words; with the codes, always the first option."""
    text = request_text(request)
    sentence = re.findall(r"Sentence: (.*)", text)[-1]
    truth = next(v for k, v in CODES.items() if f" {k} " in f" {sentence} ")
    listed = re.search(r"one of: (.*)", text).group(1)
    answer = truth.replace("_", " ") if "pos sentiment" in listed else "neg_sentiment"
    return f"Label: {answer}" if request.prompt is not None else answer


def test_compile_tries_plain_words_only_when_asked_and_finds_them():
    ctx = lg.RunContext(lm=FunctionLM(reads_words_only), cache=False)
    data = code_rows(60)
    compiled, report = Compile(decodes=(), formats=("completion",), verbalize=True).optimize(
        code_program(), data, label_accuracy(), budget=lg.Budget(max_calls=700), ctx=ctx)
    assert any("verbalized labels" in c.label for c in report.candidates)
    assert compiled.module("classify").verbalizer, report.table()
    assert report.best.status == "accepted" and "verbalized labels" in report.best.label
    assert report.config["verbalize"] is True
    off = Compile(decodes=(), formats=("completion",))
    assert not any("verbalized" in s.label for s in off._spec_skeleton(code_program(), data, ctx))
    assert "verbalize" not in off.config()  # the default keeps earlier checkpoints' fingerprints


def test_compile_with_the_users_words_and_bad_ones_fail_before_any_call():
    calls = []

    def fn(request):
        calls.append(request)
        return reads_words_only(request)

    ctx = lg.RunContext(lm=FunctionLM(fn), cache=False)
    mine = Compile(decodes=(), verbalize={"classify": MEANING})
    specs = mine._spec_skeleton(code_program(), code_rows(20), ctx)
    verbal = [s for s in specs if "verbal" in s.levers]
    assert verbal and all(s.params["classify"]["verbalizer"] == MEANING for s in verbal)
    with_instr = next(s for s in verbal if "instr" in s.levers)
    assert "exactly one of: negative, positive" in with_instr.params["classify"]["instructions"]
    for bad, says in (({"nope": MEANING}, "names node 'nope'"), ({"classify": {"x": "y"}}, "not an option")):
        with pytest.raises(lg.DefinitionError, match=says):
            Compile(verbalize=bad).optimize(code_program(), code_rows(20), label_accuracy(),
                                            budget=lg.Budget(max_calls=100), ctx=ctx)
    assert not calls
    # a node whose labels are words already gets no plain-word lever
    p = lg.Pipeline("words")
    s = p.input("sentence")
    n = p.add(lg.Predict("sentence -> label: Literal['negative', 'positive']"), name="classify", sentence=s)
    p.output(label=n.label)
    specs = Compile(verbalize=True)._spec_skeleton(p.build(), code_rows(20), ctx)
    assert not [s for s in specs if "verbal" in s.levers]


def test_preview_shows_the_words():
    prog = one_node(lg.Predict(SIG, verbalizer=WORDS))
    shown = str(prog.prompts(text="where is it"))
    assert "card arrival" in shown and "card_arrival" not in shown


def test_compile_takes_enum_labels_in_the_users_words():
    class Mood(enum.Enum):
        NEG = "neg_mood"
        POS = "pos_mood"

    p = lg.Pipeline("enum")
    x = p.input("text")
    n = p.add(lg.Predict("text -> label: Mood", types={"Mood": Mood}), name="c", text=x)
    p.output(label=n.label)
    data = [{"text": f"t{i}", "label": "neg_mood" if i % 2 else "pos_mood"} for i in range(20)]
    ctx = lg.RunContext(lm=FunctionLM(lambda r: "Label: negative"), cache=False)
    opt = Compile(decodes=(), verbalize={"c": {Mood.NEG: "negative", Mood.POS: "positive"}})
    assert opt.config()["verbalize"] == {"c": {"neg_mood": "negative", "pos_mood": "positive"}}
    _, report = opt.optimize(p.build(), data, label_accuracy(), budget=lg.Budget(max_calls=200), ctx=ctx)
    assert json.dumps(report.to_dict(timing=False))  # the config (and the checkpoint fingerprint) is JSON
    assert any("verbalized labels" in c.label for c in report.candidates)


def test_a_copy_with_other_words_shows_its_own_words():
    seen = []

    def fn(request):
        seen.append(request_text(request))
        return "Intent: lost card"

    ctx = lg.RunContext(lm=FunctionLM(fn), cache=False)
    prog = one_node(lg.Predict(SIG, verbalizer=WORDS))
    assert prog.run_sync(ctx, text="x")["intent"] == "lost_or_stolen_card"
    assert "one of: card arrival, lost card" in seen[-1]
    other = prog.with_parameters({"classify.verbalizer": {"card_arrival": "arrival", "lost_or_stolen_card": "lost"}})
    fn_answer = other.run_sync(lg.RunContext(lm=FunctionLM(lambda r: "Intent: lost"), cache=False), text="x")
    assert fn_answer["intent"] == "lost_or_stolen_card"


# ---- label words a proposer model writes (Compile(verbalize=True, proposer_lm=...))

OPAQUE = {"good": "C1", "bad": "C2"}  # codes no identifier rule turns into words


def opaque_program() -> lg.Program:
    p = lg.Pipeline("opaque")
    s = p.input("sentence")
    node = p.add(lg.Predict("sentence -> label: Literal['C1', 'C2']", format="completion", max_tokens=4),
                 name="classify", sentence=s)
    p.output(label=node.label)
    return p.build()


def opaque_rows(n: int) -> list[dict]:
    rng = random.Random(1)
    return [{"sentence": f"a {w} film number {i}", "label": OPAQUE[w]}
            for i, w in enumerate(rng.choice(sorted(OPAQUE)) for _ in range(n))]


def reads_names_only(request):
    """Right when the options are shown as 'pleasant'/'unpleasant'; with the codes, always C1."""
    text = request_text(request)
    sentence = re.findall(r"Sentence: (.*)", text)[-1]
    listed = re.search(r"one of: (.*)", text).group(1)
    if "unpleasant" in listed:
        answer = "pleasant" if " good " in f" {sentence} " else "unpleasant"
    else:
        answer = "C1"
    return f"Label: {answer}" if request.prompt is not None else answer


def test_a_proposer_model_names_opaque_labels_and_the_compile_uses_its_words():
    seen = []

    def writer(request):
        text = request_text(request)
        seen.append(text)
        names = "1. C1: pleasant\n2. C2: unpleasant."
        return f"Names: {names}" if request.prompt is not None else names

    assert plain_words(["C1", "C2"]) == {}  # without a proposer there is nothing to verbalize
    ctx = lg.RunContext(lm=FunctionLM(reads_names_only), lms={"writer": FunctionLM(writer)}, cache=False)
    opt = Compile(decodes=(), formats=("completion",), verbalize=True, proposer_lm="writer", num_proposals=0,
                  models=())  # the writer is not raced as the task's model here
    compiled, report = opt.optimize(opaque_program(), opaque_rows(60), label_accuracy(),
                                    budget=lg.Budget(max_calls=700), ctx=ctx)
    assert len(seen) == 1  # one call for the node's labels
    assert "- C1" in seen[0] and "C1 <- Sentence: a good film" in seen[0] and "C2 <- Sentence: a bad film" in seen[0]
    assert report.data["label_words"] == {"classify": {"C1": "pleasant", "C2": "unpleasant"}}
    assert any("named 2 of 2 labels" in n for n in report.notes)
    assert compiled.module("classify").verbalizer == ({"label": "C1", "word": "pleasant"},
                                                      {"label": "C2", "word": "unpleasant"}), report.table()
    assert report.best.status == "accepted"
    # without verbalize=True the proposer writes no label words
    seen.clear()
    off = Compile(decodes=(), formats=("completion",), proposer_lm="writer", num_proposals=0, models=())
    unchanged, rep = off.optimize(opaque_program(), opaque_rows(60), label_accuracy(),
                                  budget=lg.Budget(max_calls=300), ctx=ctx)
    assert not seen and "label_words" not in rep.data and not unchanged.module("classify").verbalizer


def test_unusable_label_words_are_reported_and_leave_no_verbalized_candidate():
    ctx = lg.RunContext(lm=FunctionLM(reads_names_only),
                        lms={"writer": FunctionLM(lambda r: "Names: I cannot help with that.")}, cache=False)
    opt = Compile(decodes=(), formats=("completion",), verbalize=True, proposer_lm="writer", num_proposals=0,
                  models=())
    _, report = opt.optimize(opaque_program(), opaque_rows(30), label_accuracy(),
                             budget=lg.Budget(max_calls=200), ctx=ctx)
    assert any("label words were unusable" in n for n in report.notes)
    assert not any("verbalized" in c.label for c in report.candidates)


def test_parse_label_words_keeps_a_valid_verbalizer():
    from lmgraph.optimizers.proposals import parse_label_words
    from lmgraph.signatures import Signature

    sig = Signature.parse("text -> intent: Literal['card_arrival', 'lost_or_stolen_card', 'top_up', 'C4']")
    text = ("Here are the names:\n"
            "- card_arrival: `card arrival`\n"
            "* lost or stolen card -> lost card.\n"
            "3) top_up: lost card\n"                       # a name another label has: dropped
            "C4: C4\n"                                    # its own label: nothing to show
            "unknown: whatever\n"                          # not a label
            "card_arrival: a second name\n"                # a label named twice: the first stands
            "top_up = " + "a very long sentence that explains what topping up the card means in detail")
    assert parse_label_words(text, sig) == {"card_arrival": "card arrival", "lost_or_stolen_card": "lost card"}
    assert parse_label_words(None, sig) == {} and parse_label_words("no lines here", sig) == {}


def test_the_dry_run_counts_the_proposer_calls_within_the_budget():
    ctx = lg.RunContext(lm=FunctionLM(reads_names_only), lms={"writer": FunctionLM(lambda r: "x")}, cache=False)
    budget = lg.Budget(max_calls=300)
    opt = Compile(verbalize=True, proposer_lm="writer", num_proposals=2, models=())
    est = opt.dry_run(opaque_program(), opaque_rows(60), budget=budget, ctx=ctx)
    assert est.breakdown["proposals"] == 3 and est.calls <= 300  # 2 instructions + the label words
    plain = Compile(models=()).dry_run(opaque_program(), opaque_rows(60), budget=budget, ctx=ctx)
    assert "proposals" not in plain.breakdown and plain.calls <= 300
    assert est.breakdown["race"] <= plain.breakdown["race"]  # the proposals come out of the race's share
