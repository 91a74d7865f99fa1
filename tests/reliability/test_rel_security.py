"""Security: checkpoints load with weights_only (a pickle payload never runs), no code from storage reaches an
export, servers bind 127.0.0.1, and a storage URL's password is never printed nor stored."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from rel_helpers import ROOT, assert_clean_error, config, run_main, search
from study_fakes import make_fake

from analysis._cli import main as analysis_main
from spaces import DistillerSpec, spec_to_params
from study._optuna import study_system_attrs
from trainers.__main__ import main as trainers_main
from trainers.models import create_model

PAYLOAD = "__import__('os').system('touch {marker}')"


class Payload:
    """Unpickling this runs ``touch <marker>`` (only an unsafe ``torch.load`` would do it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory) -> Path:
    """A cache folder holding a real cnn_tiny teacher trained by the CLI on digits (1 epoch)."""
    cache = tmp_path_factory.mktemp("teacher-cache")
    argv = [
        "teacher",
        "--model",
        "cnn_tiny",
        "--dataset",
        "digits",
        "--val-size",
        "200",
        "--epochs",
        "1",
        "--cache-dir",
        str(cache),
        "--no-progress",
        "--threads",
        "1",
    ]
    assert trainers_main(argv) == 0
    return cache


@pytest.mark.parametrize("tamper", ["pickle-payload", "other-architecture", "other-class-count"])
def test_tampered_teacher_checkpoint_is_refused(teacher_cache, tmp_path, capsys, tamper) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(teacher_cache, cache)
    (pt,) = cache.glob("teachers/*.pt")
    marker = tmp_path / "PWNED"
    if tamper == "pickle-payload":
        torch.save({"conv.weight": Payload(marker)}, pt)
        needle = "corrupt or unreadable"
    elif tamper == "other-architecture":
        torch.save(create_model("mlp", 10, 1).state_dict(), pt)
        needle = "architecture mismatch"
    else:
        torch.save(create_model("cnn_tiny", 7, 1).state_dict(), pt)
        needle = "wrong class count"
    argv = [
        "teacher",
        "--model",
        "cnn_tiny",
        "--dataset",
        "digits",
        "--val-size",
        "200",
        "--epochs",
        "1",
        "--cache-dir",
        str(cache),
        "--no-progress",
        "--threads",
        "1",
    ]
    proc = run_main(trainers_main, argv, capsys)
    assert_clean_error(proc, needle, str(pt))
    assert not marker.exists()  # the payload never ran


def test_spec_json_with_python_code_is_refused_and_inert(tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    code = PAYLOAD.format(marker=marker)
    for field in ("knowledge", "distance", "calibration"):
        data = {**DistillerSpec("logits", ("no", "softmax_c", "no"), "kl").to_dict(), field: code}
        with pytest.raises(ValueError, match=re.escape(repr(code))):
            DistillerSpec.from_json(json.dumps(data))
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps(data))
        proc = run_main(trainers_main, ["distill", "--distiller", str(path), "--dataset", "digits"], capsys)
        assert_clean_error(proc, "__import__")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["params", "spec-attr"])
