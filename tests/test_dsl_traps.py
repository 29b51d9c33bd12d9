"""The DSL without traps (issue 18, items 4 and 5): each test here failed on the code before.

Plain strings are constants (references come only from handles and ``lg.ref``); fields called
``name``/``module`` can be bound; outputs are never shadowed on node handles or predictions;
``ctx`` is an ordinary input name; two plain-list corpora never share a resource name; values
entering a program (run inputs, constants, demos) are validated strictly, and edges are typed
strictly in both directions.
"""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import warnings

import pytest

import lmgraph as lg
from lmgraph.errors import ArtifactError, DefinitionError, InputError, LmgraphWarning, PipelineValidationError
from lmgraph.modules.retrieve import BM25Retriever
from lmgraph.pipeline import INPUT, Ref
from lmgraph.testing import FunctionLM, request_text


def ctx(lm) -> lg.RunContext:
    return lg.RunContext(lm=lm, cache=False)


def echo_prompt(req: lg.LMRequest) -> str:
    """Answer with the prompt itself (completion format), so a test can see what was sent."""
    return " " + request_text(req).replace("\n", " | ")


# --------------------------------------------------------------------------- strings are constants

def test_a_plain_string_binding_is_a_constant() -> None:
    p = lg.Pipeline("styled")
    q = p.input("question")
    n = p.add(lg.Predict("question, style -> answer", format="completion"), question=q,
              style="be brief and formal")
    p.output(answer=n.answer)
    prog = p.build()  # before: "bound to unknown pipeline input 'be brief and formal'"
    assert prog.node_map["predict"].binding("style") == lg.const("be brief and formal")
    out = prog.run_sync(ctx(FunctionLM(echo_prompt)), question="Why?")
    assert "Style: be brief and formal" in out.answer


def test_a_one_word_string_is_a_constant_too() -> None:
    p = lg.Pipeline("styled")
    n = p.add(lg.Predict("question, style -> answer"), question=p.input("question"), style="formal")
    p.output(answer=n.answer)
    prog = p.build()  # before: the pipeline input 'formal'
    assert prog.node_map["predict"].binding("style") == lg.const("formal")
    assert list(prog.input_specs) == ["question"]


def test_a_string_that_spells_an_input_is_a_constant_with_a_warning() -> None:
    p = lg.Pipeline("p")
    q = p.input("question")
    n = p.add(lg.Predict("question, topic -> answer"), question=q, topic="question")
    p.output(answer=n.answer)
    with pytest.warns(LmgraphWarning) as record:
        prog = p.build()
    assert prog.node_map["predict"].binding("topic") == lg.const("question")
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 1
    assert ("binding 'question' is the constant string 'question'; to refer to the input use the handle "
            "or lg.ref('question')") in msgs[0]
    assert "'topic'" in msgs[0]


def test_a_string_that_spells_a_node_field_warns_too() -> None:
    p = lg.Pipeline("p")
    a = p.add(lg.Predict("question -> answer"), name="a", question=p.input("question"))
    b = p.add(lg.Predict("answer -> summary"), name="b", answer="a.answer")
    p.output(summary=b.summary, answer=a.answer)
    with pytest.warns(LmgraphWarning,
                      match=r"binding 'a.answer' is the constant string 'a.answer'.*lg.ref\('a.answer'\)"):
        prog = p.build()
    assert prog.deps["b"] == ()  # no edge from a string


