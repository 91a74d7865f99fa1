"""Teacher training and its checkpoint cache, keyed by a content hash of everything that defines the teacher.

Layout: ``<cache_dir>/teachers/<model>-<hash>.pt`` (a ``state_dict``, read with ``weights_only=True``) and
``<model>-<hash>.json`` (config, accuracies, timing, versions). Many processes may ask for the same teacher:
one trains under a per-hash file lock while the others wait, then load. Files are written to a temporary
name and moved into place with ``os.replace``.

Default teacher (``ExperimentConfig.teacher`` and ``teacher_train``): ``resnet8`` (78k parameters,
in_channels=1) for 3 epochs; the README gives its measured time and accuracy (about 3 minutes on 2 CPU cores,
val 89.96% / test 89.93%).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from .callbacks import ProgressBar, attach_callbacks
from .config import DataConfig, TrainConfig, config_hash
from .data import DataSplits, load_dataset
from .knowledge import FrozenTeacher
from .loop import Trainer
from .metrics import evaluate_split
from .models import create_model
from .models._registry import is_import_path, resolve_builder, split_import_path
from .runtime import resolve_device

TrainFn = Callable[[nn.Module, DataSplits, TrainConfig, torch.device, bool], dict[str, Any]]


TEACHER_SAW_VAL = (
    "a teacher you trained yourself has usually seen the whole training split, including the images kdzero "
    "carves for validation, so its validation accuracy is optimistic (its test accuracy is not)"
)
"""Said wherever a user's checkpoint's validation accuracy is printed."""


class TeacherCheckpointError(ValueError):
    """A cached teacher does not match what was asked for, or its files are corrupt."""


def default_cache_dir() -> Path:
    """``$KDZERO_CACHE`` or ``~/.cache/kdzero``."""
    return Path(os.environ.get("KDZERO_CACHE", Path.home() / ".cache" / "kdzero")).expanduser()


def teacher_key(
    model_name: str,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    num_classes: int,
    in_channels: int,
    model_kwargs: dict[str, Any] | None = None,
) -> str:
    """Config hash of a teacher kdzero trains: model, builder arguments, classes, channels, data, schedule.

    A model given by import path also hashes its module's source file, so an edited model file is trained
    anew rather than served from the cache.

    The data set's location and ``download`` flag are left out (same data wherever it lies), except for
    ``imagefolder``, whose folder *is* the data set.
    """
    model: dict[str, Any] = {"model": model_name, "num_classes": num_classes, "in_channels": in_channels}
    if model_kwargs:  # absent when empty: the keys of existing caches stay valid
        model["kwargs"] = model_kwargs
    if is_import_path(model_name):
        model["source"] = module_source_hash(model_name)
    return config_hash(model, data_identity(data_cfg), train_cfg)


def module_source_hash(model_name: str) -> str:
    """Hash of the source file of an import path's module (imported only if allowed); ``""`` without one."""
    module = sys.modules.get(split_import_path(model_name)[0])
    if module is None:
        resolve_builder(model_name)
        module = sys.modules[split_import_path(model_name)[0]]
    source = getattr(module, "__file__", None)
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else ""


def data_identity(data_cfg: DataConfig) -> dict[str, Any]:
    """The data config without where it lies (``root``, except for ``imagefolder``) and ``download``."""
    data = data_cfg.to_dict()
    data.pop("download")
    if data_cfg.name != "imagefolder":
        data.pop("root")
    if data_cfg.val_indices is not None:  # the positions it holds, wherever the file lies
        path = Path(data_cfg.val_indices).expanduser()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"
        data["val_indices"] = digest
    return data


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


