"""Search benchmark: NSGA-II (+ shrinkage) vs random sampling, worker scaling, storage overhead.

Usage (from the repository root)::

    python -m benchmarks.search_bench --quick            # digits smoke pair, small budgets (minutes)
    python -m benchmarks.search_bench                    # the default pair (Fashion-MNIST); hours on 2 cores
    python -m benchmarks.search_bench --parts workers,storage --quick

Prints a table and writes JSON (``--out``, default ``artifacts/search_bench.json``).

Parts:
  quality  NSGA-II against random sampling: the same `study.run_search` (same generation 0, budget and
           verified selection; only `search.sampler` differs), --seeds seeds: hypervolume of the three
           objectives (val_ce, sharpness_gap, cka_gap; fixed reference point), best scalarised fitness after
           each generation, and the verified choice's validation accuracy; paired differences by seed.
           Resumable: finished runs are kept in --folder.
  workers  trials per hour with 1 and 2 worker processes on one SQLite study (target: 2 workers >= 1.8x).
  storage  storage + sampler time per trial (no-op evaluator, SQLite) / a real trial's time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from study._optuna import hypervolume
from study.config import StudyConfig, load_config
from study.fitness import scalarised
from study.objective import Objective
from study.sampler import build_sampler
from study.search import prepare_teacher, run_search
from study.verify import paired_by_seed

REFERENCE = np.array([4.0, 4.0, 1.0])  # val_ce, sharpness_gap, cka_gap (cka_gap is in [0, 1])


def _hypervolume(values: list[list[float]]) -> float:
    pts = np.array([v for v in values if np.all(np.isfinite(v)) and np.all(np.array(v) < REFERENCE)])
    return hypervolume(pts, REFERENCE) if len(pts) else 0.0


def _config(
    quick: bool,
    storage: str,
    study: str,
    n_trials: int,
    workers: int,
    seed: int = 0,
    steps: int = 15,
    threads: int | None = None,
    search: dict[str, Any] | None = None,
) -> StudyConfig:
    over: dict[str, Any] = {
        "run": {
            "storage": storage,
            "study": study,
            "n_trials": n_trials,
            "workers": workers,
            "threads": threads,
            "timeout": None,
        },
        "search": {"seed": seed, **(search or {})},
    }
    if quick:
        over["experiment"] = {"proxy": {"steps": steps}}
    return load_config("smoke" if quick else "default", overrides=over)


# Search settings a quality variant may change (``nsga2+population=20+mutation_prob=0.3``): the evolution's
# knobs that issue 12 asks to investigate when NSGA-II does not lead; nothing that changes how trials measure.
VARIANT_KEYS = ("population", "crossover", "crossover_prob", "swapping_prob", "mutation_prob", "shrink_floor")


def parse_variant(name: str) -> tuple[str, dict[str, Any]]:
    """Split a quality variant ``<sampler>[+key=value...]`` into the sampler and its search overrides.

    Values are read as JSON numbers or literals where they parse, as strings otherwise
    (``crossover=blxalpha``); the search configuration validates them when the run's config is built.

    Raises:
        ValueError: naming the variant, for an unknown sampler or key, or a term without ``=``.
    """
    from study.config import SAMPLERS

    base, *terms = name.split("+")
    if base not in SAMPLERS:
        raise ValueError(f"variant {name!r}: sampler must be one of {SAMPLERS}, got {base!r}")
    over: dict[str, Any] = {}
    for term in terms:
        key, eq, raw = term.partition("=")
        if not eq or key not in VARIANT_KEYS:
            raise ValueError(f"variant {name!r}: {term!r} must be key=value with a key among {VARIANT_KEYS}")
        try:
            over[key] = json.loads(raw)
        except json.JSONDecodeError:
            over[key] = raw
    return base, over


def _paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean and standard error (ddof 1) of the per-seed differences ``a - b``."""
    ok = [i for i, (x, y) in enumerate(zip(a, b)) if math.isfinite(x) and math.isfinite(y)]
    return paired_by_seed({i: a[i] for i in ok}, {i: b[i] for i in ok})._asdict()


