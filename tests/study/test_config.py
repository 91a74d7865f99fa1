"""Configuration: presets, files, unknown keys, identity and its diff; storage URLs and password masking."""

from __future__ import annotations

import json

import pytest

from study.cli import main
from study.config import PRESETS, StudyConfig, identity_diff, load_config
from study.storage import make_storage, mask_url, parse_url


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_round_trip(preset: str) -> None:
    cfg = load_config(preset)
    again = StudyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert cfg.n_trials == cfg.search.population * cfg.search.generations


def test_paper_preset_is_the_paper_setting() -> None:
    cfg = load_config("paper")
    assert (cfg.search.population, cfg.search.generations) == (20, 100)
    assert cfg.experiment.dataset.name == "cifar100"
    assert (cfg.experiment.teacher, cfg.experiment.student) == ("resnet32x4", "resnet8x4")
    assert cfg.experiment.student_train.epochs == 240 and cfg.experiment.proxy.fraction == 0.05


def test_default_preset_has_a_timeout_guard() -> None:
    cfg = load_config("default")
    assert cfg.experiment.dataset.name == "fashion_mnist"
    assert cfg.run.timeout is not None and cfg.run.timeout <= 20 * 60
    assert cfg.run.storage == "sqlite:///kdzero.db"


def test_file_overrides_preset_and_unknown_keys_are_named(tmp_path) -> None:
    good = tmp_path / "c.toml"
    good.write_text('[search]\npopulation = 6\n[run]\nstudy = "mine"\n')
    cfg = load_config("smoke", good)
    assert cfg.search.population == 6 and cfg.run.study == "mine"
    assert cfg.experiment.dataset.name == "digits"  # from the preset
    bad = tmp_path / "bad.toml"
    bad.write_text("[search]\npopulaton = 6\n")
    with pytest.raises(ValueError, match="populaton"):
        load_config("smoke", bad)
    bad.write_text("[experiment.proxy]\nstepz = 3\n")
    with pytest.raises(ValueError, match="stepz"):
        load_config("smoke", bad)
    bad.write_text("[serch]\n")
    with pytest.raises(ValueError, match="serch"):
        load_config("smoke", bad)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"search": {"crossover": "nope"}}))
    with pytest.raises(ValueError, match="nope.*|.*uniform"):
        load_config("smoke", js)


def test_bad_values_name_the_value() -> None:
    with pytest.raises(ValueError, match="population.*1"):
        load_config("smoke", overrides={"search": {"population": 1}})
    with pytest.raises(ValueError, match="telepathy"):
        load_config("smoke", overrides={"search": {"knowledge": ["telepathy"]}})
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        load_config("huge")


def test_identity_ignores_machine_paths_and_diff_shows_change() -> None:
    a = load_config("smoke")
    b = load_config(
        "smoke",
        overrides={
            "experiment": {"cache_dir": "/elsewhere", "dataset": {"root": "/x"}},
            "run": {"workers": 7, "n_trials": 99},
            "search": {"generations": a.search.generations + 5},  # only sizes the budget
        },
    )
    assert a.identity() == b.identity()
    c = load_config("smoke", overrides={"search": {"population": 6}})
    diff = identity_diff(a.identity(), c.identity())
    assert '-  "population": 4' in diff and '+  "population": 6' in diff


def test_amp_is_an_execution_setting_not_identity(tmp_path) -> None:
    """bf16 autocast is off by default; a study stored with it on (the former default) opens with it off."""
    from study.search import open_study

    a = load_config("smoke")
    assert a.experiment.student_train.amp is False and a.experiment.teacher_train.amp is False
    on = {"teacher_train": {"amp": True}, "student_train": {"amp": True}}
    b = load_config("smoke", overrides={"experiment": on})
    assert b.experiment.student_train.amp is True
    assert a.identity() == b.identity()
    assert json.loads(b.stored_json())["experiment"]["student_train"]["amp"] is True  # stored as given
    url = f"sqlite:///{tmp_path}/amp.db"
    run = {"storage": url, "study": "amp"}
    old = load_config("smoke", overrides={"experiment": on, "run": run})
    open_study(old)
    study = open_study(load_config("smoke", overrides={"run": run}))  # no ConfigMismatch
    assert json.loads(study.user_attrs["kdzero_config"])["experiment"]["student_train"]["amp"] is True


def test_storage_urls_and_masking(tmp_path) -> None:
    assert mask_url("postgresql://bob:s3cret@db:5432/kd") == "postgresql://bob:***@db:5432/kd"
    assert "s3cret" not in mask_url("postgresql://bob:s3cret@db:bad-port/kd")
    with pytest.raises(ValueError) as err:
        parse_url("postgresql://bob:s3cret@db:bad-port/kd")
    assert "s3cret" not in str(err.value) and "malformed" in str(err.value)
    with pytest.raises(ValueError, match="unsupported scheme 'oracle'"):
        parse_url("oracle://u:pw@h/db")
    with pytest.raises(ValueError, match="in-memory"):
        parse_url("sqlite://")
    with pytest.raises(ValueError, match="malformed"):
        parse_url("not a url")
    storage = make_storage(f"sqlite:///{tmp_path}/x.db", heartbeat_interval=5, grace_period=10)
    assert storage.get_heartbeat_interval() == 5


def test_cli_print_config_and_bad_storage(capsys, tmp_path) -> None:
    assert (
        main(
            [
                "search",
                "--preset",
                "smoke",
                "--storage",
                f"sqlite:///{tmp_path}/a.db",
                "--workers",
                "2",
                "--devices",
                "cuda:0,cuda:1",
                "--seed",
                "3",
                "--print-config",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["run"]["devices"] == ["cuda:0", "cuda:1"] and out["search"]["seed"] == 3
    assert main(["search", "--storage", "postgresql://u:hunter2@h:port/db", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "malformed storage URL" in err and "hunter2" not in err
    assert main(["status", "--storage", f"sqlite:///{tmp_path}/a.db", "--study", "nope"]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "a.db").exists()
    make_storage(f"sqlite:///{tmp_path}/a.db")  # an Optuna database without that study
    assert main(["status", "--storage", f"sqlite:///{tmp_path}/a.db", "--study", "nope"]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err


def test_workers_spread_round_robin_over_devices() -> None:
    from study.search import worker_args

    run = {"workers": 5, "devices": ["cuda:0", "cuda:1"], "n_trials": 9}
    cfg = load_config("smoke", overrides={"run": run})
    args = worker_args(cfg, deadline=123.0)
    assert [a.device for a in args] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert [a.index for a in args] == [0, 1, 2, 3, 4]
    assert all(a.n_trials == 9 and a.deadline == 123.0 and a.threads >= 1 for a in args)


def test_heartbeat_survives_a_lost_connection(tmp_path, monkeypatch, capsys) -> None:
    """A heartbeat cut by a database restart is reported in one line; other errors still raise."""
    import optuna
    import sqlalchemy
    from optuna.storages import RDBStorage

    storage = make_storage(f"sqlite:///{tmp_path / 'h.db'}")
    lost = sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))

    def cut(self, trial_id: int) -> None:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from lost

    monkeypatch.setattr(RDBStorage, "record_heartbeat", cut)
    storage.record_heartbeat(7)  # no exception: the heartbeat thread keeps running
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "heartbeat of trial id 7 missed" in err and "Traceback" not in err

    def broken(self, trial_id: int) -> None:
        raise ValueError("not a storage error")

    monkeypatch.setattr(RDBStorage, "record_heartbeat", broken)
    with pytest.raises(ValueError, match="not a storage error"):
        storage.record_heartbeat(7)
