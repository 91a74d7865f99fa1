"""Rendering of the Table-3 benchmark: markdown, the proxy-fidelity figure, README section, machine facts."""

from __future__ import annotations

import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.table_stats import HANDCRAFTED, MethodSummary, PairedDiff
from study.fitness import SCALAR_NAME

README_START, README_END = "<!-- table:start -->", "<!-- table:end -->"
METHOD_NOTES = {
    "ce": "cross-entropy only (no distiller)",
    "ce-2x": "cross-entropy with twice the epochs (convergence check, not a rival)",
    "kd-tuned": "KD, tau x W tuned by TPE on the proxy fitness",
    "dist-tuned": "DIST, tau x W tuned by TPE on the proxy fitness",
    "rand-kd": "random search of the space, same generation 0, budget and verified selection",
    "kd-zero": "NSGA-II search (study.run_search), verified selection",
}


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version, Python and platform of this machine."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def command_line(argv: Sequence[str] | None) -> str:
    """The command that produced a run, as it would be typed."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "python -m benchmarks.table " + " ".join(shlex.quote(a) for a in args)


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.2f}"


def format_diff(d: PairedDiff) -> str:
    """``+m.mm +- s.ss`` in points of a paired difference (``-`` when no seed pairs)."""
    if d.n == 0:
        return "-"
    se = "n/a" if not math.isfinite(d.se) else f"{100 * d.se:.2f}"
    return f"{100 * d.mean:+.2f} +- {se}"


def setting_table(
    summaries: Sequence[MethodSummary], specs: Mapping[str, str], best: str | None
) -> list[str]:
    """Markdown lines of one setting: method, distiller / hyperparameters, n, test acc, paired differences."""
    lines = [
        f"| method | distiller (hyperparameters) | n | test acc % (mean +- std) | val acc % "
        f"| diff vs ce (+- SE) | diff vs best rival{f' ({best})' if best else ''} (+- SE) | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        std = "n/a" if not math.isfinite(s.test_std) else f"{100 * s.test_std:.2f}"
        formula = specs.get(s.method, "")
        note = METHOD_NOTES.get(s.method)
        label = (
            f"`{formula}`" + (f" ({note})" if note and s.method != "ce" else "") if formula else note or ""
        )
        n = f"{s.n}" + (f" (+{s.failed} diverged)" if s.failed else "")
        lines.append(
            f"| {s.method} | {label} | {n} | {_pct(s.test_mean)} +- {std} | {_pct(s.val_mean)} "
            f"| {format_diff(s.vs_ce)} | {format_diff(s.vs_best)} | {s.wall_mean:.1f} |"
        )
    return lines


def fidelity_table(corr: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown lines of the rank correlations of one setting."""
    lines = ["| proxy quantity | sign | n | Kendall tau (p) | Spearman rho (p) |", "|---|---|---|---|---|"]
    for name, c in corr.items():
        sign = "negated (lower is better)" if c["negated"] else "as is"
        lines.append(
            f"| {name} | {sign} | {c['n']} | {c['kendall_tau']:.3f} ({c['kendall_p']:.3g}) "
            f"| {c['spearman_rho']:.3f} ({c['spearman_p']:.3g}) |"
        )
    return lines


def search_line(search: Mapping[str, Any] | None) -> list[str]:
    """The header line of the searches' settings (``meta.search``; none in runs written before it existed)."""
    if not search:
        return []
    steps = search.get("seed_weight_steps") or []
    gen0 = "the known distillers" + (
        f" and their loss-scale variants (weight steps {', '.join(str(k) for k in steps)})" if steps else ""
    )
    return [
        f"- searches (rand-kd, kd-zero): population {search['population']}; generation 0: {gen0}; "
        f"verification: the {search['verify_top']} best distinct candidates, the best known distiller and "
        f"CE, each trained for {search['verify_fraction']:.0%} of the schedule on {search['verify_seeds']} "
        "seed(s)"
    ]


