"""Every code block in README.md runs as written.

``python`` blocks are executed, each in a fresh namespace and a temporary working directory, with
the scripted fake model standing in wherever a model is needed: the default (embedded) model and
the model constructors a block imports (``openai_compatible``, ``LiteLLM``) answer from
:class:`lmgraph.testing.FunctionLM`, and the default disk cache is an in-memory one. A block may
use the names a reader has from the text around it -- ``corpus``, ``rows``, ``program``
(a TREC question classifier), ``train``, ``val`` -- which a preamble provides. A block that
raises, or is not valid Python (``await`` at top level, say), fails here.

``bash`` blocks: every ``lmgraph SUBCOMMAND ...`` line names a subcommand whose ``--help`` exits
0, every ``--flag`` on the line (comments and ``[optional]`` parts included) is one of that
subcommand's options, and the line without its comment parses; every ``bash script`` line names
a script that exists and knows the flags passed to it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

import lmgraph as lg
from lmgraph import context as lg_context
from lmgraph.cache import MemoryCache
from lmgraph.testing import FunctionLM, request_text

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def blocks(lang: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```lang block in the README."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in _FENCE.finditer(text) if m.group(1) == lang]


# ---------------------------------------------------------------------------------- python blocks

_TREC_RULES = (("where", "location"), ("who", "human"), ("how many", "number"), ("when", "number"),
               ("what does", "abbreviation"), ("why", "description"))


def _trec_label(question: str) -> str:
    q = question.lower()
    return next((label for key, label in _TREC_RULES if q.startswith(key)), "entity")


def _answer(req: lg.LMRequest) -> str:
    """A model that follows instructions: a JSON object for the repair/structured calls, a TREC
    label when asked for an answer type, otherwise a short chain of thought and an answer."""
    text = request_text(req)
    questions = re.findall(r"Question: (.*)", text)
    label = _trec_label(questions[-1]) if questions else "entity"
    if req.json_schema is not None:
        out = {}
        for name, spec in req.json_schema.get("properties", {}).items():
            if "enum" in spec:
                out[name] = label if label in spec["enum"] else spec["enum"][0]
            elif spec.get("type") == "array":
                out[name] = []
            else:
                out[name] = "William Shakespeare"
        return json.dumps(out)
    if text.rstrip().endswith("Answer type:"):
        return " " + label
    return " Hamlet is a play by William Shakespeare.\nAnswer: William Shakespeare"


def fake_lm() -> FunctionLM:
    fake = FunctionLM(_answer, name="readme-fake")
    fake.preferred_format = "completion"  # as the embedded model it stands in for
    return fake


def _trec_program() -> lg.Program:
    labels = ", ".join(repr(v) for v in ("abbreviation", "description", "entity", "human", "location", "number"))
    p = lg.Pipeline("trec")
    node = p.add(lg.Predict(f"question -> answer_type: Literal[{labels}]", format="completion", max_tokens=4),
                 name="classify", question=p.input("question"))
    p.output(label=node.answer_type)
    return p.build()


def preamble() -> dict:
    """What the README's prose gives a reader before a block: data and a program to run."""
    from lmgraph.evaluation.datasets import load_trec, sample, split

    train, val = split(load_trec("train"), [16, 8], seed=0)  # the copy shipped in the package
    return {
        "lg": lg,
        "corpus": ["Hamlet is a tragedy written by William Shakespeare around 1600.",
                   "Paris is the capital and largest city of France.",
                   "The Eiffel Tower was completed in 1889."],
        "rows": [{"question": r["question"]} for r in sample(load_trec("test"), 4, seed=0)],
        "program": _trec_program(),
        "train": train,
        "val": val,
    }


