"""Summaries of a running or finished study: counts, rejection reasons, shrinkage weights, best trials."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from study import verify
from study.config import StudyConfig
from study.fitness import SCALAR_NAME, scalarised
from study.shrinkage import published_weights, shrinkage_weights
from study.storage import mask_url


class StudySummary(NamedTuple):
    """What ``python -m study status`` and the progress line show."""

    name: str
    states: dict[str, int]  # state name -> count
    generations: dict[int, dict[str, int]]  # generation -> state name -> count (-1: no generation yet)
    reasons: dict[str, int]  # reject_reason -> count
    early_stopped: int
    weights: dict[str, dict[str, float]]  # gene -> choice (JSON) -> shrinkage weight
    pareto: list[FrozenTrial]  # non-dominated COMPLETE trials, one per distinct distiller, best first
    best: FrozenTrial | None  # lowest scalarised fitness (SCALAR_NAME) on the front
    reference_acc: float | None = None  # proxy validation accuracy of the CE reference (no distiller)
    verified: list[dict[str, Any]] | None = None  # kdzero_verified: the verified candidates, best first
    verify_jobs: tuple[int, int] | None = None  # (finished, planned) verification jobs once planned
    verify_cost: list[dict[str, Any]] | None = None  # per rung: fraction, jobs, full_runs, cpu_s
    student: dict[str, Any] | None = None  # kdzero_student: the choice's trained student


def summarise(study: optuna.Study, search: StudyConfig | None = None) -> StudySummary:
    """Collect the counts, reasons, weights and the Pareto front of a study from storage."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    gens: dict[int, Counter] = {}
    for t in trials:
        g = t.user_attrs.get("generation")
        g = -1 if g is None else int(g)
        gens.setdefault(g, Counter())[t.state.name] += 1
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    reasons = Counter(str(t.user_attrs.get("reject_reason", "unknown")) for t in pruned)
    if search is not None:
        weights = shrinkage_weights(trials, search.search.shrink_reasons, search.search.shrink_floor)
    else:
        weights = published_weights(study)
    pareto = verify.distinct_front(study)
    side = verify.load_side_study(study)
    ref = verify.reference(side) if side is not None else None
    plan = verify.planned_jobs(study)
    jobs = None
    if side is not None and plan is not None:
        jobs = (verify.finished_jobs(side, plan), len(plan))
    return StudySummary(
        name=study.study_name,
        states=dict(sorted(states.items())),
        generations={g: dict(sorted(c.items())) for g, c in sorted(gens.items())},
        reasons=dict(reasons.most_common()),
        early_stopped=reasons.get("early_stop", 0),
        weights=weights,
        pareto=pareto,
        best=pareto[0] if pareto else None,
        reference_acc=float(ref.value) if ref is not None and ref.value is not None else None,
        verified=verify.verified(study),
        verify_jobs=jobs,
        verify_cost=verify.verification_cost(study, side) if side is not None else None,
        student=verify.student(study),
    )


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def progress_line(
    summary: StudySummary,
    target: int,
    started: float,
    deadline: float | None,
    done_before: int,
    rate_start: float | None = None,
) -> str:
    """One line: trials complete / rejected / stopped early / running, best so far, time left.

    Args:
        summary: From :func:`summarise`.
        target: Study-wide target of finished trials.
        started: When the search started (``time.time()``), for the elapsed time.
        deadline: When no new trial starts any more, or ``None``.
        done_before: Trials finished before this run (a resumed study).
        rate_start: When the workers started; the time left is extrapolated from the rate since then.
    """
    s = summary.states
    complete, pruned, running = s.get("COMPLETE", 0), s.get("PRUNED", 0), s.get("RUNNING", 0)
    finished = complete + pruned
    rejected = pruned - summary.early_stopped
    elapsed = time.time() - started
    left: float | None = None
    new = finished - done_before
    if finished >= target:
        left = 0.0
    elif new > 0:
        left = (time.time() - (rate_start or started)) / new * (target - finished)
    if deadline is not None:
        to_deadline = max(0.0, deadline - time.time())
        left = min(left, to_deadline) if left is not None else to_deadline
    best = summary.best
    best_txt = (
        f"best #{best.number} {scalarised(best):.4f} {best.user_attrs.get('formula', '')}"
        if best
        else "best -"
    )
    left_txt = _fmt_s(left) if left is not None else "?"
    line = (
        f"[{_fmt_s(elapsed)}] {finished}/{target} finished: {complete} complete, {rejected} rejected, "
        f"{summary.early_stopped} stopped early, {running} running | {best_txt}"
    )
    if summary.verify_jobs is not None:
        done, planned = summary.verify_jobs
        return line + f" | verification {done}/{planned} runs"
    return line + f" | search ~{left_txt} left"


