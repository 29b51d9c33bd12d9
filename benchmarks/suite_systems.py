"""The systems of the suite (``suite.py``): what each column is, and how the lmgraph ones run.

``systems_for(mode)`` lists the columns; ``Runners.run`` runs one (task, system) unit with the
right framework (DSPy's side is ``suite_dspy.py``). The model-choice row compiles over two real
models: the embedded SmolLM2-135M Q4_1 and a requantized copy of it (:func:`second_model`,
llama.cpp's own quantizer, made once into ``~/.cache/lmgraph/models/`` when that row first runs,
never at import). Nothing here imports lmgraph, DSPy or llama.cpp at import time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from answers import CountingProxy, Journal, JournalLM, delta
from tasks import Task

# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class System:
    """One column of the comparison: a framework, an optimizer and its settings."""

    name: str
    framework: str          # "lmgraph" | "dspy" | "lmgraph-inprocess"
    optimizer: str          # "zero-shot" or the optimizer's name
    variant: str = ""       # DSPy adapter ("chat"/"json"/"schema": JSON constrained by the signature's schema)
    settings: tuple[tuple[str, Any], ...] = ()

    def opts(self) -> dict[str, Any]:
        return dict(self.settings)


def systems_for(mode: str) -> list[System]:
    quick = mode.startswith("quick")
    rs_candidates = 2 if quick else 6
    out = [
        System("lmgraph zero-shot", "lmgraph", "zero-shot"),
        System("lmgraph LabeledFewShot", "lmgraph", "LabeledFewShot", settings=(("k", 4),)),
        System("lmgraph BootstrapFewShot", "lmgraph", "BootstrapFewShot"),
        System("lmgraph BootstrapRandomSearch", "lmgraph", "BootstrapRandomSearch",
               settings=(("num_candidates", rs_candidates),)),
        System("lmgraph InstructionSearch", "lmgraph", "InstructionSearch",
               settings=(("num_candidates", 3 if quick else 6),)),
        System("lmgraph JointSearch", "lmgraph", "JointSearch", settings=(("num_trials", 4 if quick else 12),)),
        # the default compiler (lg.compile): pooled rows, raced levers, held-out confirmation
        System("lmgraph Compile", "lmgraph", "Compile"),
        # the same at 3 calls per train+val row instead of the suite's 8: the cost-quality trade a
        # user makes with lg.compile(..., budget=...) (its search is planned to fit the budget)
        System("lmgraph Compile (3 calls/row)", "lmgraph", "Compile", settings=(("budget_per_row", 3),)),
        # plan -> per-step answers -> combine, accepted only on evidence (no demos for the new nodes)
        System("lmgraph Decompose", "lmgraph", "Decompose", settings=(("max_steps", 3),)),
    ]
    for adapter in ("chat", "json"):
        out += [
            System(f"DSPy zero-shot [{adapter}]", "dspy", "zero-shot", adapter),
            System(f"DSPy LabeledFewShot [{adapter}]", "dspy", "LabeledFewShot", adapter, (("k", 4),)),
            System(f"DSPy BootstrapFewShot [{adapter}]", "dspy", "BootstrapFewShot", adapter),
            System(f"DSPy BootstrapFewShotWithRandomSearch [{adapter}]", "dspy", "BootstrapFewShotWithRandomSearch",
                   adapter, (("num_candidate_programs", rs_candidates),)),
            System(f"DSPy MIPROv2-light [{adapter}]", "dspy", "MIPROv2", adapter),
        ]
    out += [
        System("lmgraph zero-shot (in-process)", "lmgraph-inprocess", "zero-shot"),
        System("lmgraph JointSearch (in-process)", "lmgraph-inprocess", "JointSearch",
               settings=(("num_trials", 4 if quick else 12),)),
        System("lmgraph Compile (in-process)", "lmgraph-inprocess", "Compile"),
    ]
    out += reflective_systems(quick)
    if quick:  # the quick mode keeps the cheaper half of each framework's line-up
        keep = {"lmgraph zero-shot", "lmgraph BootstrapFewShot", "lmgraph JointSearch", "lmgraph Compile",
                "DSPy zero-shot [chat]", "DSPy zero-shot [json]", "DSPy BootstrapFewShot [chat]",
                "DSPy BootstrapFewShot [json]"}
        out = [s for s in out if s.name in keep or s.name in QUICK_OPT_IN]
    return out


# The reflection model of the reflective rows: the task model itself, the only local model.
REFLECTOR = "reflector"
REFLECTOR_NOTE = "the task model (SmolLM2-135M Q4_1; the only local model)"
# The model-choice row's two models (names in RunContext.lms); the second is requantized.
MODEL_A = "smollm2-135m-q4_1"
SECOND_FTYPE = "Q2_K"
MODEL_B = f"smollm2-135m-{SECOND_FTYPE.lower()}"
MODELS_DIR = Path(os.environ.get("LMGRAPH_MODELS_DIR", str(Path.home() / ".cache" / "lmgraph" / "models")))


def reflective_systems(quick: bool) -> list[System]:
    """Reflective optimizers on both sides, a constrained-proposer MIPROv2 and per-node model choice."""
    out = [System("lmgraph Reflect", "lmgraph", "Reflect",
                  settings=(("max_iterations", 6 if quick else 12), ("reflection_lm", REFLECTOR_NOTE)))]
    for adapter in ("chat", "json"):
        out += [
            System(f"DSPy MIPROv2-light, constrained proposer [{adapter}]", "dspy", "MIPROv2", adapter,
                   (("schema_proposer", True),)),
            # quick: GEPA may use as many metric calls as the unit's call budget (lmgraph's cap)
            System(f"DSPy GEPA [{adapter}]", "dspy", "GEPA", adapter,
                   (("max_metric_calls", "budget") if quick else ("auto", "light"),
                    ("reflection_lm", REFLECTOR_NOTE))),
            System(f"DSPy SIMBA [{adapter}]", "dspy", "SIMBA", adapter,
                   (("bsize", 8), ("num_candidates", 2), ("max_steps", 2)) if quick else
                   (("bsize", 32), ("num_candidates", 6), ("max_steps", 8))),
        ]
    # DSPy with its parse failures removed as far as DSPy allows: every signature answered in the
    # server's schema-constrained JSON mode (suite_dspy.schema_json_adapter)
    out += [
        System("DSPy zero-shot [schema]", "dspy", "zero-shot", "schema"),
        System("DSPy BootstrapFewShot [schema]", "dspy", "BootstrapFewShot", "schema"),
        System("DSPy MIPROv2-light [schema]", "dspy", "MIPROv2", "schema"),
        System("DSPy GEPA [schema]", "dspy", "GEPA", "schema",
               (("max_metric_calls", "budget") if quick else ("auto", "light"), ("reflection_lm", REFLECTOR_NOTE))),
        System("DSPy SIMBA [schema]", "dspy", "SIMBA", "schema",
               (("bsize", 8), ("num_candidates", 2), ("max_steps", 2)) if quick else
               (("bsize", 32), ("num_candidates", 6), ("max_steps", 8))),
    ]
    out += [
        System("lmgraph Reflect (in-process)", "lmgraph-inprocess", "Reflect",
               settings=(("max_iterations", 6 if quick else 12), ("reflection_lm", REFLECTOR_NOTE))),
        # both models in RunContext.lms; the race tries the other one (the default, Q4_1, is the
        # baseline: listing it too spends a candidate slot on a copy of the baseline)
        System("lmgraph Compile + model choice (in-process)", "lmgraph-inprocess", "Compile",
               settings=(("models", (MODEL_A, MODEL_B)), ("raced_models", (MODEL_B,)))),
    ]
    return out


# In quick mode these run only when ``--systems`` names them (the plain quick run keeps its
# < 15 min line-up); the results files show them once they have records.
QUICK_OPT_IN = frozenset(s.name for s in reflective_systems(True))


# --------------------------------------------------------------------------- the model-choice row

class ModelUnavailable(RuntimeError):
    """The second real model of the model-choice row could not be made: the row is skipped."""


def requantize(src: Path, dst: Path, ftype: str) -> Path:
    """``src`` GGUF -> ``dst`` re-quantized to ``ftype`` (e.g. "Q2_K", "Q8_0") with llama.cpp's
    quantizer (``allow_requantize``: the source is already quantized). Written to a temporary
    name and renamed, so a killed run never leaves a half file. Raises ModelUnavailable saying why."""
    try:
        import ctypes

        import llama_cpp
    except ImportError as exc:
        raise ModelUnavailable(f"llama-cpp-python is not importable ({exc})") from None
    code = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}", None)
    if code is None:
        raise ModelUnavailable(f"llama_cpp has no LLAMA_FTYPE_MOSTLY_{ftype}")
    if not src.is_file():
        raise ModelUnavailable(f"the source model {src} does not exist")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.part{os.getpid()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = code
    params.allow_requantize = True
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        raise ModelUnavailable(f"llama_model_quantize({src.name} -> {ftype}) returned {rc}")
    tmp.replace(dst)
    return dst


def second_model(ftype: str = SECOND_FTYPE, models_dir: Path | None = None,
                 quantize: Callable[[Path, Path, str], Path] = requantize) -> Path:
    """The requantized copy of the embedded model (made on the first call, then reused)."""
    try:
        from lmgraph.lm.embedded import embedded_model_path

        src = embedded_model_path()
    except Exception as exc:  # noqa: BLE001 - its DefinitionError says how to install the model
        raise ModelUnavailable(f"the embedded model is missing: {exc}") from None
    stem = src.name.split(".")[0]  # SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct
    dst = (models_dir or MODELS_DIR) / f"{stem}.{ftype}.gguf"
    return dst if dst.is_file() else quantize(src, dst, ftype)


# --------------------------------------------------------------------------- lmgraph systems

def _lmgraph_optimizer(system: System, task: Task, seed: int) -> Any:
    from lmgraph import optimizers as O

    o = system.opts()
    if system.optimizer == "LabeledFewShot":
        return O.LabeledFewShot(k=o.get("k", 4))
    if system.optimizer == "BootstrapFewShot":
        return O.BootstrapFewShot(max_demos=4, max_labeled=4)
    if system.optimizer == "BootstrapRandomSearch":
        return O.BootstrapRandomSearch(max_demos=4, max_labeled=4, num_candidates=o["num_candidates"])
    if system.optimizer == "InstructionSearch":
        return O.InstructionSearch(num_candidates=o["num_candidates"], minibatch_size=10)
    if system.optimizer == "JointSearch":
        return O.JointSearch(num_trials=o["num_trials"], num_instructions=2, num_demo_sets=3, max_demos=4,
                             formats=("chat", "completion", "json"), minibatch_size=10)
    if system.optimizer == "Decompose":
        return O.Decompose(max_steps=o["max_steps"])
    if system.optimizer == "Compile":
        models = o.get("raced_models") or o.get("models")
        return O.Compile(max_demos=4, **({"models": list(models)} if models else {}))
    if system.optimizer == "Reflect":
        return O.Reflect(reflection_lm=REFLECTOR, max_iterations=o["max_iterations"], minibatch_size=4)
    raise ValueError(f"unknown lmgraph optimizer {system.optimizer!r}")


def _timed(journal: Journal | None, phase: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run one phase of a unit: (its result, its wall time including killed segments' time)."""
    if journal is not None:
        journal.phase(phase)
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    if journal is not None:
        journal.phase_end(phase, wall)
        wall += journal.prior_s(phase)
    return result, wall


