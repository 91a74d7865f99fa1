"""Workers never import a module because storage names it; every process distils from the study's teacher."""

from __future__ import annotations

import optuna
import pytest
from study_fakes import make_fake, smoke_config

from study.cli import _file_import_paths, main
from study.search import open_study, run_search
from study.worker import TEACHER_ATTR, TeacherMismatchError, check_imports, record_teacher, stored_config
from trainers.models import ALLOW_ENV

MODELS = """
from torch import nn


def build_student(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 8 * 8, num_classes))
"""


@pytest.fixture
def user_module(user_module_factory) -> str:
    return user_module_factory(MODELS, "study_user_models")


def _cfg(tmp_path, student: str, name: str = "u"):
    cfg = smoke_config(f"sqlite:///{tmp_path / 'u.db'}", 4, study=name)
    import dataclasses

    return dataclasses.replace(cfg, experiment=dataclasses.replace(cfg.experiment, student=student))


def test_a_worker_refuses_a_stored_module_it_was_not_allowed(tmp_path, user_module, monkeypatch, capsys):
    cfg = _cfg(tmp_path, f"{user_module}:build_student")
    monkeypatch.setenv(ALLOW_ENV, user_module)  # the user who created the study allowed it
    open_study(cfg)
    monkeypatch.delenv(ALLOW_ENV)  # a worker that joins reads the name from storage only
    code = main(["worker", "--storage", cfg.run.storage, "--study", "u", "--n-trials", "4"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"importing module {user_module!r} is not allowed" in err
    assert f"--allow-import {user_module}" in err
    study = optuna.load_study(study_name="u", storage=cfg.run.storage)
    assert study.trials == [] and user_module not in __import__("sys").modules  # refused before any trial
    assert stored_config(study).experiment.student == f"{user_module}:build_student"  # nothing lost


def test_search_refuses_before_touching_the_storage(tmp_path, user_module) -> None:
    cfg = _cfg(tmp_path, f"{user_module}:build_student")
    with pytest.raises(ValueError, match="--allow-import"):
        run_search(cfg, evaluator_factory=make_fake, prepare=None, echo=lambda _s: None)
    assert not (tmp_path / "u.db").exists()


def test_allowed_by_flag_environment_or_the_config_file(tmp_path, user_module, monkeypatch) -> None:
    name = f"{user_module}:build_student"
    cfg = _cfg(tmp_path, name)
    with pytest.raises(ValueError, match="not allowed"):
        check_imports(cfg.experiment)
    monkeypatch.setenv(ALLOW_ENV, f"other,{user_module}")
    check_imports(cfg.experiment)
    file = tmp_path / "c.toml"
    file.write_text(f'[experiment]\nstudent = "{name}"\nteacher = "resnet8"\n')
    assert _file_import_paths(str(file)) == [name]
    assert _file_import_paths(None) == []
    file.write_text(f'[experiment]\nteachers = [{{ model = "resnet8" }}, {{ model = "{name}" }}]\n')
    assert _file_import_paths(str(file)) == [name]  # every teacher of Eq. 3


def test_study_search_cli_with_allow_import_runs_the_users_student(tmp_path, user_module, capsys) -> None:
    file = tmp_path / "c.toml"
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    file.write_text(
        f'[experiment]\nstudent = "{user_module}:build_student"\n[run]\nstorage = "{url}"\nstudy = "x"\n'
    )
    code = main(["search", "--preset", "smoke", "--config", str(file), "--print-config"])
    out = capsys.readouterr().out
    assert code == 0 and f"{user_module}:build_student" in out


def test_the_study_remembers_its_teacher_and_refuses_another(tmp_path) -> None:
    cfg = smoke_config(f"sqlite:///{tmp_path / 't.db'}", 4, study="t")
    study = open_study(cfg)
    record_teacher(study, {"identity": "aaaa", "val_acc": 0.9, "path": "/m1/t.pt"}, cfg.experiment)
    assert study.user_attrs[TEACHER_ATTR]["identity"] == "aaaa"
    record_teacher(study, {"identity": "aaaa", "path": "/m2/t.pt"}, cfg.experiment)  # same weights elsewhere
    with pytest.raises(TeacherMismatchError, match="identity bbbb.*identity aaaa.*--teacher-checkpoint"):
        record_teacher(study, {"identity": "bbbb", "path": "/m2/other.pt"}, cfg.experiment)
    assert study.user_attrs[TEACHER_ATTR]["path"] == "/m1/t.pt"


def test_a_machine_without_the_study_teacher_refuses_to_train_one_silently(tmp_path) -> None:
    import dataclasses

    from study.worker import PREDICTIONS_ATTR, decode_predictions, require_study_teacher
    from trainers.teacher import teacher_path

    cfg = smoke_config(f"sqlite:///{tmp_path / 'm.db'}", 4, study="m")
    exp = dataclasses.replace(cfg.experiment, cache_dir=str(tmp_path / "cache-b"))
    study = open_study(cfg)
    meta = {"identity": "aaaa", "val_acc": 0.90, "path": "/machine-a/t.pt", "hash": "k1"}
    record_teacher(study, meta, cfg.experiment, [1, 2, 3, 4] * 25)
    assert decode_predictions(study.user_attrs[PREDICTIONS_ATTR]).tolist() == [1, 2, 3, 4] * 25
    refused = "no copy of the teacher.*/machine-a/t.pt.*--teacher-checkpoint.*--train-teacher"
    with pytest.raises(TeacherMismatchError, match=refused):
        require_study_teacher(study, exp, train_teacher=False)
    require_study_teacher(study, exp, train_teacher=True)  # asked for: allowed, checked after training
    require_study_teacher(study, dataclasses.replace(exp, teacher_checkpoint="copy.pt"), train_teacher=False)
    path = teacher_path(exp.cache_dir, exp.teacher, "k1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    require_study_teacher(study, exp, train_teacher=False)  # this machine has the file


def test_a_retrained_teacher_is_accepted_only_within_the_tolerance(tmp_path) -> None:
    cfg = smoke_config(f"sqlite:///{tmp_path / 'r.db'}", 4, study="r")
    study = open_study(cfg)
    theirs = [i % 10 for i in range(200)]
    record_teacher(study, {"identity": "aaaa", "val_acc": 0.90, "path": "/a/t.pt"}, cfg.experiment, theirs)
    close = list(theirs)
    close[:3] = [(v + 1) % 10 for v in close[:3]]  # 98.5% agreement
    meta = {"identity": "bbbb", "val_acc": 0.895}
    note = record_teacher(study, meta, cfg.experiment, close, retrained=True)
    assert note is not None and "98.5% of validation predictions" in note and "accepted" in note
    far = list(theirs)
    far[:20] = [(v + 1) % 10 for v in far[:20]]  # 90% agreement
    with pytest.raises(TeacherMismatchError, match="90.0% of validation predictions.*outside the tolerance"):
        record_teacher(study, {"identity": "cccc", "val_acc": 0.90}, cfg.experiment, far, retrained=True)
    with pytest.raises(TeacherMismatchError, match="outside the tolerance"):  # agreeing, but 3 points worse
        record_teacher(study, {"identity": "dddd", "val_acc": 0.87}, cfg.experiment, theirs, retrained=True)
    with pytest.raises(TeacherMismatchError, match="is not the teacher study"):  # not asked for
        record_teacher(study, {"identity": "eeee", "val_acc": 0.90}, cfg.experiment, theirs)


def test_the_report_names_every_teacher_and_warns_about_a_weak_one(tmp_path) -> None:
    import dataclasses
    import json

    from study.report import teacher_lines
    from study.verify import VERIFIED_ATTR

    cfg = smoke_config(f"sqlite:///{tmp_path / 'w.db'}", 4, study="w")
    teachers = ({"model": "cnn_tiny"}, {"model": "resnet8", "checkpoint": "r.pt"})
    exp = dataclasses.replace(cfg.experiment, teacher="cnn_tiny", teachers=teachers)
    study = open_study(cfg)
    metas = [
        {"identity": "a", "val_acc": 0.20, "hash": "k"},
        {"identity": "b", "val_acc": 0.97, "checkpoint": True},
    ]
    record_teacher(study, {**metas[0], "identity": "a+b", "teachers": metas}, exp)
    study.set_user_attr(VERIFIED_ATTR, json.dumps([{"trial": None, "formula": "ce", "val_acc": 0.92}]))
    text = "\n".join(teacher_lines(study))
    assert "identity a+b" in text and "cnn_tiny (trained by kdzero, val acc 0.2000)" in text
    assert "resnet8 (your checkpoint, val acc 0.9700)" in text
    assert text.count("warning:") == 1 and "teacher cnn_tiny's validation accuracy 0.2000 is below" in text