def prefix_lines(prefix: Mapping[str, Any] | None) -> list[str]:
    """Kendall tau of the full runs' validation accuracy part-way through against their test accuracy."""
    if not prefix or prefix.get("n", 0) < 3:
        return []
    cells = [
        f"{name} {c['kendall_tau']:.3f}" if c["kendall_tau"] == c["kendall_tau"] else f"{name} n/a"
        for name, c in prefix["correlations"].items()
    ]
    return [
        f"Validation accuracy along the full runs (what a proxy or verification run stopped there measures) "
        f"against test accuracy, {prefix['n']} distillers ({prefix['seeds']} runs), Kendall tau at each "
        f"fraction of the schedule: {', '.join(cells)}.",
        "",
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The whole markdown report of a run (``report`` as written to ``<run>.summary.json``)."""
    meta = report["meta"]
    m = meta["machine"]
    out = [
        f"### KD-Zero Table 3 reproduction: {meta['dataset']}, teacher {meta['teacher']}"
        + (" (QUICK mode: tiny data and budgets, not a result)" if meta["quick"] else ""),
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; machine: {m['cpu']}, {m['cores']} cores "
        f"({m['torch_threads']} torch threads), torch {m['torch']}, Python {m['python']}"
        + (f", GPU {m['cuda']}" if m.get("cuda") else ""),
        f"- schedule: epochs per full training {meta['epochs']}, seeds {meta['seeds']}; "
        f"proxy: {meta['proxy']}; trial budget N = {meta['budget']} for kd-tuned, dist-tuned, rand-kd and "
        "kd-zero",
        *search_line(meta.get("search")),
        (f"- teacher: `{meta['teacher_command']}`" if meta.get("teacher_command") else "- teacher: quick")
        + (
            f"; weights identity {', '.join(meta['teacher_identity'])}, archived in "
            f"`{Path(meta['teacher_archive']).name}/`"
            if meta.get("teacher_identity")
            else ""
        ),
        "- test accuracy in %; `diff` = mean of per-seed paired differences, "
        "SE = std(diffs, ddof=1) / sqrt(n)",
        "- handcrafted distillers use their published hyperparameters (spaces/_known.py): "
        + "; ".join(f"`{k}`: {v}" for k, v in meta["handcrafted"].items()),
        "",
    ]
    for key, setting in report["settings"].items():
        out += [
            f"#### {key} (train samples {setting['train_size']}, teacher test acc "
            f"{_pct(setting['teacher_test_acc'])}%"
            + (f", teacher identity {setting['teacher_identity']}" if setting.get("teacher_identity") else "")
            + ")",
            "",
        ]
        sums = [
            MethodSummary(**{**s, "vs_ce": PairedDiff(**s["vs_ce"]), "vs_best": PairedDiff(**s["vs_best"])})
            for s in setting["summary"]
        ]
        out += setting_table(sums, setting["formulas"], setting["best_handcrafted"])
        if setting["skipped"]:
            out += ["", "Skipped: " + "; ".join(f"`{k}`: {v}" for k, v in setting["skipped"].items())]
        cost = setting["search_cost"]
        conv = setting.get("convergence")
        if conv and conv.get("n"):
            out += [
                "",
                f"Convergence: CE with twice the epochs minus CE = {format_diff(PairedDiff(**conv))} pt "
                "(target < 0.3).",
            ]
        out += [
            "",
            f"Search cost ({cost.get('clock', 'wall')} seconds): kd-zero search {cost['search_s']:.0f} s = "
            f"{cost['search_units']:.2f} full CE "
            f"trainings (mean CE run {cost['ce_run_s']:.1f} s); one search candidate (rejections and early "
            f"stops included) = 1/{1 / cost['candidate_units']:.1f} of a full distillation run "
            f"({cost['distill_run_s']:.1f} s; paper: <= 1/40); acceleration over N full runs "
            f"{cost['acceleration']:.1f}x"
            + (
                f"; leaving out twins (never trained) 1/{1 / cost['candidate_units_trained']:.1f}"
                if cost.get("candidate_units_trained", 0) > 0
                else ""
            )
            + f". Verification: {cost['verify_s']:.0f} s = "
            f"{cost['verify_units']:.2f} full distillation runs"
            + (
                f"; search and verification {cost['search_verify_ce_units']:.2f} full CE trainings"
                if "search_verify_ce_units" in cost
                else ""
            )
            + ". Tuning: kd-tuned "
            f"{cost['kd_tuned_s']:.0f} s, "
            f"dist-tuned {cost['dist_tuned_s']:.0f} s; rand-kd search {cost['rand_kd_s']:.0f} s; rejected "
            f"trials {cost['rejected']}."
            + (
                " kd-zero candidates by outcome (count, mean cost as a fraction of a full distillation run): "
                + ", ".join(
                    f"{k} {v['n']} at 1/{1 / v['mean_units']:.1f}" if v["mean_units"] > 0 else f"{k} {v['n']}"
                    for k, v in cost["outcomes"].items()
                )
                + "."
                if cost.get("outcomes")
                else ""
            ),
            "",
        ]
        fid = setting.get("fidelity")
        if fid:
            out += [
                f"Proxy fidelity over {len(fid['points'])} distillers (full-training test accuracy of seed "
                f"{meta['seeds'][0]}):",
                "",
            ]
            out += fidelity_table(fid["correlations"])
            out.append("")
        out += prefix_lines(setting.get("prefix_fidelity"))
    out += ["#### Targets", "", "| target | setting | value | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        met = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        out.append(f"| {t['target']} | {t['setting']} | {t['value']} | {met} |")
    out.append("")
    return "\n".join(out)


def fidelity_figure(report: Mapping[str, Any], path: Path) -> Path | None:
    """Scatter of proxy fitness against full-training test accuracy, one trace per setting, offline HTML."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, setting in report["settings"].items():
        pts = (setting.get("fidelity") or {}).get("points", [])
        if not pts:
            continue
        fig.add_trace(
            go.Scatter(
                x=[p["fitness"] for p in pts],
                y=[100 * p["test_acc"] for p in pts],
                mode="markers",
                name=key,
                text=[f"{p['source']}: {p['formula']}" for p in pts],
                hovertemplate="%{text}<br>fitness %{x:.4f}<br>test acc %{y:.2f}%<extra>" + key + "</extra>",
            )
        )
    if not fig.data:
        return None
    fig.update_layout(
        title=f"Proxy fitness ({SCALAR_NAME}, lower is better) vs full-training test acc",
        xaxis_title="proxy fitness",
        yaxis_title="test accuracy (%)",
    )
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def replace_readme_section(readme: Path, markdown: str) -> None:
    """Replace the text between ``<!-- table:start -->`` and ``<!-- table:end -->`` in ``readme``.

    Raises:
        ValueError: The file lacks the markers (the message names them), or they are out of order.
    """
    text = readme.read_text()
    i, j = text.find(README_START), text.find(README_END)
    if i < 0 or j < 0 or j < i:
        raise ValueError(
            f"{readme} needs the markers {README_START!r} and {README_END!r} (in that order) around "
            "the table section; add them where the table should go"
        )
    new = text[: i + len(README_START)] + "\n" + markdown.rstrip() + "\n" + text[j:]
    readme.write_text(new)


def today() -> str:
    """Local date and time, ISO style."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def handcrafted_notes() -> dict[str, str]:
    """Formula of each handcrafted distiller, with its published hyperparameters."""
    from spaces import KNOWN_DISTILLERS

    return {k: KNOWN_DISTILLERS[k].formula() for k in HANDCRAFTED}
