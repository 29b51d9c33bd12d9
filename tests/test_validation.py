"""Static validation: every user mistake is caught before any model call, naming node, field and fix."""

from __future__ import annotations

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError, PipelineValidationError
from lmgraph.pipeline import INPUT, InputSpec, Node, Program, Ref
from lmgraph.testing import FunctionLM


def qa(**kw):
    return lg.Predict("question -> answer", **kw)


def check(err: DefinitionError, *, node: str | None, field: str | None, fix: str) -> None:
    """The error locates the mistake and its message says the fix."""
    msg = str(err)
    assert err.node == node
    assert err.field == field
    if node is not None:
        assert repr(node) in msg
    if field is not None:
        assert repr(field) in msg
    assert "Fix:" in msg
    assert fix in msg
    assert err.fix and fix in err.fix


def test_valid_pipeline_builds():
    p = lg.Pipeline("ok")
    q = p.input("question")
    a = p.add(qa(), name="a", question=q)
    p.output(answer=a.answer)
    prog = p.build()
    assert prog.order == ("a",)


def test_unknown_input_field_on_a_node():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(qa(), name="a", question=q, questoin=q)
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="a", field="questoin", fix="did you mean 'question'?")
    assert "has no input field 'questoin'" in str(ei.value)


def test_binding_to_a_nonexistent_node():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(qa(), name="first", question=q)
    b = p.add(lg.Predict("answer -> summary"), name="second", answer=lg.ref("frist.answer"))
    p.output(summary=b.summary, answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="second", field="answer", fix="did you mean 'first'?")
    assert "there is no node 'frist'" in str(ei.value)


def test_binding_to_a_nonexistent_output_field():
    p = lg.Pipeline("p")
    q = p.input("question")
    p.add(qa(), name="a", question=q)
    b = p.add(lg.Predict("answer -> summary"), name="b", answer=lg.ref("a.anwser"))
    p.output(summary=b.summary)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="b", field="answer", fix="did you mean 'answer'?")
    assert "node 'a' has no output 'anwser'" in str(ei.value)


def test_unbound_node_input():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question, context -> answer"), name="a", question=q)
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="a", field="context", fix="pass context=")
    assert "input 'context' is not bound" in str(ei.value)


def test_type_mismatch_on_an_edge():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question -> keywords: list[str]"), name="a", question=q)
    b = p.add(lg.Predict("count: int -> answer"), name="b", count=a.keywords)
    p.output(answer=b.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="b", field="count", fix="declare the output a.keywords as int")
    assert "a.keywords is list[str] but the input wants int" in str(ei.value)


def test_type_mismatch_from_a_pipeline_input():
    p = lg.Pipeline("p")
    n = p.input("n", "list[int]")
    a = p.add(lg.Predict("k: str, m: int -> answer"), name="a", k=n, m=n)  # a str field is no catch-all
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    assert [(e.node, e.field) for e in ei.value.problems] == [("a", "k"), ("a", "m")]
    check(ei.value.problems[0], node="a", field="k", fix="declare the input as k: list[int]")
    check(ei.value.problems[1], node="a", field="m", fix="declare the pipeline input 'n' as int")


def test_bad_constant_type():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question, k: int -> answer"), name="a", question=q, k=lg.const("three"))
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="a", field="k", fix="constant of type int")


def test_bad_constant_container_type():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question, ks: list[int] -> answer"), name="a", question=q, ks=lg.const({"a": 1}))
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="a", field="ks", fix="constant of type list[int]")
    assert "\n" not in str(ei.value)


def test_good_constants_pass():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question, k: int, style -> answer"), name="a", question=q, k=3,
              style=lg.const("terse"))
    p.output(answer=a.answer)
    assert p.build().node_map["a"].binding("k") == lg.const(3)


def test_unknown_pipeline_input():
    p = lg.Pipeline("p")
    p.input("question")
    a = p.add(qa(), name="a", question=lg.ref("questoin"))
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="a", field="question", fix="did you mean 'question'?")
    assert "unknown pipeline input 'questoin'" in str(ei.value)
    assert "pipeline.input('questoin', type)" in str(ei.value)


