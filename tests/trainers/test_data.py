"""Loaders read small files written here in the real on-disk formats; splits are seeded, disjoint,
complete."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from trainers import DataConfig, DataNotFoundError, TensorSplit, load_dataset
from trainers.data import _mnist, carve_split, read_idx


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_fashion(root: Path, n_train: int = 60, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(root / f"{name}.gz", arr)
    return arrays


def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    arr = np.arange(24).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "b")


def test_fashion_mnist_values_and_split(tmp_path):
    arrays = write_fashion(tmp_path)
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path), val_size=10, split_seed=3)
    s = load_dataset(cfg)
    assert (len(s.train), len(s.val), len(s.test)) == (50, 10, 20)
    assert (s.num_classes, s.in_channels, s.image_size, s.augment) == (10, 1, 28, False)
    assert (
        isinstance(s.train, TensorSplit)
        and s.train.x.dtype == torch.float32
        and s.train.y.dtype == torch.long
    )
    raw = arrays["train-images-idx3-ubyte"].astype(np.float64)
    labels = arrays["train-labels-idx1-ubyte"]
    i = int(s.train_indices[4])
    expected = (raw[i] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(s.train.x[4, 0].numpy(), expected, atol=1e-5)
    x, y, index = s.train[4]
    assert int(y) == labels[i] and index == 4
    j = int(s.val_indices[2])
    np.testing.assert_allclose(s.val.x[2, 0].numpy(), (raw[j] / 255.0 - 0.2860) / 0.3530, atol=1e-5)
    np.testing.assert_array_equal(s.test.y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # disjoint, complete, deterministic
    tr, va = set(s.train_indices.tolist()), set(s.val_indices.tolist())
    assert not tr & va and tr | va == set(range(60))
    again = load_dataset(cfg)
    assert torch.equal(again.train_indices, s.train_indices) and torch.equal(again.train.x, s.train.x)
    other = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path), val_size=10, split_seed=4))
    assert not torch.equal(other.val_indices, s.val_indices)


def test_torchvision_raw_layout_and_fraction_and_subset(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw")
    s = load_dataset(DataConfig(root=str(tmp_path), val_size=0.25, subset=20, split_seed=1))
    assert (len(s.train), len(s.val)) == (20, 15)
    assert not set(s.train_indices.tolist()) & set(s.val_indices.tolist())


@pytest.mark.parametrize("n,val,subset,seed", [(100, 10, None, 0), (100, 0.3, 0.5, 7), (37, 5, 32, 2)])
def test_carve_split_properties(n, val, subset, seed):
    train, v = carve_split(n, val, subset, seed)
    n_val = int(round(val * n)) if isinstance(val, float) else val
    rest = n - n_val
    n_train = rest if subset is None else (int(round(subset * rest)) if isinstance(subset, float) else subset)
    assert (len(train), len(v)) == (n_train, n_val)
    assert not set(train.tolist()) & set(v.tolist())
    assert torch.equal(train, train.sort().values)
    assert torch.equal(carve_split(n, val, subset, seed)[0], train)


def test_bad_sizes(tmp_path):
    write_fashion(tmp_path)
    with pytest.raises(ValueError, match="leaving none to train on"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=60))
    with pytest.raises(ValueError, match="subset=100 exceeds"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=10, subset=100))
    with pytest.raises(ValueError, match=r"unknown data set 'mnist'.*'fashion_mnist'"):
        load_dataset(DataConfig(name="mnist"))


def test_missing_fashion_mnist_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setattr(_mnist, "SYSTEM_FASHION_DIR", tmp_path / "system")
    monkeypatch.setenv("KDZERO_DATA", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(DataConfig())
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for place in (
        tmp_path / "system",
        tmp_path / "cache" / "FashionMNIST" / "raw",
        Path("data") / "FashionMNIST",
    ):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg and "--download" in msg
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "given")):
        load_dataset(DataConfig(root=str(tmp_path / "given")))


def test_digits_upsampled_with_fixed_test_split():
    s = load_dataset(DataConfig(name="digits", val_size=0.1))
    assert (len(s.train) + len(s.val), len(s.test)) == (1797 - 360, 360)
    assert s.train.x.shape[1:] == (1, 28, 28) and s.num_classes == 10
    again = load_dataset(DataConfig(name="digits", val_size=0.1, split_seed=5))
    assert torch.equal(again.test.y, s.test.y) and torch.equal(again.test.x, s.test.x)


def _write_cifar(root: Path, monkeypatch, n_per_batch: int = 6, n_test: int = 8) -> np.ndarray:
    """CIFAR-10 python batches in torchvision's layout; its expected md5s are pointed at these files."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    cls = torchvision.datasets.CIFAR10
    all_rows = []

    def dump(name: str, obj: dict) -> list[str]:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    train_list = []
    for b in range(1, 6):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        all_rows.append(data)
        train_list.append(
            dump(f"data_batch_{b}", {"data": data, "labels": rng.integers(0, 10, n_per_batch).tolist()})
        )
    test_data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_list = [dump("test_batch", {"data": test_data, "labels": list(range(n_test))})]
    meta_md5 = dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})[1]
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
    return np.concatenate(all_rows).reshape(-1, 3, 32, 32)


def test_cifar10_batches_augment_train_only(tmp_path, monkeypatch):
    images = _write_cifar(tmp_path, monkeypatch)
    s = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_size=6, split_seed=0))
    assert (len(s.train), len(s.val), len(s.test)) == (24, 6, 8)
    assert s.augment and s.num_classes == 10 and s.classes[3] == "c3"
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(3, 1, 1)
    j = int(s.val_indices[1])
    expected = (torch.from_numpy(images[j]).float() / 255 - mean) / std
    torch.testing.assert_close(s.val[1][0], expected)  # validation: not augmented
    torch.testing.assert_close(s.val[1][0], s.val[1][0])
    torch.manual_seed(0)
    draws = [s.train[0][0] for _ in range(12)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # training: random crop / flip
    assert draws[0].shape == (3, 32, 32)
    plain = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_size=6, augment=False))
    assert not plain.augment and torch.equal(plain.train[0][0], plain.train[0][0])


def test_cifar_tampered_file_is_refused(tmp_path, monkeypatch):
    _write_cifar(tmp_path, monkeypatch)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not the file torchvision checked")
    with pytest.raises(DataNotFoundError, match="md5-checked"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_size=6))


def test_missing_cifar100_names_places(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"(?s)cifar-100-python.*--download"):
        load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))


def test_imagefolder_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i}.png"
                )
    s = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), val_size=4, image_size=16))
    assert (len(s.train), len(s.val), len(s.test)) == (8, 4, 4)
    assert s.classes == ("cat", "dog") and s.image_size == 16 and s.in_channels == 3
    x, y, i = s.val[0]
    assert x.shape == (3, 16, 16) and i == 0 and int(y) in (0, 1)
    assert torch.equal(s.val[0][0], s.val[0][0])
    assert [int(s.test[k][1]) for k in range(4)] == [0, 0, 1, 1]
    (tmp_path / "val" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "val" / "cat" / "0.png")
    (tmp_path / "val" / "dog").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "val" / "dog" / "0.png")
    s = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))
    assert (len(s.train), len(s.val)) == (12, 2)
    with pytest.raises(DataNotFoundError, match="train"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "nowhere")))
