"""``lmgraph compile``: optimize a program into a compiled artifact, or (``--dry-run``) print what the
compile would cost within ``--max-calls``.

As in :mod:`lmgraph.cli_commands`, the model and context come from :mod:`lmgraph.cli` at call time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from . import cli
from .cli_data import OPTIMIZERS, make_metric, read_jsonl
from .errors import DefinitionError


def cmd_compile(args: argparse.Namespace) -> int:
    from . import optimizers
    from .lm.wrappers import Budget
    from .optimizers import save_artifact

    program = cli.load_program(args.program)
    train = read_jsonl(args.train)
    val = read_jsonl(args.val) if args.val else None
    extra = compiler_options(args)
    opt = getattr(optimizers, OPTIMIZERS[args.optimizer])(checkpoint=args.checkpoint,
                                                          concurrency=args.concurrency,
                                                          early_stop=not args.no_early_stop,
                                                          progress=cli._progress(args), **extra)
    budget = Budget(max_calls=args.max_calls, max_tokens=args.max_tokens)
    if args.dry_run:
        print(dry_run_text(args.optimizer, opt, program, train, val, budget))
        return 0
    metric = make_metric(args.metric, program)
    if args.optimizer == "reflect":  # the reflection reads what each failing row expected
        from .evaluation import with_feedback

        metric = with_feedback(metric)
    t0 = time.perf_counter()
    compiled, report = opt.optimize(program, train, metric, valset=val, budget=budget, seed=args.seed,
                                    ctx=cli.make_ctx(args))
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


#: the optimizers a proposer model writes for, and the keyword that names it
PROPOSER_KW = {"compile": "proposer_lm", "instructions": "proposer_lm", "joint": "proposer_lm",
               "reflect": "reflection_lm"}


def compiler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options only some optimizers take as their keyword arguments: ``--proposer`` (the
    compiler's and the instruction optimizers' proposer, Reflect's reflection model), and for the
    default compiler only ``--min-gain``, ``--models``, ``--verbalize``, ``--stratify``. Given to
    another optimizer, or naming a model no ``--lm`` names, they fail here, before any model is built."""
    names = list(cli.named_models(args))
    out: dict[str, Any] = {}
    if args.proposer is not None:
        if args.optimizer not in PROPOSER_KW:
            raise DefinitionError(f"--proposer applies to --optimizer {', '.join(PROPOSER_KW)}, not {args.optimizer}",
                                  fix="drop --proposer, or use one of those optimizers.")
        if args.proposer not in names:
            raise DefinitionError(f"--proposer {args.proposer!r} is not a model given with --lm",
                                  fix=f"add --lm {args.proposer}=MODEL (given: {', '.join(names) or 'none'}).")
        out[PROPOSER_KW[args.optimizer]] = args.proposer
    given = {"--min-gain": args.min_gain is not None, "--models": args.models != "auto",
             "--verbalize": args.verbalize, "--stratify": args.stratify}
    if args.optimizer != "compile":
        flag = next((f for f, on in given.items() if on), None)
        if flag:
            raise DefinitionError(f"{flag} applies to --optimizer compile, not {args.optimizer}",
                                  fix=f"drop {flag}, or use --optimizer compile (the default).")
        return out
    if args.min_gain is not None:
        out["min_gain"] = args.min_gain
    if args.models != "auto":
        race = [] if args.models == "none" else [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in race if m not in names]
        if unknown or (args.models != "none" and not race):
            raise DefinitionError(f"--models {args.models!r} names {unknown[0] if unknown else 'no model'!r}, "
                                  "which no --lm names",
                                  fix=f"name models given with --lm NAME=MODEL (given: {', '.join(names) or 'none'}),"
                                      " or --models auto / none.")
        out["models"] = tuple(race)
    if args.verbalize:
        out["verbalize"] = True
    if args.stratify:
        out["stratify"] = True
    return out


def dry_run_text(name: str, opt: Any, program: Any, train: list[dict[str, Any]], val: list[dict[str, Any]] | None,
                 budget: Any) -> str:
    """The cost estimate of a compile, within ``--max-calls`` when one is given: the plan capped by
    the budget, and in plain words which phases the budget cuts (a BudgetError naming the minimum,
    as the compile itself would raise, when it cannot even cover scoring the program as given)."""
    from .optimizers import Compile

    cap = budget.max_calls
    full = opt.dry_run(program, train, val)
    if cap is None:
        return f"{name}: {full}"
    # the default compiler plans its search to fit the budget; the others stop when it is spent
    compiler = isinstance(opt, Compile)
    # a BudgetError under the baseline; cut at the cap too (an upper bound with repairs can pass it)
    est = opt.dry_run(program, train, val, budget=budget).within(cap)
    if full.calls <= cap:
        return f"{name}: {full}\n  fits --max-calls {cap}"
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
