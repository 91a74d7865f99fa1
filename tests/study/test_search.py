"""The search job with a fake evaluator: generations, inheritance, workers, resume, retry."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState
from study_fakes import GatedFake, make_fake, smoke_config

from spaces import KNOWN_DISTILLERS, spec_to_params
from study._optuna import study_system_attrs, trial_id
from study.cli import main
from study.config import StudyConfig
from study.sampler import GENERATION_KEY, SEED_SLOTS_ATTR, parent_ids
from study.search import ConfigMismatch, run_search
from study.storage import make_storage
from study.worker import WorkerArgs, worker_main

optuna.logging.set_verbosity(optuna.logging.WARNING)
LOGIT_KNOWN = sorted(k for k, s in KNOWN_DISTILLERS.items() if s.knowledge == "logits")


def _cfg(url: str, n_trials: int, workers: int = 1, study: str = "s", **search) -> StudyConfig:
    return smoke_config(url, n_trials, workers, study, **search)


def _search(cfg: StudyConfig, factory=make_fake) -> optuna.Study:
    lines: list[str] = []
    study = run_search(
        cfg, evaluator_factory=factory, prepare=None, echo=lines.append, poll_s=0.5, refresh_s=0.2
    )
    text = "\n".join(lines)
    assert "warning" not in text  # no worker crashed
    assert "chosen trial #" in text or "chosen: plain cross-entropy training" in text  # as the fake has it
    assert "optuna-dashboard" in text and "python -m analysis export" in text
    return study


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def _check_stored(study: optuna.Study, n: int) -> None:
    fin = _finished(study)
    assert len(fin) == n
    assert study.metric_names == ["val_ce", "sharpness_gap", "cka_gap"]
    for t in fin:
        if t.state == TrialState.COMPLETE:
            assert len(t.values) == 3
            for key in ("accuracy", "formula", "spec", "generation", "curve", "wall_s"):
                assert key in t.user_attrs, key
        else:
            assert t.user_attrs["reject_reason"]
    known = Counter(t.user_attrs.get("known") for t in fin if t.user_attrs.get("known"))
    assert sorted(known) == LOGIT_KNOWN and set(known.values()) == {1}  # enqueued once, evaluated once


def test_search_generations_inheritance_resume_and_mismatch(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/kd.db"
    study = _search(_cfg(url, 8))
    _check_stored(study, 8)
    for t in study.trials:
        if t.user_attrs.get("known"):
            assert t.user_attrs["generation"] == 0 == t.system_attrs[GENERATION_KEY]
            assert t.params == spec_to_params(KNOWN_DISTILLERS[t.user_attrs["known"]])
    # Resume: the same command with a larger study-wide target reaches it exactly; nothing enqueued twice.
    # search.generations only sizes the default budget, so raising it does not make another configuration.
    study = _search(_cfg(url, 20, generations=9))
    _check_stored(study, 20)
    slots = study_system_attrs(study)[SEED_SLOTS_ATTR]
    _search(_cfg(url, 20, generations=9))  # the target is reached: a rerun samples nothing, claims no slot
    assert study_system_attrs(optuna.load_study(study_name="s", storage=url))[SEED_SLOTS_ATTR] == slots
    gens = [t.user_attrs["generation"] for t in study.trials]
    assert gens == sorted(gens) and max(gens) >= 2
    # Offspring inherit genes from the parent population NSGA-II selected for their generation.
    inherited = total = 0
    for t in study.trials:
        g = t.user_attrs["generation"]
        if g == 0:
            continue
        ids = set(parent_ids(study, g))
        parents = [p for p in study.trials if trial_id(p) in ids]
        assert parents and all(p.state == TrialState.COMPLETE for p in parents)
        for gene, dist in t.distributions.items():
            if len(dist.choices) > 1:
                total += 1
                inherited += t.params[gene] in {p.params[gene] for p in parents}
    assert inherited / total > 0.75, (inherited, total)
    # A different configuration under the same name is refused with the difference.
    with pytest.raises(ConfigMismatch) as err:
        run_search(
            _cfg(url, 20, population=6), evaluator_factory=make_fake, prepare=None, echo=lambda s: None
        )
    assert '"population": 4' in str(err.value) and '"population": 6' in str(err.value)
    # status: counts per state and generation, reasons, weights, best trials.
    assert main(["status", "--storage", url, "--study", "s", "--fail-stale"]) == 0
    out = capsys.readouterr().out
    assert "trials per generation" in out and "gen   0" in out and "shrinkage weights" in out
    assert "Pareto front" in out and "distance:" in out


def test_a_tpe_search_runs_the_same_generation_0_and_verification(tmp_path) -> None:
    from study.sampler import build_sampler
    from study.verify import verified

    url = f"sqlite:///{tmp_path}/tpe.db"
    cfg = _cfg(url, 12, sampler="tpe")
    sampler = build_sampler(cfg.search)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    study = _search(cfg)
    _check_stored(study, 12)  # the known distillers enqueued once each, every trial finished
    assert verified(study)  # the verified selection ran


def _two_workers(url: str, study: str) -> None:
    cfg = _cfg(url, 16, workers=2, study=study)
    s = _search(cfg)
    fin = _finished(s)
    # Target reached without loss: 16 finished (a race may over-run it by at most workers - 1 = 1 trial);
    # no trial lost (no FAIL, no RUNNING/WAITING left over); each enqueued known distiller run exactly once.
    assert 16 <= len(fin) <= 17
    assert not s.get_trials(states=(TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING))
    assert sorted(t.number for t in s.trials) == list(range(len(s.trials)))
    _check_stored(s, len(fin))


def test_two_worker_processes_share_one_sqlite_study(tmp_path) -> None:
    _two_workers(f"sqlite:///{tmp_path}/kd.db", "two")


@pytest.mark.postgres
def test_two_worker_processes_share_one_postgresql_study(postgres_url) -> None:
    _two_workers(postgres_url, f"two-{int(time.time() * 1000)}")


def test_killed_worker_loses_no_candidate(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/kd.db"
    cfg = _cfg(url, 6)
    from study.search import enqueue_known, open_study

    study = open_study(cfg)
    enqueue_known(study, cfg)
    args = WorkerArgs(storage=url, study="s", n_trials=6, heartbeat_interval=1, grace_period=3, refresh_s=0.2)
    gate = tmp_path / "gate"
    gate.touch()
    fake = GatedFake(str(gate))  # the first search trial holds until the gate is removed
    proc = mp.get_context("spawn").Process(target=worker_main, args=(args, fake))
    proc.start()
    try:
        for _ in range(1200):
            # Kill once the objective holds inside its trial (its heartbeat thread has started by then).
            if fake.inside(proc.pid):
                break
            time.sleep(0.1)
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if "spec" in t.user_attrs]
        assert running, "the worker never started a trial"
    finally:
        proc.kill()  # SIGKILL mid-trial: no chance to clean up
        proc.join()
    victim = running[0]
    # Rerunning the same search fails the stale trial and retries the same candidate; the target is reached.
    time.sleep(3.5)
    study = _search(cfg)
    _check_stored(study, 6)
    failed = study.trials[victim.number]
    assert failed.state == TrialState.FAIL
    retries = [t for t in _finished(study) if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == failed.params


def test_config_is_stored_in_the_study(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/kd.db"
    cfg = _cfg(url, 4)
    study = _search(cfg)
    stored = json.loads(study.user_attrs["kdzero_config"])
    assert StudyConfig.from_dict(stored).identity() == cfg.identity()
    assert study.user_attrs["kdzero_target"] == {"n_trials": 4}
    assert make_storage(url).get_heartbeat_interval() == 20


def test_a_reproposed_complete_candidate_is_not_trained_again(tmp_path) -> None:
    import optuna
    from study_fakes import FakeEvaluator

    from spaces import KNOWN_DISTILLERS, spec_to_params
    from study.objective import Objective

    evaluator = FakeEvaluator()
    study = optuna.create_study(directions=["minimize"] * 3, storage=f"sqlite:///{tmp_path}/d.db")
    params = spec_to_params(KNOWN_DISTILLERS["kd"])
    study.enqueue_trial(params)
    study.enqueue_trial(params)
    study.optimize(Objective(evaluator, knowledge=("logits",)), n_trials=2)
    first, second = study.trials
    assert len(evaluator.evaluated) == 1
    assert second.values == first.values and second.user_attrs["duplicate_of"] == first.number
    assert second.user_attrs["accuracy"] == first.user_attrs["accuracy"]


def test_loss_scale_variants_of_the_known_distillers_are_seeded_as_candidates(tmp_path) -> None:
    from study_fakes import FakeEvaluator

    from study.objective import Objective
    from study.pruner import PercentileEarlyStop
    from study.search import enqueue_known, open_study

    cfg = _cfg(f"sqlite:///{tmp_path}/w.db", 20, seed_weight_steps=[-1, -5])
    study = open_study(cfg)
    assert enqueue_known(study, cfg) == 8
    assert enqueue_known(study, cfg) == 0  # once per study
    grid = [0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0]  # the space's weight grid, written out
    waiting = study.get_trials(states=(TrialState.WAITING,))
    got = [(t.user_attrs, t.system_attrs["fixed_params"]) for t in waiting]
    expected = [({"known": k}, spec_to_params(KNOWN_DISTILLERS[k])) for k in LOGIT_KNOWN]  # dist, kd, wsld
    for k in LOGIT_KNOWN:
        i = grid.index(KNOWN_DISTILLERS[k].weight)  # DIST and WSLD at 2, KD at 1
        for step in (-1, -5):
            if 0 <= i + step < len(grid):  # KD's W 1 has no weight five steps down
                params = {**spec_to_params(KNOWN_DISTILLERS[k]), "weight": grid[i + step]}
                expected.append(({"seeded_from": k, "weight_step": step}, params))
    assert got == expected
    assert [p["weight"] for _, p in got[3:]] == [1.0, 0.01, 0.5, 1.0, 0.01]
    # The variants are candidates: below the completed trials' curves they stop early, the known ones never
    for _ in range(20):  # enough that the known ones' own curves do not lower the 25th percentile
        study.add_trial(
            optuna.trial.create_trial(values=[1.0, 1.0, 1.0], user_attrs={"curve": [[10, 0.99], [20, 0.99]]})
        )
    pruner = PercentileEarlyStop(percentile=25.0, warmup=1, refresh_s=0.0)
    study.optimize(Objective(FakeEvaluator(), knowledge=("logits",), pruner=pruner), n_trials=8)
    ran = {t.number: t for t in study.trials if t.number in {w.number for w in waiting}}
    for t in ran.values():
        if "known" in t.user_attrs:
            assert t.state == TrialState.COMPLETE
        else:
            assert t.state == TrialState.PRUNED and t.user_attrs["reject_reason"] == "early_stop"
            assert t.params["weight"] == t.system_attrs["fixed_params"]["weight"]


def test_seed_weight_steps_are_checked_and_stored(tmp_path) -> None:
    from study.config import SearchConfig

    for bad in ((0,), (-1, -1), (True,), (1.5,)):
        with pytest.raises(
            ValueError, match="search.seed_weight_steps must be a list of distinct non-zero ints"
        ):
            SearchConfig(seed_weight_steps=bad)
    with pytest.raises(ValueError, match=r"search.seed_weight_steps \[-1\] needs search.seed_known = true"):
        SearchConfig(seed_known=False, seed_weight_steps=(-1,))
    cfg = _cfg(f"sqlite:///{tmp_path}/c.db", 4, seed_weight_steps=[-2, 1])
    assert cfg.search.seed_weight_steps == (-2, 1)
    assert json.loads(cfg.stored_json())["search"]["seed_weight_steps"] == [-2, 1]
    from study.search import open_study

    open_study(cfg)
    with pytest.raises(ConfigMismatch, match="seed_weight_steps"):  # another generation 0, another study
        open_study(_cfg(f"sqlite:///{tmp_path}/c.db", 4))
