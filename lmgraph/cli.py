"""The ``lmgraph`` command line: render, run, eval, compile and diff saved programs.

Programs are read from JSON (a bare ``Program.save`` file or a compiled artifact). Programs that
need runtime resources (Retrieve corpora, tools) cannot be bound here: use the Python API.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ArtifactError, DefinitionError, InputError, LmgraphError

METRICS = {"exact_match": "exact_match", "em": "normalized_em", "f1": "token_f1",
           "accuracy": "label_accuracy", "numeric": "numeric_match"}
OPTIMIZERS = {"labeled": "LabeledFewShot", "bootstrap": "BootstrapFewShot",
              "random_search": "BootstrapRandomSearch", "instructions": "InstructionSearch",
              "joint": "JointSearch", "decompose": "Decompose", "compile": "Compile"}


# ---------------------------------------------------------------- building blocks (tests patch make_lm)

def make_lm(spec: str, json_mode: str = "auto") -> Any:
    """The model for ``--model``: embedded | gguf:PATH | openai:BASE_URL | http:BASE_URL | litellm:MODEL.

    ``json_mode`` (``--json-mode``) is how HTTP models take a JSON schema: ``auto`` negotiates
    it with the server; ``json_schema``, ``json_object`` or ``none`` fixes it."""
    from .lm.capabilities import check_json_mode

    check_json_mode(json_mode, owner="--json-mode")
    kind, _, rest = spec.partition(":")
    if json_mode != "auto" and (spec == "embedded" or kind == "gguf"):
        raise DefinitionError(f"--json-mode {json_mode} applies to HTTP models only; {spec.split(':')[0]} "
                              "runs in process, where a JSON schema always becomes a grammar",
                              fix="drop --json-mode, or use it with --model openai:URL, http:URL or litellm:MODEL.")
    if spec == "embedded":
        from .lm.llamacpp import LlamaCppLM

        return LlamaCppLM()
    if kind == "gguf" and rest:
        from .lm.llamacpp import LlamaCppLM

        return LlamaCppLM(rest)
    if kind == "openai" and rest:
        from .lm.litellm import openai_compatible

        return openai_compatible(rest, json_mode=json_mode)
    if kind == "http" and rest:
        from .lm.openai_http import OpenAIServerLM

        return OpenAIServerLM(rest, json_mode=json_mode)
    if kind == "litellm" and rest:
        from .lm.litellm import LiteLLM

        return LiteLLM(rest, json_mode=json_mode)
    raise DefinitionError(f"unknown --model {_shown(spec)!r}",
                          fix="use embedded, gguf:/path/file.gguf, openai:http://host:port/v1 (through litellm), "
                              "http:http://host:port/v1 (the lean aiohttp client) or litellm:MODEL.")


def _shown(spec: str) -> str:
    """A --model value without credentials (a URL may carry a key)."""
    from .lm.credentials import redact_url

    kind, sep, rest = spec.partition(":")
    return kind + sep + (redact_url(rest) or "") if "://" in rest else (redact_url(spec) or "")


class _Unbound(dict):  # type: ignore[type-arg]
    """Resources for viewing only (render/diff): any name resolves to a stub that refuses to run."""

    def __missing__(self, name: str) -> Any:
        def unbound(*args: Any, **kwargs: Any) -> Any:
            raise DefinitionError(f"resource {name!r} is not bound on the command line",
                                  fix="run this program from Python: Program.load(path, resources={...}).")
        unbound.__name__ = name
        return unbound


#: set by ``lmgraph --trusted ...``: load program files saved without the checked envelope
_TRUSTED = {"files": False}


def load_program(path: str, *, view_only: bool = False) -> Any:
    from .pipeline.program import Program

    try:
        return Program.load(path, resources=_Unbound() if view_only else None, trusted=_TRUSTED["files"])
    except ArtifactError as e:
        if "needs the" in e.message:  # a retriever/tool/reward function bound by name
            raise ArtifactError(f"{path}: {e.message}; the command line cannot bind resources "
                                "(retrievers, tools).", node=e.node,
                                fix="load it with the Python API: Program.load(path, resources={...}).") from None
        raise


def read_jsonl(path: str) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise DefinitionError(f"cannot read data file {path}: {e.strerror or e}",
                              fix="pass an existing JSONL file (one JSON object per line).") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DefinitionError(f"{path}:{i} is not valid JSON ({e.msg})",
                                  fix="write one JSON object per line.") from None
        if not isinstance(row, dict):
            raise DefinitionError(f"{path}:{i} is a JSON {type(row).__name__}, not an object",
                                  fix="write one JSON object (field -> value) per line.")
        rows.append(row)
    if not rows:
        raise DefinitionError(f"{path} holds no rows", fix="write one JSON object per line.")
    return rows


def metric_spec(text: str) -> tuple[str, str | None, str | None]:
    """argparse type for NAME[:pred_field[:label_field]]."""
    parts = text.split(":")
    if len(parts) > 3 or parts[0] not in METRICS or any(not p for p in parts[1:]):
        raise argparse.ArgumentTypeError(
            f"bad metric {text!r}: use NAME[:pred_field[:label_field]] with NAME one of {', '.join(METRICS)}")
    return parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else None)


def make_metric(spec: tuple[str, str | None, str | None], program: Any) -> Any:
    from . import evaluation

    name, pred, label = spec
    factory = getattr(evaluation, METRICS[name])
    if pred is None and len(program.outputs) == 1:
        pred = program.outputs[0][0]  # the program's only output
    kwargs = {}
    if pred is not None:
        kwargs = {"pred_field": pred, "label": label or pred}
    outputs = [o for o, _ in program.outputs]
    if pred is not None and pred not in outputs:
        raise DefinitionError(f"the metric reads the output {pred!r}, which the program does not have",
                              fix=f"use --metric {name}:FIELD with FIELD one of {', '.join(outputs)}.")
    return factory(**kwargs)


def make_ctx(args: argparse.Namespace, **kw: Any) -> Any:
    from .context import RunContext

    json_mode = getattr(args, "json_mode", "auto")
    lm = make_lm(args.model) if json_mode == "auto" else make_lm(args.model, json_mode=json_mode)
    if getattr(args, "trace", None) and "tracer" not in kw:  # --trace FILE: one JSON line per run
        if getattr(args, "_traces", None) is None:
            from .observe import JsonlTraces

            args._traces = JsonlTraces(args.trace, mode="w", content=getattr(args, "trace_content", False))
        kw["tracer"] = args._traces
    return RunContext(lm=lm, cache=not args.no_cache, max_concurrency=args.concurrency, **kw)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------- subcommands

def cmd_render(args: argparse.Namespace) -> int:
    print(load_program(args.program, view_only=True).render("mermaid" if args.mermaid else "text"))
    return 0


def _parse_inputs(pairs: Sequence[str], program: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DefinitionError(f"bad --input {pair!r}", fix="write --input name=value.")
        if key not in program.input_specs:
            raise DefinitionError(f"the program has no input {key!r}",
                                  fix=f"inputs are: {', '.join(program.input_specs)}.")
        parsed: Any = value
        if program.input_specs[key] is not str:  # lists, numbers...: JSON if it parses
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                pass
        inputs[key] = parsed
    return inputs


def cmd_run(args: argparse.Namespace) -> int:
    program = load_program(args.program)
    if args.data is None:
        inputs = _parse_inputs(args.input or [], program)
        missing = [k for k in program.input_specs if k not in inputs]
        if missing:
            raise DefinitionError(f"missing input {missing[0]!r}",
                                  fix=f"pass --input NAME=VALUE for each of {', '.join(program.input_specs)}, "
                                      "or --data rows.jsonl.")
        if args.stream:
            pred = _run_streamed(program, make_ctx(args), inputs)
        else:
            pred = program.run_sync(make_ctx(args), **inputs)
        print(json.dumps(_jsonable(dict(pred)), ensure_ascii=False, indent=2))
        return 0
    if args.stream:
        raise DefinitionError("--stream streams one run", fix="use it with --input NAME=VALUE, not --data.")
    rows = read_jsonl(args.data)
    out = open(args.out, "w", encoding="utf-8") if args.out else None  # noqa: SIM115 - closed below

    def emit(r: Any) -> None:  # each row as it finishes (its index says which), flushed at once
        rec: dict[str, Any] = {"index": r.index}
        if r.ok:
            rec["outputs"] = _jsonable(dict(r.outputs or {}))
        else:
            rec["error"] = _err(r.error)
        line = json.dumps(rec, ensure_ascii=False)
        print(line, flush=True)
        if out is not None:
            out.write(line + "\n")
            out.flush()

    try:
        results = program.batch_sync(rows, ctx=make_ctx(args), concurrency=args.concurrency,
                                     progress=_progress(args), on_result=emit)
    finally:
        if out is not None:
            out.close()
    failed = sum(1 for r in results if not r.ok)
    if not args.quiet:
        print(f"{len(results)} rows, {failed} failed" + (f"; results in {args.out}" if args.out else ""),
              file=sys.stderr)
    return 0


def _run_streamed(program: Any, ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """``run --stream``: each output's text printed as the model writes it (``node.field: ...``), a
    JSON output as each field completes; returns the run's outputs."""
    from .pipeline.program import _run_sync
    from .pipeline.stream import FieldComplete, Final, TokenDelta

    async def go() -> dict[str, Any]:
        at: tuple[str, str] | None = None
        outputs: dict[str, Any] = {}
        async for event in program.stream(ctx, **inputs):
            if isinstance(event, TokenDelta):
                if at != (event.node, event.field):
                    sys.stdout.write(("\n" if at else "") + f"{event.node}.{event.field}: ")
                    at = (event.node, event.field)
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, FieldComplete):
                sys.stdout.write(("\n" if at else "") + f"{event.node}.{event.field} = "
                                 f"{json.dumps(_jsonable(event.value), ensure_ascii=False)}")
                sys.stdout.flush()
                at = (event.node, "")
            elif isinstance(event, Final):
                outputs = dict(event.outputs)
        if at:
            sys.stdout.write("\n")
        return outputs

    return _run_sync(go())


