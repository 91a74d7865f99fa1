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
