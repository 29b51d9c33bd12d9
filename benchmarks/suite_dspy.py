"""The DSPy side of the suite (``suite.py``): its LM, call counter, optimizers and one unit's run.

DSPy is imported only inside the functions, so ``suite.py`` loads without it. Optimizers: the
few-shot ones, MIPROv2 (auto="light"; also with a proposer whose output the server's JSON
grammar constrains, see :func:`proposer_schema_adapter`), GEPA (reflection model: the same
served model; the metric returns ``dspy.Prediction(score=..., feedback=...)``) and SIMBA.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from answers import CountingProxy, Journal, delta
from suite_systems import System, _timed
from tasks import Task


class DSPyCounter:
    """Counts DSPy's logical LM calls (cache hits included).

    DSPy 3.4.1 ends every ``LM`` call (sync or async, any engine) in
    ``dspy.clients.execution.finalize(lm, call, result)``, which ``LM.__call__`` imports at call
    time; wrapping that module attribute sees each call once, with ``result.cache_hit``.
    """

    def __init__(self) -> None:
        from dspy.clients import execution

        self.calls = 0
        self.cache_hits = 0
        self._lock = threading.Lock()
        original = execution.finalize
        counter = self

        def counting(lm: Any, call: Any, result: Any, *args: Any, **kwargs: Any) -> Any:
            with counter._lock:
                counter.calls += 1
                counter.cache_hits += bool(getattr(result, "cache_hit", False))
            return original(lm, call, result, *args, **kwargs)

        execution.finalize = counting

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"calls": self.calls, "cache_hits": self.cache_hits}


def _dspy_lm(base_url: str, max_tokens: int, temperature: float = 0.0) -> Any:
    import dspy

    return dspy.LM("openai/local", api_base=base_url, api_key="sk-local", engine="litellm",
                   temperature=temperature, max_tokens=max_tokens, cache=True, num_retries=0)


def _dspy_fresh_cache() -> None:
    import dspy

    # A new, empty in-memory cache per system (no disk): every system starts cold.
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)


# DSPy optimizers abort a compile after `max_errors` failed examples (default 10); a 135M model
# fails to parse often, so (as a user would) we let them go on: failures then just score 0.
MAX_ERRORS = 100_000
# Proposers and reflections (MIPROv2, GEPA, SIMBA) need room to write; GEPA's reflection samples
# at lmgraph Reflect's default temperature (0.7), so both reflective optimizers sample alike.
PROPOSER_MAX_TOKENS = 256
REFLECTION_TEMPERATURE = 0.7


def _dspy_optimizer(system: System, metric: Callable, base_url: str, seed: int, *,
                    feedback_metric: Callable | None = None,
                    budget_calls: int | None = None) -> Callable[[Any, list, list], Any]:
    import dspy

    o = system.opts()
    if system.optimizer == "LabeledFewShot":
        return lambda prog, tr, va: dspy.LabeledFewShot(k=o.get("k", 4)).compile(prog, trainset=tr)
    if system.optimizer == "BootstrapFewShot":
        return lambda prog, tr, va: dspy.BootstrapFewShot(
            metric=metric, max_bootstrapped_demos=4, max_labeled_demos=4,
            max_errors=MAX_ERRORS).compile(prog, trainset=tr)
    if system.optimizer == "BootstrapFewShotWithRandomSearch":
        return lambda prog, tr, va: dspy.BootstrapFewShotWithRandomSearch(
            metric=metric, max_bootstrapped_demos=4, max_labeled_demos=4,
            num_candidate_programs=o["num_candidate_programs"], num_threads=2,
            max_errors=MAX_ERRORS).compile(prog, trainset=tr, valset=va)
    if system.optimizer == "MIPROv2":
        # The instruction proposer needs room to write; same server, same greedy default.
        prompt_lm = _dspy_lm(base_url, PROPOSER_MAX_TOKENS)
        return lambda prog, tr, va: dspy.MIPROv2(
            metric=metric, prompt_model=prompt_lm, auto="light", num_threads=2, max_bootstrapped_demos=4,
            max_labeled_demos=4, seed=seed, verbose=False, max_errors=MAX_ERRORS).compile(prog, trainset=tr, valset=va)
    if system.optimizer == "GEPA":
        if feedback_metric is None:
            raise ValueError("GEPA needs a metric with feedback (feedback_metric=)")
        # Budget: auto="light" (full mode), or a number of metric calls (quick mode: "budget" is the
        # unit's call budget, the hard cap lmgraph's optimizers get on the same splits).
        calls = o.get("max_metric_calls")
        calls = budget_calls if calls == "budget" else calls
        sizing: dict[str, Any] = {"max_metric_calls": calls} if calls else {"auto": o.get("auto", "light")}
        reflection = _dspy_lm(base_url, PROPOSER_MAX_TOKENS, temperature=REFLECTION_TEMPERATURE)
        return lambda prog, tr, va: dspy.GEPA(
            metric=feedback_metric, reflection_lm=reflection, num_threads=2, seed=seed,
            reflection_minibatch_size=o.get("reflection_minibatch_size", 3), **sizing).compile(
                prog, trainset=tr, valset=va)
    if system.optimizer == "SIMBA":
        # SIMBA's rule-writing ("advice") calls go to prompt_model: the same served model
        prompt_lm = _dspy_lm(base_url, PROPOSER_MAX_TOKENS)
        return lambda prog, tr, va: dspy.SIMBA(
            metric=metric, bsize=min(o.get("bsize", 32), len(tr)), num_candidates=o.get("num_candidates", 6),
            max_steps=o.get("max_steps", 8), max_demos=4, prompt_model=prompt_lm, num_threads=2).compile(
                prog, trainset=tr, seed=seed)
    raise ValueError(f"unknown DSPy optimizer {system.optimizer!r}")


def schema_json_adapter() -> Any:
    """DSPy's JSONAdapter asking the server's JSON mode for the signature's output fields as a JSON
    schema (``response_format={"type": "json_object", "schema": ...}``), which llama.cpp turns into
    a grammar: the reply is the object the adapter parses, with the right keys and, for a Literal
    output, one of the options -- never free text.

    Stock DSPy sends a schema only where litellm says the model supports one (not for
    ``openai/local``), and then in OpenAI's ``json_schema`` shape, which llama-cpp-python's server
    does not read; otherwise it asks for plain ``json_object``, which constrains the syntax but not
    the keys (the 135M model then writes JSON of its own invention). Adapters are DSPy's extension
    point for exactly this, so this is as far as DSPy allows a parse failure to be removed."""
    import dspy
    import pydantic

    class SchemaJSON(dspy.JSONAdapter):
        def _prepare_response_format(self, lm: Any, lm_kwargs: dict, signature: Any) -> None:
            props = {n: pydantic.TypeAdapter(f.annotation).json_schema()
                     for n, f in signature.output_fields.items()}
            lm_kwargs["response_format"] = {"type": "json_object", "schema": {
                "type": "object", "properties": props, "required": list(props)}}

    return SchemaJSON()


def proposer_schema_adapter(base: Any, task_outputs: set[str]) -> Any:
    """``base`` (a ChatAdapter or JSONAdapter) for the task's own signature; every other signature
    (MIPROv2's instruction proposer, dataset and program describers) is answered by
    :func:`schema_json_adapter` (schema-constrained JSON).

    Why: with either stock adapter MIPROv2-light failed on this model with AdapterParseError in
    the proposer (2026-11-24 full run): the 135M model wrote JSON of its own invention
    (``{"tutorial": ...}``) instead of ``proposed_instruction``. The task program still sees
    exactly the row's adapter, so its rows stay comparable to the others (the ``[schema]`` rows
    constrain the task program too).
    """
    constrained = schema_json_adapter()

    class Dispatch(type(base)):  # type: ignore[misc]
        def _task(self, signature: Any) -> bool:
            return bool(task_outputs & set(signature.output_fields))

        def __call__(self, lm: Any, lm_kwargs: dict, signature: Any, demos: list, inputs: dict) -> Any:
            if self._task(signature):
                return super().__call__(lm, lm_kwargs, signature, demos, inputs)
            return constrained(lm, lm_kwargs, signature, demos, inputs)

        async def acall(self, lm: Any, lm_kwargs: dict, signature: Any, demos: list, inputs: dict) -> Any:
            if self._task(signature):
                return await super().acall(lm, lm_kwargs, signature, demos, inputs)
            return await constrained.acall(lm, lm_kwargs, signature, demos, inputs)

    return Dispatch()


def feedback_metrics(task: Task) -> tuple[Callable, Callable]:
    """(metric, GEPA's feedback metric) over the task's own scorer."""
    import dspy

    def metric(example: Any, pred: Any, trace: Any = None) -> float:
        return task.score(example.toDict(), {task.output: getattr(pred, task.output, None)})

    def with_feedback(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None,
                      pred_trace: Any = None) -> Any:
        score, text = task.score_feedback(gold.toDict(), {task.output: getattr(pred, task.output, None)})
        return dspy.Prediction(score=score, feedback=text)

    return metric, with_feedback


def run_dspy(system: System, task: Task, data: tuple[list, list, list], *, seed: int, base_url: str,
             proxy: CountingProxy, counter: DSPyCounter, journal: Journal | None = None,
             budget_calls: int | None = None) -> dict[str, Any]:
    import dspy
    from dspy.utils.exceptions import AdapterParseError

    train, val, test = data
    # `import dspy` sets its logger to INFO; failures are counted in the records, and per-example
    # parse errors from its optimizers would bury the run's log (hundreds of MB over a full run)
    logging.getLogger("dspy").setLevel(logging.CRITICAL)
    _dspy_fresh_cache()
    lm = _dspy_lm(base_url, task.max_tokens)
    if system.variant == "schema":  # every signature, the task's included, in schema-constrained JSON
        adapter = schema_json_adapter()
    else:
        adapter = dspy.JSONAdapter() if system.variant == "json" else dspy.ChatAdapter()
    if system.opts().get("schema_proposer") and system.variant != "schema":
        adapter = proposer_schema_adapter(adapter, {task.output})
    dspy.configure(lm=lm, adapter=adapter)

    def to_ex(row: Mapping[str, Any]) -> Any:
        return dspy.Example(**row).with_inputs(*task.inputs)

    metric, with_feedback = feedback_metrics(task)
    program = task.dspy_program()
    out: dict[str, Any] = {"compile": None}
    if system.optimizer != "zero-shot":
        compile_fn = _dspy_optimizer(system, metric, base_url, seed, feedback_metric=with_feedback,
                                     budget_calls=budget_calls)
        before, cbefore = proxy.snapshot(), counter.snapshot()
        random.seed(seed)
        program, wall = _timed(journal, "compile",
                               lambda: compile_fn(program, [to_ex(r) for r in train], [to_ex(r) for r in val]))
        served, calls = delta(proxy.snapshot(), before), delta(counter.snapshot(), cbefore)
        out["compile"] = {"calls": calls["calls"], "cache_hits": calls["cache_hits"],
                          "requests": served["requests"],
                          "request_tokens": served["prompt_tokens"] + served["completion_tokens"],
                          "tokens": served["prompt_tokens"] + served["completion_tokens"],
                          "wall_s": round(wall, 1)}

    def one(row: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        try:
            with dspy.context(lm=lm, adapter=adapter):
                pred = program(**{k: row[k] for k in task.inputs})
            return {task.output: getattr(pred, task.output, None)}, None
        except AdapterParseError:
            return None, "parse"
        except Exception as exc:  # recorded, never crashes the batch
            return None, f"{type(exc).__name__}: {exc}"[:300]

    def run_test() -> list[tuple[dict[str, Any] | None, str | None]]:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(one, test))

    before = proxy.snapshot()
    got, wall = _timed(journal, "test", run_test)
    scores = {m: [task.score(row, pred, m) for row, (pred, _) in zip(test, got)] for m in task.metrics}
    errs = [e for _, e in got if e and e != "parse"]
    out.update(scores=scores, predictions=[None if p is None else str(p[task.output])[:200] for p, _ in got],
               parse_failures=sum(e == "parse" for _, e in got), errors=len(errs),
               error_examples=errs[:3],
               test_eval={"wall_s": round(wall, 1), "requests": delta(proxy.snapshot(), before)["requests"]})
    return out
