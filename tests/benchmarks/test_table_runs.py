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
    whole = run_training(exp, "full", "kd", kd, 0, "cpu")  # no checkpoints: one process from start to end
    assert "resumed_from_step" not in whole

    folder = tmp_path / "ckpt"
    save = loop.Trainer._save

    def save_then_die(self, opt):
        save(self, opt)
        if self.state.epoch == 2:
            raise _Interrupt

    monkeypatch.setattr(loop.Trainer, "_save", save_then_die)
    with pytest.raises(_Interrupt):
        run_training(exp, "full", "kd", kd, 0, "cpu", folder)
    monkeypatch.setattr(loop.Trainer, "_save", save)
    key = row_key(exp, "full", "kd", kd, 0)
    ckpt = checkpoint_path(folder, key)
    clock = json.loads(ckpt.with_suffix(".clock.json").read_text())
    assert ckpt.exists()
    done_step = max(int(k) for k in clock)  # the step the checkpoint holds: two epochs' worth
    first_cpu = clock[str(done_step)]["cpu_s"]

    rows = Rows(tmp_path / "rows.json", resume=False)
    row = train_row(rows, exp, "full", "kd", kd, 0, "cpu", print, folder)
    assert row["resumed_from_step"] == done_step and "seconds_partial" not in row
    assert row["test_acc"] == pytest.approx(whole["test_acc"], abs=1e-9)  # the same run, in two processes
    assert row["val_acc"] == pytest.approx(whole["val_acc"], abs=1e-9)
    assert row["cpu_s"] > first_cpu  # the first process's seconds are counted, then the second's
    assert not ckpt.exists() and not ckpt.with_suffix(".clock.json").exists()  # the row is stored: forgotten
    assert rows.find(**key) == row


def test_a_run_that_does_not_resume_drops_old_checkpoints(tmp_path) -> None:
    rows_path = tmp_path / "r.json"
    folder = tmp_path / "r-checkpoints"
    folder.mkdir()
    (folder / "stale.pt").write_bytes(b"x")
    pool = TrainPool(Rows(rows_path, resume=True), 1, None, print)
    assert pool.checkpoints == folder and (folder / "stale.pt").exists()
    TrainPool(Rows(rows_path, resume=False), 1, None, print)
    assert not folder.exists()
