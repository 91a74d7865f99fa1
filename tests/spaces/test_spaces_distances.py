from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from spaces_reference import pearson_rows

from spaces import DISTANCES, Layout

EXPECTED = sorted(["smooth_l1", "l1", "l2", "kl", "hard", "cosine", "pearson", "correlation"])
SHAPES = {"map": (4, 3, 5, 6), "vec": (5, 7)}


def _pair(kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[kind]
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(
        shape, generator=g, dtype=torch.float64
    )


def test_registry_names():
    assert list(DISTANCES) == EXPECTED


def _ref_elementwise(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    a, b = a.reshape(n, -1), b.reshape(n, -1)
    d = a - b
    if name == "l1":
        return np.abs(d).mean(axis=1)
    if name == "l2":
        return (d**2).mean(axis=1)
    if name == "smooth_l1":
        return np.where(np.abs(d) < 1, 0.5 * d**2, np.abs(d) - 0.5).mean(axis=1)
    if name == "cosine":
        return 1 - np.array([a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i]) for i in range(n)])
    if name == "pearson":  # DIST: 1 - rho per sample, plus the mean over columns of 1 - rho across the batch
        return (1 - pearson_rows(a, b)) + (1 - pearson_rows(a.T, b.T)).mean()
    if name == "correlation":
        za = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
        zb = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
        return 1 - (za * zb).mean(axis=1)
    raise KeyError(name)


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("name", ["l1", "l2", "smooth_l1", "cosine", "pearson", "correlation"])
def test_elementwise_distance_values(name: str, kind: str):
    a, b = _pair(kind)
    got = DISTANCES[name](a, b, Layout())
    assert got.shape == (a.shape[0],)
    np.testing.assert_allclose(
        got.numpy(), _ref_elementwise(name, a.numpy(), b.numpy()), rtol=1e-6, atol=1e-9
    )


def _ref_kl_hard(name: str, a: np.ndarray, b: np.ndarray, mode: str, axis: str) -> np.ndarray:
    """Loop over the individual distributions; return per-sample values as documented."""
    n = a.shape[0]
    if axis == "hw":
        a, b = a.reshape(n, a.shape[1], -1), b.reshape(n, b.shape[1], -1)
    ax = {"c": 1, "hw": 2, "n": 0}[axis]
    a, b = np.moveaxis(a, ax, -1), np.moveaxis(b, ax, -1)
    lead = a.shape[:-1]
    per_dist = np.zeros(lead)
    for idx in np.ndindex(*lead):
        s, t = a[idx], b[idx]
        if mode == "logits":
            ls, lt = log_softmax(s), log_softmax(t)
        elif mode == "probs":
            ls, lt = np.log(np.maximum(s, 1e-12)), np.log(np.maximum(t, 1e-12))
        else:
            ls, lt = s, t
        if name == "kl":
            per_dist[idx] = sum(np.exp(lt[k]) * (lt[k] - ls[k]) for k in range(len(s)))
        else:
            per_dist[idx] = -ls[int(np.argmax(lt))]
    if axis == "n":  # per_dist indexed by the non-batch positions; sample n gets N * its mean summand
        out = np.zeros(n)
        for i in range(n):
            s, t = a[..., i], b[..., i]
            for idx in np.ndindex(*s.shape):
                full_s, full_t = a[idx], b[idx]
                if mode == "logits":
                    ls, lt = log_softmax(full_s), log_softmax(full_t)
                elif mode == "probs":
                    ls, lt = np.log(np.maximum(full_s, 1e-12)), np.log(np.maximum(full_t, 1e-12))
                else:
                    ls, lt = full_s, full_t
                if name == "kl":
                    out[i] += np.exp(lt[i]) * (lt[i] - ls[i])
                else:
                    out[i] += -ls[i] * (int(np.argmax(lt)) == i)
            out[i] = n * out[i] / s.size
        return out
    return per_dist.reshape(n, -1).mean(axis=1)


LAYOUTS = [
    ("vec", "logits", "c"), ("vec", "logprobs", "c"), ("vec", "probs", "c"), ("vec", "logits", "n"),
    ("map", "logits", "c"), ("map", "logits", "hw"), ("map", "logprobs", "hw"), ("map", "logits", "n"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "mode", "axis"), LAYOUTS)
@pytest.mark.parametrize("name", ["kl", "hard"])
def test_kl_and_hard_values(name: str, kind: str, mode: str, axis: str):
    a, b = _pair(kind, seed=2)
    if mode != "logits":  # turn the inputs into (log-)distributions along the axis first
        dims = {"c": (1,), "hw": (2, 3), "n": (0,)}[axis]
        a, b = (torch.from_numpy(log_softmax(v.numpy(), axis=dims)) for v in (a, b))
        if mode == "probs":
            a, b = a.exp(), b.exp()
    got = DISTANCES[name](a, b, Layout(mode, axis))
    want = _ref_kl_hard(name, a.numpy(), b.numpy(), mode, axis)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-9)


def test_kl_is_zero_for_equal_inputs_and_positive_otherwise():
    a, b = _pair("vec")
    assert torch.allclose(DISTANCES["kl"](a, a, Layout()), torch.zeros(a.shape[0], dtype=a.dtype))
    assert (DISTANCES["kl"](a, b, Layout()) > 0).all()


def _extreme(kind: str, case: str) -> tuple[torch.Tensor, torch.Tensor]:
    shape = SHAPES[kind]
    if case == "extreme":
        g = torch.Generator().manual_seed(5)
        signs = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
        return signs * 1e4, -signs.roll(1, dims=0) * 1e4
    if case == "constant":
        return torch.full(shape, 0.25), torch.full(shape, 0.25)
    if case == "zeros":
        return torch.zeros(shape), torch.zeros(shape)
    return torch.randn((1, *shape[1:])), torch.randn((1, *shape[1:]))


DISTANCE_LAYOUTS = [(name, Layout()) for name in EXPECTED] + [
    (name, layout)
    for name in ("hard", "kl")
    for layout in (Layout("logits", "n"), Layout("logprobs", "c"), Layout("probs", "c"))
]


@pytest.mark.parametrize("case", ["extreme", "constant", "zeros", "batch1"])
@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize(("name", "layout"), DISTANCE_LAYOUTS)
def test_distance_finite_values_and_gradients(name: str, layout: Layout, kind: str, case: str):
    a, b = _extreme(kind, case)
    if layout.mode == "logprobs":
        a, b = torch.log_softmax(a, dim=1), torch.log_softmax(b, dim=1)
    elif layout.mode == "probs":
        a, b = torch.softmax(a, dim=1), torch.softmax(b, dim=1)
    a = a.detach().requires_grad_(True)
    out = DISTANCES[name](a, b, layout)
    assert out.shape == (a.shape[0],)
    assert torch.isfinite(out).all(), out
    out.mean().backward()
    assert torch.isfinite(a.grad).all()


def test_bad_layout_raises():
    with pytest.raises(ValueError, match="mode"):
        Layout("softmax", "c")
    with pytest.raises(ValueError, match="axis"):
        Layout("logits", "h")


@pytest.mark.parametrize(("name", "layout"), DISTANCE_LAYOUTS)
def test_distance_values_do_not_depend_on_memory_layout(name: str, layout: Layout):
    a, b = _pair("map", 3)  # channels_last feature maps, as the trainer's convolutional students give
    want = DISTANCES[name](a, b, layout)
    got = DISTANCES[name](*(t.contiguous(memory_format=torch.channels_last) for t in (a, b)), layout)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-12)
