from __future__ import annotations

import numpy as np
import pytest
import torch
from spaces_reference import transform as ref_transform

from spaces import TRANSFORMS, Registry, Transform

EXPECTED = sorted(
    "no batchnorm min_max norm_hw norm_c norm_n softmax_hw softmax_c softmax_n logsoftmax_hw logsoftmax_c "
    "logsoftmax_n exp mish leaky_relu relu tanh sigmoid pow2 pow4 log sqrt scale multi_scale scale_r1 "
    "scale_r2 local_r1 local_r2 local_r4 batch channel drop satt natt catt mask bmm mm".split()
)
DETERMINISTIC = [n for n in EXPECTED if n not in ("mask", "drop")]
SHAPES = {"map": (3, 4, 5, 6), "vec": (3, 7), "logits": (4, 10)}


def _x(kind: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPES[kind], generator=g, dtype=torch.float64)
    return x * 5 if kind == "logits" else x


def test_registry_names_sorted_and_complete():
    assert list(TRANSFORMS) == EXPECTED == list(TRANSFORMS.names())


def test_documented_counts_are_the_registries() -> None:
    """README and docs/search_space.md quote the registry sizes; they must be the registries' own."""
    import re
    from pathlib import Path

    from spaces import CALIBRATIONS, DISTANCES, TEMPERATURES, WEIGHTS, space_size

    root = Path(__file__).resolve().parents[2]
    readme, doc = (root / "README.md").read_text(), (root / "docs" / "search_space.md").read_text()
    n_t, n_d, n_c = len(TRANSFORMS), len(DISTANCES), len(CALIBRATIONS)
    counts = f"with {n_t} transforms, {n_d} distances, {n_c} calibrations, {len(WEIGHTS)} loss weights"
    assert counts in readme
    assert f"and {len(TEMPERATURES)} temperatures: {space_size():,} candidates" in readme
    assert f"(`TRANSFORMS` {n_t}, `DISTANCES` {n_d}, `CALIBRATIONS` {n_c})" in doc
    assert f"(all {n_t} transforms each)" in doc
    assert f"x {n_t}^3 x {n_c} x {len(WEIGHTS)} x {len(TEMPERATURES)} = {space_size():,} candidates" in doc
    assert not re.search(r"\b38\b", (root / "spaces" / "_transforms.py").read_text())
    from spaces import distinct_chains

    for k in ("logits", "embedding", "feature"):  # the table of distinct candidates
        row = f"| {k} | {distinct_chains(k):,}"
        assert row in doc and f"({distinct_chains(k, 'kl'):,}) |" in doc.split(row, 1)[1].split("\n", 1)[0]
        assert f"| {space_size([k], distinct=True):,} |" in doc.split(row, 1)[1].split("\n", 1)[0]
    assert f"| all | | | {space_size(distinct=True):,} |" in doc


def test_registry_duplicate_and_unknown_raise():
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(ValueError, match=r"unknown thing 'b'.*\['a'\]"):
        reg.get_or_raise("b")


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_transform_values(name: str, kind: str):
    x_s, x_t = _x(kind, 0), _x(kind, 1)
    y_s, y_t = TRANSFORMS[name](x_s, x_t)
    for x, y in ((x_s, y_s), (x_t, y_t)):
        want = ref_transform(name, x.numpy())
        assert tuple(y.shape) == want.shape
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", EXPECTED)
def test_identity_on_vectors_iff_marked(name: str):
    op: Transform = TRANSFORMS[name]
    x = _x("vec")
    y, _ = op(x, x.clone(), training=False)
    assert torch.equal(y, x) == (op.is_identity(2) or op.paired)  # random ops: identity in eval mode


def _inputs(case: str, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    shape = SHAPES[kind]
    if case == "extreme":
        g = torch.Generator().manual_seed(3)
        signs = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
        return signs * 1e4, -signs * 1e4
    if case == "constant":
        return torch.full(shape, 0.5), torch.zeros(shape)
    return torch.randn((1, *shape[1:])), torch.randn((1, *shape[1:]))  # batch of one


@pytest.mark.parametrize("case", ["extreme", "constant", "batch1"])
@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("name", EXPECTED)
def test_transform_finite_values_and_gradients(name: str, kind: str, case: str):
    x_s, x_t = _inputs(case, kind)
    x_s.requires_grad_(True)
    y_s, y_t = TRANSFORMS[name](x_s, x_t, training=True, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(y_s).all() and torch.isfinite(y_t).all()
    weights = torch.linspace(-1, 1, y_s.numel()).view_as(y_s)
    (y_s * weights).sum().backward()
    assert x_s.grad is not None and torch.isfinite(x_s.grad).all()


@pytest.mark.parametrize("name", ["mask", "drop"])
def test_random_transforms_share_one_mask_and_are_off_in_eval(name: str):
    x_s, x_t = torch.rand(8, 4, 6, 6) + 1, torch.rand(8, 4, 6, 6) + 1  # strictly positive
    op = TRANSFORMS[name]
    y_s, y_t = op(x_s, x_t, training=True, generator=torch.Generator().manual_seed(1))
    kept_s, kept_t = y_s != 0, y_t != 0
    assert torch.equal(kept_s, kept_t)
    frac_dropped = 1 - kept_s.float().mean().item()
    if name == "mask":
        assert torch.equal(kept_s, kept_s[:, :1].expand_as(kept_s))  # whole positions, all channels
        assert 0.35 < frac_dropped < 0.65
        torch.testing.assert_close(y_s[kept_s], x_s[kept_s])
    else:
        assert 0.05 < frac_dropped < 0.15
        torch.testing.assert_close(y_s[kept_s], x_s[kept_s] / 0.9)
    # Same generator seed -> same mask; eval mode -> identity.
    y_s2, _ = op(x_s, x_t, training=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y_s, y_s2)
    e_s, e_t = op(x_s, x_t, training=False)
    assert torch.equal(e_s, x_s) and torch.equal(e_t, x_t)


def test_mask_is_identity_on_vectors_drop_is_not():
    x = torch.rand(6, 50) + 1
    assert torch.equal(TRANSFORMS["mask"](x, x)[0], x)
    assert not torch.equal(TRANSFORMS["drop"](x, x)[0], x)


def test_ranks_follow_the_documented_rule():
    for name in EXPECTED:
        op = TRANSFORMS[name]
        x = torch.randn(3, 4, 5, 6)
        y, _ = op(x, x.clone())
        assert y.dim() == op.out_rank(4)
        assert op.out_rank(2) == 2
    assert TRANSFORMS["batch"].out_rank(4) == 2 and TRANSFORMS["mm"].out_rank(4) == 2


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one shape"):
        TRANSFORMS["relu"](torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("name", EXPECTED)
def test_transform_values_do_not_depend_on_memory_layout(name: str):
    # The trainer runs convolutional students in channels_last (NHWC strides): every op must read the logical
    # tensor, not its memory order.
    x_s, x_t = _x("map", 0), _x("map", 1)
    nhwc = [x.contiguous(memory_format=torch.channels_last) for x in (x_s, x_t)]
    assert not nhwc[0].is_contiguous()
    want = TRANSFORMS[name](x_s, x_t, training=True, generator=torch.Generator().manual_seed(0))
    got = TRANSFORMS[name](*nhwc, training=True, generator=torch.Generator().manual_seed(0))
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-12)
