from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax
from spaces_reference import pearson_rows

from spaces import (
    CALIBRATIONS,
    DISTANCES,
    KNOWLEDGE,
    KNOWN_DISTILLERS,
    TEMPERATURES,
    TRANSFORMS,
    WEIGHTS,
    DistillerSpec,
    Layout,
    build_distiller,
    plan_chain,
)


def _logits(seed: int, n: int = 16, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * 3, torch.randn(
        n, k, generator=g, dtype=torch.float64
    ) * 3


def _hinton(zs: np.ndarray, zt: np.ndarray, tau: float) -> np.ndarray:
    """Per-sample tau^2 * KL(softmax(z_t/tau) || softmax(z_s/tau))."""
    ps, pt = softmax(zs / tau, axis=1), softmax(zt / tau, axis=1)
    return tau**2 * np.array([sum(pt[i] * np.log(pt[i] / ps[i])) for i in range(len(zs))])


def test_kd_equals_hinton():
    zs, zt = _logits(0)
    loss, terms = build_distiller(KNOWN_DISTILLERS["kd"], (10,), (10,))(zs, zt)
    assert loss.item() == pytest.approx(_hinton(zs.numpy(), zt.numpy(), 4.0).mean(), rel=1e-9)
    assert terms["kd"].item() == pytest.approx(loss.item()) and not terms["kd"].requires_grad


def test_dist_equals_dist_loss():
    zs, zt = _logits(1)
    tau, beta, gamma = 4.0, 2.0, 2.0  # the authors' CIFAR-100 setting == our W = 2, beta = gamma = 1
    ys, yt = softmax(zs.numpy() / tau, axis=1), softmax(zt.numpy() / tau, axis=1)
    inter = tau**2 * (1 - pearson_rows(ys, yt).mean())
    intra = tau**2 * (1 - pearson_rows(ys.T, yt.T).mean())
    loss, _ = build_distiller(KNOWN_DISTILLERS["dist"], (10,), (10,))(zs, zt)
    assert loss.item() == pytest.approx(beta * inter + gamma * intra, rel=1e-6)


def test_cwd_equals_channel_wise_distillation():
    g = torch.Generator().manual_seed(2)
    fs, ft = (
        torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64),
    )
    tau, n, c = 4.0, 3, 4
    s, t = fs.numpy().reshape(n, c, -1) / tau, ft.numpy().reshape(n, c, -1) / tau
    total = sum(
        sum(softmax(t[i, j]) * (log_softmax(t[i, j]) - log_softmax(s[i, j])))
        for i in range(n)
        for j in range(c)
    )
    want = 2.0 * tau**2 * total / (n * c)
    loss, _ = build_distiller(KNOWN_DISTILLERS["cwd"], (4, 5, 5), (4, 5, 5))(fs, ft)
    assert loss.item() == pytest.approx(want, rel=1e-9)


def test_wsld_is_focal_weighted_kd():
    zs, zt = _logits(3)
    y = torch.arange(16) % 10
    ce_s = -log_softmax(zs.numpy(), axis=1)[np.arange(16), y.numpy()]
    ce_t = -log_softmax(zt.numpy(), axis=1)[np.arange(16), y.numpy()]
    w = 1 - np.exp(-ce_s / (ce_t + 1e-7))
    w = (w + 1e-8) / (w.mean() + 1e-8)
    loss, _ = build_distiller(KNOWN_DISTILLERS["wsld"], (10,), (10,))(zs, zt, labels=y)
    assert loss.item() == pytest.approx(2.0 * (w * _hinton(zs.numpy(), zt.numpy(), 4.0)).mean(), rel=1e-6)


def test_at_fitnets_pkd_values():
    g = torch.Generator().manual_seed(4)
    fs, ft = (
        torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64),
    )
    s, t = fs.numpy(), ft.numpy()
    fit, _ = build_distiller(KNOWN_DISTILLERS["fitnets"], (3, 6, 6), (3, 6, 6))(fs, ft)
    assert fit.item() == pytest.approx(100 * ((s - t) ** 2).mean())

    def at_map(x):
        q = (x**2).reshape(4, 3, 36)
        return q / np.linalg.norm(q, axis=2, keepdims=True)

    at, _ = build_distiller(KNOWN_DISTILLERS["at"], (3, 6, 6), (3, 6, 6))(fs, ft)
    assert at.item() == pytest.approx(100 * ((at_map(s) - at_map(t)) ** 2).mean())

    def standardise(x):  # PKD: per channel over (N, H, W)
        m, v = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
        return (x - m) / np.sqrt(v + 1e-5)

    pkd, _ = build_distiller(KNOWN_DISTILLERS["pkd"], (3, 6, 6), (3, 6, 6))(fs, ft)
    assert pkd.item() == pytest.approx(2 * ((standardise(s) - standardise(t)) ** 2).mean())


