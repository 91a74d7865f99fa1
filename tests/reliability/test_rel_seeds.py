"""Two parents, one seed: every worker process of a study gets its own sampler seed, recorded in its trials,
and a single run stays reproducible."""

from __future__ import annotations

import threading
import uuid

import pytest
from rel_helpers import finished, make_half_second_fake
from study_fakes import make_fake, smoke_config

from study._optuna import study_system_attrs
from study.sampler import SEED_ATTR, SEED_SLOTS_ATTR, claim_seed_slots
from study.search import open_study, run_search
from study.storage import make_storage
from study.worker import WorkerArgs, load_existing_study, run_worker


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path) -> str:
    """A fresh study storage: a SQLite file, or the session's PostgreSQL test database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/kd.db"
    return request.getfixturevalue("postgres_url")


def _cfg(url: str, n_trials: int, study: str, workers: int = 1):
    return smoke_config(url, n_trials, workers, study, verify_top=0)


def _search(cfg, lines: list[str] | None = None, factory=make_fake):
    out = lines if lines is not None else []
    return run_search(
        cfg, evaluator_factory=factory, prepare=None, echo=out.append, poll_s=0.5, refresh_s=0.2
    )


def _seeds(study) -> dict[int, int]:
    """Trial number -> sampler seed of the worker that ran it (finished trials)."""
    return {t.number: t.user_attrs[SEED_ATTR] for t in finished(study)}


def test_seed_slots_are_claimed_atomically_by_concurrent_claimants(storage_url) -> None:
    """Eight claimants (each with its own connection pool) race for slots: none is handed out twice."""
    name = f"slots-{uuid.uuid4().hex[:8]}"
    open_study(_cfg(storage_url, 4, name))
    got: list[int] = []
    errors: list[BaseException] = []

    def claim() -> None:
        try:
            study = load_existing_study(make_storage(storage_url), name)
            for _ in range(5):
                got.append(claim_seed_slots(study, 2))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(got) == list(range(0, 80, 2))
    study = load_existing_study(make_storage(storage_url), name)
    assert claim_seed_slots(study, 1) == 80


def test_two_parents_and_a_hand_started_worker_get_distinct_seeds(tmp_path) -> None:
    """Each process starts its own worker 0; the first parent keeps today's seed, the others draw new ones."""
    url, name = f"sqlite:///{tmp_path}/kd.db", "two-parents"
    lines: list[str] = []
    first = _seeds(_search(_cfg(url, 6, name), lines))
    seed = _cfg(url, 6, name).search.seed
    assert set(first.values()) == {seed}  # a single run: worker 0 seeds search.seed, as always
    lines.clear()
    second = _seeds(_search(_cfg(url, 10, name), lines))  # a second `study search` on the same study
    later = {n: s for n, s in second.items() if n not in first}
    assert later and set(later.values()) == {seed + 1000}, later
    assert any(f"sampler seeds [{seed + 1000}]" in line for line in lines), lines
    n = run_worker(
        WorkerArgs(storage=url, study=name, index=0, n_trials=13, verify=False, refresh_s=0.2), make_fake
    )
    assert n >= 1
    study = load_existing_study(make_storage(url), name)
    by_hand = {k: s for k, s in _seeds(study).items() if k not in second}
    assert by_hand and set(by_hand.values()) == {seed + 2000}, by_hand
    assert study_system_attrs(study)[SEED_SLOTS_ATTR] == 3


def test_two_parents_started_together_propose_different_candidates(tmp_path) -> None:
    """Two simultaneous `study search` runs on one new study: their workers' sampler seeds differ, and so do
    the candidates they sample."""
    url, name = f"sqlite:///{tmp_path}/kd.db", "together"
    errors: list[BaseException] = []

    def parent() -> None:
        try:
            _search(_cfg(url, 16, name), factory=make_half_second_fake)  # both are still running
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=parent) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    study = load_existing_study(make_storage(url), name)
    seed = _cfg(url, 16, name).search.seed
    sampled: dict[int, list[dict]] = {}
    for t in finished(study):
        if "fixed_params" not in t.system_attrs:  # proposed by a sampler, not enqueued
            sampled.setdefault(t.user_attrs[SEED_ATTR], []).append(t.params)
    assert set(sampled) == {seed, seed + 1000}, sorted(sampled)
    assert sampled[seed][0] != sampled[seed + 1000][0]


def test_a_single_run_twice_gives_the_same_candidates(tmp_path) -> None:
    runs = []
    for i in range(2):
        study = _search(_cfg(f"sqlite:///{tmp_path}/run{i}.db", 12, "again"))
        runs.append([(t.number, t.params, t.user_attrs[SEED_ATTR]) for t in finished(study)])
    assert runs[0] == runs[1]
