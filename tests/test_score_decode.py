"""Score decoding: a Literal/Enum output picked by log-probability instead of generated.

Unit tests use FunctionLM. A FunctionLM answers a scoring request (``request.choices`` set) by
returning an ``LMResponse`` whose ``text`` is one of ``request.choices`` and whose ``logprobs``
lists ``{"choice", "logprob", "tokens"}`` per choice -- see :func:`scored`. Returning plain text
also works: Predict then matches it against the options like a generated answer.

Integration tests (marker ``integration``) score with the real embedded SmolLM2 model.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
from typing import Any

import pytest

import lmgraph as lg
from lmgraph.cache import MemoryCache, cache_key
from lmgraph.errors import DefinitionError, LMError, OutputParseError
from lmgraph.lm.base import LMRequest, LMResponse, Message, Usage
from lmgraph.testing import FunctionLM

SIG = "sentence -> sentiment: Literal['negative', 'positive']"
INSTR = "Classify the sentiment of the movie review."


def scored(request: LMRequest, logprobs: dict[str, float]) -> LMResponse:
    """What a scoring backend returns: the best choice as text, every choice's score."""
    assert request.choices is not None and request.prompt is not None
    items = [{"choice": c, "logprob": logprobs[c.strip()], "tokens": 1} for c in request.choices]
    best = max(items, key=lambda item: item["logprob"])  # max keeps the first of equal scores
    return LMResponse(text=best["choice"], logprobs=items, model="fake", finish_reason="score",
                      usage=Usage(prompt_tokens=len(request.prompt.split()),
                                  completion_tokens=len(items)))


def by_keyword(request: LMRequest) -> LMResponse:
    sentence = request.prompt.rsplit("Sentence:", 1)[1]
    good = "good" in sentence
    return scored(request, {"positive": -0.1 if good else -3.0, "negative": -3.0 if good else -0.1})


def one_node(module: lg.Module) -> lg.Program:
    p = lg.Pipeline("classify")
    s = p.input("sentence")
    node = p.add(module, name="classify", sentence=s)
    p.output(label=node.sentiment)
    return p.build()


def ctx(lm: Any, **kw: Any) -> lg.RunContext:
    kw.setdefault("cache", False)
    return lg.RunContext(lm=lm, **kw)


# --------------------------------------------------------------------------- the request


def test_request_choices_validation_and_cache_key():
    r = LMRequest(prompt="Sentiment:", choices=[" negative", " positive"])  # type: ignore[arg-type]
    assert r.choices == (" negative", " positive")  # stored as a tuple
    assert r.canonical()["choices"] == [" negative", " positive"]
    plain = LMRequest(prompt="Sentiment:")
    assert "choices" not in plain.canonical()  # keys of generation requests did not change
    assert cache_key({"m": 1}, plain) != cache_key({"m": 1}, r)
    assert cache_key({"m": 1}, r) != cache_key({"m": 1}, r.replace(choices=(" positive", " negative")))
    with pytest.raises(DefinitionError, match="raw prompt"):
        LMRequest(messages=(Message(role="user", content="hi"),), choices=(" a",))
    with pytest.raises(DefinitionError, match="empty"):
        LMRequest(prompt="x", choices=())
    with pytest.raises(DefinitionError, match="empty string"):
        LMRequest(prompt="x", choices=(" a", ""))
    with pytest.raises(DefinitionError, match="repeats"):
        LMRequest(prompt="x", choices=(" a", " a"))
    with pytest.raises(DefinitionError, match="sequence of strings"):
        LMRequest(prompt="x", choices=" a")  # type: ignore[arg-type]


def test_litellm_refuses_scoring_before_importing_litellm():
    from lmgraph.lm.litellm import LiteLLM

    lm = LiteLLM("openai/local", api_base="http://127.0.0.1:9/v1")
    with pytest.raises(LMError, match="scoring") as info:
        asyncio.run(lm.complete(LMRequest(prompt="x", choices=(" a", " b"))))
    assert info.value.retryable is False  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- Predict(decode="score")


def test_score_mode_sends_choices_and_returns_the_label():
    lm = FunctionLM(by_keyword)
    prog = one_node(lg.Predict(SIG, instructions=INSTR, decode="score"))
    out = prog.run_sync(ctx(lm), sentence="a good film")
    assert out.label == "positive"
    assert prog.run_sync(ctx(lm), sentence="a dull film").label == "negative"
    req = lm.calls[0]
    assert req.choices == (" negative", " positive")
    assert req.messages is None and req.prompt.startswith(INSTR)
    assert req.prompt.endswith("Sentence: a good film\nSentiment:")
    assert req.stop == () and req.temperature == 0.0  # sampling settings play no part
    trace = out.trace.node("classify")
    assert trace.format == "completion"
    assert trace.meta["scores"] == {"negative": -3.0, "positive": -0.1}
    call = trace.calls[0].to_dict()
    assert call["params"]["choices"] == [" negative", " positive"]
    assert call["scores"][1] == {"choice": " positive", "logprob": -0.1, "tokens": 1}
    assert call["completion"] == " positive"


