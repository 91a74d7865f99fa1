"""Proxy evaluator over injected tiny parts, with the real spaces.build_distiller."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from spaces import KNOWN_DISTILLERS, DistillerSpec
from tests.trainers._tiny import NaNDistiller, TinyNet, tiny_data
from trainers.config import ExperimentConfig, ProxyConfig, TrainConfig
from trainers.output_cache import TeacherOutputCache
from trainers.proxy import Fitness, ProxyEvaluator
from trainers.rejection import Rejected

EXP = ExperimentConfig(
    student_train=TrainConfig(epochs=20, batch_size=32, lr=0.05, amp=False, seed=0),
    proxy=ProxyConfig(fraction=0.05, evals=2, reject_batches=2),
)


def _evaluator(tmp_path: Path | None = None, exp: ExperimentConfig = EXP, **kw) -> ProxyEvaluator:
    torch.manual_seed(0)
    teacher = TinyNet(16)
    cache = TeacherOutputCache(tmp_path, "tiny") if tmp_path is not None else None
    return ProxyEvaluator.from_parts(
        exp,
        train=tiny_data(256, 0),
        val=tiny_data(96, 1),
        teacher=teacher,
        input_shape=(1, 8, 8),
        num_classes=4,
        student_factory=lambda: TinyNet(8),
        cache=cache,
        **kw,
    )


def _numbers(f: Fitness) -> dict:
    d = f.to_dict()
    return {k: v for k, v in d.items() if not k.endswith("_s")}


def test_proxy_fitness_is_finite_seeded_and_json(tmp_path: Path) -> None:
    ev = _evaluator(tmp_path)
    assert ev.proxy_config().max_steps == math.ceil(0.05 * 20 * 8)  # 5% of 20 epochs of 8 steps
    f1 = ev.evaluate(KNOWN_DISTILLERS["kd"])
    f2 = ev.evaluate(KNOWN_DISTILLERS["kd"])
    assert _numbers(f1) == _numbers(f2)  # same spec + seed -> same numbers
    assert f1.steps == 8 and [s for s, _ in f1.curve] == [4, 8]
    for v in (f1.ce, f1.sharpness_gap, f1.cka_gap, f1.accuracy):
        assert math.isfinite(v)
    assert 0 <= f1.cka_gap <= 1 and f1.cka_gap == pytest.approx(1 - f1.cka)
    assert f1.objectives == (f1.ce, f1.sharpness_gap, f1.cka_gap)
    assert f1.formula == KNOWN_DISTILLERS["kd"].formula()
    assert 0 < f1.reject_s < f1.wall_s
    json.dumps(f1.to_dict())
    f3 = ev.evaluate(KNOWN_DISTILLERS["kd"], seed=1)
    assert _numbers(f3) != _numbers(f1)


def test_cached_and_live_teacher_give_same_fitness(tmp_path: Path) -> None:
    spec = KNOWN_DISTILLERS["fitnets"]  # feature knowledge, widths 8 vs 16 through the aligner
    cached = _evaluator(tmp_path).evaluate(spec)
    live = _evaluator(None).evaluate(spec)
    for k in ("ce", "sharpness_gap", "cka_gap", "accuracy"):
        assert getattr(cached, k) == pytest.approx(getattr(live, k), rel=1e-4, abs=1e-6)
    assert (tmp_path / "teacher_outputs" / "tiny" / "train-feature-float32.npy").exists()


def test_invalid_and_nan_candidates_are_rejected() -> None:
    ev = _evaluator()
    bad = DistillerSpec("embedding", ("no", "no", "no"), "hard", "no", 1.0, 1.0)
    with pytest.raises(Rejected) as info:
        ev.check(bad)
    assert info.value.reason == "invalid" and "hard" in info.value.detail
    nan_ev = _evaluator(distiller_factory=lambda spec, s, t: NaNDistiller())
    with pytest.raises(Rejected) as info:
        nan_ev.evaluate(KNOWN_DISTILLERS["kd"])
    assert info.value.reason == "nan"


def test_callbacks_subset_and_ce_baseline() -> None:
    exp = ExperimentConfig(student_train=EXP.student_train, proxy=ProxyConfig(steps=6, subset=100, evals=3))
    ev = _evaluator(exp=exp)
    assert len(ev.train) == 100 and ev.proxy_config().max_steps == 6

    def stop(trainer) -> None:
        raise Rejected("early_stop", f"step {trainer.state.step}")

    with pytest.raises(Rejected, match="step 2"):
        ev.evaluate(KNOWN_DISTILLERS["dist"], callbacks={"on_eval": [stop]})
    base = ev.evaluate(None)
    assert base.formula is None and base.reject_s == 0.0 and base.steps == 6
    assert set(base.terms) == {"ce"}


@pytest.mark.parametrize("name", sorted(KNOWN_DISTILLERS))
def test_published_distillers_pass_the_check(name: str) -> None:
    report = _evaluator().check(KNOWN_DISTILLERS[name])
    assert len(report.kd) == 2 and all(g > 0 for g in report.kd_grad)
