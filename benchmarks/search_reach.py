"""Does a larger budget let the search reach further? One table setting's search, continued past its budget.

Usage (from the repository root, after ``python -m benchmarks.table`` has run the setting)::

    python -m benchmarks.search_reach --source table3v4-fashion_mnist --regime 10pct --student cnn_tiny
        --budgets 96,144 --samplers nsga2

For each sampler (``nsga2`` is kd-zero, ``random`` is rand-kd) the setting's stored study (its file in the
table, ``table.study_path``) is copied to ``<out>/<run>-<regime>-<student>-<method>.db`` and continued with
``study.run_search`` to each budget in turn (the same experiment, generation 0, population and verified
selection as the table; the verification plans again for the larger budget and keeps its finished runs).
After each budget it records the best scalarised proxy fitness reached (and at which trial it first beat
kd-tuned's best proxy fitness, the fitness of the exhaustively tuned KD of the same setting), the verified
choice, and trains that choice with the table's seeds and schedule. The source table's rows of ``ce``,
``kd-tuned`` and the source search's own choice are read from ``<source>.json`` for the paired comparisons;
nothing of the source run is modified.

Writes ``<out>/<run>.json`` (full-training rows, resumable), ``<out>/<run>.summary.json`` and
``<out>/<run>.md`` (printed too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from benchmarks import table
from benchmarks import table_methods as tm
from benchmarks.table_report import format_diff, machine, today
from benchmarks.table_runs import Rows, TrainPool, clean_json, current_rows, row_key, write_json
from benchmarks.table_stats import PairedDiff, paired_difference, select
from spaces import DistillerSpec
from study.fitness import scalarise
from study.sampler import trial_spec
from study.verify import verified
from study.worker import stored_config

TABLE_METHODS = ("kd-zero", "rand-kd")
"""Methods whose studies the table runs (continued from a copy); ``tpe`` (``tpe-kd``) starts a fresh study
with the table's experiment, generation 0, population and verification: its first budget is its search."""


def scale_variants(spec: DistillerSpec) -> list[DistillerSpec]:
    """Neighbours of ``spec`` in loss scale: W one step up, one and two steps down; the other taus.

    The loss of Eq. 1 is ``tau^2 * W * D(...)``: a good structure at a bad scale (e.g. KD at W 1, tau 4 on a
    student without BatchNorm) collapses, and NSGA-II, which rarely picks a poor trial as a parent, seldom
    visits its neighbours. These are the candidates ``--refine`` adds after the source budget.
    """
    from spaces import TEMPERATURES

    out = [v for v in (spec.weight_step(k) for k in (1, -1, -2)) if v is not None]
    out += [dataclasses.replace(spec, tau=t) for t in TEMPERATURES if t != spec.tau]
    return out


def refinement_counts(db: Path, method: str) -> dict[str, Any]:
    """How the ``--refine`` trials of a study ended (counts, best scalarised fitness of the complete ones)."""
    study = optuna.load_study(study_name=method, storage=f"sqlite:///{db}")
    mine = [t for t in study.get_trials(deepcopy=False) if "refine_of" in t.user_attrs]
    done = [t for t in mine if t.state.name == "COMPLETE"]
    pruned = [t for t in mine if t.state.name == "PRUNED"]
    early = sum(t.user_attrs.get("reject_reason") == "early_stop" for t in pruned)
    fits = [tm.trial_fitness(t)["fitness"] for t in done]
    return {
        "enqueued": len(mine),
        "complete": len(done),
        "early_stop": early,
        "rejected": len(pruned) - early,
        "best_fitness": min(fits) if fits else math.inf,
    }


