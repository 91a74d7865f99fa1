"""benchmarks.search_reach: the fitness trajectory, the source's arguments, and a real quick run on digits."""

from __future__ import annotations

import dataclasses
import json
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from benchmarks import search_reach, table
from spaces import KNOWN_DISTILLERS, DistillerSpec


def _trial(values: list[float] | None) -> optuna.trial.FrozenTrial:
    dist = {"x": CategoricalDistribution([0, 1])}
    if values is None:
        return create_trial(state=TrialState.PRUNED, params={"x": 0}, distributions=dist)
    return create_trial(values=values, params={"x": 1}, distributions=dist)


def test_trajectory_is_the_running_best_scalarised_fitness() -> None:
    study = optuna.create_study(directions=["minimize"] * 3)
    for values in (None, [1.0, 2.0, 0.5], None, [0.5, 3.0, 0.25], [0.2, 0.3, 0.1]):
        study.add_trial(_trial(values))
    # geometric means: -, 1, -, 0.375 ** (1/3), 0.006 ** (1/3); a pruned trial before any complete leaves inf
    curve = search_reach.trajectory(study)
    assert curve[0] == math.inf and curve[1:] == pytest.approx([1.0, 1.0, 0.375 ** (1 / 3), 0.006 ** (1 / 3)])
    assert search_reach.first_below(curve, 1.0) == 2
    assert search_reach.first_below(curve, 0.5) == 5
    assert search_reach.first_below(curve, 0.1) is None


def test_source_arguments_drop_the_run_options(tmp_path) -> None:
    command = (
        "python -m benchmarks.table --run r --out /x --regimes 10pct --jobs 2 --threads 1 --resume --readme"
    )
    (tmp_path / "r.summary.json").write_text(json.dumps({"meta": {"command": command}}))
    argv = search_reach.source_argv(tmp_path, "r", "cpu")
    assert argv == ["--regimes", "10pct", "--out", str(tmp_path), "--run", "r", "--device", "cpu"]
    with pytest.raises(FileNotFoundError, match="run python -m benchmarks.table --run other"):
        search_reach.source_argv(tmp_path, "other", "cpu")
    (tmp_path / "s.summary.json").write_text(json.dumps({"meta": {"command": "python -m benchmarks.x"}}))
    with pytest.raises(ValueError, match="not a benchmarks.table command"):
        search_reach.source_argv(tmp_path, "s", "cpu")


def test_a_distiller_the_table_trained_is_not_trained_again(tmp_path) -> None:
    from benchmarks.table_runs import Rows, row_key
    from spaces import KNOWN_DISTILLERS
    from trainers.config import ExperimentConfig

    exp, kd = ExperimentConfig(), KNOWN_DISTILLERS["kd"]
    t = "a1b2c3d4e5f60718"  # the teacher's identity
    source = [
        {**row_key(exp, "10pct", "kd", kd, 0, t), "test_acc": 0.8},
        {**row_key(exp, "10pct", "kd", kd, 1, t), "test_acc": None},  # a failed run is trained again
    ]
    rows = Rows(tmp_path / "r.json", resume=False)
    assert search_reach.reuse_row(rows, source, exp, "10pct", "kd-zero@96", kd, 0, t)
    (row,) = rows.rows
    assert row["method"] == "kd-zero@96" and row["reused_from"] == "kd" and row["test_acc"] == 0.8
    assert search_reach.reuse_row(rows, source, exp, "10pct", "kd-zero@96", kd, 0, t) and len(rows.rows) == 1
    assert not search_reach.reuse_row(rows, source, exp, "10pct", "kd-zero@96", kd, 1, t)
    assert not search_reach.reuse_row(rows, source, exp, "full", "kd-zero@96", kd, 0, t)  # another regime
    assert not search_reach.reuse_row(rows, source, exp, "10pct", "kd-zero@96", None, 0, t)  # plain CE
    assert not search_reach.reuse_row(rows, source, exp, "10pct", "kd-zero@96", kd, 0, "other")  # teacher


