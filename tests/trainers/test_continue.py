"""A run cut short and continued from its checkpoint is the same run as one trained in one go."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from spaces import DistillerSpec, build_distiller
from tests.trainers._tiny import TinyNet, tiny_data
from trainers.callbacks import DivergenceGuard
from trainers.config import ExperimentConfig, ProxyConfig, TrainConfig
from trainers.loop import Trainer
from trainers.proxy import ProxyEvaluator


class DropNet(TinyNet):
    """TinyNet with dropout: its training draws from the global RNG at every step."""

    def __init__(self, width: int = 8) -> None:
        super().__init__(width)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(torch.relu(self.conv(x))), 1)))


def _trainer(cfg: TrainConfig, checkpoint: Path | None, eval_at: tuple[int, ...]) -> Trainer:
    torch.manual_seed(11)
    student, teacher = DropNet(), TinyNet(width=16).eval()
    # feature knowledge with a 1x1 conv aligner (8 -> 16 channels) and a dropout transform on both sides
    spec = DistillerSpec("feature", ("drop", "norm_hw", "no"), "l2", weight=1.0, tau=1.0)
    d = build_distiller(spec, (8, 8, 8), (16, 8, 8), generator=torch.Generator().manual_seed(0))
    tr = Trainer(
        student,
        tiny_data(200, 0),  # 6 steps per epoch of 32 (the last partial batch dropped)
        cfg,
        val_data=tiny_data(64, 1),
        distiller=d,
        teacher=teacher,
        knowledge="feature",
        eval_steps=4,
        checkpoint=checkpoint,
        checkpoint_key="run-a",
        eval_at=eval_at,
    )
    guard = DivergenceGuard(ratio=10.0)
    tr.add_callback("on_batch_end", guard.on_batch_end)
    tr.track_state("guard", guard)
    tr.guard = guard  # type: ignore[attr-defined]
    return tr


def _params(tr: Trainer) -> list[torch.Tensor]:
    return [t.detach().clone() for m in (tr.model, *tr.distillers) for t in m.state_dict().values()]


@pytest.mark.parametrize("augment", [False, True])
def test_a_run_continued_rung_by_rung_is_the_run_trained_in_one_go(tmp_path: Path, augment: bool) -> None:
    # 5 epochs x 6 steps = 30 steps; rungs stop at steps 7 and 16 (inside epochs 1 and 2) and at 30
    cfg = TrainConfig(epochs=5, batch_size=32, lr=0.05, warmup_epochs=1.0, amp=False, seed=3, augment=augment)
    stops = (7, 16)
    one = _trainer(cfg, None, stops)
    losses_one: list[float] = []
    one.add_callback("on_batch_end", lambda t: losses_one.append(t.state.loss))
    res_one = one.run()

    ckpt = tmp_path / "run.pt"
    losses_rungs: list[float] = []
    for max_steps in (*stops, None):
        tr = _trainer(dataclasses.replace(cfg, max_steps=max_steps), ckpt, stops)
        tr.add_callback("on_batch_end", lambda t: losses_rungs.append(t.state.loss))
        res = tr.run()
        assert ckpt.exists()  # written at the run's last step, inside an epoch too
    assert tr.resumed_from == 16 and res.steps == 30
    # the same steps with the same losses, the same curve (the rung boundaries included) and epochs
    assert len(losses_rungs) == len(losses_one) == 30
    assert losses_rungs == pytest.approx(losses_one, rel=1e-5, abs=1e-6)
    assert [s for s, _ in res.curve] == [4, 7, 8, 12, 16, 20, 24, 28, 30]
    assert res.curve == [(s, pytest.approx(a, abs=1e-6)) for s, a in res_one.curve]
    assert res.epochs == res_one.epochs == 5
    assert res.epoch_val_acc == pytest.approx(res_one.epoch_val_acc)
    # the same weights (student and aligner) at the end, and the divergence guard in the same state
    for a, b in zip(_params(tr), _params(one), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)
    assert tr.guard.state_dict()["avg"] == pytest.approx(one.guard.state_dict()["avg"], rel=1e-5)


def test_a_stop_inside_an_epoch_is_not_counted_as_an_epoch() -> None:
    cfg = TrainConfig(epochs=5, batch_size=32, lr=0.05, amp=False, max_steps=9)
    res = Trainer(TinyNet(), tiny_data(200, 0), cfg, val_data=tiny_data(64, 1)).run()
    assert res.steps == 9 and res.epochs == 1  # 6 steps per epoch: one whole epoch, then 3 steps


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, amp=False, max_steps=3)
    ckpt = tmp_path / "run.pt"
    Trainer(TinyNet(), tiny_data(200, 0), cfg, checkpoint=ckpt, checkpoint_key="a").run()
    with pytest.raises(ValueError, match="belongs to another run"):
        Trainer(TinyNet(), tiny_data(200, 0), cfg, checkpoint=ckpt, checkpoint_key="b").run()


EXP = ExperimentConfig(
    student_train=TrainConfig(epochs=6, batch_size=32, lr=0.05, amp=False, seed=0),
    proxy=ProxyConfig(fraction=0.05, evals=2, reject_batches=2),
)


def _evaluator() -> ProxyEvaluator:
    torch.manual_seed(0)
    return ProxyEvaluator.from_parts(
        EXP,
        train=tiny_data(256, 0),
        val=tiny_data(96, 1),
        teacher=TinyNet(16),
        input_shape=(1, 8, 8),
        num_classes=4,
        student_factory=lambda: DropNet(8),
    )


def test_a_verification_run_continued_over_rungs_matches_the_one_go_run(tmp_path: Path) -> None:
    # the evaluator's own path (assemble_run: checkpoint key without max_steps, the guard's state kept),
    # with a dropout transform in the distiller: 48 steps, rungs at 0.25 (12), 0.5 (24), 1.0 (48)
    ev = _evaluator()
    spec = DistillerSpec("logits", ("drop", "softmax_c", "no"), "kl", weight=1.0, tau=4.0)
    rungs = (0.25, 0.5, 1.0)
    one = ev.evaluate(spec, seed=5, fraction=1.0, rungs=rungs)
    ckpt = tmp_path / "job.pt"
    fits = [ev.evaluate(spec, seed=5, fraction=f, rungs=rungs, checkpoint=ckpt) for f in rungs]
    assert [f.resumed_from for f in fits] == [0, 12, 24] and [f.steps for f in fits] == [12, 24, 48]
    last = fits[-1]
    assert last.curve == [(s, pytest.approx(a, abs=1e-6)) for s, a in one.curve]
    assert [s for s, _ in one.curve] == [6, 12, 18, 24, 30, 36, 42, 48]  # every 12 // 2 steps + rungs
    assert last.accuracy == pytest.approx(one.accuracy, abs=1e-6)
    assert last.ce == pytest.approx(one.ce, rel=1e-5)
    assert last.cka == pytest.approx(one.cka, rel=1e-4, abs=1e-6)
    # today's single-rung verification keeps its validation cadence: proxy.evals times up to the stop
    single = ev.evaluate(spec, seed=5, fraction=0.25)
    assert [s for s, _ in single.curve] == [6, 12]


def test_a_checkpointed_run_is_keyed_on_what_it_is_not_where_it_stops(tmp_path: Path) -> None:
    from trainers.run import assemble_run

    ev = _evaluator()
    spec = DistillerSpec("logits", ("softmax_c", "no", "no"), "kl", weight=1.0, tau=4.0)
    a = assemble_run(EXP, ev.parts, spec, seed=1, max_steps=5, checkpoint=tmp_path / "a.pt")
    b = assemble_run(EXP, ev.parts, spec, seed=1, max_steps=40, checkpoint=tmp_path / "b.pt")
    c = assemble_run(EXP, ev.parts, spec, seed=2, max_steps=5, checkpoint=tmp_path / "c.pt")
    assert a.checkpoint_key == b.checkpoint_key != c.checkpoint_key
