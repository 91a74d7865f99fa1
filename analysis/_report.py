"""One self-contained offline HTML report of a kdzero study (plotly.js inlined once, no external scripts)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from analysis import _figures as F
from analysis._load import TrialRow, objective_index, study_json_attr
from analysis._out import make_folder, refuse_existing, write_file
from analysis._select import all_rows, select_trial, verified_rows
from study.fitness import SCALAR_NAME
from study.report import cost_lines
from study.verify import load_side_study, reference, student, verification_cost
from study.worker import CONFIG_ATTR

FIGURE_IDS = (
    "pareto-3d",
    "pareto-2d",
    "objectives-per-generation",
    "op-frequency",
    "rejections",
    "shrinkage-weights",
    "param-importances",
)
TABLE_IDS = ("pareto-table", "known-vs-chosen")


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, as data."""

    rows: list[TrialRow]
    front: set[int]
    chosen: TrialRow
    select: str
    top_k: int
    figures: dict[str, go.Figure]
    known_rows: list[TrialRow]
    rejections: dict[str, int]
    shrinkage: dict[str, dict[str, float]]
    importances: dict[str, dict[str, float] | str]
    verified: list[dict[str, Any]] | None = None
    reference_acc: float | None = None
    verify_cost: list[dict[str, Any]] | None = None
    student: dict[str, Any] | None = None


def collect(
    study: optuna.Study,
    select: str | None = None,
    trial: int | None = None,
    top_k: int = 20,
    known: dict[str, Any] | None = None,
    importance_trees: int = 16,
) -> ReportData:
    """Gather the report's data and figures.

    Args:
        study: A kdzero study with at least one COMPLETE trial.
        select: Rule that picks the chosen trial (``verified``, ``scalar`` or ``accuracy``; ``None``:
            verified when the study has been verified, else scalar), unless ``trial`` is given.
        trial: Explicit trial number to compare the known distillers against.
        top_k: Number of best trials counted in the operation-frequency figure.
        known: Name -> DistillerSpec table for marking known distillers (default ``spaces.KNOWN_DISTILLERS``).
        importance_trees: Trees of the fANOVA forest behind the parameter importances.
    """
    rows = all_rows(study, known)
    front = {t.number for t in study.best_trials}
    chosen_number = select_trial(study, select, trial).number
    chosen = next(r for r in rows if r.number == chosen_number)
    freq = F.op_frequency(study, rows, top_k)
    rejections = F.rejection_counts(study)
    shrinkage = F.stored_shrinkage(study)
    importances = F.param_importances(study, n_trees=importance_trees)
    figures = {
        "pareto-3d": F.pareto_figure(rows, front),
        "pareto-2d": F.pareto_projections_figure(rows, front),
        "objectives-per-generation": F.generation_figure(F.generation_stats(rows)),
        "op-frequency": F.op_frequency_figure(freq, min(top_k, len(rows))),
        "rejections": F.rejection_figure(rejections, F.trial_states(study)),
        "shrinkage-weights": F.shrinkage_figure(shrinkage),
        "param-importances": F.importance_figure(importances),
    }
    known_rows = sorted((r for r in rows if r.known), key=lambda r: r.scalar)
    table = verified_rows(study)
    rule = select or ("verified" if table else "scalar")
    side = load_side_study(study)
    ref = reference(side) if side is not None else None
    return ReportData(
        rows,
        front,
        chosen,
        rule if trial is None else f"trial {trial}",
        top_k,
        figures,
        known_rows,
        rejections,
        shrinkage,
        importances,
        table,
        float(ref.value) if ref is not None and ref.value is not None else None,
        verification_cost(study, side) if side is not None else None,
        student(study),
    )