def test_stopped_candidates_run_to_the_end_once_each(tmp_path) -> None:
    from types import SimpleNamespace

    from spaces import KNOWN_DISTILLERS, spec_to_params

    def genes(name: str) -> tuple[dict, dict]:
        params = spec_to_params(KNOWN_DISTILLERS[name])
        return params, {k: CategoricalDistribution([v]) for k, v in params.items()}

    study = optuna.create_study(directions=["minimize"] * 3)
    for values in ([1.0, 1.0, 0.5], [2.0, 2.0, 0.5], [3.0, 3.0, 0.5]):  # fitness: cube roots of 0.5, 2, 4.5
        params, dist = genes("kd")
        study.add_trial(create_trial(values=values, params=params, distributions=dist))
    for name in ("dist", "dist", "at"):  # the twin is run once
        params, dist = genes(name)
        attrs = {"reject_reason": "early_stop", "reject_detail": "step 10"}
        study.add_trial(
            create_trial(state=TrialState.PRUNED, params=params, distributions=dist, user_attrs=attrs)
        )
    calls = []

    class Fake:
        def evaluate(self, spec):
            calls.append(spec.formula())
            ce = 0.5 if spec == KNOWN_DISTILLERS["dist"] else 3.0  # dist: fitness 0.5 < best 0.5 ** (1 / 3)
            return SimpleNamespace(ce=ce, sharpness_gap=0.5, cka_gap=0.5, accuracy=0.9)

    cache = tmp_path / "u.json"
    u = search_reach.unstopped(study, Fake(), cache)
    assert u["stopped_trials"] == 3 and u["distinct"] == 2 and len(calls) == 2
    assert u["best_complete"] == pytest.approx(0.5 ** (1 / 3))
    assert u["median_complete"] == pytest.approx(2 ** (1 / 3))
    assert u["beat_best"] == 1 and u["beat_median"] == 2 and u["rejected_when_run"] == 0
    assert sorted(p["fitness"] for p in u["points"]) == pytest.approx([0.5, 0.75 ** (1 / 3)])
    again = search_reach.unstopped(study, Fake(), cache)  # cached: nothing is run twice
    assert len(calls) == 2 and again == u


def test_scale_variants_are_the_weight_and_tau_neighbours() -> None:
    from spaces import KNOWN_DISTILLERS, TEMPERATURES, WEIGHTS

    kd = KNOWN_DISTILLERS["kd"]  # W 1, tau 4
    got = {(v.weight, v.tau) for v in search_reach.scale_variants(kd)}
    i = WEIGHTS.index(1.0)
    want = {(WEIGHTS[i + 1], 4.0), (WEIGHTS[i - 1], 4.0), (WEIGHTS[i - 2], 4.0)}
    want |= {(1.0, t) for t in TEMPERATURES if t != 4.0}
    assert got == want
    same = [(v.transforms, v.distance) for v in search_reach.scale_variants(kd)]
    assert set(same) == {(kd.transforms, kd.distance)}
    low = search_reach.scale_variants(dataclasses.replace(kd, weight=WEIGHTS[0]))  # none below the least
    assert sorted(v.weight for v in low if v.tau == 4.0) == [WEIGHTS[1]]


