"""Pruner and objective: early stopping vs completed curves, rejection reasons, errors pruned."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from study_fakes import FakeEvaluator

from study.config import SearchConfig
from study.objective import Objective
from study.pruner import PercentileEarlyStop, error_detail
from study.sampler import build_sampler
from trainers import Rejected

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study_with_curves(curves: list[list[list[float]]]) -> optuna.Study:
    study = optuna.create_study(directions=["minimize"] * 3)
    for c in curves:
        study.add_trial(create_trial(values=[1.0, 1.0, 1.0], user_attrs={"curve": c}))
    return study


def _eval(cb, step: int, acc: float) -> None:
    cb(SimpleNamespace(state=SimpleNamespace(step=step, val_acc=acc)))


def test_threshold_is_the_percentile_of_completed_trials_at_the_same_step() -> None:
    accs10 = [0.1, 0.2, 0.3, 0.4, 0.5]
    study = _study_with_curves([[[10, a], [20, a + 0.3]] for a in accs10])
    pruner = PercentileEarlyStop(percentile=40.0, warmup=3, refresh_s=0.0)
    thr, n = pruner.threshold(study, 10)
    assert n == 5 and thr == pytest.approx(float(np.percentile(accs10, 40.0)))
    assert pruner.threshold(study, 30) is None  # no completed trial has a checkpoint at step 30
    cb = pruner.on_eval(study)
    _eval(cb, 10, thr + 1e-6)  # above: continues
    with pytest.raises(Rejected) as err:
        _eval(cb, 20, 0.3)  # below the 40th percentile of [0.4 .. 0.8]
    assert err.value.reason == "early_stop" and "step 20" in err.value.detail


def test_warmup_disables_early_stopping() -> None:
    study = _study_with_curves([[[10, 0.9]], [[10, 0.95]]])
    cb = PercentileEarlyStop(percentile=50.0, warmup=3, refresh_s=0.0).on_eval(study)
    _eval(cb, 10, 0.0)  # only 2 completed trials < warm-up 3: no stop


class _Broken(FakeEvaluator):
    def evaluate(self, spec, callbacks=None):
        raise ZeroDivisionError("division by zero in a planted bug")


def test_rejections_and_errors_end_pruned_with_reasons() -> None:
    search = SearchConfig(
        population=4, seed=0, knowledge=("logits",), early_stop_warmup=2, early_stop_percentile=50.0
    )
    study = optuna.create_study(directions=["minimize"] * 3, sampler=build_sampler(search, refresh_s=0.0))
    pruner = PercentileEarlyStop(50.0, 2, refresh_s=0.0)
    study.optimize(
        Objective(
            FakeEvaluator(reject_gene="calibration", reject_value="no"), knowledge=("logits",), pruner=pruner
        ),
        n_trials=25,
    )
    by_reason = {}
    for t in study.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert t.user_attrs["generation"] is not None
        assert "formula" in t.user_attrs and "spec" in t.user_attrs and t.user_attrs["wall_s"] >= 0
        if t.state == TrialState.PRUNED:
            by_reason.setdefault(t.user_attrs["reject_reason"], []).append(t)
        else:
            assert t.user_attrs["accuracy"] == pytest.approx(1 - t.values[0] / 2)
            assert [list(p) for p in t.user_attrs["curve"]] == t.user_attrs["curve"]
    assert all(t.params["calibration"] == "no" for t in by_reason.get("explode", []))
    assert "explode" in by_reason and "early_stop" in by_reason
    broken = optuna.create_study(directions=["minimize"] * 3)
    broken.optimize(Objective(_Broken(), knowledge=("logits",)), n_trials=2)  # does not raise
    for t in broken.trials:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["reject_reason"] == "error"
        assert t.user_attrs["reject_detail"] == "ZeroDivisionError: division by zero in a planted bug"


def test_error_detail_is_the_last_traceback_line() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        assert error_detail(exc) == "KeyError: 'missing'"


def test_known_distillers_of_generation_zero_are_never_stopped_early() -> None:
    from spaces import KNOWN_DISTILLERS, spec_to_params

    # completed references far above anything the fake reaches at steps 10 and 20 (its curve: acc/2, acc)
    study = _study_with_curves([[[10, 0.99], [20, 0.99]] for _ in range(5)])
    pruner = PercentileEarlyStop(percentile=25.0, warmup=1, refresh_s=0.0)
    objective = Objective(FakeEvaluator(), knowledge=("logits",), pruner=pruner)
    params = spec_to_params(KNOWN_DISTILLERS["kd"])
    study.enqueue_trial(params, user_attrs={"known": "kd"})
    study.enqueue_trial({**params, "weight": 5.0})  # the same ops, not a known distiller: stopped
    study.optimize(objective, n_trials=2)
    known, other = study.trials[-2:]
    assert known.state == TrialState.COMPLETE and "reject_reason" not in known.user_attrs
    assert other.state == TrialState.PRUNED and other.user_attrs["reject_reason"] == "early_stop"
