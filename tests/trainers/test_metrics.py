"""Fitness metrics against independent numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainers import metrics
from trainers.metrics import StreamingCKA, accuracy, cross_entropy, linear_cka, sharpness_gap


def _cka_ref(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019 linear CKA via the centred Gram (N x N) matrices: HSIC(K, L) / sqrt(HSIC(K,K)
    HSIC(L,L))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k = h @ (x @ x.T) @ h
    lm = h @ (y @ y.T) @ h
    return float(np.sum(k * lm) / np.sqrt(np.sum(k * k) * np.sum(lm * lm)))


@pytest.mark.parametrize("dx,dy", [(5, 5), (8, 3), (3, 12)])
def test_linear_cka_matches_gram_reference(dx: int, dy: int) -> None:
    rng = np.random.default_rng(dx * 10 + dy)
    x = rng.normal(size=(40, dx))
    y = x[:, :1] @ rng.normal(size=(1, dy)) + 0.5 * rng.normal(size=(40, dy))
    got = linear_cka(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert got == pytest.approx(_cka_ref(x, y), rel=1e-5)


def test_linear_cka_invariances_and_identity() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    y = rng.normal(size=(50, 4)) + x[:, :4]
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # orthogonal
    base = linear_cka(torch.tensor(x), torch.tensor(y))
    assert linear_cka(torch.tensor(x @ q), torch.tensor(y)) == pytest.approx(base, rel=1e-10)
    assert linear_cka(torch.tensor(7.5 * x), torch.tensor(y)) == pytest.approx(base, rel=1e-10)
    assert linear_cka(torch.tensor(x + 3.0), torch.tensor(y)) == pytest.approx(base, rel=1e-10)
    assert linear_cka(torch.tensor(x), torch.tensor(x)) == pytest.approx(1.0, abs=1e-12)
    assert 0.0 < base < 1.0


def test_streaming_cka_equals_full() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(103, 7)) + 2.0
    y = np.tanh(x @ rng.normal(size=(7, 9))) - 1.0
    acc = StreamingCKA()
    for i in range(0, 103, 16):
        acc.update(
            torch.tensor(x[i : i + 16], dtype=torch.float32), torch.tensor(y[i : i + 16], dtype=torch.float32)
        )
    assert acc.n == 103
    assert acc.compute() == pytest.approx(_cka_ref(x, y), rel=1e-5)


def test_cka_row_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(torch.zeros(3, 2), torch.zeros(4, 2))


def test_sharpness_gap_accuracy_ce_formulas() -> None:
    rng = np.random.default_rng(2)
    zs = rng.normal(size=(20, 5)) * 3
    zt = rng.normal(size=(20, 5)) * 5
    labels = rng.integers(0, 5, size=20)

    def lse(z: np.ndarray) -> np.ndarray:
        m = z.max(1, keepdims=True)
        return (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]

    assert sharpness_gap(torch.tensor(zs), torch.tensor(zt)) == pytest.approx(
        np.mean(np.abs(lse(zt) - lse(zs)))
    )
    ce_ref = np.mean(lse(zs) - zs[np.arange(20), labels])
    assert cross_entropy(torch.tensor(zs), torch.tensor(labels)) == pytest.approx(ce_ref, rel=1e-5)
    assert accuracy(torch.tensor(zs), torch.tensor(labels)) == pytest.approx(np.mean(zs.argmax(1) == labels))


def test_evaluate_split_against_full_tensors() -> None:
    from trainers.knowledge import KnowledgeExtractor

    torch.manual_seed(0)
    x = torch.randn(70, 1, 8, 8)
    y = torch.randint(0, 4, (70,))
    split = TensorDataset(x, y, torch.arange(70))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 4))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 4))
    with torch.no_grad():
        ks, kt = KnowledgeExtractor(student)(x), KnowledgeExtractor(teacher)(x)
    outputs = {"logits": kt["logits"].numpy(), "embedding": kt["embedding"].numpy()}
    got = metrics.evaluate_split(student, split, outputs, batch_size=16)
    live = metrics.evaluate_split(student, split, teacher=teacher, batch_size=32)
    assert got["ce"] == pytest.approx(cross_entropy(ks["logits"], y), rel=1e-5)
    assert got["accuracy"] == pytest.approx(accuracy(ks["logits"], y))
    assert got["sharpness_gap"] == pytest.approx(sharpness_gap(ks["logits"], kt["logits"]), rel=1e-5)
    ref = _cka_ref(ks["embedding"].double().numpy(), kt["embedding"].double().numpy())
    assert got["cka"] == pytest.approx(ref, rel=1e-4)
    assert got["cka_gap"] == pytest.approx(1 - ref, rel=1e-4)
    for k in got:
        assert live[k] == pytest.approx(got[k], rel=1e-5)