def test_no_warning_for_ordinary_strings() -> None:
    p = lg.Pipeline("p")
    n = p.add(lg.Predict("question, style -> answer"), question=p.input("question"), style="terse")
    p.output(answer=n.answer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.build()


def test_ref_makes_references_from_text() -> None:
    p = lg.Pipeline("p")
    p.input("question")
    last = p.add(lg.Predict("answer -> summary"), name="last", answer=lg.ref("first.answer"))  # forward
    p.add(lg.Predict("question -> answer"), name="first", question=lg.ref("question"))
    p.output(summary=lg.ref("last.summary"))
    prog = p.build()
    assert prog.order == ("first", "last")
    assert prog.node_map["first"].binding("question") == Ref(INPUT, "question")
    assert last.node_name == "last"
    out = prog.run_sync(ctx(FunctionLM(lambda r: "Answer: A\nSummary: S")), question="q")
    assert out.summary == "S"


@pytest.mark.parametrize("bad", ["two words", "a.b.c", "", ".x", 3])
def test_ref_refuses_what_is_not_a_reference(bad) -> None:
    with pytest.raises(DefinitionError, match="lg.ref"):
        lg.ref(bad)


def test_an_output_given_as_a_plain_string_says_to_use_ref() -> None:
    p = lg.Pipeline("p")
    p.add(lg.Predict("question -> answer"), name="a", question=p.input("question"))
    with pytest.raises(DefinitionError, match=r"lg.ref\('a.answer'\)") as ei:
        p.output(answer="a.answer")
    assert ei.value.field == "answer"


# --------------------------------------------------------------------------- name / module fields

def greeter() -> lg.Predict:
    return lg.Predict("name, module -> greeting", format="completion")


def test_fields_called_name_and_module_bind_with_a_positional_node_name() -> None:
    p = lg.Pipeline("p")
    who, course = p.input("who"), p.input("course")
    g = p.add(greeter(), "greet", name=who, module=course)
    p.output(greeting=g.greeting)
    prog = p.build()
    node = prog.node_map["greet"]
    assert node.binding("name") == Ref(INPUT, "who") and node.binding("module") == Ref(INPUT, "course")
    out = prog.run_sync(ctx(FunctionLM(echo_prompt)), who="Ada", course="CS101")
    assert "Name: Ada" in out.greeting and "Module: CS101" in out.greeting


def test_fields_called_name_bind_through_inputs() -> None:
    p = lg.Pipeline("p")
    who = p.input("who")
    g = p.add(greeter(), name="greet", inputs={"name": who, "module": "CS101"})
    p.output(greeting=g.greeting)
    node = p.build().node_map["greet"]
    assert node.binding("name") == Ref(INPUT, "who") and node.binding("module") == lg.const("CS101")


def test_name_keyword_still_names_the_node() -> None:
    p = lg.Pipeline("p")
    a = p.add(lg.Predict("question -> answer"), name="x", question=p.input("question"))
    assert a.node_name == "x" and a.name == "x"
    p.output(answer=a.answer)
    assert p.build().order == ("x",)


def test_binding_a_reference_to_name_by_keyword_says_how() -> None:
    p = lg.Pipeline("p")
    who = p.input("who")
    with pytest.raises(DefinitionError, match=r"inputs=\{'name': \.\.\.\}"):
        p.add(greeter(), name=who, module="x")


def test_an_unbound_name_field_points_at_inputs() -> None:
    p = lg.Pipeline("p")
    g = p.add(greeter(), "greet", module="x")
    p.output(greeting=g.greeting)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    assert ei.value.field == "name" and "inputs={'name': ...}" in ei.value.fix


def test_a_field_bound_twice_is_refused() -> None:
    p = lg.Pipeline("p")
    q = p.input("question")
    with pytest.raises(DefinitionError, match="bound twice"):
        p.add(lg.Predict("question -> answer"), "a", question=q, inputs={"question": q})


# --------------------------------------------------------------------------- handles

def test_an_output_called_name_is_reachable_on_the_handle() -> None:
    p = lg.Pipeline("p")
    n = p.add(lg.Predict("text -> name, module, node_name"), name="extract", text=p.input("text"))
    assert n.name == Ref("extract", "name")  # before: the node's name, a str
    assert n.module == Ref("extract", "module")
    assert n["name"] == Ref("extract", "name") and n["node_name"] == Ref("extract", "node_name")
    p.output(name=n.name, module=n.module)
    prog = p.build()
    out = prog.run_sync(ctx(FunctionLM(lambda r: "Name: Ada\nModule: m\nNode Name: x")), text="t")
    assert out.name == "Ada" and out.module == "m"


def test_handle_metadata_when_no_output_shadows_it() -> None:
    p = lg.Pipeline("p")
    mod = lg.Predict("question -> answer")
    n = p.add(mod, name="a", question=p.input("question"))
    assert n.node_name == "a" and n.module == mod
    with pytest.raises(DefinitionError, match="did you mean 'answer'"):
        n.anser  # noqa: B018


# --------------------------------------------------------------------------- predictions

SHADOWS = ("items", "keys", "values", "get", "copy", "trace")


def shadow_program() -> lg.Program:
    p = lg.Pipeline("shadow")
    n = p.add(lg.Predict("question -> " + ", ".join(SHADOWS), format="json"), name="n", question=p.input("question"))
    p.output(**{f: n[f] for f in SHADOWS})
    return p.build()


@pytest.mark.filterwarnings("ignore:Field name .copy.")  # pydantic's note on the signature's output model
def test_prediction_outputs_are_never_shadowed() -> None:
    reply = json.dumps({f: f"<{f}>" for f in SHADOWS})
    out = shadow_program().run_sync(ctx(FunctionLM(lambda r: reply)), question="q")
    for f in SHADOWS:
        assert out[f] == f"<{f}>"
        assert getattr(out, f) == f"<{f}>", f  # before: the dict method / the Trace
    assert dict(out) == {f: f"<{f}>" for f in SHADOWS}
    assert {**out} == dict(out)
    tr = lg.trace_of(out)
    assert isinstance(tr, lg.Trace) and tr.nodes[0].node == "n"
    assert copy.copy(out) == dict(out) and lg.trace_of(copy.copy(out)) is tr
    again = pickle.loads(pickle.dumps(out))
    assert dict(again) == dict(out) and isinstance(again, lg.Prediction)


def test_prediction_methods_and_trace_work_when_not_shadowed() -> None:
    p = lg.Pipeline("p")
    n = p.add(lg.Predict("question -> answer"), name="a", question=p.input("question"))
    p.output(answer=n.answer)
    out = p.build().run_sync(ctx(FunctionLM(lambda r: "Answer: yes")), question="q")
    assert out.trace is lg.trace_of(out) and out.trace.nodes[0].node == "a"
    assert list(out.items()) == [("answer", "yes")] and out.get("answer") == "yes"
    assert json.loads(json.dumps(out)) == {"answer": "yes"}
    with pytest.raises(AttributeError, match="fields: answer"):
        out.answr  # noqa: B018


# --------------------------------------------------------------------------- ctx as an input

def ctx_program() -> lg.Program:
    p = lg.Pipeline("p")
    n = p.add(lg.Predict("ctx, lm -> answer", format="completion"), name="a", ctx=p.input("ctx"), lm=p.input("lm"))
    p.output(answer=n.answer)
    return p.build()


def test_an_input_called_ctx_is_an_input() -> None:
    prog = ctx_program()
    out = prog.run_sync(ctx(FunctionLM(echo_prompt)), ctx="the context", lm="the lm")
    assert "Ctx: the context" in out.answer and "Lm: the lm" in out.answer
    prompts = prog.prompts(None, None, ctx="C", lm="L")  # positional options; inputs by keyword
    assert "Ctx: C" in str(prompts) and "Lm: L" in str(prompts)


def test_an_input_called_ctx_is_an_input_async() -> None:
    out = asyncio.run(ctx_program().run(ctx(FunctionLM(echo_prompt)), ctx="async context", lm="x"))
    assert "Ctx: async context" in out.answer


def test_ctx_keyword_is_still_the_context_when_no_input_is_called_ctx() -> None:
    p = lg.Pipeline("p")
    n = p.add(lg.Predict("question -> answer"), name="a", question=p.input("question"))
    p.output(answer=n.answer)
    out = p.build().run_sync(ctx=ctx(FunctionLM(lambda r: "Answer: ok")), question="q")
    assert out.answer == "ok"


# --------------------------------------------------------------------------- resource names

DOCS_A = ["Paris is the capital of France.", "Rome is the capital of Italy."]
DOCS_B = ["Apples are red.", "Bananas are yellow."]


def two_corpora() -> lg.Program:
    p = lg.Pipeline("two")
    q = p.input("query")
    a = p.add(lg.Retrieve(DOCS_A, k=1), name="cities", query=q)
    b = p.add(lg.Retrieve(DOCS_B, k=1), name="fruit", query=q)
    p.output(city=a.passages, fruit=b.passages)
    return p.build()


def test_two_plain_corpora_get_names_from_their_nodes() -> None:
    prog = two_corpora()
    assert set(prog.resources()) == {"cities.corpus", "fruit.corpus"}  # before: one "corpus" for both
    again = lg.Program.from_dict(json.loads(prog.to_json()), resources=prog.resources())
    out = again.run_sync(ctx(FunctionLM(lambda r: "")), query="capital of Italy? red apples")
    assert out.city == ["Rome is the capital of Italy."] and out.fruit == ["Apples are red."]


def test_one_corpus_for_two_is_ambiguous_on_load() -> None:
    data = two_corpora().to_dict()
    with pytest.raises(ArtifactError, match="which one is 'corpus' would be a guess") as ei:
        lg.Program.from_dict(data, resources={"corpus": DOCS_A})
    assert "'cities.corpus': ..." in ei.value.fix and "'fruit.corpus': ..." in ei.value.fix


def test_a_single_corpus_loads_by_its_old_name() -> None:
    p = lg.Pipeline("rag")
    r = p.add(lg.Retrieve(DOCS_A, k=1), query=p.input("query"))
    p.output(passages=r.passages)
    data = p.build().to_dict()
    assert data["nodes"][0]["module"]["retriever"] == "retrieve.corpus"
    prog = lg.Program.from_dict(data, resources={"corpus": DOCS_A})  # the README's resources={"corpus": ...}
    assert prog.run_sync(ctx(FunctionLM(lambda r: "")), query="Italy").passages == [DOCS_A[1]]


def test_files_saved_with_the_shared_name_still_load() -> None:
    data = two_corpora().to_dict()
    for nd in data["nodes"]:  # what an older lmgraph wrote
        nd["module"]["retriever"] = "corpus"
    prog = lg.Program.from_dict(data, resources={"corpus": DOCS_A})
    assert set(prog.resources()) == {"corpus"}


def test_two_different_retrievers_under_one_name_are_refused() -> None:
    p = lg.Pipeline("p")
    q = p.input("query")
    a = p.add(lg.Retrieve(BM25Retriever(DOCS_A)), name="a", query=q)   # both default to the name "corpus"
    b = p.add(lg.Retrieve(BM25Retriever(DOCS_B)), name="b", query=q)
    p.output(a=a.passages, b=b.passages)
    with pytest.raises(PipelineValidationError, match="different resources under one name 'corpus'") as ei:
        p.build()
    assert ei.value.node == "b" and "name=" in ei.value.fix


def test_one_retriever_shared_by_two_nodes_is_fine() -> None:
    shared = BM25Retriever(DOCS_A, name="wiki")
    p = lg.Pipeline("p")
    q = p.input("query")
    a = p.add(lg.Retrieve(shared), name="a", query=q)
    b = p.add(lg.Retrieve(shared, k=2), name="b", query=q)
    p.output(a=a.passages, b=b.passages)
    assert set(p.build().resources()) == {"wiki"}


# --------------------------------------------------------------------------- strict edges

def int_program() -> lg.Program:
    p = lg.Pipeline("count")
    n = p.add(lg.Predict("k: int, mood: Literal['happy', 'sad'] -> answer"), name="a",
              k=p.input("k", int), mood=p.input("mood", "Literal['happy', 'sad']"))
    p.output(answer=n.answer)
    return p.build()


def test_an_int_input_given_prose_is_an_input_error() -> None:
    lm = FunctionLM(lambda r: "Answer: a")
    with pytest.raises(InputError, match=r"input 'k' is not valid.*takes a int.*'I have 3 apples'"):
        int_program().run_sync(ctx(lm), k="I have 3 apples", mood="happy")  # before: k became 3
    assert not lm.calls


def test_a_literal_input_takes_only_its_options() -> None:
    lm = FunctionLM(lambda r: "Answer: a")
    with pytest.raises(InputError, match=r"input 'mood'.*expected one of happy, sad; got 'Happy!'"):
        int_program().run_sync(ctx(lm), k=3, mood="Happy!")  # before: matched loosely to 'happy'
    out = int_program().run_sync(ctx(lm), k="3", mood="sad")  # a plain numeral is an int (pydantic)
    assert lg.trace_of(out).node("a").inputs == {"k": 3, "mood": "sad"}


def test_constants_are_validated_strictly() -> None:
    p = lg.Pipeline("p")
    n = p.add(lg.Predict("question, k: int -> answer"), name="a", question=p.input("question"), k="3 apples")
    p.output(answer=n.answer)
    with pytest.raises(PipelineValidationError, match=r"the constant is not a valid int") as ei:
        p.build()  # before: coerced to 3
    assert ei.value.field == "k"


def test_a_non_string_constant_does_not_feed_a_str_field() -> None:
    p = lg.Pipeline("p")
    n = p.add(lg.Predict("question, limit -> answer"), name="a", question=p.input("question"), limit=3)
    p.output(answer=n.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    assert ei.value.field == "limit" and "lg.const('3')" in ei.value.fix and "limit: int" in ei.value.fix


def test_int_to_str_edge_is_caught_at_build_time() -> None:
    p = lg.Pipeline("p")
    count = p.add(lg.Predict("question -> n: int"), name="count", question=p.input("question"))
    say = p.add(lg.Predict("n -> sentence"), name="say", n=count.n)
    p.output(sentence=say.sentence)
    with pytest.raises(PipelineValidationError, match="count.n is int but the input wants str") as ei:
        p.build()  # before: anything fed a str field
    assert ei.value.node == "say" and "declare the input as n: int" in ei.value.fix


def test_str_to_int_edge_is_caught_too() -> None:
    p = lg.Pipeline("p")
    a = p.add(lg.Predict("question -> answer"), name="a", question=p.input("question"))
    b = p.add(lg.Predict("n: int -> sentence"), name="b", n=a.answer)
    p.output(sentence=b.sentence)
    with pytest.raises(PipelineValidationError, match="a.answer is str but the input wants int") as ei:
        p.build()
    assert "declare the output a.answer as int" in ei.value.fix


def test_list_to_str_edge_says_to_declare_the_list() -> None:
    p = lg.Pipeline("p")
    q = p.input("question")
    docs = p.add(lg.Retrieve(DOCS_A), name="docs", query=q)
    ans = p.add(lg.Predict("context, question -> answer"), name="ans", context=docs.passages, question=q)
    p.output(answer=ans.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    assert ei.value.field == "context" and "context: list[str]" in ei.value.fix


def test_fitting_edges_still_build() -> None:
    p = lg.Pipeline("p")
    q = p.input("question")
    cls = p.add(lg.Predict("question -> kind: Literal['a', 'b'], n: int"), name="cls", question=q)
    use = p.add(lg.Predict("kind, x: float, k: Literal['a', 'b', 'c'] -> answer"), name="use",
                kind=cls.kind, x=cls.n, k=cls.kind)  # Literal[str] -> str, int -> float, Literal subset
    p.output(answer=use.answer)
    assert p.build().order == ("cls", "use")


def test_demos_are_validated_strictly() -> None:
    with pytest.raises(DefinitionError, match="demo #0 has a bad value"):
        lg.Predict("x: int -> y", demos=[{"x": "three, or 3", "y": "a"}])  # before: coerced to 3
    with pytest.raises(DefinitionError, match="expected one of pos, neg"):
        lg.Predict("x -> y: Literal['pos', 'neg']", demos=[{"x": "a", "y": "Pos."}])
    ok = lg.Predict("x: int -> y", demos=[{"x": 3, "y": "a"}])
    assert ok.demos[0]["x"] == 3
