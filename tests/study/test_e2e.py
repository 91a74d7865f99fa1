"""Real end-to-end searches on digits: real sampler, spaces, ProxyEvaluator, tiny models."""

from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState

from spaces import DistillerSpec, spec_from_params
from study.cli import main
from study.sampler import GENERATION_KEY

CONFIG = """
[experiment]
teacher = "cnn_tiny"
student = "mlp"
[experiment.dataset]
name = "digits"
val_size = 200
[experiment.teacher_train]
epochs = 1
batch_size = 64
optimizer = "adamw"
lr = 0.003
warmup_epochs = 0.0
[experiment.student_train]
epochs = 4
batch_size = 64
optimizer = "adamw"
lr = 0.003
warmup_epochs = 0.0
[experiment.proxy]
steps = 8
evals = 2
reject_batches = 1
[search]
population = 3
knowledge = ["embedding", "logits"]
[run]
study = "e2e"
workers = 1
n_trials = 5
"""


def test_real_search_on_digits_via_the_cli(tmp_path, capsys) -> None:
    cfg = tmp_path / "e2e.toml"
    cfg.write_text(CONFIG)
    url = f"sqlite:///{tmp_path}/kd.db"
    cache = tmp_path / "cache"
    argv = ["search", "--preset", "smoke", "--config", str(cfg), "--storage", url, "--cache-dir", str(cache)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "chosen trial #" in out and f"optuna-dashboard {url}" in out
    assert "at 100% of the schedule" in out and "trained student: seed" in out
    assert "verification cost:" in out
    _check_trained_student(url, tmp_path, capsys)
    study = optuna.load_study(study_name="e2e", storage=url)
    fin = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(fin) == 5
    complete = [t for t in fin if t.state == TrialState.COMPLETE]
    assert complete, [t.user_attrs.get("reject_detail") for t in fin]
    for t in complete:
        assert len(t.values) == 3 and all(v == v for v in t.values)  # three finite objectives
        assert 0.0 <= t.user_attrs["accuracy"] <= 1.0
        spec = DistillerSpec.from_json(t.user_attrs["spec"])
        assert spec == spec_from_params(t.params) and t.user_attrs["formula"] == spec.formula()
        assert [p[0] for p in t.user_attrs["curve"]] == sorted(p[0] for p in t.user_attrs["curve"])
    for t in fin:
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["reject_reason"] and "reject_detail" in t.user_attrs
    known = [t for t in fin if t.user_attrs.get("known")]
    assert {t.user_attrs["known"] for t in known} == {"dist", "kd", "wsld"}
    assert all(t.system_attrs[GENERATION_KEY] == 0 == t.user_attrs["generation"] for t in known)
    teachers = sorted(p for p in cache.rglob("*") if p.is_file() and p.suffix in (".pt", ".pth"))
    assert teachers
    stamps = [p.stat().st_mtime_ns for p in teachers]
    # Rerun with a larger target: resumes, reuses the cached teacher (not retrained), reaches the target.
    assert main([*argv, "--n-trials", "6"]) == 0
    capsys.readouterr()
    assert [p.stat().st_mtime_ns for p in teachers] == stamps
    assert (
        len(
            optuna.load_study(study_name="e2e", storage=url).get_trials(
                states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
        )
        == 6
    )
    assert main(["status", "--storage", url, "--study", "e2e"]) == 0
    status = capsys.readouterr().out
    assert "gen   0" in status and "Pareto front" in status
    assert json.loads(study.user_attrs["kdzero_config"])["search"]["population"] == 3


def _check_trained_student(url: str, tmp_path, capsys) -> None:
    """The export holds the verification's full run of the choice: its weights, aligners and accuracies."""
    import torch

    from analysis._cli import main as analysis_main
    from study import verify
    from study.worker import stored_config
    from trainers.data import load_dataset
    from trainers.models import create_model

    study = optuna.load_study(study_name="e2e", storage=url)
    record = verify.student(study)
    assert record is not None and record["fraction"] == 1.0 and 0.0 <= record["test_acc"] <= 1.0
    out = tmp_path / "export"
    assert analysis_main(["export", "--storage", url, "--study", "e2e", "--out", str(out)]) == 0
    assert "student.pt" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["test_acc"] == record["test_acc"] and result["val_acc"] == record["val_acc"]
    exp = stored_config(study).experiment
    train = load_dataset(exp.dataset).train
    assert result["steps"] == 4 * (len(train) // 64)  # the full schedule: 4 epochs of 64-image batches
    state = torch.load(out / "student.pt", weights_only=True)
    model = create_model("mlp", num_classes=10, in_channels=1)  # digits are served at 28 px
    model.load_state_dict(state)  # a plain state_dict of the student
    assert isinstance(torch.load(out / "aligners.pt", weights_only=True), list)


def test_a_search_with_two_proxy_seeds_stores_both_accuracies(tmp_path, capsys) -> None:
    """``proxy.seeds = 2``: every measured trial and the CE reference are means of two seeded proxy runs."""
    cfg = tmp_path / "two.toml"
    text = CONFIG.replace("reject_batches = 1\n", "reject_batches = 1\nseeds = 2\n")
    cfg.write_text(
        text.replace("n_trials = 5", "n_trials = 3").replace("[search]\n", "[search]\nverify_top = 0\n")
    )
    url = f"sqlite:///{tmp_path}/two.db"
    argv = ["search", "--preset", "smoke", "--config", str(cfg), "--storage", url]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    study = optuna.load_study(study_name="e2e", storage=url)
    assert json.loads(study.user_attrs["kdzero_config"])["experiment"]["proxy"]["seeds"] == 2
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete
    for t in complete:
        accs = t.user_attrs["seed_accuracies"]
        assert len(accs) == 2
        assert abs(t.user_attrs["accuracy"] - sum(accs) / 2) < 1e-12
        assert t.user_attrs["steps"] == 2 * 8  # two proxy runs of 8 steps each
    ref = optuna.load_study(study_name="e2e:verify", storage=url).get_trials(states=(TrialState.COMPLETE,))
    ce = [t for t in ref if t.user_attrs.get("role") == "ce_reference"]
    assert len(ce) == 1 and len(ce[0].user_attrs["seed_accuracies"]) == 2 and ce[0].user_attrs["steps"] == 16
