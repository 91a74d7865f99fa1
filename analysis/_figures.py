"""Figure builders of the report: each returns plain data (tested) and a plotly Figure built from it."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from analysis._load import OBJECTIVES, SLOTS, TrialRow, objective_index
from analysis._select import sort_rows
from study.fitness import SCALAR_NAME
from study.shrinkage import published_weights

LABELS = {"val_ce": "validation CE", "sharpness_gap": "sharpness gap", "cka_gap": "cka_gap (1 - CKA)"}


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, height=300)
    return fig


def _hover(r: TrialRow) -> str:
    acc = f"{r.accuracy:.4f}" if r.accuracy is not None else "n/a"
    known = f" [{r.known}]" if r.known else ""
    return f"trial {r.number}{known}<br>{r.formula}<br>acc {acc}, scalar {r.scalar:.4f}"


def _groups(rows: list[TrialRow], front: set[int]) -> list[tuple[str, list[TrialRow], dict[str, Any]]]:
    """Split rows into (name, rows, marker) groups: other trials, Pareto front, known distillers."""
    known = [r for r in rows if r.known]
    others = [r for r in rows if not r.known and r.number not in front]
    best = [r for r in rows if not r.known and r.number in front]
    return [
        ("trials", others, {"color": "lightgray", "size": 4}),
        ("Pareto front", best, {"color": "crimson", "size": 6}),
        ("known distillers", known, {"color": "royalblue", "size": 8, "symbol": "diamond"}),
    ]


def pareto_figure(rows: list[TrialRow], front: set[int]) -> go.Figure:
    """3-D scatter of the complete trials over (val_ce, sharpness_gap, cka_gap); front and known marked."""
    fig = go.Figure()
    for name, group, marker in _groups(rows, front):
        fig.add_trace(
            go.Scatter3d(
                x=[r.val_ce for r in group],
                y=[r.sharpness_gap for r in group],
                z=[r.cka_gap for r in group],
                mode="markers+text" if name == "known distillers" else "markers",
                text=[r.known or "" for r in group] if name == "known distillers" else None,
                hovertext=[_hover(r) for r in group],
                hoverinfo="text",
                name=name,
                marker=marker,
            )
        )
    scene = {
        "xaxis_title": LABELS["val_ce"],
        "yaxis_title": LABELS["sharpness_gap"],
        "zaxis_title": LABELS["cka_gap"],
    }
    fig.update_layout(title="Pareto front (3-D)", height=600, scene=scene)
    return fig


PAIRS = (("val_ce", "sharpness_gap"), ("val_ce", "cka_gap"), ("sharpness_gap", "cka_gap"))


def pareto_projections_figure(rows: list[TrialRow], front: set[int]) -> go.Figure:
    """The three 2-D projections of the Pareto-front plot."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[f"{LABELS[a]} vs {LABELS[b]}" for a, b in PAIRS])
    for col, (a, b) in enumerate(PAIRS, start=1):
        for name, group, marker in _groups(rows, front):
            fig.add_trace(
                go.Scatter(
                    x=[getattr(r, a) for r in group],
                    y=[getattr(r, b) for r in group],
                    mode="markers",
                    hovertext=[_hover(r) for r in group],
                    hoverinfo="text",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker=marker,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=LABELS[a], row=1, col=col)
        fig.update_yaxes(title_text=LABELS[b], row=1, col=col)
    fig.update_layout(title="Pareto front (2-D projections)", height=450)
    return fig


@dataclass(frozen=True)
class GenerationStat:
    """Best (minimum) and median of one objective over the complete trials of one generation."""

    generation: int
    objective: str
    best: float
    median: float
    count: int


def generation_stats(rows: list[TrialRow]) -> list[GenerationStat]:
    """Best and median of each objective per generation (trials without a generation are left out)."""
    by_gen: dict[int, list[TrialRow]] = {}
    for r in rows:
        if r.generation is not None:
            by_gen.setdefault(r.generation, []).append(r)
    stats = []
    for gen in sorted(by_gen):
        group = by_gen[gen]
        for obj in (*OBJECTIVES, "scalar"):
            vals = [getattr(r, obj) for r in group]
            stats.append(GenerationStat(gen, obj, min(vals), statistics.median(vals), len(vals)))
    return stats


def generation_figure(stats: list[GenerationStat]) -> go.Figure:
    """One panel per objective (and the scalarised fitness): best and median per generation."""
    title = "Objectives per generation (best and median)"
    if not stats:
        return _empty(title, "no generation information in the complete trials")
    names = (*OBJECTIVES, "scalar")
    fig = make_subplots(
        rows=1,
        cols=len(names),
        subplot_titles=[LABELS.get(n, f"scalar: {SCALAR_NAME}") for n in names],
    )
    for col, obj in enumerate(names, start=1):
        sel = [s for s in stats if s.objective == obj]
        gens = [s.generation for s in sel]
        for stat, color in (("best", "crimson"), ("median", "gray")):
            trace = go.Scatter(
                x=gens,
                y=[getattr(s, stat) for s in sel],
                mode="lines+markers",
                name=stat,
                legendgroup=stat,
                showlegend=col == 1,
                line={"color": color},
            )
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(title_text="generation", row=1, col=col)
    fig.update_layout(title=title, height=400)
    return fig


def op_frequency(study: optuna.Study, rows: list[TrialRow], top_k: int = 20) -> dict[str, dict[str, int]]:
    """How often each op fills each slot among the top-k trials by scalarised fitness (paper Fig. 5).

    Args:
        study: The study (for the trials' params).
        rows: Complete-trial rows (see :func:`analysis.all_rows`).
        top_k: Number of best trials counted.

    Returns:
        ``{slot: {op: count}}`` for the slots of :data:`SLOTS`; ops sorted by name.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    top = sort_rows(rows, "scalar")[:top_k]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    out: dict[str, dict[str, int]] = {}
    for slot in SLOTS:
        counts = Counter(str(trials[r.number].params[slot]) for r in top if slot in trials[r.number].params)
        out[slot] = dict(sorted(counts.items()))
    return out


def op_frequency_figure(freq: dict[str, dict[str, int]], top_k: int) -> go.Figure:
    """One bar chart per slot of the top-k operation counts."""
    title = f"Operation frequency among the top {top_k} trials (scalarised fitness)"
    fig = make_subplots(rows=2, cols=3, subplot_titles=list(freq))
    for i, (slot, counts) in enumerate(freq.items()):
        fig.add_trace(
            go.Bar(x=list(counts), y=list(counts.values()), name=slot, showlegend=False),
            row=i // 3 + 1,
            col=i % 3 + 1,
        )
    fig.update_layout(title=title, height=650)
    return fig


def rejection_counts(study: optuna.Study) -> dict[str, int]:
    """Number of trials per rejection reason (user attr ``reject_reason``), most frequent first."""
    counts = Counter(
        str(t.user_attrs["reject_reason"])
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("reject_reason")
    )
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def rejection_figure(counts: dict[str, int], states: dict[str, int]) -> go.Figure:
    """Bar chart of rejection reasons (left) and trial states (right)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["rejection reasons", "trial states"])
    fig.add_trace(
        go.Bar(x=list(counts), y=list(counts.values()), showlegend=False, marker_color="indianred"),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(x=list(states), y=list(states.values()), showlegend=False, marker_color="steelblue"),
        row=1,
        col=2,
    )
    fig.update_layout(title="Rejected trials", height=400)
    return fig


