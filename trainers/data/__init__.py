"""Data sets as train / validation / test splits whose items are ``(x, y, index)``.

``load_dataset(DataConfig)`` dispatches on the name through one table, :data:`DATASETS`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import DataConfig
from ._batches import Batch, augment_batch, iterate_batches, tensor_view
from ._check import ROOTLESS, check_data, refuse_unread_root
from ._mnist import DataNotFoundError, default_data_dir, load_digits, load_fashion_mnist, read_idx
from ._splits import DataSplits, ImageTensorSplit, IndexedView, TensorSplit, carve_split, subset_indices
from ._vision import load_cifar, load_imagefolder

DATASETS: dict[str, Callable[[DataConfig], DataSplits]] = {
    "cifar10": load_cifar,
    "cifar100": load_cifar,
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "imagefolder": load_imagefolder,
}


def load_dataset(cfg: DataConfig) -> DataSplits:
    """Load the data set named by ``cfg.name`` and split it.

    Args:
        cfg: Name, root folder, validation size, training subset, split seed, download and augmentation flags.

    Returns:
        ``DataSplits`` whose ``train`` / ``val`` are disjoint, seeded carvings of the training set and whose
        ``test`` is the data set's own test split.

    Raises:
        ValueError: Unknown name (the message lists the valid ones), sizes that leave no training data, or a
            data root given to a data set that reads none (:data:`ROOTLESS`).
        DataNotFoundError: The files are missing; the message names every place searched and how to get them.
    """
    if cfg.name not in DATASETS:
        raise ValueError(f"unknown data set {cfg.name!r}; valid names are {sorted(DATASETS)}")
    refuse_unread_root(cfg)
    return DATASETS[cfg.name](cfg)


__all__ = [
    "Batch",
    "DATASETS",
    "ROOTLESS",
    "DataNotFoundError",
    "DataSplits",
    "ImageTensorSplit",
    "IndexedView",
    "TensorSplit",
    "augment_batch",
    "carve_split",
    "check_data",
    "default_data_dir",
    "iterate_batches",
    "load_dataset",
    "read_idx",
    "refuse_unread_root",
    "subset_indices",
    "tensor_view",
]
