"""The offline HTML report: every figure and table, plotly.js inlined once, no external script."""

from __future__ import annotations

import re

import pytest
from plotly.offline import get_plotlyjs

from analysis import FIGURE_IDS, TABLE_IDS, collect, load_study, write_report
from analysis._report import render
from tests.analysis.helpers import add, new_study


@pytest.fixture(scope="module")
def report(study_url, tmp_path_factory):
    study = load_study(*study_url)
    path = write_report(study, tmp_path_factory.mktemp("report") / "report.html", importance_trees=8)
    return study, path.read_text(encoding="utf-8")


def test_report_is_self_contained(report):
    _, html = report
    assert html.startswith("<!DOCTYPE html>")
    assert "<script src=" not in html.lower()
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, flags=re.IGNORECASE)
    js = get_plotlyjs()
    assert html.count(js[:300]) == 1  # plotly.js inlined exactly once
    ours = html.replace(js, "")
    assert re.findall(r"https?://", ours) == []  # nothing outside the inlined library points online


def test_report_has_every_figure_and_table(report):
    study, html = report
    for div_id in FIGURE_IDS:
        assert f'id="{div_id}"' in html, div_id
        assert f'"{div_id}"' in html.split(f'id="{div_id}"')[1][:3000]  # Plotly.newPlot targets the div
    for table_id in TABLE_IDS:
        assert f'<table id="{table_id}">' in html
    for title in (
        "Pareto front (3-D)",
        "Pareto front (2-D projections)",
        "Objectives per generation",
        "Operation frequency among the top 20 trials",
        "Rejected trials",
        "Search-space shrinkage weights",
        "Parameter importances per objective",
    ):
        assert title in html, title


def test_known_vs_chosen_table(report, study_url):
    study, html = report
    table = html.split('<table id="known-vs-chosen">')[1].split("</table>")[0]
    for name in ("at", "cwd", "dist", "fitnets", "kd", "pkd", "wsld"):
        assert f"<td>{name}</td>" in table
    data = collect(study, importance_trees=8)
    assert f'<tr class="chosen"><td>{data.chosen.number}</td>' in table
    assert table.count("<tr") == 1 + 7 + (0 if data.chosen.known else 1)
    pareto = html.split('<table id="pareto-table">')[1].split("</table>")[0]
    assert pareto.count("<tr") == 1 + len(data.front)
    # every 6th of the 40 random trials: reasons nan, explode, collapse, explode, invalid, nan
    assert list(data.rejections.items()) == [("explode", 2), ("nan", 2), ("collapse", 1), ("invalid", 1)]


def test_stored_text_is_escaped():
    exp = {"student": "<b>s</b>", "teacher": "t", "dataset": {"name": "d"}}
    study = new_study(config={"experiment": exp})
    add(study, [0.1, 0.2, 0.3], attrs={"formula": "</script><script>alert(1)</script>", "known": "x<y"})
    html = render(study, collect(study, known={}))
    assert "<script>alert(1)" not in html and "&lt;/script&gt;&lt;script&gt;alert(1)" in html
    assert "<b>s</b>" not in html and "<td>x&lt;y</td>" in html


def test_report_on_a_one_trial_study(tmp_path):
    study = new_study()
    add(study, [0.5, 0.1, 0.3], attrs={"accuracy": 0.7})
    data = collect(study, known={})
    html = render(study, data)
    for div_id in FIGURE_IDS:
        assert f'id="{div_id}"' in html
    notes = [a.text for a in data.figures["param-importances"].layout.annotations]
    assert notes.count("too few complete trials (1 < 4)") == 3
    assert "no generation information" in data.figures["objectives-per-generation"].layout.annotations[0].text
    assert data.chosen.number == 0