def _values(t: FrozenTrial) -> str:
    return " ".join(f"{v:.4f}" for v in t.values) if t.values else "-"


def format_summary(summary: StudySummary, top: int = 5) -> str:
    """Multi-line text of ``python -m study status``."""
    lines = [
        f"study {summary.name!r}",
        "trials per state: " + (", ".join(f"{k} {v}" for k, v in summary.states.items()) or "none"),
    ]
    lines.append("trials per generation:")
    for g, c in summary.generations.items():
        label = "  (none)" if g < 0 else f"  gen {g:3d}"
        lines.append(f"{label}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    lines.append(
        "rejection reasons: " + (", ".join(f"{k} {v}" for k, v in summary.reasons.items()) or "none")
    )
    lines.append("shrinkage weights (gene: choice=weight; unlisted choices weigh 1):")
    for gene, per in summary.weights.items():
        shown = ", ".join(f"{k.strip(chr(34))}={w:.2f}" for k, w in sorted(per.items(), key=lambda kv: kv[1]))
        lines.append(f"  {gene}: {shown}")
    ref = summary.reference_acc
    lines.append(
        "CE reference (no distiller, proxy fidelity): "
        + (f"val acc {ref:.4f}" if ref is not None else "not run yet")
    )
    lines.append(
        f"Pareto front ({len(summary.pareto)} distinct distillers; val_ce sharpness_gap cka_gap | "
        f"{SCALAR_NAME} | acc | gain vs CE):"
    )
    for t in summary.pareto[:top]:
        acc = t.user_attrs.get("accuracy")
        acc_txt = f"{acc:.4f}" if isinstance(acc, (int, float)) else "-"
        gain = acc - ref if isinstance(acc, (int, float)) and ref is not None else None
        gain_txt = f"{gain:+.4f}" if gain is not None else "-"
        lines.append(
            f"  #{t.number:<4d} {_values(t)} | {scalarised(t):.4f} | {acc_txt} | {gain_txt} | "
            f"{t.user_attrs.get('formula', '')}"
        )
    if summary.verify_jobs is not None and summary.verified is None:
        done, planned = summary.verify_jobs
        lines.append(f"verification: {done}/{planned} runs finished")
    if summary.verified is not None:
        lines.extend(format_verified(summary.verified))
    lines.extend(cost_lines(summary.verify_cost))
    return "\n".join(lines)


def cost_lines(costs: list[dict[str, Any]] | None) -> list[str]:
    """The verification's cost per rung in full-schedule runs (a continued run counts what it trained)."""
    if not costs:
        return []
    total = sum(c["full_runs"] for c in costs)
    parts = ", ".join(
        f"{c['fraction']:.0%}: {c['jobs']} runs = {c['full_runs']:.2f}" for c in costs if c["jobs"]
    )
    return [f"verification cost: {total:.2f} full-schedule runs ({parts or 'none yet'})"]


