"""The CE reference, canonical twins and the verified final selection, with a deterministic fake evaluator."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from study_fakes import FakeEvaluator, fake_objectives, make_fake, smoke_config

from spaces import KNOWN_DISTILLERS, DistillerSpec, spec_to_params
from study import verify
from study.cli import main
from study.config import StudyConfig
from study.objective import Objective
from study.search import run_search
from study.worker import WorkerArgs, run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _cfg(url: str, n_trials: int, workers: int = 1, study: str = "v", **search) -> StudyConfig:
    return smoke_config(url, n_trials, workers, study, **search)


def _search(cfg: StudyConfig, factory=make_fake) -> tuple[optuna.Study, str]:
    lines: list[str] = []
    study = run_search(
        cfg, evaluator_factory=factory, prepare=None, echo=lines.append, poll_s=0.5, refresh_s=0.2
    )
    return study, "\n".join(lines)


def _side(study: optuna.Study) -> optuna.Study:
    side = verify.load_side_study(study)
    assert side is not None
    return side


def test_ce_reference_is_measured_and_every_trial_has_its_gain(tmp_path) -> None:
    study, text = _search(_cfg(f"sqlite:///{tmp_path}/v.db", 8, verify_top=0))
    side = _side(study)
    ref = verify.reference(side)
    assert ref is not None and ref.user_attrs["role"] == "ce_reference" and ref.user_attrs["spec"] is None
    assert ref.value == pytest.approx(0.5)  # the fake's CE accuracy, at the proxy's fidelity and seed
    assert ref.user_attrs["fraction"] is None and ref.user_attrs["seed"] == 0
    # the reference is not a candidate: the main study holds exactly the 8 search trials, all with genes
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 8 and all(t.params for t in study.trials)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    for t in complete:
        assert t.user_attrs["gain_vs_ce"] == pytest.approx(t.user_attrs["accuracy"] - 0.5)
    assert "CE reference (no distiller, proxy fidelity): val acc 0.5000" in text
    assert "gain vs CE" in text


def test_twins_in_canonical_form_are_trained_once_and_listed_once(tmp_path) -> None:
    evaluator = FakeEvaluator()
    study = optuna.create_study(directions=["minimize"] * 3, storage=f"sqlite:///{tmp_path}/t.db")
    kd = spec_to_params(KNOWN_DISTILLERS["kd"])
    # the same distiller with operations that do nothing on logits (map-only ops) in the other slots
    twin = {**kd, "t1": "bmm", "t2": "softmax_c", "t3": "local_r4"}
    # and without the softmax, which kl applies itself: the same loss (tests/spaces checks the values)
    bare = {**kd, "t1": "no", "t2": "no", "t3": "no"}
    assert DistillerSpec.canonical(KNOWN_DISTILLERS["kd"]).transforms == ("no", "no", "no")
    study.enqueue_trial(kd)
    study.enqueue_trial(twin)
    study.enqueue_trial(bare)
    study.optimize(Objective(evaluator, knowledge=("logits",)), n_trials=3)
    first, second, third = study.trials
    assert len(evaluator.evaluated) == 1  # the twins were not trained
    for t in (second, third):
        assert t.user_attrs["duplicate_of"] == first.number and t.values == first.values
    assert second.user_attrs["formula"] == first.user_attrs["formula"] == KNOWN_DISTILLERS["kd"].formula()
    assert third.user_attrs["formula"] == first.user_attrs["formula"]  # a twin is listed as its original
    assert DistillerSpec.from_json(third.user_attrs["spec"]).formula() == "1 * kl(z_s/4, z_t/4) * 16"
    assert second.params["t1"] == "bmm"  # the stored genes stay as drawn
    front = verify.distinct_front(study)
    assert [t.number for t in front] == [first.number]  # all three are on the front, listed once


def test_a_rejected_twin_is_rejected_without_training(tmp_path) -> None:
    evaluator = FakeEvaluator(reject_gene="distance", reject_value="l1")
    study = optuna.create_study(directions=["minimize"] * 3, storage=f"sqlite:///{tmp_path}/r.db")
    base = {**spec_to_params(KNOWN_DISTILLERS["kd"]), "distance": "l1"}
    study.enqueue_trial(base)
    study.enqueue_trial({**base, "t3": "satt"})  # satt needs a map: identity on logits
    study.optimize(Objective(evaluator, knowledge=("logits",)), n_trials=2)
    first, second = study.trials
    assert first.state == second.state == TrialState.PRUNED
    assert second.user_attrs["reject_reason"] == "explode" and second.user_attrs["duplicate_of"] == 0


def test_verification_writes_kdzero_verified_and_export_uses_it(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/v.db"
    cfg = _cfg(url, 10, verify_top=3, verify_seeds=2, verify_fraction=0.5)
    study, text = _search(cfg)
    table = json.loads(study.user_attrs[verify.VERIFIED_ATTR])
    # top 3 distinct trials (+ the best known distiller if it is not among them) + the CE reference
    front = verify.ranked_candidates(study, 3)
    assert len(front) == 3
    expected = {t.number for t in front}
    known = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("known")]
    best_known = min(known, key=lambda t: (math.prod(t.values), t.number))  # lowest geometric mean
    expected |= {best_known.number}
    assert {row["trial"] for row in table} == expected | {None}
    for row in table:
        assert set(row) >= {"trial", "formula", "seeds", "val_acc", "val_acc_std"}
        assert row["seeds"] == [1, 2]  # seeds other than the search's seed 0
        if row["trial"] is None:
            assert row["formula"] == "ce" and row["val_acc"] == pytest.approx(0.5)
            continue
        spec = DistillerSpec.from_json(study.trials[row["trial"]].user_attrs["spec"])
        accs = [fake_objectives(spec)[3] + 0.01 * _seed_unit(spec, s) for s in (1, 2)]
        assert row["val_acc"] == pytest.approx(statistics.fmean(accs))
        assert row["val_acc_std"] == pytest.approx(statistics.stdev(accs))
        assert row["seed_val_acc"] == pytest.approx(accs)  # one per seed, in the order of "seeds"
    accs = [row["val_acc"] for row in table]
    assert accs == sorted(accs, reverse=True)  # best first
    # the verification runs are in the companion study, at the verification fidelity, not in the search
    side = _side(study)
    jobs = [t for t in side.trials if t.user_attrs.get("role") == "verify"]
    assert len(jobs) == 2 * len(table) and all(t.user_attrs["fraction"] == 0.5 for t in jobs)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 10
    assert "verified (other seeds, rung by rung" in text and "chosen" in text
    # status shows it; the export without --trial/--select exports its first entry
    assert main(["status", "--storage", url, "--study", "v"]) == 0
    assert "verified (other seeds, rung by rung" in capsys.readouterr().out
    from analysis._cli import main as analysis_main

    assert analysis_main(["export", "--storage", url, "--study", "v", "--out", str(tmp_path / "e")]) == 0
    winner = table[0]
    exported = (tmp_path / "e" / "distiller.json").read_text().strip()
    if winner["trial"] is None:
        assert exported == "null"
    else:
        assert DistillerSpec.from_json(exported).formula() == winner["formula"]
    # rerunning the finished search plans nothing new and keeps the table
    study2, _ = _search(cfg)
    assert json.loads(study2.user_attrs[verify.VERIFIED_ATTR]) == table
    assert len(_side(study2).trials) == len(side.trials)


def _seed_unit(spec: DistillerSpec, seed: int) -> float:
    from study_fakes import _unit, key_of

    return _unit(f"{key_of(spec)}:{seed}", "seed")


class CEWinsEvaluator(FakeEvaluator):
    """Every distiller is worse than plain CE training."""

    def evaluate(self, spec, callbacks=None, seed=None, *, fraction=None, **kw):
        fit = super().evaluate(spec, callbacks, seed, fraction=fraction, **kw)
        if spec is None:
            fit.accuracy = 0.99
        return fit


def make_ce_wins(exp, device):
    return CEWinsEvaluator(exp, device)


def test_when_ce_wins_the_search_says_so_and_exports_plain_training(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    study, text = _search(_cfg(url, 6, verify_top=2, verify_seeds=1), factory=make_ce_wins)
    table = verify.verified(study)
    assert table is not None and table[0]["trial"] is None and table[0]["val_acc"] == pytest.approx(0.99)
    assert "chosen: plain cross-entropy training" in text
    from analysis._cli import main as analysis_main

    assert analysis_main(["export", "--storage", url, "--study", "v", "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "distiller.json").read_text().strip() == "null"


class ReusingEvaluator(FakeEvaluator):
    """Answers every verification run with one made before (``benchmarks.table`` does so across searches)."""

    def evaluate(self, spec, callbacks=None, seed=None, *, fraction=None, **kw):
        fit = super().evaluate(spec, callbacks, seed, fraction=fraction, **kw)
        if fraction is not None:
            fit.reused = {"source": f"elsewhere:{seed}", "cpu_s": 123.5, "wall_s": 200.25}
        return fit


def make_reusing(exp, device):
    return ReusingEvaluator(exp, device)


def test_a_verification_run_answered_from_an_earlier_run_records_its_source_and_cost(tmp_path) -> None:
    study, _ = _search(_cfg(f"sqlite:///{tmp_path}/r.db", 6, verify_top=2, verify_seeds=2), make_reusing)
    side = _side(study)
    jobs = [t for t in side.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["role"] == "verify"]
    assert jobs and verify.verified(study) is not None
    for t in jobs:  # the run's own (near-zero) time is not its cost: the earlier run's is
        seed = t.user_attrs["seed"]
        assert t.user_attrs["same_training_as"] == f"elsewhere:{seed}"
        assert t.user_attrs["cpu_s"] == 123.5 and t.user_attrs["wall_s"] == 200.25
    ref = verify.reference(side)  # a run the evaluator trained records what it measured
    assert ref is not None and "same_training_as" not in ref.user_attrs and ref.user_attrs["cpu_s"] < 100


def test_verification_is_resumable_by_another_worker(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    cfg = _cfg(url, 6, verify_top=2, verify_seeds=2)
    from study.search import enqueue_known, open_study

    study = open_study(cfg)
    enqueue_known(study, cfg)
    base = dict(storage=url, study="v", heartbeat_interval=1, grace_period=3, refresh_s=0.2)
    run_worker(WorkerArgs(**base, verify=False), make_fake)  # the search only
    study = optuna.load_study(study_name="v", storage=url)
    assert verify.VERIFIED_ATTR not in study.user_attrs and verify.planned_jobs(study) is None
    ran = run_worker(WorkerArgs(**base, index=1), make_fake)  # a later worker does the verification
    study = optuna.load_study(study_name="v", storage=url)
    table = verify.verified(study)
    assert table is not None and ran == len(verify.planned_jobs(study))
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 6


def _variant(weight: float, tau: float = 4.0) -> DistillerSpec:
    """Distinct distillers for hand-made trials: KD with another weight or temperature."""
    return dataclasses.replace(KNOWN_DISTILLERS["kd"], weight=weight, tau=tau)


def _stored(values: list[float], spec: DistillerSpec) -> optuna.trial.FrozenTrial:
    return create_trial(values=values, user_attrs={"spec": spec.to_json()})


def test_ranked_candidates_top_up_a_small_front_from_the_next_fronts() -> None:
    study = optuna.create_study(directions=["minimize"] * 3)
    twin = dataclasses.replace(_variant(1.0), transforms=("softmax_hw", "softmax_c", "no"))  # = 0 on logits
    assert twin != _variant(1.0) and twin.canonical_key() == _variant(1.0).canonical_key()
    # scalar: the geometric mean, so trials are ordered by the product of their three values
    rows = [
        ([0.5, 3.0, 0.3], _variant(1.0)),  # 0: front 0, product 0.45
        ([0.5, 3.0, 0.3], twin),  # 1: front 0, its twin: listed once
        ([0.9, 1.0, 0.4], _variant(2.0)),  # 2: front 0, product 0.36 (first)
        ([0.6, 3.1, 0.5], _variant(0.5)),  # 3: dominated by 0 -> front 1, product 0.93
        ([1.0, 2.1, 0.4], _variant(5.0)),  # 4: dominated by 2 -> front 1, product 0.84 (before 3)
        ([1.0, 3.2, 0.5], _variant(0.1)),  # 5: dominated by 3 -> front 2, product 1.6
        ([0.7, 3.2, 0.6], _variant(1.0, tau=2.0)),  # 6: dominated by 3 -> front 2, product 1.344 (before 5)
    ]
    for values, spec in rows:
        study.add_trial(_stored(values, spec))
    assert [t.number for t in verify.distinct_front(study)] == [2, 0]  # the front alone: 2 of 5 asked
    assert [t.number for t in verify.ranked_candidates(study, 5)] == [2, 0, 4, 3, 6]
    assert [t.number for t in verify.ranked_candidates(study, 3)] == [2, 0, 4]
    assert [t.number for t in verify.ranked_candidates(study, 100)] == [2, 0, 4, 3, 6, 5]
    assert verify.ranked_candidates(study, 0) == []
    # a better scalarised fitness does not lift a dominated trial above the front
    study.add_trial(_stored([0.9, 1.0, 0.45], _variant(3.0)))  # 7: dominated by 2 only, product 0.405 < 0's
    assert [t.number for t in verify.ranked_candidates(study, 2)] == [2, 0]
    assert [t.number for t in verify.ranked_candidates(study, 4)] == [2, 0, 7, 4]


def test_a_plan_of_the_older_front_only_rule_is_made_again_keeping_finished_jobs(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    cfg = _cfg(url, 10, verify_top=3, verify_seeds=1)
    study, _ = _search(cfg)
    plan = study.user_attrs[verify.PLAN_ATTR]
    assert plan["rule"] == verify.PLAN_RULE and verify.planned_jobs(study) == plan["jobs"]
    side = _side(study)
    n_side = len(side.trials)
    # what an older kdzero stored: no rule, and the front-only candidates (here: the first planned one)
    old_jobs = plan["jobs"][:1] + [j for j in plan["jobs"] if j.startswith("verify:ce:")]
    study.set_user_attr(verify.PLAN_ATTR, {"finished": plan["finished"], "jobs": old_jobs})
    assert verify.planned_jobs(study) is None  # stale: the search's verification stage plans again
    study2, _ = _search(cfg)
    again = study2.user_attrs[verify.PLAN_ATTR]
    assert again["rule"] == verify.PLAN_RULE and sorted(again["jobs"]) == sorted(plan["jobs"])
    assert len(_side(study2).trials) == n_side  # every job had finished: none trained twice
    table = json.loads(study.user_attrs[verify.VERIFIED_ATTR])
    assert json.loads(study2.user_attrs[verify.VERIFIED_ATTR]) == table


def test_a_finished_search_rerun_with_a_broader_verification_verifies_more(tmp_path) -> None:
    """verify_top / verify_seeds are not part of a study's identity: raising them re-plans the verification,
    keeping every run already done, and the stored configuration follows (workers read it)."""
    from study.worker import stored_config

    url = f"sqlite:///{tmp_path}/b.db"
    study, _ = _search(_cfg(url, 12, verify_top=1, verify_seeds=1))
    first = json.loads(study.user_attrs[verify.VERIFIED_ATTR])
    jobs = verify.planned_jobs(study)
    plan = dict(study.user_attrs[verify.PLAN_ATTR])
    del plan["breadth"]  # as stored by an older kdzero: the rerun must still see the verification grow
    study.set_user_attr(verify.PLAN_ATTR, plan)
    side = _side(study)
    done = {t.user_attrs["job"]: t.number for t in side.trials if t.user_attrs.get("role") == "verify"}
    assert set(done) == set(jobs)
    study2, text = _search(_cfg(url, 12, verify_top=3, verify_seeds=2))
    assert "different configuration" not in text
    assert stored_config(study2).search.verify_top == 3 and stored_config(study2).search.verify_seeds == 2
    plan = study2.user_attrs[verify.PLAN_ATTR]
    # the first rung's runs are all in the new plan; who goes on from there is decided again
    first_rung = {j for j in jobs if j.endswith("@0.25")}
    assert plan["breadth"] == [3, 2] and first_rung and first_rung < set(plan["jobs"])
    side2 = _side(study2)
    again = [t for t in side2.trials if t.user_attrs.get("job") in done]
    assert sorted(t.number for t in again) == sorted(done.values())  # none of the first runs trained twice
    table = json.loads(study2.user_attrs[verify.VERIFIED_ATTR])
    assert len(table) > len(first) and all(len(row["seeds"]) == 2 for row in table)
    finished = study2.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 12  # no search trial was added: only the verification grew


def _known(values: list[float] | None, spec: DistillerSpec, name: str, state=TrialState.COMPLETE):
    return create_trial(state=state, values=values, user_attrs={"spec": spec.to_json(), "known": name})


def test_verify_known_trains_the_k_best_known_distillers_that_completed_their_proxy(tmp_path) -> None:
    """``search.verify_known``: 0 none, 1 the best (the default), k the k best; each distinct, each once."""
    study = optuna.create_study(directions=["minimize"] * 3)
    kd_twin = dataclasses.replace(KNOWN_DISTILLERS["kd"], transforms=("softmax_hw", "softmax_c", "no"))
    assert kd_twin.canonical_key() == KNOWN_DISTILLERS["kd"].canonical_key()
    study.add_trial(_stored([0.5, 1.0, 0.5], _variant(2.0)))  # 0: the top candidate, product 0.25
    study.add_trial(_known([0.6, 1.0, 0.5], _variant(2.0), "kd-x2"))  # 1: best known (0.30), = trial 0
    study.add_trial(_known([0.6, 1.0, 0.6], KNOWN_DISTILLERS["kd"], "kd"))  # 2: product 0.36
    study.add_trial(_known([0.7, 1.0, 0.7], KNOWN_DISTILLERS["dist"], "dist"))  # 3: product 0.49
    study.add_trial(_known([0.6, 1.0, 0.65], kd_twin, "kd-twin"))  # 4: KD's twin (0.39): listed once
    study.add_trial(_known([0.8, 1.0, 0.8], KNOWN_DISTILLERS["at"], "at"))  # 5: product 0.64
    study.add_trial(_known(None, KNOWN_DISTILLERS["fitnets"], "fitnets", TrialState.PRUNED))  # 6: rejected

    def planned(k: int) -> list[int | None]:
        cfg = _cfg(f"sqlite:///{tmp_path}/k.db", 8, verify_top=1, verify_known=k)
        return [number for number, _spec in verify.candidates(study, cfg)]

    # the best known distiller (trial 1) is the top candidate's twin: it is verified as trial 0 and uses
    # up the default's one place, as before verify_known existed; None is the CE reference
    assert planned(1) == [0, None]
    assert planned(0) == [0, None]
    assert planned(2) == [0, 2, None]
    assert planned(3) == [0, 2, 3, None]  # trial 4 is KD again: skipped, not counted
    assert planned(100) == [0, 2, 3, 5, None]  # every known distiller that completed its proxy, once


def test_raising_verify_known_plans_again_and_the_default_keeps_older_plans(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    study, _ = _search(_cfg(url, 12, verify_top=1, verify_seeds=1))
    plan = study.user_attrs[verify.PLAN_ATTR]
    assert plan["breadth"] == [1, 1]  # the default verify_known (1) is not recorded: older plans stay valid
    default = _cfg(url, 12, verify_top=1, verify_seeds=1)
    assert verify.planned_jobs(study, default) == plan["jobs"]
    assert verify.planned_jobs(study, _cfg(url, 12, verify_top=1, verify_seeds=1, verify_known=9)) is None
    side = _side(study)
    done = {t.user_attrs["job"]: t.number for t in side.trials if t.user_attrs.get("role") == "verify"}
    study2, text = _search(_cfg(url, 12, verify_top=1, verify_seeds=1, verify_known=9))
    assert "different configuration" not in text
    plan2 = study2.user_attrs[verify.PLAN_ATTR]
    first_rung = {j for j in plan["jobs"] if j.endswith("@0.25")}
    assert plan2["breadth"] == [1, 1, 9] and first_rung <= set(plan2["jobs"])
    known = [t for t in study2.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("known")]
    keys = {DistillerSpec.from_json(t.user_attrs["spec"]).canonical_key() for t in known}
    verified = {
        DistillerSpec.from_json(t.user_attrs["spec"]).canonical_key()
        for t in _side(study2).trials
        if t.user_attrs.get("role") == "verify" and t.user_attrs["spec"] is not None
    }
    assert keys <= verified  # every known distiller that completed its proxy was verified
    again = [t for t in _side(study2).trials if t.user_attrs.get("job") in done]
    assert sorted(t.number for t in again) == sorted(done.values())  # none of the first runs trained twice
