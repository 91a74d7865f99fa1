"""Teacher cache: trained once across processes, loaded safely, mismatches refused; the CLI and --device."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers import DataConfig, TeacherCheckpointError, TrainConfig, create_model, get_teacher, load_teacher
from trainers.__main__ import main
from trainers.runtime import resolve_device
from trainers.teacher import save_teacher, teacher_key

ROOT = Path(__file__).resolve().parents[2]


def write_fashion(root: Path, n_train: int = 48, n_test: int = 16) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 40, (n, 28, 28))
        for i in range(n):
            x[i, 2 * y[i] : 2 * y[i] + 6] += 200  # a class-dependent bright band
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
            with gzip.open(root / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def data_cfg(tmp_path) -> DataConfig:
    write_fashion(tmp_path / "fm")
    return DataConfig(root=str(tmp_path / "fm"), val_size=16)


def _fake_train(calls: list):
    def train_fn(model, splits, cfg, device, progress):
        calls.append(cfg.epochs)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        return {"val_acc": 0.5}

    return train_fn


def test_trained_once_then_loaded_identically(tmp_path, data_cfg):
    calls: list = []
    cfg = TrainConfig(epochs=1, batch_size=16)
    t1, meta1 = get_teacher(
        "cnn_tiny", data_cfg, cfg, cache_dir=tmp_path / "c", progress=False, train_fn=_fake_train(calls)
    )
    t2, meta2 = get_teacher(
        "cnn_tiny", data_cfg, cfg, cache_dir=tmp_path / "c", progress=False, train_fn=_fake_train(calls)
    )
    assert calls == [1] and not meta1["cached"] and meta2["cached"]
    assert meta1["hash"] == meta2["hash"] == teacher_key("cnn_tiny", data_cfg, cfg, 10, 1)
    side = json.loads(Path(meta1["path"]).with_suffix(".json").read_text())
    for key in (
        "val_acc",
        "test_acc",
        "epochs",
        "train_s",
        "config_hash",
        "model",
        "num_classes",
        "in_channels",
        "torch",
        "data",
        "train",
    ):
        assert key in side
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(t1(x), t2(x))
    assert not t2.training and all(not p.requires_grad for p in t2.parameters())
    # another schedule is another teacher
    get_teacher(
        "cnn_tiny",
        data_cfg,
        TrainConfig(epochs=2),
        cache_dir=tmp_path / "c",
        progress=False,
        train_fn=_fake_train(calls),
    )
    assert calls == [1, 2]


def test_teacher_ignores_the_student_subset(tmp_path, data_cfg):
    """A subset regime limits the student's data: the teacher is the one trained on the whole split."""
    calls: list = []
    seen: list = []
    cfg = TrainConfig(epochs=1, batch_size=16)

    def train_fn(model, splits, cfg, device, progress):
        seen.append(len(splits.train))
        return _fake_train(calls)(model, splits, cfg, device, progress)

    _, full = get_teacher(
        "cnn_tiny", data_cfg, cfg, cache_dir=tmp_path / "c", progress=False, train_fn=train_fn
    )
    sub_cfg = dataclasses.replace(data_cfg, subset=0.25)
    _, sub = get_teacher(
        "cnn_tiny", sub_cfg, cfg, cache_dir=tmp_path / "c", progress=False, train_fn=train_fn
    )
    assert calls == [1] and seen == [48 - 16]
    assert sub["hash"] == full["hash"] and sub["cached"]


def test_default_training_uses_the_loop(tmp_path, data_cfg):
    teacher, meta = get_teacher(
        "cnn_tiny",
        data_cfg,
        TrainConfig(epochs=1, batch_size=16, warmup_epochs=0.0),
        cache_dir=tmp_path / "c",
        progress=False,
    )
    assert 0.0 <= meta["val_acc"] <= 1.0 and 0.0 <= meta["test_acc"] <= 1.0
    fresh = create_model("cnn_tiny", 10, 1)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), teacher.model.state_dict().values())
    )


_WORKER = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from trainers import DataConfig, TrainConfig, get_teacher
calls = {calls!r}

def train_fn(model, splits, cfg, device, progress):
    with open(calls, "a") as f:
        f.write(str(os.getpid()) + "\\n")
    time.sleep(1.0)  # widen the window in which the other process asks for the same teacher
    return {{"val_acc": 0.25}}

_, meta = get_teacher("cnn_tiny", DataConfig(root={data!r}, val_size=16), TrainConfig(epochs=1),
                      cache_dir={cache!r}, progress=False, train_fn=train_fn)
