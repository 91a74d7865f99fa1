"""Teacher training and its checkpoint cache, keyed by a content hash of everything that defines the teacher.

Layout: ``<cache_dir>/teachers/<model>-<hash>.pt`` (a ``state_dict``, read with ``weights_only=True``) and
``<model>-<hash>.json`` (config, accuracies, timing, versions). Many processes may ask for the same teacher:
one trains under a per-hash file lock while the others wait, then load. Files are written to a temporary
name and moved into place with ``os.replace``.

Default teacher (``ExperimentConfig``): ``resnet8`` (78k parameters, in_channels=1), 2 epochs. Measured once
with ``python -m trainers teacher --threads 2`` on 2 shared CPU cores (load average 5-9 from other jobs, so
timings are noisy): 664 s/epoch, val 0.890 / test 0.891 accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from .config import DataConfig, TrainConfig, config_hash
from .data import DataSplits, load_dataset
from .knowledge import FrozenTeacher
from .models import create_model
from .runtime import resolve_device

TrainFn = Callable[[nn.Module, DataSplits, TrainConfig, torch.device, bool], dict[str, Any]]


class TeacherCheckpointError(ValueError):
    """A cached teacher does not match what was asked for, or its files are corrupt."""


def default_cache_dir() -> Path:
    """``$KDZERO_CACHE`` or ``~/.cache/kdzero``."""
    return Path(os.environ.get("KDZERO_CACHE", Path.home() / ".cache" / "kdzero")).expanduser()


def teacher_key(
    model_name: str, data_cfg: DataConfig, train_cfg: TrainConfig, num_classes: int, in_channels: int
) -> str:
    """Config hash of a teacher: model, classes, channels, data config and schedule.

    The data set's location and ``download`` flag are left out (same data wherever it lies), except for
    ``imagefolder``, whose folder *is* the data set.
    """
    data = data_cfg.to_dict()
    data.pop("download")
    if data_cfg.name != "imagefolder":
        data.pop("root")
    model = {"model": model_name, "num_classes": num_classes, "in_channels": in_channels}
    return config_hash(model, data, train_cfg)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_teacher(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``state_dict`` to ``path`` (.pt) and ``meta`` to the ``.json`` sidecar, each atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda tmp: torch.save(state, tmp))
    text = json.dumps(meta, indent=2, sort_keys=True)
    _atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))


def load_teacher(
    path: str | Path, model_name: str, num_classes: int, in_channels: int, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_teacher`, refusing one of another architecture or class count.

    Both the JSON sidecar and the ``state_dict`` keys / shapes are checked against a fresh
    ``create_model(model_name, num_classes, in_channels)``.

    Returns:
        ``(model in eval mode on device, sidecar dict)``.

    Raises:
        TeacherCheckpointError: Corrupt or missing file, or a mismatch; the message says which.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TeacherCheckpointError(
            f"teacher sidecar {sidecar} is missing or corrupt ({err}); delete {path} and {sidecar} to retrain"
        ) from err
    asked = {"model": model_name, "num_classes": num_classes, "in_channels": in_channels}
    for key, want in asked.items():
        if meta.get(key) != want:
            what = {"model": "architecture", "num_classes": "class count", "in_channels": "input channels"}[
                key
            ]
            raise TeacherCheckpointError(
                f"teacher checkpoint {path} has {what} {meta.get(key)!r} ({key}), but {want!r} was asked for"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} is corrupt or unreadable ({type(err).__name__}: "
            f"{err}); delete it and its .json sidecar to retrain"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherCheckpointError(f"teacher checkpoint {path} is not a state_dict of tensors")
    model = create_model(model_name, num_classes=num_classes, in_channels=in_channels)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} is not a {model_name!r} (architecture mismatch): "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    bad = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape
    ]
    if bad:
        k, got, want = bad[0]
        hint = " (wrong class count?)" if got[:1] != want[:1] and got[1:] == want[1:] else ""
        raise TeacherCheckpointError(
            f"teacher checkpoint {path}: {len(bad)} tensor shape mismatch(es), first "
            f"{k}: checkpoint {got} vs {model_name}(num_classes={num_classes}, "
            f"in_channels={in_channels}) {want}{hint}"
        )
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def train_with_loop(
    model: nn.Module, splits: DataSplits, cfg: TrainConfig, device: torch.device, progress: bool
) -> dict[str, Any]:
    """Default teacher training: the one loop, ``trainers.loop.Trainer``, with a tqdm progress bar."""
    from .callbacks import ProgressBar
    from .loop import Trainer

    trainer = Trainer(model, splits.train, cfg, val_data=splits.val, device=device)
    bar = ProgressBar(desc="teacher", disable=not progress)
    for event in bar.EVENTS:
        trainer.add_callback(event, getattr(bar, event))
    result = trainer.run()
    return {
        "val_acc": result.val_acc,
        "epochs": result.epochs,
        "steps": result.steps,
        "train_s": result.wall_s,
        "epoch_val_acc": result.epoch_val_acc,
    }


@torch.no_grad()
def split_accuracy(
    model: nn.Module, split: torch.utils.data.Dataset, device: torch.device, batch_size: int = 512
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a split of ``(x, y, index)`` items."""
    from .loop import iterate_batches

    was = model.training
    model.eval()
    correct = n = 0
    for x, y, _ in iterate_batches(split, batch_size, device=device):
        correct += int((model(x).argmax(1) == y).sum())  # (N, K) -> (N,)
        n += len(y)
    model.train(was)
    return correct / max(n, 1)