def test_score_mode_auto_format_is_completion_even_under_a_chat_default():
    lm = FunctionLM(by_keyword)
    prog = one_node(lg.Predict(SIG, decode="score"))  # format="auto"
    out = prog.run_sync(ctx(lm, default_format="chat"), sentence="good")
    assert out.label == "positive" and lm.calls[0].prompt is not None


def test_demos_render_in_the_scored_prompt():
    lm = FunctionLM(by_keyword)
    demos = [{"sentence": "loved it", "sentiment": "positive"},
             {"sentence": "hated it", "sentiment": "negative"}]
    prog = one_node(lg.Predict(SIG, instructions=INSTR, demos=demos, decode="score"))
    prog.run_sync(ctx(lm), sentence="good")
    prompt = lm.calls[0].prompt
    assert "Sentence: loved it\nSentiment: positive\n\nSentence: hated it\nSentiment: negative" in prompt
    assert prompt.endswith("Sentence: good\nSentiment:")


def test_plain_text_answers_are_matched_and_bad_ones_fail_without_repair():
    lm = FunctionLM(lambda r: "Positive")  # a fake that ignores choices and answers text
    assert one_node(lg.Predict(SIG, decode="score")).run_sync(ctx(lm), sentence="x").label == "positive"
    bad = FunctionLM(lambda r: "no idea")
    with pytest.raises(OutputParseError, match="not one of the choices"):
        one_node(lg.Predict(SIG, decode="score")).run_sync(ctx(bad), sentence="x")
    assert len(bad.calls) == 1  # scoring never makes a repair call


def test_ties_go_to_the_first_choice_in_the_fake_and_the_contract():
    lm = FunctionLM(lambda r: scored(r, {"negative": -1.0, "positive": -1.0}))
    assert one_node(lg.Predict(SIG, decode="score")).run_sync(ctx(lm), sentence="x").label == "negative"


class Color(enum.Enum):
    RED = "red"
    DARK_BLUE = "dark blue"


def test_enum_and_numeric_outputs():
    lm = FunctionLM(lambda r: scored(r, {"red": -2.0, "dark blue": -0.5}))
    p = lg.Pipeline("colors")
    s = p.input("thing")
    n = p.add(lg.Predict("thing -> color: Color", types={"Color": Color}, decode="score"), name="c", thing=s)
    p.output(color=n.color)
    out = p.build().run_sync(ctx(lm), thing="the sea at night")
    assert out.color is Color.DARK_BLUE
    assert lm.calls[0].choices == (" red", " dark blue")

    nums = FunctionLM(lambda r: scored(r, {"1": -3.0, "2": -0.2, "3": -1.0}))
    p = lg.Pipeline("stars")
    s = p.input("review")
    n = p.add(lg.Predict("review -> stars: Literal[1, 2, 3]", decode="score"), name="s", review=s)
    p.output(stars=n.stars)
    assert p.build().run_sync(ctx(nums), review="meh").stars == 2


def test_sampling_settings_do_not_change_the_cache_key():
    cache = MemoryCache()
    lm = FunctionLM(by_keyword)
    a = one_node(lg.Predict(SIG, decode="score", temperature=0.0, max_tokens=4))
    b = one_node(lg.Predict(SIG, decode="score", temperature=0.7, max_tokens=64))
    c = ctx(lm, cache=cache)
    first = a.run_sync(c, sentence="good")
    second = b.run_sync(c, sentence="good")
    assert first.label == second.label == "positive"
    assert len(lm.calls) == 1  # the second answer came from the cache, scores and all
    hit = second.trace.node("classify")
    assert hit.calls[0].response.cached and hit.meta["scores"]["positive"] == -0.1


def test_config_round_trip_and_old_artifacts():
    m = lg.Predict(SIG, instructions=INSTR, format="completion", decode="score",
                   demos=[{"sentence": "fine", "sentiment": "positive"}])
    assert m.config()["decode"] == "score"
    assert "decode" in m.tunable and m.parameters()["decode"] == "score"
    prog = one_node(m)
    loaded = lg.Program.from_dict(json.loads(prog.to_json()))
    assert loaded.module("classify").decode == "score"
    assert loaded == prog and loaded.content_hash() == prog.content_hash()
    assert "score" in m.describe()
    # a generating Predict writes no "decode" key, so artifacts written before it load unchanged
    plain = lg.Predict(SIG)
    assert "decode" not in plain.config()
    old = dict(plain.to_dict())
    assert lg.Program.from_dict(json.loads(one_node(plain).to_json())).module("classify").decode == "generate"
    assert type(plain).from_config({k: v for k, v in old.items() if k != "kind"}, resources={},
                                   types=None).decode == "generate"
    # the optimizer-facing switch
    assert plain.replace(decode="score").decode == "score"
    assert m.replace(decode="generate").config().get("decode") is None


