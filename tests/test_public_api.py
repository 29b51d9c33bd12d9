"""The public surface: curated ``__all__``, and a light, side-effect-free import."""

from __future__ import annotations

import json
import subprocess
import sys

import lmgraph

HEAVY = ("networkx", "llama_cpp", "litellm", "diskcache", "tenacity", "tqdm")


def test_all_names_import():
    assert len(lmgraph.__all__) == len(set(lmgraph.__all__))
    for name in lmgraph.__all__:
        assert getattr(lmgraph, name) is not None, name
    ns: dict[str, object] = {}
    exec("from lmgraph import *", ns)  # noqa: S102 - checking the star-import surface
    assert set(lmgraph.__all__) <= set(ns)


def test_core_names_are_exported():
    for name in ("Pipeline", "Program", "Predict", "ChainOfThought", "Signature", "RunContext", "Budget",
                 "InputField", "OutputField", "const", "LmgraphError", "DefinitionError", "RunError",
                 "PipelineValidationError", "OutputParseError", "BudgetExceeded", "ArtifactError"):
        assert name in lmgraph.__all__, name


def test_error_hierarchy():
    for name in ("DefinitionError", "RunError"):
        assert issubclass(getattr(lmgraph, name), lmgraph.LmgraphError)
    for name in ("SignatureError", "PipelineValidationError", "ArtifactError"):
        assert issubclass(getattr(lmgraph, name), lmgraph.DefinitionError)
    for name in ("OutputParseError", "BudgetExceeded", "LMError", "InputError"):
        assert issubclass(getattr(lmgraph, name), lmgraph.RunError)


def _fresh_import(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_is_light():
    code = ("import sys, json, lmgraph\n"
            f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    loaded = _fresh_import(code)
    assert not any(loaded.values()), {m for m, v in loaded.items() if v}


def test_building_a_pipeline_stays_light_except_networkx():
    code = ("import sys, json, lmgraph as lg\n"
            "p = lg.Pipeline('p'); q = p.input('q'); n = p.add(lg.Predict('q -> a'), name='n', q=q)\n"
            "p.output(a=n.a); prog = p.build(); prog.render(); prog.to_json()\n"
            f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    loaded = _fresh_import(code)
    assert loaded.pop("networkx") is True  # validation's topological sort is the one user
    assert not any(loaded.values()), {m for m, v in loaded.items() if v}