@pytest.fixture
def fake_models(monkeypatch, tmp_path):
    """The default model, the default cache and the model constructors README blocks import all
    become in-process fakes; the block runs in an empty temporary folder."""
    import lmgraph.lm.litellm as litellm_mod

    made: list[FunctionLM] = []

    def make(*args, **kwargs):
        made.append(fake_lm())
        return made[-1]

    monkeypatch.setitem(lg_context._defaults, "lm", make())
    monkeypatch.setitem(lg_context._defaults, "cache", MemoryCache())
    monkeypatch.setattr(litellm_mod, "openai_compatible", make)
    monkeypatch.setattr(litellm_mod, "LiteLLM", make)
    monkeypatch.chdir(tmp_path)
    return made


_PY = blocks("python")


def test_the_readme_has_python_blocks():
    assert len(_PY) >= 3


@pytest.mark.parametrize("line,code", _PY, ids=[f"README.md:{n}" for n, _ in _PY])
def test_python_block_runs_as_written(line, code, fake_models):
    compiled = compile(code, f"README.md:{line}", "exec")  # a SyntaxError (top-level await) fails here
    namespace = preamble()
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compiled, namespace)  # noqa: S102 - the README's own code, with fakes for models
    if re.search(r"\.(run|run_sync|batch|batch_sync|optimize)\(", code):
        assert sum(len(f.calls) for f in fake_models) > 0, "the block ran a program but no model was called"
    # a batch records failures instead of raising: a block's batch results must all have succeeded
    from lmgraph.pipeline.executor import Result

    for name, value in namespace.items():
        if isinstance(value, list) and value and all(isinstance(r, Result) for r in value):
            assert all(r.ok for r in value), f"README.md:{line}: {name} = {[r for r in value if not r.ok]}"


def test_the_fake_model_is_what_blocks_get(fake_models):
    """Guard for the fixture itself: a program run with the default context reaches the fake."""
    out = _trec_program().run_sync(question="Where is Aspen?")
    assert out.label == "location" and len(fake_models[0].calls) == 1


# ------------------------------------------------------------------------------------ bash blocks

def _logical_lines(code: str) -> list[str]:
    return [line.strip() for line in code.replace("\\\n", " ").splitlines() if line.strip()]


def _bash_lines(prog: str) -> list[str]:
    out = []
    for _, code in blocks("bash"):
        for line in _logical_lines(code):
            words = line.split()
            if prog == "lmgraph" and (Path(words[0]).name == "lmgraph" or words[:3] == ["python", "-m", "lmgraph"]):
                out.append(" ".join(["lmgraph", *words[3 if words[0] == "python" else 1:]]))
            elif prog == "bash" and words[0] in ("bash", "sh"):
                out.append(line)
    return out


_FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def _cli(argv: list[str]) -> tuple[int, str]:
    from lmgraph.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return code, buf.getvalue()


def test_the_readme_names_cli_commands_and_scripts():
    assert len(_bash_lines("lmgraph")) >= 3 and _bash_lines("bash")


@pytest.mark.parametrize("line", _bash_lines("lmgraph"))
def test_cli_line_names_a_subcommand_and_its_options(line):
    from lmgraph.cli import build_parser

    sub = line.split()[1]
    code, help_text = _cli([sub, "--help"])
    assert code == 0, f"`lmgraph {sub} --help` exited {code}:\n{help_text}"
    for flag in _FLAG.findall(line):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), \
            f"README: `{line}` names {flag}, which `lmgraph {sub}` does not take"
    argv = [w.strip("[]") for w in shlex.split(line, comments=True)[1:]]
    try:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"README: `{line}` does not parse: {err.getvalue().strip()}")


@pytest.mark.parametrize("line", _bash_lines("bash"))
def test_script_line_names_an_existing_script_and_its_flags(line):
    words = shlex.split(line, comments=True)
    script = ROOT / words[1]
    assert script.is_file(), f"README: `{line}`: {words[1]} does not exist"
    text = script.read_text(encoding="utf-8")
    for flag in _FLAG.findall(" ".join(words[2:])):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), \
            f"README: `{line}`: {words[1]} never mentions {flag}"
