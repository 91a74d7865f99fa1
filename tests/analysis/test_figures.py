"""Figure data of the report, checked against values computed independently in the tests."""

from __future__ import annotations

import json
import statistics

import pytest
from optuna.trial import TrialState

from analysis import (
    all_rows,
    generation_stats,
    load_study,
    op_frequency,
    param_importances,
    rejection_counts,
    stored_shrinkage,
)
from analysis._figures import (
    generation_figure,
    importance_figure,
    op_frequency_figure,
    pareto_figure,
    pareto_projections_figure,
    rejection_figure,
    shrinkage_figure,
    trial_states,
)
from study.shrinkage import WEIGHTS_ATTR
from tests.analysis.helpers import add, new_study


def small_study():
    study = new_study()
    # (values, generation, params overrides); scalars (geometric means): 0.311, 0.182, 0.416, 0.1, 0.252
    spec = [
        ((0.5, 0.3, 0.2), 0, {"t1": "no", "distance": "kl"}),
        ((0.3, 0.2, 0.1), 0, {"t1": "softmax_c", "distance": "kl"}),
        ((0.9, 0.4, 0.2), 1, {"t1": "no", "distance": "l2"}),
        ((0.1, 0.1, 0.1), 1, {"t1": "norm_hw", "distance": "cosine"}),
        ((0.4, 0.4, 0.1), 1, {"t1": "softmax_c", "distance": "kl"}),
    ]
    for values, gen, over in spec:
        params = {
            "knowledge": "logits",
            "t1": "no",
            "t2": "no",
            "t3": "no",
            "distance": "kl",
            "calibration": "no",
            "weight": 1.0,
            "tau": 4.0,
            **over,
        }
        add(study, list(values), params=params, attrs={"generation": gen, "accuracy": 0.5})
    for reason in ("nan", "explode", "nan", "nan"):
        add(study, None, state=TrialState.PRUNED, attrs={"reject_reason": reason})
    add(study, None, state=TrialState.FAIL)
    return study


def test_generation_stats_values():
    rows = all_rows(small_study(), known={})
    stats = {(s.generation, s.objective): s for s in generation_stats(rows)}
    assert stats[(0, "val_ce")].best == 0.3 and stats[(0, "val_ce")].median == pytest.approx(0.4)
    assert stats[(1, "val_ce")].best == 0.1 and stats[(1, "val_ce")].median == 0.4
    assert stats[(1, "sharpness_gap")].median == 0.4 and stats[(1, "cka_gap")].best == 0.1
    assert stats[(1, "scalar")].best == pytest.approx(0.1)  # (0.1 * 0.1 * 0.1) ** (1 / 3)
    assert stats[(1, "scalar")].median == pytest.approx((0.4 * 0.4 * 0.1) ** (1 / 3))
    assert stats[(1, "scalar")].count == 3 and stats[(0, "scalar")].count == 2
    assert len(generation_figure(list(stats.values())).data) == 8  # best + median x 4 panels


def test_op_frequency_counts_top_k():
    study = small_study()
    rows = all_rows(study, known={})
    # top 3 by scalar: trials 3 (0.1), 1 (0.182), 4 (0.252)
    freq = op_frequency(study, rows, top_k=3)
    assert freq["t1"] == {"norm_hw": 1, "softmax_c": 2}
    assert freq["distance"] == {"cosine": 1, "kl": 2}
    assert freq["knowledge"] == {"logits": 3}
    assert list(freq) == ["knowledge", "t1", "t2", "t3", "distance", "calibration"]
    assert op_frequency(study, rows, top_k=100)["t1"] == {"no": 2, "norm_hw": 1, "softmax_c": 2}
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        op_frequency(study, rows, top_k=0)
    fig = op_frequency_figure(freq, 3)
    assert [list(t.x) for t in fig.data][1] == ["norm_hw", "softmax_c"]


def test_rejections_and_states():
    study = small_study()
    assert rejection_counts(study) == {"nan": 3, "explode": 1}
    states = trial_states(study)
    assert states == {"COMPLETE": 5, "PRUNED": 4, "FAIL": 1}
    fig = rejection_figure(rejection_counts(study), states)
    assert list(fig.data[0].y) == [3, 1]


def test_stored_shrinkage_reads_what_the_sampler_publishes():
    study = new_study()
    assert stored_shrinkage(study) == {}
    assert "no shrinkage weights" in shrinkage_figure({}).layout.annotations[0].text
    study.set_user_attr(
        WEIGHTS_ATTR,
        {"t1": {json.dumps("exp"): 0.25, json.dumps("no"): 1.0}, "tau": {json.dumps(4.0): 0.5}},
    )
    assert stored_shrinkage(study) == {"t1": {"exp": 0.25, "no": 1.0}, "tau": {"4.0": 0.5}}
    study.set_user_attr(WEIGHTS_ATTR, json.dumps({"distance": {"kl": 0.5}}))  # its JSON text also reads
    fig = shrinkage_figure(stored_shrinkage(study))
    assert list(fig.data[0].x) == ["kl"] and fig.data[0].z[0][0] == 0.5
    study.set_user_attr(WEIGHTS_ATTR, json.dumps([1, 2]))
    with pytest.raises(ValueError, match="must map gene"):
        stored_shrinkage(study)


def test_importances_find_the_gene_each_objective_depends_on(study_url):
    study = load_study(*study_url)
    imps = param_importances(study, n_trees=8)
    assert set(imps) == {"val_ce", "sharpness_gap", "cka_gap"}
    top = {name: max(imp, key=imp.get) for name, imp in imps.items()}
    assert top == {"val_ce": "tau", "sharpness_gap": "distance", "cka_gap": "knowledge"}
    for imp in imps.values():
        assert sum(imp.values()) == pytest.approx(1.0)
    assert len(importance_figure(imps).data) == 3


def test_importances_with_too_few_trials():
    study = new_study()
    add(study, [1.0, 1.0, 1.0])
    imps = param_importances(study)
    assert imps == {n: "too few complete trials (1 < 4)" for n in ("val_ce", "sharpness_gap", "cka_gap")}
    fig = importance_figure(imps)
    assert len(fig.data) == 0 and len(fig.layout.annotations) == 6  # 3 titles + 3 notes


def test_pareto_figures_mark_front_and_known(study_url):
    study = load_study(*study_url)
    rows = all_rows(study)
    front = {t.number for t in study.best_trials}
    fig3 = pareto_figure(rows, front)
    names = [t.name for t in fig3.data]
    assert names == ["trials", "Pareto front", "known distillers"]
    known = fig3.data[2]
    assert sorted(known.text) == ["at", "cwd", "dist", "fitnets", "kd", "pkd", "wsld"]
    n_front_unknown = len([r for r in rows if r.number in front and not r.known])
    assert len(fig3.data[1].x) == n_front_unknown
    assert sum(len(t.x) for t in fig3.data) == len(rows)
    fig2 = pareto_projections_figure(rows, front)
    assert len(fig2.data) == 9
    by_number = {r.number: r for r in rows}
    kd = next(r for r in by_number.values() if r.known == "kd")
    i = list(fig2.data[2].hovertext).index(next(h for h in fig2.data[2].hovertext if "[kd]" in h))
    assert (fig2.data[2].x[i], fig2.data[2].y[i]) == (kd.val_ce, kd.sharpness_gap)
    known_cka = statistics.fmean(r.cka_gap for r in rows if r.known)
    assert statistics.fmean(fig2.data[8].y) == pytest.approx(known_cka)
