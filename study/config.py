"""Typed configuration of a search: experiment, search settings, run settings; presets, files."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spaces import KNOWLEDGE, read_data_file, short_repr
from trainers.config import ExperimentConfig, from_mapping, require
from trainers.rejection import REASONS as REJECT_REASONS

CROSSOVERS = ("blxalpha", "sbx", "spx", "undx", "uniform", "vsbx")
SAMPLERS = ("nsga2", "random", "tpe")
PRESETS = ("default", "paper", "smoke")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Paths that may differ between machines joining one study; left out of the identity check.
LOCATION_KEYS = (
    ("experiment", "cache_dir"),
    ("experiment", "dataset", "root"),
    ("experiment", "teacher_checkpoint"),  # the teacher's identity is its content hash, kdzero_teacher
)
# Settings that only size the work (the trial budget, whose target is stored apart as kdzero_target, and the
# verification's breadth): a finished search is continued past its budget, or verified more broadly, by
# raising them, so they are left out of the identity check too; a rerun stores its values (open_study).
BUDGET_KEYS = (
    ("search", "generations"),
    ("search", "verify_top"),
    ("search", "verify_seeds"),
    ("search", "verify_known"),
    ("search", "verify_rungs"),
    ("search", "verify_keep"),
)
# Execution settings, like the device: bf16 autocast changes how a run computes, not what it is (its default
# changed from on to off on 2026-12-04; studies stored before are opened with either value).
EXECUTION_KEYS = (("experiment", "teacher_train", "amp"), ("experiment", "student_train", "amp"))


@dataclass(frozen=True)
class SearchConfig:
    """Settings that define a study (stored with it; a rerun with different ones is refused).

    Args:
        population: NSGA-II population size (individuals per generation).
        generations: Generations of the default trial budget (``population * generations`` trials).
        crossover: NSGA-II crossover (one of :data:`CROSSOVERS`).
        crossover_prob: Probability that a child is made by crossover rather than copied from one parent.
        swapping_prob: Probability of taking each gene from the other parent in uniform crossover.
        mutation_prob: Probability of redrawing each gene; ``None`` uses ``1 / number of genes``.
        seed: Seed of the sampler (each worker adds its index).
        knowledge: Knowledge kinds the search may distil (``logits``, ``embedding``, ``feature``).
        seed_known: Enqueue the known distillers (KD, DIST, AT, ...) as the first generation.
        seed_weight_steps: Loss-scale variants of each known distiller also enqueued at the start, as steps on
            the ``WEIGHTS`` grid from its published weight (e.g. ``[-1, -2]``: one and two steps down; KD's
            W 1 gives W 0.5 and 0.1). They are candidates like any other (early-stoppable, NSGA-II parents,
            counted in the budget), not references; a variant off the grid or a twin of another is skipped.
            Default ``[]``: the published distillers only (the paper's generation 0).
        shrink_floor: Smallest shrinkage weight of an op choice (> 0, so no choice disappears).
        shrink_reasons: Rejection reasons that count against the op choices of a rejected trial.
        early_stop_percentile: A proxy run below this percentile of completed trials at a checkpoint stops.
        early_stop_warmup: No early stopping until this many trials have completed.
        verify_top: Distinct candidates re-trained after the search, the Pareto front first, then the next
            non-dominated fronts (with the ``verify_known`` best known distillers and the CE reference); 0
            disables the verification.
        verify_seeds: Seeds of each verification run (other than the search's seed).
        verify_known: Known distillers (generation 0's KD, DIST, AT, ... that completed their proxy) the
            verification trains besides the ``verify_top`` candidates, best scalarised fitness first
            (default 1: the best one; 0: none; a large number: all of them).
        verify_rungs: The verification's rungs: increasing fractions of the full schedule (whole training
            split). Every verified distiller trains to the first rung on every verification seed; at each
            rung the ``verify_keep`` best by mean validation accuracy go on to the next one, continuing their
            runs from the rung's checkpoints, and the best known distiller and plain CE always go on, so the
            choice is made at the last rung (default ``[0.25, 0.5, 1.0]``: the full schedule; ``[0.25]``: one
            rung at a quarter of it).
        verify_keep: How many distillers (plain CE aside) go on from a rung to the next; ``None``: the better
            half, ``ceil(n / 2)`` of the ``n`` that ran the rung.
        sampler: ``nsga2`` (KD-Zero: NSGA-II with search-space shrinkage), ``random`` (Optuna's
            ``RandomSampler``, the baseline: same generation 0, budget and verification, only the sampler
            differs) or ``tpe`` (Optuna's multi-objective ``TPESampler``, multivariate, its first
            ``population`` trials random: an alternative to evolution, same generation 0 and verification).
    """

    population: int = 8
    generations: int = 4
    crossover: str = "uniform"
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    mutation_prob: float | None = None
    seed: int = 0
    knowledge: tuple[str, ...] = ("logits",)
    seed_known: bool = True
    seed_weight_steps: tuple[int, ...] = ()
    shrink_floor: float = 0.05
    shrink_reasons: tuple[str, ...] = tuple(r for r in REJECT_REASONS if r != "early_stop")
    early_stop_percentile: float = 25.0
    early_stop_warmup: int = 4
    verify_top: int = 5
    verify_seeds: int = 2
    verify_known: int = 1
    verify_rungs: tuple[float, ...] = (0.25, 0.5, 1.0)
    verify_keep: int | None = None
    sampler: str = "nsga2"

    def __post_init__(self) -> None:
        require(
            self.sampler in SAMPLERS,
            f"search.sampler must be one of {SAMPLERS}, got {short_repr(self.sampler)}",
        )
        require(
            isinstance(self.verify_top, int)
            and not isinstance(self.verify_top, bool)
            and self.verify_top >= 0,
            f"search.verify_top must be an int >= 0, got {short_repr(self.verify_top)}",
        )
        require(
            isinstance(self.verify_seeds, int)
            and not isinstance(self.verify_seeds, bool)
            and self.verify_seeds >= 1,
            f"search.verify_seeds must be an int >= 1, got {short_repr(self.verify_seeds)}",
        )
        require(
            isinstance(self.verify_known, int)
            and not isinstance(self.verify_known, bool)
            and self.verify_known >= 0,
            f"search.verify_known must be an int >= 0, got {short_repr(self.verify_known)}",
        )
        rungs = self.verify_rungs
        require(
            isinstance(rungs, tuple)
            and len(rungs) >= 1
            and all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in rungs),
            f"search.verify_rungs must be a non-empty list of fractions of the full schedule, got "
            f"{short_repr(list(rungs) if isinstance(rungs, tuple) else rungs)}",
        )
        outside = [f for f in rungs if not 0 < f <= 1]
        require(
            not outside,
            f"search.verify_rungs: {short_repr(outside[0] if outside else None)} is outside (0, 1] "
            f"(fractions of the full schedule), in {short_repr(list(rungs))}",
        )
        require(
            all(a < b for a, b in zip(rungs, rungs[1:])),
            f"search.verify_rungs must increase, got {short_repr(list(rungs))}",
        )
        require(
            self.verify_keep is None
            or (
                isinstance(self.verify_keep, int)
                and not isinstance(self.verify_keep, bool)
                and self.verify_keep >= 1
            ),
            f"search.verify_keep must be None or an int >= 1 (distillers going on to the next rung), got "
            f"{short_repr(self.verify_keep)}",
        )
        require(
            isinstance(self.population, int) and self.population >= 2,
            f"search.population must be an int >= 2, got {short_repr(self.population)}",
        )
        require(
            isinstance(self.generations, int) and self.generations >= 1,
            f"search.generations must be an int >= 1, got {short_repr(self.generations)}",
        )
        require(
            self.crossover in CROSSOVERS,
            f"search.crossover must be one of {CROSSOVERS}, got {short_repr(self.crossover)}",
        )
        require(
            0 <= self.crossover_prob <= 1,
            f"search.crossover_prob must be in [0, 1], got {short_repr(self.crossover_prob)}",
        )
        require(
            0 <= self.swapping_prob <= 1,
            f"search.swapping_prob must be in [0, 1], got {short_repr(self.swapping_prob)}",
        )
        require(
            self.mutation_prob is None or 0 <= self.mutation_prob <= 1,
            f"search.mutation_prob must be None or in [0, 1], got {short_repr(self.mutation_prob)}",
        )
        steps = self.seed_weight_steps
        require(
            isinstance(steps, tuple)
            and all(isinstance(k, int) and not isinstance(k, bool) and k != 0 for k in steps)
            and len(set(steps)) == len(steps),
            f"search.seed_weight_steps must be a list of distinct non-zero ints (steps on the weight grid), "
            f"got {short_repr(list(steps) if isinstance(steps, tuple) else steps)}",
        )
        require(
            self.seed_known or not steps,
            f"search.seed_weight_steps {short_repr(list(steps))} needs search.seed_known = true (they are "
            "variants of the known distillers)",
        )
        valid_knowledge = KNOWLEDGE
        require(
            len(self.knowledge) > 0 and all(k in valid_knowledge for k in self.knowledge),
            f"search.knowledge must be a non-empty subset of {valid_knowledge}, got "
            f"{short_repr(self.knowledge)}",
        )
        require(
            0 < self.shrink_floor <= 1,
            f"search.shrink_floor must be in (0, 1], got {short_repr(self.shrink_floor)}",
        )
        bad = sorted(set(self.shrink_reasons) - set(REJECT_REASONS))
        require(
            not bad, f"search.shrink_reasons has unknown reason(s) {bad}; valid reasons are {REJECT_REASONS}"
        )
        require(
            0 <= self.early_stop_percentile < 100,
            f"search.early_stop_percentile must be in [0, 100), got {short_repr(self.early_stop_percentile)}",
        )
        require(
            isinstance(self.early_stop_warmup, int) and self.early_stop_warmup >= 1,
            f"search.early_stop_warmup must be an int >= 1, got {short_repr(self.early_stop_warmup)}",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["knowledge"], d["shrink_reasons"] = list(self.knowledge), list(self.shrink_reasons)
        d["seed_weight_steps"] = list(self.seed_weight_steps)
        d["verify_rungs"] = list(self.verify_rungs)
        return d

    @property
    def verify_fraction(self) -> float:
        """The last rung: how much of the full schedule the verification's choice is made at."""
        return float(self.verify_rungs[-1])


@dataclass(frozen=True)
class RunConfig:
    """Settings of one run (not stored as the study's identity: they may change between reruns).

    Args:
        storage: SQLAlchemy URL of the study storage (sqlite, postgresql, mysql).
        study: Study name.
        n_trials: Study-wide target of finished trials; ``None``: population x generations.
        timeout: Seconds after which no new trial starts; ``None`` = no limit.
        workers: Worker processes; 0 = one per CPU core.
        devices: Devices the workers are spread over round-robin (several workers per device allowed).
        threads: Torch intra-op threads per worker; ``None`` = CPU cores // workers (at least 1).
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds without heartbeat after which a running trial is failed and retried.
        max_retry: How many times a trial of a dead worker is retried.
        artifacts: The study's Optuna artifact store (verification checkpoints, the trained student): a
            folder, ``file://`` URL or ``s3://bucket[/prefix]``; ``None``: a folder beside the SQLite file, or
            under the cache folder for other storages (``study.artifacts.default_location``).
    """

    storage: str = "sqlite:///kdzero.db"
    study: str = "kdzero"
    n_trials: int | None = None
    timeout: float | None = None
    workers: int = 0
    devices: tuple[str, ...] = ("cpu",)
    threads: int | None = None
    heartbeat_interval: int = 20
    grace_period: int = 60
    max_retry: int = 2
    artifacts: str | None = None

    def __post_init__(self) -> None:
        require(
            isinstance(self.study, str) and bool(self.study),
            f"run.study must be a non-empty string, got {short_repr(self.study)}",
        )
        from study.storage import check_study_name  # deferred: storage imports optuna

        check_study_name(self.study, "run.study")
        require(
            self.n_trials is None or (isinstance(self.n_trials, int) and self.n_trials >= 1),
            f"run.n_trials must be None or an int >= 1, got {short_repr(self.n_trials)}",
        )
        require(
            self.timeout is None or self.timeout > 0,
            f"run.timeout must be None or > 0, got {short_repr(self.timeout)}",
        )
        require(
            isinstance(self.workers, int) and self.workers >= 0,
            f"run.workers must be an int >= 0, got {short_repr(self.workers)}",
        )
        require(
            self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
            f"run.threads must be None or an int >= 1, got {short_repr(self.threads)}",
        )
        require(
            len(self.devices) > 0 and all(isinstance(d, str) and d for d in self.devices),
            f"run.devices must be a non-empty list of device names, got {short_repr(self.devices)}",
        )
        require(
            isinstance(self.heartbeat_interval, int) and self.heartbeat_interval >= 1,
            f"run.heartbeat_interval must be an int >= 1, got {short_repr(self.heartbeat_interval)}",
        )
        require(
            isinstance(self.grace_period, int) and self.grace_period > self.heartbeat_interval,
            f"run.grace_period must be an int > heartbeat_interval ({self.heartbeat_interval}), "
            f"got {short_repr(self.grace_period)}",
        )
        require(
            isinstance(self.max_retry, int) and self.max_retry >= 0,
            f"run.max_retry must be >= 0, got {short_repr(self.max_retry)}",
        )
        require(
            self.artifacts is None or (isinstance(self.artifacts, str) and bool(self.artifacts.strip())),
            f"run.artifacts must be None or a folder / URL, got {short_repr(self.artifacts)}",
        )

    @property
    def n_workers(self) -> int:
        """Worker count with 0 resolved to one per CPU core."""
        return self.workers or max(1, os.cpu_count() or 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["devices"] = list(self.devices)
        return d


@dataclass(frozen=True)
class StudyConfig:
    """Everything a search needs: the experiment, the search settings (identity) and the run settings."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def n_trials(self) -> int:
        """Study-wide target of finished trials."""
        return self.run.n_trials or self.search.population * self.search.generations

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all three parts."""
        return {
            "experiment": self.experiment.to_dict(),
            "search": self.search.to_dict(),
            "run": self.run.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"config: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"experiment", "search", "run"})
        if unknown:
            raise ValueError(
                f"config: unknown key(s) {short_repr(unknown)}; valid keys are "
                "['experiment', 'run', 'search']"
            )
        return cls(
            experiment=ExperimentConfig.from_dict(data.get("experiment", {})),
            search=from_mapping(SearchConfig, _migrate_search(data.get("search", {})), "search"),
            run=from_mapping(RunConfig, data.get("run", {}), "run"),
        )

    def identity(self) -> dict[str, Any]:
        """The part stored as the study's identity: experiment + search, less what may differ between runs.

        Machine-local paths, the settings that only size the work (``search.generations``, ``verify_top``,
        ``verify_seeds``, ``verify_known``: :data:`BUDGET_KEYS`) and execution settings (``amp``:
        :data:`EXECUTION_KEYS`) are left out.
        """
        d = {"experiment": self.experiment.to_dict(), "search": self.search.to_dict()}
        for path in (*LOCATION_KEYS, *BUDGET_KEYS, *EXECUTION_KEYS):
            node = d
            for key in path[:-1]:
                node = node[key]
            node.pop(path[-1], None)
        for teacher in d["experiment"].get("teachers", []):  # machine-local too: identity is kdzero_teacher
            teacher.pop("checkpoint", None)
        return d

    def stored_json(self) -> str:
        """JSON stored in the study user attr ``kdzero_config``."""
        return json.dumps(
            {"experiment": self.experiment.to_dict(), "search": self.search.to_dict()}, sort_keys=True
        )


def _migrate_search(search: Any) -> Any:
    """Read a stored ``[search]`` of before the rung plan: ``verify_fraction = f`` is ``verify_rungs = [f]``.

    Studies stored before verification had rungs keep the plan they were made with; a config file that
    names ``verify_fraction`` is read the same way.
    """
    if not isinstance(search, dict) or "verify_fraction" not in search:
        return search
    out = dict(search)
    fraction = out.pop("verify_fraction")
    if "verify_rungs" in out:
        raise ValueError(
            "search: verify_fraction (the one rung of older configs) and verify_rungs are both given; "
            "keep verify_rungs"
        )
    out["verify_rungs"] = [fraction]
    return out


def identity_diff(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    """Unified diff of two identity dicts as indented JSON; empty when they are equal."""
    a = json.dumps(stored, indent=1, sort_keys=True).splitlines()
    b = json.dumps(wanted, indent=1, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "stored in study", "requested", lineterm="", n=1))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of ``over`` win; nested mappings merge."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON config file into a dict (no code is evaluated).

    Read through ``spaces.read_data_file``: at most 1 MiB, UTF-8, nested at most 32 levels.

    Raises:
        ValueError: One line naming the file: not found, too large, not UTF-8, nested too deep, not valid
            TOML / JSON, or not a mapping at top level.
    """
    p = Path(path)
    data = read_data_file(p, "config file")
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping at top level")
    return data


def preset_dict(name: str) -> dict[str, Any]:
    """The raw dict of a preset shipped in ``configs/<name>.toml``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are {PRESETS}")
    return read_config_file(CONFIG_DIR / f"{name}.toml")


def load_config(
    preset: str = "default",
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> StudyConfig:
    """Build a :class:`StudyConfig` from a preset, an optional file laid over it, then overrides.

    Args:
        preset: One of :data:`PRESETS`.
        path: Optional TOML/JSON file with ``[experiment]``, ``[search]`` and ``[run]`` tables.
        overrides: Nested dict laid over the result (command-line options).

    Returns:
        The validated configuration.
    """
    data = preset_dict(preset)
    if path is not None:
        data = deep_merge(data, read_config_file(path))
    if overrides:
        data = deep_merge(data, overrides)
    return StudyConfig.from_dict(data)