def run_lmgraph(system: System, task: Task, data: tuple[list, list, list], *, seed: int, lm: Any,
                proxy: CountingProxy | None, budget_calls: int, journal: Journal | None = None,
                lms: Mapping[str, Any] | None = None) -> dict[str, Any]:
    import lmgraph as lg
    from lmgraph.cache import MemoryCache
    from lmgraph.errors import OutputParseError
    from lmgraph.evaluation import evaluate_sync

    train, val, test = data
    cache = MemoryCache()
    program = task.lmgraph_program()

    def metric(ex: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> float:
        return task.score(dict(ex), pred)

    def with_feedback(ex: Mapping[str, Any], pred: Mapping[str, Any] | None, trace: Any = None) -> tuple[float, str]:
        return task.score_feedback(dict(ex), pred)

    lms = dict(lms or {})
    if system.optimizer == "Reflect":
        lms.setdefault(REFLECTOR, lm)  # the reflection model: the task model itself
    out: dict[str, Any] = {"compile": None}
    if system.optimizer != "zero-shot":
        ctx = lg.RunContext(lm=lm, lms=lms, cache=cache, max_concurrency=2)
        opt = _lmgraph_optimizer(system, task, seed)
        compile_metric = with_feedback if system.optimizer == "Reflect" else metric
        before = proxy.snapshot() if proxy else None
        (program, report), wall = _timed(journal, "compile", lambda: opt.optimize(
            program, train, compile_metric, valset=val, budget=lg.Budget(max_calls=budget_calls), seed=seed,
            ctx=ctx))
        served = delta(proxy.snapshot(), before) if proxy else {}
        out["compile"] = {
            "calls": int(report.spent.get("calls", 0)), "tokens": int(report.spent.get("tokens", 0)),
            "cache_misses": report.runtime.get("cache_misses"), "requests": served.get("requests"),
            "request_tokens": (served.get("prompt_tokens", 0) + served.get("completion_tokens", 0)) if served else None,
            "wall_s": round(wall, 1), "budget_calls": budget_calls, "stopped": report.stopped,
            "chosen": report.best.label, "val_baseline": round(report.baseline.mean, 4),
            "val_best": round(report.best.mean, 4),
        }
        if system.opts().get("models"):
            out["compile"]["model_choice"] = model_choice_summary(program, report)
    ctx = lg.RunContext(lm=lm, lms=lms, cache=cache, max_concurrency=2)
    before = proxy.snapshot() if proxy else None
    res, wall = _timed(journal, "test", lambda: evaluate_sync(program, test, metric, ctx=ctx, concurrency=2))
    preds, scores = [], {m: [] for m in task.metrics}
    parse_fail = errors = 0
    for row, r in zip(test, res.results):
        pred = dict(r.outputs) if r.ok else None
        if not r.ok:
            parse_fail += isinstance(r.error, OutputParseError)
            errors += not isinstance(r.error, OutputParseError)
        for m in task.metrics:
            scores[m].append(task.score(row, pred, m))
        preds.append(None if pred is None else str(pred.get(task.output))[:200])
    out.update(scores=scores, predictions=preds, parse_failures=parse_fail, errors=errors,
               test_eval={"wall_s": round(wall, 1),
                          **({"requests": delta(proxy.snapshot(), before)["requests"]} if proxy else {})})
    return out


def model_choice_summary(program: Any, report: Any) -> dict[str, Any]:
    """What the model-choice row reports: each node's model after compiling (None: the context's
    default, Q4_1), the raced model candidates' search-row scores and the (score, cost) front."""
    chosen = {p.rsplit(".", 1)[0]: param.value for p, param in program.named_parameters() if p.endswith(".lm")}
    raced = [{"label": c.label, "mean": round(sum(c.scores) / len(c.scores), 4) if c.scores else None,
              "rows": len(c.scores), "tokens": c.tokens, "calls": c.calls, "status": c.status}
             for c in report.candidates if c.label.startswith("model ") or " on model " in c.label]
    base = report.baseline
    return {"models": {MODEL_A: "embedded SmolLM2-135M-Instruct Q4_1 (the context's default model)",
                       MODEL_B: f"the same model requantized to {SECOND_FTYPE} (llama.cpp's quantizer)"},
            "chosen": chosen, "baseline": {"label": f"baseline ({MODEL_A})", "mean": round(base.mean, 4),
                                           "rows": len(base.scores), "tokens": base.tokens, "calls": base.calls},
            "raced": raced, "pareto": report.data.get("pareto")}


# --------------------------------------------------------------------------- one unit

class Runners:
    """Runs one (task, system) unit; holds what units share (DSPy's call counter, the in-process
    models), made on first use."""

    def __init__(self, proxy: CountingProxy | None, n_threads: int) -> None:
        self.proxy = proxy
        self.n_threads = n_threads
        self.counter: Any = None
        self.inproc: dict[str, Any] = {}

    def _inproc(self, name: str, path: Path | None) -> Any:
        if name not in self.inproc:
            from lmgraph.lm.llamacpp import LlamaCppLM

            self.inproc[name] = LlamaCppLM(path, n_ctx=4096, n_threads=self.n_threads)
        return self.inproc[name]

    def run(self, system: System, task: Task, data: tuple[list, list, list], *, seed: int, budget: int,
            journal: Journal) -> dict[str, Any]:
        if system.framework == "dspy":
            from suite_dspy import DSPyCounter, run_dspy

            if self.counter is None:
                self.counter = DSPyCounter()
            assert self.proxy is not None
            return run_dspy(system, task, data, seed=seed, base_url=self.proxy.base_url, proxy=self.proxy,
                            counter=self.counter, journal=journal, budget_calls=budget)
        if system.framework == "lmgraph":
            from lmgraph.lm.litellm import openai_compatible

            assert self.proxy is not None
            lm = openai_compatible(self.proxy.base_url, "local", json_mode="json_object", timeout=600)
            return run_lmgraph(system, task, data, seed=seed, lm=lm, proxy=self.proxy, budget_calls=budget,
                               journal=journal)
        lms = None
        if system.opts().get("models"):
            path = second_model()  # ModelUnavailable: the unit is recorded as skipped, saying why
            lms = {MODEL_A: JournalLM(self._inproc(MODEL_A, None), journal),
                   MODEL_B: JournalLM(self._inproc(MODEL_B, path), journal)}
        lm = JournalLM(self._inproc(MODEL_A, None), journal)
        return run_lmgraph(system, task, data, seed=seed, lm=lm, proxy=None, budget_calls=budget, journal=journal,
                           lms=lms)
