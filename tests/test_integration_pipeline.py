"""Pipelines on the real embedded model (SmolLM2-135M via in-process llama.cpp).

The model is small and often wrong, so these assert structure, determinism, parse success
and cache behaviour -- not answers.
"""

from __future__ import annotations

import asyncio

import pytest

import lmgraph as lg
from lmgraph.cache import DiskCache, MemoryCache

pytestmark = pytest.mark.integration

llama_cpp = pytest.importorskip("llama_cpp")

SENTENCES = [
    "a gorgeous, witty, seductive movie.",
    "the plot is nothing but boilerplate cliches from start to finish.",
    "it's a charming and often affecting journey.",
    "unflinchingly bleak and desperate",
    "the acting, costumes, music, cinematography and sound are all astounding.",
    "an utterly incompetent conclusion.",
]


@pytest.fixture(scope="module")
def lm():
    from lmgraph.lm.embedded import embedded_model_path
    from lmgraph.lm.llamacpp import LlamaCppLM

    try:
        embedded_model_path()
    except lg.DefinitionError as e:
        pytest.skip(str(e))
    model = LlamaCppLM(n_ctx=1024)
    yield model
    model.close()


def sentiment_program(fmt: str = "completion", demos=()) -> lg.Program:
    p = lg.Pipeline("sst2")
    s = p.input("sentence")
    node = p.add(lg.Predict("sentence -> sentiment: Literal['negative', 'positive']", format=fmt,
                            max_tokens=4, demos=demos), name="classify", sentence=s)
    p.output(label=node.sentiment)
    return p.build()


def two_branch_program() -> lg.Program:
    p = lg.Pipeline("branches")
    q = p.input("question")
    a = p.add(lg.Predict("question -> answer", max_tokens=24), name="short", question=q)
    b = p.add(lg.Predict("question -> topic", max_tokens=8), name="topic", question=q)
    c = p.add(lg.Predict("question, answer, topic -> summary", max_tokens=24), name="combine",
              question=q, answer=a.answer, topic=b.topic)
    p.output(summary=c.summary, answer=a.answer)
    return p.build()


@pytest.mark.parametrize("fmt", ["completion", "chat", "json"])
def test_classification_parses_and_is_deterministic(lm, fmt):
    program = sentiment_program(fmt)
    ctx = lg.RunContext(lm=lm, cache=False)
    first = program.batch_sync([{"sentence": s} for s in SENTENCES], ctx=ctx, concurrency=1)
    second = program.batch_sync([{"sentence": s} for s in SENTENCES], ctx=ctx, concurrency=1)
    labels1 = [r.outputs["label"] if r.ok else repr(r.error) for r in first]
    labels2 = [r.outputs["label"] if r.ok else repr(r.error) for r in second]
    assert labels1 == labels2
    ok = [r for r in first if r.ok]
    assert all(r.outputs["label"] in ("negative", "positive") for r in ok)
    assert all(isinstance(r.error, lg.OutputParseError) for r in first if not r.ok)
    if fmt != "chat":
        # completion prompts and grammar-constrained JSON parse reliably on the 135M model;
        # in chat form it often ignores the "Sentiment:" reply format (measured: 2/6 parse)
        assert len(ok) >= len(SENTENCES) - 1


def test_concurrency_does_not_change_greedy_outputs(lm):
    program = sentiment_program()
    rows = [{"sentence": s} for s in SENTENCES]
    serial = program.batch_sync(rows, ctx=lg.RunContext(lm=lm, cache=False, max_concurrency=1), concurrency=1)
    parallel = program.batch_sync(rows, ctx=lg.RunContext(lm=lm, cache=False, max_concurrency=8), concurrency=8)
    assert [r.outputs for r in serial] == [r.outputs for r in parallel]
    assert [r.trace.nodes[0].calls[0].response.text for r in serial] == \
        [r.trace.nodes[0].calls[0].response.text for r in parallel]


def test_parallel_branches_and_trace_structure(lm):
    program = two_branch_program()
    ctx = lg.RunContext(lm=lm, cache=False)
    out = program.run_sync(ctx, question="What is the capital of France?")
    assert set(out) == {"summary", "answer"} and all(isinstance(v, str) for v in out.values())
    names = [n.node for n in out.trace.nodes]
    assert set(names) == {"short", "topic", "combine"} and names[-1] == "combine"
    for n in out.trace.nodes:
        call = n.calls[0]
        assert call.request.prompt  # the embedded model prefers completion prompts
        assert call.response.usage.prompt_tokens > 0 and call.response.usage.completion_tokens > 0
        assert n.format == "completion" and n.latency_s > 0
    again = program.run_sync(ctx, question="What is the capital of France?")
    assert dict(again) == dict(out)


def test_disk_cache_hit_on_rerun(lm, tmp_path):
    program = two_branch_program()
    cache = DiskCache(tmp_path / "cache")
    out1 = program.run_sync(lg.RunContext(lm=lm, cache=cache), question="Name a primary colour.")
    assert out1.trace.usage["cache_hits"] == 0
    # a new cache object over the same directory: every call is served from disk
    out2 = program.run_sync(lg.RunContext(lm=lm, cache=DiskCache(tmp_path / "cache")),
                            question="Name a primary colour.")
    assert dict(out2) == dict(out1)
    usage = out2.trace.usage
    assert usage["cache_hits"] == usage["calls"] == 3


