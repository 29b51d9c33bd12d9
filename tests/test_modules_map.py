"""Map: fan a sub-program over list inputs, in order, concurrently, with clear failures."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

import lmgraph as lg
from lmgraph.errors import DefinitionError, PipelineValidationError, RunError
from lmgraph.modules import Map, Predict
from lmgraph.testing import FunctionLM, request_text


def per_item() -> lg.Program:
    p = lg.Pipeline("shout")
    node = p.add(Predict("item, style -> loud"), item=p.input("item"), style=p.input("style"))
    p.output(loud=node.loud)
    return p.build()


def shout(req: lg.LMRequest) -> str:
    t = request_text(req)
    item = re.findall(r"Item: (.*)", t)[-1].strip()
    style = re.findall(r"Style: (.*)", t)[-1].strip()
    if item == "bad":
        return ""  # unparseable: no output at all
    return f"Loud: {item.upper()}{style}"


def mapped(module: Map, items_type: object = list[str]) -> lg.Program:
    p = lg.Pipeline("outer")
    node = p.add(module, item=p.input("items", items_type), style=p.input("style"))
    p.output(louds=node.loud)
    return p.build()


def test_signature_lists_mapped_inputs_and_outputs() -> None:
    m = Map(per_item(), over="item")
    assert m.signature.shorthand() == "item: list[str], style -> loud: list[str]"
    assert m.describe() == "Map[shout over item, concurrency=4]"
    assert list(m.submodules()) == ["predict"]


def test_order_preserved_broadcast_and_child_traces() -> None:
    items = [f"w{i}" for i in range(7)]
    prog = mapped(Map(per_item(), over="item", concurrency=3))
    out = prog.run_sync(lg.RunContext(lm=FunctionLM(shout), cache=False), items=items, style="!")
    assert out.louds == [f"W{i}!" for i in range(7)]
    nt = out.trace.node("map")
    assert [c.inputs["item"] for c in nt.children] == items
    assert nt.usage["calls"] == 7 and nt.meta["items"] == 7


def test_items_run_concurrently() -> None:
    n, latency = 8, 0.05
    lm = FunctionLM(shout, latency_s=latency)
    prog = mapped(Map(per_item(), over="item", concurrency=n))
    t0 = time.perf_counter()
    out = prog.run_sync(lg.RunContext(lm=lm, cache=False), items=[str(i) for i in range(n)], style="")
    wall = time.perf_counter() - t0
    assert out.louds == [str(i) for i in range(n)]
    assert wall < n * latency / 2.5, wall  # serial would be n * latency


def test_concurrency_bound_is_respected() -> None:
    n, latency = 6, 0.03
    prog = mapped(Map(per_item(), over="item", concurrency=2))
    t0 = time.perf_counter()
    prog.run_sync(lg.RunContext(lm=FunctionLM(shout, latency_s=latency), cache=False),
                  items=[str(i) for i in range(n)], style="")
    assert time.perf_counter() - t0 >= (n / 2) * latency * 0.9


def test_empty_list_makes_no_calls() -> None:
    lm = FunctionLM(shout)
    out = mapped(Map(per_item(), over="item")).run_sync(lg.RunContext(lm=lm, cache=False), items=[], style="")
    assert out.louds == [] and lm.calls == []


def test_failing_item_fails_the_node_naming_the_index() -> None:
    prog = mapped(Map(per_item(), over="item"))
    with pytest.raises(RunError, match=r"node 'map': item 2 of 4 failed: OutputParseError") as e:
        prog.run_sync(lg.RunContext(lm=FunctionLM(shout), cache=False), items=["a", "b", "bad", "c"], style="")
    assert e.value.node == "map"
    children = e.value.trace.node("map").children  # type: ignore[attr-defined]
    assert any(c.error and "OutputParseError" in c.error for c in children)


@pytest.mark.parametrize("on_error", ["none", "skip"])
def test_failed_items_keep_their_position(on_error: str) -> None:
    # issue 19: 'skip' used to drop failed items, so outputs no longer lined up with inputs
    m = Map(per_item(), over="item", on_error=on_error)
    prog = mapped(m)
    items = ["a", "bad", "c", "bad"]
    out = prog.run_sync(lg.RunContext(lm=FunctionLM(shout), cache=False), items=items, style="")
    assert out.louds == ["A", None, "C", None] and len(out.louds) == len(items)
    nt = out.trace.node("map")
    assert list(nt.meta["failed"]) == ["1", "3"] and "OutputParseError" in nt.meta["failed"]["1"]
    assert [c.inputs["item"] for c in nt.children] == items  # failed items' traces too, in order
    assert [bool(c.error) for c in nt.children] == [False, True, False, True]
    # the outputs say they may hold None; a 'raise' Map's do not
    assert m.signature.shorthand() == "item: list[str], style -> loud: list[Optional[str]]"
    assert m.describe() == "Map[shout over item, concurrency=4, failed items -> None]"
    assert Map(per_item(), over="item").signature.output("loud").annotation == list[str]
    assert m.config()["on_error"] == on_error  # saved as written


def test_zip_over_two_inputs_and_length_mismatch() -> None:
    m = Map(per_item(), over=["item", "style"])
    p = lg.Pipeline("zip")
    node = p.add(m, item=p.input("items", list[str]), style=p.input("styles", list[str]))
    p.output(louds=node.loud)
    prog = p.build()
    ctx = lg.RunContext(lm=FunctionLM(shout), cache=False)
    assert prog.run_sync(ctx, items=["a", "b"], styles=["?", "!"]).louds == ["A?", "B!"]
    with pytest.raises(RunError, match="differ in length"):
        prog.run_sync(ctx, items=["a", "b"], styles=["?"])


def test_binding_a_str_into_an_over_field_fails_validation() -> None:
    with pytest.raises(PipelineValidationError) as e:
        mapped(Map(per_item(), over="item"), items_type=str)
    assert e.value.node == "map" and e.value.field == "item"
    assert "list[str]" in str(e.value)


def test_map_accepts_a_pipeline_builder_and_replace() -> None:
    p = lg.Pipeline("shout")
    node = p.add(Predict("item, style -> loud"), item=p.input("item"), style=p.input("style"))
    p.output(loud=node.loud)
    m = Map(p, over="item")
    assert m.program == per_item()
    m2 = m.replace(concurrency=1)
    assert m2.concurrency == 1 and m2.signature == m.signature


@pytest.mark.parametrize("make", [
    lambda: Map(per_item(), over="nope"),
    lambda: Map(per_item(), over=[]),
    lambda: Map(per_item(), over="item", concurrency=0),
    lambda: Map(per_item(), over="item", on_error="ignore"),
    lambda: Map(Predict("a -> b"), over="a"),
])
def test_bad_config(make: Callable[[], object]) -> None:
    with pytest.raises(DefinitionError, match="Fix:"):
        make()
