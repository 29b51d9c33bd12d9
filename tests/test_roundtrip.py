"""Programs as values: JSON save/load round trips, immutability, rewriting."""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import pickle
from typing import Literal, Optional

import pydantic
import pytest

import lmgraph as lg
from lmgraph.errors import ArtifactError, DefinitionError, PipelineValidationError
from lmgraph.pipeline.loading import envelope
from lmgraph.testing import FunctionLM


class Entity(pydantic.BaseModel):
    """An entity in the text."""

    name: str = pydantic.Field(description="as written")
    kind: Literal["person", "place", "thing"] = "thing"
    salience: float = pydantic.Field(default=0.5, ge=0, le=1)


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


def simple() -> lg.Program:
    p = lg.Pipeline("qa")
    q = p.input("question")
    a = p.add(lg.Predict("question -> answer"), name="answer", question=q)
    p.output(answer=a.answer)
    return p.build()


def rich() -> lg.Program:
    """Demos, instructions, formats, Literal, Enum, pydantic types, constants, CoT, a pydantic input."""
    types = {"Entity": Entity, "Priority": Priority}
    p = lg.Pipeline("rich")
    text = p.input("text")
    hint = p.input("hint", Optional[Entity])
    ents = p.add(lg.Predict("text, hint: Optional[Entity] -> entities: list[Entity]", types=types,
                            instructions="List the entities.", format="json",
                            demos=[{"text": "Ada met Bob.", "hint": None,
                                    "entities": [{"name": "Ada", "kind": "person"},
                                                 {"name": "Bob", "kind": "person"}]}]),
                 name="extract", text=text, hint=hint)
    cls = p.add(lg.ChainOfThought("text, entities: list[Entity] -> label: Literal['news', 'fiction'], "
                                  "priority: Priority, score: float", types=types,
                                  format="completion", temperature=0.7, max_tokens=99, lm="big",
                                  demos=[{"text": "t", "entities": [], "label": "news", "priority": "high",
                                          "score": 0.5}]),
                name="classify", text=text, entities=ents.entities)
    summ = p.add(lg.Predict("text, label, style -> summary", format="chat"), name="summarize",
                 text=text, label=cls.label, style=lg.const("two lines"))
    p.output(summary=summ.summary, label=cls.label, entities=ents.entities, priority=cls.priority)
    return p.build()


@pytest.mark.parametrize("make", [simple, rich])
def test_save_load_round_trip(make, tmp_path):
    prog = make()
    path = prog.save(tmp_path / "prog.json")
    back = lg.Program.load(path)
    assert back == prog
    assert back.content_hash() == prog.content_hash()
    assert back.render() == prog.render()
    assert back.render("mermaid") == prog.render("mermaid")
    assert back.to_json() == prog.to_json()
    assert back.order == prog.order
    # and again: loading is a fixed point
    back.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_rich_program_details_survive(tmp_path):
    prog = rich()
    back = lg.Program.load(prog.save(tmp_path / "p.json"))
    ex, cl, su = back.module("extract"), back.module("classify"), back.module("summarize")
    assert ex.instructions == "List the entities." and ex.format == "json"
    assert ex.demos == prog.module("extract").demos
    assert isinstance(cl, lg.ChainOfThought)
    assert (cl.format, cl.temperature, cl.max_tokens, cl.lm) == ("completion", 0.7, 99, "big")
    assert cl.signature.output_names == ("reasoning", "label", "priority", "score")
    assert su.format == "chat"
    assert back.node_map["summarize"].binding("style") == lg.const("two lines")
    # the rebuilt types behave like the originals
    E = back.input_specs["hint"].__args__[0]
    assert E.__name__ == "Entity" and E.model_json_schema() == Entity.model_json_schema()
    assert back.module("classify").signature.input("entities").annotation == list[E]  # one shared class
    P = cl.signature.output("priority").annotation
    assert [m.value for m in P] == ["low", "high"]


def test_loaded_rich_program_runs(tmp_path):
    back = lg.Program.load(rich().save(tmp_path / "p.json"))

    def answer(req):
        if req.json_schema is not None:
            return '{"entities": [{"name": "Ada", "kind": "person"}]}'
        if req.prompt is not None:  # the ChainOfThought node is in completion format
            return " it reads like news\nLabel: news\nPriority: high\nScore: 0.9"
        return "Summary: short."

    lm = FunctionLM(answer)
    out = back.run_sync(lg.RunContext(lm=lm, lms={"big": lm}, cache=False), text="Ada wrote.", hint={"name": "Ada"})
    assert list(out) == ["summary", "label", "entities", "priority"]  # declaration order survives
    assert out.label == "news" and out.summary == "short." and out.entities[0].name == "Ada"
    assert out.priority.value == "high"
    assert len(lm.calls) == 3


