"""The table's kd-zero searches verified again by the rung plan (issue 33), their choices trained on 5 seeds.

For each (regime, student) the finished kd-zero search of a ``benchmarks.table`` run (``--seed-weight-steps``
variant) is copied, once, into ``--out``; the copy's verification is planned again with ``--rungs`` (a budget
setting: the search trials are the same, and the first rung's runs, 25% of the schedule on the same seeds,
are the copied study's own), and run by ``study.search.run_search`` with the table's experiment and teacher:
the product's path, workers, artifact store and all. The first rung's runs of the copy kept no checkpoint
(they were made before continuation), so the second rung's runs train from the start: the measured cost is
above what a study made with the rung plan pays, and both are reported.

The rung plan's choice is then trained for the full schedule on the table's seeds (0-4); a training the table
already made (same distiller, schedule, seed and teacher) is copied from its rows, not run again. Rows go to
``<out>.json`` (resumable); the report compares kd-zero (rungs) with the table's rows of the same setting.

    python -m benchmarks.rung_plan --run table3v4-fashion_mnist --settings 10pct/cnn_tiny,10pct/mlp \
        --workers 2 --threads 1 --out benchmarks/results/rungs-v1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import optuna

from benchmarks import table as tb
from benchmarks.table_runs import Rows, TrainPool, copy_row, row_key
from spaces import DistillerSpec
from study import verify
from study.config import StudyConfig
from study.search import run_search
from study.verify import PairedDiff, paired_by_seed
from study.worker import stored_config

METHOD = "kd-zero-rungs"
RIVALS = ("ce", "kd", "dist", "at", "fitnets", "kd-tuned", "dist-tuned", "rand-kd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.rung_plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="table3v4-fashion_mnist", help="the benchmarks.table run to start from")
    p.add_argument("--results", default="benchmarks/results", help="folder of the table's files")
    p.add_argument("--settings", default="10pct/cnn_tiny,10pct/mlp,full/cnn_tiny,full/mlp")
    p.add_argument("--rungs", default="0.25,0.5,1.0", help="the rung plan (fractions of the schedule)")
    p.add_argument("--weight-steps", default="-1,-2", help="the table searches' --seed-weight-steps")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, default=5, help="full trainings of the choice (seeds 0..n-1)")
    p.add_argument("--out", default="benchmarks/results/rungs-v1")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--continuation",
        default=None,
        metavar="REGIME/STUDENT/METHOD/SEED",
        help="instead: train the table's METHOD distiller rung by rung (continued from checkpoints) and in "
        "one go on SEED, and compare their test accuracy with each other and with the table's row (e.g. "
        "full/mlp/kd/0)",
    )
    return p.parse_args(argv)


def continuation_check(args: argparse.Namespace, targs: argparse.Namespace, log: Any) -> dict[str, Any]:
    """A run continued over the rungs against the same run trained in one go, and the table's row of it."""
    import torch

    from spaces import KNOWN_DISTILLERS
    from trainers.proxy import ProxyEvaluator

    regime, student, method, seed_text = args.continuation.split("/")
    seed = int(seed_text)
    torch.set_num_threads(args.threads)
    exp = tb.build_experiment(targs, regime, student)
    tb.load_setting(exp, args.device, Path(targs.teacher_archive))
    table_rows = Rows(Path(args.results) / f"{args.run}.json", resume=True)
    row = table_rows.find(
        regime=regime, student=student, method=method, seed=seed, epochs=exp.student_train.epochs
    )
    spec = DistillerSpec.from_dict(row["spec"]) if row and row.get("spec") else KNOWN_DISTILLERS[method]
    rungs = tuple(float(f) for f in args.rungs.split(","))
    ev = ProxyEvaluator(exp, device=args.device)
    folder = Path(f"{args.out}-continuation")
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "setting": f"{regime}/{student}",
        "method": method,
        "seed": seed,
        "rungs": list(rungs),
    }
    for name, plan in (("continued", rungs), ("one_go", (1.0,))):
        ckpt = folder / f"{name}.pt"
        ckpt.unlink(missing_ok=True)
        t0 = time.process_time()
        for f in plan:
            fit = ev.evaluate(spec, seed=seed, fraction=f, rungs=rungs, checkpoint=ckpt)
            log(
                f"    {name}: {f:.0%} of the schedule, step {fit.steps} (from {fit.resumed_from}), "
                f"val {fit.accuracy:.4f}"
            )
        test = ev.test_metrics(ckpt)
        out[name] = {
            "val_acc": fit.accuracy,
            "test_acc": test["accuracy"] if test else None,
            "cpu_s": time.process_time() - t0,
        }
    out["table_row"] = (
        {k: row.get(k) for k in ("test_acc", "val_acc", "cpu_s", "finished_at")} if row else None
    )
    out["formula"] = spec.formula()
    Path(f"{args.out}-continuation.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def table_args(args: argparse.Namespace) -> argparse.Namespace:
    """The table's own arguments (its defaults), as its setting helpers read them."""
    return tb.parse_args(
        ["--run", args.run, f"--seed-weight-steps={args.weight_steps}", "--out", args.results]
    )


def verify_setting(
    args: argparse.Namespace, targs: argparse.Namespace, regime: str, student: str, log: Any
) -> dict:
    """Copy the setting's kd-zero search (once) and verify it with the rung plan; the copy's summary."""
    exp = tb.build_experiment(targs, regime, student)
    tb.load_setting(exp, args.device, Path(targs.teacher_archive))  # the archived teacher into the cache
    steps = tb.parse_weight_steps(args.weight_steps)
    src = tb.study_path(Path(args.results) / f"{args.run}-{regime}-{student}", "kd-zero", steps)
    out = Path(args.out)
    dst = out / f"{regime}-{student}-kd-zero.db"
    if not dst.exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    url = f"sqlite:///{dst}"
    stored = stored_config(optuna.load_study(study_name="kd-zero", storage=url))
    rungs = tuple(float(f) for f in args.rungs.split(","))
    cfg = StudyConfig(
        experiment=stored.experiment,
        search=dataclasses.replace(stored.search, verify_rungs=rungs),
        run=dataclasses.replace(
            stored.run,
            storage=url,
            study="kd-zero",
            workers=args.workers,
            threads=args.threads,
            n_trials=int(
                optuna.load_study(study_name="kd-zero", storage=url).user_attrs["kdzero_target"]["n_trials"]
            ),
            artifacts=str(dst) + ".artifacts",
        ),
    )
    t0 = time.perf_counter()
    study = run_search(cfg, prepare=None, echo=lambda s: log("    " + s.splitlines()[-1]))
    side = verify.load_side_study(study)
    assert side is not None
    table = verify.verified(study) or []
    return {
        "exp": exp,
        "study": study,
        "table": table,
        "student": verify.student(study),
        "cost": verify.verification_cost(study, side),
        "jobs": [
            t.user_attrs for t in side.get_trials(deepcopy=False) if t.user_attrs.get("role") == "verify"
        ],
        "wall_s": time.perf_counter() - t0,
    }


def today_choice(study: optuna.Study) -> str | None:
    """The formula the 25%-only verification of the copied study chose (its first rung's best row)."""
    side = verify.load_side_study(study)
    plan = verify.planned_jobs(study) or []
    first = [j for j in plan if j.endswith("@0.25")]
    rows = verify.verified_table(side, first) if side is not None and first else []
    return rows[0]["formula"] if rows else None


def _acc_by_seed(rows: list[dict[str, Any]], **where: Any) -> dict[int, float]:
    out = {}
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()) and r.get("test_acc") is not None:
            out[int(r["seed"])] = 100 * float(r["test_acc"])
    return out