def test_construction_errors_name_the_fix():
    with pytest.raises(DefinitionError, match="Literal or an Enum") as info:
        lg.Predict("question -> answer", decode="score")
    assert info.value.fix and "Literal" in info.value.fix and info.value.field == "answer"
    with pytest.raises(DefinitionError, match="2 outputs"):
        lg.Predict("q -> label: Literal['a', 'b'], why", decode="score")
    with pytest.raises(DefinitionError, match="reasoning"):
        lg.ChainOfThought(SIG, decode="score")
    for fmt in ("chat", "json"):
        with pytest.raises(DefinitionError, match="cannot be scored") as info:
            lg.Predict(SIG, format=fmt, decode="score")
        assert "completion" in info.value.fix
    with pytest.raises(DefinitionError, match="unknown decode"):
        lg.Predict(SIG, decode="sample")
    with pytest.raises(DefinitionError, match="distinct"):
        lg.Predict("q -> label: Literal['a', ' a']", decode="score")
    with pytest.raises(DefinitionError, match="Literal or an Enum"):
        lg.Predict("q -> label: Optional[Literal['a', 'b']]", decode="score")
    # replace() checks the combination too
    with pytest.raises(DefinitionError, match="cannot be scored"):
        lg.Predict(SIG, decode="score").replace(format="chat")
    with pytest.raises(DefinitionError, match="Literal or an Enum"):
        lg.Predict("question -> answer").replace(decode="score")


def test_joint_search_skips_formats_a_scoring_node_cannot_use():
    from lmgraph.evaluation import label_accuracy
    from lmgraph.optimizers import JointSearch

    rows = [{"sentence": f"{'good' if i % 2 else 'bad'} film {i}", "label": "positive" if i % 2 else "negative"}
            for i in range(24)]
    lm = FunctionLM(by_keyword)
    opt = JointSearch(num_trials=4, num_instructions=0, num_demo_sets=1, max_demos=2, minibatch_size=4,
                      formats=("completion", "chat", "json"))
    new, rep = opt.optimize(one_node(lg.Predict(SIG, decode="score")), rows[:12], label_accuracy(),
                            valset=rows[12:], ctx=ctx(lm))
    assert new.module("classify").decode == "score"
    assert all(r.choices is not None for r in lm.calls)
    assert rep.best.mean == 1.0


# --------------------------------------------------------------------------- the real model

SENTENCES = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés.",
             "an utterly charming and hilarious film.", "it is a dull, lifeless mess.",
             "a masterpiece of quiet emotion.", "i walked out after twenty minutes."]


def _prompt(sentence: str) -> str:
    return f"{INSTR}\n\nSentence: {sentence}\nSentiment:"


@pytest.fixture(scope="module")
def real_lm():
    pytest.importorskip("llama_cpp")
    from lmgraph.lm.embedded import embedded_model_path
    from lmgraph.lm.llamacpp import LlamaCppLM

    try:
        embedded_model_path()
    except DefinitionError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"embedded model not installed: {exc}")
    model = LlamaCppLM(n_instances=2).load()
    yield model
    model.close()


def _score(lm: Any, prompt: str, choices: tuple[str, ...]) -> LMResponse:
    return asyncio.run(lm.complete(LMRequest(prompt=prompt, choices=choices)))


@pytest.mark.integration
def test_real_scores_are_finite_and_best_is_argmax(real_lm):
    choices = (" negative", " positive", " neutral", " very positive indeed")
    r = _score(real_lm, _prompt(SENTENCES[0]), choices)
    assert [item["choice"] for item in r.logprobs] == list(choices)
    lps = [item["logprob"] for item in r.logprobs]
    assert all(math.isfinite(lp) and lp < 0 for lp in lps)
    assert all(item["tokens"] >= 1 for item in r.logprobs) and r.logprobs[3]["tokens"] > 1
    assert r.text == choices[lps.index(max(lps))] == " positive"
    assert r.finish_reason == "score" and r.model == real_lm.identity()["model"]


