"""The compile report as a page (lmgraph.report_html, `lmgraph report`) and the notebook views
(_repr_html_ of Program, Report, Trace), on a tiny program compiled with a scripted fake model.
A headless-Chromium test loads the page (Debian's `chromium`; skipped when it is absent)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

import lmgraph as lg
from lmgraph import report_html
from lmgraph.cli import main
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import BootstrapRandomSearch, save_artifact
from lmgraph.optimizers.auto import Compile
from lmgraph.testing import FunctionLM

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_opt_compile import demo_lover, program, rows  # the compiler tests' fakes


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(program as given, compiled, report, artifact path, program path, full report path)."""
    base = program()
    out, rep = Compile(decodes=()).optimize(base, rows(60), label_accuracy(), budget=lg.Budget(max_calls=600),
                                            ctx=lg.RunContext(lm=FunctionLM(demo_lover), cache=False))
    d = tmp_path_factory.mktemp("report")
    art = save_artifact(d / "compiled.json", out, rep)
    prog = base.save(d / "program.json")
    full = d / "report.json"
    full.write_text(json.dumps(rep.to_dict(timing=True)), encoding="utf-8")
    return base, out, rep, art, prog, full


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def test_compile_records_which_rows_each_candidate_was_scored_on(compiled):
    _, _, rep, art, *_ = compiled
    base = rep.candidates[0]
    assert base.rows is None and len(base.scores) == 60
    raced = [c for c in rep.candidates[1:] if c.status in ("dropped", "advanced")]
    assert raced and all(c.rows is not None and len(c.rows) == len(c.scores) for c in raced)
    best = rep.best
    assert best.status == "accepted" and len(best.rows) == len(best.scores)
    _search, conf = Compile().folds(60, 0)
    assert set(conf) <= set(best.rows)                       # the confirmed one: its held-out rows too
    saved = json.loads(art.read_text())["report"]["candidates"]
    assert saved[best.id]["rows"] == best.rows and saved[best.id]["scores"] == best.scores
    # per-node usage of the compile (not in the artifact: it varies with resumes)
    assert rep.runtime["nodes"]["classify"]["requests"] == rep.spent["calls"]
    assert "runtime" not in json.loads(art.read_text())["report"]
    # the plot's calls axis: each candidate's own calls (the confirmed pick does not recount its race's)
    from lmgraph.report_figures import own_calls

    assert sum(own_calls(rep.to_dict()["candidates"])) == rep.spent["calls"]
    assert sum(c.calls for c in rep.candidates) > rep.spent["calls"]


def test_page_from_a_program_and_report(compiled):
    pytest.importorskip("matplotlib", reason="the plot needs the [report] extra (matplotlib)")
    base, out, rep, *_ = compiled
    page = report_html.render((out, rep), baseline=base)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    graph = _section(page, "graph")
    assert '<svg' in graph and ">classify<" in graph and ">sentence<" in graph and ">label<" in graph
    assert "flowchart LR" in graph                                           # the Mermaid source, as text
    plot = _section(page, "plot")
    assert '<svg class="plot"' in plot and "score against calls spent" in plot
    # every candidate is in the table with its CI; the chosen one is marked
    table = _section(page, "candidates")
    for c in rep.candidates:
        lo, hi = c.ci
        assert f">#{c.id}<" in table and f"[{lo:.3f}, {hi:.3f}]" in table
    assert 'class="best"' in table
    path = _section(page, "path")
    assert "<b>#0</b>" in path and f"<b>#{rep.best_id}</b>" in path
    assert "classify: demos=" in path
    changes = _section(page, "changes")
    assert "demos: 0 -&gt; " in changes                                    # format_diff, escaped
    prompts = _section(page, "prompts")
    assert "diff: before → after" in prompts and '<span class="add">+Sentence: a ' in prompts
    usage = _section(page, "usage")
    u = rep.runtime["nodes"]["classify"]
    assert f'data-v="{u["requests"]}"' in usage and f'data-v="{u["prompt_tokens"]}"' in usage


def test_page_shows_the_score_cost_front_with_the_chosen_point(compiled):
    _, out, rep, art, *_ = compiled
    points = rep.front()
    assert len(points) >= 2 and sum(p["chosen"] for p in points) <= 1
    for page in (report_html.render((out, rep)), report_html.render(art)):  # in memory, and from the file
        front = _section(page, "front")
        assert all(f"<td>{p['label']}</td>" in front for p in points)
        shaded = re.findall(r'<tr class="best"><td>(.*?)</td>', front)
        assert shaded == [p["label"] for p in points if p["chosen"]]
    one = {**rep.to_dict(), "data": {**rep.data, "pareto": rep.data["pareto"][:1]}}
    assert 'id="front"' not in report_html.render((out, one))  # one point is no front


