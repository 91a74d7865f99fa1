"""Statistics of the Table-3 benchmark: per-method summaries, paired differences by seed, rank correlations.

Pure functions over plain rows (dicts with ``regime``, ``student``, ``method``, ``seed``, ``test_acc`` ...),
so the tests can check them on hand-made rows against formulas written independently.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from study.verify import PairedDiff, paired_by_seed

HANDCRAFTED = ("kd", "dist", "at", "fitnets")
"""Published distillers trained with their published hyperparameters (``ce`` is the no-distiller baseline)."""
TUNED = ("kd-tuned", "dist-tuned")
"""Published distillers with tau x W tuned by TPE on the proxy fitness, with kd-zero's trial budget."""
RIVALS = (*HANDCRAFTED, *TUNED)
"""What kd-zero must beat: every handcrafted and tuned distiller."""
METHODS = ("ce", *HANDCRAFTED, *TUNED, "rand-kd", "kd-zero")
"""Every method of the table, in display order."""
CONVERGENCE = "ce-2x"
"""Plain CE with twice the epochs: the schedule is long enough when CE gains < 0.3 points from doubling it."""
LOWER_IS_BETTER = ("ce", "sharpness_gap", "cka_gap", "fitness", "paper_sum")
"""Proxy objectives negated before correlating with test accuracy (so a good proxy has tau > 0)."""
HIGHER_IS_BETTER = ("proxy_acc", "verify_acc")
"""Proxy quantities correlated as they are."""


class MethodSummary(NamedTuple):
    """One line of the table for one (regime, student, method)."""

    method: str
    n: int
    test_mean: float
    test_std: float  # sample std (ddof=1); nan when n < 2
    val_mean: float
    wall_mean: float
    vs_ce: PairedDiff
    vs_best: PairedDiff  # against the best rival (handcrafted or tuned) of the setting
    failed: int = 0  # runs stopped by the divergence guard (``test_acc`` None), left out of the statistics


def select(rows: Iterable[Mapping[str, Any]], **where: Any) -> list[Mapping[str, Any]]:
    """Rows whose fields equal every ``where`` item."""
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def by_seed(rows: Iterable[Mapping[str, Any]], method: str, key: str = "test_acc") -> dict[int, float]:
    """``{seed: row[key]}`` of one method (one setting's rows); failed runs (value None) are left out.

    Raises:
        ValueError: A seed appears twice for the method.
    """
    out: dict[int, float] = {}
    for r in rows:
        if r["method"] != method or r.get(key) is None:
            continue
        if r["seed"] in out:
            raise ValueError(f"method {method!r} has seed {r['seed']!r} twice; rows of one setting expected")
        out[int(r["seed"])] = float(r[key])
    return out


def paired_difference(
    rows: Sequence[Mapping[str, Any]], method: str, baseline: str, key: str = "test_acc"
) -> PairedDiff:
    """Paired difference ``method - baseline`` of ``key`` over the seeds both ran (one setting's rows).

    Args:
        rows: Rows of one (regime, student).
        method: The method compared.
        baseline: The reference method.
        key: Row field compared.

    Returns:
        Mean of the per-seed differences and its standard error ``std(ddof=1) / sqrt(n)``.
    """
    return paired_by_seed(by_seed(rows, method, key), by_seed(rows, baseline, key))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) >= 2 else math.nan