def trial_states(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state name."""
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {s.name: counts[s.name] for s in TrialState if counts[s.name]}


def _choice_label(key: str) -> str:
    """Choices may be stored as JSON text (``'"softmax_c"'``, ``'1.0'``); show the plain value."""
    try:
        value = json.loads(key)
    except (json.JSONDecodeError, TypeError):
        return str(key)
    return value if isinstance(value, str) else json.dumps(value)


def stored_shrinkage(study: optuna.Study) -> dict[str, dict[str, float]]:
    """The sampler's published shrinkage weights as ``{gene: {choice: weight}}`` (empty when none).

    Read through ``study.shrinkage.published_weights`` (user attr ``kdzero_shrinkage``); choices stored as
    JSON text are shown as their plain value.
    """
    data = published_weights(study)
    return {
        gene: {_choice_label(c): float(w) for c, w in sorted(ws.items())} for gene, ws in sorted(data.items())
    }


def shrinkage_figure(weights: dict[str, dict[str, float]]) -> go.Figure:
    """Heat map of the sampler's shrinkage weights (rows = genes, columns = choices)."""
    title = "Search-space shrinkage weights"
    if not weights:
        return _empty(title, "no shrinkage weights stored in this study")
    genes = list(weights)
    choices = sorted({c for ws in weights.values() for c in ws})
    z = [[weights[g].get(c) for c in choices] for g in genes]
    fig = go.Figure(go.Heatmap(z=z, x=choices, y=genes, colorscale="Viridis", hoverongaps=False))
    fig.update_layout(title=title, height=max(300, 60 * len(genes) + 150))
    return fig


def _evaluator(n_trees: int, max_depth: int) -> optuna.importance.BaseImportanceEvaluator:
    """The fANOVA evaluator (seeded; needs scikit-learn), else Optuna's default (PED-ANOVA)."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator()
    return optuna.importance.FanovaImportanceEvaluator(n_trees=n_trees, max_depth=max_depth, seed=0)


def param_importances(
    study: optuna.Study, min_trials: int = 4, n_trees: int = 16, max_depth: int = 6
) -> dict[str, dict[str, float] | str]:
    """Parameter importances (fANOVA) per objective; a message instead where they cannot be computed.

    Args:
        study: A kdzero study.
        min_trials: Fewer complete trials than this gives the message "too few trials".
        n_trees: Trees of the fANOVA random forest (more: steadier, slower).
        max_depth: Depth of those trees; the cost grows about exponentially with it (6: seconds for
            hundreds of trials, 8: minutes).

    Returns:
        ``{objective: {param: importance} | message}``.
    """
    index = objective_index(study)
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    out: dict[str, dict[str, float] | str] = {}
    for name in OBJECTIVES:
        if n < min_trials:
            out[name] = f"too few complete trials ({n} < {min_trials})"
            continue
        i = index[name]
        try:
            imp = optuna.importance.get_param_importances(
                study, evaluator=_evaluator(n_trees, max_depth), target=lambda t, i=i: t.values[i]
            )
            out[name] = {k: float(v) for k, v in imp.items()}
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            out[name] = f"not computable: {exc}"
    return out


def importance_figure(imps: dict[str, dict[str, float] | str]) -> go.Figure:
    """Horizontal bars of the importances, one panel per objective (a note where they were not computable)."""
    fig = make_subplots(rows=1, cols=len(imps), subplot_titles=[LABELS[n] for n in imps])
    for col, imp in enumerate(imps.values(), start=1):
        if isinstance(imp, str):
            fig.add_annotation(text=imp, showarrow=False, row=1, col=col, x=0.5, y=0.5)
            continue
        items = sorted(imp.items(), key=lambda kv: kv[1])
        fig.add_trace(
            go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h", showlegend=False),
            row=1,
            col=col,
        )
    fig.update_layout(title="Parameter importances per objective (fANOVA)", height=400)
    return fig
