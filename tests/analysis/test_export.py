"""Export: distiller.json rebuilds the trial's loss; train_student.py is a fixed template that trains."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from analysis import export_trial, full_schedule, load_study, render_script, select_trial
from analysis._export import checked_spec
from tests.analysis.conftest import EXPERIMENT
from tests.analysis.helpers import add_spec, new_study
from trainers.config import DataConfig, ExperimentConfig

ROOT = Path(__file__).resolve().parents[2]


def export_literal(script: str) -> dict:
    """The JSON filled into the template, read back without executing the script."""
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "EXPORT":
            return json.loads(ast.literal_eval(node.value.args[0]))
    raise AssertionError("no EXPORT assignment")


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location("exported_train_student", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_files_match_the_trial(study_url, tmp_path):
    from spaces import DistillerSpec, spec_from_params

    study = load_study(*study_url)
    trial = select_trial(study, "scalar")
    res = export_trial(study, trial, tmp_path / "out")
    spec = DistillerSpec.from_json(res.distiller.read_text())
    assert spec == spec_from_params(trial.params) == DistillerSpec.from_json(trial.user_attrs["spec"])
    exp = ExperimentConfig.from_dict(json.loads(res.experiment.read_text()))
    stored = ExperimentConfig.from_dict(EXPERIMENT)
    assert exp.student == "cnn_tiny" and exp.dataset == stored.dataset
    assert exp.student_train == stored.student_train  # not CIFAR: the study's own full schedule
    script = res.script.read_text()
    compile(script, str(res.script), "exec")
    assert export_literal(script) == {
        "kdzero_root": str(ROOT),
        "study": "kd",
        "trial": trial.number,
        "formula": spec.formula(),
        "allow_import": [],
    }
    assert "json.loads(" in script and os.access(res.script, os.X_OK)
    assert "train_student.py" in res.readme.read_text() and "KDZERO_ROOT" in res.readme.read_text()


def test_template_only_takes_json(tmp_path):
    nasty = {
        "kdzero_root": "/x",
        "study": 'a"\'\n"""; import os; os.system("echo pwned")  #',
        "trial": 3,
        "formula": "\\u0000 ''' \"\"\"",
    }
    script = render_script(nasty)
    compile(script, "t.py", "exec")
    assert export_literal(script) == nasty
    template = (ROOT / "analysis" / "train_student.py.template").read_text()
    # everything but the one filled-in line is the fixed template
    diff = [a for a, b in zip(script.splitlines(), template.splitlines()) if a != b]
    assert len(diff) == 1 and diff[0].startswith("EXPORT = json.loads(")
    assert len(script.splitlines()) == len(template.splitlines())


def test_full_schedule_is_the_studys_own_schedule():
    # the export trains the schedule every proxy run was a prefix of; CIFAR's 240 epochs are the preset's
    from study.config import load_config

    paper = load_config("paper").experiment
    s = full_schedule(paper)
    assert (s.epochs, s.lr, s.batch_size, s.milestones, s.gamma, s.weight_decay, s.optimizer, s.schedule) == (
        240,
        0.05,
        64,
        (150, 180, 210),
        0.1,
        5e-4,
        "sgd",
        "multistep",
    )
    cifar = ExperimentConfig(dataset=DataConfig(name="cifar100"), student="resnet8x4")
    assert full_schedule(cifar) == cifar.student_train
    fm = ExperimentConfig.from_dict({"student_train": {"epochs": 20, "max_steps": 50, "lr": 0.1}})
    assert full_schedule(fm) == fm.student_train.__class__(**{**fm.student_train.__dict__, "max_steps": None})


def test_scaled_milestones(study_url, tmp_path):
    study = load_study(*study_url)
    res = export_trial(study, select_trial(study), tmp_path)
    mod = load_script(res.script)
    assert mod.scaled_milestones([150, 180, 210], 240, 24) == [15, 18, 21]
    assert mod.scaled_milestones([150, 180, 210], 240, 1) == []
    assert mod.scaled_milestones([], 20, 5) == []


