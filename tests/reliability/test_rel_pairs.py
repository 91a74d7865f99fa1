"""Bring-your-own-pair inputs that must be refused with one clear line (exit 2) before anything runs."""

from __future__ import annotations

import torch
from rel_helpers import assert_clean_error, run_main

from study.cli import main as study_main
from trainers.__main__ import main as trainers_main

MODELS = """
from torch import nn


def good(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 8 * 8, num_classes))


def not_a_module(num_classes, in_channels):
    return 42


NOT_CALLABLE = "text"
"""


def test_bad_import_paths_end_in_one_line(user_module_factory, capsys) -> None:
    name = user_module_factory(MODELS, "rel_models")
    for model, needle in (
        (f"{name}:missing", "has no attribute 'missing'"),
        (f"{name}:NOT_CALLABLE", "not a callable builder"),
        (f"{name}:not_a_module", "returned a int, not a torch.nn.Module"),
        ("no_such_module_kdz:build", "module 'no_such_module_kdz' not found"),
        ("bad path:x", "not a valid import path"),
    ):
        proc = run_main(trainers_main, ["nodes", model, "--image-size", "8"], capsys)
        assert proc.returncode == 2, (model, proc.stderr)
        assert_clean_error(proc, needle)


def test_a_stored_import_path_is_refused_by_a_worker_without_allowance(tmp_path, capsys, monkeypatch) -> None:
    import dataclasses

    from study_fakes import smoke_config

    from study.search import open_study

    cfg = smoke_config(f"sqlite:///{tmp_path / 'a.db'}", 4, study="a")
    cfg = dataclasses.replace(cfg, experiment=dataclasses.replace(cfg.experiment, student="evil_pkg:build"))
    monkeypatch.setenv("KDZERO_ALLOW_IMPORT", "evil_pkg")
    open_study(cfg)
    monkeypatch.delenv("KDZERO_ALLOW_IMPORT")
    proc = run_main(study_main, ["worker", "--storage", cfg.run.storage, "--study", "a"], capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "importing module 'evil_pkg' is not allowed", "--allow-import evil_pkg")


def test_bad_teacher_checkpoints_end_in_one_line(tmp_path, capsys) -> None:
    from tests.trainers.test_teacher import write_fashion

    write_fashion(tmp_path / "fm")
    common = ["--data-root", str(tmp_path / "fm"), "--val-size", "16", "--cache-dir", str(tmp_path / "c")]
    torch.manual_seed(0)
    from trainers import create_model

    def weights(name: str, classes: int) -> dict:
        return create_model(name, classes, 1).state_dict()

    cases = {
        "corrupt.pt": (lambda p: p.write_bytes(b"\x00garbage"), "corrupt or unreadable"),
        "pickled.pt": (lambda p: torch.save(create_model("cnn_tiny", 10, 1), p), "pickled objects"),
        "resnet8.pt": (lambda p: torch.save(weights("resnet8", 10), p), "architecture mismatch"),
        "classes.pt": (lambda p: torch.save(weights("cnn_tiny", 7), p), "wrong class count"),
    }
    for file, (make, needle) in cases.items():
        path = tmp_path / file
        make(path)
        argv = ["teacher", "--model", "cnn_tiny", "--checkpoint", str(path), *common]
        proc = run_main(trainers_main, argv, capsys)
        assert proc.returncode == 2, (file, proc.stderr)
        assert_clean_error(proc, needle)
    proc = run_main(trainers_main, ["nodes", "cnn_tiny", "--kwargs", "[1]"], capsys)
    assert proc.returncode == 2 and "expected a JSON object" in proc.stderr