def enqueue_refinements(study: optuna.Study, top: int) -> int:
    """Enqueue :func:`scale_variants` of the ``top`` best distinct complete trials (by scalarised fitness).

    A variant that is a twin of a finished or already enqueued candidate is skipped. Enqueued once: a study
    that already holds refinement trials (``refine_of``) gets none. Returns how many were enqueued.
    """
    from spaces import spec_to_params

    trials = study.get_trials(deepcopy=False)
    if any("refine_of" in t.user_attrs for t in trials):
        return 0
    seen: set[str] = set()
    for t in trials:
        try:
            seen.add(trial_spec(t).canonical_key())
        except ValueError:
            continue
    bases: list[tuple[int, DistillerSpec]] = []
    structures: set[str] = set()
    for t in tm.completed(study):
        spec = trial_spec(t)
        if spec.canonical_key() not in structures:
            structures.add(spec.canonical_key())
            bases.append((t.number, spec))
        if len(bases) == top:
            break
    n = 0
    for number, spec in bases:
        for v in scale_variants(spec):
            if v.canonical_key() in seen:
                continue
            seen.add(v.canonical_key())
            study.enqueue_trial(spec_to_params(v), user_attrs={"refine_of": number})
            n += 1
    return n


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.search_reach", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--source", default="table3v4-fashion_mnist", help="table run whose studies are continued")
    p.add_argument("--regime", default="10pct", help=f"regime among {table.REGIMES} (default 10pct)")
    p.add_argument("--student", default="cnn_tiny", help="student (default cnn_tiny)")
    p.add_argument("--budgets", default="96,144", help="comma-separated budgets, ascending (default 96,144)")
    p.add_argument("--samplers", default="nsga2", help="comma-separated samplers among nsga2,random")
    p.add_argument(
        "--seeds", type=int, default=5, help="seeds of each chosen distiller's training (default 5)"
    )
    p.add_argument("--out", default=str(table.RESULTS), help=f"results folder (default {table.RESULTS})")
    p.add_argument("--run", help="run name (default <source>-reach-<regime>-<student>)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default 1)")
    p.add_argument(
        "--jobs", type=int, default=1, help="full trainings run in this many processes (default 1)"
    )
    p.add_argument(
        "--unstop",
        action="store_true",
        help="also run the last budget's early-stopped candidates to the end of the proxy (cached)",
    )
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        help="before the budgets, enqueue the loss-scale neighbours (W, tau) of the source study's K best "
        "distinct candidates (default 0: none)",
    )
    p.add_argument(
        "--verify-top",
        type=int,
        help="distinct candidates each budget's verification trains (default: the table's)",
    )
    p.add_argument(
        "--verify-seeds",
        type=int,
        help="seeds of each verification run (default: the table's)",
    )
    p.add_argument(
        "--verify-known",
        type=int,
        default=1,
        help="known distillers each budget's verification trains, best proxy fitness first (default 1, the "
        "table's; a large number: every one that completed its proxy)",
    )
    p.add_argument(
        "--seed-weight-steps",
        default="",
        help="search from scratch with these loss-scale variants of the known distillers in generation 0 "
        "(search.seed_weight_steps, comma-separated steps on the weight grid, e.g. -1,-2; default none: "
        "the table's generation 0)",
    )
    p.add_argument(
        "--search-seed",
        type=int,
        default=0,
        help="sampler seed of a fresh search (--samplers tpe; default 0, the table's); another seed is "
        "another search of the same setting",
    )
    p.add_argument("--resume", action="store_true", help="keep this run's studies and rows")
    args = p.parse_args(argv)
    if args.regime not in table.REGIMES:
        raise ValueError(f"--regime must be one of {list(table.REGIMES)}, got {args.regime!r}")
    budgets = [int(b) for b in table._csv(args.budgets)]
    if not budgets or any(b < 1 for b in budgets) or budgets != sorted(set(budgets)):
        raise ValueError(f"--budgets must be positive and strictly ascending, got {args.budgets!r}")
    args.budgets = budgets
    samplers = table._csv(args.samplers)
    bad = [s for s in samplers if s not in tm.SAMPLER_METHOD]
    if not samplers or bad:
        raise ValueError(
            f"--samplers: unknown sampler(s) {bad or samplers}; valid are {list(tm.SAMPLER_METHOD)}"
        )
    args.samplers = samplers
    for name in ("seeds", "threads", "jobs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.refine < 0:
        raise ValueError(f"--refine must be >= 0, got {args.refine}")
    args.seed_weight_steps = table.parse_weight_steps(args.seed_weight_steps)
    args.fresh = args.seed_weight_steps or not any(tm.SAMPLER_METHOD[s] in TABLE_METHODS for s in samplers)
    if args.refine and args.fresh:
        raise ValueError("--refine continues the table's studies; it does not go with a fresh search")
    kind = "-".join(samplers) if args.fresh else "reach"
    if args.seed_weight_steps:
        kind = f"{kind}-{table.weight_steps_tag(args.seed_weight_steps)}"
    kind = f"refine{args.refine}" if args.refine else kind
    if args.search_seed:
        if args.search_seed < 0 or not args.fresh:
            raise ValueError(
                f"--search-seed {args.search_seed}: only a fresh search (--samplers tpe, or "
                "--seed-weight-steps) takes another seed, and it must be >= 0"
            )
        kind = f"{kind}-s{args.search_seed}"
    if args.verify_top is not None:
        if args.verify_top < 1:
            raise ValueError(f"--verify-top must be >= 1, got {args.verify_top}")
        kind = f"{kind}-verify{args.verify_top}"
    if args.verify_seeds is not None:
        if args.verify_seeds < 1:
            raise ValueError(f"--verify-seeds must be >= 1, got {args.verify_seeds}")
        kind = f"{kind}-vseeds{args.verify_seeds}"
    if args.verify_known < 0:
        raise ValueError(f"--verify-known must be >= 0, got {args.verify_known}")
    if args.verify_known != 1:
        kind = f"{kind}-known{args.verify_known}"
    args.run = args.run or f"{args.source}-{kind}-{args.regime}-{args.student}"
    return args


def source_argv(out: Path, source: str, device: str) -> list[str]:
    """The table arguments of run ``source`` (from its summary's command), so the experiment is the same.

    ``--resume``, ``--readme``, ``--jobs`` and ``--threads`` are dropped; ``--out``, ``--run`` and
    ``--device`` are this run's.

    Raises:
        FileNotFoundError: ``<out>/<source>.summary.json`` does not exist (the table has not finished).
        ValueError: The stored command is not a ``benchmarks.table`` command.
    """
    path = out / f"{source}.summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run python -m benchmarks.table --run {source} first")
    command = json.loads(path.read_text())["meta"]["command"]
    words = shlex.split(command)
    if words[:3] != ["python", "-m", "benchmarks.table"]:
        raise ValueError(f"{path}: meta.command is not a benchmarks.table command: {command!r}")
    argv, rest = [], words[3:]
    flags, valued = {"--resume", "--readme"}, {"--jobs", "--threads", "--out", "--run", "--device"}
    while rest:
        word = rest.pop(0)
        if word in flags:
            continue
        if word in valued:
            rest.pop(0)
            continue
        argv.append(word)
    return [*argv, "--out", str(out), "--run", source, "--device", device]