def main(argv: list[str] | None = None) -> int:
    """Verify, train the choices, write ``<out>.json`` (rows) and ``<out>.md`` (report)."""
    args = parse_args(argv)
    targs = table_args(args)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.continuation:
        print(json.dumps(continuation_check(args, targs, log), indent=2))
        return 0
    table_rows = Rows(Path(args.results) / f"{args.run}.json", resume=True)
    rows = Rows(Path(f"{args.out}.json"), resume=True)
    pool = TrainPool(rows, args.workers, args.threads, log)
    summary_path = Path(f"{args.out}.summary.json")
    summary = {
        e["setting"]: e for e in (json.loads(summary_path.read_text()) if summary_path.exists() else [])
    }
    try:
        for setting in args.settings.split(","):
            regime, student = setting.split("/")
            log(f"[{setting}] verification with rungs {args.rungs}")
            v = verify_setting(args, targs, regime, student, log)
            exp, record = v["exp"], v["student"]
            ident = v["study"].user_attrs["kdzero_teacher"]["identity"]
            choice = v["table"][0] if v["table"] else None
            spec = DistillerSpec.from_json(choice["spec"]) if choice and choice.get("spec") else None
            for seed in range(args.seeds):
                key = row_key(exp, regime, METHOD, spec, seed, ident)
                if rows.find(**key) is not None:
                    continue
                twin = table_rows.twin(key)
                if twin is not None:
                    copy_row(rows, {**twin, "method": f"{args.run}:{twin['method']}"}, key, None, log)
                else:
                    pool.submit(exp, regime, METHOD, spec, seed, args.device, ident)
            pool.drain()
            mine = _acc_by_seed(rows.rows, regime=regime, student=student, method=METHOD)
            rivals = {
                m: _acc_by_seed(
                    table_rows.rows, regime=regime, student=student, method=m, epochs=exp.student_train.epochs
                )
                for m in RIVALS
            }
            rivals = {m: a for m, a in rivals.items() if len(a) == args.seeds}
            best = max(rivals, key=lambda m: statistics.fmean(rivals[m].values()))
            today = _acc_by_seed(table_rows.rows, regime=regime, student=student, method="kd-zero")
            d_best: PairedDiff = paired_by_seed(mine, rivals[best])
            d_today = paired_by_seed(mine, today)
            cost = v["cost"] or []
            cpu = sum(c["cpu_s"] for c in cost)
            # full-schedule runs the plan trains, from the jobs' steps: a study made with the rung plan (every
            # later rung continued) against the 25%-only plan of the table (its first rung alone)
            plan_runs = sum(
                c["jobs"] * (c["fraction"] - (cost[i - 1]["fraction"] if i else 0.0))
                for i, c in enumerate(cost)
            )
            today_runs = cost[0]["jobs"] * cost[0]["fraction"] if cost else 0.0
            table_summary = json.loads((Path(args.results) / f"{args.run}.summary.json").read_text())
            today_units = table_summary["settings"][setting]["search_cost"]["verify_units"]
            line = {
                "setting": setting,
                "choice": choice.get("formula") if choice else None,
                "choice_val_acc": choice.get("val_acc") if choice else None,
                "choice_fraction": choice.get("fraction") if choice else None,
                "choice_25pct": today_choice(v["study"]),
                "test_acc": statistics.fmean(mine.values()) if mine else None,
                "best_rival": best,
                "best_rival_acc": statistics.fmean(rivals[best].values()),
                "diff_vs_best": [d_best.mean, d_best.se, d_best.n],
                "diff_vs_25pct_kd_zero": [d_today.mean, d_today.se, d_today.n],
                "student_test_acc_measured_once": record.get("test_acc") if record else None,
                "cost_per_rung": cost,
                "verification_cpu_s_here": cpu,
                "full_schedule_runs_rung_plan": plan_runs,
                "full_schedule_runs_25pct_plan": today_runs,
                "distillation_runs_25pct_plan": today_units,
                "distillation_runs_rung_plan": today_units * plan_runs / today_runs if today_runs else None,
                "wall_s": v["wall_s"],
            }
            line["report"] = [
                f"#### {setting}",
                "",
                f"- choice: `{line['choice']}` at {line['choice_val_acc']:.4f} validation accuracy, "
                f"{line['choice_fraction']:.0%} of the schedule",
                f"- kd-zero (rungs) test acc {line['test_acc']:.2f}% over {len(mine)} seeds; best rival "
                f"{best} {line['best_rival_acc']:.2f}%: diff {d_best.mean:+.2f} +- {d_best.se:.2f} "
                f"(n {d_best.n}); vs the 25%-verified kd-zero row {d_today.mean:+.2f} +- {d_today.se:.2f}",
                f"- the 25%-only verification chose `{line['choice_25pct']}`"
                + (" (the same)" if line["choice_25pct"] == line["choice"] else " (another distiller)"),
                f"- verification cost: the rung plan trains {plan_runs:.2f} full-schedule runs ("
                + ", ".join(f"{c['fraction']:.0%}: {c['jobs']} jobs" for c in cost)
                + f"), the 25%-only plan {today_runs:.2f} (x{plan_runs / today_runs:.2f}); in full "
                f"distillation runs by CPU time, the table's {today_units:.2f} for the 25%-only plan scales "
                "to "
                f"{line['distillation_runs_rung_plan']:.2f}. (Here the 50% runs trained from the start: the "
                f"copied first rung kept no checkpoints; {cpu:.0f} CPU s measured for all rungs.)",
                "",
            ]
            summary[setting] = line
            summary_path.write_text(json.dumps(list(summary.values()), indent=2) + "\n")
            head = [f"### Rung plan {args.rungs} on `{args.run}` (kd-zero searches verified again)", ""]
            body = [text for e in summary.values() for text in e["report"]]
            Path(f"{args.out}.md").write_text("\n".join([*head, *body]) + "\n")
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
