"""benchmarks.prefix_curves: rows of a table run retrained with their curves, reported per fraction."""

from __future__ import annotations

import json
import statistics

import pytest

from benchmarks import prefix_curves, table, table_runs
from benchmarks.table_runs import run_training
from spaces import KNOWN_DISTILLERS


def _table_args(tmp_path) -> str:
    return f"--quick --dataset digits --teacher cnn_tiny --epochs 3 --cache-dir {tmp_path / 'cache'}"


def test_old_rows_are_retrained_with_their_curves_and_reported_per_fraction(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KDZERO_CACHE", str(tmp_path / "cache"))
    targs = table.parse_args(["--run", "r", "--out", str(tmp_path), *_table_args(tmp_path).split()])
    exp = table.build_experiment(targs, "full", "cnn_tiny")
    ident = table.load_setting(exp, "cpu")[1]["identity"]
    specs = {"ce": None, "kd": KNOWN_DISTILLERS["kd"]}
    stored = []
    for seed in (0, 1):
        for method, spec in specs.items():
            row = run_training(exp, "full", method, spec, seed, "cpu", None, ident)
            stored.append({k: v for k, v in row.items() if k != "epoch_val_acc"})  # a row from before curves
    (tmp_path / "r.json").write_text(json.dumps(stored))
    argv = ["--run", "r", "--out", str(tmp_path), "--methods", "kd,ce", "--seeds", "0,1",
            "--table-args", _table_args(tmp_path)]  # fmt: skip
    assert prefix_curves.main(argv) == 0
    curves = json.loads((tmp_path / "r-curves.json").read_text())
    assert len(curves) == 4 and all(len(r["epoch_val_acc"]) == 3 for r in curves)
    assert not (tmp_path / "r-curves-checkpoints").exists() or not any(
        (tmp_path / "r-curves-checkpoints").iterdir()
    )
    summary = json.loads((tmp_path / "r-curves.summary.json").read_text())["full/cnn_tiny"]
    acc = {(r["method"], r["seed"]): r for r in curves}
    for method in ("kd", "ce"):
        s = summary["methods"][method]
        assert s["seeds"] == [0, 1] and s["max_repro_diff"] == 0.0  # the same run, the same numbers
        # 3 epochs: 5%, 10% and 25% read epoch 1, 50% epoch 2, 75% and 100% epoch 3
        for name, epoch in {"5%": 1, "25%": 1, "50%": 2, "75%": 3, "100%": 3}.items():
            want = statistics.fmean(acc[(method, seed)]["epoch_val_acc"][epoch - 1] for seed in (0, 1))
            assert s["val"][name] == pytest.approx(want), (method, name)
        assert s["val"]["100%"] == pytest.approx(
            statistics.fmean(acc[(method, q)]["val_acc"] for q in (0, 1)), abs=1e-6
        )
    d = [acc[("kd", q)]["test_acc"] - acc[("ce", q)]["test_acc"] for q in (0, 1)]
    pair = summary["pairs"]["kd - ce"]["test"]
    assert pair["n"] == 2 and pair["mean"] == pytest.approx(statistics.fmean(d))
    assert pair["se"] == pytest.approx(statistics.stdev(d) / 2**0.5)
    d50 = [acc[("kd", q)]["epoch_val_acc"][1] - acc[("ce", q)]["epoch_val_acc"][1] for q in (0, 1)]
    assert summary["pairs"]["kd - ce"]["50%"]["mean"] == pytest.approx(statistics.fmean(d50))

    def trained_again(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(table_runs, "run_training", trained_again)
    assert prefix_curves.main(argv) == 0  # resumed: every row is there
    assert prefix_curves.main([*argv, "--summary"]) == 0
    again = json.loads((tmp_path / "r-curves.summary.json").read_text())["full/cnn_tiny"]
    assert again == summary


def test_bad_input_is_refused_naming_it(tmp_path, capsys) -> None:
    (tmp_path / "r.json").write_text("[]")
    base = ["--run", "r", "--out", str(tmp_path), "--table-args", _table_args(tmp_path)]
    assert prefix_curves.main([*base, "--methods", "kd", "--seeds", "0", "--summary"]) == 2
    assert "no full/cnn_tiny kd seed 0 row of 3 epochs" in capsys.readouterr().err
    assert prefix_curves.main(["--run", "missing", "--out", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
    assert prefix_curves.main([*base, "--regime", "half"]) == 2
    assert "'half'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        prefix_curves.main([*base, "--seeds", "a,b"])
    assert exc.value.code == 2 and "'a,b'" in capsys.readouterr().err