def reuse_row(
    rows: Rows,
    source_rows: list[dict[str, Any]],
    exp: Any,
    regime: str,
    label: str,
    spec: Any,
    seed: int,
    teacher_id: str | None,
) -> bool:
    """Copy the source table's training of ``spec`` with ``seed`` (any method) as this run's row ``label``.

    A distiller the table already trained with the same schedule and seed is not trained twice (e.g. when a
    larger budget verifies the same choice again). Returns whether a row was found (or is already here).
    """
    key = row_key(exp, regime, label, spec, seed, teacher_id)
    if rows.find(**key) is not None:
        return True
    same = {k: v for k, v in key.items() if k != "method"}
    hits = [r for r in select(source_rows, **same) if r.get("test_acc") is not None]
    if not hits:
        return False
    rows.add({**hits[0], "method": label, "reused_from": hits[0]["method"]})
    return True


def unstopped(
    study: optuna.Study, evaluator: Any, cache_path: Path, limit: int | None = None
) -> dict[str, Any]:
    """Run the search's early-stopped candidates to the end of the proxy: what did early stopping throw away?

    Each distinct (canonical) early-stopped distiller gets the full proxy run its trial was denied; the
    results are cached in ``cache_path`` (a rerun measures nothing twice). Returned with the search's
    complete trials for comparison: how many stopped candidates would have had a better scalarised fitness
    than the best complete trial, and than the median one.

    Args:
        study: The search study.
        evaluator: Its proxy evaluator.
        cache_path: JSON cache ``{spec json: objectives}``.
        limit: At most this many distinct stopped candidates (latest first); None: all.
    """
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    complete = [tm.trial_fitness(t)["fitness"] for t in tm.completed(study)]
    stopped = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
        if t.user_attrs.get("reject_reason") == "early_stop"
    ]
    seen: set[str] = set()
    points = []
    for t in sorted(stopped, key=lambda t: -t.number):
        spec = trial_spec(t)
        key = spec.canonical_key()
        if key in seen:
            continue
        seen.add(key)
        if limit is not None and len(points) >= limit:
            break
        raw = spec.to_json()
        if raw not in cache:
            cache[raw] = tm.evaluate_fitness(evaluator, spec)
            write_json(cache_path, cache)
        points.append(
            {
                "trial": t.number,
                "formula": spec.formula(),
                "generation": t.user_attrs.get("generation"),
                "stopped": t.user_attrs.get("reject_detail"),
                **cache[raw],
            }
        )
    best = min(complete, default=math.inf)
    median = statistics.median(complete) if complete else math.inf
    finite = [p for p in points if math.isfinite(p["fitness"])]
    return {
        "stopped_trials": len(stopped),
        "distinct": len(points),
        "best_complete": best,
        "median_complete": median,
        "beat_best": sum(p["fitness"] < best for p in finite),
        "beat_median": sum(p["fitness"] < median for p in finite),
        "rejected_when_run": len(points) - len(finite),
        "points": points,
    }


