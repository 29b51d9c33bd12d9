"""Every module kind saves through its config model and loads back the same.

* a property test: random programs holding one node of EVERY registered built-in kind, with valid
  random settings per kind -> saved JSON -> loaded -> the same JSON and the same content hash. The
  kinds come from the registry, so a kind added without a generator here fails the test;
* the registry: a second class for a taken kind is refused; a subclass without a kind of its own
  takes nothing; ``Program.load(..., kinds=[...])``;
* strict loading: an unknown key anywhere is an error naming the node and the key; a newer format
  version is refused, naming both versions.
"""

from __future__ import annotations

import json
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

import lmgraph as lg
from lmgraph.errors import ArtifactError
from lmgraph.modules import MODULE_KINDS
from lmgraph.modules.base import FORMAT_CHOICES
from lmgraph.pipeline.loading import envelope
from lmgraph.testing import FunctionLM

DOCS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Rome is in Italy."]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def score(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> float:
    return float(len(str(outputs)))


def pick(values: Mapping[str, Any]) -> str:
    return "calc"


def done(values: Mapping[str, Any]) -> bool:
    return True


# --------------------------------------------------------------------------- random settings

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
WORD = st.text("abcxyz", min_size=1, max_size=6)
TEMPERATURE = st.floats(0.0, 2.0, allow_nan=False)


def generation(draw: Any, *, fields: tuple[str, ...] = ("question", "answer"), max_tokens: bool = True) -> dict:
    """The settings every model-prompting kind has (instructions, demos, format, lm, decoding)."""
    out = {"instructions": draw(st.none() | TEXT), "format": draw(st.sampled_from(FORMAT_CHOICES)),
           "lm": draw(st.none() | st.sampled_from(["big", "small"])), "temperature": draw(TEMPERATURE),
           "repair": draw(st.booleans()), "cache": draw(st.booleans()),
           "demos": draw(st.lists(st.fixed_dictionaries({f: TEXT for f in fields}), max_size=2))}
    if max_tokens:
        out["max_tokens"] = draw(st.integers(1, 4096))
    return out


def knn(draw: Any, fields: Mapping[str, Any]) -> dict:
    pool = draw(st.lists(st.fixed_dictionaries(fields), max_size=3))
    first = next(iter(fields))  # an input in every signature drawn here
    return {"demo_pool": pool, "knn": draw(st.integers(0, len(pool))) if pool else 0,
            "knn_fields": draw(st.sampled_from([(), (first,)]))}


def predict(draw: Any, sig: str = "question -> answer") -> lg.Predict:
    if sig == "question -> answer" and draw(st.booleans()):  # a scoring classifier
        options = st.sampled_from(["a", "b"])
        kw = generation(draw, fields=("question",))
        kw.update(format=draw(st.sampled_from(["auto", "completion"])), demos=[], decode=draw(
            st.sampled_from(["score", "calibrated"])), **knn(draw, {"question": TEXT, "label": options}))
        return lg.Predict("question -> label: Literal['a', 'b']", **kw)
    names = tuple(n.strip() for side in sig.split("->") for n in side.split(","))
    return lg.Predict(sig, **generation(draw, fields=names), **knn(draw, {n: TEXT for n in names}))


def chain_of_thought(draw: Any) -> lg.ChainOfThought:
    kw = generation(draw)
    kw["demos"] = [{**d, **({"reasoning": "r"} if draw(st.booleans()) else {})} for d in kw["demos"]]
    return lg.ChainOfThought("question -> answer", **kw, **knn(draw, {"question": TEXT, "answer": TEXT}))


def critique(draw: Any) -> lg.Critique:
    kw = generation(draw, fields=("question", "answer"))
    kw["demos"] = [{**d, "feedback": "ok", "verdict": draw(st.booleans())} for d in kw["demos"]]
    return lg.Critique("question, answer", **kw)


def plan(draw: Any) -> lg.Plan:
    kw = generation(draw, fields=("task",))
    kw["demos"] = [{**d, "steps": [d["task"]]} for d in kw["demos"]]
    return lg.Plan("task -> steps: list[str]", max_steps=draw(st.integers(1, 9)), **kw,
                   **knn(draw, {"task": TEXT, "steps": st.lists(WORD, max_size=2)}))


def call_tool(draw: Any) -> lg.CallTool:
    step_demos = draw(st.lists(st.fixed_dictionaries({"question": TEXT, "trajectory": TEXT, "thought": TEXT,
                                                       "tool": st.sampled_from(["add", "finish"])}), max_size=2))
    return lg.CallTool("question -> answer", [add], max_steps=draw(st.integers(1, 8)), step_demos=step_demos,
                       tool_timeout=draw(st.none() | st.sampled_from([30.0, 2.5]) | st.floats(0.01, 1e4)),
                       max_output_chars=draw(st.integers(1, 10_000)), tool_threads=draw(st.integers(1, 16)),
                       on_tool_error=draw(st.sampled_from(["observe", "fail"])), **generation(draw))