def test_spec_attr_mismatch_is_refused():
    from spaces import KNOWN_DISTILLERS

    study = new_study(config={"experiment": EXPERIMENT})
    wrong = {"spec": KNOWN_DISTILLERS["dist"].to_json()}
    add_spec(study, KNOWN_DISTILLERS["kd"], [1.0, 1.0, 1.0], attrs=wrong)
    with pytest.raises(ValueError, match=r"trial 0: the spec rebuilt from its params .* differs"):
        checked_spec(study.trials[0])


def test_missing_config_is_a_clear_error(tmp_path):
    from spaces import KNOWN_DISTILLERS

    study = new_study()
    add_spec(study, KNOWN_DISTILLERS["kd"], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="no 'kdzero_config' user attr"):
        export_trial(study, study.trials[0], tmp_path)


def test_distiller_json_rebuilds_the_same_loss(tmp_path):
    from spaces import KNOWN_DISTILLERS, DistillerSpec, build_distiller, spec_from_params

    study = new_study(config={"experiment": EXPERIMENT})
    feat = DistillerSpec("feature", ("no", "softmax_hw", "no"), "kl", "focal", 2.0, 4.0)
    add_spec(study, KNOWN_DISTILLERS["kd"], [1.0, 1.0, 1.0])
    add_spec(study, feat, [0.5, 0.5, 0.5])  # chosen by the scalar rule
    trial = select_trial(study)
    assert trial.number == 1
    res = export_trial(study, trial, tmp_path)
    exported = DistillerSpec.from_json(res.distiller.read_text())

    g = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(6, 4, 5, 5, generator=g), torch.randn(6, 8, 5, 5, generator=g)  # aligner 4 -> 8 ch
    z_s, z_t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    labels = torch.randint(0, 10, (6,), generator=g)
    losses = []
    for spec in (spec_from_params(trial.params), exported):
        torch.manual_seed(1)  # same aligner initialisation
        d = build_distiller(spec, (4, 5, 5), (8, 5, 5))
        losses.append(d(f_s, f_t, logits_s=z_s, logits_t=z_t, labels=labels)[0])
    assert torch.isfinite(losses[0]) and losses[0].item() == losses[1].item()

    # and the known KD trial's export computes Hinton's KD: tau^2 * KL(p_t || p_s), batch mean
    res_kd = export_trial(study, study.trials[0], tmp_path / "kd")
    kd = DistillerSpec.from_json(res_kd.distiller.read_text())
    loss, _ = build_distiller(kd, (10,), (10,))(z_s, z_t)
    p_t = F.softmax(z_t / 4, dim=1)
    expected = 16 * (p_t * (p_t.log() - F.log_softmax(z_s / 4, dim=1))).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_cli_export_and_train_one_epoch(tmp_path):
    """Export through the CLI, then run the exported script for one epoch on digits in a fresh process."""
    from spaces import DistillerSpec

    url = f"sqlite:///{tmp_path / 'kd.db'}"
    study = new_study(url, config={"experiment": EXPERIMENT})
    spec = DistillerSpec("feature", ("no", "softmax_hw", "no"), "kl", "focal", 2.0, 4.0)
    add_spec(study, spec, [0.5, 0.5, 0.5], attrs={"accuracy": 0.5})
    out = tmp_path / "export"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KDZERO_ROOT": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis",
            "export",
            "--storage",
            url,
            "--study",
            "kd",
            "--trial",
            "0",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exported trial 0" in proc.stdout
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KDZERO_ROOT")}
    result = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(out / "train_student.py"),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--seed",
            "3",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
            "--out",
            str(result),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(result.read_text())
    assert 0.0 <= rec["test_accuracy"] <= 1.0 and rec["test_accuracy"] == rec["result"]["test_acc"]
    assert rec["epochs"] == 1 and rec["seed"] == 3 and rec["trial"] == 0 and rec["device"] == "cpu"
    assert DistillerSpec.from_dict(rec["distiller"]) == spec
    assert rec["experiment"]["cache_dir"] == str(tmp_path / "cache")