def teacher_path(cache_dir: str | Path | None, model_name: str, key: str) -> Path:
    """Checkpoint path of the teacher with hash ``key``."""
    return Path(cache_dir or default_cache_dir()).expanduser() / "teachers" / f"{model_name}-{key}.pt"


def get_teacher(
    model_name: str,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    *,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    splits: DataSplits | None = None,
    train_fn: TrainFn | None = None,
) -> tuple[nn.Module, dict]:
    """The trained teacher, from the cache or trained now (once, even with many processes asking at once).

    Args:
        model_name: Zoo name of the teacher.
        data_cfg: Data set and split it is trained on (``subset`` is ignored: teachers see the whole split).
        train_cfg: Its training schedule.
        cache_dir: Cache folder (default ``$KDZERO_CACHE`` or ``~/.cache/kdzero``).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        progress: Show a progress bar while training.
        splits: Already loaded ``load_dataset(data_cfg)`` (saves loading it again).
        train_fn: Replaces the training (tests); default :func:`train_with_loop`.

    Returns:
        ``(FrozenTeacher, meta)``; ``meta`` is the sidecar: ``hash``, ``val_acc``, ``test_acc``, ``epochs``,
        ``train_s``, ``sec_per_epoch``, ``path``, configs and versions.
    """
    dev = resolve_device(device)
    if data_cfg.subset is not None:
        # The teacher always learns from the whole training split: a subset regime limits the student's data,
        # not the teacher's (the validation split is carved before the subset, so it is the same).
        data_cfg, splits = dataclasses.replace(data_cfg, subset=None), None
    splits = load_dataset(data_cfg) if splits is None else splits
    key = teacher_key(model_name, data_cfg, train_cfg, splits.num_classes, splits.in_channels)
    path = teacher_path(cache_dir, model_name, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = (model_name, splits.num_classes, splits.in_channels)
    with FileLock(str(path.with_suffix(".lock"))):
        if path.exists() and path.with_suffix(".json").exists():
            model, meta = load_teacher(path, *args, device=dev)
            return FrozenTeacher(model), {**meta, "path": str(path), "cached": True}
        torch.manual_seed(train_cfg.seed)
        model = create_model(model_name, num_classes=splits.num_classes, in_channels=splits.in_channels).to(
            dev
        )
        t0 = time.perf_counter()
        result = (train_fn or train_with_loop)(model, splits, train_cfg, dev, progress)
        train_s = time.perf_counter() - t0
        meta = {
            "model": model_name,
            "num_classes": splits.num_classes,
            "in_channels": splits.in_channels,
            "hash": key,
            "config_hash": key,
            "data": data_cfg.to_dict(),
            "train": train_cfg.to_dict(),
            "val_acc": result.get("val_acc"),
            "test_acc": split_accuracy(model, splits.test, dev),
            "epochs": train_cfg.epochs,
            "train_s": train_s,
            "sec_per_epoch": train_s / train_cfg.epochs,
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        save_teacher(model, path, meta)
    return FrozenTeacher(model.eval()), {**meta, "path": str(path), "cached": False}