def verified_table_html(table: list[dict[str, Any]]) -> str:
    """HTML table of the verification stage (every stored string escaped)."""
    esc = html.escape
    head = (
        "<tr><th>candidate</th><th>formula</th><th>seeds</th><th>reached</th><th>val acc (mean)</th>"
        "<th>std</th></tr>"
    )
    body = []
    for row in table:
        label = "CE reference" if row.get("trial") is None else f"#{row['trial']}"
        acc, frac = row.get("val_acc"), row.get("fraction")
        reached = f"{frac:.0%} of the schedule" if isinstance(frac, (int, float)) else ""
        body.append(
            f"<tr><td>{esc(label)}</td><td><code>{esc(str(row.get('formula', '')))}</code></td>"
            f"<td>{esc(str(row.get('seeds')))}</td><td>{reached}</td>"
            f"<td>{'' if acc is None else f'{acc:.4f}'}</td>"
            f"<td>{_fmt(row.get('val_acc_std'))}</td></tr>"
        )
    return f'<table id="verified-table">{head}{"".join(body)}</table>'


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def rows_table(rows: list[TrialRow], table_id: str, chosen: int | None = None) -> str:
    """HTML table of trial rows (every stored string escaped); the chosen trial's row is bold."""
    head = (
        "trial",
        "known",
        "formula",
        "val_ce",
        "sharpness_gap",
        "cka_gap",
        "scalar",
        "val accuracy",
        "generation",
    )
    header = "".join(f"<th>{h}</th>" for h in head)
    out = [f'<table id="{table_id}"><thead><tr>{header}</tr></thead><tbody>']
    for r in rows:
        style = ' class="chosen"' if r.number == chosen else ""
        cells = (
            r.number,
            r.known or "",
            r.formula,
            _fmt(r.val_ce),
            _fmt(r.sharpness_gap),
            _fmt(r.cka_gap),
            _fmt(r.scalar),
            _fmt(r.accuracy),
            "" if r.generation is None else r.generation,
        )
        out.append(f"<tr{style}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
tr.chosen { font-weight: bold; background: #fff3cd; }
code, pre { background: #f5f5f5; padding: 0.1em 0.3em; }
"""


def render(study: optuna.Study, data: ReportData) -> str:
    """The report HTML: one inlined copy of plotly.js, figures as divs, tables of the front and known ones."""
    esc = html.escape
    front_rows = sorted((r for r in data.rows if r.number in data.front), key=lambda r: (r.scalar, r.number))
    config = study_json_attr(study, CONFIG_ATTR)
    exp = config.get("experiment", {}) if isinstance(config, dict) else {}
    names = list(objective_index(study))
    teachers = [str(t.get("model")) for t in exp.get("teachers") or []] or [str(exp.get("teacher", "?"))]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>kdzero report: {esc(study.study_name)}</title>",
        f"<style>{CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>kdzero study {esc(study.study_name)}</h1>",
        f"<p>Student <b>{esc(str(exp.get('student', '?')))}</b> &larr; teacher(s) "
        f"<b>{esc(', '.join(teachers))}</b> on "
        f"<b>{esc(str(exp.get('dataset', {}).get('name', '?')))}</b>. "
        f"{len(data.rows)} complete trials, {len(data.front)} on the Pareto front. Objectives (minimised): "
        f"{esc(', '.join(names))}; scalar (the scalarised fitness) = {esc(SCALAR_NAME)}, "
        "where cka_gap = 1 - linear CKA.</p>",
        f"<p>Chosen trial ({esc(data.select)}): <b>{data.chosen.number}</b> "
        f"<code>{esc(data.chosen.formula)}</code></p>",
    ]
    if data.reference_acc is not None:
        parts.append(
            f"<p>CE reference (no distiller) at the proxy's fidelity: val acc {data.reference_acc:.4f}.</p>"
        )
    if data.verified:
        win = data.verified[0]
        verdict = (
            "<p><b>The verified winner is plain cross-entropy training</b>: no distiller beat it.</p>"
            if win.get("trial") is None
            else ""
        )
        parts += [
            "<h2>Verification (successive halving over the schedule, other seeds)</h2>",
            verdict,
            verified_table_html(data.verified),
            *(f"<p>{esc(line)}</p>" for line in cost_lines(data.verify_cost)),
        ]
        if data.student is not None:
            test = data.student.get("test_acc")
            parts.append(
                f"<p>Trained student: seed {esc(str(data.student.get('seed')))}, val acc "
                f"{_fmt(data.student.get('val_acc'))}"
                + (
                    f", test acc {test:.4f} (measured once, after the choice)"
                    if isinstance(test, float)
                    else ""
                )
                + "; <code>python -m analysis export</code> writes it as <code>student.pt</code>.</p>"
            )
    sections = {
        "pareto-3d": "Pareto front",
        "pareto-2d": None,
        "objectives-per-generation": "Objectives per generation",
        "op-frequency": "Operations among the top trials",
        "rejections": "Rejections",
        "shrinkage-weights": "Search-space shrinkage",
        "param-importances": "Parameter importances",
    }
    for div_id in FIGURE_IDS:
        if sections[div_id]:
            parts.append(f"<h2>{sections[div_id]}</h2>")
        parts.append(data.figures[div_id].to_html(full_html=False, include_plotlyjs=False, div_id=div_id))
        if div_id == "pareto-2d":
            parts += [
                "<h3>Pareto trials (sorted by scalarised fitness)</h3>",
                rows_table(front_rows, "pareto-table", data.chosen.number),
            ]
        if div_id == "rejections" and data.rejections:
            parts.append("<p>Rejection reasons: " + esc(json.dumps(data.rejections)) + "</p>")
    compared = data.known_rows if data.chosen in data.known_rows else [*data.known_rows, data.chosen]
    parts += [
        "<h2>Known distillers against the chosen trial</h2>",
        rows_table(compared, "known-vs-chosen", data.chosen.number),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(
    study: optuna.Study,
    out: str | Path,
    *,
    select: str | None = None,
    trial: int | None = None,
    top_k: int = 20,
    known: dict[str, Any] | None = None,
    importance_trees: int = 16,
    force: bool = False,
) -> Path:
    """Write the offline HTML report (refusals come before the figures are computed).

    Args:
        study: A kdzero study with at least one COMPLETE trial.
        out: The HTML file; its folder is created if needed.
        select: Selection rule of the chosen trial (see :func:`collect`).
        trial: Explicit trial number instead of a rule.
        top_k: Best trials counted in the operation-frequency figure.
        known: Name -> DistillerSpec table of known distillers (default ``spaces.KNOWN_DISTILLERS``).
        importance_trees: Trees of the fANOVA forest behind the parameter importances.
        force: Replace ``out`` when it exists (else it is refused).

    Returns:
        The path written.

    Raises:
        ValueError: ``out`` a folder, an existing file without ``force``, or not writable; one line naming it.
    """
    path = Path(out)
    if path.is_dir():
        raise ValueError(
            f"--out {str(path)!r} is a folder: give the HTML file to write, e.g. --out {path / 'report.html'}"
        )
    refuse_existing([path], force, "it")
    make_folder(path.parent, "the report's folder")
    data = collect(study, select, trial, top_k, known, importance_trees)
    write_file(path, render(study, data))
    return path