def state_dict_hash(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a ``state_dict``: the teacher's identity (16 hex digits).

    It covers every key, dtype, shape and value (in key order), so two files with the same weights have the
    same identity wherever they lie, and a changed weight changes it. The teacher-output cache and the check
    of a study's teacher across workers key on it.
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def _read_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A ``state_dict`` of tensors read with ``weights_only=True``; a training checkpoint is unwrapped."""
    if not path.is_file():
        raise TeacherCheckpointError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt or unsafe file
        raise TeacherCheckpointError(
            f"{what} {str(path)!r} is corrupt or unreadable, or holds pickled objects rather than a plain "
            f"state_dict ({type(err).__name__}); it is read with weights_only=True and never unpickled: save "
            "it with torch.save(model.state_dict(), path)"
        ) from err
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        inner = [k for k in ("state_dict", "model", "model_state_dict") if isinstance(state.get(k), dict)]
        if inner:  # a training checkpoint {"model": state_dict, "epoch": ...}: use its state_dict
            state = state[inner[0]]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        kind = type(state).__name__
        keys = sorted(map(str, state))[:5] if isinstance(state, dict) else []
        raise TeacherCheckpointError(
            f"{what} {str(path)!r} is not a state_dict of tensors (got a {kind}"
            f"{f' with keys {keys}' if keys else ''}); save it with torch.save(model.state_dict(), path)"
        )
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_state_dict(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    where: str,
    model_name: str,
    num_classes: int,
    in_channels: int,
) -> None:
    """Refuse a ``state_dict`` whose keys or shapes differ from ``model``'s, naming the first differences.

    Raises:
        TeacherCheckpointError: Missing or unexpected keys, or a shape mismatch (a class-count mismatch is
            named as such).
    """
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TeacherCheckpointError(
            f"{where} is not a {model_name!r} (architecture mismatch): "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    bad = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape
    ]
    if bad:
        k, got, want = bad[0]
        hint = " (wrong class count?)" if got[:1] != want[:1] and got[1:] == want[1:] else ""
        raise TeacherCheckpointError(
            f"{where}: {len(bad)} tensor shape mismatch(es), first "
            f"{k}: checkpoint {got} vs {model_name}(num_classes={num_classes}, "
            f"in_channels={in_channels}) {want}{hint}"
        )


def load_teacher(
    path: str | Path,
    model_name: str,
    num_classes: int,
    in_channels: int,
    device: str | torch.device = "cpu",
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_teacher`, refusing one of another architecture or class count.

    Both the JSON sidecar and the ``state_dict`` keys / shapes are checked against a fresh
    ``create_model(model_name, num_classes, in_channels)``.

    Returns:
        ``(model in eval mode on device, sidecar dict)``; the sidecar gets ``identity``, the content hash.

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
    state = _read_state(path, "teacher checkpoint")
    model = create_model(model_name, num_classes=num_classes, in_channels=in_channels, **(model_kwargs or {}))
    check_state_dict(state, model, f"teacher checkpoint {path}", model_name, num_classes, in_channels)
    model.load_state_dict(state)
    return model.to(device).eval(), {**meta, "identity": state_dict_hash(state)}


def load_checkpoint_teacher(
    path: str | Path,
    model_name: str,
    splits: DataSplits,
    data_cfg: DataConfig,
    *,
    model_kwargs: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[FrozenTeacher, dict[str, Any]]:
    """A user's trained teacher from a plain ``state_dict`` file; it is never trained.

    The file is read with ``weights_only=True`` (a training checkpoint ``{"model": state_dict, ...}`` and the
    ``module.`` prefix of DistributedDataParallel are unwrapped) and checked key by key and shape by shape
    against ``create_model(model_name, ...)``. Its validation and test accuracy are measured once and kept in
    ``<cache>/teachers/checkpoint-<identity>.json``.

    Args:
        path: The ``state_dict`` file.
        model_name: Zoo name or import path of the teacher's architecture.
        splits: The data set (its classes, channels and validation / test splits).
        data_cfg: The config ``splits`` was loaded from (the accuracy record is per data config).
        model_kwargs: Extra keyword arguments of the builder.
        cache_dir: Cache folder of the accuracy record.
        device: Torch device.

    Returns:
        ``(FrozenTeacher, meta)`` with ``identity`` (content hash, also ``hash``), ``val_acc``, ``test_acc``,
        ``path``, ``checkpoint`` True.

    Raises:
        TeacherCheckpointError: Missing, corrupt or pickled file, or another architecture / class count.
    """
    path = Path(path).expanduser()
    dev = resolve_device(device)
    state = _read_state(path, "teacher checkpoint")
    nc, ic = splits.num_classes, splits.in_channels
    model = create_model(model_name, num_classes=nc, in_channels=ic, **(model_kwargs or {}))
    check_state_dict(state, model, f"teacher checkpoint {str(path)!r}", model_name, nc, ic)
    model.load_state_dict(state)
    model = model.to(dev).eval()
    identity = state_dict_hash(state)
    data_key = config_hash(data_identity(dataclasses.replace(data_cfg, subset=None)))
    folder = Path(cache_dir or default_cache_dir()).expanduser() / "teachers"
    record = folder / f"checkpoint-{identity}-{data_key}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(record.with_suffix(".lock"))):
        try:
            meta = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        if meta.get("identity") != identity:
            t0 = time.perf_counter()
            meta = {
                "model": model_name,
                "num_classes": nc,
                "in_channels": ic,
                "identity": identity,
                "hash": identity,
                "data": data_identity(data_cfg),
                "val_acc": split_accuracy(model, splits.val, dev),
                "test_acc": split_accuracy(model, splits.test, dev),
                "eval_s": time.perf_counter() - t0,
                "checkpoint": True,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            text = json.dumps(meta, indent=2, sort_keys=True)
            _atomic_write(record, lambda tmp: Path(tmp).write_text(text))
    return FrozenTeacher(model), {**meta, "path": str(path), "cached": True, "checkpoint": True}


def train_with_loop(
    model: nn.Module, splits: DataSplits, cfg: TrainConfig, device: torch.device, progress: bool
) -> dict[str, Any]:
    """Default teacher training: the one loop, ``trainers.loop.Trainer``, with a tqdm progress bar."""
    trainer = Trainer(model, splits.train, cfg, val_data=splits.val, device=device)
    attach_callbacks(trainer, [ProgressBar(desc="teacher", disable=not progress)])
    result = trainer.run()
    return {
        "val_acc": result.val_acc,
        "epochs": result.epochs,
        "steps": result.steps,
        "train_s": result.wall_s,
        "epoch_val_acc": result.epoch_val_acc,
    }


def split_accuracy(
    model: nn.Module, split: torch.utils.data.Dataset, device: torch.device, batch_size: int = 512
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a split of ``(x, y, index)`` items."""
    return evaluate_split(model, split, batch_size=batch_size, device=device, cka=False)["accuracy"]


def teacher_path(cache_dir: str | Path | None, model_name: str, key: str) -> Path:
    """Checkpoint path of the teacher with hash ``key`` (an import path's ``:`` and ``.`` become ``_``)."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", model_name)
    return Path(cache_dir or default_cache_dir()).expanduser() / "teachers" / f"{stem}-{key}.pt"


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
    checkpoint: str | Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict]:
    """The trained teacher: the user's checkpoint, the cached one, or trained now (once for many processes).

    Args:
        model_name: Zoo name or import path of the teacher.
        data_cfg: Data set and split it is trained on (``subset`` is ignored: teachers see the whole split).
        train_cfg: Its training schedule.
        cache_dir: Cache folder (default ``$KDZERO_CACHE`` or ``~/.cache/kdzero``).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        progress: Show a progress bar while training.
        splits: Already loaded ``load_dataset(data_cfg)`` (saves loading it again).
        train_fn: Replaces the training (tests); default :func:`train_with_loop`.
        checkpoint: A trained teacher's ``state_dict`` file: loaded by :func:`load_checkpoint_teacher`,
            never trained.
        model_kwargs: Extra keyword arguments of the teacher's builder.

    Returns:
        ``(FrozenTeacher, meta)``; ``meta`` is the sidecar: ``identity`` (content hash of the weights),
        ``hash`` (cache key), ``val_acc``, ``test_acc``, ``epochs``, ``train_s``, ``sec_per_epoch``, ``path``,
        configs and versions.
    """
    dev = resolve_device(device)
    if data_cfg.subset is not None:
        # The teacher always learns from the whole training split: a subset regime limits the student's data,
        # not the teacher's (the validation split is carved before the subset, so it is the same).
        data_cfg, splits = dataclasses.replace(data_cfg, subset=None), None
    splits = load_dataset(data_cfg) if splits is None else splits
    kwargs = dict(model_kwargs or {})
    if checkpoint is not None:
        return load_checkpoint_teacher(
            checkpoint, model_name, splits, data_cfg, model_kwargs=kwargs, cache_dir=cache_dir, device=dev
        )
    key = teacher_key(model_name, data_cfg, train_cfg, splits.num_classes, splits.in_channels, kwargs)
    path = teacher_path(cache_dir, model_name, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = (model_name, splits.num_classes, splits.in_channels)
    with FileLock(str(path.with_suffix(".lock"))):
        if path.exists() and path.with_suffix(".json").exists():
            model, meta = load_teacher(path, *args, device=dev, model_kwargs=kwargs)
            return FrozenTeacher(model), {**meta, "path": str(path), "cached": True}
        torch.manual_seed(train_cfg.seed)
        model = create_model(
            model_name, num_classes=splits.num_classes, in_channels=splits.in_channels, **kwargs
        ).to(dev)
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
    identity = state_dict_hash(model.state_dict())
    return FrozenTeacher(model.eval()), {**meta, "identity": identity, "path": str(path), "cached": False}
