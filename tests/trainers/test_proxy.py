"""Proxy evaluator over injected tiny parts, with the real spaces.build_distiller."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from spaces import KNOWN_DISTILLERS, DistillerSpec
from tests.trainers._tiny import NaNDistiller, TinyNet, tiny_data
from trainers.config import ExperimentConfig, ProxyConfig, TrainConfig
from trainers.output_cache import TeacherOutputCache
from trainers.proxy import Fitness, ProxyEvaluator, mean_fitness
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


def _lrs_of(trainer) -> list[float]:
    lrs: list[float] = []
    trainer.add_callback("on_batch_end", lambda t: lrs.append(t.state.lr))
    trainer.run()
    return lrs


def test_proxy_is_the_full_runs_prefix_with_the_same_learning_rate() -> None:
    from trainers.run import assemble_run

    exp = ExperimentConfig(
        student_train=TrainConfig(epochs=4, batch_size=32, lr=0.05, amp=False, seed=3, warmup_epochs=1.0),
        proxy=ProxyConfig(fraction=0.25, evals=1, reject_batches=1),
    )
    ev = _evaluator(exp=exp)
    spec = KNOWN_DISTILLERS["kd"]
    proxy = ev.build_trainer(spec, seed=3)
    full = assemble_run(exp, ev.parts, spec, seed=3)
    assert proxy.total_steps == 8 and full.total_steps == 32  # 25% of 4 epochs x 8 steps
    proxy_losses: list[float] = []
    full_losses: list[float] = []
    proxy.add_callback("on_batch_end", lambda t: proxy_losses.append(t.state.loss))
    full.add_callback("on_batch_end", lambda t: full_losses.append(t.state.loss))
    lp, lf = _lrs_of(proxy), _lrs_of(full)
    # the warm-up of one epoch (8 steps) is the whole proxy, step for step, not squeezed into 2 steps
    assert lp == pytest.approx([0.05 * (s + 1) / 8 for s in range(8)])
    assert lp == pytest.approx(lf[:8])
    assert proxy_losses == pytest.approx(full_losses[:8])  # same seed: the same run, cut short


def test_proxy_fraction_scales_with_the_regime_and_the_subset_keeps_the_full_schedule() -> None:
    exp = ExperimentConfig(
        student_train=TrainConfig(epochs=10, batch_size=32, lr=0.05, amp=False, warmup_epochs=1.0),
        proxy=ProxyConfig(fraction=0.05, subset=64, evals=1),
    )
    ev = _evaluator(exp=exp)
    # 5% of the FULL run: 10 epochs x (256 / 32) steps = 80 steps -> 4, although the subset has 2 per epoch
    assert ev.proxy_steps() == 4 and len(ev.train) == 64
    tr = ev.build_trainer(None)
    assert tr.schedule_steps == 80
    assert _lrs_of(tr) == pytest.approx([0.05 * (s + 1) / 8 for s in range(4)])
    # a verification run: a larger fraction on the whole split
    ver = ev.build_trainer(None, fraction=0.25)
    assert ver.total_steps == 20 and ver.num_train == 256


def test_every_run_has_the_same_divergence_guard() -> None:
    from trainers.callbacks import DivergenceGuard
    from trainers.run import DIVERGENCE_RATIO, assemble_run

    ev = _evaluator()
    for tr in (ev.build_trainer(KNOWN_DISTILLERS["kd"]), assemble_run(EXP, ev.parts, None)):
        guards = [
            fn.__self__
            for fn in tr.callbacks["on_batch_end"]
            if isinstance(getattr(fn, "__self__", None), DivergenceGuard)
        ]
        assert len(guards) == 1 and guards[0].ratio == DIVERGENCE_RATIO


# ---------------------------------------------------------------- several proxy seeds (ProxyConfig.seeds)
def _fit(acc: float, ce: float, curve: list[tuple[int, float]], **kw) -> Fitness:
    base = dict(
        ce=ce,
        sharpness_gap=2 * ce,
        cka_gap=0.5 * acc,
        accuracy=acc,
        cka=1 - 0.5 * acc,
        curve=curve,
        wall_s=1.0,
        reject_s=0.1,
        train_s=0.8,
        steps=8,
        terms={"kd": ce, "ce": acc},
        formula="f",
        seed_accuracies=[acc],
    )
    return Fitness(**{**base, **kw})


def test_mean_fitness_averages_measurements_and_adds_costs() -> None:
    a = _fit(0.1, 2.3, [(4, 0.1), (8, 0.1)])  # a collapsed seed
    b = _fit(0.8, 0.5, [(4, 0.6), (8, 0.8)])
    m = mean_fitness([a, b])
    assert m.accuracy == pytest.approx((0.1 + 0.8) / 2)
    assert m.objectives == pytest.approx(((2.3 + 0.5) / 2, (4.6 + 1.0) / 2, (0.05 + 0.4) / 2))
    assert m.cka == pytest.approx(1 - (0.05 + 0.4) / 2)
    assert m.curve == [(4, pytest.approx(0.35)), (8, pytest.approx(0.45))]
    assert (m.wall_s, m.reject_s, m.train_s, m.steps) == (2.0, 0.2, 1.6, 16)
    assert m.terms == {"kd": pytest.approx(1.4), "ce": pytest.approx(0.45)}
    assert m.seed_accuracies == [0.1, 0.8]
    assert mean_fitness([a]).accuracy == a.accuracy
    with pytest.raises(ValueError, match="at least one"):
        mean_fitness([])


def test_a_proxy_with_k_seeds_is_the_mean_of_k_single_seed_runs() -> None:
    spec = KNOWN_DISTILLERS["kd"]
    two = dataclasses.replace(EXP, proxy=dataclasses.replace(EXP.proxy, seeds=2))
    f = _evaluator(exp=two).evaluate(spec, seed=3)
    one = _evaluator()
    f3, f4 = one.evaluate(spec, seed=3), one.evaluate(spec, seed=4)
    assert f.seed_accuracies == [f3.accuracy, f4.accuracy]
    assert f.accuracy == pytest.approx((f3.accuracy + f4.accuracy) / 2)
    assert f.ce == pytest.approx((f3.ce + f4.ce) / 2)
    assert f.steps == f3.steps + f4.steps
    # the default seed is student_train.seed (0): seeds 0 and 1
    f01 = _evaluator(exp=two).evaluate(spec)
    assert f01.seed_accuracies == [one.evaluate(spec).accuracy, one.evaluate(spec, seed=1).accuracy]
    # verification runs (fraction=) stay one run of their own seed
    assert len(_evaluator(exp=two).evaluate(spec, seed=3, fraction=0.1).seed_accuracies) == 1


def test_a_rejection_on_any_proxy_seed_rejects_the_candidate_and_names_the_seed() -> None:
    two = dataclasses.replace(EXP, proxy=dataclasses.replace(EXP.proxy, seeds=2))
    calls = []

    def on_eval(trainer) -> None:
        calls.append(trainer.state.step)
        if len(calls) == 3:  # the second seed's first evaluation
            raise Rejected("early_stop", "below the threshold")

    with pytest.raises(Rejected) as info:
        _evaluator(exp=two).evaluate(KNOWN_DISTILLERS["kd"], callbacks={"on_eval": [on_eval]}, seed=5)
    assert info.value.reason == "early_stop"
    assert info.value.detail.startswith("seed 6 of 5..6: ")


@pytest.mark.parametrize("bad", [0, -1, 17, 1.5, True, "2"])
def test_proxy_seeds_must_be_a_small_positive_int(bad) -> None:
    with pytest.raises(ValueError, match="proxy.seeds"):
        ProxyConfig(seeds=bad)


def test_a_distiller_that_needs_a_huge_tensor_is_rejected_before_it_trains() -> None:
    # feature (16, 8, 8) -> local_r1 -> (1024, 1, 1) -> bmm -> (1024, 1, 1024): 32 x 1024^2 floats = 128 MiB
    spec = DistillerSpec("feature", ("local_r1", "no", "bmm"), "l2", "no", 1.0, 1.0)
    exp = dataclasses.replace(EXP, proxy=dataclasses.replace(EXP.proxy, max_tensor_mb=100))
    with pytest.raises(Rejected) as info:
        _evaluator(exp=exp).evaluate(spec)
    assert info.value.reason == "invalid"
    assert "128 MiB tensor per batch of 32" in info.value.detail
    assert "max_tensor_mb = 100" in info.value.detail
    small = dataclasses.replace(EXP, proxy=dataclasses.replace(EXP.proxy, max_tensor_mb=1))
    _evaluator(exp=small).check(KNOWN_DISTILLERS["at"])  # 32 x 16 x 8 x 8 floats = 0.125 MiB: allowed


@pytest.mark.parametrize("bad", [0, -1.0, "big", True])
def test_max_tensor_mb_must_be_a_positive_number(bad) -> None:
    with pytest.raises(ValueError, match=f"proxy.max_tensor_mb must be a number > 0, got {bad!r}"):
        ProxyConfig(max_tensor_mb=bad)
