"""The ``lmgraph`` subcommands that render, run, evaluate, show, serve, diff and report programs
(``compile`` is in :mod:`lmgraph.cli_compile`).

The building blocks that tests patch -- :func:`lmgraph.cli.make_lm`, ``make_ctx``, ``load_program`` --
are looked up on :mod:`lmgraph.cli` at call time (``cli.make_lm(...)``), so a patch there holds here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import cli
from .cli_data import _err, _jsonable, make_metric, read_jsonl
from .errors import ArtifactError, DefinitionError


def cmd_render(args: argparse.Namespace) -> int:
    print(cli.load_program(args.program, view_only=True).render("mermaid" if args.mermaid else "text"))
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
    program = cli.load_program(args.program)
    if args.data is None:
        inputs = _parse_inputs(args.input or [], program)
        missing = [k for k in program.input_specs if k not in inputs]
        if missing:
            raise DefinitionError(f"missing input {missing[0]!r}",
                                  fix=f"pass --input NAME=VALUE for each of {', '.join(program.input_specs)}, "
                                      "or --data rows.jsonl.")
        if args.stream:
            pred = _run_streamed(program, cli.make_ctx(args), inputs)
        else:
            pred = program.run_sync(cli.make_ctx(args), **inputs)
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
        results = program.batch_sync(rows, ctx=cli.make_ctx(args), concurrency=args.concurrency,
                                     progress=cli._progress(args), on_result=emit)
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

    program = cli.load_program(args.program)
    rows = read_jsonl(args.data)
    check_rows(program, rows, "dataset")
    metric = make_metric(args.metric, program)
    res = evaluate_sync(program, rows, metric, ctx=cli.make_ctx(args), concurrency=args.concurrency,
                        progress=cli._progress(args))
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


def cmd_diff(args: argparse.Namespace) -> int:
    from .optimizers import diff, format_diff

    print(format_diff(diff(args.a, args.b)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """A compile report as one self-contained HTML page (lmgraph.report_html.render)."""
    from .report_html import write

    out = write(args.out, args.artifact, baseline=args.baseline, full_report=args.full_report,
                lm=cli.make_lm(args.model))  # the model is not loaded: prompts are only previewed
    print(f"report: {out}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """The program's graph; with --prompts, the request each model-calling node will send for
    --model (format resolved as in a run), with no model call."""
    try:
        program, unbound = cli.load_program(args.program), False
    except ArtifactError as e:
        if "cannot bind resources" not in e.message:
            raise
        program, unbound = cli.load_program(args.program, view_only=True), True
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
        lms = {name: cli.make_lm(spec) for name, spec in cli.named_models(args).items()}
        prompts = program.prompts(ctx=RunContext(lm=cli.make_lm(args.model), lms=lms, cache=False), **inputs)
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
        program = cli.load_program(args.program)
    except ArtifactError as e:
        if "cannot bind resources" not in e.message:
            raise
        raise ArtifactError(e.message.replace("the command line cannot", "`lmgraph serve` cannot"), node=e.node,
                            fix="serve it from Python: lmgraph.serve.app(Program.load(path, resources={...}), ctx) "
                                "mounted in your app or run with uvicorn (lmgraph.serve.run_server does that)."
                            ) from None
    run_server(program, cli.make_ctx(args), host=args.host, port=args.port, options=options,
               log_level="warning" if args.quiet else "info")
    return 0
