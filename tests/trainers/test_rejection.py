"""Loss rejection: planted NaN, exploding and collapsed distillers; accepted sane distillers; no side
effects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.trainers._tiny import ConstDistiller, LocalKD, NaNDistiller, TinyNet, tiny_data
from trainers.config import TrainConfig
from trainers.loop import Trainer
from trainers.rejection import ProbeReport, Rejected, RejectionRules, check_trainer, judge_probe, probe_loss

CFG = TrainConfig(epochs=1, batch_size=32, amp=False)


def _trainer(distiller: nn.Module, student: nn.Module | None = None) -> Trainer:
    torch.manual_seed(0)
    return Trainer(student or TinyNet(), tiny_data(128), CFG, distiller=distiller, teacher=TinyNet(16).eval())


@pytest.mark.parametrize(
    "distiller,reason",
    [(NaNDistiller(), "nan"), (LocalKD(weight=1e6), "explode"), (ConstDistiller(), "collapse")],
    ids=["nan", "explode", "collapse"],
)
def test_planted_bad_distillers_are_rejected_with_reason(distiller: nn.Module, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        check_trainer(_trainer(distiller), batches=2)
    assert info.value.reason == reason
    assert info.value.detail


def test_inf_loss_rejected_as_inf() -> None:
    class Inf(nn.Module):
        def forward(self, f_s, f_t, **_):
            loss = f_s.sum() * 0 + torch.tensor(float("inf"))
            return loss, {"kd": loss}

    with pytest.raises(Rejected) as info:
        check_trainer(_trainer(Inf()), batches=1)
    assert info.value.reason == "inf"


def test_sane_distiller_passes_and_leaves_student_unchanged() -> None:
    student = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 4)
    )
    tr = _trainer(LocalKD(), student)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = check_trainer(tr, batches=3)
    assert len(report.kd) == 3 and all(g > 0 for g in report.kd_grad)
    assert all(p.grad is None for p in student.parameters())
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics restored


def test_probe_gradient_norms_match_autograd() -> None:
    tr = _trainer(LocalKD())
    report = probe_loss(tr, 1)
    x, y, _ = next(tr.train_batches(0))
    tr.model.zero_grad()
    nn.functional.cross_entropy(tr.model(x), y).backward()
    ref = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in tr.model.parameters()))
    assert report.ce_grad[0] == pytest.approx(float(ref), rel=1e-6)


def test_judge_thresholds() -> None:
    ok = ProbeReport(ce=[2.0], kd=[150.0], ce_grad=[1.0], kd_grad=[50.0])
    judge_probe(ok, RejectionRules(explode_ratio=100.0))  # 150 < 100 * 2
    with pytest.raises(Rejected, match="distiller loss"):
        judge_probe(ok, RejectionRules(explode_ratio=50.0))
    with pytest.raises(Rejected, match="gradient norm"):
        judge_probe(ProbeReport(ce=[2.0], kd=[1.0], ce_grad=[1.0], kd_grad=[2e6]), RejectionRules())
    with pytest.raises(Rejected, match="gradient norm"):
        judge_probe(
            ProbeReport(ce=[2.0], kd=[1.0], ce_grad=[1e-3], kd_grad=[20.0]), RejectionRules(grad_ratio=1e4)
        )
    judge_probe(ProbeReport(ce=[2.0], kd=[1.0], ce_grad=[1.0], kd_grad=[500.0]), RejectionRules())
    with pytest.raises(Rejected) as info:
        judge_probe(
            ProbeReport(ce=[2.0, 2.0], kd=[1.0, 1.0], ce_grad=[1.0, 1.0], kd_grad=[0.0, 0.0]),
            RejectionRules(),
        )
    assert info.value.reason == "collapse"
    # one batch with a real gradient is enough to pass
    judge_probe(
        ProbeReport(ce=[2.0, 2.0], kd=[1.0, 1.0], ce_grad=[1.0, 1.0], kd_grad=[0.0, 0.5]), RejectionRules()
    )
