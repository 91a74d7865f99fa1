"""The one training loop: learning, callbacks, schedule, seeding, several teachers."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
from torch.utils.data import Subset

from tests.trainers._tiny import LocalKD, TinyNet, tiny_data
from trainers.callbacks import DivergenceGuard, ProgressBar, attach_callbacks
from trainers.config import TrainConfig
from trainers.data import iterate_batches, tensor_view
from trainers.loop import StopTraining, Trainer, lr_factor
from trainers.metrics import evaluate_split, split_predictions
from trainers.rejection import Rejected


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=32, lr=0.05, warmup_epochs=0.5, eval_every=1.0, amp=False)
    base.update(kw)
    return TrainConfig(**base)


def test_loop_learns_and_records_curve() -> None:
    data, val = tiny_data(256, 0), tiny_data(128, 1)
    torch.manual_seed(0)
    tr = Trainer(TinyNet(), data, _cfg(), val_data=val)
    events: list[str] = []
    for e in ("on_batch_end", "on_eval", "on_epoch_end", "on_train_end"):
        tr.add_callback(e, lambda t, e=e: events.append(e))
    res = tr.run()
    assert res.steps == 3 * 8 and res.epochs == 3
    assert [s for s, _ in res.curve] == [8, 16, 24]
    assert res.epoch_val_acc == [a for _, a in res.curve]
    assert res.val_acc > 0.9  # separable data
    assert events.count("on_batch_end") == 24 and events.count("on_eval") == 3
    assert events.count("on_epoch_end") == 3 and events[-1] == "on_train_end"
    assert set(res.terms) == {"ce"}


def test_seeded_run_is_bitwise_reproducible_with_distiller() -> None:
    data = tiny_data(160, 0)

    def run() -> list[float]:
        torch.manual_seed(3)
        student, teacher = TinyNet(), TinyNet(width=16)
        tr = Trainer(student, data, _cfg(epochs=2, seed=5), distiller=LocalKD(), teacher=teacher.eval())
        losses: list[float] = []
        tr.add_callback("on_batch_end", lambda t: losses.append(t.state.loss))
        tr.run()
        return losses

    a, b = run(), run()
    assert len(a) == 10 and a == b  # exact equality, not approx
    assert all(math.isfinite(v) for v in a)


def test_distiller_loss_is_added_and_several_teachers_sum() -> None:
    data = tiny_data(64, 0)
    torch.manual_seed(0)
    student, t1, t2 = TinyNet(), TinyNet(16), TinyNet(12)
    tr = Trainer(student, data, _cfg(epochs=1), distiller=[LocalKD(2.0), LocalKD(4.0)], teacher=[t1, t2])
    batch = next(tr.train_batches(0))
    ce, kd, terms = tr.batch_losses(batch)
    x, y, _ = batch
    ref_ce = torch.nn.functional.cross_entropy(student(x), y)
    ref_kd = LocalKD(2.0)(student(x), t1(x))[0] + LocalKD(4.0)(student(x), t2(x))[0]
    assert float(ce.detach()) == pytest.approx(float(ref_ce.detach()), rel=1e-6)
    assert float(kd.detach()) == pytest.approx(float(ref_kd.detach()), rel=1e-5)
    assert set(terms) == {"ce", "t0.kd", "t1.kd"}


def test_distiller_parameters_are_optimised() -> None:
    class Aligned(LocalKD):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, f_s, f_t, **kw):
            return super().forward(self.proj(f_s), f_t, **kw)

    torch.manual_seed(0)
    d = Aligned()
    before = d.proj.weight.detach().clone()
    Trainer(TinyNet(), tiny_data(64), _cfg(epochs=1), distiller=d, teacher=TinyNet(16)).run()
    assert not torch.equal(before, d.proj.weight)


def test_lr_schedule_warmup_cosine_multistep() -> None:
    cfg = _cfg(epochs=10, warmup_epochs=1.0, schedule="cosine")
    total = 100
    assert lr_factor(0, total, cfg) == pytest.approx(1 / 10)
    assert lr_factor(9, total, cfg) == pytest.approx(1.0)
    assert lr_factor(10, total, cfg) == pytest.approx(1.0)
    assert lr_factor(55, total, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    ms = _cfg(epochs=10, warmup_epochs=0.0, schedule="multistep", milestones=(5, 8), gamma=0.1)
    assert [lr_factor(s, 100, ms) for s in (0, 49, 50, 79, 80, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    assert lr_factor(7, 10, _cfg(schedule="constant", warmup_epochs=0.0)) == 1.0


def test_trainer_applies_lr_and_max_steps() -> None:
    # 256 items / batch 32 = 8 steps per epoch; 10 epochs = 80 steps; warm-up 1 epoch = 8 steps.
    tr = Trainer(TinyNet(), tiny_data(256), _cfg(epochs=10, max_steps=7, warmup_epochs=1.0))
    lrs: list[float] = []
    tr.add_callback("on_batch_end", lambda t: lrs.append(t.state.lr))
    res = tr.run()
    assert res.steps == 7 and tr.state.total_steps == 7
    # a run cut by max_steps is the full schedule's prefix: still warming up, (s + 1) / 8 of the peak
    assert lrs == pytest.approx([0.05 * (s + 1) / 8 for s in range(7)])


def test_run_cut_short_is_the_full_runs_prefix() -> None:
    cfg = _cfg(epochs=4, warmup_epochs=0.5, schedule="cosine")
    full, short = [], []
    tr_full = Trainer(TinyNet(), tiny_data(256), cfg)
    tr_full.add_callback("on_batch_end", lambda t: full.append((t.state.lr, t.state.loss)))
    tr_full.run()
    tr_short = Trainer(TinyNet(), tiny_data(256), dataclasses.replace(cfg, max_steps=5))
    tr_short.add_callback("on_batch_end", lambda t: short.append((t.state.lr, t.state.loss)))
    tr_short.run()
    assert len(full) == 32 and len(short) == 5
    # same learning rate and, with the same seed and data, the same losses at every step it runs
    assert [v for pair in short for v in pair] == pytest.approx([v for pair in full[:5] for v in pair])
    # by hand: warm-up of 0.5 epoch = 4 steps, then cosine over the remaining 28 steps to 0
    expected = [(s + 1) / 4 if s < 4 else 0.5 * (1 + math.cos(math.pi * (s - 4) / 28)) for s in range(32)]
    assert [lr for lr, _ in full] == pytest.approx([0.05 * f for f in expected])


def test_subset_run_follows_the_full_schedule() -> None:
    # a proxy on 64 of 256 items: 2 steps per epoch of its own, but the schedule of 8 steps per epoch
    cfg = _cfg(epochs=4, warmup_epochs=1.0, max_steps=6)
    tr = Trainer(TinyNet(), tiny_data(64), cfg, schedule_steps_per_epoch=8)
    lrs: list[float] = []
    tr.add_callback("on_batch_end", lambda t: lrs.append(t.state.lr))
    tr.run()
    assert tr.schedule_steps == 32 and tr.total_steps == 6
    assert lrs == pytest.approx([0.05 * (s + 1) / 8 for s in range(6)])


def test_augment_batch_crops_and_flips_like_a_reference() -> None:
    from trainers.data import augment_batch

    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    gen = torch.Generator().manual_seed(3)
    out = augment_batch(x, gen)
    # the same draws, replayed: per image a top/left offset in [0, 2p] and a flip, p = 8 // 8 = 1
    ref_gen = torch.Generator().manual_seed(3)
    top = torch.randint(0, 3, (2,), generator=ref_gen)
    left = torch.randint(0, 3, (2,), generator=ref_gen)
    flip = torch.rand(2, generator=ref_gen) < 0.5
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        crop = padded[i, :, top[i] : top[i] + 8, left[i] : left[i] + 8]
        if flip[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop)


def test_augment_is_a_run_property() -> None:
    seen: list[torch.Tensor] = []

    class Spy(TinyNet):
        def forward(self, x):  # noqa: ANN001, ANN201
            seen.append(x.detach().clone())
            return super().forward(x)

    data = tiny_data(64)
    Trainer(Spy(), data, _cfg(epochs=1, augment=True, max_steps=1)).run()
    Trainer(Spy(), data, _cfg(epochs=1, augment=False, max_steps=1)).run()
    assert seen[0].shape == seen[1].shape and not torch.equal(seen[0], seen[1])


def test_early_stopping_callback_rejects_at_eval() -> None:
    tr = Trainer(TinyNet(), tiny_data(128), _cfg(epochs=5, eval_every=0.5), val_data=tiny_data(64, 1))

    def stop_at_step_4(t: Trainer) -> None:
        if t.state.step >= 4:
            raise Rejected("early_stop", f"step {t.state.step}")

    attach_callbacks(tr, {"on_eval": [stop_at_step_4]})
    with pytest.raises(Rejected) as info:
        tr.run()
    assert info.value.reason == "early_stop"
    assert tr.state.step == 4 and len(tr.state.curve) == 2


def test_stop_training_ends_run_normally() -> None:
    tr = Trainer(TinyNet(), tiny_data(128), _cfg(epochs=5))

    def stop(t: Trainer) -> None:
        if t.state.step == 3:
            raise StopTraining

    tr.add_callback("on_batch_end", stop)
    res = tr.run()
    assert res.stopped and res.steps == 3


def test_divergence_guard_detects_rising_loss_and_nan() -> None:
    tr = Trainer(TinyNet(), tiny_data(256), _cfg(epochs=20, lr=50.0, warmup_epochs=0.0, optimizer="sgd"))
    attach_callbacks(tr, [DivergenceGuard(ratio=3.0, warmup=2)])
    with pytest.raises(Rejected) as info:
        tr.run()
    assert info.value.reason in {"diverge", "nan", "inf"}
    guard = DivergenceGuard(ratio=3.0, warmup=1)

    class Fake:
        class state:  # noqa: N801
            loss, step = 1.0, 1

    guard.on_batch_end(Fake)
    Fake.state.loss = float("nan")
    with pytest.raises(Rejected, match="NaN") as info:
        guard.on_batch_end(Fake)
    assert info.value.reason == "nan"
    Fake.state.loss = 1.0
    for _ in range(5):
        guard.on_batch_end(Fake)  # steady loss never diverges
    Fake.state.loss = float("inf")
    with pytest.raises(Rejected) as info:
        guard.on_batch_end(Fake)
    assert info.value.reason == "inf"


def test_bad_arguments_raise_clear_errors() -> None:
    data = tiny_data(32)
    with pytest.raises(ValueError, match="unknown event 'on_step'"):
        Trainer(TinyNet(), data, _cfg()).add_callback("on_step", print)
    with pytest.raises(ValueError, match="unknown knowledge kind 'logit'"):
        Trainer(TinyNet(), data, _cfg(), distiller=LocalKD(), teacher=TinyNet(), knowledge="logit")
    with pytest.raises(ValueError, match="1 teachers for 2 distillers"):
        Trainer(TinyNet(), data, _cfg(), distiller=[LocalKD(), LocalKD()], teacher=TinyNet())
    with pytest.raises(ValueError, match="unknown rejection reason 'oops'"):
        Rejected("oops")


def test_fast_path_and_dataloader_path_give_same_batches() -> None:
    data = tiny_data(50)
    sub = Subset(data, list(range(10, 40)))
    x, y, idx = tensor_view(sub)
    assert torch.equal(idx, torch.arange(10, 40))

    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 30

        def __getitem__(self, i: int):
            return data[10 + i]

    fast = list(iterate_batches(sub, 8))
    slow = list(iterate_batches(Plain(), 8))
    assert len(fast) == len(slow) == 4
    for (a, b, c), (d, e, f) in zip(fast, slow):
        assert torch.equal(a, d) and torch.equal(b, e) and torch.equal(c, f)
    # a DataLoader-backed training run works too
    res = Trainer(TinyNet(), Plain(), _cfg(epochs=1, batch_size=8)).run()
    assert res.steps == 3


def test_progress_prints_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()  # not a terminal: no carriage returns, one line per tenth and per validation
    tr = Trainer(TinyNet(), tiny_data(128), _cfg(epochs=5, eval_every=1.0), val_data=tiny_data(64, 1))
    attach_callbacks(tr, [ProgressBar(desc="teacher", stream=stream, lines=5)])
    res = tr.run()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    evals = [ln for ln in lines if "val_acc" in ln]
    assert len(evals) == len(res.curve) == 5
    steps = [int(ln.split("step ")[1].split("/")[0]) for ln in lines if "val_acc" not in ln]
    every = -(-res.steps // 5)
    assert steps == [s for s in range(every, res.steps, every)]
    assert all(ln.startswith("teacher: step ") for ln in lines)
    assert lines[-1].startswith(f"teacher: step {res.steps}/{res.steps} (100%)")


def test_validation_is_the_shared_evaluation_with_values_from_the_formula() -> None:
    val = tiny_data(64, 1)
    tr = Trainer(TinyNet(), tiny_data(128), _cfg(epochs=1), val_data=val)
    tr.run()
    acc, ce = tr.validate()
    x, y, _ = tensor_view(val)
    with torch.no_grad():
        tr.model.eval()
        logits = tr.model(x)  # (N, K)
    expected_ce = float(-(logits.log_softmax(1)[torch.arange(len(y)), y]).mean())
    expected_acc = float((logits.argmax(1) == y).float().mean())
    assert acc == pytest.approx(expected_acc) and ce == pytest.approx(expected_ce, rel=1e-5)
    m = evaluate_split(tr.model, val, batch_size=7)  # the same function, any batch size
    assert (m["accuracy"], m["ce"]) == (pytest.approx(acc), pytest.approx(ce, rel=1e-5))
    assert split_predictions(tr.model, val) == logits.argmax(1).tolist()


@pytest.mark.parametrize("distiller", ["kd", "at", "fitnets"])
def test_convolutional_students_train_in_channels_last_with_the_same_values(distiller: str) -> None:
    # Memory layout only: a run in NHWC follows the NCHW run's losses step by step (up to float rounding),
    # with feature knowledge (and its 1x1 conv aligner for fitnets) as well as logits.
    from spaces import KNOWN_DISTILLERS, build_distiller

    spec = KNOWN_DISTILLERS[distiller]
    data = tiny_data(128, 0)
    shapes = {"logits": ((4,), (4,)), "feature": ((8, 8, 8), (16, 8, 8))}[spec.knowledge]

    def run(nhwc: bool) -> list[float]:
        torch.manual_seed(3)
        student, teacher = TinyNet(), TinyNet(width=16).eval()
        d = build_distiller(spec, *shapes, generator=torch.Generator().manual_seed(0))
        cfg = _cfg(epochs=2, seed=5)
        tr = Trainer(student, data, cfg, distiller=d, teacher=teacher, knowledge=spec.knowledge)
        assert tr.channels_last  # a model with a Conv2d
        if not nhwc:
            tr.channels_last = False
            tr.model.to(memory_format=torch.contiguous_format)
        assert student.conv.weight.stride() == ((9, 1, 3, 1) if nhwc else (9, 9, 3, 1))  # (8, 1, 3, 3)
        losses: list[float] = []
        tr.add_callback("on_batch_end", lambda t: losses.append(t.state.loss))
        tr.run()
        return losses

    nhwc, nchw = run(True), run(False)
    assert len(nhwc) == 8 and all(math.isfinite(v) for v in nhwc)
    assert nhwc == pytest.approx(nchw, rel=1e-4)


def test_models_without_convolutions_keep_their_layout() -> None:
    from trainers.models.small import MLP

    tr = Trainer(MLP(4, 1, image_size=8), tiny_data(64), _cfg(epochs=1))
    assert not tr.channels_last