def budget_record(study: optuna.Study, budget: int, kd_fitness: float) -> dict[str, Any]:
    """What a search has reached at ``budget`` finished trials (JSON): verified choice, fitness curve, costs.

    Recorded when the budget is reached, because a larger budget re-plans the verification in place.

    Raises:
        ValueError: The study holds more finished trials than ``budget`` (a larger budget already ran).
    """
    finished = len(study.get_trials(deepcopy=False, states=tm.FINISHED))
    if finished > budget:
        raise ValueError(
            f"study {study.study_name!r} already holds {finished} finished trials, more than the budget "
            f"{budget} to record; rerun without --resume to start again from the table's study"
        )
    found, spec = tm.verified_choice(study)
    curve = trajectory(study)
    return {
        "budget": budget,
        "found": found,
        "spec": spec.to_dict() if spec is not None else None,
        "verified": verified(study) or [],
        "best_fitness": curve[-1] if curve else math.inf,
        "trials_to_kd_tuned": first_below(curve, kd_fitness),
        "curve": curve,
        "search_cpu_s": tm.study_cost_s(study)[0],
        "verify_cpu_s": tm.verification_cost_s(study)[0],
    }


def copy_study(src: Path, dst: Path) -> None:
    """Copy the SQLite file ``src`` (WAL included) to ``dst`` through SQLite's backup API."""
    if not src.exists():
        raise FileNotFoundError(
            f"source study {src} does not exist; run benchmarks.table for this setting first"
        )
    dst.unlink(missing_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def trajectory(study: optuna.Study) -> list[float]:
    """Best scalarised fitness of the search's finished trials 0..i, for every i (inf until one completes)."""
    best, out = math.inf, []
    for t in sorted(study.get_trials(deepcopy=False, states=tm.FINISHED), key=lambda t: t.number):
        if t.state == optuna.trial.TrialState.COMPLETE and t.values:
            best = min(best, scalarise(t.values))
        out.append(best)
    return out


def first_below(curve: list[float], level: float) -> int | None:
    """The number of finished trials after which ``curve`` first reaches ``level`` or lower (None: never)."""
    return next((i + 1 for i, v in enumerate(curve) if v <= level), None)


def _fmt(d: dict[str, Any]) -> str:
    return f"{format_diff(PairedDiff(**d))} (n={d['n']})" if d["n"] else "-"


def render(summary: dict[str, Any]) -> str:
    """Markdown of the summary."""
    m = summary["meta"]
    lines = [
        f"### Search reach: {m['regime']}/{m['student']} ({m['source']}), budgets {m['budgets']}, "
        f"{m.get('verify_top', '?')} candidates and {m.get('verify_known', 1)} known distiller(s) verified"
        f" on {m.get('verify_seeds', 2)} seed(s)",
        "",
        f"kd-tuned's best proxy fitness (exhaustive tau x W of KD, {m['source_budget']} trials): "
        f"{m['kd_tuned_fitness']:.3f}. Paired test-accuracy differences in points, mean ± SE over seeds.",
        "",
        "| method | budget | best fitness | trials to beat kd-tuned's fitness | verified choice | test % | "
        "vs kd-tuned | vs ce | vs the budget-"
        f"{m['source_budget']} choice | cost (CPU s, search + verification) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        acc = f"{100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f}" if r["test_mean"] is not None else "-"
        lines.append(
            f"| {r['method']} | {r['budget']} | {r['best_fitness']:.3f} | "
            f"{r['trials_to_kd_tuned'] or 'never'} | "
            f"`{r['formula']}` | {acc} | {_fmt(r['vs_kd_tuned'])} | {_fmt(r['vs_ce'])} | "
            f"{_fmt(r['vs_source_choice'])} | {r['search_cpu_s']:.0f} + {r['verify_cpu_s']:.0f} |"
        )
    for r in summary["results"]:
        f = r.get("refinements")
        if f and f["enqueued"]:
            lines += [
                "",
                f"{r['method']}: {f['enqueued']} loss-scale neighbours (W, tau) of its {m.get('refine')} "
                f"best distinct candidates were enqueued after trial {m['source_budget']}: "
                f"{f['complete']} complete (best fitness {f['best_fitness']:.3f}), {f['early_stop']} stopped "
                f"early, {f['rejected']} rejected.",
            ]
    for r in summary["results"]:
        u = r.get("unstopped")
        if u:
            lines += [
                "",
                f"{r['method']} at {r['budget']} trials: {u['stopped_trials']} trials were stopped early; "
                f"their {u['distinct']} distinct distillers, run to the end of the proxy, reach a fitness "
                f"below the best complete trial's ({u['best_complete']:.3f}) {u['beat_best']} times and "
                f"below the median complete trial's ({u['median_complete']:.3f}) {u['beat_median']} times "
                f"({u['rejected_when_run']} rejected when run).",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; returns 0."""
    import torch

    from trainers.proxy import ProxyEvaluator

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targs = table.parse_args(source_argv(out, args.source, args.device))
    exp = table.build_experiment(targs, args.regime, args.student)
    stem = out / f"{args.source}-{args.regime}-{args.student}"
    source_rows = json.loads(Path(out / f"{args.source}.json").read_text())

    _splits, meta, s_shapes, _t_shapes = table.load_setting(exp, args.device)
    ident = str((table.recorded_teacher(stem, targs.seed_weight_steps) or meta)["identity"])  # the source's
    kinds = tm.knowledge_kinds(s_shapes)
    evaluator = ProxyEvaluator(exp, device=args.device)

    kd_tuned = tm.open_local_study(
        Path(f"{stem}-kd-tuned.db"), "kd-tuned", optuna.samplers.RandomSampler(), ["minimize"]
    )
    best_kd = tm.best_trial(kd_tuned)
    if best_kd is None:
        raise ValueError(f"{stem}-kd-tuned.db has no complete trial")
    kd_fitness = tm.trial_fitness(best_kd)["fitness"]
    kd_spec = trial_spec(best_kd)  # what the table trained as kd-tuned
    source_budget = len(kd_tuned.get_trials(deepcopy=False, states=tm.FINISHED))

    rows = Rows(out / f"{args.run}.json", args.resume)
    pool = TrainPool(rows, args.jobs, args.threads if args.jobs > 1 else None, lambda m: print(m, flush=True))
    t0 = time.perf_counter()
    plans: list[dict[str, Any]] = []
    try:
        for sampler in args.samplers:
            method = tm.SAMPLER_METHOD[sampler]
            db = out / f"{args.run}-{method}.db"
            # A sampler the table did not run, or another generation 0, searches from scratch.
            fresh = method not in TABLE_METHODS or bool(args.seed_weight_steps)
            if not (args.resume and db.exists()):
                if fresh:
                    db.unlink(missing_ok=True)
                else:
                    copy_study(table.study_path(stem, method, targs.seed_weight_steps), db)
            if args.refine:
                copied = optuna.load_study(study_name=method, storage=f"sqlite:///{db}")
                added = enqueue_refinements(copied, args.refine)
                print(f"  {method}: enqueued {added} loss-scale neighbours of its best {args.refine}")
            source_choice = None
            population = max(2, min(targs.population, source_budget))  # as the table's searches
            if method in TABLE_METHODS:  # compared with the table's choice, continued or searched afresh
                source_path = table.study_path(stem, method, targs.seed_weight_steps)
                source_study = optuna.load_study(study_name=method, storage=f"sqlite:///{source_path}")
                source_choice = tm.verified_choice(source_study)[1]
                population = stored_config(source_study).search.population  # the table caps it by its budget
            progress_path = out / f"{args.run}-{method}-budgets.json"
            progress = json.loads(progress_path.read_text()) if args.resume and progress_path.exists() else {}
            study = None
            for budget in args.budgets:
                label = f"{method}@{budget}"
                if label not in progress:  # search to this budget, verify, and record it before going on
                    study = tm.kdzero_search(
                        exp,
                        evaluator,
                        budget,
                        db,
                        kinds,
                        population=population,
                        sampler=sampler,
                        verify_top=args.verify_top or targs.verify_top,
                        seed=args.search_seed,
                        verify_seeds=args.verify_seeds or targs.verify_seeds,
                        verify_rungs=targs.verify_rungs,
                        verify_known=args.verify_known,
                        # the table's generation 0 unless this run searches afresh with its own
                        seed_weight_steps=args.seed_weight_steps or targs.seed_weight_steps,
                        threads=args.threads,
                        echo=lambda s: print("    " + s.splitlines()[0], flush=True),
                    )
                    progress[label] = budget_record(study, budget, kd_fitness)
                    write_json(progress_path, progress)
                rec = progress[label]
                spec = DistillerSpec.from_dict(rec["spec"]) if rec["spec"] is not None else None
                if rec["found"]:
                    for seed in range(args.seeds):
                        if not reuse_row(rows, source_rows, exp, args.regime, label, spec, seed, ident):
                            pool.submit(exp, args.regime, label, spec, seed, args.device, ident)
                plans.append(
                    {**rec, "method": method, "label": label, "spec": spec, "source_choice": source_choice}
                )
            if study is None:
                study = optuna.load_study(study_name=method, storage=f"sqlite:///{db}")
            if args.unstop:  # the final study of this sampler
                plans[-1]["unstopped"] = unstopped(
                    study, evaluator, out / f"{args.run}-{method}-unstopped.json"
                )
        pool.drain()
    finally:
        pool.close()

    results = []
    for p in plans:
        mine = [
            dict(r, method="chosen")
            for r in rows.rows
            if r["method"] == p["label"]
            and r["spec"] == (p["spec"].to_dict() if p["spec"] is not None else None)
        ]
        specs = {"ce": None, "kd-tuned": kd_spec, p["method"]: p["source_choice"]}
        both = mine + current_rows(
            source_rows, args.regime, args.student, specs, exp.student_train.epochs, ident
        )
        accs = [r["test_acc"] for r in mine if r["test_acc"] is not None]
        results.append(
            {
                "method": p["method"],
                "budget": p["budget"],
                "formula": p["spec"].formula() if p["spec"] is not None else ("ce" if p["found"] else "-"),
                "spec": p["spec"].to_dict() if p["spec"] is not None else None,
                "verified": p["verified"],
                "best_fitness": p["best_fitness"],
                "trials_to_kd_tuned": p["trials_to_kd_tuned"],
                "curve": p["curve"],
                "test_mean": statistics.fmean(accs) if accs else None,
                "test_std": statistics.stdev(accs) if len(accs) > 1 else math.nan,
                "vs_kd_tuned": paired_difference(both, "chosen", "kd-tuned")._asdict(),
                "vs_ce": paired_difference(both, "chosen", "ce")._asdict(),
                "vs_source_choice": paired_difference(both, "chosen", p["method"])._asdict(),
                "unstopped": p.get("unstopped"),
                "refinements": refinement_counts(out / f"{args.run}-{p['method']}.db", p["method"]),
                "search_cpu_s": p["search_cpu_s"],
                "verify_cpu_s": p["verify_cpu_s"],
            }
        )
    summary = {
        "meta": {
            "command": "python -m benchmarks.search_reach "
            + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
            "date": today(),
            "machine": machine(),
            "source": args.source,
            "regime": args.regime,
            "student": args.student,
            "budgets": args.budgets,
            "refine": args.refine,
            "verify_top": args.verify_top or targs.verify_top,
            "verify_known": args.verify_known,
            "verify_seeds": args.verify_seeds or targs.verify_seeds,
            "search_seed": args.search_seed,
            "seed_weight_steps": list(args.seed_weight_steps),
            "seeds": args.seeds,
            "source_budget": source_budget,
            "kd_tuned_fitness": kd_fitness,
            "kd_tuned_formula": kd_spec.formula(),
            "total_s": time.perf_counter() - t0,
        },
        "results": results,
    }
    write_json(out / f"{args.run}.summary.json", clean_json(summary))
    md = render(summary)
    (out / f"{args.run}.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
