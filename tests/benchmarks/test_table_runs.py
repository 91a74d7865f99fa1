"""benchmarks.table_runs: an interrupted full training resumes from its checkpoint to the same result."""

from __future__ import annotations

import json

import pytest

from benchmarks import table
from benchmarks.table_runs import Rows, TrainPool, checkpoint_path, row_key, run_training, train_row
from spaces import KNOWN_DISTILLERS
from trainers import loop


class _Interrupt(Exception):
    """Stands for a benchmark process killed at the end of a session."""


def _experiment(tmp_path):
    argv = ["--quick", "--dataset", "digits", "--teacher", "cnn_tiny", "--epochs", "3",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    return table.build_experiment(table.parse_args(argv), "full", "cnn_tiny")


def test_an_interrupted_training_resumes_where_it_stopped(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KDZERO_CACHE", str(tmp_path / "cache"))
    exp, kd = _experiment(tmp_path), KNOWN_DISTILLERS["kd"]
    t = table.load_setting(exp, "cpu")[1]["identity"]  # the cached teacher's identity
    whole = run_training(exp, "full", "kd", kd, 0, "cpu", None, t)  # no checkpoints: one process
    assert "resumed_from_step" not in whole and whole["teacher_id"] == t
    # the row keeps the validation accuracy after each epoch; a verification run at a fraction of the
    # schedule is the full run's prefix, so it measures what the row holds at that epoch
    assert len(whole["epoch_val_acc"]) == 3
    assert whole["epoch_val_acc"][-1] == pytest.approx(whole["val_acc"], abs=1e-6)
    from trainers.proxy import ProxyEvaluator

    for epochs in (1, 2):
        acc = ProxyEvaluator(exp, device="cpu").evaluate(kd, seed=0, fraction=epochs / 3).accuracy
        assert acc == pytest.approx(whole["epoch_val_acc"][epochs - 1], abs=1e-6)

    folder = tmp_path / "ckpt"
    save = loop.Trainer._save

    def save_then_die(self, opt):
        save(self, opt)
        if self.state.epoch == 2:
            raise _Interrupt

    monkeypatch.setattr(loop.Trainer, "_save", save_then_die)
    with pytest.raises(_Interrupt):
        run_training(exp, "full", "kd", kd, 0, "cpu", folder, t)
    monkeypatch.setattr(loop.Trainer, "_save", save)
    key = row_key(exp, "full", "kd", kd, 0, t)
    ckpt = checkpoint_path(folder, key)
    clock = json.loads(ckpt.with_suffix(".clock.json").read_text())
    assert ckpt.exists()
    done_step = max(int(k) for k in clock)  # the step the checkpoint holds: two epochs' worth
    first_cpu = clock[str(done_step)]["cpu_s"]

    rows = Rows(tmp_path / "rows.json", resume=False)
    row = train_row(rows, exp, "full", "kd", kd, 0, "cpu", print, folder, t)
    assert row["resumed_from_step"] == done_step and "seconds_partial" not in row
    assert row["test_acc"] == pytest.approx(whole["test_acc"], abs=1e-9)  # the same run, in two processes
    assert row["val_acc"] == pytest.approx(whole["val_acc"], abs=1e-9)
    assert row["epoch_val_acc"] == whole["epoch_val_acc"]  # the first process's come with the checkpoint
    assert row["cpu_s"] > first_cpu  # the first process's seconds are counted, then the second's
    assert not ckpt.exists() and not ckpt.with_suffix(".clock.json").exists()  # the row is stored: forgotten
    assert rows.find(**key) == row


def test_a_training_from_another_teacher_than_its_settings_is_refused(tmp_path, monkeypatch) -> None:
    from benchmarks.table_methods import TeacherArchiveError

    monkeypatch.setenv("KDZERO_CACHE", str(tmp_path / "cache"))
    exp, kd = _experiment(tmp_path), KNOWN_DISTILLERS["kd"]
    t = table.load_setting(exp, "cpu")[1]["identity"]
    rows = Rows(tmp_path / "rows.json", resume=False)
    with pytest.raises(
        TeacherArchiveError, match=f"trained from teacher {t}, not the setting's teacher 0{{16}}"
    ):
        train_row(rows, exp, "full", "kd", kd, 0, "cpu", print, None, "0" * 16)
    assert rows.rows == []  # no row written
    ce = train_row(rows, exp, "full", "ce", None, 0, "cpu", print, None, "0" * 16)  # CE uses no teacher
    assert ce["teacher_id"] is None and ce["test_acc"] is not None
    assert row_key(exp, "full", "ce", None, 0, t) == row_key(exp, "full", "ce", None, 0, None)
    assert row_key(exp, "full", "kd", kd, 0, t) != row_key(exp, "full", "kd", kd, 0, "0" * 16)


def test_a_run_that_does_not_resume_drops_old_checkpoints(tmp_path) -> None:
    rows_path = tmp_path / "r.json"
    folder = tmp_path / "r-checkpoints"
    folder.mkdir()
    (folder / "stale.pt").write_bytes(b"x")
    pool = TrainPool(Rows(rows_path, resume=True), 1, None, print)
    assert pool.checkpoints == folder and (folder / "stale.pt").exists()
    TrainPool(Rows(rows_path, resume=False), 1, None, print)
    assert not folder.exists()


def test_the_same_training_under_another_method_is_copied_not_run_again(tmp_path, monkeypatch) -> None:
    """kd-zero or rand-kd choosing KD itself: one training per (spec, seed, schedule, teacher), a row each."""
    from benchmarks import table_runs

    monkeypatch.setenv("KDZERO_CACHE", str(tmp_path / "cache"))
    exp, kd = _experiment(tmp_path), KNOWN_DISTILLERS["kd"]
    t = table.load_setting(exp, "cpu")[1]["identity"]
    pool = TrainPool(Rows(tmp_path / "rows.json", resume=False), 2, 1, print)
    try:
        for method in ("kd", "rand-kd", "kd-zero", "kd-zero"):  # the last one: submitted twice, one row
            pool.submit(exp, "full", method, kd, 0, "cpu", t)
        pool.submit(exp, "full", "ce", None, 0, "cpu", t)
        pool.drain()
    finally:
        pool.close()
    rows = Rows(tmp_path / "rows.json", resume=True).rows  # what the file holds
    assert sorted(r["method"] for r in rows) == ["ce", "kd", "kd-zero", "rand-kd"]
    ran = [r for r in rows if "same_training_as" not in r]
    assert sorted(r["method"] for r in ran) == ["ce", "kd"]  # two trainings ran
    (kd_row,) = [r for r in ran if r["method"] == "kd"]
    for method in ("rand-kd", "kd-zero"):
        (copy,) = [r for r in rows if r["method"] == method]
        assert copy == {**kd_row, "method": method, "same_training_as": "kd"}

    # Inline (one job), resumed: a row of the same training is copied and nothing trains.
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(table_runs, "run_training", no_training)
    again = Rows(tmp_path / "rows.json", resume=True)
    said: list[str] = []
    folder = tmp_path / "ckpt"
    folder.mkdir()
    begun = checkpoint_path(folder, row_key(exp, "full", "kd-tuned", kd, 0, t))  # begun before the rule
    begun.write_bytes(b"x")
    row = train_row(again, exp, "full", "kd-tuned", kd, 0, "cpu", said.append, folder, t)
    assert not begun.exists()
    assert row == {**kd_row, "method": "kd-tuned", "same_training_as": "kd"}
    assert "the same training as kd's, not run again" in said[0]
    assert again.find(**row_key(exp, "full", "kd-tuned", kd, 0, t)) == row
    # another seed or teacher is another training
    assert again.twin(row_key(exp, "full", "kd-tuned", kd, 1, t)) is None
    assert again.twin(row_key(exp, "full", "kd-tuned", kd, 0, "0" * 16)) is None


def test_the_fidelity_set_reads_a_verification_run_a_search_already_made(tmp_path) -> None:
    """Same distiller (or twin), seed and fraction as a search's finished verification job: read, not run."""
    import argparse
    import dataclasses
    import math
    from types import SimpleNamespace

    import optuna
    from optuna.trial import TrialState, create_trial

    from benchmarks import table_methods as tm
    from benchmarks.table_runs import plan_fidelity
    from study.verify import open_side_study

    kd, dist = KNOWN_DISTILLERS["kd"], KNOWN_DISTILLERS["dist"]
    twin = dataclasses.replace(kd, transforms=("softmax_c", "no", "no"))  # as drawn; canonical form = kd's
    assert twin.to_json() != kd.to_json() and twin.canonical_key() == kd.canonical_key()
    url = f"sqlite:///{tmp_path / 'searches.db'}"
    studies = {}
    for name in ("kd-zero", "rand-kd"):
        studies[name] = optuna.create_study(study_name=name, storage=url, directions=["minimize"] * 3)
    jobs = [  # (study, spec, seed, fraction, state, accuracy)
        ("kd-zero", twin, 1, 0.25, TrialState.COMPLETE, 0.8123),
        ("rand-kd", None, 1, 0.25, TrialState.COMPLETE, 0.7001),
        ("rand-kd", dist, 2, 0.25, TrialState.COMPLETE, 0.99),  # another seed
        ("kd-zero", dist, 1, 0.5, TrialState.COMPLETE, 0.98),  # another fraction
        ("kd-zero", dist, 1, 0.25, TrialState.PRUNED, None),  # rejected there: not a measurement to read
    ]
    for i, (name, spec, seed, fraction, state, acc) in enumerate(jobs):
        attrs = {"job": f"verify:{i}:{seed}", "role": "verify", "spec": spec.to_json() if spec else None,
                 "seed": seed, "fraction": fraction}  # fmt: skip
        if acc is not None:
            attrs["accuracy"] = acc
        side = open_side_study(url, name)
        side.add_trial(create_trial(state=state, value=acc, user_attrs=attrs))
    calls = []

    class Evaluator:
        def evaluate(self, spec, seed=None, fraction=None):
            calls.append((spec.to_json() if spec else "ce", seed, fraction))
            return SimpleNamespace(ce=0.5, sharpness_gap=0.1, cka_gap=0.2, accuracy=0.4 if fraction else 0.3)

    args = argparse.Namespace(verify_fraction=0.25, fidelity=3)
    cache: dict = {}
    specs = {"ce": None, "kd": kd, "dist": dist}
    chosen = plan_fidelity(args, specs, studies, cache, Evaluator(), 1, tmp_path / "fid.json", "T")
    assert [m for _s, m, _spec in chosen] == ["ce", "kd", "dist"]
    assert cache["ce"]["verify_acc"] == 0.7001
    assert cache["ce"]["verify_from"] == "rand-kd verification job verify:1:1"
    assert cache[kd.to_json()]["verify_acc"] == 0.8123  # kd-zero verified the twin
    assert cache[kd.to_json()]["verify_from"] == "kd-zero verification job verify:0:1"
    assert cache[dist.to_json()]["verify_acc"] == 0.4 and "verify_from" not in cache[dist.to_json()]
    verifications = [c for c in calls if c[2] is not None]
    assert verifications == [(dist.to_json(), 1, 0.25)]  # the only run trained
    assert tm.verify_seed(_experiment(tmp_path)) == 1  # the table's: its student seed 0, plus one
    proxies = [c[0] for c in calls if c[2] is None]  # none of the three is a search trial: all measured
    assert proxies == ["ce", kd.to_json(), dist.to_json()]
    saved = json.loads((tmp_path / "fid.json").read_text())
    assert saved[kd.to_json()]["verify_from"] == "kd-zero verification job verify:0:1"
    assert saved["teacher_id"] == "T"
    assert not math.isnan(saved["ce"]["fitness"])


def test_the_fidelity_set_counts_a_distiller_and_its_twins_once(tmp_path) -> None:
    """Twins (one canonical form) are one point, whether a table method or a search trial brings them."""
    import argparse
    import dataclasses
    from types import SimpleNamespace

    import optuna
    from optuna.trial import TrialState, create_trial

    from benchmarks.table_runs import plan_fidelity

    kd = KNOWN_DISTILLERS["kd"]
    kd_twin = dataclasses.replace(kd, transforms=("no", "no", "no"))  # kl applies the softmax itself
    half = dataclasses.replace(kd, weight=0.5)
    half_twin = dataclasses.replace(half, transforms=("relu", "relu", "softmax_c"))
    half_other = dataclasses.replace(half, transforms=("relu", "no", "softmax_c"))  # half_twin's twin
    strong = dataclasses.replace(kd, weight=2.0)
    assert kd_twin.canonical_key() == kd.canonical_key()
    assert half_twin.canonical_key() == half_other.canonical_key() != half.canonical_key()
    url = f"sqlite:///{tmp_path / 'searches.db'}"
    studies = {
        name: optuna.create_study(study_name=name, storage=url, directions=["minimize"] * 3)
        for name in ("kd-zero", "rand-kd")
    }
    trials = [  # (study, spec, objectives): twins of a finished trial carry its numbers
        ("kd-zero", kd_twin, [1.0, 1.0, 1.0]),
        ("kd-zero", half_twin, [0.5, 0.5, 0.5]),
        ("rand-kd", half_other, [0.5, 0.5, 0.5]),
        ("rand-kd", strong, [2.0, 2.0, 2.0]),
    ]
    for name, spec, values in trials:
        studies[name].add_trial(
            create_trial(state=TrialState.COMPLETE, values=values, user_attrs={"spec": spec.to_json()})
        )

    class Evaluator:
        def evaluate(self, spec, seed=None, fraction=None):
            return SimpleNamespace(ce=0.5, sharpness_gap=0.1, cka_gap=0.2, accuracy=0.4)

    args = argparse.Namespace(verify_fraction=0.25, fidelity=10)
    specs = {"ce": None, "kd": kd, "kd-tuned": kd_twin}  # the tuned rival chose KD's twin: KD's point
    chosen = plan_fidelity(args, specs, studies, {}, Evaluator(), 1)
    keys = [spec.canonical_key() if spec is not None else "ce" for _s, _m, spec in chosen]
    assert len(keys) == len(set(keys))
    assert [m for _s, m, _spec in chosen] == ["ce", "kd", "extra", "extra"]
    assert {spec.canonical_key() for _s, m, spec in chosen if m == "extra"} == {
        half_twin.canonical_key(),
        strong.canonical_key(),
    }
