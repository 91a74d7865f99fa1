from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from spaces import CALIBRATIONS, calibrate


def _raw(name: str, zs: np.ndarray, zt: np.ndarray, y: np.ndarray) -> np.ndarray:
    ps, pt = softmax(zs, axis=1), softmax(zt, axis=1)
    if name == "no":
        return np.ones(len(zs))
    if name == "entropy":
        return np.array([-sum(p * np.log(p)) for p in pt])
    if name == "focal":
        ce_s = -log_softmax(zs, axis=1)[np.arange(len(y)), y]
        ce_t = -log_softmax(zt, axis=1)[np.arange(len(y)), y]
        return 1 - np.exp(-ce_s / (ce_t + 1e-7))
    if name == "sim":
        return np.array([1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ps, pt)])
    if name == "conf":
        return pt.max(axis=1)
    raise KeyError(name)


def test_registry_names():
    assert list(CALIBRATIONS) == sorted(["no", "entropy", "focal", "sim", "conf"])


@pytest.mark.parametrize("name", list(CALIBRATIONS))
def test_calibration_values_and_batch_mean_one(name: str):
    g = torch.Generator().manual_seed(0)
    zs, zt = (
        torch.randn(6, 5, generator=g, dtype=torch.float64) * 2,
        torch.randn(6, 5, generator=g, dtype=torch.float64) * 2,
    )
    y = torch.randint(0, 5, (6,), generator=g)
    w = calibrate(name, zs, zt, y)
    raw = _raw(name, zs.numpy(), zt.numpy(), y.numpy())
    np.testing.assert_allclose(w.numpy(), (raw + 1e-8) / (raw.mean() + 1e-8), rtol=1e-5)
    assert w.mean().item() == pytest.approx(1.0)


def test_focal_without_labels_uses_teacher_argmax():
    zs, zt = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(calibrate("focal", zs, zt, None), calibrate("focal", zs, zt, zt.argmax(1)))


@pytest.mark.parametrize("case", ["extreme", "constant", "batch1"])
@pytest.mark.parametrize("name", list(CALIBRATIONS))
def test_calibration_finite_and_detached(name: str, case: str):
    if case == "extreme":
        zs = (torch.randint(0, 2, (8, 10)).float() * 2 - 1) * 1e4
        zt = -zs
    elif case == "constant":
        zs, zt = torch.zeros(8, 10), torch.zeros(8, 10)
    else:
        zs, zt = torch.randn(1, 10), torch.randn(1, 10)
    zs.requires_grad_(True)
    w = calibrate(name, zs, zt, torch.zeros(zs.shape[0], dtype=torch.long))
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert not w.requires_grad
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)


def test_calibration_shape_errors():
    with pytest.raises(ValueError, match="unknown calibration 'bogus'"):
        calibrate("bogus", torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="one shape"):
        calibrate("conf", torch.zeros(2, 3), torch.zeros(2, 4))