def test_refinements_are_enqueued_once_for_the_best_distinct_candidates(tmp_path) -> None:
    from spaces import KNOWN_DISTILLERS, spec_from_params, spec_to_params

    def add(spec, values):
        params = spec_to_params(spec)
        dist = {k: CategoricalDistribution([v]) for k, v in params.items()}
        study.add_trial(create_trial(values=values, params=params, distributions=dist))

    study = optuna.create_study(directions=["minimize"] * 3)
    kd, at = KNOWN_DISTILLERS["kd"], KNOWN_DISTILLERS["at"]
    add(kd, [1.0, 1.0, 0.5])  # fitness 2.5: best
    add(kd, [1.5, 1.0, 0.5])  # a twin of the best: not a second base
    add(at, [2.0, 2.0, 0.5])  # second distinct
    add(dataclasses.replace(kd, weight=0.5), [3.0, 3.0, 0.5])  # already a neighbour of kd: not enqueued again
    n = search_reach.enqueue_refinements(study, 1)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert n == len(waiting) == len(search_reach.scale_variants(kd)) - 1
    specs = [spec_from_params(t.system_attrs["fixed_params"]) for t in waiting]
    assert all(s.distance == kd.distance and s != kd for s in specs)
    assert all(t.user_attrs["refine_of"] == 0 for t in waiting)
    assert search_reach.enqueue_refinements(study, 2) == 0  # once per study
    db = tmp_path / "r.db"  # what the enqueued trials became, read back from a stored study
    stored = optuna.create_study(directions=["minimize"] * 3, study_name="kd-zero", storage=f"sqlite:///{db}")
    for t in waiting:
        stored.enqueue_trial(t.system_attrs["fixed_params"], user_attrs=t.user_attrs)
    counts = search_reach.refinement_counts(db, "kd-zero")  # none has run yet
    assert counts == {"enqueued": n, "complete": 0, "early_stop": 0, "rejected": 0, "best_fitness": math.inf}


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="strictly ascending, got '96,48'"):
        search_reach.parse_args(["--budgets", "96,48"])
    with pytest.raises(ValueError, match=r"unknown sampler\(s\) \['cmaes'\]"):
        search_reach.parse_args(["--samplers", "nsga2,cmaes"])
    with pytest.raises(ValueError, match="--regime must be one of"):
        search_reach.parse_args(["--regime", "half"])
    with pytest.raises(ValueError, match="--search-seed 1: only a fresh search"):
        search_reach.parse_args(["--samplers", "nsga2", "--search-seed", "1"])
    other = search_reach.parse_args(["--samplers", "tpe", "--search-seed", "2"])
    assert other.run.endswith("tpe-s2-10pct-cnn_tiny") and other.search_seed == 2
    with pytest.raises(ValueError, match="--verify-known must be >= 0, got -1"):
        search_reach.parse_args(["--verify-known", "-1"])
    known = search_reach.parse_args(["--verify-top", "3", "--verify-known", "100"])
    assert known.run.endswith("reach-verify3-known100-10pct-cnn_tiny") and known.verify_known == 100
    with pytest.raises(ValueError, match=r"--seed-weight-steps .*non-zero ints"):
        search_reach.parse_args(["--seed-weight-steps=-1,0"])
    with pytest.raises(ValueError, match="--refine continues the table's studies"):
        search_reach.parse_args(["--seed-weight-steps=-1", "--refine", "2"])
    with pytest.raises(ValueError, match="--verify-seeds must be >= 1, got 0"):
        search_reach.parse_args(["--verify-seeds", "0"])
    seeds = search_reach.parse_args(["--seed-weight-steps=-1", "--verify-seeds", "4"])
    assert seeds.run.endswith("nsga2-wsteps-1-vseeds4-10pct-cnn_tiny") and seeds.verify_seeds == 4
    fresh = search_reach.parse_args(["--seed-weight-steps=-1,-2", "--search-seed", "3"])
    assert fresh.run.endswith("nsga2-wsteps-1-2-s3-10pct-cnn_tiny") and fresh.seed_weight_steps == (-1, -2)


