"""``python -m analysis pareto|export|report`` through its main(), with the errors users meet."""

from __future__ import annotations

import json

import pytest

from analysis import load_study, pareto_rows
from analysis._cli import main


def test_pareto_json_and_table(study_url, capsys):
    url, name = study_url
    assert main(["pareto", "--storage", url, "--study", name, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = pareto_rows(load_study(url, name), "scalar")
    assert [r["number"] for r in rows] == [r.number for r in expected]
    assert [r["scalar"] for r in rows] == sorted(r["scalar"] for r in rows)
    for r in rows:
        geomean = (r["val_ce"] * r["sharpness_gap"] * r["cka_gap"]) ** (1 / 3)
        assert r["scalar"] == pytest.approx(geomean, rel=1e-9)
        assert r["cka"] == 1 - r["cka_gap"]
    assert main(["pareto", "--storage", url, "--study", name, "--select", "accuracy", "--json"]) == 0
    acc = [r["accuracy"] for r in json.loads(capsys.readouterr().out)]
    assert acc == sorted(acc, reverse=True)
    assert main(["pareto", "--storage", url, "--study", name]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["trial", "formula", "val_ce", "sharpness_gap", "cka_gap"]
    assert table[2].split()[0] == str(expected[0].number) and len(table) == 2 + len(expected)


def test_errors_exit_2_with_a_message(study_url, tmp_path, capsys):
    url, name = study_url
    assert main(["pareto", "--storage", url, "--study", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no study named 'nope'") and "studies there: ['kd']" in err
    assert main(["export", "--storage", url, "--study", name, "--trial", "999", "--out", str(tmp_path)]) == 2
    assert "trial 999 does not exist" in capsys.readouterr().err
    pruned = next(t.number for t in load_study(url, name).trials if t.state.name == "PRUNED")
    assert (
        main(
            [
                "report",
                "--storage",
                url,
                "--study",
                name,
                "--trial",
                str(pruned),
                "--out",
                str(tmp_path / "r.html"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"trial {pruned} of study 'kd' is PRUNED" in err and "reject_reason=" in err
    assert not (tmp_path / "r.html").exists()
