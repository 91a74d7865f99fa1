"""The search's sampler: Optuna's NSGA-II over the three objectives, wrapped by search-space shrinkage."""

from __future__ import annotations

import optuna
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

from study._optuna import GENERATION_KEY, PARENT_KEY_PREFIX, study_system_attrs
from study.config import CROSSOVERS, SearchConfig
from study.shrinkage import ShrinkageSampler


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

    With ``search.sampler == "random"``: Optuna's ``RandomSampler`` alone (the baseline of the search).

    Args:
        search: Search settings.
        worker_index: Added to the seed so that workers draw different candidates.
        refresh_s: How often shrinkage weights are recomputed from storage.
    """
    seed = search.seed + 1000 * worker_index
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
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
    """NSGA-II generation of a stored trial (``None`` when it was never assigned one)."""
    return trial.system_attrs.get(GENERATION_KEY)


def parent_ids(study: optuna.Study, generation: int) -> list[int] | None:
    """Trial ids of the parent population NSGA-II selected for ``generation`` (``None``: not yet)."""
    return study_system_attrs(study).get(PARENT_KEY_PREFIX + str(generation))