def quality(
    quick: bool,
    seeds: int,
    generations: int,
    seed_known: bool = True,
    folder: Path | None = None,
    threads: int | None = None,
    samplers: tuple[str, ...] = ("nsga2", "random"),
) -> dict[str, Any]:
    """NSGA-II vs random sampling: the same ``study.run_search`` (generation 0, budget, verification).

    ``samplers`` may add ``tpe`` (Optuna's multi-objective TPE) and variants of a sampler's settings
    (``nsga2+population=20``, ``nsga2+mutation_prob=0.3``, ``nsga2+shrink_floor=1``: keys in
    :data:`VARIANT_KEYS`); ``paired`` compares NSGA-II with random, ``paired_all`` every pair of the samplers
    run (``"a-b"``: a minus b, by seed). Every variant has the same trial budget (the default population x
    ``generations``) and its hypervolume and best fitness are read after each default population's worth of
    trials, so a variant with another population is compared at the same trial counts.

    For each seed and sampler a full search runs (one in-process worker, the default pair or the smoke pair
    with ``quick``), followed by its verification stage. Recorded: the hypervolume of the three objectives
    after each ``population`` trials, the best scalarised fitness, and the verified choice's validation
    accuracy (the mean over the verification seeds). Finished runs are kept in ``folder``
    (``<sampler>-<seed>.json`` next to the SQLite studies), so a rerun resumes.
    """
    from study.config import SAMPLERS
    from study.verify import verified

    if len(set(samplers)) != len(samplers) or not samplers:
        raise ValueError(
            f"samplers must be distinct names among {SAMPLERS} (or variants), got {list(samplers)}"
        )
    variants: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in samplers:
        try:
            variants[name] = parse_variant(name)
        except ValueError as e:
            raise ValueError(
                f"samplers must be distinct names among {SAMPLERS} (or variants), got {list(samplers)}: {e}"
            ) from None
    cfg0 = _config(quick, "sqlite:///unused.db", "q", 1, 1, threads=threads)
    pop = cfg0.search.population
    budget = pop * generations
    evaluator = prepare_teacher(cfg0, cfg0.run.devices[0])
    folder = folder or Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "population": pop,
        "generations": generations,
        "budget": budget,
        "reference": REFERENCE.tolist(),
        "seeded_known": seed_known,
        "verify": {k: getattr(cfg0.search, k) for k in ("verify_top", "verify_seeds", "verify_fraction")},
        "samplers": list(samplers),
        "variants": {name: over for name, (_, over) in variants.items()},
        **{name: [] for name in samplers},
    }
    for seed in range(seeds):
        for name in samplers:
            done = folder / f"{name}-{seed}.json"
            if done.exists():
                out[name].append(json.loads(done.read_text()))
                continue
            base, over = variants[name]
            cfg = _config(
                quick,
                f"sqlite:///{folder}/{name}-{seed}.db",
                f"q-{name}-{seed}",
                budget,
                1,
                seed=seed,
                threads=threads,
                search={"sampler": base, "seed_known": seed_known, **over},
            )
            t0 = time.perf_counter()
            study = run_search(
                cfg, evaluator_factory=lambda _e, _d: evaluator, prepare=None, echo=lambda s: None
            )
            trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
            hv, best = [], []
            for g in range(1, generations + 1):
                part = [t for t in trials[: g * pop] if t.state == TrialState.COMPLETE]
                hv.append(_hypervolume([t.values for t in part]))
                best.append(min((scalarised(t) for t in part), default=math.inf))
            table = verified(study) or []
            win = table[0] if table else {}
            ce = next((r for r in table if r.get("trial") is None), {})
            run = {
                "seed": seed,
                "hypervolume": hv,
                "best_scalarised": best,
                "complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "verified_acc": win.get("val_acc", math.nan),
                "verified_formula": win.get("formula"),
                "verified_trial": win.get("trial"),
                "verified_ce_acc": ce.get("val_acc", math.nan),
                "wall_s": time.perf_counter() - t0,
            }
            done.write_text(json.dumps(run))
            out[name].append(run)

    def pair(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "hypervolume": _paired([r["hypervolume"][-1] for r in a], [r["hypervolume"][-1] for r in b]),
            "verified_acc": _paired([r["verified_acc"] for r in a], [r["verified_acc"] for r in b]),
        }

    out["paired_all"] = {
        f"{a}-{b}": pair(out[a], out[b]) for i, a in enumerate(samplers) for b in samplers[i + 1 :]
    }
    if "nsga2" in samplers and "random" in samplers:
        out["paired"] = pair(out["nsga2"], out["random"])
    return out