def cmd_trace(args: argparse.Namespace) -> int:
    """Summarise a JSONL trace file (``--trace FILE``): per node the calls, tokens, cost, latency, failures."""
    from .observe import format_summary, read_traces, summarize

    summary = summarize(read_traces(args.file))
    print(json.dumps(summary, ensure_ascii=False) if args.json else format_summary(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_sync
    from .optimizers.base import check_rows

    program = load_program(args.program)
    rows = read_jsonl(args.data)
    check_rows(program, rows, "dataset")
    metric = make_metric(args.metric, program)
    res = evaluate_sync(program, rows, metric, ctx=make_ctx(args), concurrency=args.concurrency,
                        progress=_progress(args))
    s = res.summary()
    s["tokens"] = s.get("prompt_tokens", 0) + s.get("completion_tokens", 0)
    s["metric"] = getattr(metric, "__name__", args.metric[0])
    if args.json:
        print(json.dumps(s, ensure_ascii=False))
        return 0
    lo, hi = s["ci95"]
    print(f"metric:   {s['metric']}\n"
          f"mean:     {res.mean:.4f}  (95% CI {lo:.4f}-{hi:.4f}, n={s['n']})\n"
          f"failures: {s['failures']}\n"
          f"calls:    {s.get('calls', 0)} (cache hits {s.get('cache_hits', 0)})\n"
          f"tokens:   {s['tokens']}\n"
          f"wall:     {res.wall_s:.2f}s")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from . import optimizers
    from .lm.wrappers import Budget
    from .optimizers import save_artifact

    program = load_program(args.program)
    train = read_jsonl(args.train)
    val = read_jsonl(args.val) if args.val else None
    opt = getattr(optimizers, OPTIMIZERS[args.optimizer])(checkpoint=args.checkpoint,
                                                          concurrency=args.concurrency,
                                                          early_stop=not args.no_early_stop,
                                                          progress=_progress(args))
    budget = Budget(max_calls=args.max_calls, max_tokens=args.max_tokens)
    if args.dry_run:
        print(dry_run_text(args.optimizer, opt, program, train, val, budget, args.seed))
        return 0
    metric = make_metric(args.metric, program)
    t0 = time.perf_counter()
    compiled, report = opt.optimize(program, train, metric, valset=val, budget=budget, seed=args.seed,
                                    ctx=make_ctx(args))
    save_artifact(args.out, compiled, report)
    print(report.table())
    print(f"artifact: {args.out}")
    if args.report:
        body = report.to_dict(timing=True)
        body["total_wall_s"] = round(time.perf_counter() - t0, 3)
        Path(args.report).write_text(json.dumps(body, indent=2, ensure_ascii=False, default=str) + "\n",
                                     encoding="utf-8")
        print(f"report: {args.report}")
    return 0


def _progress(args: argparse.Namespace) -> bool:
    """Live progress on stderr when it is a terminal, unless --quiet."""
    return not getattr(args, "quiet", False)


def dry_run_text(name: str, opt: Any, program: Any, train: list[dict[str, Any]], val: list[dict[str, Any]] | None,
                 budget: Any, seed: int = 0) -> str:
    """The cost estimate of a compile, within ``--max-calls`` when one is given: the plan capped by
    the budget, and in plain words which phases the budget cuts (a BudgetError naming the minimum,
    as the compile itself would raise, when it cannot even cover scoring the program as given)."""
    from .optimizers import Compile
    from .optimizers.base import CostEstimate, check_budget_covers_baseline

    full = opt.dry_run(program, train, val)
    cap = budget.max_calls
    if cap is None:
        return f"{name}: {full}"
    compiler = isinstance(opt, Compile)
    val_rows = [*train, *(val or [])] if compiler else opt._split(program, train, val, seed)[1]
    check_budget_covers_baseline(program, val_rows, budget)
    if full.calls <= cap:
        return f"{name}: {full}\n  fits --max-calls {cap}"
    # the default compiler plans its search to fit the budget; the others stop when it is spent
    plan = opt.dry_run(program, train, val, budget=budget) if compiler else full
    left, capped = cap, {}
    for phase, calls in plan.breakdown.items():  # phases in plan order, each with what the budget has left
        capped[phase] = min(calls, left)
        left -= capped[phase]
    total = sum(capped.values())
    est = CostEstimate(total, round(full.tokens * total / max(1, full.calls)), capped)
    cuts = [f"{phase} {calls} -> {est.breakdown.get(phase, 0) or 'none'}"
            for phase, calls in full.breakdown.items() if est.breakdown.get(phase, 0) < calls]
    if not any(v for k, v in est.breakdown.items() if k != "baseline"):
        how = "only the baseline fits: the compile would return the program unchanged; raise --max-calls"
    elif compiler:
        how = "the search is planned to fit the budget: fewer candidates are raced"
    else:
        how = "the compile stops when the budget is spent and returns the best program found by then"
    return (f"{name}: {est}\n"
            f"  --max-calls {cap} cuts the plan (up to {full.calls} calls without it): {'; '.join(cuts)}\n"
            f"  {how}")


def cmd_diff(args: argparse.Namespace) -> int:
    from .optimizers import diff, format_diff

    print(format_diff(diff(args.a, args.b)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """A compile report as one self-contained HTML page (lmgraph.report_html.render)."""
    from .report_html import write

    out = write(args.out, args.artifact, baseline=args.baseline, full_report=args.full_report,
                lm=make_lm(args.model))  # the model is not loaded: prompts are only previewed
    print(f"report: {out}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """The program's graph; with --prompts, the request each model-calling node will send for
    --model (format resolved as in a run), with no model call."""
    try:
        program, unbound = load_program(args.program), False
    except ArtifactError as e:
        if "cannot bind resources" not in e.message:
            raise
        program, unbound = load_program(args.program, view_only=True), True
    if not args.prompts:
        print(program.render("text"))
        return 0
    from .context import RunContext
    from .errors import InputError

    try:
        inputs = json.loads(args.inputs) if args.inputs is not None else {}
    except json.JSONDecodeError as e:
        raise DefinitionError(f"--inputs is not valid JSON ({e.msg})",
                              fix='pass a JSON object, e.g. --inputs \'{"question": "Who wrote Hamlet?"}\'.') from None
    if not isinstance(inputs, dict):
        raise DefinitionError(f"--inputs is a JSON {type(inputs).__name__}, not an object",
                              fix='pass a JSON object of input name -> value, e.g. --inputs \'{"question": "..."}\'.')
    try:
        prompts = program.prompts(ctx=RunContext(lm=make_lm(args.model), cache=False), **inputs)
    except InputError as e:
        raise DefinitionError(f"--inputs: {e}") from None  # a mistake in the command: exit 2
    if unbound:
        prompts.notes.append("resources (retrievers, tools) are not bound on the command line: Retrieve nodes "
                             "are not run and CallTool prompts list stand-in tools; for exact prompts use "
                             "Program.load(path, resources={...}).prompts(...) in Python")
    print(json.dumps(prompts.to_dict(), indent=2, ensure_ascii=False) if args.json else prompts)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a program over HTTP (/invoke, /batch, /stream, /schema, /health, /docs) until Ctrl-C."""
    from .serve import ServeOptions, run_server

    options = ServeOptions(max_concurrency=args.max_concurrency, timeout_s=args.timeout,
                           max_calls_per_request=args.max_calls_per_request)
    try:
        program = load_program(args.program)
    except ArtifactError as e:
        if "cannot bind resources" not in e.message:
            raise
        raise ArtifactError(e.message.replace("the command line cannot", "`lmgraph serve` cannot"), node=e.node,
                            fix="serve it from Python: lmgraph.serve.app(Program.load(path, resources={...}), ctx) "
                                "mounted in your app or run with uvicorn (lmgraph.serve.run_server does that)."
                            ) from None
    run_server(program, make_ctx(args), host=args.host, port=args.port, options=options,
               log_level="warning" if args.quiet else "info")
    return 0


# ---------------------------------------------------------------- parser

def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _pos_int(text: str) -> int:
    value = _nonneg_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _pos_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmgraph", description="Render, run, evaluate, compile and diff "
                                     "lmgraph programs saved as JSON (a program file or a compiled artifact).")
    parser.add_argument("--trusted", action="store_true",
                        help="load program files saved without lmgraph's checked envelope (version + content "
                             "hash), e.g. by an older lmgraph; only for files you trust")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    g = model.add_argument_group("model")
    g.add_argument("--model", default="embedded",
                   help="embedded (default: in-process SmolLM2), gguf:/path/file.gguf, "
                        "openai:http://127.0.0.1:8080/v1 (litellm), http:http://127.0.0.1:8080/v1 (lean client), "
                        "or litellm:MODEL")
    g.add_argument("--json-mode", choices=("auto", "json_schema", "json_object", "none"), default="auto",
                   help="how an HTTP model takes a JSON schema: auto (default: negotiate with the server), "
                        "json_schema (OpenAI, vLLM, Ollama), json_object (llama-cpp-python's server), "
                        "none (schema in the prompt)")
    g.add_argument("--no-cache", action="store_true", help="disable the on-disk call cache")
    g.add_argument("--concurrency", type=_pos_int, default=8, help="concurrent examples / model calls (8)")
    model.add_argument("--quiet", action="store_true",
                       help="no live progress on stderr (shown by default when stderr is a terminal)")
    model.add_argument("--trace", metavar="TRACE.jsonl",
                       help="write one JSON line per run (program, inputs, outputs, per-node calls, tokens, latency, "
                            "formats, errors); summarise it with `lmgraph trace FILE`")
    model.add_argument("--trace-content", action="store_true",
                       help="with --trace: also write every prompt and completion")

    p = sub.add_parser("render", help="print a program's graph")
    p.add_argument("program", metavar="PROGRAM.json")
    p.add_argument("--mermaid", action="store_true", help="a mermaid diagram instead of text")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("run", parents=[model], help="run once (--input) or over a JSONL dataset (--data)")
    p.add_argument("program", metavar="PROGRAM.json")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", action="append", metavar="KEY=VALUE", help="a program input (repeatable)")
    src.add_argument("--data", metavar="ROWS.jsonl",
                     help="run every row; each result is printed as a JSON line (with its row index) as soon "
                          "as it finishes; failures are recorded per row")
    p.add_argument("--out", metavar="RESULTS.jsonl",
                   help="with --data: also write the JSON lines here (one per row, as each finishes)")
    p.add_argument("--stream", action="store_true",
                   help="with --input: print each output's text as the model writes it, then the outputs")
    p.set_defaults(func=cmd_run)

    metric_help = f"NAME[:pred_field[:label_field]], NAME in {', '.join(METRICS)}"
    p = sub.add_parser("eval", parents=[model], help="score a program on a JSONL dataset")
    p.add_argument("program", metavar="PROGRAM.json")
    p.add_argument("--data", required=True, metavar="ROWS.jsonl")
    p.add_argument("--metric", required=True, type=metric_spec, help=metric_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compile", parents=[model], help="optimize a program into a compiled artifact")
    p.add_argument("program", metavar="PROGRAM.json")
    p.add_argument("--train", required=True, metavar="TRAIN.jsonl")
    p.add_argument("--val", metavar="VAL.jsonl", help="validation rows (default: split off the train rows)")
    p.add_argument("--metric", required=True, type=metric_spec, help=metric_help)
    p.add_argument("--optimizer", default="compile", choices=list(OPTIMIZERS),
                   help="compile is the default compiler (lmgraph.compile); the others are the single-lever "
                        "optimizers")
    p.add_argument("--max-calls", type=_nonneg_int, help="hard budget: model calls")
    p.add_argument("--max-tokens", type=_nonneg_int, help="hard budget: tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", metavar="PATH", help="resumable compile state")
    p.add_argument("--no-early-stop", action="store_true",
                   help="score every candidate on every validation row (default: drop a candidate as soon "
                        "as it is clearly worse than the incumbent on the rows scored so far)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the cost estimate and exit (within --max-calls: which phases the budget cuts)")
    p.add_argument("--out", metavar="ARTIFACT.json", help="where to write the compiled artifact")
    p.add_argument("--report", metavar="REPORT.json", help="also write the full report (with timing)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("show", help="print a program; --prompts: the exact prompts it will send (no model call)")
    p.add_argument("program", metavar="PROGRAM.json")
    p.add_argument("--prompts", action="store_true",
                   help="every model-calling node's request for --model, in schedule order; inputs not "
                        "given and upstream model outputs appear as <placeholders>")
    p.add_argument("--inputs", metavar="JSON", help='program inputs as a JSON object, e.g. \'{"question": "..."}\'')
    p.add_argument("--model", default="embedded", help="the model the prompts are rendered for (as for run)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("serve", parents=[model],
                       help="serve a program over HTTP: POST /invoke, /batch, /stream; GET /schema, /health, /docs")
    p.add_argument("program", metavar="PROGRAM_OR_ARTIFACT.json")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=_nonneg_int, default=8000, help="port (8000; 0: any free port, printed)")
    p.add_argument("--max-concurrency", type=_pos_int, default=16,
                   help="requests run at once (16); the next gets 429 with Retry-After, without queueing")
    p.add_argument("--timeout", type=_pos_float, metavar="S", help="a run's deadline in seconds (504 past it)")
    p.add_argument("--max-calls-per-request", type=_pos_int, metavar="N",
                   help="model calls one run (one batch row) may make")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("trace", help="summarise a trace file written by --trace: per node the calls, tokens, "
                                     "cost, latency p50/p95 and failures")
    p.add_argument("file", metavar="TRACE.jsonl")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("diff", help="what changed per node between two programs/artifacts")
    p.add_argument("a", metavar="A.json")
    p.add_argument("b", metavar="B.json")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("report", help="a compile report as one self-contained HTML page (graph, plot, prompts, "
                                      "per-example wins and losses)")
    p.add_argument("artifact", metavar="ARTIFACT.json", help="a compiled artifact (lmgraph compile --out)")
    p.add_argument("-o", "--out", default="report.html", metavar="REPORT.html", help="where to write it (report.html)")
    p.add_argument("--baseline", metavar="PROGRAM.json",
                   help="the program as given to the compiler: adds its prompts before/after and the full diff")
    p.add_argument("--full-report", metavar="REPORT.json",
                   help="the report `lmgraph compile --report` wrote: adds per-node calls and tokens")
    p.add_argument("--model", default="embedded",
                   help="the model whose prompt format the prompts are previewed in (as for run; no call is made)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _TRUSTED["files"] = bool(args.trusted)
    if args.command == "compile" and not args.dry_run and not args.out:
        parser.error("compile: --out ARTIFACT.json is required (unless --dry-run)")
    if args.command == "run" and args.out and not args.data:
        parser.error("run: --out needs --data")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("lmgraph: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a user mistake: one line, exit 2; a failed run: one line, exit 1; a bug: traceback
        code = _exit_code(e)
        if code is None:
            raise
        print(f"lmgraph: {'error' if code == 2 else 'run failed'}: {_one_line(e)}", file=sys.stderr)
        return code
    finally:
        traces = getattr(args, "_traces", None)  # --trace FILE: every line is flushed already
        if traces is not None:
            traces.close()


def _exit_code(e: BaseException) -> int | None:
    """2 for the user's mistakes (their program, data, arguments or files), 1 for a run that failed
    (model error, budget spent, unparseable output), None for anything else (a bug: let it show)."""
    if isinstance(e, (DefinitionError, InputError)):  # before LmgraphError: wrong inputs are mistakes too
        return 2
    if isinstance(e, LmgraphError):
        return 1
    if isinstance(e, json.JSONDecodeError) or (type(e).__name__ == "ValidationError"
                                               and type(e).__module__.startswith("pydantic")):
        return 2
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return 2
    if isinstance(e, OSError):
        return 1
    return None


def _one_line(e: BaseException) -> str:
    """The error's message on one line (a multi-problem message joined with '; ')."""
    lines = [ln.strip().removeprefix("- ") for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")
    if not isinstance(e, LmgraphError) and isinstance(e, (OSError, ValueError)):
        text = f"{type(e).__name__}: {text}"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
