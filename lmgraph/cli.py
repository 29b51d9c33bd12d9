"""The ``lmgraph`` command line: render, run, eval, compile and diff saved programs.

This module is the entry point (``build_parser``, ``main``) and holds the model/context/program
building blocks; the subcommands' bodies are in :mod:`lmgraph.cli_commands` and
:mod:`lmgraph.cli_compile`, the plain helpers (JSONL, ``--metric``, argument types) in
:mod:`lmgraph.cli_data`.

Programs are read from JSON (a bare ``Program.save`` file or a compiled artifact). Programs that
need runtime resources (Retrieve corpora, tools) cannot be bound here: use the Python API.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .cli_data import (  # noqa: F401 - the command line's helpers, importable from here as before
    METRICS,
    OPTIMIZERS,
    _err,
    _jsonable,
    _nonneg_int,
    _pos_float,
    _pos_int,
    make_metric,
    metric_spec,
    read_jsonl,
)
from .errors import ArtifactError, DefinitionError, InputError, LmgraphError

# ---------------------------------------------------------------- building blocks (tests patch make_lm)
# The subcommands (lmgraph.cli_commands, lmgraph.cli_compile) call these as ``cli.make_lm(...)``,
# ``cli.make_ctx(...)``, ``cli.load_program(...)``: looked up here at call time, so patching them on
# this module reaches every command.

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


class _Unbound(dict[str, Any]):
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


def make_ctx(args: argparse.Namespace, **kw: Any) -> Any:
    from .context import RunContext

    json_mode = getattr(args, "json_mode", "auto")
    def build(spec: str) -> Any:
        return make_lm(spec) if json_mode == "auto" else make_lm(spec, json_mode=json_mode)

    lm = build(args.model)
    lms = {name: build(spec) for name, spec in named_models(args).items()}
    if getattr(args, "trace", None) and "tracer" not in kw:  # --trace FILE: one JSON line per run
        if getattr(args, "_traces", None) is None:
            from .observe import JsonlTraces

            args._traces = JsonlTraces(args.trace, mode="w", content=getattr(args, "trace_content", False))
        kw["tracer"] = args._traces
    return RunContext(lm=lm, lms=lms, cache=not args.no_cache, max_concurrency=args.concurrency, **kw)


def named_models(args: argparse.Namespace) -> dict[str, str]:
    """``--lm NAME=MODEL`` options as ``{name: model spec}``; a malformed or repeated one fails here,
    before any model is built."""
    out: dict[str, str] = {}
    for item in getattr(args, "lm", None) or []:
        name, sep, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise DefinitionError(f"--lm {_shown(item)!r} is not NAME=MODEL",
                                  fix="e.g. --lm big=litellm:gpt-4o-mini or --lm local=gguf:/models/m.gguf "
                                      "(MODEL as for --model).")
        if name in out:
            raise DefinitionError(f"--lm names {name!r} twice", fix="give each model its own name.")
        out[name] = spec
    return out


def _progress(args: argparse.Namespace) -> bool:
    """Live progress on stderr when it is a terminal, unless --quiet."""
    return not getattr(args, "quiet", False)


# ---------------------------------------------------------------- parser and entry point

#: subcommand bodies live in lmgraph.cli_commands and lmgraph.cli_compile (imported when a parser is
#: built, so ``import lmgraph.cli`` stays light); ``lmgraph.cli.cmd_run`` and the like still resolve
_MOVED = {"cmd_render": "cli_commands", "cmd_run": "cli_commands", "_parse_inputs": "cli_commands",
          "_run_streamed": "cli_commands", "cmd_trace": "cli_commands", "cmd_eval": "cli_commands",
          "cmd_diff": "cli_commands", "cmd_report": "cli_commands", "cmd_show": "cli_commands",
          "cmd_serve": "cli_commands", "cmd_compile": "cli_compile", "dry_run_text": "cli_compile"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    from .cli_commands import cmd_diff, cmd_eval, cmd_render, cmd_report, cmd_run, cmd_serve, cmd_show, cmd_trace
    from .cli_compile import cmd_compile

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
    g.add_argument("--lm", action="append", default=[], metavar="NAME=MODEL",
                   help="another model by name (MODEL as for --model; repeatable): nodes saved with lm=NAME "
                        "run on it, and compile races it per node (see compile --models)")
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
    p.add_argument("--min-gain", type=float, metavar="GAIN",
                   help="--optimizer compile only: keep the program as given unless the chosen change is "
                        "expected to gain at least GAIN of the metric (default 0: any expected gain)")
    p.add_argument("--models", default="auto", metavar="auto|none|NAME[,NAME...]",
                   help="--optimizer compile only: which --lm models to race per node (default auto: all but the "
                        "--proposer)")
    p.add_argument("--proposer", metavar="NAME",
                   help="an --lm model that writes instruction candidates (compile, instructions, joint; with "
                        "--verbalize also names for the labels) or reflects on failing rows (reflect); by default "
                        "the compiler proposes nothing and the others use the task model")
    p.add_argument("--verbalize", action="store_true",
                   help="--optimizer compile only: also try label outputs' options shown as words (identifier "
                        "labels as plain words; with --proposer, the names it writes)")
    p.add_argument("--stratify", action="store_true",
                   help="--optimizer compile only: race the search rows in an order whose every prefix is as hard "
                        "for the program as given as the whole search fold")
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
    p.add_argument("--lm", action="append", default=[], metavar="NAME=MODEL",
                   help="the model a node saved with lm=NAME is rendered for (as for run; repeatable)")
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