def test_output_of_an_unknown_node():
    p = lg.Pipeline("p")
    q = p.input("question")
    p.add(qa(), name="a", question=q)
    p.output(answer=lg.ref("b.answer"))
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="output", field="answer", fix="nodes are: a")


def test_duplicate_node_names():
    p = lg.Pipeline("p")
    q = p.input("question")
    p.add(qa(), name="a", question=q)
    with pytest.raises(DefinitionError) as ei:
        p.add(qa(), name="a", question=q)
    check(ei.value, node="a", field=None, fix="distinct name")


def test_duplicate_node_names_in_the_ir():
    m = qa()
    nodes = [Node("a", m, (("question", Ref(INPUT, "question")),))] * 2
    with pytest.raises(PipelineValidationError) as ei:
        Program("p", [InputSpec("question")], nodes, [("answer", Ref("a", "answer"))])
    check(ei.value, node="a", field=None, fix="distinct name")


def test_auto_names_do_not_collide():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(qa(), question=q)
    b = p.add(qa(), question=a.answer)
    assert (a.name, b.name) == ("predict", "predict_2")


def test_duplicate_inputs():
    p = lg.Pipeline("p")
    p.input("question")
    with pytest.raises(DefinitionError) as ei:
        p.input("question")
    check(ei.value, node=INPUT, field="question", fix="declare it once")


def test_duplicate_inputs_in_the_ir():
    with pytest.raises(PipelineValidationError) as ei:
        Program("p", [InputSpec("question"), InputSpec("question")],
                [Node("a", qa(), (("question", Ref(INPUT, "question")),))], [("answer", Ref("a", "answer"))])
    check(ei.value, node=INPUT, field="question", fix="declare each input once")


def test_no_outputs():
    p = lg.Pipeline("nothing_out")
    q = p.input("question")
    p.add(qa(), name="a", question=q)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="nothing_out", field=None, fix="pipeline.output(name=node.field)")


def test_cycle_via_forward_references():
    p = lg.Pipeline("loop")
    q = p.input("question")
    a = p.add(lg.Predict("question, hint -> answer"), name="a", question=q, hint=lg.ref("b.answer"))
    p.add(lg.Predict("question -> answer"), name="b", question=a.answer)
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    err = ei.value
    assert err.node in ("a", "b")
    assert err.field in ("hint", "question")
    msg = str(err)
    assert "cycle" in msg and ("a -> b -> a" in msg or "b -> a -> b" in msg)
    assert "a pipeline is a DAG" in msg and err.fix


def test_self_loop():
    p = lg.Pipeline("self")
    q = p.input("question")
    a = p.add(lg.Predict("question, previous -> answer"), name="a", question=q, previous=lg.ref("a.answer"))
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    check(ei.value, node="a", field="previous", fix="DAG")
    assert "cycle a -> a" in str(ei.value)


def test_forward_reference_without_cycle_is_fine():
    p = lg.Pipeline("fwd")
    q = p.input("question")
    last = p.add(lg.Predict("answer -> summary"), name="last", answer=lg.ref("first.answer"))
    p.add(qa(), name="first", question=q)
    p.output(summary=last.summary)
    assert p.build().order == ("first", "last")


def test_reserved_name_input():
    p = lg.Pipeline("p")
    q = p.input("question")
    with pytest.raises(DefinitionError) as ei:
        p.add(qa(), name="input", question=q)
    check(ei.value, node="input", field=None, fix="other than 'input'")


def test_reserved_name_input_in_the_ir():
    with pytest.raises(PipelineValidationError) as ei:
        Program("p", [InputSpec("question")], [Node("input", qa(), (("question", Ref(INPUT, "question")),))],
                [("answer", Ref("input", "answer"))])
    assert any(e.node == "input" and "reserved" in str(e) for e in ei.value.problems)


def test_bad_names():
    with pytest.raises(DefinitionError):
        lg.Pipeline("my pipeline")
    p = lg.Pipeline("p")
    with pytest.raises(DefinitionError) as ei:
        p.input("the question")
    assert ei.value.field == "the question"
    with pytest.raises(DefinitionError):
        p.add(qa(), name="2nd")
    with pytest.raises(DefinitionError, match="got str"):
        p.add("question -> answer")  # type: ignore[arg-type]


