"""Table-3 benchmark: statistics against formulas written here, and a real quick run on digits."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from benchmarks import table, table_methods, table_report
from benchmarks.table_methods import handcrafted_plan, knowledge_kinds
from benchmarks.table_report import replace_readme_section
from benchmarks.table_stats import (
    METHODS,
    PairedDiff,
    best_handcrafted,
    check_targets,
    paired_difference,
    prefix_rank_correlations,
    rank_correlations,
    summarise_setting,
)
from spaces import DistillerSpec
from trainers.config import ExperimentConfig


def _row(method: str, seed: int, acc: float | None, val: float = 0.5) -> dict:
    return {
        "regime": "full",
        "student": "cnn_tiny",
        "teacher": "t",
        "method": method,
        "seed": seed,
        "test_acc": acc,
        "val_acc": None if acc is None else val,
        "epochs": 1,
        "wall_s": 1.0 + seed,
        "spec": None,
    }


ACC = {
    "ce": [0.80, 0.82, 0.79, 0.81, 0.80],
    "kd": [0.83, 0.84, 0.80, 0.83, 0.82],
    "dist": [0.81, 0.80, 0.82, 0.79, 0.80],
    "kd-zero": [0.86, 0.85, 0.84, 0.87, None],  # seed 4 diverged
}


def _rows() -> list[dict]:
    return [_row(m, s, a) for m, accs in ACC.items() for s, a in enumerate(accs)]


def _expected(a: list, b: list) -> tuple[float, float, int]:
    d = np.array([x - y for x, y in zip(a, b) if x is not None and y is not None])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), len(d)


def test_paired_difference_matches_the_formula() -> None:
    rows = _rows()
    for m, ref in (("kd", "ce"), ("kd-zero", "ce"), ("kd-zero", "kd"), ("dist", "kd")):
        mean, se, n = _expected(ACC[m], ACC[ref])
        got = paired_difference(rows, m, ref)
        assert got.n == n and got.mean == pytest.approx(mean) and got.se == pytest.approx(se)
    assert paired_difference(rows, "kd-zero", "ce").n == 4  # the diverged seed is left out
    # Only common seeds pair up: drop seed 0 of ce.
    fewer = [r for r in rows if not (r["method"] == "ce" and r["seed"] == 0)]
    mean, se, n = _expected(ACC["kd"][1:], ACC["ce"][1:])
    got = paired_difference(fewer, "kd", "ce")
    assert (got.n, got.mean, got.se) == (n, pytest.approx(mean), pytest.approx(se))
    one = paired_difference([_row("kd", 0, 0.9), _row("ce", 0, 0.7)], "kd", "ce")
    assert one.n == 1 and one.mean == pytest.approx(0.2) and math.isnan(one.se)
    assert paired_difference(rows, "at", "ce").n == 0
    with pytest.raises(ValueError, match="seed 0 twice"):
        paired_difference([*rows, _row("kd", 0, 0.5)], "kd", "ce")


def test_summarise_setting_means_stds_and_best_handcrafted() -> None:
    rows = _rows()
    assert best_handcrafted(rows) == "kd"  # mean 0.824 > dist 0.804; ce and kd-zero are not handcrafted
    sums = {s.method: s for s in summarise_setting(rows)}
    assert list(sums) == [m for m in METHODS if m in ACC]
    for m, accs in ACC.items():
        ok = [a for a in accs if a is not None]
        assert sums[m].n == len(ok) and sums[m].failed == len(accs) - len(ok)
        assert sums[m].test_mean == pytest.approx(np.mean(ok))
        assert sums[m].test_std == pytest.approx(np.std(ok, ddof=1))
        assert sums[m].wall_mean == pytest.approx(np.mean([1.0 + s for s in range(len(accs))]))
    mean, se, n = _expected(ACC["kd-zero"], ACC["kd"])
    assert sums["kd-zero"].vs_best == PairedDiff(pytest.approx(mean), pytest.approx(se), n)
    assert sums["kd"].vs_best.n == 0 and sums["ce"].vs_ce.n == 0


def test_rank_correlations_match_scipy_with_lower_is_better_negated() -> None:
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.5, 0.9, size=12)
    fitness = 2.0 - acc + rng.normal(0, 0.05, size=12)  # lower fitness ~ higher accuracy
    proxy_acc = acc + rng.normal(0, 0.1, size=12)
    out = rank_correlations({"fitness": fitness.tolist(), "proxy_acc": proxy_acc.tolist()}, acc.tolist())
    kt, sr = stats.kendalltau(-fitness, acc), stats.spearmanr(-fitness, acc)
    assert out["fitness"]["negated"] and out["fitness"]["n"] == 12
    assert out["fitness"]["kendall_tau"] == pytest.approx(kt.statistic)
    assert out["fitness"]["kendall_p"] == pytest.approx(kt.pvalue)
    assert out["fitness"]["spearman_rho"] == pytest.approx(sr.statistic)
    assert out["fitness"]["kendall_tau"] > 0.5
    assert out["proxy_acc"]["kendall_tau"] == pytest.approx(stats.kendalltau(proxy_acc, acc).statistic)
    assert not out["proxy_acc"]["negated"]
    # Hand-checkable: a perfectly reversed lower-is-better proxy has tau = rho = 1.
    perfect = rank_correlations({"ce": [3.0, 2.0, 1.0, 0.0]}, [0.1, 0.2, 0.3, 0.4])["ce"]
    assert perfect["kendall_tau"] == pytest.approx(1.0) and perfect["spearman_rho"] == pytest.approx(1.0)
    # Non-finite pairs are dropped; too few or constant values give nan.
    dropped = rank_correlations({"ce": [1.0, math.nan, 0.5, 0.2]}, [0.1, 0.9, 0.2, 0.3])["ce"]
    assert dropped["n"] == 3 and dropped["kendall_tau"] == pytest.approx(1.0)
    assert math.isnan(rank_correlations({"ce": [1.0, 1.0, 1.0]}, [0.1, 0.2, 0.3])["ce"]["kendall_tau"])
    with pytest.raises(ValueError, match="has 2 values but accuracy has 3"):
        rank_correlations({"ce": [1.0, 2.0]}, [0.1, 0.2, 0.3])


def test_prefix_rank_correlations_read_the_curves_at_each_fraction_per_distiller() -> None:
    # 4 distillers x 2 seeds, 4 epochs; per distiller the curves of its seeds (epoch 1..4) and test accs
    curves = {
        None: ([[0.50, 0.60, 0.70, 0.80], [0.52, 0.62, 0.72, 0.82]], [0.80, 0.82]),
        "a": ([[0.70, 0.50, 0.71, 0.81], [0.72, 0.52, 0.73, 0.83]], [0.84, 0.86]),
        "b": ([[0.60, 0.70, 0.60, 0.83], [0.60, 0.70, 0.62, 0.85]], [0.88, 0.90]),
        "c": ([[0.40, 0.80, 0.80, 0.86], [0.40, 0.80, 0.82, 0.88]], [0.92, 0.94]),
    }
    rows = []
    for name, (cs, tests) in curves.items():
        for seed, (c, t) in enumerate(zip(cs, tests, strict=True)):
            spec = None if name is None else {"d": name}
            rows.append({"method": "m", "seed": seed, "spec": spec, "test_acc": t, "epoch_val_acc": c})
    copy = {**rows[2], "method": "other", "same_training_as": "m"}  # distiller "a" seed 0, a copied row
    extra = [
        copy,
        {"method": "ce-2x", "seed": 0, "spec": None, "test_acc": 0.99, "epoch_val_acc": [0.9] * 8},
        {"method": "x", "seed": 0, "spec": {"d": "e"}, "test_acc": None, "epoch_val_acc": [0.9] * 4},
        {"method": "y", "seed": 0, "spec": {"d": "f"}, "test_acc": 0.5},  # a row from before curves
    ]
    out = prefix_rank_correlations(rows + extra, 4)
    assert out["n"] == 4 and out["seeds"] == 8
    test_mean = [0.81, 0.85, 0.89, 0.93]  # CE < a < b < c

    def tau(xs: list[float], ys: list[float]) -> float:  # tau-a, no ties here: (C - D) / pairs
        pairs = [(i, j) for i in range(len(xs)) for j in range(i + 1, len(xs))]
        return sum(1 if (xs[i] - xs[j]) * (ys[i] - ys[j]) > 0 else -1 for i, j in pairs) / len(pairs)

    # epoch read at each fraction of 4 epochs: ceil(f * 4) = 1, 1, 1, 2, 3, 4
    for name, epoch in {"5%": 1, "10%": 1, "25%": 1, "50%": 2, "75%": 3, "100%": 4}.items():
        val = [sum(c[epoch - 1] for c in cs) / 2 for cs, _ in curves.values()]
        assert out["correlations"][name]["kendall_tau"] == pytest.approx(tau(val, test_mean)), name
    assert out["correlations"]["100%"]["kendall_tau"] == pytest.approx(1.0)  # the last epoch ranks right
    # epoch 1, means CE 0.51, a 0.71, b 0.60, c 0.40: concordant (CE, a), (CE, b); the other 4 pairs not
    assert out["correlations"]["25%"]["kendall_tau"] == pytest.approx((2 - 4) / 6)
    lines = table_report.prefix_lines(out)
    assert "4 distillers (8 runs)" in lines[0] and "100% 1.000" in lines[0] and "25% -0.333" in lines[0]
    assert table_report.prefix_lines(prefix_rank_correlations(rows[:4], 4)) == []  # 2 distillers: nothing


def test_current_rows_keep_the_plans_specs_schedule_and_teacher_only() -> None:
    from benchmarks.table_runs import current_rows
    from spaces import KNOWN_DISTILLERS

    kd = KNOWN_DISTILLERS["kd"]
    old = dataclasses.replace(kd, weight=2.0)  # kd-zero's choice before the verification changed it
    rows = [_row("ce", s, 0.8) for s in range(2)]
    rows += [{**_row("kd-zero", s, 0.7), "spec": old.to_dict()} for s in range(2)]
    rows += [{**_row("kd-zero", s, 0.9), "spec": json.loads(kd.to_json())} for s in range(2)]
    rows += [{**_row("ce", 0, 0.6), "epochs": 3}]  # another --epochs
    rows += [{**_row("ce-2x", 0, 0.81), "epochs": 2}, {**_row("ce-2x", 1, 0.5), "epochs": 4}]
    rows += [{**_row("kd", 0, 0.8), "regime": "10pct"}, {**_row("extra", 0, 0.75), "spec": old.to_dict()}]
    rows = [r if r["spec"] is None else {**r, "teacher_id": "T"} for r in rows]
    # the same distiller trained from another teacher (and a row from before rows named their teacher)
    rows += [{**_row("kd-zero", 0, 0.1), "spec": json.loads(kd.to_json()), "teacher_id": "other"}]
    rows += [{**_row("kd-zero", 1, 0.2), "spec": json.loads(kd.to_json())}]
    got = current_rows(rows, "full", "cnn_tiny", {"ce": None, "kd-zero": kd}, epochs=1, teacher_id="T")
    assert [(r["method"], r["seed"], r["test_acc"]) for r in got] == [
        ("ce", 0, 0.8),
        ("ce", 1, 0.8),
        ("kd-zero", 0, 0.9),
        ("kd-zero", 1, 0.9),
        ("ce-2x", 0, 0.81),
        ("extra", 0, 0.75),
    ]
    # the statistics of the current rows see one kd-zero row per seed (mixing both specs would raise)
    by_method = {s.method: (s.n, s.test_mean) for s in summarise_setting(got)}
    assert by_method["kd-zero"] == (2, pytest.approx(0.9))


def test_targets_use_two_standard_errors() -> None:
    ten = [{**r, "regime": "10pct"} for r in _rows()]
    tuned = [0.83, 0.83, 0.81, 0.82, 0.85]
    ten += [{**_row("kd-tuned", s, a), "regime": "10pct"} for s, a in enumerate(tuned)]
    ten += [{**_row("rand-kd", s, 0.9), "regime": "10pct"} for s in range(5)]
    ten += [{**_row("ce-2x", s, a + 0.001), "regime": "10pct"} for s, a in enumerate(ACC["ce"])]
    mlp = [{**_row("kd", s, a), "student": "mlp"} for s, a in enumerate([0.7, 0.71, 0.72])]
    mlp += [{**_row("kd-zero", s, a), "student": "mlp"} for s, a in enumerate([0.69, 0.70, 0.71])]
    corr = {("10pct", "cnn_tiny"): {"fitness": {"kendall_tau": 0.6}, "verify_acc": {"kendall_tau": 0.55}}}
    known = {"kd": 0.58, "dist": 0.5}
    checks = {("10pct", "cnn_tiny"): {"ce": 0.6, "known": known, "trains": ["kd", "dist"]}}
    costs = {("10pct", "cnn_tiny"): {"candidate_units": 1 / 50}, ("full", "mlp"): {"candidate_units": 0.1}}
    got = check_targets(
        {("10pct", "cnn_tiny"): ten, ("full", "mlp"): mlp}, corr, proxy_check=checks, costs=costs
    )
    by = {(t["target"], t["setting"]): t["met"] for t in got}
    # best rival by mean: kd-tuned 0.828 > kd 0.824; kd-zero - kd-tuned over seeds 0-3: (.03,.01,.03,.05)
    assert by[("kd-zero > best rival (kd-tuned) by > 2 SE", "10pct/cnn_tiny")] is True
    assert by[("kd-zero not worse than best rival (kd-tuned) by > 2 SE", "10pct/cnn_tiny")] is True
    # vs rand-kd every seed loses by 0.03-0.06: worse by far more than 2 SE
    assert by[("kd-zero not worse than rand-kd (by > 2 SE)", "10pct/cnn_tiny")] is False
    assert by[("CE converged: CE(2x epochs) - CE < 0.3 pt", "10pct/cnn_tiny")] is True  # +0.1 pt
    # the MLP setting: kd-zero - kd = -0.01 on every seed (se 0): worse by more than 2 SE, and only the
    # "not worse" target applies outside 10pct/cnn_tiny
    assert by[("kd-zero not worse than best rival (kd) by > 2 SE", "full/mlp")] is False
    assert ("kd-zero > best rival (kd) by > 2 SE", "full/mlp") not in by
    assert by[("Kendall tau(-fitness, test acc) >= 0.6", "10pct/cnn_tiny")] is True
    assert by[("Kendall tau(verified acc, test acc) >= 0.6", "10pct/cnn_tiny")] is False
    assert by[("proxy acc of kd >= CE's - 5 pt", "10pct/cnn_tiny")] is True  # 58 >= 60 - 5
    assert by[("proxy acc of dist >= CE's - 5 pt", "10pct/cnn_tiny")] is False  # 50 < 55
    assert by[("one search candidate <= 1/40 of a full training", "10pct/cnn_tiny")] is True
    assert by[("one search candidate <= 1/40 of a full training", "full/mlp")] is False
    single = [_row("kd", 0, 0.8), _row("kd-zero", 0, 0.9)]
    got = check_targets({("full", "cnn_tiny"): single}, {})
    assert got[0]["met"] is False  # one seed: no standard error, nothing shown


def test_handcrafted_plan_skips_feature_methods_without_a_feature_map() -> None:
    teacher = {"logits": (10,), "embedding": (64,), "feature": (64, 7, 7)}
    mlp = {"logits": (10,), "embedding": (128,), "feature": (128,)}
    specs, skipped = handcrafted_plan(("ce", "kd", "dist", "at", "fitnets"), mlp, teacher)
    assert list(specs) == ["ce", "kd", "dist"] and specs["ce"] is None
    assert set(skipped) == {"at", "fitnets"} and "(128,)" in skipped["at"]
    cnn = {"logits": (10,), "embedding": (48,), "feature": (48, 7, 7)}
    assert list(handcrafted_plan(("ce", "at", "fitnets"), cnn, teacher)[0]) == ["ce", "at", "fitnets"]
    assert knowledge_kinds(mlp) == ("embedding", "logits")
    assert knowledge_kinds(cnn) == ("embedding", "feature", "logits")
    with pytest.raises(ValueError, match="unknown handcrafted method 'nope'"):
        handcrafted_plan(("nope",), cnn, teacher)


def test_readme_section_is_replaced_between_markers(tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:start -->\nold\n<!-- table:end -->\noutro\n")
    replace_readme_section(readme, "| new |\n")
    assert readme.read_text() == "intro\n<!-- table:start -->\n| new |\n<!-- table:end -->\noutro\n"
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="table:start"):
        replace_readme_section(tmp_path / "bare.md", "x")


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"unknown regime\(s\) \['half'\]"):
        table.parse_args(["--regimes", "half"])
    with pytest.raises(ValueError, match="--budget must be >= 1, got 0"):
        table.parse_args(["--budget", "0"])
    with pytest.raises(ValueError, match=r"--seed-weight-steps '-1,x'"):
        table.parse_args(["--seed-weight-steps=-1,x"])
    with pytest.raises(ValueError, match=r"--seed-weight-steps '-1,0'.*non-zero"):
        table.parse_args(["--seed-weight-steps=-1,0"])
    with pytest.raises(ValueError, match=r"--seed-weight-steps '-1,-1'.*distinct"):
        table.parse_args(["--seed-weight-steps=-1,-1"])


def test_searches_with_loss_scale_variants_have_study_files_of_their_own(tmp_path) -> None:
    assert table.parse_args([]).seed_weight_steps == ()
    assert table.parse_args(["--seed-weight-steps=-1,-2"]).seed_weight_steps == (-1, -2)
    stem = tmp_path / "run-10pct-mlp"
    assert table.study_path(stem, "kd-zero") == tmp_path / "run-10pct-mlp-kd-zero.db"
    assert table.study_path(stem, "kd-zero", (-1, -2)) == tmp_path / "run-10pct-mlp-kd-zero-wsteps-1-2.db"
    assert table.study_path(stem, "rand-kd", (1,)) == tmp_path / "run-10pct-mlp-rand-kd-wsteps1.db"
    assert table.study_path(stem, "kd-tuned", (-1, -2)) == tmp_path / "run-10pct-mlp-kd-tuned.db"
    # the setting's teacher is read from the files of the searches the run makes
    import optuna

    from study.worker import TEACHER_ATTR

    url = f"sqlite:///{table.study_path(stem, 'kd-zero', (-1, -2))}"
    optuna.create_study(study_name="kd-zero", storage=url).set_user_attr(TEACHER_ATTR, {"identity": "abc"})
    assert table.recorded_teacher(stem) is None
    assert table.recorded_teacher(stem, (-1, -2)) == {"identity": "abc"}
    # and the report's header names the searches' settings
    line = table_report.search_line(
        {"population": 8, "seed_weight_steps": [-1, -2], "verify_top": 5, "verify_seeds": 4,
         "verify_fraction": 0.25}
    )  # fmt: skip
    assert line == [
        "- searches (rand-kd, kd-zero): population 8; generation 0: the known distillers and their "
        "loss-scale variants (weight steps -1, -2); verification: the 5 best distinct candidates, the best "
        "known distiller and CE, each trained for 25% of the schedule on 4 seed(s)"
    ]
    assert table_report.search_line(None) == []


def test_quick_run_on_digits_writes_every_method_and_resumes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KDZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["--quick", "--out", str(out), "--dataset", "digits", "--teacher", "cnn_tiny",
            "--students", "cnn_tiny", "--seeds", "2", "--epochs", "1", "--budget", "3", "--fidelity", "9",
            "--cache-dir", str(tmp_path / "cache"), "--seed-weight-steps=-1"]  # fmt: skip
    assert table.main([*argv, "--jobs", "2", "--threads", "1"]) == 0  # trainings in 2 spawned processes
    rows = json.loads((out / "quick-digits.json").read_text())
    keys = [(r["regime"], r["method"], r["seed"], json.dumps(r["spec"], sort_keys=True)) for r in rows]
    assert len(keys) == len(set(keys))  # each training once, though submitted by table and fidelity set
    for r in rows:
        assert set(table.ROW_KEYS) <= set(r), r
        assert r["teacher"] == "cnn_tiny" and r["epochs"] == (2 if r["method"] == "ce-2x" else 1)
        assert r["test_acc"] is None or 0.0 <= r["test_acc"] <= 1.0
    for regime in table.REGIMES:
        mine = [r for r in rows if r["regime"] == regime and r["method"] != "extra"]
        assert {r["method"] for r in mine} == {*METHODS, "ce-2x"}
        assert sorted(r["seed"] for r in mine if r["method"] == "kd-zero") == [0, 1]
        assert {r["epochs"] for r in mine if r["method"] == "ce-2x"} == {2}
    summary = json.loads((out / "quick-digits.summary.json").read_text())
    setting = summary["settings"]["full/cnn_tiny"]
    kd = next(s for s in setting["summary"] if s["method"] == "kd")
    ok = [r for r in rows if r["regime"] == "full" and r["method"] != "extra" and r["test_acc"] is not None]
    acc = {(r["method"], r["seed"]): r["test_acc"] for r in ok}
    d = [acc[("kd", s)] - acc[("ce", s)] for s in (0, 1) if ("kd", s) in acc and ("ce", s) in acc]
    assert kd["vs_ce"]["n"] == len(d)
    if d:
        assert kd["vs_ce"]["mean"] == pytest.approx(float(np.mean(d)))
    fid = setting["fidelity"]
    # ce, 4 handcrafted, 2 tuned (twins of known points are counted once), the searches' choices, extras
    assert len(fid["points"]) >= 6 and set(fid["correlations"]) == set(table.PROXY_KEYS)
    assert all("verify_acc" in p for p in fid["points"])
    sources = {p["source"] for p in fid["points"]}
    assert "known" in sources
    formulas = {p["formula"] for p in fid["points"]}  # each search's choice, listed once (it may be a twin)
    assert setting["formulas"]["kd-zero"] in formulas and setting["formulas"]["rand-kd"] in formulas
    cost = setting["search_cost"]
    assert cost["naive_s"] == pytest.approx(3 * cost["distill_run_s"])
    assert cost["search_units"] == pytest.approx(cost["search_s"] / cost["ce_run_s"])
    assert cost["candidate_units"] == pytest.approx(cost["search_s"] / 3 / cost["distill_run_s"])
    assert cost["verify_s"] > 0  # the kd-zero search's verification ran
    # the candidates by outcome add up to the budget and to the mean candidate cost
    outcomes = cost["outcomes"]
    assert set(outcomes) == set(table_methods.CANDIDATE_OUTCOMES)
    assert sum(v["n"] for v in outcomes.values()) == 3
    mean = sum(v["n"] * v["mean_units"] for v in outcomes.values()) / 3
    assert mean == pytest.approx(cost["candidate_units"])
    # without the twins: the trained candidates' count-weighted mean (the first trial is never a twin)
    trained = [v for k, v in outcomes.items() if k != "twin"]
    n_trained = sum(v["n"] for v in trained)
    assert n_trained >= 1
    want = sum(v["n"] * v["mean_units"] for v in trained) / n_trained
    assert cost["candidate_units_trained"] == pytest.approx(want)
    both = cost["search_s"] + cost["verify_s"]
    assert cost["search_verify_ce_units"] == pytest.approx(both / cost["ce_run_s"])
    assert "kd-zero candidates by outcome" in (out / "quick-digits.md").read_text()
    # kd-zero and rand-kd train their verified winners: the first entry of their study's kdzero_verified
    import optuna

    from study.verify import verified

    for method in ("kd-zero", "rand-kd"):
        # searched with loss-scale variants in generation 0: a study file of their own, named after them
        assert not (out / f"quick-digits-full-cnn_tiny-{method}.db").exists()
        url = f"sqlite:///{out}/quick-digits-full-cnn_tiny-{method}-wsteps-1.db"
        st = optuna.load_study(study_name=method, storage=url)
        assert json.loads(st.user_attrs["kdzero_config"])["search"]["seed_weight_steps"] == [-1]
        assert any(t.user_attrs.get("weight_step") == -1 for t in st.get_trials(deepcopy=False))
        win = verified(st)[0]
        mine = [r for r in rows if r["regime"] == "full" and r["method"] == method]
        assert all(r["spec"] == (json.loads(win["spec"]) if win["spec"] else None) for r in mine)
    # kd-zero (searched after rand-kd) reads the verification runs rand-kd made of the same distillers
    # (same canonical form, seed, fraction, experiment, teacher) instead of training them again
    from study.verify import load_side_study

    def verify_jobs(method: str) -> list[optuna.trial.FrozenTrial]:
        url = f"sqlite:///{out}/quick-digits-full-cnn_tiny-{method}-wsteps-1.db"
        side = load_side_study(optuna.load_study(study_name=method, storage=url))
        return [t for t in side.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs["role"] == "verify"]  # fmt: skip

    def run_key(t: optuna.trial.FrozenTrial) -> tuple[str, int]:
        spec = t.user_attrs["spec"]
        key = DistillerSpec.from_json(spec).canonical_key() if spec else "ce"
        return key, t.user_attrs["seed"]

    made = {run_key(t): t for t in verify_jobs("rand-kd")}
    assert not any("same_training_as" in t.user_attrs for t in made.values())
    shared = [t for t in verify_jobs("kd-zero") if run_key(t) in made]
    assert any(t.user_attrs["formula"] == "ce" for t in shared)  # the CE reference is in every plan
    for t in shared:
        source = made[run_key(t)]
        assert (
            t.user_attrs["same_training_as"] == f"quick-digits-full-cnn_tiny-rand-kd-wsteps-1:rand-kd "
            f"verification job {source.user_attrs['job']}"
        )
        assert t.value == source.value and t.user_attrs["cpu_s"] == source.user_attrs["cpu_s"]
    for t in verify_jobs("kd-zero"):
        assert ("same_training_as" in t.user_attrs) == (run_key(t) in made)
    assert setting["proxy_check"]["ce"] is not None
    # every row recorded its curve: the validation along the full runs ranks the distillers at each fraction
    prefix = setting["prefix_fidelity"]
    assert prefix["n"] >= 3 and set(prefix["correlations"]) == {"5%", "10%", "25%", "50%", "75%", "100%"}
    md = (out / "quick-digits.md").read_text()
    assert "Validation accuracy along the full runs" in md
    assert "#### Targets" in md and "kd-zero" in md and "Kendall tau" in md and "torch" in md
    html = (out / "quick-digits-fidelity.html").read_text()
    assert "plotly" in html.lower() and len(html) > 100_000  # plotly.js is embedded (offline)
    assert (out / "quick-digits-full-cnn_tiny-kd-zero-wsteps-1.db").exists()
    assert (out / "quick-digits-full-cnn_tiny-kd-tuned.db").exists()  # a tuned rival has no generation 0
    assert summary["meta"]["search"]["seed_weight_steps"] == [-1]
    assert "loss-scale variants (weight steps -1)" in md
    kept = list((out / "quick-digits-teacher").glob("*.pt"))  # the run's teacher, archived beside its rows
    assert len(kept) == 1 and kept[0].with_suffix(".json").is_file()
    import torch

    from trainers.teacher import state_dict_hash

    ident = state_dict_hash(torch.load(kept[0], map_location="cpu", weights_only=True))
    assert summary["meta"]["teacher_identity"] == [ident] and setting["teacher_identity"] == ident
    assert ident in md
    for regime in table.REGIMES:  # the fidelity set's measurements name the teacher that made them
        cache = json.loads((out / f"quick-digits-{regime}-cnn_tiny-fidelity-cache.json").read_text())
        assert cache["teacher_id"] == ident
    # benchmarks.search_reach continues such a search from its file, with its generation 0 (a copy: the
    # table's study stays as it is)
    from benchmarks import search_reach

    source = out / "quick-digits-full-cnn_tiny-kd-zero-wsteps-1.db"
    n_before = len(optuna.load_study(study_name="kd-zero", storage=f"sqlite:///{source}").trials)
    reach = ["--source", "quick-digits", "--out", str(out), "--regime", "full", "--budgets", "4",
             "--seeds", "1"]  # fmt: skip
    assert search_reach.main(reach) == 0
    url = f"sqlite:///{out}/quick-digits-reach-full-cnn_tiny-kd-zero.db"
    copied = optuna.load_study(study_name="kd-zero", storage=url)
    assert json.loads(copied.user_attrs["kdzero_config"])["search"]["seed_weight_steps"] == [-1]
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(copied.get_trials(states=done)) == 4
    assert len(optuna.load_study(study_name="kd-zero", storage=f"sqlite:///{source}").trials) == n_before
    # Resume (in-process trainings): nothing is trained again, not even the fidelity set's proxy and
    # verification runs, which the first run saved
    for regime in table.REGIMES:
        assert (out / f"quick-digits-{regime}-cnn_tiny-fidelity-cache.json").exists()

    def trained_again(*args, **kwargs):
        raise AssertionError("a measurement was repeated on --resume")

    monkeypatch.setattr(table_methods, "evaluate_fitness", trained_again)
    monkeypatch.setattr(table_methods, "verify_accuracy", trained_again)
    # A row of an earlier selection (another spec, same seed) stays in the file as history; neither the
    # statistics nor the targets read it
    first = next(r for r in rows if r["method"] == "rand-kd")
    stale = {**first, "spec": {"old": "selection"}, "test_acc": 0.0}
    (out / "quick-digits.json").write_text(json.dumps([*rows, stale]))
    assert table.main([*argv, "--resume"]) == 0
    assert json.loads((out / "quick-digits.json").read_text()) == [*rows, stale]
    again_summary = json.loads((out / "quick-digits.summary.json").read_text())
    again = again_summary["settings"]["full/cnn_tiny"]
    assert again["fidelity"] == fid
    assert again["summary"] == setting["summary"]
    assert again_summary["targets"] == summary["targets"]

    # The teacher is lost (a new machine) and trained again to other weights, archived as the run's teacher:
    # the finished settings were made with the first one, so they are frozen: read and reported with their
    # own teacher, nothing trained, searched or measured again
    from benchmarks import table_runs

    cached = Path(next(iter((tmp_path / "cache" / "teachers").glob("*.pt"))))
    state = torch.load(cached, map_location="cpu", weights_only=True)
    other = {k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(other, cached)
    torch.save(other, kept[0])
    monkeypatch.setattr(table_runs, "run_training", trained_again)
    monkeypatch.setattr(table_methods, "kdzero_search", trained_again)
    monkeypatch.setattr(table_methods, "tune_known", trained_again)
    assert table.main([*argv, "--resume"]) == 0
    frozen = json.loads((out / "quick-digits.summary.json").read_text())
    for key, s in frozen["settings"].items():
        assert s["frozen"] is True and s["teacher_identity"] == ident, key
        assert s["summary"] == again_summary["settings"][key]["summary"]
    assert frozen["targets"] == summary["targets"]
    # A missing row of a frozen setting cannot be trained with the other teacher: refused, naming it
    kept_rows = [r for r in rows if not (r["regime"] == "10pct" and r["method"] == "kd" and r["seed"] == 1)]
    (out / "quick-digits.json").write_text(json.dumps(kept_rows))
    with pytest.raises(table.TeacherArchiveError, match=f"made with teacher {ident}.*kd seed 1 row"):
        table.main([*argv, "--resume"])


def test_a_fidelity_cache_measured_with_another_teacher_is_not_read(tmp_path) -> None:
    from benchmarks.table_runs import load_fit_cache

    values = {"ce": 1.0, "sharpness_gap": 0.5, "cka_gap": 0.2, "proxy_acc": 0.8, "verify_acc": 0.85}
    path = tmp_path / "fidelity-cache.json"
    path.write_text(json.dumps({"teacher_id": "A", "ce": values}))
    cache: dict = {}
    assert load_fit_cache(path, cache, "A") and cache["ce"]["verify_acc"] == 0.85
    assert "teacher_id" not in cache
    other: dict = {}
    assert not load_fit_cache(path, other, "B") and other == {}  # measured again with teacher B
    path.write_text(json.dumps({"ce": values}))  # a file from before the cache named its teacher
    legacy: dict = {}
    assert load_fit_cache(path, legacy, "B") and legacy["ce"]["proxy_acc"] == 0.8
    assert not load_fit_cache(tmp_path / "missing.json", {}, "A")


def test_a_runs_teacher_is_archived_restored_on_a_new_machine_and_refused_when_other(
    tmp_path, monkeypatch
) -> None:
    import torch

    import trainers.teacher as teacher_mod

    args = table.parse_args(["--quick", "--dataset", "digits", "--teacher", "cnn_tiny"])
    exp = table.build_experiment(args, "10pct", "cnn_tiny")
    archive = tmp_path / "teachers"
    # Machine 1: an empty cache, so the teacher is trained, then archived beside the rows
    first = dataclasses.replace(exp, cache_dir=str(tmp_path / "cache1"))
    _, meta, _, _ = table.load_setting(first, "cpu", archive)
    assert meta["cached"] is False
    kept = archive / Path(meta["path"]).name
    state = torch.load(kept, map_location="cpu", weights_only=True)
    assert teacher_mod.state_dict_hash(state) == meta["identity"]
    assert json.loads(kept.with_suffix(".json").read_text())["hash"] == meta["hash"]

    # Machine 2: another empty cache; the archived teacher is restored and loaded, never trained again
    def trained(*a, **k):
        raise AssertionError("the archived teacher was trained again")

    monkeypatch.setattr(teacher_mod, "train_with_loop", trained)
    second = dataclasses.replace(exp, cache_dir=str(tmp_path / "cache2"))
    _, again, _, _ = table.load_setting(second, "cpu", archive)
    assert again["cached"] is True and again["identity"] == meta["identity"]
    assert Path(again["path"]).parent == tmp_path / "cache2" / "teachers"
    # Machine 3: its cache holds a teacher with the same key but other weights: refused, both named
    third = dataclasses.replace(exp, cache_dir=str(tmp_path / "cache3"))
    other = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}
    bad = tmp_path / "cache3" / "teachers" / kept.name
    bad.parent.mkdir(parents=True)
    torch.save(other, bad)
    bad.with_suffix(".json").write_text(kept.with_suffix(".json").read_text())
    with pytest.raises(table.TeacherArchiveError) as err:
        table.load_setting(third, "cpu", archive)
    assert teacher_mod.state_dict_hash(other) in str(err.value) and meta["identity"] in str(err.value)
    assert str(bad) in str(err.value)
    # Without an archive (archive=None) the cache alone decides, as before
    _, plain, _, _ = table.load_setting(third, "cpu", None)
    assert plain["identity"] == teacher_mod.state_dict_hash(other)


def test_the_searches_run_with_the_tables_thread_count(monkeypatch, tmp_path) -> None:
    """Proxy trials use the thread count of the full trainings (same float order, no oversubscription)."""

    seen = {}

    def fake_run_search(cfg, **kwargs):
        seen["threads"] = cfg.run.threads
        seen["workers"] = cfg.run.workers
        return None

    monkeypatch.setattr(table_methods, "run_search", fake_run_search)
    table_methods.kdzero_search(
        ExperimentConfig(),
        None,
        4,
        tmp_path / "s.db",
        ("logits",),
        population=2,
        threads=1,
        echo=lambda s: None,
    )
    assert seen == {"threads": 1, "workers": 1}
    table_methods.kdzero_search(ExperimentConfig(), None, 4, tmp_path / "t.db", ("logits",), population=2)
    assert seen["threads"] is None  # the study's default: CPU cores // workers


class _FirstSelection(Exception):
    """Raised where the first setting's first study would start."""


