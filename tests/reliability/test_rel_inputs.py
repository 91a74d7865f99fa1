"""Bad input at the user's edge: the CLIs answer with a one-line error naming the value, never a traceback."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rel_helpers import assert_clean_error, run_main

from spaces import DistillerSpec, build_distiller
from study.cli import main as study_main
from trainers import ProxyEvaluator, Rejected
from trainers.__main__ import main as trainers_main
from trainers.config import ExperimentConfig

SPEC = {
    "knowledge": "logits",
    "transforms": ["no", "softmax_c", "no"],
    "distance": "kl",
    "calibration": "no",
    "weight": 1.0,
    "tau": 4.0,
}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"transforms": ["bogus_op", "no", "no"]}, "bogus_op"),
        ({"distance": "nodist"}, "nodist"),
        ({"weight": "heavy"}, "heavy"),
        ({"weight": -1.0}, "-1.0"),
        ({"tau": 0}, "tau"),
        ({"transforms": "no"}, "transforms"),
        ({"evil_key": 1}, "evil_key"),
    ],
    ids=[
        "unknown-op",
        "unknown-distance",
        "wrong-type",
        "negative-weight",
        "tau-0",
        "not-a-list",
        "unknown-key",
    ],
)
def test_bad_spec_json_is_refused_by_the_distill_cli(tmp_path, capsys, change, needle) -> None:
    path = tmp_path / "distiller.json"
    path.write_text(json.dumps({**SPEC, **change}))
    proc = run_main(
        trainers_main,
        [
            "distill",
            "--distiller",
            str(path),
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--cache-dir",
            str(tmp_path / "c"),
            "--no-progress",
        ],
        capsys,
    )
    assert_clean_error(proc, needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--dataset", "no_such_data"], "no_such_data"),
        (["--dataset", "digits", "--model", "no_such_net", "--val-size", "200"], "no_such_net"),
        (["--dataset", "digits", "--val-size", "0"], "val_size"),  # an empty validation split
        (["--dataset", "digits", "--val-size", "0.0001"], "val_size=0.0001"),  # rounds to 0 samples
        (["--dataset", "fashion_mnist", "--data-root", "{tmp}/no-data"], "no-data"),  # missing data files
    ],
    ids=["unknown-dataset", "unknown-model", "val-size-0", "val-split-empty", "missing-files"],
)
def test_bad_teacher_arguments_are_clear_errors(tmp_path, capsys, args, needle) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = ["teacher", *args, "--epochs", "1", "--no-progress", "--cache-dir", str(tmp_path / "c")]
    proc = run_main(trainers_main, argv, capsys)
    assert_clean_error(proc, needle.replace("{tmp}", str(tmp_path)))


@pytest.mark.parametrize(
    ("storage", "needle"),
    [
        ("not a url", "not a url"),
        ("nosuchdb://host/db", "nosuchdb"),
        ("postgresql://user:hunter2@127.0.0.1:notaport/db", "malformed storage URL"),
        ("sqlite:///:memory:", "in-memory"),
        ("", "non-empty"),
        ("mysql://user:hunter2@127.0.0.1/db", "pip install 'mysqlclient'"),
        ("postgresql+nosuchdriver://user:hunter2@127.0.0.1/db", "unknown database driver"),
    ],
    ids=["garbage", "unknown-scheme", "bad-port", "in-memory", "empty", "mysql-no-driver", "unknown-driver"],
)
@pytest.mark.parametrize("command", ["search", "status", "worker"])
def test_malformed_storage_url_is_a_clear_error(capsys, command, storage, needle) -> None:
    extra = ["--preset", "smoke", "--print-config"] if command == "search" else []
    proc = run_main(study_main, [command, "--storage", storage, "--study", "x", *extra], capsys)
    assert_clean_error(proc, needle)
    assert "hunter2" not in proc.stdout + proc.stderr  # passwords stay masked in errors too


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[search]\nbogus_key = 1\n", "bogus_key"),
        ("[nonsense]\na = 1\n", "nonsense"),
        ("[experiment]\nbad_field = 2\n", "bad_field"),
        ("[experiment.dataset]\nname = 'digits'\nmystery = 3\n", "mystery"),
        ("[run]\nworkers = -2\n", "-2"),
        ("[search]\npopulation = 'many'\n", "many"),
        ("this is = = not toml", "not valid TOML"),
    ],
    ids=[
        "search-key",
        "top-key",
        "experiment-key",
        "dataset-key",
        "negative-workers",
        "wrong-type",
        "syntax",
    ],
)
def test_config_file_with_unknown_keys_or_bad_values_is_refused(tmp_path, capsys, text, needle) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    argv = [
        "search",
        "--preset",
        "smoke",
        "--config",
        str(path),
        "--storage",
        f"sqlite:///{tmp_path}/kd.db",
        "--print-config",
    ]
    proc = run_main(study_main, argv, capsys)
    assert_clean_error(proc, needle)


def test_teacher_and_student_with_different_class_counts_are_refused() -> None:
    from torch import nn

    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))  # 4 classes
    x = torch.randn(16, 1, 8, 8)
    data = torch.utils.data.TensorDataset(x, torch.zeros(16, dtype=torch.long), torch.arange(16))
    with pytest.raises(ValueError, match=r"4.*10|10.*4"):
        ProxyEvaluator.from_parts(
            ExperimentConfig(), train=data, val=data, teacher=teacher, input_shape=(1, 8, 8), num_classes=10
        )


@pytest.mark.parametrize(
    ("spec", "reasons"),
    [
        # exp then pow4 of large teacher logits overflows to Inf; l2 of it is Inf, cosine of it NaN.
        (DistillerSpec("logits", ("exp", "pow4", "no"), "l2", "no", 100.0, 1.0), {"nan", "inf"}),
        (DistillerSpec("logits", ("exp", "pow4", "no"), "cosine", "no", 100.0, 1.0), {"nan", "inf"}),
    ],
    ids=["exp-pow4-l2", "exp-pow4-cosine"],
)
def test_op_chains_giving_nan_or_inf_are_rejected_trials_with_a_reason(spec, reasons) -> None:
    from torch import nn

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with torch.no_grad():
        teacher[1].weight.mul_(50.0)  # large teacher logits
    x = 3 * torch.randn(64, 1, 8, 8)
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 4, (64,)), torch.arange(64))
    exp = ExperimentConfig.from_dict({"proxy": {"steps": 4, "evals": 1, "reject_batches": 2}})

    def student() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))

    ev = ProxyEvaluator.from_parts(
        exp,
        train=data,
        val=data,
        teacher=teacher,
        input_shape=(1, 8, 8),
        num_classes=4,
        student_factory=student,
    )
    loss, _ = build_distiller(spec, (4,), (4,))(student()(x[:8]), teacher(x[:8]))
    assert not math.isfinite(float(loss.detach()))  # the chain really is non-finite
    with pytest.raises(Rejected) as err:
        ev.check(spec)
        ev.evaluate(spec)
    assert err.value.reason in reasons and err.value.detail


@pytest.mark.postgres
def test_the_readmes_plain_postgresql_url_works(postgres_server, capsys, tmp_path) -> None:
    """``postgresql://user@host/db`` as the README writes it (psycopg 3 under SQLAlchemy 2)."""
    import optuna

    plain = postgres_server.url.replace("postgresql+psycopg2://", "postgresql://")
    assert plain.startswith("postgresql://") and "+" not in plain.split("://")[0]
    name = f"plain-url-{tmp_path.name}"
    optuna.create_study(study_name=name, storage=postgres_server.url)
    proc = run_main(study_main, ["status", "--storage", plain, "--study", name], capsys)
    assert proc.returncode == 0, proc.stderr
    from analysis.__main__ import main as analysis_main

    proc = run_main(analysis_main, ["pareto", "--storage", plain, "--study", name], capsys)
    assert "Traceback" not in proc.stderr and "ImportError" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[run]\ntimeout = "soon"\n', "run.timeout must be float | null, got 'soon'"),
        ('[search]\ncrossover_prob = "high"\n', "search.crossover_prob must be float, got 'high'"),
        ('[experiment.student_train]\nweight_decay = "none"\n', "train.weight_decay must be float"),
        ("[search]\npopulation = true\n", "search.population must be int, got True"),
        ("[run]\nn_trials = 3.5\n", "run.n_trials must be int | null, got 3.5"),
        ("[experiment.student_train]\namp = 1\n", "train.amp must be bool, got 1"),
        ("[run]\nworkers = 1000\n", "--force-workers"),
        ("[search]\nverify_known = -1\n", "search.verify_known must be an int >= 0, got -1"),
        (
            "[search]\nseed_weight_steps = [-1, 0]\n",
            "distinct non-zero ints (steps on the weight grid), got [-1, 0]",
        ),
    ],
    ids=[
        "timeout",
        "crossover-prob",
        "weight-decay",
        "bool-count",
        "float-count",
        "int-flag",
        "workers",
        "verify-known",
        "seed-weight-steps",
    ],
)
def test_config_values_of_the_wrong_type_are_refused_by_name(tmp_path, capsys, text, needle) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    proc = run_main(study_main, ["search", "--config", str(path), "--print-config"], capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--threads", "0"], "--threads: must be >= 1, got 0"),
        (["--n-trials", "-1"], "--n-trials: must be >= 1, got -1"),
        (["--n-trials", "0"], "--n-trials: must be >= 1, got 0"),
        (["--timeout", "-5"], "--timeout: must be a finite number of seconds > 0, got -5"),
        (["--timeout", "soon"], "--timeout: expected seconds > 0, got 'soon'"),
    ],
    ids=["threads-0", "n-trials-negative", "n-trials-0", "timeout-negative", "timeout-text"],
)
def test_worker_numbers_out_of_range_are_refused_before_anything_runs(tmp_path, capsys, args, needle) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    proc = run_main(study_main, ["worker", "--storage", url, "--study", "s", *args], capsys)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w.db").exists()  # refused before the storage was touched
