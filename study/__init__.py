"""Optuna side of kdzero: configuration, NSGA-II sampler with shrinkage, pruner, storage, workers, CLI."""

from study._optuna import GENERATION_KEY
from study.config import PRESETS, RunConfig, SearchConfig, StudyConfig, load_config
from study.fitness import OBJECTIVES
from study.objective import Objective
from study.pruner import PercentileEarlyStop
from study.report import StudySummary, final_report, format_summary, scalarised, summarise
from study.sampler import build_sampler, trial_generation
from study.search import ConfigMismatch, enqueue_known, open_study, run_search
from study.shrinkage import ShrinkageSampler, shrinkage_weights
from study.storage import make_storage, mask_url, parse_url
from study.worker import WorkerArgs, run_worker, stored_config

__all__ = [
    "GENERATION_KEY",
    "OBJECTIVES",
    "PRESETS",
    "ConfigMismatch",
    "PercentileEarlyStop",
    "Objective",
    "RunConfig",
    "SearchConfig",
    "ShrinkageSampler",
    "StudyConfig",
    "StudySummary",
    "WorkerArgs",
    "build_sampler",
    "enqueue_known",
    "final_report",
    "format_summary",
    "load_config",
    "make_storage",
    "mask_url",
    "open_study",
    "parse_url",
    "run_search",
    "run_worker",
    "scalarised",
    "shrinkage_weights",
    "stored_config",
    "summarise",
    "trial_generation",
]
