"""CIFAR-10/100 (torchvision's on-disk format, read by torchvision's own classes) and ImageFolders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision import transforms as T

from ..config import DataConfig
from ._mnist import DataNotFoundError, default_data_dir
from ._splits import DataSplits, ImageTensorSplit, IndexedView, carve_split, subset_indices

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_CLASS = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _cifar_candidates(root: str | None) -> list[Path]:
    return [Path(root).expanduser()] if root is not None else [default_data_dir(), Path("data")]


def _cifar_missing(name: str, root: str | None) -> DataNotFoundError:
    folder = _CIFAR_CLASS[name].base_folder
    looked = ", ".join(str(c / folder) for c in _cifar_candidates(root))
    return DataNotFoundError(
        f"{name} ({folder}, torchvision's python format) not found; looked in: {looked}. "
        "Point --data-root at the folder that contains it, or pass --download (torchvision download)."
    )


def find_cifar(name: str, root: str | None) -> Path:
    """The folder holding CIFAR ``name``'s python files (checked by torchvision only when they are read).

    Raises:
        DataNotFoundError: None of the places searched holds it (the message lists them).
    """
    folder = _CIFAR_CLASS[name].base_folder
    for base in _cifar_candidates(root):
        if (base / folder).is_dir():
            return base
    raise _cifar_missing(name, root)


def _cifar_dataset(name: str, root: str | None, download: bool) -> tuple[object, object]:
    cls = _CIFAR_CLASS[name]
    folder = cls.base_folder  # "cifar-10-batches-py" / "cifar-100-python"
    candidates = _cifar_candidates(root)
    for base in candidates:
        if (base / folder).is_dir():
            try:  # torchvision verifies the official checksums before it unpickles anything
                return cls(str(base), train=True, download=False), cls(str(base), train=False, download=False)
            except RuntimeError as err:
                raise DataNotFoundError(
                    f"{name}: {base / folder} exists but torchvision refuses it ({err}); it only reads "
                    "the official files (md5-checked). Re-download with --download or replace the folder."
                ) from err
    if download:
        base = candidates[0]
        return cls(str(base), train=True, download=True), cls(str(base), train=False, download=True)
    raise _cifar_missing(name, root)


def load_cifar(cfg: DataConfig) -> DataSplits:
    """CIFAR-10 or CIFAR-100 as uint8 tensors; crop(32, pad 4) + flip on the training split only (default)."""
    if cfg.image_size is not None and cfg.image_size != 32:
        raise ValueError(f"data set {cfg.name!r} has fixed image_size 32, got image_size={cfg.image_size!r}")
    train_ds, test_ds = _cifar_dataset(cfg.name, cfg.root, cfg.download)
    mean, std = CIFAR_STATS[cfg.name]

    def tensors(ds: object) -> tuple[torch.Tensor, torch.Tensor]:
        data = (
            torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        )  # (N, 3, 32, 32)
        return data, torch.as_tensor(ds.targets, dtype=torch.long)

    x, y = tensors(train_ds)
    x_test, y_test = tensors(test_ds)
    augment = True if cfg.augment is None else cfg.augment
    train_idx, val_idx = carve_split(x.shape[0], cfg.val_size, cfg.subset, cfg.split_seed, cfg.val_indices)
    return DataSplits(
        train=ImageTensorSplit(x[train_idx], y[train_idx], mean, std, augment=augment),
        val=ImageTensorSplit(x[val_idx], y[val_idx], mean, std, augment=False),
        test=ImageTensorSplit(x_test, y_test, mean, std, augment=False),
        num_classes=len(train_ds.classes),
        in_channels=3,
        image_size=32,
        augment=augment,
        name=cfg.name,
        classes=tuple(train_ds.classes),
        train_indices=train_idx,
        val_indices=val_idx,
    )


def find_imagefolder(root: str | None) -> Path:
    """The ImageFolder root, once it holds ``train/`` and ``test/`` folders.

    Raises:
        DataNotFoundError: No root given, or a folder missing (named).
    """
    if root is None:
        raise DataNotFoundError(
            "imagefolder needs --data-root pointing at a folder with train/ and test/ subfolders"
        )
    base = Path(root).expanduser()
    missing = [str(base / s) for s in ("train", "test") if not (base / s).is_dir()]
    if missing:
        raise DataNotFoundError(
            f"imagefolder: missing folder(s) {missing}; expected {base}/train/<class>/*.png "
            f"and {base}/test/<class>/*.png (optional {base}/val/)"
        )
    return base


def load_imagefolder(cfg: DataConfig) -> DataSplits:
    """An ImageFolder tree ``root/{train,test}[/val]/<class>/<image>``, resized to ``image_size`` (32).

    A ``val/`` folder, when present, is the validation split (``val_size`` is then unused); otherwise the
    validation split is carved from ``train/``. Images are RGB, normalised with ImageNet statistics; the
    training split gets crop (padding size/8) + flip unless ``augment`` is False.
    """
    root = find_imagefolder(cfg.root)
    size = cfg.image_size or 32
    augment = True if cfg.augment is None else cfg.augment
    base = [T.Resize(size), T.CenterCrop(size)]
    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    plain = T.Compose(base + tail)
    aug = T.Compose(base + [T.RandomCrop(size, padding=max(1, size // 8)), T.RandomHorizontalFlip()] + tail)
    folder = torchvision.datasets.ImageFolder
    train_plain = folder(str(root / "train"), transform=plain)
    train_aug = folder(str(root / "train"), transform=aug if augment else plain)
    test = folder(str(root / "test"), transform=plain)
    if test.classes != train_plain.classes:
        raise ValueError(
            f"imagefolder: test classes {test.classes} differ from train classes {train_plain.classes}"
        )
    if (root / "val").is_dir():
        val_base = folder(str(root / "val"), transform=plain)
        if val_base.classes != train_plain.classes:
            raise ValueError(f"imagefolder: val classes {val_base.classes} differ from {train_plain.classes}")
        train_idx = subset_indices(len(train_plain), cfg.subset, cfg.split_seed)
        val_idx = torch.arange(len(val_base))
        val = IndexedView(val_base, val_idx)
    else:
        train_idx, val_idx = carve_split(
            len(train_plain), cfg.val_size, cfg.subset, cfg.split_seed, cfg.val_indices
        )
        val = IndexedView(train_plain, val_idx)
    return DataSplits(
        train=IndexedView(train_aug, train_idx),
        val=val,
        test=IndexedView(test, torch.arange(len(test))),
        num_classes=len(train_plain.classes),
        in_channels=3,
        image_size=size,
        augment=augment,
        name=cfg.name,
        classes=tuple(train_plain.classes),
        train_indices=train_idx,
        val_indices=val_idx,
    )