def _throughput(study: optuna.Study) -> tuple[int, float]:
    fin = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    start = min(t.datetime_start for t in fin)
    end = max(t.datetime_complete for t in fin)
    return len(fin), (end - start).total_seconds()


def workers(quick: bool, n_trials: int, tmp: Path) -> dict[str, Any]:
    """Trials per hour with 1 and 2 worker processes (first trial start to last trial end).

    ``workers_1`` gives its one worker every core (torch threads = cores); ``workers_1_thread1`` pins it
    to one thread, as each of the two workers of ``workers_2`` is, so the two ratios separate process
    scaling from the intra-op parallelism a single worker already gets.
    """
    out: dict[str, Any] = {}
    prepare_teacher(_config(quick, f"sqlite:///{tmp}/w.db", "prep", 1, 1), "cpu")  # teacher cached beforehand
    for name, k, threads in (("workers_1", 1, None), ("workers_1_thread1", 1, 1), ("workers_2", 2, None)):
        cfg = _config(quick, f"sqlite:///{tmp}/{name}.db", name, n_trials, k, steps=120, threads=threads)
        t0 = time.time()
        study = run_search(cfg, prepare=None, echo=lambda s: None)
        wall = time.time() - t0
        n, span = _throughput(study)
        wall_s = [t.user_attrs.get("wall_s", 0.0) for t in study.trials if t.state != TrialState.FAIL]
        out[name] = {
            "trials": n,
            "span_s": span,
            "wall_incl_startup_s": wall,
            "trials_per_hour": 3600 * n / span,
            "mean_trial_s": statistics.mean(wall_s),
        }
    out["speedup"] = out["workers_2"]["trials_per_hour"] / out["workers_1"]["trials_per_hour"]
    out["speedup_same_threads"] = (
        out["workers_2"]["trials_per_hour"] / out["workers_1_thread1"]["trials_per_hour"]
    )
    return out


class _NoOp:
    """An evaluator that returns at once: what is left of a trial is storage and sampling."""

    def check(self, spec: Any) -> None:
        return None

    def evaluate(self, spec: Any, callbacks: Any = None) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(
            ce=1.0,
            sharpness_gap=0.5,
            cka_gap=0.5,
            accuracy=0.5,
            curve=[(1, 0.5)],
            to_dict=lambda: {"ce": 1.0, "accuracy": 0.5, "cka": 0.5},
        )


