"""The search's sampler: Optuna's NSGA-II over the three objectives, wrapped by search-space shrinkage."""

from __future__ import annotations

import json

import optuna
import sqlalchemy
from optuna.samplers import NSGAIISampler
from optuna.samplers.nsgaii import (
    BLXAlphaCrossover,
    SBXCrossover,
    SPXCrossover,
    UNDXCrossover,
    UniformCrossover,
    VSBXCrossover,
)
from optuna.trial import FrozenTrial

from spaces import DistillerSpec, spec_from_params
from study._optuna import (
    GENERATION_KEY,
    PARENT_KEY_PREFIX,
    rdb_of,
    rdb_table,
    storage_of,
    study_id,
    study_system_attrs,
)
from study.config import CROSSOVERS, SearchConfig
from study.shrinkage import ShrinkageSampler
from study.storage import with_retry

SEED_SLOTS_ATTR = "kdzero_seed_slots"
"""Study system attr: how many sampler seed slots worker processes have claimed (:func:`claim_seed_slots`)."""
SEED_ATTR = "sampler_seed"
"""Trial user attr: the seed of the sampler of the worker process that ran the trial."""
SLOT_STRIDE = 1000
"""Seeds of two slots differ by this much (``search.seed + SLOT_STRIDE * slot``)."""


def _crossover(search: SearchConfig) -> optuna.samplers.nsgaii.BaseCrossover:
    table = {
        "blxalpha": BLXAlphaCrossover,
        "sbx": SBXCrossover,
        "spx": SPXCrossover,
        "undx": UNDXCrossover,
        "uniform": lambda: UniformCrossover(search.swapping_prob),
        "vsbx": VSBXCrossover,
    }
    if search.crossover not in table:
        raise ValueError(f"unknown crossover {search.crossover!r}; valid crossovers are {CROSSOVERS}")
    return table[search.crossover]()


def build_sampler(
    search: SearchConfig, *, worker_index: int = 0, refresh_s: float = 5.0
) -> optuna.samplers.BaseSampler:
    """NSGA-II (population, crossover, mutation from ``search``) wrapped by :class:`ShrinkageSampler`.

    With ``search.sampler == "random"``: Optuna's ``RandomSampler`` alone (the baseline of the search);
    ``"tpe"``: Optuna's multivariate ``TPESampler`` (multi-objective, constant liar for parallel workers),
    started by its first ``search.population`` trials (generation 0: the known distillers, then random ones).

    Args:
        search: Search settings.
        worker_index: The worker's seed slot (:func:`claim_seed_slots`), so that workers draw different
            candidates: the seed is :func:`slot_seed`.
        refresh_s: How often shrinkage weights are recomputed from storage.
    """
    seed = slot_seed(search, worker_index)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            constant_liar=True,
            n_startup_trials=search.population,
        )
    nsga = NSGAIISampler(
        population_size=search.population,
        mutation_prob=search.mutation_prob,
        crossover=_crossover(search),
        crossover_prob=search.crossover_prob,
        swapping_prob=search.swapping_prob,
        seed=seed,
    )
    return ShrinkageSampler(
        nsga, reasons=search.shrink_reasons, floor=search.shrink_floor, refresh_s=refresh_s, seed=seed + 1
    )


def trial_generation(trial: FrozenTrial) -> int | None:
    """NSGA-II generation of a stored trial (``None`` when it was never assigned one).

    The ``generation`` user attr written by the objective, else NSGA-II's own system attr.
    """
    gen = trial.user_attrs.get("generation")
    if gen is None:
        gen = trial.system_attrs.get(GENERATION_KEY)
    return int(gen) if gen is not None else None


def parent_ids(study: optuna.Study, generation: int) -> list[int] | None:
    """Trial ids of the parent population NSGA-II selected for ``generation`` (``None``: not yet)."""
    return study_system_attrs(study).get(PARENT_KEY_PREFIX + str(generation))


def slot_seed(search: SearchConfig, slot: int) -> int:
    """The sampler seed of seed slot ``slot``: ``search.seed + SLOT_STRIDE * slot``."""
    return search.seed + SLOT_STRIDE * slot


def claim_seed_slots(study: optuna.Study, n: int = 1) -> int:
    """Claim ``n`` consecutive sampler seed slots of the study, atomically, for this process's workers.

    The study counts the slots claimed so far in its system attr :data:`SEED_SLOTS_ATTR`. The first claim on
    a new study gets slot 0 (a single run keeps its seeds: worker ``i`` of the first ``study search`` seeds
    ``search.seed + 1000 * i``); a second parent, a resumed run or a ``study worker`` started by hand get the
    next slots, so no two worker processes of a study share a sampler seed.

    Args:
        study: The study (on an RDB storage the claim is one locked read-increment-write).
        n: Slots to claim.

    Returns:
        The first slot claimed.
    """
    rdb = rdb_of(study)
    if rdb is None:  # a storage in this process only (in-memory): nothing to race with
        storage = storage_of(study)
        first = int(study_system_attrs(study).get(SEED_SLOTS_ATTR, 0))
        storage.set_study_system_attr(study_id(study), SEED_SLOTS_ATTR, first + n)
        return first
    table = rdb_table("study_system_attributes")
    where = (table.c.study_id == study_id(study)) & (table.c.key == SEED_SLOTS_ATTR)

    def claim() -> int:
        # SQLite: every transaction of a kdzero storage is BEGIN IMMEDIATE (study.storage), so the read and
        # the write are one; PostgreSQL / MySQL: the row is locked (FOR UPDATE); two first claims racing on
        # the insert meet the unique (study_id, key) constraint, and the loser reads again.
        with rdb.engine.begin() as con:
            row = con.execute(sqlalchemy.select(table.c.value_json).where(where).with_for_update()).first()
            if row is None:
                con.execute(
                    table.insert().values(study_id=study_id(study), key=SEED_SLOTS_ATTR, value_json=str(n))
                )
                return 0
            first = int(json.loads(row[0]))
            con.execute(table.update().where(where).values(value_json=json.dumps(first + n)))
            return first

    for _ in range(10):
        try:
            return with_retry(claim)
        except sqlalchemy.exc.IntegrityError:
            continue
    return with_retry(claim)


def trial_spec(trial: FrozenTrial) -> DistillerSpec:
    """The distiller a stored trial evaluated: rebuilt from its genes, else read from its ``spec`` user attr.

    The genes (params) are the source of truth of a search trial; a trial without a full set of genes (e.g. a
    benchmark's TPE trial over tau and W only) is read from the ``spec`` JSON the objective stored. Both are
    plain data: nothing from storage is evaluated or imported.

    Raises:
        ValueError: Neither gives a valid spec (the message names the trial).
    """
    try:
        return spec_from_params(dict(trial.params))
    except (ValueError, TypeError) as from_params:
        raw = trial.user_attrs.get("spec")
        if raw is None:
            raise ValueError(f"trial {trial.number}: {from_params}") from None
        try:
            return DistillerSpec.from_json(raw) if isinstance(raw, str) else DistillerSpec.from_dict(raw)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"trial {trial.number}: its 'spec' user attr is not a spec: {exc}") from None
