"""benchmarks.search_bench: hypervolume against box volumes, the quick quality run, storage timing."""

from __future__ import annotations

import math

import pytest

from benchmarks import search_bench


def test_hypervolume_is_the_union_of_boxes_to_the_reference() -> None:
    # reference (4, 4, 1): box of (1, 1, .5) is 3*3*.5 = 4.5; of (2, 2, 0) is 2*2*1 = 4; overlap 2*2*.5 = 2
    assert search_bench._hypervolume([[1.0, 1.0, 0.5]]) == pytest.approx(4.5)
    assert search_bench._hypervolume([[1.0, 1.0, 0.5], [2.0, 2.0, 0.0]]) == pytest.approx(6.5)
    # points beyond the reference or not finite add nothing
    outside = [[1.0, 1.0, 0.5], [5.0, 0.0, 0.0], [math.nan, 0.0, 0.0]]
    assert search_bench._hypervolume(outside) == pytest.approx(4.5)
    assert search_bench._hypervolume([]) == 0.0


def test_quick_quality_runs_both_samplers_through_the_same_search_and_resumes(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("KDZERO_CACHE", str(tmp_path / "cache"))
    q = search_bench.quality(quick=True, seeds=1, generations=2, folder=tmp_path / "q")
    assert q["seeded_known"] and q["generations"] == 2
    for name in ("nsga2", "random"):
        (run,) = q[name]
        hv, best = run["hypervolume"], run["best_scalarised"]
        assert len(hv) == len(best) == 2
        assert hv[1] >= hv[0] >= 0.0  # more trials never shrink the front
        assert best[1] <= best[0]
        # the same verified selection: a validation accuracy of the chosen distiller (or of plain CE)
        assert 0.0 <= run["verified_acc"] <= 1.0 and 0.0 <= run["verified_ce_acc"] <= 1.0
    assert q["paired"]["verified_acc"]["n"] == 1
    # a rerun resumes from the finished runs' files
    again = search_bench.quality(quick=True, seeds=1, generations=2, folder=tmp_path / "q")
    assert again["nsga2"] == q["nsga2"] and again["random"] == q["random"]
    # TPE joins the same comparison (the finished runs are reused); every pair is compared by seed
    three = search_bench.quality(
        quick=True, seeds=1, generations=2, folder=tmp_path / "q", samplers=("nsga2", "random", "tpe")
    )
    assert three["nsga2"] == q["nsga2"] and len(three["tpe"]) == 1
    assert set(three["paired_all"]) == {"nsga2-random", "nsga2-tpe", "random-tpe"}
    d = three["paired_all"]["nsga2-tpe"]["verified_acc"]
    assert d["mean"] == pytest.approx(q["nsga2"][0]["verified_acc"] - three["tpe"][0]["verified_acc"])
    with pytest.raises(ValueError, match=r"got \['nsga2', 'cmaes'\]"):
        search_bench.quality(quick=True, seeds=1, generations=2, samplers=("nsga2", "cmaes"))
    # a variant of NSGA-II's settings: the same budget, read at the same trial counts, its settings recorded
    var = "nsga2+population=3+mutation_prob=0.5"
    four = search_bench.quality(
        quick=True, seeds=1, generations=2, folder=tmp_path / "q", samplers=("nsga2", var)
    )
    assert four["variants"] == {"nsga2": {}, var: {"population": 3, "mutation_prob": 0.5}}
    (vrun,) = four[var]
    assert len(vrun["hypervolume"]) == 2 and 0.0 <= vrun["verified_acc"] <= 1.0
    import optuna

    from study.worker import stored_config

    st = optuna.load_study(study_name=f"q-{var}-0", storage=f"sqlite:///{tmp_path / 'q'}/{var}-0.db")
    search = stored_config(st).search
    assert (search.sampler, search.population, search.mutation_prob) == ("nsga2", 3, 0.5)
    assert len([t for t in st.trials if t.state.is_finished()]) >= four["budget"]
    assert set(four["paired_all"]) == {f"nsga2-{var}"}


def test_quality_variants_name_a_bad_key_or_sampler() -> None:
    assert search_bench.parse_variant("nsga2") == ("nsga2", {})
    assert search_bench.parse_variant("nsga2+crossover=blxalpha+shrink_floor=1") == (
        "nsga2",
        {"crossover": "blxalpha", "shrink_floor": 1},
    )
    with pytest.raises(ValueError, match=r"'nsga2\+lr=0.1'.*'lr=0.1'"):
        search_bench.parse_variant("nsga2+lr=0.1")
    with pytest.raises(ValueError, match=r"'nsga2\+population'"):
        search_bench.parse_variant("nsga2+population")
    with pytest.raises(ValueError, match=r"got 'cmaes'"):
        search_bench.parse_variant("cmaes+population=4")


def test_storage_time_per_trial_is_positive_and_a_fraction(tmp_path) -> None:
    s = search_bench.storage(quick=True, tmp=tmp_path, mean_trial_s=2.0, n=5)
    assert s["storage_s_per_trial"] > 0
    assert s["fraction"] == pytest.approx(s["storage_s_per_trial"] / 2.0)
