"""Every private Optuna attribute kdzero relies on, in one place.

Optuna's public API does not expose a study's storage and id, a trial's storage id, NSGA-II's generation
and parent keys, the heartbeat table or a hypervolume; the search needs all of them. Nothing else in kdzero
touches an underscore name of Optuna: it calls the functions here. :func:`check` verifies each one against the
installed Optuna, ``tests/study/test_optuna_internals.py`` fails with its message when a release changes them,
and ``requirements.txt`` bounds Optuna to the releases that test has passed on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.samplers import NSGAIISampler
from optuna.storages import BaseStorage, RDBStorage

# Trial system attribute holding the NSGA-II generation ("NSGAIISampler:generation" in Optuna 4.2 to 5.1).
GENERATION_KEY: str = NSGAIISampler._get_generation_key()
# Study system attribute prefix of the parent population of a generation (+ str(generation)).
PARENT_KEY_PREFIX: str = NSGAIISampler._get_parent_cache_key_prefix()


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage object a study reads and writes (possibly Optuna's caching wrapper)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of a study (not its name)."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (unique across studies, unlike ``trial.number``)."""
    return trial._trial_id


def rdb_of(study: optuna.Study) -> RDBStorage | None:
    """The :class:`RDBStorage` under a study's storage, unwrapping Optuna's cache (``None``: not an RDB)."""
    storage = storage_of(study)
    rdb = getattr(storage, "_backend", storage)  # optuna wraps RDBStorage in a _CachedStorage
    return rdb if isinstance(rdb, RDBStorage) else None


def heartbeat_table() -> sqlalchemy.Table:
    """The RDB table of trial heartbeats (column ``trial_id``)."""
    from optuna.storages._rdb.models import TrialHeartbeatModel

    return TrialHeartbeatModel.__table__


def study_name_limit() -> int:
    """Longest study name the RDB storage holds (``studies.study_name`` is ``VARCHAR(512)`` in Optuna 4-5).

    SQLite stores a longer name without complaint, PostgreSQL and MySQL refuse it mid-run.
    """
    from optuna.storages._rdb.models import StudyModel

    return int(StudyModel.__table__.c.study_name.type.length)


JSON_TABLES: dict[str, tuple[str, str, str]] = {
    "study_user_attributes": ("study_id", "key", "value_json"),
    "study_system_attributes": ("study_id", "key", "value_json"),
    "trial_user_attributes": ("trial_id", "key", "value_json"),
    "trial_system_attributes": ("trial_id", "key", "value_json"),
    "trial_params": ("trial_id", "param_name", "distribution_json"),
}
"""Optuna's RDB tables holding JSON text it decodes when it loads a study: (owner, name, JSON) columns."""


def rdb_table(name: str) -> sqlalchemy.Table:
    """One of Optuna's RDB tables by name (``studies``, ``trials``, the :data:`JSON_TABLES`, ...)."""
    from optuna.storages._rdb.models import BaseModel

    return BaseModel.metadata.tables[name]


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """A study's system attributes (Optuna 5 has no public ``Study.system_attrs``)."""
    return storage_of(study).get_study_system_attrs(study_id(study))


def hypervolume(points: Any, reference: Any) -> float:
    """Hypervolume dominated by ``points`` (n x m, minimised) up to ``reference`` (m)."""
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(points, reference))


def check() -> list[str]:
    """Exercise every internal above on a throw-away in-memory SQLite study.

    Returns:
        One message per internal that the installed Optuna no longer provides as expected (empty: all good).
    """
    problems: list[str] = []
    version = optuna.__version__

    def problem(what: str, exc: BaseException | str) -> None:
        problems.append(f"optuna {version}: {what} changed ({exc}); update study/_optuna.py")

    if GENERATION_KEY != "NSGAIISampler:generation":
        problem("NSGAIISampler._get_generation_key()", repr(GENERATION_KEY))
    if not PARENT_KEY_PREFIX.startswith("NSGAIISampler:"):
        problem("NSGAIISampler._get_parent_cache_key_prefix()", repr(PARENT_KEY_PREFIX))
    try:
        table = heartbeat_table()
        if "trial_id" not in table.c:
            problem("TrialHeartbeatModel", "no trial_id column")
    except Exception as exc:  # noqa: BLE001 - any failure is the message
        problem("optuna.storages._rdb.models.TrialHeartbeatModel", exc)
    try:
        if study_name_limit() < 64:
            problem("StudyModel.study_name", f"length {study_name_limit()}")
        for name, columns in {**JSON_TABLES, "studies": ("study_id", "study_name", "study_id")}.items():
            table = rdb_table(name)
            missing = [c for c in columns if c not in table.c]
            if missing or len(table.primary_key.columns) != 1:
                problem(f"the RDB table {name}", f"columns {sorted(table.c.keys())}")
        if not {"trial_id", "study_id", "number"} <= set(rdb_table("trials").c.keys()):
            problem("the RDB table trials", f"columns {sorted(rdb_table('trials').c.keys())}")
    except Exception as exc:  # noqa: BLE001 - any failure is the message
        problem("optuna.storages._rdb.models", exc)
    try:
        if abs(hypervolume(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([2.0, 2.0])) - 3.0) > 1e-9:
            problem("optuna._hypervolume.compute_hypervolume", "wrong value on a 2-point front")
    except Exception as exc:  # noqa: BLE001 - any failure is the message
        problem("optuna._hypervolume.compute_hypervolume", exc)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = RDBStorage("sqlite:///:memory:")
    sampler = NSGAIISampler(population_size=2, seed=0)
    study = optuna.create_study(storage=storage, directions=["minimize", "minimize"], sampler=sampler)
    for _ in range(5):
        trial = study.ask()
        _ = trial.relative_params  # NSGA-II assigns the generation here
        x = trial.suggest_float("x", 0, 1)
        study.tell(trial, (x, 1 - x))
    try:
        if not isinstance(storage_of(study), BaseStorage):
            problem("Study._storage", type(storage_of(study)).__name__)
        if rdb_of(study) is not storage:
            problem("_CachedStorage._backend", "RDBStorage not found under the study's storage")
        sid = study_id(study)
        if storage.get_study_name_from_id(sid) != study.study_name:
            problem("Study._study_id", sid)
        frozen = study.trials[-1]
        if storage.get_trial(trial_id(frozen)).number != frozen.number:
            problem("FrozenTrial._trial_id", trial_id(frozen))
        generations = [t.system_attrs.get(GENERATION_KEY) for t in study.trials]
        if generations[0] != 0 or generations[-1] is None or generations[-1] < 1:
            problem("the NSGA-II generation attribute", generations)
        if not any(k.startswith(PARENT_KEY_PREFIX) for k in study_system_attrs(study)):
            problem("the NSGA-II parent population attribute", sorted(study_system_attrs(study)))
    except Exception as exc:  # noqa: BLE001 - any failure is the message
        problem("a private attribute", f"{type(exc).__name__}: {exc}")
    return problems
