"""benchmarks.short_schedule: a table setting's fidelity set trained with a short whole schedule."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from benchmarks import short_schedule, table
from spaces import KNOWN_DISTILLERS


def _table_args(tmp_path) -> str:
    return f"--quick --dataset digits --teacher cnn_tiny --epochs 4 --cache-dir {tmp_path / 'cache'}"


def _points() -> list[dict]:
    specs = {
        "ce": None,
        "kd": KNOWN_DISTILLERS["kd"],
        "dist": KNOWN_DISTILLERS["dist"],
        "at": KNOWN_DISTILLERS["at"],
    }
    return [
        {
            "formula": s.formula() if s else "ce",
            "spec": s.to_dict() if s else None,
            "test_acc": acc,
            "verify_acc": v,
        }  # fmt: skip
        for s, acc, v in zip(specs.values(), [0.5, 0.6, 0.7, 0.8], [0.4, 0.3, 0.6, None], strict=True)
    ]


def test_the_fidelity_set_is_trained_with_the_short_schedule_and_ranked(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KDZERO_CACHE", str(tmp_path / "cache"))
    summary = {"settings": {"full/cnn_tiny": {"fidelity": {"points": _points()}}}}
    (tmp_path / "r.summary.json").write_text(json.dumps(summary))
    argv = ["--run", "r", "--out", str(tmp_path), "--regime", "full", "--fraction", "0.5", "--seeds", "0,1",
            "--table-args", _table_args(tmp_path)]  # fmt: skip
    assert short_schedule.main(argv) == 0
    runs = json.loads((tmp_path / "r-short-schedule.json").read_text())
    assert len(runs) == 8 and {r["epochs"] for r in runs} == {2}  # half of the 4-epoch schedule
    # a run of the short schedule is a whole training of that length: the same as the evaluator's full run
    targs = table.parse_args(["--run", "r", *_table_args(tmp_path).split()])
    exp = short_schedule.short_experiment(table.build_experiment(targs, "full", "cnn_tiny"), 0.5)
    assert exp.student_train.epochs == 2
    from trainers.distill import distill

    ce0 = next(r for r in runs if r["spec"] is None and r["seed"] == 0)
    assert distill(exp, None, seed=0, device="cpu")["val_acc"] == pytest.approx(ce0["val_acc"])
    out = json.loads((tmp_path / "r-short-schedule.summary.json").read_text())["full/cnn_tiny@0.5"]
    acc = {(json.dumps(r["spec"], sort_keys=True), r["seed"]): r["val_acc"] for r in runs}
    tests = [p["test_acc"] for p in _points()]
    for seed in (0, 1):
        vals = [acc[(json.dumps(p["spec"], sort_keys=True), seed)] for p in _points()]
        ok = [(v, t) for v, t in zip(vals, tests, strict=True) if v is not None]
        want = stats.kendalltau([v for v, _ in ok], [t for _, t in ok]).statistic
        got = out["correlations"][f"short seed {seed}"]["kendall_tau"]
        assert (got is None and math.isnan(want)) or got == pytest.approx(want)
    # the prefix on seed 1 (no study here) reads verify_acc, leaving out the distiller without one: 3 points
    assert out["correlations"]["prefix seed 0"]["n"] == 0
    prefix = out["correlations"]["prefix seed 1"]
    assert prefix["n"] == 3 and prefix["kendall_tau"] == pytest.approx((2 - 1) / 3)

    def trained_again(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    from trainers.proxy import ProxyEvaluator

    monkeypatch.setattr(ProxyEvaluator, "evaluate", trained_again)
    assert short_schedule.main(argv) == 0  # resumed: nothing left to train
    assert short_schedule.main([*argv, "--summary"]) == 0


def test_bad_input_is_refused_naming_it(tmp_path, capsys) -> None:
    base = ["--run", "r", "--out", str(tmp_path), "--table-args", _table_args(tmp_path)]
    assert short_schedule.main([*base, "--summary"]) == 2
    assert "has no fidelity set of 10pct/cnn_tiny" in capsys.readouterr().err
    assert short_schedule.main([*base, "--regime", "half"]) == 2
    assert "'half'" in capsys.readouterr().err
    for bad, named in ((["--fraction", "1.5"], "1.5"), (["--seeds", "x"], "'x'"), (["--threads", "0"], "0")):
        with pytest.raises(SystemExit) as exc:
            short_schedule.main([*base, *bad])
        assert exc.value.code == 2 and named in capsys.readouterr().err