def best_of_n(draw: Any) -> lg.BestOfN:
    select = draw(st.sampled_from(["vote", "judge", "reward"]))
    judge = critique(draw) if select == "judge" and draw(st.booleans()) else None
    inner = draw(st.sampled_from([lambda: predict(draw), lambda: chain_of_thought(draw)]))()
    vote_on = draw(st.none() | st.sampled_from(inner.signature.output_names))
    if select == "judge" and judge is not None:
        judge = lg.Critique(f"question, {inner.signature.output_names[-1]}")
    return lg.BestOfN(inner, n=draw(st.integers(1, 5)), select=select, judge=judge,
                      reward=score if select == "reward" else None, temperature=draw(TEMPERATURE), vote_on=vote_on)


def refine(draw: Any) -> lg.Refine:
    gen = draw(st.sampled_from([lambda: predict(draw, "question -> answer"), lambda: chain_of_thought(draw)]))()
    out = gen.signature.output_names[-1]
    judge = lg.Critique(f"question, {out}", temperature=draw(TEMPERATURE)) if draw(st.booleans()) else None
    return lg.Refine(gen, judge=judge, max_rounds=draw(st.integers(1, 4)))


def loop(draw: Any) -> lg.Loop:
    body = lg.Pipeline("check")
    q, draft = body.input("question"), body.input("draft")
    rev = body.add(predict(draw, "question, draft -> answer"), "revise", question=q, draft=draft)
    judge = body.add(critique(draw), "judge", question=q, answer=rev.answer)
    body.output(answer=rev.answer, verdict=judge.verdict)
    until = draw(st.sampled_from([None, "verdict", done, lg.resource("stop_when", done)]))
    carry = draw(st.sampled_from([{}, {"draft": "answer"}]))
    return lg.Loop(body.build(), max_iters=draw(st.integers(1, 5)), until=until, carry=carry)


def map_(draw: Any) -> lg.Map:
    sub = lg.Pipeline("item")
    n = sub.add(lg.Predict("item, question -> note", **generation(draw, fields=("item", "question", "note"))),
                "note", item=sub.input("item"), question=sub.input("question"))
    sub.output(note=n.note)
    over = draw(st.sampled_from([["item"], ["item", "question"]]))
    return lg.Map(sub.build(), over=over, concurrency=draw(st.integers(1, 8)),
                  on_error=draw(st.sampled_from(["raise", "none", "skip"])))


def retrieve(draw: Any) -> lg.Retrieve:
    return lg.Retrieve(DOCS, k=draw(st.integers(1, 5)), name=draw(st.none() | st.sampled_from(["docs", "wiki"])))


def route(draw: Any) -> lg.Route:
    names = draw(st.lists(st.sampled_from(["calc", "search", "other"]), min_size=1, max_size=3, unique=True))
    branches = {}
    for b in names:
        p = lg.Pipeline(b)
        n = p.add(lg.Predict("question -> answer", **generation(draw)), "solve", question=p.input("question"))
        p.output(answer=n.answer)
        branches[b] = p.build()
    selector = draw(st.sampled_from(["choice", "which", pick]))
    return lg.Route(selector, branches, default=draw(st.none() | st.sampled_from(names)))


#: kind -> a function drawing a random, valid module of that kind
GENERATORS: dict[str, Callable[[Any], lg.Module]] = {
    "predict": predict, "chain_of_thought": chain_of_thought, "critique": critique, "plan": plan,
    "call_tool": call_tool, "best_of_n": best_of_n, "refine": refine, "loop": loop, "map": map_,
    "retrieve": retrieve, "route": route,
}


def builtin_kinds() -> set[str]:
    """The kinds lmgraph itself registers (test files may register their own)."""
    return {k for k, cls in MODULE_KINDS.items() if cls.__module__.startswith("lmgraph.")}


