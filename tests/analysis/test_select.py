"""Selection rules on a study whose Pareto front is known by construction."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from analysis import load_study, pareto_rows, select_trial, sort_rows
from tests.analysis.helpers import OBJECTIVES, add, new_study

# (val_ce, sharpness_gap, cka_gap), accuracy. Front = {0, 1, 2}; 3 is dominated by 0, has the best accuracy.
POINTS = [((1.0, 0.5, 0.2), 0.80), ((0.7, 0.4, 0.25), 0.78), ((1.3, 0.2, 0.3), 0.90), ((1.5, 0.7, 0.4), 0.95)]


def build(storage: str | None = None, order: list[str] | None = None):
    study = new_study(storage, metric_names=order)
    for values, acc in POINTS:
        add(study, list(values), attrs={"accuracy": acc, "generation": 0}, order=order or OBJECTIVES)
    add(study, None, state=TrialState.PRUNED, attrs={"reject_reason": "nan", "reject_detail": "loss is nan"})
    add(study, None, state=TrialState.FAIL)
    return study


@pytest.mark.parametrize("order", [None, ["cka_gap", "val_ce", "sharpness_gap"]])
def test_rules_on_known_front(order):
    study = build(order=order)
    rows = pareto_rows(study, "scalar", known={})
    assert [r.number for r in rows] == [1, 2, 0]  # geometric means: cube roots of 0.07, 0.078, 0.1
    best = rows[0]
    assert (best.val_ce, best.sharpness_gap, best.cka_gap) == (0.7, 0.4, 0.25)
    assert best.scalar == pytest.approx((0.7 * 0.4 * 0.25) ** (1 / 3))
    assert best.cka == pytest.approx(0.75)
    assert [r.number for r in pareto_rows(study, "accuracy", known={})] == [2, 0, 1]
    assert select_trial(study).number == 1
    assert select_trial(study, "accuracy").number == 2  # trial 3 has higher accuracy but is dominated
    assert select_trial(study, "scalar", trial=3).number == 3  # an explicit trial wins over the rule


def test_accuracy_rule_puts_missing_accuracy_last():
    study = new_study()
    add(study, [1.0, 0.1, 0.1])  # no accuracy, best scalar
    add(study, [0.5, 0.9, 0.9], attrs={"accuracy": 0.5})
    rows = pareto_rows(study, "accuracy", known={})
    assert [r.number for r in rows] == [1, 0]
    assert sort_rows(rows, "scalar")[0].number == 0


def test_explicit_trial_errors():
    study = build()
    with pytest.raises(ValueError, match=r"trial 4 .* PRUNED.*reject_reason='nan'"):
        select_trial(study, trial=4)
    with pytest.raises(ValueError, match=r"trial 5 .* FAIL"):
        select_trial(study, trial=5)
    with pytest.raises(ValueError, match=r"trial 99 does not exist.*0\.\.5"):
        select_trial(study, trial=99)
    with pytest.raises(ValueError, match=r"unknown selection rule 'best'.*scalar.*accuracy"):
        select_trial(study, "best")


def test_no_complete_trials():
    study = new_study()
    add(study, None, state=TrialState.PRUNED, attrs={"reject_reason": "explode"})
    with pytest.raises(ValueError, match=r"no COMPLETE trials.*PRUNED': 1"):
        select_trial(study)


def test_unknown_study_lists_names(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    build(url)
    new_study(url, name="other")
    assert load_study(url, "kd").study_name == "kd"
    with pytest.raises(ValueError, match=r"no study named 'nope'.*\['kd', 'other'\]"):
        load_study(url, "nope")
    with pytest.raises(ValueError, match=r"does not exist"):
        load_study(f"sqlite:///{tmp_path / 'missing.db'}", "kd")
    assert not (tmp_path / "missing.db").exists()


def test_wrong_metric_names():
    import optuna

    study = optuna.create_study(directions=["minimize"] * 3)
    study.set_metric_names(["a", "val_ce", "b"])
    add(study, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"missing kdzero objective\(s\) \['sharpness_gap', 'cka_gap'\]"):
        select_trial(study)
