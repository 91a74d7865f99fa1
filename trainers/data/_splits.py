"""Split containers and the seeded validation / subset carving shared by every data set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset


class TensorSplit(Dataset):
    """An in-memory split: ``x`` float ``(N, C, H, W)`` (already normalised), ``y`` long ``(N,)``.

    Items are ``(x[i], y[i], i)``; the loop may batch directly from ``.x`` / ``.y`` with an index tensor.
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"TensorSplit: x has {x.shape[0]} samples but y has {y.shape[0]}")
        self.x = x
        self.y = y.long()

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self.x[i], self.y[i], i


class ImageTensorSplit(Dataset):
    """Images kept as ``uint8 (N, C, H, W)``; items normalised, randomly cropped/flipped if ``augment``.

    Augmentation (CIFAR recipe): zero-pad ``padding`` pixels, random ``H x W`` crop, horizontal flip p=0.5.
    """

    def __init__(
        self,
        data: Tensor,
        y: Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool = False,
        padding: int = 4,
    ) -> None:
        if data.dtype != torch.uint8 or data.ndim != 4:
            raise ValueError(
                f"ImageTensorSplit expects uint8 (N, C, H, W), got {data.dtype} {tuple(data.shape)}"
            )
        self.data, self.y = data, y.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment, self.padding = augment, padding

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        x = self.data[i].float().div_(255.0)  # (C, H, W) in [0, 1]
        if self.augment:
            _, h, w = x.shape
            p = self.padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))  # (C, H+2p, W+2p)
            top, left = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            x = padded[:, top : top + h, left : left + w]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, self.y[i], i


class IndexedView(Dataset):
    """Items ``(x, y, i)`` of ``base[indices[i]]`` (a torchvision dataset giving ``(x, y)``)."""

    def __init__(self, base: Dataset, indices: Tensor | list[int]) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        x, y = self.base[self.indices[i]]
        return x, torch.as_tensor(y, dtype=torch.long), i


@dataclass
class DataSplits:
    """Train / validation / test splits of one data set, with what a model needs to know about them."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    augment: bool
    name: str
    classes: tuple[str, ...] = ()
    train_indices: Tensor | None = None  # positions inside the original training set
    val_indices: Tensor | None = None


def _count(size: int | float, n: int, what: str) -> int:
    k = int(round(size * n)) if isinstance(size, float) else int(size)
    if k < 1:
        raise ValueError(f"{what}={size!r} gives no samples out of {n}")
    return k


def read_indices(path: str | Path, n: int) -> Tensor:
    """Validation positions from a file: a JSON list, or integers separated by white space or commas.

    Raises:
        ValueError: Missing or unreadable file, non-integers, duplicates, or positions outside ``[0, n)``
            (the first bad value named).
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValueError(f"data.val_indices: cannot read {str(p)!r} ({exc})") from None
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else text.replace(",", " ").split()
        idx = [int(v) if not isinstance(v, float) or v.is_integer() else v for v in values]
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"data.val_indices {str(p)!r}: not a list of integers ({exc})") from None
    bad = next((v for v in idx if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n), None)
    if bad is not None:
        raise ValueError(
            f"data.val_indices {str(p)!r}: {bad!r} is not a position in the {n} training samples"
        )
    if len(set(idx)) != len(idx) or not idx:
        raise ValueError(f"data.val_indices {str(p)!r}: the positions must be distinct and at least one")
    if len(idx) >= n:
        raise ValueError(
            f"data.val_indices {str(p)!r} takes all {n} training samples, leaving none to train on"
        )
    return torch.tensor(sorted(idx), dtype=torch.long)


def carve_split(
    n: int,
    val_size: int | float,
    subset: int | float | None,
    seed: int,
    val_indices: str | Path | None = None,
) -> tuple[Tensor, Tensor]:
    """Seeded, disjoint (train, val) indices of a training set of size ``n``, each sorted.

    Args:
        n: Size of the original training set.
        val_size: Validation samples (int) or fraction (float < 1) of ``n``.
        subset: Keep only this many (int) or this fraction (float) of the remaining training samples.
        seed: Seed of the permutation.
        val_indices: A file naming the validation positions (:func:`read_indices`); wins over ``val_size``.

    Returns:
        ``(train_indices, val_indices)``, long tensors.

    Raises:
        ValueError: The sizes leave an empty training split or exceed it.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if val_indices is not None:
        val = read_indices(val_indices, n)
        taken = torch.zeros(n, dtype=torch.bool)
        taken[val] = True
        train = perm[~taken[perm]]  # the rest, in the seeded order (the subset below draws from it)
    else:
        n_val = _count(val_size, n, "val_size")
        if n_val >= n:
            raise ValueError(
                f"val_size={val_size!r} takes {n_val} of the {n} training samples, leaving none to train on"
            )
        val, train = perm[:n_val], perm[n_val:]
    if subset is not None:
        n_sub = _count(subset, len(train), "subset")
        if n_sub > len(train):
            raise ValueError(
                f"subset={subset!r} exceeds the {len(train)} training samples left after validation"
            )
        train = train[:n_sub]
    return train.sort().values, val.sort().values


def subset_indices(n: int, subset: int | float | None, seed: int) -> Tensor:
    """Sorted indices of a seeded subset of ``range(n)`` (all of them when ``subset`` is None)."""
    if subset is None:
        return torch.arange(n)
    k = _count(subset, n, "subset")
    if k > n:
        raise ValueError(f"subset={subset!r} exceeds the {n} training samples")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
