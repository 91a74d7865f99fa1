"""Batches of a split: ``(x, y, index)`` tensors by index slicing, a DataLoader otherwise, and augmentation.

Every loop over a split (training, evaluation, teacher outputs) reads its batches here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x (N, C, H, W), y (N,), index (N,)


def tensor_view(data: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(x, y, index)`` tensors of an in-memory split without random transforms, else ``None``.

    Recognises objects with tensor ``.x`` / ``.y`` (``trainers.data.TensorSplit``; optional ``.index``),
    ``TensorDataset(x, y[, index])`` and ``Subset`` of either (the subset keeps the base split's index).
    """
    if isinstance(data, Subset):
        base = tensor_view(data.dataset)
        if base is None:
            return None
        sel = torch.as_tensor(list(data.indices), dtype=torch.long)
        return base[0][sel], base[1][sel], base[2][sel]
    if isinstance(data, TensorDataset):
        ts = data.tensors
        if len(ts) not in (2, 3):
            return None
        index = ts[2] if len(ts) == 3 else torch.arange(len(ts[0]))
        return ts[0], ts[1], index.long()
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if (
        isinstance(x, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and getattr(data, "transform", None) is None
    ):
        if getattr(data, "augment", False):
            return None
        index = getattr(data, "index", None)
        if not isinstance(index, torch.Tensor):
            index = torch.arange(len(x))
        return x, y, index.long()
    return None


def iterate_batches(
    data: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
    view: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[Batch]:
    """Yield ``(x, y, index)`` batches: index slicing for in-memory splits, a DataLoader otherwise.

    Args:
        data: A data set whose items are ``(x, y, index)`` (or ``(x, y)``; index then counts positions).
        batch_size: Batch size.
        shuffle: Shuffle with ``generator``.
        generator: Seeded generator of the permutation.
        drop_last: Drop a final partial batch.
        device: Where batches go.
        view: Precomputed :func:`tensor_view` of ``data`` (e.g. already moved to ``device``).
    """
    view = view if view is not None else tensor_view(data)
    if view is not None:
        x, y, index = view
        n = len(y)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for i in range(0, stop, batch_size):
            sel = order[i : i + batch_size].to(x.device)
            yield x[sel].to(device), y[sel].to(device), index[sel].to(device)
        return
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last
    )
    offset = 0
    for item in loader:
        if len(item) == 3:
            xb, yb, ib = item
        else:
            xb, yb = item
            ib = torch.arange(offset, offset + len(yb))
        offset += len(yb)
        yield xb.to(device), yb.to(device), torch.as_tensor(ib).long().to(device)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding ``max(1, H // 8)``) and horizontal flip (p = 0.5) of each image of a batch.

    Args:
        x: Images (N, C, H, W) (normalised or not; padding adds zeros).
        generator: CPU generator of the offsets and flips (seeded per run and epoch).

    Returns:
        The augmented batch, same shape and device.
    """
    n, _, h, w = x.shape
    p = max(1, h // 8)
    padded = F.pad(x, (p, p, p, p))  # (N, C, H+2p, W+2p)
    top = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = top[:, None] + torch.arange(h, device=x.device)[None, :]  # (N, H)
    cols = left[:, None] + torch.arange(w, device=x.device)[None, :]  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_r = rows[:, None, :, None].expand(n, x.shape[1], h, padded.shape[3])  # (N, C, H, W+2p)
    out = padded.gather(2, idx_r)  # (N, C, H, W+2p)
    idx_c = cols[:, None, None, :].expand(n, x.shape[1], h, w)  # (N, C, H, W)
    return out.gather(3, idx_c)  # (N, C, H, W)