def test_chain_of_thought_and_batch_failure_isolation(lm):
    p = lg.Pipeline("cot")
    q = p.input("question")
    node = p.add(lg.ChainOfThought("question -> answer", max_tokens=64), question=q)
    p.output(answer=node.answer, reasoning=node.reasoning)
    program = p.build()
    rows = [{"question": "What is 2 + 3?"}, {"wrong_field": "x"}, {"question": "Is the sky blue?"}]
    results = program.batch_sync(rows, ctx=lg.RunContext(lm=lm, cache=MemoryCache()), concurrency=2)
    assert results[1].error is not None and isinstance(results[1].error, lg.InputError)
    for r in (results[0], results[2]):
        # either parsed, or a recorded OutputParseError after one repair -- never a crash
        assert r.ok or isinstance(r.error, lg.OutputParseError)
        if r.ok:
            assert isinstance(r.outputs["answer"], str)


def test_async_batch_with_many_concurrent_requests(lm):
    program = sentiment_program()
    rows = [{"sentence": s} for s in SENTENCES * 3]

    async def go():
        return await program.batch(rows, ctx=lg.RunContext(lm=lm, cache=False, max_concurrency=16),
                                   concurrency=16)

    results = asyncio.run(go())
    assert len(results) == len(rows)
    by_sentence: dict[str, set] = {}
    for row, r in zip(rows, results):
        by_sentence.setdefault(row["sentence"], set()).add(r.outputs["label"] if r.ok else "error")
    assert all(len(v) == 1 for v in by_sentence.values())  # same input, same greedy output


def test_json_chain_of_thought_cut_off_by_the_token_limit_is_continued_not_lost(lm):
    """SmolLM2-135M's reasoning inside a grammar-constrained JSON object runs past a small token
    limit before ``"answer"``: the reply is continued (reasoning kept, the answer asked for under its
    own schema) and every row parses."""
    p = lg.Pipeline("cot_json")
    q = p.input("question")
    node = p.add(lg.ChainOfThought("question -> answer", format="json", max_tokens=8), name="solve", question=q)
    p.output(answer=node.answer, reasoning=node.reasoning)
    questions = ["Tom has 3 apples and buys 5 more, then gives 2 to Ann. How many apples does he have?",
                 "A train travels 60 miles per hour for 3 hours. How far does it go?",
                 "Sara reads 12 pages a day. How many pages does she read in a week?"]
    results = p.build().batch_sync([{"question": x} for x in questions],
                                   ctx=lg.RunContext(lm=lm, cache=MemoryCache()), concurrency=1)
    assert all(r.ok for r in results), [str(r.error) for r in results]
    continued = 0
    for r in results:
        calls = r.trace.node("solve").calls
        assert isinstance(r.outputs["answer"], str) and isinstance(r.outputs["reasoning"], str)
        if len(calls) == 2:
            assert "missing key 'answer'" in calls[0].parse_error and calls[1].parse_error is None
            continued += 1
    assert continued >= 1  # measured: two of the three (without the continuation both fail to parse)


def test_a_proposer_on_the_embedded_model_names_labels_or_says_it_could_not(lm):
    """Compile(verbalize=True, proposer_lm=...) with the embedded model as the proposer: its one
    call per label node runs, and whatever it writes ends as a valid verbalizer or an 'unusable'
    note -- never an error. (The 135M model echoes the examples: measured, the note.)"""
    from lmgraph.evaluation import label_accuracy
    from lmgraph.optimizers.auto import Compile

    p = lg.Pipeline("intents")
    x = p.input("text")
    node = p.add(lg.Predict("text -> intent: Literal['card_arrival', 'lost_or_stolen_card']", format="completion",
                            max_tokens=8), name="classify", text=x)
    p.output(intent=node.intent)
    rows = [{"text": t, "intent": i} for t, i in [("when will my card arrive", "card_arrival"),
                                                  ("my card was stolen", "lost_or_stolen_card"),
                                                  ("is my new card on its way", "card_arrival"),
                                                  ("I lost my card yesterday", "lost_or_stolen_card")] * 5]
    ctx = lg.RunContext(lm=lm, lms={"proposer": lm}, cache=MemoryCache())
    opt = Compile(verbalize=True, proposer_lm="proposer", num_proposals=0, models=(), decodes=(),
                  formats=("completion",))
    compiled, report = opt.optimize(p.build(), rows, label_accuracy("intent", "intent"),
                                    budget=lg.Budget(max_calls=60), ctx=ctx)
    notes = " ".join(report.notes)
    assert "the proposer model named" in notes or "label words were unusable" in notes, notes
    words = report.data.get("label_words", {}).get("classify", {})
    assert set(words) <= {"card_arrival", "lost_or_stolen_card"}
    assert report.spent["calls"] <= 60 and compiled.module("classify").signature == node.module.signature