def test_export_never_carries_code_from_storage(tmp_path, capsys, where) -> None:
    url = f"sqlite:///{tmp_path}/kd.db"
    real, _ = search(config(url, 2, study="real"), factory=make_fake)
    marker = tmp_path / "PWNED"
    code = PAYLOAD.format(marker=marker)
    good = DistillerSpec("logits", ("no", "softmax_c", "no"), "kl", "no", 1.0, 4.0)
    params = spec_to_params(good)
    attrs = {"formula": code}
    if where == "params":
        params["distance"] = code
    else:
        attrs["spec"] = json.dumps({**good.to_dict(), "calibration": code})
    # A tampered study: the real one's configuration, one trial whose stored genes carry Python code.
    study = optuna.create_study(study_name="bad", storage=url, directions=["minimize"] * 3)
    for key, value in real.user_attrs.items():
        study.set_user_attr(key, value)
    dists = {k: CategoricalDistribution([v]) for k, v in params.items()}
    study.add_trial(
        optuna.trial.create_trial(
            params=params, distributions=dists, values=[0.0, 0.0, 0.0], user_attrs=attrs
        )
    )
    out = tmp_path / "export"
    proc = run_main(
        analysis_main,
        ["export", "--storage", url, "--study", "bad", "--trial", "0", "--out", str(out)],
        capsys,
    )
    assert_clean_error(proc, "__import__")
    written = [p.read_text() for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not any("__import__" in text for text in written)
    assert not marker.exists()


def test_no_server_binds_beyond_localhost() -> None:
    # kdzero starts no server itself: the only one users start is optuna-dashboard, printed without --host.
    hits = []
    for pkg in ("spaces", "trainers", "study", "analysis", "benchmarks"):
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            if "0.0.0.0" in text or re.search(
                r"socket\.socket|\.bind\(|HTTPServer|run_server|serve_forever", text
            ):
                hits.append(str(path))
    assert hits == []
    dashboard = shutil.which("optuna-dashboard")
    if dashboard is None:
        pytest.skip("optuna-dashboard is not installed")
    help_text = subprocess.run([dashboard, "--help"], capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"--host HOST.*127\.0\.0\.1", " ".join(help_text.split())), help_text


SECRET = "S3cr3t-Pw-9731"


@pytest.mark.postgres
def test_storage_password_is_never_printed_logged_or_stored(postgres_server, capfd) -> None:
    if not postgres_server.restartable:
        pytest.skip("needs the session's own PostgreSQL server to create a role")
    postgres_server.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kdz_pw') THEN "
        f"CREATE ROLE kdz_pw LOGIN PASSWORD '{SECRET}'; END IF; END $$;"
        "GRANT ALL ON SCHEMA public TO kdz_pw; GRANT ALL ON ALL TABLES IN SCHEMA public TO kdz_pw;"
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO kdz_pw;"
    )
    url = postgres_server.url.replace("postgres@", f"kdz_pw:{SECRET}@")
    name = f"pw-{os.getpid()}"
    study, text = search(config(url, 6, workers=2, study=name), factory=make_fake)
    assert "***" in text  # the URL was shown, masked
    for argv in (
        ["status", "--storage", url, "--study", name, "--fail-stale"],
        ["search", "--preset", "smoke", "--storage", url, "--study", name, "--print-config"],
    ):
        from study.cli import main as study_main

        assert study_main(argv) == 0
    bad = url.replace(f":{postgres_server.port}/", ":1/")  # nothing listens there
    from study.cli import main as study_main

    assert study_main(["status", "--storage", bad, "--study", name]) != 0
    from analysis.__main__ import main as analysis_main

    out_dir = os.environ.get("TMPDIR", "/tmp")
    for argv in (  # analysis on a missing study, an unreachable server and the real study
        ["pareto", "--storage", url, "--study", "nosuch"],
        ["export", "--storage", url, "--study", "nosuch", "--out", f"{out_dir}/pw-export-{os.getpid()}"],
        ["report", "--storage", url, "--study", "nosuch", "--out", f"{out_dir}/pw-{os.getpid()}.html"],
        ["pareto", "--storage", bad, "--study", name],
        ["pareto", "--storage", url, "--study", name],
    ):
        code = analysis_main(argv)
        assert code == (0 if argv[-1] == name and bad not in argv else 2 if "nosuch" in argv else 3), argv
    captured = capfd.readouterr()
    assert "kdz_pw:***@" in captured.err  # the failing runs named the storage, masked
    assert SECRET not in text + captured.out + captured.err
    stored = [study.user_attrs, study_system_attrs(study)]
    for t in study.get_trials(deepcopy=False):
        stored += [t.user_attrs, t.system_attrs]
    assert SECRET not in json.dumps(stored, default=str)
