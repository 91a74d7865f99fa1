"""Fashion-MNIST from idx ``.gz`` files and scikit-learn's bundled 8x8 digits (upsampled to 28x28)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor

from ..config import DataConfig
from ._splits import DataSplits, TensorSplit, carve_split

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataNotFoundError(FileNotFoundError):
    """A data set's files are in none of the places searched; the message lists them and how to get it."""


def default_data_dir() -> Path:
    """Where downloads go and local copies are looked for: ``$KDZERO_DATA`` or ``~/.cache/kdzero/data``."""
    return Path(os.environ.get("KDZERO_DATA", Path.home() / ".cache" / "kdzero" / "data")).expanduser()


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) of unsigned bytes into an array of its stored shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes (magic {raw[:4].hex()!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but holds {data.size}")
    return data.reshape(dims)


def _fashion_candidates(root: str | None) -> list[Path]:
    if root is not None:
        base = Path(root).expanduser()
        return [base, base / "FashionMNIST" / "raw", base / "fashion-mnist"]
    cache = default_data_dir()
    return [
        SYSTEM_FASHION_DIR,
        cache / "FashionMNIST" / "raw",
        cache / "fashion-mnist",
        Path("data") / "FashionMNIST" / "raw",
    ]


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(root: str | None, download: bool) -> dict[str, Path]:
    """Paths of the four Fashion-MNIST idx files, downloading through torchvision only when ``download``.

    Raises:
        DataNotFoundError: No candidate folder holds all four files (and ``download`` is False).
    """
    candidates = _fashion_candidates(root)
    for folder in candidates:
        found = {k: _find_file(folder, stem) for k, stem in FASHION_FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    if download:
        target = Path(root).expanduser() if root is not None else default_data_dir()
        torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(target), train=False, download=True)
        return find_fashion_mnist(str(target), download=False)
    looked = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(
        "Fashion-MNIST idx files (train-images-idx3-ubyte[.gz], ...) not found; looked in: "
        f"{looked}. Get them with `apt-get install dataset-fashion-mnist` (installs {SYSTEM_FASHION_DIR}), "
        "point --data-root at a folder holding them, or pass --download (torchvision download)."
    )


def _tensor_splits(
    x: Tensor,
    y: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    cfg: DataConfig,
    num_classes: int,
    classes: tuple[str, ...],
) -> DataSplits:
    train_idx, val_idx = carve_split(x.shape[0], cfg.val_size, cfg.subset, cfg.split_seed, cfg.val_indices)
    if cfg.augment:
        raise ValueError(
            f"data set {cfg.name!r} has no augmentation (in-memory tensors); set augment to None/False"
        )
    return DataSplits(
        train=TensorSplit(x[train_idx], y[train_idx]),
        val=TensorSplit(x[val_idx], y[val_idx]),
        test=TensorSplit(x_test, y_test),
        num_classes=num_classes,
        in_channels=x.shape[1],
        image_size=x.shape[-1],
        augment=False,
        name=cfg.name,
        classes=classes,
        train_indices=train_idx,
        val_indices=val_idx,
    )


def _check_size(cfg: DataConfig, native: int) -> None:
    if cfg.image_size is not None and cfg.image_size != native:
        raise ValueError(
            f"data set {cfg.name!r} has fixed image_size {native}, got image_size={cfg.image_size!r}"
        )


def load_fashion_mnist(cfg: DataConfig) -> DataSplits:
    """Fashion-MNIST as normalised in-memory tensors ``(N, 1, 28, 28)`` (mean 0.2860, std 0.3530)."""
    _check_size(cfg, 28)
    paths = find_fashion_mnist(cfg.root, cfg.download)

    def images(key: str) -> Tensor:
        raw = torch.from_numpy(read_idx(paths[key]).copy())  # (N, 28, 28) uint8
        return ((raw.float() / 255.0 - FASHION_MEAN) / FASHION_STD).unsqueeze(1)  # (N, 1, 28, 28)

    def labels(key: str) -> Tensor:
        return torch.from_numpy(read_idx(paths[key]).astype(np.int64))

    x, y = images("train_images"), labels("train_labels")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"Fashion-MNIST: {x.shape[0]} training images but {y.shape[0]} labels ({paths})")
    return _tensor_splits(x, y, images("test_images"), labels("test_labels"), cfg, 10, FASHION_CLASSES)


DIGITS_TEST_SIZE = 360  # fixed test split of scikit-learn's 1797 digits (seed 0), independent of split_seed


def load_digits(cfg: DataConfig) -> DataSplits:
    """scikit-learn's bundled 8x8 digits, upsampled (bilinear) to ``(N, 1, 28, 28)`` for the 28x28 models.

    The test split is a fixed 360-sample draw (seed 0); values are scaled from [0, 16] and standardised.
    """
    _check_size(cfg, 28)
    from sklearn.datasets import load_digits as sk_digits  # deferred: scikit-learn is only needed here

    bunch = sk_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    x = torch.nn.functional.interpolate(
        x, size=(28, 28), mode="bilinear", align_corners=False
    )  # (1797, 1, 28, 28)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    test, rest = perm[:DIGITS_TEST_SIZE].sort().values, perm[DIGITS_TEST_SIZE:].sort().values
    mean, std = x[rest].mean(), x[rest].std()
    x = (x - mean) / std
    classes = tuple(str(i) for i in range(10))
    return _tensor_splits(x[rest], y[rest], x[test], y[test], cfg, 10, classes)