def test_several_problems_are_reported_together():
    p = lg.Pipeline("many")
    q = p.input("question")
    a = p.add(lg.Predict("question, context -> answer"), name="a", question=q)   # context unbound
    b = p.add(lg.Predict("n: int -> answer"), name="b", n=a.answer, extra=q)     # str -> int, unknown field
    p.add(qa(), name="c", question=lg.ref("nowhere.answer"))                              # unknown node
    p.output(answer=b.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    err = ei.value
    found = {(e.node, e.field) for e in err.problems}
    assert found == {("a", "context"), ("b", "n"), ("b", "extra"), ("c", "question")}
    msg = str(err)
    assert msg.startswith("4 problems:")
    for e in err.problems:
        assert str(e) in msg
        assert e.fix
    assert err.node == err.problems[0].node and err.fix == err.problems[0].fix


def test_single_problem_message_is_not_prefixed_twice():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question, context -> answer"), name="a", question=q)
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    assert str(ei.value).count("node 'a'") == 1


def test_validation_happens_before_any_model_call():
    lm = FunctionLM(lambda r: "Answer: x")
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question, context -> answer"), name="a", question=q)
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError):
        p.build().run_sync(lg.RunContext(lm=lm, cache=False), question="q")
    assert lm.calls == []


def test_node_handle_attribute_typo():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question -> answer, confidence: float"), name="a", question=q)
    with pytest.raises(DefinitionError) as ei:
        a.answr  # noqa: B018
    check(ei.value, node="a", field="answr", fix="did you mean 'answer'?")
    assert "its outputs are: answer, confidence" in str(ei.value)
    with pytest.raises(DefinitionError):
        a["nope"]
    assert a.confidence == Ref("a", "confidence")
    assert a["answer"] == Ref("a", "answer")


def test_binding_a_multi_output_handle_needs_a_field():
    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question -> answer, confidence: float"), name="a", question=q)
    with pytest.raises(DefinitionError) as ei:
        p.add(lg.Predict("answer -> summary"), name="b", answer=a)
    check(ei.value, node="b", field="answer", fix="a.confidence")
    b = p.add(lg.Predict("answer -> summary"), name="b", answer=p.add(qa(), name="c", question=q))
    assert b.name == "b"


def test_output_must_be_a_reference():
    p = lg.Pipeline("p")
    with pytest.raises(DefinitionError) as ei:
        p.output(answer=lg.const("x"))
    assert ei.value.field == "answer"


def test_module_replace_validates():
    m = qa()
    with pytest.raises(DefinitionError) as ei:
        m.replace(temprature=0.5)
    assert "tunable parameters are:" in str(ei.value)
    with pytest.raises(DefinitionError, match="unknown prompt format"):
        m.replace(format="xml")
    with pytest.raises(DefinitionError, match="max_tokens"):
        m.replace(max_tokens=0)
    with pytest.raises(DefinitionError) as ei:
        m.replace(demos=[{"question": "q"}])
    assert ei.value.field == "answer"


def test_module_definition_errors():
    with pytest.raises(DefinitionError, match="unknown prompt format"):
        lg.Predict("q -> a", format="yaml")
    with pytest.raises(DefinitionError) as ei:
        lg.Predict("q -> n: int", demos=[{"q": "x", "n": "many"}])
    assert ei.value.field == "n" and "demo #0" in str(ei.value)
    with pytest.raises(DefinitionError, match="not a mapping"):
        lg.Predict("q -> a", demos=["q: x"])


def test_definition_errors_pickle_with_their_location():
    import pickle

    p = lg.Pipeline("p")
    q = p.input("question")
    a = p.add(lg.Predict("question, context -> answer"), name="a", question=q, extra=q)
    p.output(answer=a.answer)
    with pytest.raises(PipelineValidationError) as ei:
        p.build()
    err = pickle.loads(pickle.dumps(ei.value))
    assert type(err) is PipelineValidationError and str(err) == str(ei.value)
    assert (err.node, err.field, err.fix) == (ei.value.node, ei.value.field, ei.value.fix)
    assert [str(e) for e in err.problems] == [str(e) for e in ei.value.problems]