def _dump(db) -> list[str]:
    """The SQL content of a SQLite file, WAL included (a checkpoint changes its bytes, not its content)."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_quick_run_continues_a_tables_search_without_touching_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KDZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["--quick", "--out", str(out), "--dataset", "digits", "--teacher", "cnn_tiny", "--regimes", "full",
            "--students", "cnn_tiny", "--seeds", "2", "--epochs", "1", "--budget", "3", "--fidelity", "4",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert table.main(argv) == 0
    source_db = out / "quick-digits-full-cnn_tiny-kd-zero.db"
    before = _dump(source_db)
    reach = [
        "--source",
        "quick-digits",
        "--out",
        str(out),
        "--regime",
        "full",
        "--budgets",
        "4,5",
        "--seeds",
        "2",
    ]
    assert search_reach.main(reach) == 0
    assert _dump(source_db) == before  # the table's study is copied, never continued in place
    run = "quick-digits-reach-full-cnn_tiny"
    summary = json.loads((out / f"{run}.summary.json").read_text())
    assert summary["meta"]["source_budget"] == 3 and summary["meta"]["budgets"] == [4, 5]
    assert summary["meta"]["command"].startswith("python -m benchmarks.search_reach --source quick-digits")
    study = optuna.load_study(study_name="kd-zero", storage=f"sqlite:///{out}/{run}-kd-zero.db")
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 5
    rows = json.loads((out / f"{run}.json").read_text())
    for res in summary["results"]:
        assert len(res["curve"]) == res["budget"]
        assert res["best_fitness"] == pytest.approx(min(res["curve"]))
        # the trained choice is the verified winner of that budget, with the table's seeds and schedule
        mine = [r for r in rows if r["method"] == f"kd-zero@{res['budget']}"]
        assert sorted(r["seed"] for r in mine) == [0, 1] and {r["epochs"] for r in mine} == {1}
        assert all(r["spec"] == res["spec"] for r in mine)
        assert res["formula"] == res["verified"][0]["formula"]
        assert res["vs_ce"]["n"] == 2 and res["vs_kd_tuned"]["n"] == 2 and res["vs_source_choice"]["n"] == 2
        accs = {r["seed"]: r["test_acc"] for r in mine}
        src = json.loads((out / "quick-digits.json").read_text())
        ce = {r["seed"]: r["test_acc"] for r in src if r["method"] == "ce" and r["regime"] == "full"}
        assert res["vs_ce"]["mean"] == pytest.approx(sum(accs[s] - ce[s] for s in (0, 1)) / 2)
    md = (out / f"{run}.md").read_text()
    assert "Search reach" in md and "kd-zero | 5 |" in md
    # Resume: nothing is searched or trained again, and each budget keeps what it reached at that budget
    # (the study has moved on to 5 trials; its verification now is the budget-5 plan)
    assert search_reach.main([*reach, "--resume"]) == 0
    assert json.loads((out / f"{run}.json").read_text()) == rows
    again = json.loads((out / f"{run}.summary.json").read_text())["results"]
    assert [(r["budget"], len(r["curve"]), r["verified"]) for r in again] == [
        (r["budget"], len(r["curve"]), r["verified"]) for r in summary["results"]
    ]
    with pytest.raises(ValueError, match="already holds 5 finished trials, more than the budget 4"):
        search_reach.budget_record(study, 4, 1.0)
    # A sampler the table did not run (tpe) searches from scratch with the table's experiment
    assert search_reach.main([*reach[:-4], "--budgets", "3", "--samplers", "tpe", "--seeds", "1"]) == 0
    run = "quick-digits-tpe-full-cnn_tiny"
    tpe = optuna.load_study(study_name="tpe-kd", storage=f"sqlite:///{out}/{run}-tpe-kd.db")
    assert len(tpe.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3
    (res,) = json.loads((out / f"{run}.summary.json").read_text())["results"]
    assert res["method"] == "tpe-kd" and res["vs_source_choice"]["n"] == 0 and res["vs_ce"]["n"] == 1
    assert _dump(source_db) == before
    # --verify-known: the table's own budget, verified again with every known distiller that completed
    assert search_reach.main([*reach[:-4], "--budgets", "3", "--seeds", "1", "--verify-known", "100"]) == 0
    run = "quick-digits-reach-known100-full-cnn_tiny"
    summary = json.loads((out / f"{run}.summary.json").read_text())
    assert summary["meta"]["verify_known"] == 100
    assert "100 known distiller(s) verified on 1 seed(s)" in (out / f"{run}.md").read_text()
    study = optuna.load_study(study_name="kd-zero", storage=f"sqlite:///{out}/{run}-kd-zero.db")
    known = {
        DistillerSpec.from_json(t.user_attrs["spec"]).canonical_key()
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if t.user_attrs.get("known")
    }
    (res,) = summary["results"]
    verified = {
        DistillerSpec.from_json(row["spec"]).canonical_key()
        for row in res["verified"]
        if row["spec"] is not None
    }
    assert known and known <= verified
    assert _dump(source_db) == before
    # --seed-weight-steps: nsga2 searched from scratch with the known distillers' loss-scale variants added to
    # generation 0; compared with the table's choice
    steps = [*reach[:-4], "--budgets", "6", "--seeds", "1", "--seed-weight-steps=-1", "--verify-seeds", "3"]
    assert search_reach.main(steps) == 0
    run = "quick-digits-nsga2-wsteps-1-vseeds3-full-cnn_tiny"
    study = optuna.load_study(study_name="kd-zero", storage=f"sqlite:///{out}/{run}-kd-zero.db")
    seeded = {
        t.user_attrs["seeded_from"]: t.system_attrs["fixed_params"]["weight"]
        for t in study.trials
        if "seeded_from" in t.user_attrs
    }
    published = {k: s.weight for k, s in KNOWN_DISTILLERS.items() if s.knowledge in ("logits", "feature")}
    grid = [0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0]
    assert seeded == {k: grid[grid.index(w) - 1] for k, w in published.items()}  # one grid step down
    summary = json.loads((out / f"{run}.summary.json").read_text())
    assert summary["meta"]["seed_weight_steps"] == [-1] and summary["meta"]["verify_seeds"] == 3
    (res,) = summary["results"]
    assert all(len(row["seeds"]) + row.get("rejected", 0) == 3 for row in res["verified"])
    assert res["vs_source_choice"]["n"] == 1 and res["vs_ce"]["n"] == 1
    assert _dump(source_db) == before