def best_of(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> str | None:
    """The method among ``methods`` of highest mean test accuracy (failed runs left out), or ``None``."""
    means = {}
    for m in methods:
        acc = [float(r["test_acc"]) for r in rows if r["method"] == m and r.get("test_acc") is not None]
        if acc:
            means[m] = statistics.fmean(acc)
    return max(means, key=lambda m: (means[m], -list(methods).index(m))) if means else None


def best_handcrafted(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The handcrafted method (:data:`HANDCRAFTED`) with the highest mean test accuracy, or ``None``."""
    return best_of(rows, HANDCRAFTED)


def best_rival(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The rival (:data:`RIVALS`: handcrafted and tuned) with the highest mean test accuracy, or ``None``."""
    return best_of(rows, RIVALS)


def convergence_gap(rows: Sequence[Mapping[str, Any]]) -> PairedDiff:
    """CE with twice the epochs minus CE with the schedule, paired by seed (the schedule's convergence)."""
    return paired_difference(rows, CONVERGENCE, "ce")


def summarise_setting(rows: Sequence[Mapping[str, Any]]) -> list[MethodSummary]:
    """Mean +- std per method and paired differences to ``ce`` and to the best rival (handcrafted or tuned).

    Args:
        rows: Rows of one (regime, student); methods outside :data:`METHODS` are ignored.

    Returns:
        One summary per method present, in :data:`METHODS` order.
    """
    best = best_rival(rows)
    out = []
    for m in (*METHODS, CONVERGENCE):
        ran = [r for r in rows if r["method"] == m]
        if not ran:
            continue
        mine = [r for r in ran if r.get("test_acc") is not None]
        test_mean, test_std = _mean_std([float(r["test_acc"]) for r in mine])
        nan = PairedDiff(math.nan, math.nan, 0)
        out.append(
            MethodSummary(
                method=m,
                n=len(mine),
                test_mean=test_mean,
                test_std=test_std,
                val_mean=_mean_std([float(r["val_acc"]) for r in mine])[0],
                wall_mean=statistics.fmean(float(r["wall_s"]) for r in ran),
                vs_ce=paired_difference(rows, m, "ce") if m != "ce" else nan,
                vs_best=paired_difference(rows, m, best) if best is not None and m != best else nan,
                failed=len(ran) - len(mine),
            )
        )
    return out


def rank_correlations(proxy: Mapping[str, Sequence[float]], accuracy: Sequence[float]) -> dict[str, Any]:
    """Kendall tau and Spearman rho (``scipy.stats``) between each proxy quantity and full-training accuracy.

    Quantities in :data:`LOWER_IS_BETTER` are negated first, so a faithful proxy gives positive values.

    Args:
        proxy: ``{name: values}``, each aligned with ``accuracy``.
        accuracy: Test accuracy of the full training of each distiller.

    Returns:
        ``{name: {"kendall_tau", "kendall_p", "spearman_rho", "spearman_p", "n", "negated"}}``; nan where
        fewer than 3 finite pairs remain or a side is constant.
    """
    from scipy.stats import kendalltau, spearmanr

    out: dict[str, Any] = {}
    for name, values in proxy.items():
        if len(values) != len(accuracy):
            raise ValueError(f"proxy {name!r} has {len(values)} values but accuracy has {len(accuracy)}")
        sign = -1.0 if name in LOWER_IS_BETTER else 1.0
        pairs = [
            (sign * float(v), float(a))
            for v, a in zip(values, accuracy, strict=True)
            if math.isfinite(float(v)) and math.isfinite(float(a))
        ]
        res = {"n": len(pairs), "negated": sign < 0}
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(pairs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
            res.update(kendall_tau=math.nan, kendall_p=math.nan, spearman_rho=math.nan, spearman_p=math.nan)
        else:
            kt, sr = kendalltau(xs, ys), spearmanr(xs, ys)
            res.update(
                kendall_tau=float(kt.statistic),
                kendall_p=float(kt.pvalue),
                spearman_rho=float(sr.statistic),
                spearman_p=float(sr.pvalue),
            )
        out[name] = res
    return out


PREFIX_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
"""Fractions of the schedule at which :func:`prefix_rank_correlations` reads the full runs' validation."""


def prefix_rank_correlations(
    rows: Iterable[Mapping[str, Any]], epochs: int, fractions: Sequence[float] = PREFIX_FRACTIONS
) -> dict[str, Any]:
    """How well validation accuracy part-way through the full runs ranks the distillers' test accuracy.

    A proxy or verification run stopped after a fraction ``f`` of the schedule is the full run's prefix
    (same seed, the same learning rate at every step), so the validation accuracy a full run recorded after
    epoch ``ceil(f * epochs)`` (``epoch_val_acc``) is what that run would measure, for every ``f`` at once.
    Per distiller (the row's spec; ``None`` is plain CE), both sides are means over the seeds whose run
    finished and recorded every epoch; a row copied from another method's training (``same_training_as``)
    is that training, counted once.

    Args:
        rows: One setting's rows.
        epochs: Length of the setting's schedule (rows of another length, e.g. ``ce-2x``, are left out).
        fractions: Where to read the curves.

    Returns:
        ``{"n": distillers, "seeds": runs, "correlations": {"<f>": rank_correlations entry}}`` with ``<f>``
        the fraction in percent (``"25%"``).
    """
    import json

    runs: dict[str, dict[int, tuple[float, list[float]]]] = {}
    for r in rows:
        curve = r.get("epoch_val_acc")
        if r.get("test_acc") is None or not isinstance(curve, list) or len(curve) != epochs:
            continue
        key = json.dumps(r.get("spec"), sort_keys=True)
        runs.setdefault(key, {}).setdefault(int(r["seed"]), (float(r["test_acc"]), [float(a) for a in curve]))
    tests = [statistics.fmean(t for t, _ in seeds.values()) for seeds in runs.values()]
    series: dict[str, list[float]] = {}
    for f in fractions:
        i = max(1, math.ceil(f * epochs - 1e-9)) - 1  # 0-based index of epoch ceil(f * epochs)
        series[f"{100 * f:g}%"] = [
            statistics.fmean(c[i] for _, c in seeds.values()) for seeds in runs.values()
        ]
    return {
        "n": len(runs),
        "seeds": sum(len(seeds) for seeds in runs.values()),
        "correlations": rank_correlations(series, tests),
    }


def beats(diff: PairedDiff, n_se: float = 2.0) -> bool:
    """Whether a paired difference is positive by more than ``n_se`` standard errors (False when n < 2)."""
    return diff.n >= 2 and math.isfinite(diff.se) and diff.mean > n_se * diff.se and diff.mean > 0


def not_worse(diff: PairedDiff, n_se: float = 2.0) -> bool:
    """Whether a paired difference is not negative by more than ``n_se`` standard errors."""
    return diff.n >= 2 and math.isfinite(diff.se) and diff.mean >= -n_se * diff.se


def check_targets(
    summaries: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
    correlations: Mapping[tuple[str, str], Mapping[str, Any]],
    cnn_student: str = "cnn_tiny",
    subset_regime: str = "10pct",
    proxy_check: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    costs: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The issue's targets, each ``{"target", "setting", "value", "met"}`` (``met`` None: not measurable).

    Args:
        summaries: ``{(regime, student): rows}`` of every setting.
        correlations: ``{(regime, student): rank_correlations(...)}``.
        cnn_student: The CNN student of the table.
        subset_regime: Name of the 10% regime.
        proxy_check: ``{(regime, student): {"ce": acc, "known": {name: acc}, "trains": [names]}}`` of proxy
            accuracies: every known distiller that trains in the full schedule must reach CE's - 5 points.
        costs: ``{(regime, student): search cost}`` with ``candidate_units`` (one search candidate in full
            trainings).
    """
    out: list[dict[str, Any]] = []

    def add(target: str, setting: tuple[str, str], value: str, met: bool | None) -> None:
        out.append({"target": target, "setting": f"{setting[0]}/{setting[1]}", "value": value, "met": met})

    for setting, rows in sorted(summaries.items()):
        regime, student = setting
        has = {r["method"] for r in rows}
        if "ce" in has and CONVERGENCE in has:
            d = convergence_gap(rows)
            met = d.n > 0 and d.mean < 0.003
            add("CE converged: CE(2x epochs) - CE < 0.3 pt", setting, _fmt_diff(d), met)
        if "kd-zero" not in has:
            continue
        best = best_rival(rows)
        if best is not None:
            d = paired_difference(rows, "kd-zero", best)
            if regime == subset_regime and student == cnn_student:
                add(f"kd-zero > best rival ({best}) by > 2 SE", setting, _fmt_diff(d), beats(d))
            add(f"kd-zero not worse than best rival ({best}) by > 2 SE", setting, _fmt_diff(d), not_worse(d))
        if "rand-kd" in has:
            d = paired_difference(rows, "kd-zero", "rand-kd")
            add("kd-zero not worse than rand-kd (by > 2 SE)", setting, _fmt_diff(d), not_worse(d))
    for setting, corr in sorted(correlations.items()):
        for key, label in (("fitness", "-fitness"), ("verify_acc", "verified acc")):
            tau = corr.get(key, {}).get("kendall_tau", math.nan)
            add(
                f"Kendall tau({label}, test acc) >= 0.6",
                setting,
                f"{tau:.3f}",
                bool(tau >= 0.6) if tau == tau else None,
            )
    for setting, check in sorted((proxy_check or {}).items()):
        ce = check.get("ce")
        for name in check.get("trains", []):
            acc = check.get("known", {}).get(name)
            if ce is None or acc is None or not math.isfinite(acc) or not math.isfinite(ce):
                add(f"proxy acc of {name} >= CE's - 5 pt", setting, "rejected in the proxy", False)
                continue
            add(
                f"proxy acc of {name} >= CE's - 5 pt",
                setting,
                f"{100 * acc:.2f} vs CE {100 * ce:.2f}",
                acc >= ce - 0.05,
            )
    for setting, cost in sorted((costs or {}).items()):
        units = cost.get("candidate_units", math.nan)
        add(
            "one search candidate <= 1/40 of a full training",
            setting,
            f"1/{1 / units:.1f}" if units and math.isfinite(units) else "n/a",
            bool(units <= 1 / 40) if math.isfinite(units) else None,
        )
    return out


def _fmt_diff(d: PairedDiff) -> str:
    return f"{100 * d.mean:+.2f} +- {100 * d.se:.2f} pt (n={d.n})"
