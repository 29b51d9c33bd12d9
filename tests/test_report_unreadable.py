"""Replies that could not be read, per candidate: every report row counts the rows of its scores
whose reply did not parse (``Candidate.unparsed``), the table and the HTML report show the share,
and a chosen program that loses many of its replies that way gets a note saying so and what to try."""

from __future__ import annotations

import re

import test_opt_compile as oc

import lmgraph as lg
from lmgraph.evaluation import label_accuracy
from lmgraph.optimizers import LabeledFewShot
from lmgraph.optimizers.auto import Compile
from lmgraph.optimizers.report import UNREADABLE
from lmgraph.report_html import _unread, render
from lmgraph.testing import FunctionLM, request_text


def unreadable_row(sentence: str) -> bool:
    """Every fifth row (by its number) gets a reply no format can read."""
    return int(sentence.rsplit(" ", 1)[-1]) % 5 == 0


def mumbler(request):  # noqa: ANN001, ANN201
    """``demo_lover``, except that it mumbles on the unreadable rows, asked once or again."""
    if unreadable_row(oc._last_sentence(request_text(request))):
        return "hmm"
    return oc.demo_lover(request)


def expected(rows, ids) -> int:  # noqa: ANN001
    return sum(unreadable_row(rows[i]["sentence"]) for i in ids)


def test_each_report_row_counts_its_unreadable_rows_exactly() -> None:
    data = oc.rows(60)
    train, val = data[:30], data[30:]
    _, rep = LabeledFewShot(k=4).optimize(oc.program(), train, label_accuracy(), valset=val,
                                          ctx=lg.RunContext(lm=FunctionLM(mumbler), cache=False))
    whole = [c for c in rep.candidates if len(c.scores) == len(val)]
    assert whole and rep.baseline in whole
    for c in whole:  # scored on every validation row, in order
        assert c.unparsed == expected(val, range(len(val))) == 6, rep.table()
        assert c.to_dict()["unparsed"] == c.unparsed
    assert all(0 <= c.unparsed <= len(c.scores) for c in rep.candidates)


def test_a_candidate_stopped_early_counts_them_on_the_rows_it_was_scored_on() -> None:
    def demo_mumbler(request):  # noqa: ANN001, ANN202
        """Mumbles whenever the prompt shows demos: the demo candidate is stopped after its first stage."""
        return "hmm" if request_text(request).count("Sentence: ") > 1 else oc.demo_lover(request)

    data = oc.rows(100)
    _, rep = LabeledFewShot(k=4).optimize(oc.program(), data[:20], label_accuracy(), valset=data[20:],
                                          ctx=lg.RunContext(lm=FunctionLM(demo_mumbler), cache=False))
    demo = rep.candidates[1]
    assert demo.status == "rejected" and "stopped early" in demo.reason and 0 < len(demo.scores) < 80
    assert demo.unparsed == len(demo.scores) and rep.baseline.unparsed == 0
    assert rep.best is rep.baseline and not any("could not be read" in n for n in rep.all_notes())


def test_the_default_compiler_counts_them_on_the_rows_each_candidate_was_scored_on() -> None:
    data = oc.rows(60)
    compiled, rep = Compile(decodes=()).optimize(oc.program(), data, label_accuracy(),
                                                 budget=lg.Budget(max_calls=600),
                                                 ctx=lg.RunContext(lm=FunctionLM(mumbler), cache=False))
    raced = [c for c in rep.candidates if c.rows is not None]
    assert raced
    json_rows = [c for c in raced if c.label.startswith("json")]
    assert json_rows and all(c.unparsed == len(c.scores) for c in json_rows)  # the fake never writes JSON
    for c in [c for c in raced if c not in json_rows]:  # search rows (+ confirmation rows once confirmed)
        assert c.unparsed == expected(data, c.rows) > 0, (c.label, c.rows)
    best = rep.best
    assert best.unparsed_rate >= UNREADABLE
    note = next(n for n in rep.all_notes() if n.startswith("the chosen program's replies could not be read"))
    assert f"on {best.unparsed} of its {len(best.scores)} scored rows ({best.unparsed_rate:.0%})" in note
    assert "max_tokens" in note and "format='json'" in note
    table = rep.table()
    assert re.search(r"calls\s+unread\s+label", table)
    assert f"{best.unparsed_rate:.0%}" in next(line for line in table.splitlines() if line.startswith(f"{best.id:>3}*"))
    html = render((compiled, rep))
    assert ">unread</th>" in html and "could not be read" in html
    assert ">unread</th>" in rep._repr_html_()


def test_a_program_whose_replies_all_parse_gets_no_note() -> None:
    _, rep = Compile(decodes=()).optimize(oc.program(), oc.rows(60), label_accuracy(),
                                          budget=lg.Budget(max_calls=600),
                                          ctx=lg.RunContext(lm=FunctionLM(oc.demo_lover), cache=False))
    assert rep.best.unparsed == 0
    assert not any("could not be read" in n for n in rep.all_notes())


def test_a_report_of_an_earlier_version_shows_no_share_rather_than_zero() -> None:

    assert ">-</td>" in _unread({"n": 10})
    assert ">30%</td>" in _unread({"n": 10, "unparsed": 3})