@pytest.mark.integration
def test_real_prompt_tokens_counted_once(real_lm):
    prompt = _prompt(SENTENCES[1])
    r = _score(real_lm, prompt, (" negative", " positive", " neutral", " mixed feelings"))
    assert r.usage.prompt_tokens == real_lm.count_tokens(prompt)
    assert r.usage.completion_tokens == sum(item["tokens"] for item in r.logprobs)
    gen = asyncio.run(real_lm.complete(LMRequest(prompt=prompt, max_tokens=1)))
    assert gen.usage.prompt_tokens == r.usage.prompt_tokens


@pytest.mark.integration
def test_real_scores_agree_with_generation_logprobs(real_lm):
    """The scored log-prob of the greedy continuation equals what generation reports for it."""
    prompt = _prompt(SENTENCES[2])
    gen = asyncio.run(real_lm.complete(LMRequest(prompt=prompt, max_tokens=2, logprobs=True)))
    tokens = [e["token"] for e in gen.logprobs]  # " positive", "\n" (a third "\n" would merge)
    for n in (1, 2):  # one token (no evaluation past the prompt) and a two-token continuation
        choice = "".join(tokens[:n])
        expected = sum(e["logprob"] for e in gen.logprobs[:n])
        r = _score(real_lm, prompt, (choice,))
        assert r.logprobs[0]["tokens"] == n
        assert r.logprobs[0]["logprob"] == pytest.approx(expected, abs=2e-3)


@pytest.mark.integration
def test_real_scores_deterministic_across_runs_order_and_concurrency(real_lm):
    from lmgraph.lm.llamacpp import LlamaCppLM

    choices = (" negative", " positive", " so-so, honestly")
    seq = [_score(real_lm, _prompt(s), choices).logprobs for s in SENTENCES]
    again = [_score(real_lm, _prompt(s), choices).logprobs for s in reversed(SENTENCES)][::-1]
    assert again == seq  # bit-identical, whatever ran before

    async def together():
        reqs = [LMRequest(prompt=_prompt(s), choices=choices) for s in SENTENCES * 2]
        return await asyncio.gather(*(real_lm.complete(r) for r in reqs))

    conc = asyncio.run(together())
    assert [r.logprobs for r in conc] == seq * 2
    with LlamaCppLM(n_instances=1) as other:  # a fresh instance gives the same numbers
        assert _score(other, _prompt(SENTENCES[3]), choices).logprobs == seq[3]
    # generation on the same pooled instances is unaffected by scoring in between
    plain = LMRequest(prompt=_prompt(SENTENCES[4]), max_tokens=6)
    before = asyncio.run(real_lm.complete(plain)).text
    _score(real_lm, _prompt(SENTENCES[5]), choices)
    assert asyncio.run(real_lm.complete(plain)).text == before


@pytest.mark.integration
def test_real_context_overflow_is_a_clear_non_retryable_error(real_lm):
    long_prompt = "word " * 3000 + "\nSentiment:"
    with pytest.raises(LMError, match="context window") as info:
        _score(real_lm, long_prompt, (" negative", " positive"))
    assert info.value.retryable is False  # type: ignore[attr-defined]
    # the instance is usable afterwards
    assert _score(real_lm, _prompt(SENTENCES[0]), (" negative", " positive")).text == " positive"


@pytest.mark.integration
def test_real_predict_in_score_mode(real_lm):
    prog = one_node(lg.Predict(SIG, instructions=INSTR, format="completion", decode="score"))
    res = prog.batch_sync([{"sentence": s} for s in SENTENCES], ctx=ctx(real_lm))
    assert all(r.error is None for r in res)
    labels = [r.outputs["label"] for r in res]
    assert all(label in ("negative", "positive") for label in labels)
    assert labels[0] == "positive"


@pytest.mark.integration
def test_real_multi_token_scores_match_a_full_logits_reference(real_lm):
    """Each choice's total equals the sum read off a logits_all evaluation of prompt + choice."""
    import llama_cpp
    import numpy as np

    prompt = _prompt(SENTENCES[3])
    choices = (" negative", " LOC", " not good at all", " a waste of two hours of my life")
    r = _score(real_lm, prompt, choices)
    ref = llama_cpp.Llama(str(real_lm.model_path), n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    try:
        p_tokens = ref.tokenize(prompt.encode(), add_bos=True, special=True)
        for choice, item in zip(choices, r.logprobs):
            full = ref.tokenize((prompt + choice).encode(), add_bos=True, special=True)
            assert full[:len(p_tokens)] == p_tokens and len(full) - len(p_tokens) == item["tokens"]
            ref.reset()
            ref.eval(full)
            logits = np.asarray(ref.scores[:len(full)], dtype=np.float64)
            total = 0.0
            for pos in range(len(p_tokens), len(full)):
                row = logits[pos - 1]
                total += row[full[pos]] - row.max() - math.log(np.exp(row - row.max()).sum())
            assert item["logprob"] == pytest.approx(total, abs=1e-3)
    finally:
        ref.close()