print(json.dumps({{"cached": meta["cached"], "val_acc": meta["val_acc"]}}))
"""


def test_two_processes_train_the_teacher_once(tmp_path, data_cfg):
    calls = tmp_path / "calls.txt"
    script = tmp_path / "worker.py"
    script.write_text(
        _WORKER.format(root=str(ROOT), calls=str(calls), data=data_cfg.root, cache=str(tmp_path / "c"))
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-2000:] for o in outs]
    results = [json.loads(o[0].decode().strip().splitlines()[-1]) for o in outs]
    assert len(calls.read_text().split()) == 1
    assert sorted(r["cached"] for r in results) == [False, True]
    assert all(r["val_acc"] == 0.25 for r in results)


@pytest.fixture
def saved(tmp_path) -> Path:
    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    path = tmp_path / "t.pt"
    save_teacher(model, path, {"model": "cnn_tiny", "num_classes": 10, "in_channels": 1})
    return path


def test_content_keys_do_not_see_amp(data_cfg):
    """Teacher and checkpoint keys hash ``amp`` at its former default, True, whatever it is: keys made when it
    was on stay valid, and a run with or without autocast finds the same teacher."""
    import hashlib

    from trainers.config import config_hash

    on, off = TrainConfig(epochs=2, amp=True), TrainConfig(epochs=2, amp=False)
    assert TrainConfig().amp is False
    assert teacher_key("cnn_tiny", data_cfg, on, 10, 1) == teacher_key("cnn_tiny", data_cfg, off, 10, 1)
    legacy = {**dataclasses.asdict(on), "milestones": []}  # what to_dict gave when amp was hashed as is
    blob = json.dumps([legacy, "x"], sort_keys=True, separators=(",", ":"), default=str)
    assert config_hash(off, "x") == hashlib.sha256(blob.encode()).hexdigest()[:16] == config_hash(on, "x")
    assert config_hash(TrainConfig(epochs=3, amp=False), "x") != config_hash(off, "x")  # the rest counts


def test_load_refuses_mismatches(saved):
    model, meta = load_teacher(saved, "cnn_tiny", 10, 1)
    assert meta["model"] == "cnn_tiny" and not model.training
    with pytest.raises(TeacherCheckpointError, match=r"architecture 'cnn_tiny'.*'resnet8' was asked"):
        load_teacher(saved, "resnet8", 10, 1)
    with pytest.raises(TeacherCheckpointError, match=r"class count 10.*5 was asked"):
        load_teacher(saved, "cnn_tiny", 5, 1)


def test_load_checks_the_state_dict_not_only_the_sidecar(saved):
    side = saved.with_suffix(".json")
    side.write_text(json.dumps({"model": "resnet8", "num_classes": 10, "in_channels": 1}))
    with pytest.raises(TeacherCheckpointError, match=r"not a 'resnet8' \(architecture mismatch\)"):
        load_teacher(saved, "resnet8", 10, 1)
    side.write_text(json.dumps({"model": "cnn_tiny", "num_classes": 7, "in_channels": 1}))
    with pytest.raises(
        TeacherCheckpointError, match=r"fc.weight: checkpoint \(10, 48\).*\(7, 48\).*wrong class count"
    ):
        load_teacher(saved, "cnn_tiny", 7, 1)


def test_corrupt_files_are_refused(saved, tmp_path, data_cfg):
    saved.write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(TeacherCheckpointError, match="corrupt or unreadable"):
        load_teacher(saved, "cnn_tiny", 10, 1)
    saved.with_suffix(".json").write_text("{not json")
    with pytest.raises(TeacherCheckpointError, match="sidecar .* corrupt"):
        load_teacher(saved, "cnn_tiny", 10, 1)
    # through get_teacher: a corrupt cached checkpoint is reported, not silently retrained
    cfg = TrainConfig(epochs=1)
    _, meta = get_teacher(
        "cnn_tiny", data_cfg, cfg, cache_dir=tmp_path / "c", progress=False, train_fn=_fake_train([])
    )
    Path(meta["path"]).write_bytes(b"truncated checkpoint")
    with pytest.raises(TeacherCheckpointError, match="corrupt"):
        get_teacher(
            "cnn_tiny", data_cfg, cfg, cache_dir=tmp_path / "c", progress=False, train_fn=_fake_train([])
        )


def test_checkpoint_is_a_plain_state_dict(tmp_path, data_cfg):
    _, meta = get_teacher(
        "cnn_tiny",
        data_cfg,
        TrainConfig(epochs=1),
        cache_dir=tmp_path / "c",
        progress=False,
        train_fn=_fake_train([]),
    )
    state = torch.load(meta["path"], weights_only=True)
    assert set(state) == set(create_model("cnn_tiny", 10, 1).state_dict())


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cpu:1", "cuda:x", ""):
        with pytest.raises(ValueError, match="valid: 'cpu', 'cuda', 'cuda:N'"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_cli_teacher_and_models(tmp_path, data_cfg, capsys):
    args = [
        "teacher",
        "--model",
        "cnn_tiny",
        "--data-root",
        data_cfg.root,
        "--val-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--cache-dir",
        str(tmp_path / "c"),
        "--out",
        str(tmp_path / "t.json"),
        "--no-progress",
        "--threads",
        "1",
        "--seed",
        "3",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained" in out and "test acc" in out and "s/epoch" in out and "checkpoint:" in out
    meta = json.loads((tmp_path / "t.json").read_text())
    assert meta["train"]["seed"] == 3 and meta["train"]["epochs"] == 1
    assert main(args) == 0 and "loaded from cache" in capsys.readouterr().out
    assert main(["teacher", "--device", "tpu", "--data-root", data_cfg.root]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert main(["models", "--family", "small"]) == 0
    assert capsys.readouterr().out.split()[::2] == ["cnn_tiny", "mlp", "vit_tiny"]