def student_lines(record: dict[str, Any] | None, location: str) -> list[str]:
    """Where the chosen student is, its validation and (measured once, after the choice) test accuracy."""
    if record is None:
        return []
    test = record.get("test_acc")
    test_txt = f", test acc {test:.4f} (measured once, after the choice)" if isinstance(test, float) else ""
    ckpt = record.get("checkpoint") or {}
    return [
        f"trained student: seed {record.get('seed')} at {float(record.get('fraction') or 0):.0%} of the "
        f"schedule, val acc {record.get('val_acc', 0.0):.4f}{test_txt}",
        f"  artifact {ckpt.get('artifact_id')} in {location} (sha256 {str(ckpt.get('sha256'))[:12]}...)",
    ]


def _label(row: dict[str, Any]) -> str:
    return "CE reference" if row.get("trial") is None else f"#{row['trial']}"


def format_verified(table: list[dict[str, Any]]) -> list[str]:
    """Lines of the ``kdzero_verified`` table: candidate, seeds, mean +- std validation accuracy, formula."""
    lines = ["verified (other seeds, rung by rung: mean +- std val acc at the last rung reached):"]
    for row in table:
        acc = row.get("val_acc")
        acc_txt = f"{acc:.4f} +- {row.get('val_acc_std', 0.0):.4f}" if acc is not None else "-"
        rej = f", {row['rejected']} rejected" if row.get("rejected") else ""
        at = f" at {row['fraction']:.0%}" if isinstance(row.get("fraction"), (int, float)) else ""
        lines.append(
            f"  {_label(row):<13s} seeds {row.get('seeds')}{rej}{at}: {acc_txt} | {row.get('formula', '')}"
        )
    return lines


def choice_text(study: optuna.Study, summary: StudySummary) -> list[str]:
    """What the search chose, in plain words: the verified winner, or else the best scalarised trial."""
    if summary.verified:
        win = summary.verified[0]
        if win.get("val_acc") is None:
            return ["no choice: every verification run was rejected (see the companion study's reasons)"]
        if win.get("trial") is None:
            return [
                "chosen: plain cross-entropy training (the CE reference) -- no distiller beat it in the "
                "verification; distillation does not help this pair at this budget"
            ]
        known = ""
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == win["trial"]), None)
        if trial is not None and trial.user_attrs.get("known"):
            known = f" -- the known distiller {trial.user_attrs['known']!r}: the search found nothing better"
        elif trial is not None and trial.user_attrs.get("seeded_from"):
            known = (
                f" -- the known distiller {trial.user_attrs['seeded_from']!r} at another loss scale (weight "
                f"step {trial.user_attrs.get('weight_step')}), seeded in generation 0"
            )
        at = (
            f" at {win['fraction']:.0%} of the schedule"
            if isinstance(win.get("fraction"), (int, float))
            else ""
        )
        return [
            f"chosen trial #{win['trial']} (best verified val acc {win['val_acc']:.4f}{at}){known}:",
            f"  {win.get('formula', '')}",
            *margin_lines(study, summary.verified),
        ]
    if summary.best is not None:
        b = summary.best
        return [
            f"chosen trial #{b.number} (min {SCALAR_NAME} = {scalarised(b):.4f}; not verified):",
            f"  {b.user_attrs.get('formula', '')}",
        ]
    return ["no trial completed yet"]


