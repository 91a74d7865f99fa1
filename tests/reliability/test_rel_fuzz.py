"""Property-based fuzzing over random valid specs and random input shapes: build, forward and backward either
give finite values, or end in the documented rejection (``ValueError`` at build time, or a ``Rejected``
reason from the trainers' loss-rejection check for non-finite values) - never another exception."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spaces import (
    CALIBRATIONS,
    DISTANCES,
    KNOWLEDGE,
    TEMPERATURES,
    TRANSFORMS,
    WEIGHTS,
    DistillerSpec,
    build_distiller,
)
from trainers import Rejected
from trainers.rejection import ProbeReport, RejectionRules, judge_probe

specs = st.builds(
    DistillerSpec,
    knowledge=st.sampled_from(KNOWLEDGE),
    transforms=st.tuples(*[st.sampled_from(TRANSFORMS.names())] * 3),
    distance=st.sampled_from(DISTANCES.names()),
    calibration=st.sampled_from(CALIBRATIONS.names()),
    weight=st.sampled_from(WEIGHTS),
    tau=st.sampled_from(TEMPERATURES),
)


@st.composite
def shapes(draw, knowledge: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Student and teacher knowledge shapes (without batch) for a knowledge kind."""
    if knowledge == "logits":
        k = draw(st.integers(2, 12))
        return (k,), (k,)
    if knowledge == "embedding":
        return (draw(st.integers(1, 16)),), (draw(st.integers(1, 16)),)
    hw = draw(st.integers(1, 5))
    t_w = draw(st.sampled_from([hw, hw + 1]))  # the aligner must match, or the build refuses
    return (draw(st.integers(1, 6)), hw, hw), (draw(st.integers(1, 6)), hw, t_w)


def _grad_norm(grads) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, data=st.data())
def test_random_specs_build_and_run_or_are_rejected_with_a_reason(spec, data) -> None:
    s_shape, t_shape = data.draw(shapes(spec.knowledge))
    n = data.draw(st.integers(1, 6))
    scale = data.draw(st.sampled_from([1e-3, 1.0, 30.0]))
    k = 5
    try:
        distiller = build_distiller(spec, s_shape, t_shape)
    except ValueError as err:  # documented: an invalid combination (e.g. hard on feature knowledge)
        assert str(err)
        return
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    f_s = (scale * torch.randn(n, *s_shape, generator=g)).requires_grad_()
    f_t = scale * torch.randn(n, *t_shape, generator=g)
    logits_s = torch.randn(n, s_shape[0] if spec.knowledge == "logits" else k, generator=g)
    logits_t = torch.randn(n, logits_s.shape[1], generator=g)
    labels = torch.randint(0, logits_s.shape[1], (n,), generator=g)
    if spec.knowledge == "logits":
        logits_s, logits_t = f_s, f_t
    loss, terms = distiller(f_s, f_t, logits_s=logits_s, logits_t=logits_t, labels=labels)
    assert loss.dim() == 0 and isinstance(terms, dict)
    params = [f_s, *[p for p in distiller.parameters() if p.requires_grad]]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    kd, kd_grad = float(loss.detach()), _grad_norm(grads)
    report = ProbeReport(ce=[1.0], kd=[kd], ce_grad=[1.0], kd_grad=[kd_grad])
    if math.isfinite(kd) and math.isfinite(kd_grad):
        return
    try:
        judge_probe(report, RejectionRules())
    except Rejected as rej:  # documented: the loss-rejection check names the reason
        assert rej.reason in ("nan", "inf") and rej.detail
    else:
        raise AssertionError(f"non-finite loss {kd} / gradient {kd_grad} of {spec} was not rejected")
