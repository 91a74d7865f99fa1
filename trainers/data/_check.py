"""Check that a data set's files are where its configuration says, before anything is stored or trained."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from ._mnist import DataNotFoundError, find_fashion_mnist
from ._vision import find_cifar, find_imagefolder

ROOTLESS = ("digits",)
"""Data sets bundled with a package: they read no files, so a data root given to them is refused."""


def refuse_unread_root(cfg: DataConfig) -> None:
    """Refuse a data root given to a data set that reads none (it would be ignored without a word).

    Raises:
        ValueError: Naming the data set and the root.
    """
    if cfg.name in ROOTLESS and cfg.root is not None:
        raise ValueError(
            f"data set {cfg.name!r} is bundled with scikit-learn and reads no files: remove the data root "
            f"{cfg.root!r} (--data-root / dataset.root), or name a data set that reads one"
        )


def check_data(cfg: DataConfig) -> None:
    """Verify, without loading them, that the data set's files exist (nothing is downloaded or written).

    With ``download`` the files are fetched when first loaded, so only the data root rule is checked; data
    sets bundled with a package (:data:`ROOTLESS`) have no files to check.

    Args:
        cfg: The data configuration.

    Raises:
        ValueError: A data root given to a data set that reads none, or an unknown data set name.
        DataNotFoundError: The files (or the ``val_indices`` file) are missing; the message names where.
    """
    from . import DATASETS  # deferred: the package imports this module

    if cfg.name not in DATASETS:
        raise ValueError(f"unknown data set {cfg.name!r}; valid names are {sorted(DATASETS)}")
    refuse_unread_root(cfg)
    if cfg.val_indices is not None and not Path(cfg.val_indices).expanduser().is_file():
        raise DataNotFoundError(f"data.val_indices: the file {cfg.val_indices!r} does not exist")
    if cfg.download:
        return
    if cfg.name == "fashion_mnist":
        find_fashion_mnist(cfg.root, download=False)
    elif cfg.name in ("cifar10", "cifar100"):
        find_cifar(cfg.name, cfg.root)
    elif cfg.name == "imagefolder":
        find_imagefolder(cfg.root)