def test_json_contains_no_code(tmp_path):
    prog = rich()
    text = prog.save(tmp_path / "p.json").read_text()
    data = json.loads(text)  # plain JSON
    assert data["lmgraph_artifact"] == 1 and data["program"]["lmgraph_program"] == 1
    for needle in ("pickle", "lambda", "<function", "<class", "__main__", "tests.test_roundtrip", "object at 0x"):
        assert needle not in text

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                assert isinstance(k, str)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            assert v is None or isinstance(v, (str, int, float, bool))

    walk(data)


def test_load_tampered_unknown_kind(tmp_path):
    path = simple().save(tmp_path / "p.json")
    data = json.loads(path.read_text())["program"]  # inside the envelope Program.save writes
    data["nodes"][0]["module"]["kind"] = "exec_python"
    path.write_text(json.dumps(envelope({"program": data})))  # a validly hashed file
    with pytest.raises(ArtifactError) as ei:
        lg.Program.load(path)
    assert ei.value.node == "answer"
    assert "unknown module kind 'exec_python'" in str(ei.value)
    assert "predict" in ei.value.fix


@pytest.mark.parametrize("tamper, needle", [
    (lambda d: d.pop("nodes"), "malformed"),
    (lambda d: d.pop("name"), "malformed"),
    (lambda d: d["nodes"][0]["module"].pop("signature"), "lacks"),
    (lambda d: d.update(lmgraph_program=99), "version 99"),
])
def test_load_malformed(tmp_path, tamper, needle):
    path = simple().save(tmp_path / "p.json")
    data = json.loads(path.read_text())["program"]  # inside the envelope Program.save writes
    tamper(data)
    path.write_text(json.dumps(envelope({"program": data})))  # a validly hashed file
    with pytest.raises(ArtifactError, match=needle):
        lg.Program.load(path)


def _bad_output_type(d):
    d["nodes"][0]["module"]["signature"]["outputs"][0]["type"] = "list[int"


def _bad_field_name(d):
    d["nodes"][0]["module"]["signature"]["outputs"][0]["name"] = "not a name"


def _bad_format(d):
    d["nodes"][0]["module"]["format"] = "yaml"


def _bad_demo(d):
    d["nodes"][0]["module"]["demos"] = [{"question": "q"}]


def _bad_input_type(d):
    d["inputs"][0]["type"] = "Mystery"


@pytest.mark.parametrize("tamper, node, field", [
    (_bad_output_type, "answer", None),
    (_bad_field_name, "answer", None),
    (_bad_format, "answer", None),
    (_bad_demo, "answer", "answer"),
    (_bad_input_type, None, "question"),
])
def test_bad_definitions_in_an_artifact_are_artifact_errors(tmp_path, tamper, node, field):
    path = simple().save(tmp_path / "p.json")
    data = json.loads(path.read_text())["program"]  # inside the envelope Program.save writes
    tamper(data)
    path.write_text(json.dumps(envelope({"program": data})))  # a validly hashed file
    with pytest.raises(ArtifactError) as ei:
        lg.Program.load(path)
    e = ei.value
    assert e.node == node
    if field is not None:
        assert e.field == field
    assert isinstance(e.__cause__, DefinitionError)  # the original error, message and fix kept
    assert e.message == e.__cause__.message and e.fix == (e.__cause__.fix or e.fix) and e.fix
    assert str(e).count("Fix:") == 1 and (node is None or str(e).startswith(f"node {node!r}"))


def test_bad_definition_inside_a_map_names_both_nodes(tmp_path):
    inner = lg.Pipeline("item")
    a = inner.add(lg.Predict("item -> label"), name="label", item=inner.input("item"))
    inner.output(label=a.label)
    p = lg.Pipeline("outer")
    m = p.add(lg.Map(inner.build(), over="item"), name="each", item=p.input("items", list[str]))
    p.output(labels=m.label)
    data = p.build().to_dict()
    data["nodes"][0]["module"]["program"]["nodes"][0]["module"]["format"] = "yaml"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(envelope({"program": data})))  # a validly hashed file
    with pytest.raises(ArtifactError, match="unknown prompt format 'yaml'") as ei:
        lg.Program.load(path)
    assert ei.value.node == "each/label" and str(ei.value).count("Fix:") == 1


