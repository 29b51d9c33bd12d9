"""lmgraph.interop.dspy against dspy 3.4.1 (extra [dspy]; skipped without it): a DSPy RAG program
(Retrieve + ChainOfThought) converts, runs on a FunctionLM, compiles with LabeledFewShot, and its
compiled demos go back into DSPy; what cannot convert is a DefinitionError naming the construct."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

dspy = pytest.importorskip("dspy", reason="the DSPy bridge needs the [dspy] extra (pip install 'lmgraph[dspy]')")

from dspy.utils.dummies import DummyLM  # noqa: E402

import lmgraph as lg  # noqa: E402
from lmgraph.evaluation import exact_match  # noqa: E402
from lmgraph.interop.dspy import from_dspy, node_name, to_dspy_state  # noqa: E402
from lmgraph.optimizers import LabeledFewShot  # noqa: E402
from lmgraph.testing import FunctionLM, request_text  # noqa: E402

CORPUS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Rome is the capital of Italy.",
          "Madrid is the capital of Spain.", "Lisbon is the capital of Portugal.", "Vienna is the capital of Austria."]
GOLD = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
        "Austria": "Vienna"}


class GenerateAnswer(dspy.Signature):
    """Answer questions with short factoid answers."""

    context = dspy.InputField(desc="may contain relevant facts")
    question = dspy.InputField()
    answer = dspy.OutputField(desc="often between 1 and 5 words")


class RAG(dspy.Module):
    def __init__(self, num_passages=2):
        super().__init__()
        self.retrieve = dspy.Retrieve(k=num_passages)
        self.generate_answer = dspy.ChainOfThought(GenerateAnswer)

    def forward(self, question):
        context = self.retrieve(question).passages
        prediction = self.generate_answer(context=context, question=question)
        return dspy.Prediction(context=context, answer=prediction.answer)


def rows(countries):
    return [{"question": f"What is the capital of {c}?", "answer": GOLD[c]} for c in countries]


def demo_reader(request):
    """Right only when the prompt shows at least one demo (a second 'Question:'), else 'unknown'."""
    text = request_text(request)
    country = text.rsplit("capital of ", 1)[-1].split("?")[0]
    answer = GOLD.get(country, "unknown") if text.count("Question:") >= 2 else "unknown"
    return f"Reasoning: the context says so\nAnswer: {answer}"


def test_rag_converts_to_a_typed_graph():
    rag = RAG()
    program = from_dspy(rag, corpus=CORPUS)
    assert program.name == "rag" and [n.name for n in program.nodes] == ["retrieve", "generate_answer"]
    retrieve, gen = (program.node_map[n].module for n in ("retrieve", "generate_answer"))
    assert retrieve.kind == "retrieve" and retrieve.k == 2
    assert gen.kind == "chain_of_thought"
    sig = gen.base_signature
    assert sig.instructions == "Answer questions with short factoid answers."
    assert sig.input_names == ("context", "question") and sig.output_names == ("answer",)
    assert sig.input("context").desc == "may contain relevant facts" and sig.input("context").annotation == list[str]
    assert sig.output("answer").desc == "often between 1 and 5 words" and sig.input("question").desc == ""
    text = program.render()
    assert "query <- input.question" in text and "context <- retrieve.passages" in text
    assert "outputs: context <- retrieve.passages, answer <- generate_answer.answer" in text
    assert rag.generate_answer.predict.lm is None and rag.generate_answer.predict.demos == []   # untouched


def test_rag_runs_compiles_and_its_demos_go_back_into_dspy(tmp_path):
    program = from_dspy(RAG(), corpus=CORPUS)
    ctx = lg.RunContext(lm=FunctionLM(demo_reader), cache=False)
    out = program.run_sync(ctx, question="What is the capital of France?")
    assert out.answer == "unknown" and out.context[0] == "Paris is the capital of France."
    train, val = rows(["France", "Germany"]), rows(["Italy", "Spain", "Portugal", "Austria"])
    compiled, report = LabeledFewShot(k=2).optimize(program, train, exact_match(), valset=val, ctx=ctx)
    assert report.best.status == "accepted" and report.best.mean == 1.0, report.table()
    demos = compiled.module("generate_answer").demos
    assert [d["question"] for d in demos] == [r["question"] for r in train]
    assert demos[0]["context"][0] == "Paris is the capital of France."     # filled by running retrieve

    rag = RAG()
    state = to_dspy_state(compiled, rag)
    assert rag.generate_answer.predict.demos == []                        # the template is not changed
    rag.load_state(state)
    got = rag.generate_answer.predict.demos
    assert [d["question"] for d in got] == [d["question"] for d in demos] and got[0]["answer"] == "Paris"
    assert rag.generate_answer.predict.signature.instructions == "Answer questions with short factoid answers."
    assert rag.retrieve.k == 2
    # DSPy shows them: its prompt now holds the demos
    lm = DummyLM([{"reasoning": "r", "answer": "Rome"}])
    with dspy.context(lm=lm, rm=lambda q, k, **kw: [dspy.dsp.utils.dotdict(long_text=CORPUS[2])] * k):
        assert rag(question="What is the capital of Italy?").answer == "Rome"
    prompt = json.dumps(lm.history[-1]["messages"])
    assert "What is the capital of France?" in prompt and "Berlin" in prompt
    # written as a DSPy state file: module.load(path) takes it
    path = tmp_path / "rag.json"
    to_dspy_state(compiled, RAG(), path=path)
    again = RAG()
    again.load(str(path))
    assert [d["answer"] for d in again.generate_answer.predict.demos] == ["Paris", "Berlin"]


class QA(dspy.Module):
    def __init__(self):
        super().__init__()
        self.answer = dspy.ChainOfThought("question -> answer")

    def forward(self, question):
        return self.answer(question=question)


def test_demos_of_a_compiled_dspy_program_and_of_its_saved_state(tmp_path):
    trainset = [dspy.Example(question=r["question"], answer=r["answer"]).with_inputs("question")
                for r in rows(["France", "Germany", "Italy"])]
    compiled = dspy.LabeledFewShot(k=2).compile(QA(), trainset=trainset, sample=False)
    program = from_dspy(compiled)
    assert [d["answer"] for d in program.module("answer").demos] == ["Paris", "Berlin"]
    assert program.outputs[0][0] == "reasoning" and [o for o, _ in program.outputs] == ["reasoning", "answer"]
    path = tmp_path / "qa.json"
    compiled.save(str(path))
    from_state = from_dspy(QA(), state=path)
    assert from_state.module("answer").demos == program.module("answer").demos
    # DSPy's labelled demos of a RAG program have no context: lmgraph needs it, so they are left out, said so
    rag = RAG()
    rag.generate_answer.predict.demos = [dspy.Example(question="q", answer="a")]
    with pytest.warns(lg.LmgraphWarning, match="1 of 1 DSPy demos lack a field"):
        assert from_dspy(rag, corpus=CORPUS).module("generate_answer").demos == ()


class Classify(dspy.Signature):
    """Classify the question."""

    question: str = dspy.InputField()
    kind: str = dspy.OutputField(desc="what the question asks about")


class TwoStep(dspy.Module):
    def __init__(self):
        super().__init__()
        self.search = lambda query, k=2: [p for p in CORPUS if query.split()[-1].strip("?") in p][:k]
        self.classify = dspy.Predict(Classify)
        self.respond = dspy.Predict("question, kind, context: list[str] -> answer", temperature=0.3)

    def forward(self, question):
        kind = self.classify(question=question).kind
        found = self.search(question)
        return self.respond(question=question, kind=kind, context=found)


def test_chained_predictors_and_a_retriever_callable():
    program = from_dspy(TwoStep(), corpus={"search": CORPUS})
    text = program.render()
    assert "kind <- classify.kind" in text and "context <- search.passages" in text
    assert program.module("respond").temperature == 0.3
    assert program.module("classify").base_signature.output("kind").desc == "what the question asks about"
    assert node_name("generate_answer.predict") == "generate_answer" and node_name("hop.gen[0]") == "hop_gen_0"
    assert node_name("self") == "predict"


class Joined(dspy.Module):
    def __init__(self):
        super().__init__()
        self.retrieve = dspy.Retrieve(k=2)
        self.generate_answer = dspy.ChainOfThought(GenerateAnswer)

    def forward(self, question):
        context = "\n".join(self.retrieve(question).passages)
        return self.generate_answer(context=context, question=question)


class Branchy(dspy.Module):
    def __init__(self):
        super().__init__()
        self.a = dspy.Predict("question -> answer")

    def forward(self, question):
        if len(question) > 100:
            question = question[:100]
        return self.a(question=question)


class Twice(dspy.Module):
    def __init__(self):
        super().__init__()
        self.a = dspy.Predict("question -> answer")

    def forward(self, question):
        first = self.a(question=question)
        return self.a(question=first.answer)


class Agent(dspy.Module):
    def __init__(self):
        super().__init__()
        self.react = dspy.ReAct("question -> answer", tools=[lambda x: x])

    def forward(self, question):
        return self.react(question=question)


@pytest.mark.parametrize("module, kwargs, match", [
    (Joined(), {"corpus": CORPUS}, r"node 'generate_answer', field 'context': the input 'context' is computed by "
                                   r"Python code from retrieve\.passages"),
    (Branchy(), {}, r"Branchy\.forward .*line \d+ has an `if` statement.*Fix: build the branch with lg\.Route"),
    (Twice(), {}, r"predict 'a' is called more than once"),
    (Agent(), {}, r"cannot convert dspy\.ReAct at 'react'.*lg\.CallTool"),
    (RAG(), {}, r"node 'retrieve': the DSPy program retrieves.*corpus="),
    (RAG(), {"corpus": {"other": CORPUS}}, r"corpus= names no corpus for the Retrieve node 'retrieve'"),
])
def test_what_cannot_convert_is_named(module, kwargs, match):
    with pytest.raises(lg.DefinitionError, match=match):
        from_dspy(module, **kwargs)


def test_bad_arguments():
    with pytest.raises(lg.DefinitionError, match="takes a dspy.Module"):
        from_dspy(object())
    program = from_dspy(QA())
    with pytest.raises(lg.DefinitionError, match=r"no DSPy predictor for the node\(s\) answer"):
        to_dspy_state(program, RAG())
    tuned = program.with_parameters({"answer.format": "json"})
    with pytest.warns(lg.LmgraphWarning, match="answer: format=json"):
        to_dspy_state(tuned, QA())


def test_importing_the_bridge_does_not_import_dspy():
    code = "import lmgraph.interop.dspy, sys; assert 'dspy' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
