"""Independent NumPy/SciPy reference formulas for the spaces tests.

Written from the definitions, loop-based where the library code is vectorised.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit, log_softmax, softmax


def _adaptive_max(x: np.ndarray, g: int) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.zeros((n, c, g, g))
    for i in range(g):
        h0, h1 = (i * h) // g, math.ceil((i + 1) * h / g)
        for j in range(g):
            w0, w1 = (j * w) // g, math.ceil((j + 1) * w / g)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].max(axis=(2, 3))
    return out


def _local(x: np.ndarray, r: int) -> np.ndarray:
    n, c, h, w = x.shape
    ph, pw = -(-h // r), -(-w // r)
    xp = np.zeros((n, c, ph * r, pw * r))
    xp[:, :, :h, :w] = x
    out = np.zeros((n, c * ph * pw, r, r))
    for ch in range(c):
        for i in range(ph):
            for j in range(pw):
                for a in range(r):
                    for b in range(r):
                        out[:, ch * ph * pw + i * pw + j, a, b] = xp[:, ch, a * ph + i, b * pw + j]
    return out


def _normalize(x: np.ndarray, axis) -> np.ndarray:
    norm = np.sqrt((x**2).sum(axis=axis, keepdims=True))
    return x / np.maximum(norm, 1e-6)


def transform(name: str, x: np.ndarray) -> np.ndarray:
    """Reference output of transform ``name`` on a float64 array (2-D or 4-D)."""
    is_map = x.ndim == 4
    spatial = (2, 3)
    if name == "no":
        return x
    if name == "batchnorm":
        axes = (0, 2, 3) if is_map else (0,)
        return (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
    if name == "min_max":
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = (x[i] - x[i].min()) / (x[i].max() - x[i].min() + 1e-8)
        return out
    if name in ("norm_c", "norm_n"):
        return _normalize(x, 1 if name == "norm_c" else 0)
    for kind, fn in (("softmax", softmax), ("logsoftmax", log_softmax)):
        if name == f"{kind}_c":
            return fn(x, axis=1)
        if name == f"{kind}_n":
            return fn(x, axis=0)
    elementwise = {
        "exp": lambda v: np.exp(np.minimum(v, 20.0)),
        "mish": lambda v: v * np.tanh(np.logaddexp(0.0, v)),
        "leaky_relu": lambda v: np.where(v > 0, v, 0.01 * v),
        "relu": lambda v: np.maximum(v, 0.0),
        "tanh": np.tanh,
        "sigmoid": expit,
        "pow2": lambda v: v**2,
        "pow4": lambda v: v**4,
        "log": lambda v: np.sign(v) * np.log(1.0 + np.abs(v)),
        "sqrt": lambda v: np.sign(v) * (np.sqrt(np.abs(v) + 1e-6) - 1e-3),
    }
    if name in elementwise:
        return elementwise[name](x)
    if name == "mm":
        flat = x.reshape(x.shape[0], -1)
        return np.einsum("im,jm->ij", flat, flat) / flat.shape[1]
    if name == "catt":
        g = np.abs(x).mean(axis=spatial) if is_map else np.abs(x)
        a = g.shape[1] * softmax(g / 0.5, axis=1)
        return x * (np.sqrt(a)[:, :, None, None] if is_map else np.sqrt(a))
    if name == "natt":
        g = np.abs(x).reshape(x.shape[0], -1).mean(axis=1)
        a = x.shape[0] * softmax(g / 0.5)
        return x * np.sqrt(a).reshape((-1,) + (1,) * (x.ndim - 1))
    # Ops that need a map: identity on vectors.
    if not is_map:
        return x
    n, c, h, w = x.shape
    if name == "norm_hw":
        return _normalize(x.reshape(n, c, h * w), 2).reshape(x.shape)
    if name == "softmax_hw":
        return softmax(x, axis=spatial)
    if name == "logsoftmax_hw":
        return log_softmax(x, axis=spatial)
    if name == "scale":
        ho, wo = -(-h // 2), -(-w // 2)
        out = np.zeros((n, c, ho, wo))
        for i in range(ho):
            for j in range(wo):
                out[:, :, i, j] = x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(2, 3))
        return out
    if name == "scale_r1":
        return x.max(axis=spatial, keepdims=True)
    if name == "scale_r2":
        return _adaptive_max(x, 2)
    if name == "multi_scale":
        parts = [_adaptive_max(x, g).reshape(n, c, g * g) for g in (1, 2, 4)]
        return np.concatenate(parts, axis=2)[:, :, None, :]
    if name.startswith("local_r"):
        return _local(x, int(name[len("local_r") :]))
    if name == "batch":
        return x.reshape(n, c * h * w)
    if name == "channel":
        return x.reshape(n, c, 1, h * w)
    if name == "satt":
        g = np.abs(x).mean(axis=1)  # (N, H, W)
        a = h * w * softmax(g / 0.5, axis=(1, 2))
        return x * np.sqrt(a)[:, None]
    if name == "bmm":
        f = x.reshape(n, c, h * w)
        return np.einsum("ncl,ndl->ncd", f, f)[:, :, None, :] / (h * w)
    raise KeyError(name)


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.corrcoef row by row (population Pearson correlation of each row pair)."""
    return np.array([np.corrcoef(a[i], b[i])[0, 1] for i in range(a.shape[0])])