def test_every_settings_unselected_trainings_are_submitted_before_the_first_search(
    monkeypatch, tmp_path
) -> None:
    """CE, the handcrafted distillers and ce-2x of every setting queue in the pool before any study runs."""
    monkeypatch.setenv("KDZERO_CACHE", str(tmp_path / "cache"))
    events: list[tuple[str, str, str]] = []

    def record_submit(self, exp, regime, method, spec, seed, device, teacher_id=None):
        events.append(("submit", regime, method))

    def first_selection(*args, **kwargs):
        events.append(("select", "", ""))
        raise _FirstSelection

    from benchmarks import table_runs

    monkeypatch.setattr(table_runs.TrainPool, "submit", record_submit)
    monkeypatch.setattr(table_methods, "tune_known", first_selection)
    monkeypatch.setattr(table_methods, "kdzero_search", first_selection)
    argv = ["--quick", "--out", str(tmp_path / "out"), "--dataset", "digits", "--teacher", "cnn_tiny",
            "--students", "cnn_tiny", "--seeds", "2", "--epochs", "1",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    with pytest.raises(_FirstSelection):
        table.main(argv)
    first = events.index(("select", "", ""))
    assert first == len(events) - 1  # nothing was selected before
    submitted = {(r, m) for _, r, m in events[:first]}
    for regime in table.REGIMES:
        assert {(regime, m) for m in ("ce", "kd", "dist", "at", "fitnets", "ce-2x")} <= submitted, regime


def test_tuned_rivals_do_not_retrain_a_point_tpe_proposes_again(tmp_path) -> None:
    import optuna

    from trainers.rejection import Rejected

    calls: list[tuple[float, float]] = []

    class Fit:
        def __init__(self, w: float, tau: float) -> None:
            self.ce, self.sharpness_gap, self.cka_gap = 0.1 * w + tau, 0.01, 0.02
            self.accuracy = 0.5 + tau / 100

    class Evaluator:
        def evaluate(self, spec):
            calls.append((spec.weight, spec.tau))
            if spec.weight == 100.0:
                raise Rejected("diverge", "loss rose")
            return Fit(spec.weight, spec.tau)

    path = tmp_path / "tuned.db"
    study = table_methods.open_local_study(path, "kd-tuned", optuna.samplers.TPESampler(seed=0), ["minimize"])
    kd, bad = {"weight": 1.0, "tau": 4.0}, {"weight": 100.0, "tau": 8.0}
    for point in (kd, bad, kd, bad, kd):
        study.enqueue_trial(point)
    study = table_methods.tune_known(Evaluator(), "kd-tuned", 5, path)
    trials = study.get_trials()
    assert calls == [(1.0, 4.0), (100.0, 8.0)]  # each distinct point trained once
    assert len(trials) == 5  # twins still count toward the budget
    kd = [t for t in trials if t.params == {"weight": 1.0, "tau": 4.0}]
    assert [t.value for t in kd] == pytest.approx([((1.0 * 0.1 + 4.0) * 0.01 * 0.02) ** (1 / 3)] * 3)
    assert [t.user_attrs.get("twin_of") for t in kd] == [None, 0, 0]
    assert all(t.user_attrs["accuracy"] == pytest.approx(0.54) for t in kd)
    bad = [t for t in trials if t.params["weight"] == 100.0]
    assert [t.state for t in bad] == [optuna.trial.TrialState.PRUNED] * 2
    assert [t.user_attrs.get("reject_reason") for t in bad] == ["diverge", "diverge"]
    assert bad[1].user_attrs["twin_of"] == 1


def test_a_tuned_rival_interrupted_mid_trial_retries_that_point(tmp_path) -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution

    from spaces import TEMPERATURES, WEIGHTS
    from study.fitness import scalarise

    calls: list[tuple[float, float]] = []

    class Fit:
        def __init__(self, w: float, tau: float) -> None:
            self.ce, self.sharpness_gap, self.cka_gap, self.accuracy = w / 10, tau / 10, 0.5, 0.8

    class Evaluator:
        def evaluate(self, spec):
            calls.append((spec.weight, spec.tau))
            return Fit(spec.weight, spec.tau)

    path = tmp_path / "tuned.db"
    study = table_methods.open_local_study(path, "kd-tuned", optuna.samplers.TPESampler(seed=0), ["minimize"])
    study.set_user_attr(table_methods.SCALARISATION_ATTR, table_methods.SCALARISATION)
    study.enqueue_trial({"weight": 1.0, "tau": 4.0})  # the published point, as tune_known queues it
    study.ask()  # ... stopped before its objective suggested anything: left RUNNING
    grid = {
        "weight": CategoricalDistribution(list(WEIGHTS)),
        "tau": CategoricalDistribution(list(TEMPERATURES)),
    }
    drawn = study.ask(grid).params  # a TPE point stopped mid-training
    said: list[str] = []
    study = table_methods.tune_known(Evaluator(), "kd-tuned", 3, path, echo=said.append)
    trials = study.get_trials()
    assert [t.state for t in trials][:2] == [optuna.trial.TrialState.FAIL] * 2
    assert [t.params for t in trials[2:4]] == [{"weight": 1.0, "tau": 4.0}, drawn]  # retried first, in order
    assert calls[:2] == [(1.0, 4.0), (drawn["weight"], drawn["tau"])]  # then TPE (its point may be a twin)
    assert trials[2].value == pytest.approx(scalarise((0.1, 0.4, 0.5)))
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3
    assert said == [
        f"study 'kd-tuned' in {path}: a trial at {point} was interrupted; failed, queued again"
        for point in ({"weight": 1.0, "tau": 4.0}, drawn)
    ]
    # Interrupted after later trials used up the budget: failed, not queued (it would wait forever).
    late = study.ask(grid).params
    said.clear()
    study = table_methods.tune_known(Evaluator(), "kd-tuned", 3, path, echo=said.append)
    assert said == [
        f"study 'kd-tuned' in {path}: a trial at {late} was interrupted; failed, not queued again: "
        "the budget is reached"
    ]
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING))


