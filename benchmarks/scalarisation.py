"""How well each proxy score ranks a search's candidates by their verified accuracy.

Usage (from the repository root)::

    python -m benchmarks.scalarisation                                  # the committed studies
    python -m benchmarks.scalarisation --dbs 'benchmarks/results/*.db' --out /tmp/scalarisation.json

For every study with a verification stage (``<study>:verify``) in the SQLite files matched by ``--dbs``, the
Kendall tau, within that search, between a proxy score of each verified candidate (negated where lower is
better) and the mean validation accuracy of its verification runs (25% of the schedule on other seeds).
Scores: the paper's sum, the geometric mean kdzero ranks by (``study.fitness``), each objective alone and the
proxy accuracy. Reported: mean +- SE over searches, and the geometric mean minus the sum, paired by search.
Searches with fewer than 4 verified candidates, or a constant score, are left out. Read-only.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from scipy.stats import kendalltau

from study.fitness import paper_sum, scalarise

DEFAULT_DBS = ("benchmarks/results/*.db", "benchmarks/results/search-quality-v2/*.db")
MIN_POINTS = 4

# score name -> (score of (objective values, proxy accuracy), higher is better?)
SCORES: dict[str, tuple[Callable[[Sequence[float], float], float], bool]] = {
    "sum": (lambda v, a: paper_sum(v), False),
    "geomean": (lambda v, a: scalarise(v), False),
    "val_ce": (lambda v, a: v[0], False),
    "sharpness_gap": (lambda v, a: v[1], False),
    "cka_gap": (lambda v, a: v[2], False),
    "proxy_acc": (lambda v, a: a, True),
}


def search_taus(storage: str, name: str) -> dict[str, float] | None:
    """Kendall tau of every score in one search against its candidates' verified accuracy (None: too few)."""
    main = optuna.load_study(study_name=name, storage=storage)
    check = optuna.load_study(study_name=f"{name}:verify", storage=storage)
    done = {
        t.number: t
        for t in main.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and len(t.values) == 3 and all(math.isfinite(x) for x in t.values)
    }
    acc: dict[int, list[float]] = defaultdict(list)
    for t in check.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        src = t.user_attrs.get("source_trial")
        if t.user_attrs.get("role") == "verify" and src in done and t.user_attrs.get("accuracy") is not None:
            acc[src].append(float(t.user_attrs["accuracy"]))
    points = [(done[n], statistics.fmean(a)) for n, a in sorted(acc.items())]
    if len(points) < MIN_POINTS:
        return None
    verified = [a for _, a in points]
    out = {}
    for key, (fn, higher) in SCORES.items():
        score = [fn(t.values, float(t.user_attrs.get("accuracy", math.nan))) for t, _ in points]
        tau = kendalltau([s if higher else -s for s in score], verified).statistic
        out[key] = float(tau)
    return out


def _mean_se(xs: list[float]) -> dict[str, Any]:
    xs = [x for x in xs if math.isfinite(x)]
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
    return {"mean": statistics.fmean(xs) if xs else math.nan, "se": se, "n": len(xs)}


def measure(patterns: Sequence[str]) -> dict[str, Any]:
    """Per-search taus and their summary over the verified searches in the files matched by ``patterns``."""
    searches = []
    for path in sorted({p for pat in patterns for p in glob.glob(pat)}):
        storage = f"sqlite:///{Path(path).resolve()}"
        names = optuna.get_all_study_names(storage)
        for name in sorted(n for n in names if f"{n}:verify" in names):
            taus = search_taus(storage, name)
            if taus is not None:
                searches.append({"file": path, "study": name, "tau": taus})
    summary = {k: _mean_se([s["tau"][k] for s in searches]) for k in SCORES}
    diff = [s["tau"]["geomean"] - s["tau"]["sum"] for s in searches]
    ok = [d for d in diff if math.isfinite(d)]
    paired = {
        **_mean_se(ok),
        "better": sum(d > 0 for d in ok),
        "worse": sum(d < 0 for d in ok),
        "tied": sum(d == 0 for d in ok),
    }
    return {"patterns": list(patterns), "searches": searches, "summary": summary, "geomean_minus_sum": paired}


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write the result; returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dbs", action="append", help=f"glob of SQLite files (repeatable; default {DEFAULT_DBS})")
    p.add_argument("--out", default="benchmarks/results/scalarisation.json")
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    res = measure(a.dbs or DEFAULT_DBS)
    Path(a.out).write_text(json.dumps(res, indent=1))
    n = len(res["searches"])
    print(f"Kendall tau, proxy score vs verified accuracy, within each of {n} verified searches (mean +- SE)")
    for key, s in res["summary"].items():
        print(f"  {key:14s} {s['mean']:+.3f} +- {s['se']:.3f} (n={s['n']})")
    d = res["geomean_minus_sum"]
    print(
        f"geomean - sum, paired by search: {d['mean']:+.3f} +- {d['se']:.3f} "
        f"({d['better']} better, {d['worse']} worse, {d['tied']} tied)"
    )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