def test_load_not_json_or_missing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        lg.Program.load(bad)
    with pytest.raises(ArtifactError, match="no artifact"):
        lg.Program.load(tmp_path / "missing.json")
    bad.write_text("[1, 2]")
    with pytest.raises(ArtifactError):
        lg.Program.load(bad)


def test_tampered_graph_is_validated_on_load(tmp_path):
    path = simple().save(tmp_path / "p.json")
    data = json.loads(path.read_text())["program"]  # inside the envelope Program.save writes
    data["nodes"][0]["bindings"]["question"] = {"ref": "nowhere.x"}
    path.write_text(json.dumps(envelope({"program": data})))  # a validly hashed file
    with pytest.raises(PipelineValidationError, match="no node 'nowhere'"):
        lg.Program.load(path)


def test_compiled_artifact_wrapper_loads(tmp_path):
    prog = simple()
    path = tmp_path / "compiled.json"
    path.write_text(json.dumps({"program": prog.to_dict(), "report": {"score": 1.0}}))
    with pytest.raises(ArtifactError, match="no envelope"):  # no content hash: loading is a trust boundary
        lg.Program.load(path)
    assert lg.Program.load(path, trusted=True) == prog


def test_program_is_immutable():
    prog = simple()
    with pytest.raises(AttributeError):
        prog.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del prog.nodes
    with pytest.raises(TypeError):
        prog.node_map["x"] = prog.nodes[0]  # type: ignore[index]
    with pytest.raises(TypeError):
        prog.input_specs["x"] = int  # type: ignore[index]
    with pytest.raises(AttributeError):
        prog.nodes[0].module.instructions = "changed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        prog.nodes[0].name = "x"  # frozen dataclass
    assert isinstance(prog.nodes, tuple)


def test_with_module_returns_a_new_program_and_leaves_the_old_one():
    prog = simple()
    before = prog.to_json()
    new_mod = prog.module("answer").replace(instructions="Answer in one word.",
                                            demos=[{"question": "q", "answer": "a"}])
    new = prog.with_module("answer", new_mod)
    assert new is not prog and new != prog
    assert new.content_hash() != prog.content_hash()
    assert new.module("answer").instructions == "Answer in one word."
    assert len(new.module("answer").demos) == 1
    assert prog.to_json() == before
    assert prog.module("answer").demos == ()


def test_with_module_validates_the_new_graph():
    prog = simple()
    with pytest.raises(PipelineValidationError) as ei:
        prog.with_module("answer", lg.Predict("question, context -> answer"))
    assert ei.value.field == "context"
    with pytest.raises(DefinitionError, match="no node 'nope'"):
        prog.with_module("nope", lg.Predict("question -> answer"))


def test_module_replace_is_a_copy():
    m = lg.Predict("question -> answer")
    m2 = m.replace(temperature=0.9, format="completion")
    assert (m.temperature, m.format) == (0.0, "auto")
    assert (m2.temperature, m2.format) == (0.9, "completion")
    assert m2 != m
    assert m.replace() == m
    with pytest.raises(AttributeError, match="replace"):
        m2.temperature = 0.1


def test_program_equality_and_hash():
    a, b = simple(), simple()
    assert a == b and hash(a) == hash(b) and a.content_hash() == b.content_hash()
    assert len({a, b}) == 1
    assert a != rich()


def test_program_pickles_and_copies():
    prog = rich()
    assert pickle.loads(pickle.dumps(simple())) == simple()
    assert copy.deepcopy(prog) == prog
    assert copy.copy(prog) == prog


def test_render_text_and_mermaid():
    text = rich().render()
    assert text.startswith("Program 'rich' (3 nodes)")
    assert "[classify] ChainOfThought[completion, 1 demos]" in text
    assert "style <- const 'two lines'" in text
    assert "instructions: List the entities." in text
    mer = rich().render("mermaid")
    assert mer.startswith("flowchart LR")
    assert "n_extract -->|\"entities → entities\"| n_classify" in mer
    with pytest.raises(ValueError):
        rich().render("svg")


def test_cot_demos_may_omit_reasoning(tmp_path):
    m = lg.ChainOfThought("question -> answer", demos=[{"question": "2+2?", "answer": "4"},
                                                       {"question": "1+1?", "reasoning": "one and one", "answer": "2"}])
    assert "reasoning" not in m.demos[0] and m.demos[1]["reasoning"] == "one and one"
    p = lg.Pipeline("cot")
    q = p.input("question")
    n = p.add(m, name="n", question=q)
    p.output(answer=n.answer)
    prog = p.build()
    assert lg.Program.load(prog.save(tmp_path / "p.json")) == prog