def test_known_distillers_are_in_the_space():
    assert {"kd", "dist", "at", "fitnets", "pkd", "cwd", "wsld"} <= set(KNOWN_DISTILLERS)
    for spec in KNOWN_DISTILLERS.values():
        assert spec.weight in WEIGHTS and spec.tau in TEMPERATURES
        shape = (4, 5, 5) if spec.knowledge == "feature" else (10,)
        build_distiller(spec, shape, shape)


@pytest.mark.parametrize("name", ["kd", "dist", "wsld"])
def test_known_logit_distillers_finite_on_extreme_logits(name: str):
    zs = ((torch.randint(0, 2, (8, 10)).float() * 2 - 1) * 1e4).requires_grad_(True)
    zt = -zs.detach().roll(1, dims=0)
    loss, _ = build_distiller(KNOWN_DISTILLERS[name], (10,), (10,))(
        zs, zt, labels=torch.zeros(8, dtype=torch.long)
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()


def test_plan_chain_fuses_a_final_softmax_into_kl_and_hard():
    spec = DistillerSpec("logits", ("softmax_c", "no", "satt"), "kl")
    assert plan_chain(spec) == ([], Layout("logits", "c"))
    ops, layout = plan_chain(DistillerSpec("logits", ("softmax_c", "no", "no"), "l2"))
    assert [op.name for op in ops] == ["softmax_c"] and layout == Layout("probs", "c")
    ops, layout = plan_chain(DistillerSpec("feature", ("relu", "logsoftmax_hw", "no"), "kl"))
    assert [op.name for op in ops] == ["relu", "logsoftmax_hw"] and layout == Layout("logprobs", "hw")
    ops, layout = plan_chain(DistillerSpec("feature", ("softmax_hw", "batch", "satt"), "kl"))
    assert [op.name for op in ops] == ["softmax_hw", "batch"] and layout == Layout("logits", "c")


def test_hard_only_on_logits():
    build_distiller(DistillerSpec("logits", ("no", "no", "no"), "hard"), (10,), (10,))
    for knowledge, shape in (("embedding", (8,)), ("feature", (2, 3, 3))):
        with pytest.raises(ValueError, match="'hard' is only valid on 'logits' knowledge.*" + knowledge):
            build_distiller(DistillerSpec(knowledge, ("no", "no", "no"), "hard"), shape, shape)


def test_aligner_identity_linear_conv_resize():
    spec = DistillerSpec("feature", ("no", "no", "no"), "l2")
    assert isinstance(build_distiller(spec, (4, 5, 5), (4, 5, 5)).aligner, torch.nn.Identity)
    emb = build_distiller(DistillerSpec("embedding", ("no", "no", "no"), "l2"), (6,), (9,))
    assert isinstance(emb.aligner, torch.nn.Linear) and emb.aligner.weight.shape == (9, 6)

    conv = build_distiller(spec, (3, 5, 5), (8, 5, 5))
    fs, ft = torch.randn(2, 3, 5, 5), torch.randn(2, 8, 5, 5)
    w, b = conv.aligner[0].weight.detach()[:, :, 0, 0], conv.aligner[0].bias.detach()
    aligned = torch.einsum("oc,nchw->nohw", w, fs) + b[None, :, None, None]
    loss, _ = conv(fs, ft)
    assert loss.item() == pytest.approx(((aligned - ft) ** 2).mean().item(), rel=1e-5)

    shrink = build_distiller(spec, (3, 8, 8), (8, 4, 4))
    pooled = fs_big = torch.randn(2, 3, 8, 8)
    pooled = fs_big.reshape(2, 3, 4, 2, 4, 2).mean(dim=(3, 5))  # 2x2 average pooling, written by hand
    torch.testing.assert_close(shrink.aligner[0](fs_big), pooled)
    assert isinstance(shrink.aligner[1], torch.nn.Conv2d)
    grow = build_distiller(spec, (8, 3, 3), (8, 6, 6), bn=False)
    out = grow.aligner(torch.ones(2, 8, 3, 3))
    assert out.shape == (2, 8, 6, 6) and torch.allclose(out, torch.ones_like(out))  # constant stays constant
    with_bn = build_distiller(spec, (3, 5, 5), (8, 5, 5), bn=True)
    assert isinstance(with_bn.aligner[1], torch.nn.BatchNorm2d)


@pytest.mark.parametrize(
    ("knowledge", "s_shape", "t_shape"),
    [
        ("feature", (3, 8, 8), (6, 4, 4)),
        ("feature", (3, 4, 4), (6, 8, 8)),
        ("embedding", (5,), (7,)),
        ("logits", (10,), (12,)),
    ],
)
def test_aligner_gets_gradients_and_teacher_is_detached(knowledge, s_shape, t_shape):
    d = build_distiller(DistillerSpec(knowledge, ("no", "no", "no"), "l2"), s_shape, t_shape)
    params = list(d.parameters())
    assert params
    fs = torch.randn(4, *s_shape, requires_grad=True)
    ft = torch.randn(4, *t_shape, requires_grad=True)
    loss, _ = d(fs, ft)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert fs.grad is not None and ft.grad is None


def test_random_ops_share_masks_inside_the_distiller():
    d = build_distiller(DistillerSpec("feature", ("drop", "mask", "no"), "l2"), (3, 4, 4), (3, 4, 4))
    f = torch.rand(5, 3, 4, 4) + 1
    assert d(f, f.clone())[0].item() == 0.0  # same mask on both sides -> no spurious loss
    d_eval = build_distiller(
        DistillerSpec("feature", ("drop", "mask", "no"), "l2"), (3, 4, 4), (3, 4, 4)
    ).eval()
    ref = build_distiller(DistillerSpec("feature", ("no", "no", "no"), "l2"), (3, 4, 4), (3, 4, 4))
    g = torch.randn(5, 3, 4, 4)
    assert d_eval(f, g)[0].item() == pytest.approx(ref(f, g)[0].item())


def test_calibration_needs_logits_for_non_logit_knowledge():
    d = build_distiller(DistillerSpec("embedding", ("no", "no", "no"), "l2", "conf"), (4,), (4,))
    with pytest.raises(ValueError, match="needs logits_s and logits_t"):
        d(torch.randn(3, 4), torch.randn(3, 4))
    loss, _ = d(
        torch.randn(3, 4), torch.randn(3, 4), logits_s=torch.randn(3, 10), logits_t=torch.randn(3, 10)
    )
    assert torch.isfinite(loss)


def test_bad_shapes_raise():
    spec = DistillerSpec("feature", ("no", "no", "no"), "l2")
    with pytest.raises(ValueError, match=r"student_shape .*\(C, H, W\)"):
        build_distiller(spec, (4,), (4, 3, 3))
    d = build_distiller(spec, (4, 3, 3), (4, 3, 3))
    with pytest.raises(ValueError, match="f_s must have shape"):
        d(torch.zeros(2, 4, 3, 4), torch.zeros(2, 4, 3, 3))


def test_repr_shows_formula():
    d = build_distiller(KNOWN_DISTILLERS["kd"], (10,), (10,))
    assert "1 * kl(softmax_c(z_s/4), softmax_c(z_t/4)) * 16" in str(d)


def test_random_chains_build_and_run():
    """A seeded sample of the space: every spec builds and runs; chains without growth ops stay finite."""
    rng = random.Random(0)
    shapes = {"logits": ((10,), (10,)), "embedding": ((6,), (8,)), "feature": ((3, 6, 6), (5, 5, 5))}
    growth = {"exp", "pow2", "pow4"}
    for _ in range(150):
        knowledge = rng.choice(KNOWLEDGE)
        distance = rng.choice([d for d in DISTANCES if knowledge == "logits" or d != "hard"])
        spec = DistillerSpec(
            knowledge,
            tuple(rng.choice(list(TRANSFORMS)) for _ in range(3)),
            distance,
            rng.choice(list(CALIBRATIONS)),
            rng.choice(WEIGHTS),
            rng.choice(TEMPERATURES),
        )
        s_shape, t_shape = shapes[knowledge]
        d = build_distiller(spec, s_shape, t_shape)
        fs = torch.randn(6, *s_shape, requires_grad=True)
        loss, terms = d(
            fs,
            torch.randn(6, *t_shape),
            logits_s=torch.randn(6, 10),
            logits_t=torch.randn(6, 10),
            labels=torch.arange(6),
        )
        assert loss.dim() == 0 and set(terms) == {"kd"}
        loss.backward()
        if not growth & set(spec.transforms):
            assert torch.isfinite(loss) and torch.isfinite(fs.grad).all(), spec


@pytest.mark.parametrize(
    ("knowledge", "transforms", "t_shape", "expected"),
    [
        # the knowledge itself is the largest tensor: N * C * H * W
        ("feature", ("no", "no", "no"), (16, 7, 7), lambda n: n * 16 * 7 * 7),
        # local_r1 moves the C*H*W values into channels, bmm makes their (CHW x CHW) Gram matrix per sample
        ("feature", ("local_r1", "no", "bmm"), (16, 7, 7), lambda n: n * (16 * 7 * 7) ** 2),
        # bmm alone: (C x C) per sample, smaller than the map here
        ("feature", ("bmm", "no", "no"), (16, 7, 7), lambda n: max(n * 16 * 16, n * 16 * 49)),
        # mm: the (N x N) batch similarity, larger than (N x K) once N > K
        ("logits", ("mm", "no", "no"), (10,), lambda n: max(n * 10, n * n)),
    ],
)
def test_peak_elements_of_the_chain(knowledge, transforms, t_shape, expected) -> None:
    spec = DistillerSpec(knowledge, transforms, "l2", "no", 1.0, 1.0)
    s_shape = (8, *t_shape[1:]) if knowledge == "feature" else t_shape
    d = build_distiller(spec, s_shape, t_shape)
    for n in (2, 128):
        assert d.peak_elements(n) == expected(n)