def test_a_tuned_rival_tuned_on_another_scalarisation_is_tuned_again(tmp_path) -> None:
    import optuna

    from study.fitness import SCALARISATION, scalarise

    class Fit:
        ce, sharpness_gap, cka_gap, accuracy = 0.5, 3.0, 0.2, 0.8

    class Evaluator:
        def evaluate(self, spec):
            return Fit()

    path = tmp_path / "tuned.db"
    old = table_methods.open_local_study(path, "kd-tuned", optuna.samplers.TPESampler(seed=0), ["minimize"])
    old.add_trial(optuna.trial.create_trial(value=3.7))  # a value of the paper's sum, no scalarisation attr
    said: list[str] = []
    study = table_methods.tune_known(Evaluator(), "kd-tuned", 2, path, echo=said.append)
    assert len(said) == 1 and "sum" in said[0] and "1 finished trials dropped" in said[0]
    assert study.user_attrs[table_methods.SCALARISATION_ATTR] == SCALARISATION
    assert len(study.trials) == 2
    assert study.trials[0].value == pytest.approx(scalarise((0.5, 3.0, 0.2)))  # (0.3) ** (1 / 3), not 3.7
    said.clear()
    again = table_methods.tune_known(Evaluator(), "kd-tuned", 2, path, echo=said.append)
    assert said == [] and len(again.trials) == 2  # same scalarisation: resumed, nothing to do
