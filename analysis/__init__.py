"""Read a finished or running kdzero study: Pareto front, selection, export, offline HTML report."""

from analysis._export import ExportResult, export_trial, full_schedule, render_script, study_experiment
from analysis._figures import (
    GenerationStat,
    generation_stats,
    op_frequency,
    param_importances,
    rejection_counts,
    stored_shrinkage,
)
from analysis._load import OBJECTIVES, SLOTS, TrialRow, known_name, load_study, objective_index
from analysis._report import FIGURE_IDS, TABLE_IDS, ReportData, collect, write_report
from analysis._select import SELECTIONS, all_rows, get_trial, pareto_rows, select_trial, sort_rows

__all__ = [
    "FIGURE_IDS",
    "OBJECTIVES",
    "SELECTIONS",
    "SLOTS",
    "TABLE_IDS",
    "ExportResult",
    "GenerationStat",
    "ReportData",
    "TrialRow",
    "all_rows",
    "collect",
    "export_trial",
    "full_schedule",
    "generation_stats",
    "get_trial",
    "known_name",
    "load_study",
    "objective_index",
    "op_frequency",
    "pareto_rows",
    "param_importances",
    "rejection_counts",
    "render_script",
    "select_trial",
    "stored_shrinkage",
    "sort_rows",
    "study_experiment",
    "write_report",
]
