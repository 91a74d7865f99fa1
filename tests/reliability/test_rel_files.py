"""Files at the user's edge: export / report outputs, spec and config files, and a run whose distiller fails.

Each case ends in one line naming the file or value (exit 2), or, for a rejected distiller, its reason with
exit status 4; nothing the user already had is overwritten without ``--force``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rel_helpers import ROOT, assert_clean_error, run_main

from analysis._cli import main as analysis_main
from spaces import KNOWN_DISTILLERS, MAX_DATA_DEPTH, MAX_DATA_FILE_BYTES, DistillerSpec, short_repr
from study.cli import main as study_main
from tests.analysis.conftest import EXPERIMENT
from tests.analysis.helpers import add_spec, new_study
from trainers.__main__ import main as trainers_main
from trainers.distill import EXIT_REJECTED, chance_warning

SPEC = {"knowledge": "logits", "transforms": ["no", "softmax_c", "no"], "distance": "kl", "tau": 4.0}
# digits, cnn_tiny -> cnn_tiny, one epoch each: the smallest real run
RUN = {**EXPERIMENT, "student_train": {**EXPERIMENT["student_train"], "epochs": 1}}


@pytest.fixture(scope="module")
def study_url(tmp_path_factory) -> str:
    """A small kdzero-shaped study ``kd`` on digits with two known-distiller trials."""
    url = f"sqlite:///{tmp_path_factory.mktemp('files-study') / 'kd.db'}"
    study = new_study(url, config={"experiment": EXPERIMENT})
    add_spec(study, KNOWN_DISTILLERS["kd"], [1.0, 0.5, 0.5])
    add_spec(study, KNOWN_DISTILLERS["dist"], [0.8, 0.6, 0.4])
    return url


@pytest.fixture(scope="module")
def run_files(tmp_path_factory) -> dict[str, Path]:
    """The experiment JSON of a one-epoch digits run, and a shared teacher cache (trained once)."""
    folder = tmp_path_factory.mktemp("files-run")
    (folder / "exp.json").write_text(json.dumps(RUN))
    return {"exp": folder / "exp.json", "cache": folder / "cache"}


def _analysis(capsys, command: str, url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [command, "--storage", url, "--study", "kd", "--out", str(out), *extra]
    if command == "report":
        argv += ["--importance-trees", "2"]
    return run_main(analysis_main, argv, capsys)


# ------------------------------------------------------------------ 1. export / report --out
def test_export_out_that_is_a_file_or_under_a_file_is_refused(study_url, tmp_path, capsys) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    proc = _analysis(capsys, "export", study_url, mine, "--trial", "0")
    assert proc.returncode == 2
    assert_clean_error(proc, f"--out {str(mine)!r} is a file, not a folder")
    proc = _analysis(capsys, "export", study_url, mine / "sub", "--trial", "0")
    assert proc.returncode == 2
    assert_clean_error(proc, f"cannot create the export folder {str(mine / 'sub')!r}")
    assert mine.read_text() == "my notes"


def test_export_over_an_existing_export_needs_force(study_url, tmp_path, capsys) -> None:
    out = tmp_path / "export"
    assert _analysis(capsys, "export", study_url, out, "--trial", "0").returncode == 0
    (out / "distiller.json").write_text("edited by hand\n")
    proc = _analysis(capsys, "export", study_url, out, "--trial", "1")
    assert proc.returncode == 2
    assert_clean_error(proc, f"{str(out / 'distiller.json')!r} already exists", "--force")
    assert (out / "distiller.json").read_text() == "edited by hand\n"  # nothing was written
    proc = _analysis(capsys, "export", study_url, out, "--trial", "1", "--force")
    assert proc.returncode == 0, proc.stderr
    assert DistillerSpec.from_file(out / "distiller.json") == KNOWN_DISTILLERS["dist"]


def test_report_out_that_is_a_folder_or_under_a_file_is_refused(study_url, tmp_path, capsys) -> None:
    proc = _analysis(capsys, "report", study_url, tmp_path)
    assert proc.returncode == 2
    assert_clean_error(proc, f"--out {str(tmp_path)!r} is a folder", str(tmp_path / "report.html"))
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    proc = _analysis(capsys, "report", study_url, blocker / "report.html")
    assert proc.returncode == 2
    assert_clean_error(proc, f"cannot create the report's folder {str(blocker)!r}")


def test_report_over_an_existing_file_needs_force(study_url, tmp_path, capsys) -> None:
    out = tmp_path / "report.html"
    out.write_text("an older report I want to keep")
    proc = _analysis(capsys, "report", study_url, out)
    assert proc.returncode == 2
    assert_clean_error(proc, f"{str(out)!r} already exists; pass --force to overwrite it")
    assert out.read_text() == "an older report I want to keep"
    proc = _analysis(capsys, "report", study_url, out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


# ------------------------------------------------------------------ 2. spec and config files
def _distill(capsys, *args: str) -> subprocess.CompletedProcess:
    return run_main(trainers_main, ["distill", *args, "--dataset", "digits", "--no-progress"], capsys)


def test_missing_spec_file_says_not_found(tmp_path, capsys) -> None:
    missing = tmp_path / "missing.json"
    proc = _distill(capsys, "--distiller", str(missing))
    assert proc.returncode == 2
    assert_clean_error(proc, f"spec file {str(missing)!r} not found")
    assert "not valid JSON" not in proc.stderr


def test_a_long_value_is_quoted_short(tmp_path, capsys) -> None:
    path = tmp_path / "long.json"
    path.write_text(json.dumps({**SPEC, "transforms": list(range(100_000))}))  # ~0.7 MB: under the size limit
    proc = _distill(capsys, "--distiller", str(path))
    assert proc.returncode == 2
    assert_clean_error(proc, str(path), "transforms must be a sequence of 3 transform names", "chars)")
    assert len(proc.stderr) < 600
    assert short_repr("x" * 1000) == repr("x" * 1000)[:200] + "... (1,002 chars)"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"[search]\nknowledge = {json.dumps(['bogus'] * 50_000)}\n")
    proc = run_main(study_main, ["search", "--config", str(cfg), "--print-config"], capsys)
    assert proc.returncode == 2 and len(proc.stderr) < 600 and "chars)" in proc.stderr, proc.stderr[:300]


@pytest.mark.parametrize("kind", ["spec", "distill-config", "study-config"])
def test_oversized_files_are_refused_up_front(tmp_path, capsys, kind) -> None:
    filler = " " * (MAX_DATA_FILE_BYTES + 10)
    if kind == "study-config":
        path = tmp_path / "big.toml"
        path.write_text("# padding\n" + filler)
        proc = run_main(study_main, ["search", "--config", str(path), "--print-config"], capsys)
    else:
        path = tmp_path / "big.json"
        path.write_text(json.dumps(SPEC) + filler)
        flag = "--distiller" if kind == "spec" else "--config"
        proc = _distill(capsys, flag, str(path), *(["--baseline", "kd"] if kind != "spec" else []))
    assert proc.returncode == 2
    size = path.stat().st_size
    assert_clean_error(proc, str(path), f"{size:,} bytes; the limit is {MAX_DATA_FILE_BYTES:,} bytes (1 MiB)")


@pytest.mark.parametrize("kind", ["spec", "distill-config", "study-config", "toml-dotted-keys"])
def test_deeply_nested_files_are_refused_without_recursion_error(tmp_path, capsys, kind) -> None:
    if kind == "study-config":
        path = tmp_path / "deep.toml"
        path.write_text("[search]\nknowledge = " + "[" * 5000 + "]" * 5000 + "\n")
        needle = "is nested 5000 levels deep; the limit is 32 levels"
        proc = run_main(study_main, ["search", "--config", str(path), "--print-config"], capsys)
    elif kind == "toml-dotted-keys":
        path = tmp_path / "dotted.toml"
        path.write_text("[" + ".".join(["k"] * 5000) + "]\nx = 1\n")  # nests without a bracket
        needle = f"is nested more than {MAX_DATA_DEPTH} levels deep"
        proc = run_main(study_main, ["search", "--config", str(path), "--print-config"], capsys)
    else:
        path = tmp_path / "deep.json"
        path.write_text('{"a": ' + "[" * 5000 + "]" * 5000 + "}")
        needle = "is nested 5001 levels deep; the limit is 32 levels"
        flag = "--distiller" if kind == "spec" else "--config"
        proc = _distill(capsys, flag, str(path), *(["--baseline", "kd"] if kind != "spec" else []))
    assert proc.returncode == 2
    assert_clean_error(proc, str(path), needle)
    assert "RecursionError" not in proc.stderr
    if kind == "spec":  # the same limit for spec text (storage, the command line)
        with pytest.raises(ValueError, match="nested 100000 levels deep"):
            DistillerSpec.from_json("[" * 100_000 + "]" * 100_000)


# ------------------------------------------------------------------ 3. binary --config
@pytest.mark.parametrize("kind", ["study-search-config", "distill-config", "distill-spec"])
def test_binary_config_or_spec_file_names_the_file(tmp_path, capsys, kind) -> None:
    binary = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    if kind == "study-search-config":
        path = tmp_path / "cfg.toml"
        path.write_bytes(binary)
        proc = run_main(study_main, ["search", "--config", str(path), "--print-config"], capsys)
        needle = f"config file {str(path)!r} is not UTF-8 TOML text"
    else:
        path = tmp_path / "file.json"
        path.write_bytes(binary)
        if kind == "distill-config":
            proc = _distill(capsys, "--baseline", "kd", "--config", str(path))
            needle = f"config file {str(path)!r} is not UTF-8 JSON text"
        else:
            proc = _distill(capsys, "--distiller", str(path))
            needle = f"spec file {str(path)!r} is not UTF-8 JSON text"
    assert proc.returncode == 2
    assert_clean_error(proc, needle, "0x89 at offset 0")
    assert "codec" not in proc.stderr


# ------------------------------------------------------------------ 4. a rejected or useless distiller
@pytest.mark.parametrize("weight", [1e30, 1e308])
def test_distill_with_a_huge_weight_ends_in_the_rejection_reason_and_exit_4(
    run_files, tmp_path, capsys, weight
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "weight": weight}))
    argv = [
        "--distiller",
        str(spec),
        "--config",
        str(run_files["exp"]),
        "--cache-dir",
        str(run_files["cache"]),
    ]
    proc = _distill(capsys, *argv, "--threads", "1", "--out", str(tmp_path / "result.json"))
    assert proc.returncode == EXIT_REJECTED == 4, proc.stderr
    assert_clean_error(proc, "error: distiller rejected (", f"{weight:g} * kl(", "exit status 4")
    assert any(f"rejected ({r})" in proc.stderr for r in ("nan", "inf", "diverge")), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "result.json").exists()


def test_exported_script_with_a_rejected_distiller_exits_4(study_url, run_files, tmp_path, capsys) -> None:
    out = tmp_path / "export"
    assert _analysis(capsys, "export", study_url, out, "--trial", "0").returncode == 0
    spec = tmp_path / "huge.json"
    spec.write_text(json.dumps({**SPEC, "weight": 1e308}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KDZERO_ROOT")}
    base = [
        sys.executable,
        str(out / "train_student.py"),
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    base += ["--cache-dir", str(run_files["cache"]), "--out", str(tmp_path / "result.json")]

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
        )

    proc = script("--distiller", str(spec))
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr and "error: distiller rejected (" in proc.stderr, proc.stderr
    assert "1e+308 * kl(" in proc.stderr
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    proc = script("--distiller", str(binary))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"spec file {str(binary)!r} is not UTF-8 JSON text" in proc.stderr


ZERO_MODEL = """
import torch
from torch import nn


class Zero(nn.Module):
    # Predicts nothing: every logit is 0 whatever the input, so its accuracy is chance.
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.flatten(1)[:, :1] * 0 * self.w + torch.zeros(x.shape[0], self.num_classes)


def zero(num_classes, in_channels):
    return Zero(num_classes)
"""


def test_a_run_that_ends_at_chance_level_says_so(run_files, user_module_factory, capsys) -> None:
    name = user_module_factory(ZERO_MODEL, "chance_models")
    argv = ["--baseline", "ce", "--config", str(run_files["exp"]), "--student", f"{name}:zero"]
    proc = _distill(capsys, *argv, "--cache-dir", str(run_files["cache"]), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "warning: validation accuracy" in proc.stderr and "is at chance level (1/10 classes" in proc.stderr
    assert chance_warning({"num_classes": 10, "val_acc": 0.9, "formula": "ce"}) is None
    assert "1/100 classes" in chance_warning({"num_classes": 100, "val_acc": 0.012, "formula": "ce"})


def test_readme_documents_force_and_the_exit_status() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "--force" in readme and "exit status 4" in readme
