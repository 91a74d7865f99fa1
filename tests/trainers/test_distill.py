"""Full distillation runs and the ``distill`` CLI on the bundled digits set, through the real pieces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spaces import KNOWN_DISTILLERS
from trainers.__main__ import main
from trainers.config import DataConfig, ExperimentConfig, ProxyConfig, TrainConfig
from trainers.distill import distill, resolve_spec
from trainers.proxy import ProxyEvaluator


def _exp(cache: Path) -> ExperimentConfig:
    return ExperimentConfig(
        dataset=DataConfig(name="digits", val_size=200, subset=400),
        teacher="cnn_tiny",
        student="cnn_tiny",
        teacher_train=TrainConfig(epochs=2, batch_size=64, amp=False, optimizer="adamw", lr=0.01),
        student_train=TrainConfig(epochs=2, batch_size=64, amp=False, lr=0.05),
        proxy=ProxyConfig(steps=4, evals=2, reject_batches=1),
        cache_dir=str(cache),
    )


def test_distill_runs_full_schedule_and_writes_json(tmp_path: Path) -> None:
    exp = _exp(tmp_path / "cache")
    out = tmp_path / "res" / "kd.json"
    res = distill(exp, KNOWN_DISTILLERS["kd"], seed=1, out=out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["steps"] == 2 * (400 // 64) and len(res["epoch_val_acc"]) == 2
    assert 0.0 <= res["test_acc"] <= 1.0 and math.isfinite(res["test_ce"])
    assert res["spec"] == KNOWN_DISTILLERS["kd"].to_dict() and res["seed"] == 1
    assert res["config"]["student_train"]["seed"] == 1
    # teacher outputs were cached for the training split (digits has no augmentation)
    assert list((tmp_path / "cache" / "teacher_outputs").rglob("train-logits-float32.npy"))
    again = distill(exp, KNOWN_DISTILLERS["kd"], seed=1)
    assert again["epoch_val_acc"] == res["epoch_val_acc"] and again["test_acc"] == res["test_acc"]


def test_distill_cli_baseline_and_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = _exp(tmp_path / "cache")
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps(exp.to_dict()))
    out = tmp_path / "ce.json"
    assert (
        main(["distill", "--baseline", "ce", "--config", str(cfg), "--epochs", "1", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "test accuracy" in printed
    res = json.loads(out.read_text())
    assert res["spec"] is None and res["formula"] == "ce" and len(res["epoch_val_acc"]) == 1
    spec_file = tmp_path / "dist.json"
    spec_file.write_text(KNOWN_DISTILLERS["dist"].to_json())
    assert resolve_spec(str(spec_file)) == KNOWN_DISTILLERS["dist"]
    assert main(["distill", "--baseline", "nope", "--config", str(cfg)]) == 2
    assert "valid baselines are ['ce', 'at'" in capsys.readouterr().err


def test_proxy_evaluator_from_experiment(tmp_path: Path) -> None:
    exp = _exp(tmp_path / "cache")
    ev = ProxyEvaluator(exp)
    f = ev.evaluate(KNOWN_DISTILLERS["kd"])
    assert f.steps == 4 and len(f.curve) == 2
    assert all(math.isfinite(v) for v in f.objectives)
    live = ProxyEvaluator(exp, use_cache=False).evaluate(KNOWN_DISTILLERS["kd"])
    assert live.ce == pytest.approx(f.ce, rel=1e-5) and live.cka_gap == pytest.approx(f.cka_gap, rel=1e-4)