def margin_lines(study: optuna.Study, table: list[dict[str, Any]]) -> list[str]:
    """How far the verified choice is above plain CE and the best verified known distiller, paired by seed.

    A margin within 2 SE of the known distiller is said to be one the verification cannot resolve: on other
    seeds, or after the whole schedule, the two may rank the other way. Rows without per-seed accuracies
    (tables written before them) give no line.
    """
    win = verify.seed_accuracies(table[0])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rung = table[0].get("rung")
    ce = next((r for r in table[1:] if r.get("trial") is None and r.get("rung") == rung), None)
    known = next(
        (r for r in table[1:] if r.get("trial") in trials and trials[r["trial"]].user_attrs.get("known")),
        None,
    )
    lines = []
    if known is not None and known.get("rung") != rung:  # it stopped at an earlier rung (diverged)
        name = trials[known["trial"]].user_attrs["known"]
        lines.append(f"  the known distiller {name!r} stopped at {known.get('fraction', 0):.0%}: no margin")
        known = None
    if ce is not None and (d := verify.paired_by_seed(win, verify.seed_accuracies(ce))).n >= 2:
        lines.append(f"  {d.mean:+.4f} +- {d.se:.4f} val acc over plain CE, paired over {d.n} seeds")
    if known is not None and (d := verify.paired_by_seed(win, verify.seed_accuracies(known))).n >= 2:
        name = f"the known distiller {trials[known['trial']].user_attrs['known']!r} (#{known['trial']})"
        text = f"  {d.mean:+.4f} +- {d.se:.4f} val acc over {name}, paired over {d.n} seeds"
        if d.se > 0 and d.mean / d.se <= 2:
            text += f" ({d.mean / d.se:.1f} SE): within 2 SE, a margin this verification cannot resolve"
        elif d.se > 0:
            text += f" ({d.mean / d.se:.1f} SE)"
        lines.append(text)
    return lines


def final_report(study: optuna.Study, cfg: StudyConfig) -> str:
    """End-of-search text: Pareto front, the chosen trial's formula, commands to browse and export."""
    summary = summarise(study, cfg)
    lines = [format_summary(summary, top=len(summary.pareto))]
    lines.extend(teacher_lines(study))
    lines.extend(choice_text(study, summary))
    from study.artifacts import default_location

    lines.extend(
        student_lines(
            summary.student, cfg.run.artifacts or default_location(cfg.run.storage, cfg.experiment.cache_dir)
        )
    )
    url = mask_url(cfg.run.storage)
    lines.append(f"browse:  optuna-dashboard {url}")
    lines.append(
        f"export:  python -m analysis export --storage {url} --study {study.study_name} --out export/"
    )
    return "\n".join(lines)


def teacher_lines(study: optuna.Study) -> list[str]:
    """The study's teacher(s) as stored: names, identity, validation accuracy.

    A teacher below its student's own CE accuracy at verification fidelity gets a warning: distilling from it
    is unlikely to help.
    """
    from study.worker import TEACHER_ATTR

    rec = study.user_attrs.get(TEACHER_ATTR)
    if not isinstance(rec, dict):
        return []
    each = rec.get("teachers") or [
        {"model": rec.get("model"), "val_acc": rec.get("val_acc"), "checkpoint": rec.get("checkpoint")}
    ]
    ce = next((r for r in verify.verified(study) or [] if r.get("trial") is None), None)
    ce_acc = ce.get("val_acc") if ce is not None else None
    lines = [f"teacher(s), identity {rec.get('identity')}:"]
    for t in each:
        acc = t.get("val_acc")
        acc_text = f", val acc {acc:.4f}" if isinstance(acc, (int, float)) else ""
        source = "your checkpoint" if t.get("checkpoint") else "trained by kdzero"
        lines.append(f"  {t.get('model')} ({source}{acc_text})")
        if isinstance(ce_acc, (int, float)) and isinstance(acc, (int, float)) and ce_acc > acc:
            lines.append(
                f"warning: teacher {t.get('model')}'s validation accuracy {acc:.4f} is below the student's "
                f"own CE accuracy {ce_acc:.4f} (measured at the verification fidelity): distilling from it "
                "is unlikely to help"
            )
    return lines


def trial_record(t: FrozenTrial) -> dict[str, Any]:
    """A JSON-able record of a trial (number, state, values, params, user attrs)."""
    return {
        "number": t.number,
        "state": t.state.name,
        "values": t.values,
        "params": t.params,
        "user_attrs": t.user_attrs,
    }