def storage(quick: bool, tmp: Path, mean_trial_s: float | None, n: int = 40) -> dict[str, Any]:
    """Seconds of storage + sampler work per trial on SQLite, and their fraction of a real trial's time."""
    from study.storage import make_storage

    cfg = _config(quick, f"sqlite:///{tmp}/s.db", "s", n, 1)
    st = make_storage(cfg.run.storage)
    study = optuna.create_study(
        storage=st, study_name="s", directions=["minimize"] * 3, sampler=build_sampler(cfg.search)
    )
    t0 = time.perf_counter()
    study.optimize(Objective(_NoOp(), knowledge=cfg.search.knowledge), n_trials=n)
    per = (time.perf_counter() - t0) / n
    return {
        "storage_s_per_trial": per,
        "mean_trial_s": mean_trial_s,
        "fraction": per / mean_trial_s if mean_trial_s else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits smoke pair and small budgets")
    p.add_argument("--parts", default="quality,workers,storage")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--trials", type=int, default=None, help="trials per worker-scaling run")
    p.add_argument(
        "--no-seed-known",
        action="store_true",
        help="quality: start both samplers from random trials instead of the known distillers",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads of the quality part")
    p.add_argument("--folder", default=None, help="quality: keep finished runs here (resumable)")
    p.add_argument(
        "--samplers",
        default="nsga2,random",
        help="quality: samplers compared (nsga2, random, tpe) or variants such as nsga2+population=20",
    )
    p.add_argument("--out", default="artifacts/search_bench.json")
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parts = a.parts.split(",")
    res: dict[str, Any] = {"quick": a.quick, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "quality" in parts:
            res["quality"] = quality(
                a.quick,
                a.seeds,
                a.generations or (3 if a.quick else 12),
                seed_known=not a.no_seed_known,
                folder=Path(a.folder) if a.folder else None,
                threads=a.threads,
                samplers=tuple(a.samplers.split(",")),
            )
        if "workers" in parts:
            res["workers"] = workers(a.quick, a.trials or (12 if a.quick else 16), tmp)
        if "storage" in parts:
            mean = res.get("workers", {}).get("workers_1", {}).get("mean_trial_s")
            res["storage"] = storage(a.quick, tmp, mean)
    print(
        f"search benchmark ({'quick: digits smoke pair' if a.quick else 'default pair'}; "
        f"{os.cpu_count()} cores)"
    )
    if "quality" in res:
        q = res["quality"]
        print(
            f"quality: population {q['population']}, {q['generations']} generations, "
            f"reference {q['reference']}; first trials of both samplers: {q['seeded_known']} known distillers"
        )
        print(
            f"  {'sampler':24s} {'gen':>3s} {'trials':>6s} {'hypervolume (mean +- sd)':>26s} "
            f"{'best scalarised (mean +- sd)':>30s}"
        )
        for name in q.get("samplers", ("nsga2", "random")):
            for g in range(q["generations"]):
                hv = [r["hypervolume"][g] for r in q[name]]
                best = [r["best_scalarised"][g] for r in q[name]]
                sd = statistics.stdev(hv) if len(hv) > 1 else 0.0  # sample std (ddof 1), as the tables
                bsd = statistics.stdev(best) if len(best) > 1 else 0.0
                print(
                    f"  {name:24s} {g:3d} {(g + 1) * q['population']:6d} {statistics.mean(hv):18.4f} "
                    f"+- {sd:5.3f} {statistics.mean(best):22.4f} +- {bsd:5.3f}"
                )
        for pair, diffs in q["paired_all"].items():
            for key, label in (("hypervolume", "final hypervolume"), ("verified_acc", "verified val acc")):
                d = diffs[key]
                print(f"  {pair}, {label}: {d['mean']:+.4f} +- {d['se']:.4f} (SE, n={d['n']} seeds)")
    if "workers" in res:
        w = res["workers"]
        for key in ("workers_1", "workers_1_thread1", "workers_2"):
            r = w[key]
            print(
                f"{key}: {r['trials']} trials in {r['span_s']:.1f} s -> "
                f"{r['trials_per_hour']:.0f} trials/h "
                f"(mean trial {r['mean_trial_s']:.2f} s; "
                f"wall incl. start-up {r['wall_incl_startup_s']:.1f} s)"
            )
        print(f"speed-up 2 vs 1 workers: {w['speedup']:.2f}x (target >= 1.8x on 2 idle cores)")
        print(f"speed-up 2 vs 1 workers at 1 thread each: {w['speedup_same_threads']:.2f}x")
    if "storage" in res:
        s = res["storage"]
        frac = (
            f"{100 * s['fraction']:.1f}% of a trial"
            if s["fraction"]
            else "(run the workers part for the fraction)"
        )
        print(f"storage: {1000 * s['storage_s_per_trial']:.1f} ms per trial on SQLite, {frac}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