def test_win_loss_counts_on_shared_rows(compiled):
    _, out, rep, *_ = compiled
    page = report_html.render((out, rep))
    table = _section(page, "winloss")
    base = rep.candidates[0].scores
    for c in rep.candidates[1:]:
        pairs = [(base[i], s) for i, s in zip(c.rows, c.scores)]
        wins = sum(s > b for b, s in pairs)
        losses = sum(s < b for b, s in pairs)
        row = re.search(rf"<tr><td>#{c.id}</td>(.*?)</tr>", table).group(1)
        nums = re.findall(r'data-v="(-?\d+)"', row)
        assert nums[:3] == [str(len(pairs)), str(wins), str(losses)], (c.id, row)
    assert "train and validation rows pooled" in table
    # an older optimizer scores every candidate on every validation row, in order
    _, rep2 = BootstrapRandomSearch(max_demos=2, num_candidates=2).optimize(
        program(), rows(40), label_accuracy(), budget=lg.Budget(max_calls=400),
        ctx=lg.RunContext(lm=FunctionLM(demo_lover), cache=False))
    d = rep2.to_dict()
    pairs = report_html.shared_rows(d["candidates"][0], d["candidates"][1])
    assert len(pairs) == len(rep2.candidates[0].scores)
    assert "the validation rows, in order" in _section(report_html.render((out, rep2)), "winloss")
    # a partial evaluation whose rows are not recorded is not compared
    assert report_html.shared_rows({"scores": [1, 0, 1]}, {"scores": [1]}) is None


def test_page_from_an_artifact_and_the_command_line(compiled, tmp_path):
    _, _, rep, art, prog, full = compiled
    page = report_html.render(art)
    assert "not stored in an artifact" in _section(page, "usage")
    assert "shared rows" in _section(page, "winloss")                     # per-row scores travel in the artifact
    out = tmp_path / "r.html"
    assert main(["report", str(art), "-o", str(out), "--baseline", str(prog), "--full-report", str(full)]) == 0
    text = out.read_text(encoding="utf-8")
    assert f'data-v="{rep.runtime["nodes"]["classify"]["requests"]}"' in _section(text, "usage")
    assert "diff: before → after" in text
    assert main(["report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.html")]) == 2


def test_page_is_self_contained(compiled):
    base, out, rep, *_ = compiled
    page = report_html.render((out, rep), baseline=base)
    assert "<link" not in page and "<script src" not in page and "@import" not in page
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith(("#", "data:")), attr
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls  # XML namespaces only
    assert "default-src 'none'" in page                                    # the CSP refuses any fetch


def test_page_without_matplotlib_says_how_to_get_the_plot(compiled, monkeypatch):
    _, out, rep, *_ = compiled
    monkeypatch.setitem(sys.modules, "matplotlib", None)                   # import fails as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    plot = _section(report_html.render((out, rep)), "plot")
    assert "lmgraph[report]" in plot and "<svg" not in plot


def test_page_escapes_what_it_shows():
    p = lg.Pipeline("x")
    n = p.add(lg.Predict("question -> answer", instructions="</pre><script>alert(1)</script>"), "ask",
              question=p.input("question"))
    p.output(answer=n.answer)
    prog = p.build()
    page = report_html.render((prog, {}))
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "<script>alert(1)" not in prog._repr_html_()


def test_render_rejects_what_it_cannot_show():
    with pytest.raises(lg.DefinitionError, match="artifact path or a \\(program, report\\) pair"):
        report_html.render(42)  # type: ignore[arg-type]


def test_notebook_views_are_small_and_escaped(compiled):
    _, out, rep, *_ = compiled
    view = out._repr_html_()
    assert "<b>Program sent</b>" in view and "classify" in view and len(view) < 20_000
    rview = rep._repr_html_()
    assert f"#{rep.best_id}" in rview and "compile" in rview and rview.count("<tr") == len(rep.candidates) + 1
    p = lg.Pipeline("t")
    n = p.add(lg.Predict("question -> answer"), "ask", question=p.input("question"))
    p.output(answer=n.answer)
    pred = p.build().run_sync(lg.RunContext(lm=FunctionLM(lambda r: "Answer: <b>bold</b>"), cache=False),
                              question="q")
    tview = lg.trace_of(pred)._repr_html_()
    assert "Trace of t" in tview and "<td>ask</td>" in tview and "<script" not in tview
    assert "<b>bold</b>" not in tview                                      # outputs are not shown raw
    for v in (view, rview, tview):
        assert "<script" not in v


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
          "--enable-logging=stderr", "--v=0"]


def _chromium(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROMIUM, *_FLAGS, *extra, url], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]


def _console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_page_loads_in_headless_chromium(compiled, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs the [report] extra (matplotlib)")
    base, out, rep, *_ = compiled
    page = tmp_path / "report.html"
    report_html.write(page, (out, rep), baseline=base)
    # the check can fail: a page with a script error shows up in the console log
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFn();</script></body></html>")
    assert any("Uncaught ReferenceError" in ln for ln in _console_lines(_chromium(bad.as_uri(), "--dump-dom").stderr))

    dom = _chromium(page.as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_lines(dom.stderr) == []                                # no script error, no refused fetch
    assert 'data-ready="1"' in dom.stdout                                  # the page's script ran to its end
    assert '<svg class="plot"' in dom.stdout and 'class="graph"' in dom.stdout
    shot = tmp_path / "shot.png"
    res = _chromium(page.as_uri(), f"--screenshot={shot}", "--window-size=1280,1400")
    assert res.returncode == 0, res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_importing_the_report_modules_does_not_import_matplotlib():
    code = ("import lmgraph, lmgraph.report_html, lmgraph.report_figures, sys; "
            "assert 'matplotlib' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
