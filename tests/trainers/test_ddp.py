"""Many processes follow the single-process schedule (gloo on CPU); checkpoints resume a run exactly."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp
import torch.nn.functional as F
from torch import nn

from tests.trainers._tiny import TinyNet, tiny_data
from trainers.config import TrainConfig
from trainers.knowledge import FrozenTeacher
from trainers.loop import StopTraining, Trainer

CFG = TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.5, amp=False, eval_every=1.0)


class AlignedMSE(nn.Module):
    """MSE between a linear map of the student's embedding and the teacher's: a distiller with parameters."""

    def __init__(self, d_s: int, d_t: int) -> None:
        super().__init__()
        self.align = nn.Linear(d_s, d_t)

    def forward(self, f_s, f_t, **_):
        loss = F.mse_loss(self.align(f_s), f_t)
        return loss, {"mse": loss}


def _parts(seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    teacher = FrozenTeacher(TinyNet(width=6))
    student = TinyNet(width=8)
    distiller = AlignedMSE(8 * 16, 6 * 16)
    return teacher, student, distiller


def _trainer(data, checkpoint=None, key="k") -> Trainer:
    teacher, student, distiller = _parts()
    return Trainer(
        student,
        data,
        CFG,
        val_data=tiny_data(64, seed=1),
        distiller=distiller,
        teacher=teacher,
        knowledge="embedding",
        checkpoint=checkpoint,
        checkpoint_key=key,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str, n: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = _trainer(tiny_data(n))
        result = trainer.run()
        state = {f"student.{k}": v for k, v in trainer.model.state_dict().items()}
        state.update({f"aligner.{k}": v for k, v in trainer.distillers[0].state_dict().items()})
        torch.save(
            {"state": state, "loss": trainer.state.loss, "val_acc": result.val_acc, "steps": result.steps},
            f"{out}.{rank}",
        )
    finally:
        dist.destroy_process_group()


def test_two_processes_follow_the_single_process_schedule(tmp_path) -> None:
    data = tiny_data(96)
    single = _trainer(data)
    res = single.run()
    out = str(tmp_path / "ddp")
    tmp_mp.spawn(_rank_main, args=(2, _free_port(), out, 96), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    want = {f"student.{k}": v for k, v in single.model.state_dict().items()}
    want.update({f"aligner.{k}": v for k, v in single.distillers[0].state_dict().items()})
    for got in ranks:
        assert got["steps"] == res.steps == 3 * (96 // 16)  # the same number of global steps
        for k, v in want.items():  # same weights and aligners, up to float summation order
            torch.testing.assert_close(got["state"][k], v, atol=2e-5, rtol=1e-4)
        assert got["loss"] == pytest.approx(single.state.loss, rel=1e-4)  # the mean loss over ranks
        assert got["val_acc"] == pytest.approx(res.val_acc)
    for k in want:  # both ranks hold identical copies
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k])


def _refuse_main(rank: int, world: int, port: int, n: int, batch: int, errors: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        teacher, student, distiller = _parts()
        cfg = TrainConfig(epochs=1, batch_size=batch, amp=False)
        Trainer(student, tiny_data(n), cfg, distiller=distiller, teacher=teacher, knowledge="embedding")
    except ValueError as exc:
        with open(f"{errors}.{rank}", "w") as f:
            f.write(str(exc))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("n", "batch", "message"),
    [
        (64, 15, "batch size 15 cannot be split across 2 processes"),
        (1, 2, "2 processes for 1 training samples"),
    ],
)
def test_bad_process_counts_are_refused_by_name(tmp_path, n, batch, message) -> None:
    errors = str(tmp_path / "err")
    tmp_mp.spawn(_refuse_main, args=(2, _free_port(), n, batch, errors), nprocs=2, join=True)
    for r in (0, 1):
        assert message in open(f"{errors}.{r}").read()


def test_a_restarted_run_resumes_from_its_checkpoint(tmp_path) -> None:
    data = tiny_data(96)
    whole = _trainer(data)
    whole.run()
    ckpt = tmp_path / "run.ckpt.pt"
    cut = _trainer(data, checkpoint=ckpt)

    def stop_after_two_epochs(trainer: Trainer) -> None:
        if trainer.state.epoch == 2 and trainer.state.step == 13:  # one step into the third epoch
            raise StopTraining

    cut.add_callback("on_batch_end", stop_after_two_epochs)
    cut.run()
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 2 and saved["step"] == 12  # written at the end of epoch 2
    resumed = _trainer(data, checkpoint=ckpt)
    res = resumed.run()
    assert resumed.resumed_from == 12 and res.steps == 18
    for k, v in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v)
    torch.testing.assert_close(resumed.distillers[0].align.weight, whole.distillers[0].align.weight)
    with pytest.raises(ValueError, match="belongs to another run"):
        _trainer(data, checkpoint=ckpt, key="another").run()
    ckpt.write_bytes(b"torn")
    with pytest.raises(ValueError, match="unreadable"):
        _trainer(data, checkpoint=ckpt).run()