def example(annotation: Any) -> Any:
    """A constant of the type ``annotation`` (to bind a node input that is not the question)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return args[0]
    if origin is list:
        return [example(args[0]) if args else "x"]
    if origin in (typing.Union, types.UnionType):
        return example(next(a for a in args if a is not type(None)))
    return {int: 1, float: 0.5, bool: True}.get(annotation, "x")


def program_of_every_kind(draw: Any) -> lg.Program:
    kinds = sorted(builtin_kinds())
    order = draw(st.permutations(kinds))
    p = lg.Pipeline("every_kind")
    q = p.input("question")
    outputs = {}
    for kind in order:
        module = GENERATORS[kind](draw)  # a KeyError here: a kind without a generator
        assert module.kind == kind
        binds = {f.name: q if f.name == "question" and f.annotation is str else lg.const(example(f.annotation))
                 for f in module.signature.inputs}
        p.add(module, kind, inputs=binds)
        outputs[f"{kind}_out"] = lg.ref(f"{kind}.{module.signature.output_names[0]}")
    p.output(**outputs)
    return p.build()


def test_every_registered_kind_has_a_generator() -> None:
    missing = builtin_kinds() - set(GENERATORS)
    assert not missing, f"module kinds without a generator in this test: {sorted(missing)} -- add one"
    assert set(GENERATORS) <= builtin_kinds()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_every_kind_round_trips_through_a_file(data: st.DataObject) -> None:
    program = program_of_every_kind(data.draw)
    assert {n.module.kind for n in program.nodes} == builtin_kinds()
    text = program.to_json()
    with tempfile.TemporaryDirectory() as tmp:
        path = program.save(Path(tmp) / "p.json")
        loaded = lg.Program.load(path, resources=program.resources())
        again = loaded.save(Path(tmp) / "again.json")
        assert again.read_bytes() == path.read_bytes()  # the same file, content hash included
    assert loaded.to_json() == text
    assert loaded.content_hash() == program.content_hash() and loaded == program
    for node in program.nodes:
        assert type(loaded.module(node.name)) is type(node.module)


def test_plan_keeps_every_setting() -> None:
    """Plan.from_config once dropped cache=False (and decode, knn, demo_pool)."""
    pool = [{"task": "t", "steps": ["a", "b"]}]
    m = lg.Plan(max_steps=3, cache=False, knn=1, demo_pool=pool, temperature=0.5)
    p = lg.Pipeline("p")
    n = p.add(m, "plan", task=p.input("task"))
    p.output(steps=n.steps)
    loaded = lg.Program.from_dict(json.loads(p.build().to_json())).module("plan")
    assert (loaded.cache, loaded.knn, loaded.demo_pool, loaded.max_steps) == (False, 1, tuple(pool), 3)


# --------------------------------------------------------------------------- the registry

def test_a_second_class_for_a_taken_kind_is_refused() -> None:
    with pytest.raises(lg.DefinitionError) as ei:
        class MyPredict(lg.Predict):
            kind = "predict"
    err = ei.value
    assert "'predict'" in str(err) and "lmgraph.modules.predict.Predict" in str(err) and "MyPredict" in str(err)
    assert 'kind = "my_kind"' in err.fix
    assert MODULE_KINDS["predict"] is lg.Predict


def test_a_subclass_without_a_kind_takes_nothing() -> None:
    class TracedPredict(lg.Predict):
        pass

    assert MODULE_KINDS["predict"] is lg.Predict and TracedPredict not in MODULE_KINDS.values()
    p = lg.Pipeline("p")
    n = p.add(TracedPredict("question -> answer"), "answer", question=p.input("question"))
    p.output(answer=n.answer)
    data = json.loads(p.build().to_json())
    assert data["nodes"][0]["module"]["kind"] == "predict"
    assert type(lg.Program.from_dict(data).module("answer")) is lg.Predict
    # asked for explicitly, it loads its parent's kind for that one load
    assert type(lg.Program.from_dict(data, kinds=[TracedPredict]).module("answer")) is TracedPredict
    assert type(lg.Program.from_dict(data).module("answer")) is lg.Predict


class ShoutConfig(BaseModel):  # any pydantic model; kind_fields (none here) may be left out
    model_config = ConfigDict(extra="forbid", strict=True)
    times: int = 1


class Shout(lg.Module):
    """A custom kind that saves through a config model of its own."""

    kind = "test_config_roundtrip_shout"
    config_model = ShoutConfig
    tunable = ("times",)

    def __init__(self, *, times: int = 1) -> None:
        self.times = times
        self._freeze()

    @property
    def signature(self) -> lg.Signature:
        return lg.Signature.parse("text -> loud")

    async def forward(self, inputs: dict[str, Any], call: Any) -> dict[str, Any]:
        return {"loud": inputs["text"].upper() * self.times}


def shout_program() -> lg.Program:
    p = lg.Pipeline("shout")
    n = p.add(Shout(times=2), "shout", text=p.input("text"))
    p.output(loud=n.loud)
    return p.build()


def test_a_custom_kind_saves_through_its_config_model(tmp_path: Path) -> None:
    prog = shout_program()
    assert prog.to_dict()["nodes"][0]["module"] == {"kind": "test_config_roundtrip_shout", "times": 2}
    path = prog.save(tmp_path / "shout.json")
    assert lg.Program.load(path) == prog and lg.Program.load(path, kinds=[Shout]) == prog
    out = lg.Program.load(path).run_sync(lg.RunContext(lm=FunctionLM(lambda r: ""), cache=False), text="hi")
    assert out.loud == "HIHI"


def test_kinds_refuses_a_class_that_is_not_the_kind_owner() -> None:
    class Other(lg.Module):
        kind = ""

    Other.kind = "predict"  # not a subclass of Predict: it cannot stand in for it
    with pytest.raises(lg.DefinitionError, match="taken by lmgraph.modules.predict.Predict"):
        lg.Program.from_dict(shout_program().to_dict(), kinds=[Other])
    with pytest.raises(lg.DefinitionError, match="takes Module classes"):
        lg.Program.from_dict(shout_program().to_dict(), kinds=[Shout()])  # type: ignore[list-item]


# --------------------------------------------------------------------------- strict loading

def simple() -> dict:
    p = lg.Pipeline("qa")
    n = p.add(lg.Predict("question -> answer"), "answer", question=p.input("question"))
    p.output(answer=n.answer)
    return p.build().to_dict()


def nested() -> dict:
    inner = lg.Pipeline("item")
    a = inner.add(lg.BestOfN(lg.Predict("item -> label"), n=2, select="judge"), "label", item=inner.input("item"))
    inner.output(label=a.label)
    p = lg.Pipeline("outer")
    m = p.add(lg.Map(inner.build(), over="item"), "each", item=p.input("items", list[str]))
    p.output(labels=m.label)
    return p.build().to_dict()


def load_tampered(tmp_path: Path, data: dict) -> ArtifactError:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(envelope({"program": data})))  # a validly hashed file
    with pytest.raises(ArtifactError) as ei:
        lg.Program.load(path)
    return ei.value


@pytest.mark.parametrize("where, node, field", [
    (lambda d: d["nodes"][0]["module"], "answer", "bogus"),
    (lambda d: d["nodes"][0]["module"]["signature"], "answer", "signature.bogus"),
    (lambda d: d["nodes"][0]["module"]["signature"]["outputs"][0], "answer", "signature.outputs[0].bogus"),
    (lambda d: d["nodes"][0], "answer", None),
    (lambda d: d["nodes"][0]["bindings"]["question"], "answer", "question"),
    (lambda d: d, None, None),
    (lambda d: d["inputs"][0], None, "question"),
])
def test_an_unknown_key_names_the_node_and_the_key(tmp_path: Path, where: Callable, node: str | None,
                                                    field: str | None) -> None:
    data = simple()
    where(data)["bogus"] = 1
    err = load_tampered(tmp_path, data)
    assert "unknown key" in str(err) and "bogus" in str(err)
    assert err.node == node and (field is None or err.field == field)
    assert "newer lmgraph" in err.fix and "upgrade" in err.fix


def test_an_unknown_key_deep_inside_names_the_path(tmp_path: Path) -> None:
    data = nested()
    data["nodes"][0]["module"]["program"]["nodes"][0]["module"]["judge"]["bogus"] = True
    err = load_tampered(tmp_path, data)
    assert err.node == "each/label" and err.field == "judge.bogus" and "'critique'" in str(err)
    data = nested()
    data["nodes"][0]["module"]["program"]["nodes"][0]["bogus"] = True
    assert load_tampered(tmp_path, data).node == "each/label"


@pytest.mark.parametrize("key, value, words", [
    ("temperature", "hot", "must be a number"), ("repair", "yes", "must be true or false"),
    ("max_tokens", 2.5, "must be a whole number"), ("demos", {}, "must be a list"),
])
def test_a_value_of_the_wrong_type_names_the_key(tmp_path: Path, key: str, value: Any, words: str) -> None:
    data = simple()
    data["nodes"][0]["module"][key] = value
    err = load_tampered(tmp_path, data)
    assert err.node == "answer" and err.field == key and words in str(err)


def test_a_newer_program_format_is_refused_naming_both_versions(tmp_path: Path) -> None:
    data = simple()
    data["lmgraph_program"] = 2
    err = load_tampered(tmp_path, data)
    assert "newer lmgraph" in str(err) and "version 2" in str(err) and "version 1" in str(err)
    assert "upgrade" in err.fix
    path = tmp_path / "a.json"
    path.write_text(json.dumps({**envelope({"program": simple()}), "lmgraph_artifact": 7}))
    with pytest.raises(ArtifactError) as ei:
        lg.Program.load(path)
    assert "newer lmgraph" in str(ei.value) and "version 7" in str(ei.value) and "version 1" in str(ei.value)
    assert "upgrade" in ei.value.fix
