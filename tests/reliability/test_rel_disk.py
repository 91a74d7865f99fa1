"""Unwritable storage or cache paths, a full disk mid-write: clear errors, no corrupt file, no temp litter."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from rel_helpers import assert_clean_error, cli

from trainers.config import DataConfig, TrainConfig
from trainers.data import load_dataset
from trainers.knowledge import FrozenTeacher
from trainers.models import create_model
from trainers.output_cache import TeacherOutputCache
from trainers.teacher import get_teacher, teacher_key, teacher_path

DIGITS = DataConfig(name="digits", val_size=200)
TRAIN = TrainConfig(epochs=1, batch_size=64, optimizer="adamw", lr=0.003, warmup_epochs=0.0)


def _no_training(model, splits, cfg, device, progress) -> dict:
    return {"val_acc": 0.5}


def _litter(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and "tmp" in p.name)


@pytest.fixture
def blocker(tmp_path):
    """A regular file: any path below it cannot be created (works as root, unlike chmod)."""
    f = tmp_path / "a-file"
    f.write_text("not a folder")
    return f


def test_unwritable_storage_path_is_a_clear_error(blocker) -> None:
    url = f"sqlite:///{blocker}/sub/kd.db"
    proc = cli("study", "search", "--preset", "smoke", "--storage", url, "--study", "x", "--n-trials", "1")
    assert_clean_error(proc, str(blocker))
    proc = cli("study", "status", "--storage", url, "--study", "x")
    assert_clean_error(proc, str(blocker))


def test_unwritable_cache_path_is_a_clear_error(blocker) -> None:
    proc = cli(
        "trainers",
        "teacher",
        "--model",
        "cnn_tiny",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--val-size",
        "200",
        "--cache-dir",
        str(blocker / "cache"),
        "--no-progress",
        "--threads",
        "1",
    )
    assert_clean_error(proc, str(blocker))


@pytest.mark.parametrize("fault", ["torch.save", "os.replace"])
def test_full_disk_during_teacher_checkpoint_leaves_no_checkpoint(tmp_path, monkeypatch, fault) -> None:
    splits = load_dataset(DIGITS)
    key = teacher_key("cnn_tiny", DIGITS, TRAIN, splits.num_classes, splits.in_channels)
    final = teacher_path(tmp_path, "cnn_tiny", key)
    real_save, real_replace = torch.save, os.replace

    def save_half(obj, f, *a, **k) -> None:
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # the disk filled up half-way through the file
            fh.truncate(max(1, os.path.getsize(f) // 2))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    def replace_full(src, dst) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    if fault == "torch.save":
        monkeypatch.setattr(torch, "save", save_half)
    else:
        monkeypatch.setattr(os, "replace", replace_full)
    with pytest.raises(OSError) as err:
        get_teacher(
            "cnn_tiny",
            DIGITS,
            TRAIN,
            cache_dir=tmp_path,
            progress=False,
            splits=splits,
            train_fn=_no_training,
        )
    assert err.value.errno == errno.ENOSPC
    assert not final.exists() and not final.with_suffix(".json").exists()
    assert _litter(tmp_path) == []
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(os, "replace", real_replace)
    # Space is back: the same call trains, writes a loadable checkpoint, and a second call loads it.
    get_teacher(
        "cnn_tiny", DIGITS, TRAIN, cache_dir=tmp_path, progress=False, splits=splits, train_fn=_no_training
    )
    _, meta = get_teacher(
        "cnn_tiny", DIGITS, TRAIN, cache_dir=tmp_path, progress=False, splits=splits, train_fn=_no_training
    )
    assert meta["cached"] and final.exists()


def test_full_disk_during_teacher_output_cache_build_leaves_no_file(tmp_path, monkeypatch) -> None:
    splits = load_dataset(DIGITS)
    teacher = FrozenTeacher(create_model("cnn_tiny", splits.num_classes, splits.in_channels))
    cache = TeacherOutputCache(tmp_path, "k")
    real_replace = os.replace
    calls = []

    def replace_once_then_full(src, dst) -> None:
        calls.append(dst)
        if len(calls) == 1:
            real_replace(src, dst)  # the first kind made it to disk
            return
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(os, "replace", replace_once_then_full)
    with pytest.raises(OSError) as err:
        cache.build(teacher, "val", splits.val, ("logits", "embedding"))
    assert err.value.errno == errno.ENOSPC
    assert _litter(tmp_path) == []  # no partial .tmp.npy left behind
    monkeypatch.setattr(os, "replace", real_replace)
    written = [k for k in ("embedding", "logits") if cache.has("val", k)]
    assert len(written) == 1  # the completed kind is whole; the other is absent, not corrupt
    cache.build(teacher, "val", splits.val, ("logits", "embedding"))  # space back: the missing kind is added
    for k in ("embedding", "logits"):
        assert cache.get("val", k).shape[0] == len(splits.val)
        assert torch.isfinite(cache.rows("val", k, torch.arange(len(splits.val)))).all()
