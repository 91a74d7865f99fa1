"""Teacher-output cache: a frozen teacher's knowledge of a split, computed once, memory-mapped by all.

Layout: ``<root>/teacher_outputs/<key>/<split>-<kind>-<dtype>.npy`` where ``key`` hashes the teacher (its
checkpoint hash) and the data set config (:meth:`TeacherOutputCache.make_key`). Row ``i`` of a file is the
teacher's output for the item whose ``index`` is ``i``. Files are written once under a per-split file lock, to
a temporary file first and then ``os.replace``-d into place, so a second process (another worker) waits on the
lock, finds the file and memory-maps it (``np.load(mmap_mode="r")``): the page cache is shared by all workers.

Storage dtype: ``float32`` by default (rows equal a live teacher forward exactly); ``float16`` halves disk and
page cache for large ``feature`` maps at ~1e-3 relative precision. Only splits without random augmentation may
be cached: with augmentation the loop runs the teacher on the fly.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import Dataset

from spaces import KNOWLEDGE
from trainers.config import DataConfig, config_hash
from trainers.data import iterate_batches
from trainers.knowledge import KnowledgeExtractor

DTYPES = ("float16", "float32")
KINDS = KNOWLEDGE  # the knowledge kinds the cache can hold (one definition, in spaces)


class TeacherOutputCache:
    """Disk cache of teacher knowledge (``logits``, ``embedding``, ``feature``) per split, multi-process.

    Args:
        root: Cache folder (the experiment's ``cache_dir``).
        key: Identity of teacher + data (see :meth:`make_key`).
        dtype: Storage dtype, ``float32`` or ``float16``.
    """

    def __init__(self, root: str | os.PathLike[str], key: str, *, dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown cache dtype {dtype!r}; valid dtypes are {list(DTYPES)}")
        if not key or "/" in key:
            raise ValueError(f"cache key must be a non-empty name without '/', got {key!r}")
        self.dir = Path(root) / "teacher_outputs" / key
        self.dtype = dtype
        self._maps: dict[tuple[str, str], np.ndarray] = {}
        self._tensors: dict[tuple[str, str], torch.Tensor] = {}

    @staticmethod
    def make_key(teacher_hash: str, data_cfg: DataConfig | dict[str, Any], nodes: Any = None) -> str:
        """Hash of the teacher's checkpoint hash, the data set config and (optional) knowledge nodes."""
        return config_hash(teacher_hash, data_cfg, nodes)

    def path(self, split: str, kind: str) -> Path:
        """File holding ``kind`` of ``split``."""
        if kind not in KINDS:
            raise ValueError(f"unknown knowledge kind {kind!r}; valid kinds are {list(KINDS)}")
        return self.dir / f"{split}-{kind}-{self.dtype}.npy"

    def has(self, split: str, kind: str) -> bool:
        """Whether ``kind`` of ``split`` is on disk."""
        return self.path(split, kind).exists()

    @torch.no_grad()
    def build(
        self,
        teacher: nn.Module,
        split: str,
        data: Dataset,
        kinds: tuple[str, ...] | list[str] = ("logits",),
        *,
        batch_size: int = 512,
        device: str | torch.device = "cpu",
    ) -> None:
        """Compute the missing ``kinds`` of ``split`` in one teacher pass (once across processes), store them.

        Args:
            teacher: Frozen teacher (put in eval mode here).
            split: Split name used in the file names (``train``, ``val``, ``test``).
            data: The split; items ``(x, y, index)`` with ``index`` in ``[0, len(data))``; no random
                augmentation.
            kinds: Knowledge kinds to store.
            batch_size: Teacher batch size.
            device: Torch device of the teacher pass.
        """
        for k in kinds:
            self.path(split, k)  # validates the kind
        if all(self.has(split, k) for k in kinds):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.dir / f"{split}.lock")):
            missing = [k for k in dict.fromkeys(kinds) if not self.has(split, k)]
            if not missing:  # another process built them while we waited
                return
            teacher.eval()
            extract: KnowledgeExtractor | None = None
            if any(k != "logits" for k in missing):
                extract = KnowledgeExtractor(teacher).eval()
            n = len(data)  # type: ignore[arg-type]
            tmp = {
                k: self.path(split, k).with_name(f".{split}-{k}-{self.dtype}.{os.getpid()}.tmp.npy")
                for k in missing
            }
            arrays: dict[str, np.ndarray] = {}
            try:
                for x, _, index in iterate_batches(data, batch_size, device=device):
                    out = extract(x) if extract is not None else {"logits": teacher(x)}
                    idx = index.cpu().numpy()
                    for k in missing:
                        v = out[k].detach().float().cpu().numpy()  # (N, ...)
                        if k not in arrays:
                            arrays[k] = np.lib.format.open_memmap(
                                tmp[k], mode="w+", dtype=np.dtype(self.dtype), shape=(n, *v.shape[1:])
                            )
                        arrays[k][idx] = v
                for k in missing:
                    arrays[k].flush()
                    del arrays[k]
                    os.replace(tmp[k], self.path(split, k))
            finally:  # a failure (full disk, interrupt) leaves no partial file behind
                arrays.clear()
                for t in tmp.values():
                    t.unlink(missing_ok=True)

    def get(self, split: str, kind: str) -> np.ndarray:
        """The read-only memory map of ``kind`` of ``split`` (``(N, ...)``)."""
        key = (split, kind)
        if key not in self._maps:
            p = self.path(split, kind)
            if not p.exists():
                raise FileNotFoundError(
                    f"teacher outputs {kind!r} of split {split!r} are not cached at {p}; call build()"
                )
            self._maps[key] = np.load(p, mmap_mode="r")
        return self._maps[key]

    def outputs(
        self, split: str, kinds: tuple[str, ...] | list[str] = ("logits", "embedding")
    ) -> dict[str, Any]:
        """``{kind: memory map}`` of the cached ``kinds`` of ``split`` (for ``metrics.evaluate_split``)."""
        return {k: self.get(split, k) for k in kinds if self.has(split, k)}

    def rows(self, split: str, kind: str, index: torch.Tensor) -> torch.Tensor:
        """Float32 rows ``index`` (``(B,)``) of ``kind`` of ``split`` as a CPU tensor ``(B, ...)``."""
        key = (split, kind)
        table = self._tensors.get(key)
        if table is None:
            # Zero-copy view of the (shared, read-only) memory map; rows are gathered per batch.
            arr = self.get(split, kind)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we never write to it
                table = torch.from_numpy(arr)
            self._tensors[key] = table
        out = table[index.cpu()]  # (B, ...)
        return out if out.dtype == torch.float32 else out.float()
