"""Agent example: route a question to a calculator tool or to retrieval, then check the answer in
a bounded loop -- control flow declared in the program (lg.Route, lg.Loop), not hidden in Python.

    classify (Literal['calc', 'search']; or a Python rule: --router rule)
      -> route: calc   = CallTool with a safe arithmetic tool
                search = Retrieve over a small corpus -> Predict
      -> refine: Loop(write the answer -> Critique it), until the verdict passes, at most 2 times

Runs on the embedded SmolLM2-135M model by default (offline, ~10-20 s for the two example
questions on 2 cores). A model that small routes and judges poorly -- it sends most questions to
search; ``--router rule`` routes with a Python predicate instead, so both branches run. The point
here is the program's shape, traces and budget, not its accuracy:

    python examples/agent.py [--question "What is 12 * 7?"] [--router model|rule] [--mermaid]
"""

from __future__ import annotations

import argparse
import ast
import operator
import re
import time
from typing import Any

import lmgraph as lg

CORPUS = [
    "Hamlet is a tragedy written by William Shakespeare around 1600.",
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower in Paris was completed in 1889.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Mount Everest, at 8849 metres, is the highest mountain above sea level.",
    "The Python programming language was created by Guido van Rossum.",
]

QUESTIONS = ["What is 17 * 23?", "Who wrote Hamlet?"]

# ---------------------------------------------------------------- a safe calculator (no eval)

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e18


def _value(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        out = node.value
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError("division by zero")
        out = _BINARY[type(node.op)](left, right)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        out = _UNARY[type(node.op)](_value(node.operand))
    else:
        raise ValueError(f"not arithmetic: {ast.unparse(node)!r} (numbers, + - * / // % ** and parentheses only)")
    if isinstance(out, complex) or not abs(out) <= MAX_MAGNITUDE:  # not <=: NaN too
        raise ValueError("the result is out of range")
    return out  # type: ignore[no-any-return]


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression such as '17 * 23' or '(2 + 3) ** 2'."""
    text = expression.strip().replace("×", "*").rstrip("=?. ")  # noqa: RUF001 - a model may write the sign
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    try:
        value = _value(tree.body)
    except ZeroDivisionError:  # 0 ** -1
        raise ValueError("division by zero") from None
    except (OverflowError, RecursionError):
        raise ValueError("the result is out of range") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


# ---------------------------------------------------------------- the program

def looks_like_arithmetic(values: dict[str, Any]) -> str:
    """A rule-based router: 'calc' when the question holds a number and an operator."""
    return "calc" if re.search(r"\d\s*[-+*/x×^]\s*\(?\d", values["question"]) else "search"  # noqa: RUF001


def build_agent(corpus: list[str] | None = None, *, router: str = "model") -> lg.Program:
    """classify -> Route(calc | search) -> Loop(write, judge) until the judge accepts (max 2).

    ``router="model"``: a Predict picks the branch (a Literal output bound to the Route's
    ``choice``); ``"rule"``: the Python predicate :func:`looks_like_arithmetic` does (a resource:
    loading the saved program needs ``resources={"looks_like_arithmetic": looks_like_arithmetic}``)."""
    calc = lg.Pipeline("calc")
    q = calc.input("question")
    solve = calc.add(lg.CallTool("question -> result", [calculate], max_steps=2, max_tokens=64), "solve",
                     question=q)
    calc.output(result=solve.result)

    search = lg.Pipeline("search")
    q = search.input("question")
    docs = search.add(lg.Retrieve(corpus or CORPUS, k=2), "retrieve", query=q)
    read = search.add(lg.Predict("context: list[str], question -> result", max_tokens=48), "read",
                      context=docs.passages, question=q)
    search.output(result=read.result)

    check = lg.Pipeline("check")
    q, evidence, hint = check.input("question"), check.input("evidence"), check.input("hint")
    write = check.add(lg.Predict(lg.Signature.parse(
        "question, evidence, hint -> answer",
        instructions="Answer the question in one short sentence, using the evidence and fixing what the "
                     "hint says."), max_tokens=48), "write", question=q, evidence=evidence, hint=hint)
    judge = check.add(lg.Critique("question, evidence, answer", max_tokens=64), "judge", question=q,
                      evidence=evidence, answer=write.answer)
    check.output(answer=write.answer, feedback=judge.feedback, verdict=judge.verdict)

    p = lg.Pipeline("agent")
    q = p.input("question")
    branches = {"calc": calc, "search": search}
    if router == "model":
        classify = p.add(lg.Predict(
            lg.Signature.parse("question -> route: Literal['calc', 'search']",
                               instructions="calc if the question asks to compute arithmetic, search if it asks "
                                            "for a fact."),
            max_tokens=4, demos=[{"question": "What is 12 * 7?", "route": "calc"},
                                 {"question": "Who painted the Mona Lisa?", "route": "search"}]),
            "classify", question=q)
        found = p.add(lg.Route(branches=branches), "route", choice=classify.route, question=q)
    elif router == "rule":
        found = p.add(lg.Route(looks_like_arithmetic, branches=branches), "route", question=q)
    else:
        raise ValueError(f"router must be 'model' or 'rule', got {router!r}")
    final = p.add(lg.Loop(check, max_iters=2, until="verdict", carry={"hint": "feedback"}), "refine",
                  question=q, evidence=found.result, hint="none yet (first attempt)")
    p.output(answer=final.answer, passed=final.verdict, iterations=final.iterations)
    return p.build()


def describe_run(result: Any) -> str:
    """One row's outcome: the route taken, the answer, the loop's verdict and iterations, calls."""
    trace = result.trace
    calls = trace.usage["calls"] if trace is not None else 0
    if not result.ok:
        return f"  failed: {type(result.error).__name__}: {result.error}  ({calls} model calls)"
    out = result.outputs
    route = trace.node("route").meta["branch"]
    return (f"  route: {route}  ->  answer: {out['answer']!r}\n"
            f"  critique passed: {out['passed']}  iterations: {out['iterations']}  model calls: {calls}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--question", action="append", help="a question (repeatable); default: two examples")
    ap.add_argument("--router", choices=("model", "rule"), default="model",
                    help="who picks the branch: the model (a Literal output) or a Python rule (a predicate)")
    ap.add_argument("--mermaid", action="store_true", help="print the program as a Mermaid diagram")
    args = ap.parse_args()

    program = build_agent(router=args.router)
    print(program.render("mermaid" if args.mermaid else "text"))
    print(f"\nat most {program.estimated_calls()} model calls per question\n")
    rows = [{"question": q} for q in (args.question or QUESTIONS)]
    ctx = lg.RunContext(max_concurrency=2)
    t0 = time.perf_counter()
    results = program.batch_sync(rows, ctx=ctx, concurrency=2)
    for row, result in zip(rows, results):
        print(f"Q: {row['question']}")
        print(describe_run(result))
    print(f"\n{len(rows)} questions in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
