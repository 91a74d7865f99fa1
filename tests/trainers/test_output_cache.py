"""Teacher-output cache: built once across processes, equal to a live forward, read by the loop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainers._tiny import LocalKD, TinyNet, tiny_data
from trainers.config import DataConfig, TrainConfig
from trainers.loop import Trainer
from trainers.output_cache import TeacherOutputCache

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {root!r})
    from tests.trainers._tiny import TinyNet, tiny_data
    from trainers.output_cache import TeacherOutputCache

    class Counting(TinyNet):
        def forward(self, x):
            with open({marker!r}, "a") as f:
                f.write("forward\\n")
            time.sleep(0.05)  # widen the race window
            return super().forward(x)

    torch.manual_seed(0)
    teacher = Counting(16)
    cache = TeacherOutputCache({root_dir!r}, "k1")
    with open({marker!r} + ".ready", "a") as f:
        f.write("x\\n")
    while open({marker!r} + ".ready").read().count("x") < 2:  # start together
        time.sleep(0.01)
    cache.build(teacher, "train", tiny_data(200), ("logits",), batch_size=32)
    print(float(cache.get("train", "logits").sum()))
    """
)


def test_cache_built_once_by_two_processes_and_equals_live_forward(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    script = CHILD.format(root=str(ROOT), marker=marker, root_dir=str(tmp_path / "cache"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    forwards = Path(marker).read_text().count("forward")
    assert forwards == 7  # ceil(200 / 32) batches: one teacher pass in total, not two
    assert outs[0][0].strip() == outs[1][0].strip()  # both processes read the same numbers
    cache = TeacherOutputCache(tmp_path / "cache", "k1")
    torch.manual_seed(0)
    teacher = TinyNet(16).eval()
    data = tiny_data(200)
    with torch.no_grad():  # same batches as the cache build, so float results are identical
        live = torch.cat([teacher(data.tensors[0][i : i + 32]) for i in range(0, 200, 32)]).numpy()
    stored = cache.get("train", "logits")
    assert isinstance(stored, np.memmap) and stored.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(stored), live)
    idx = torch.tensor([5, 0, 199, 5])
    assert torch.equal(cache.rows("train", "logits", idx), torch.from_numpy(live[idx.numpy()]))
    assert not list((tmp_path / "cache").rglob("*.tmp.npy"))  # temporaries were renamed


def test_float16_storage_and_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = TinyNet(16).eval()
    data = tiny_data(50)
    cache = TeacherOutputCache(tmp_path, TeacherOutputCache.make_key("abc", DataConfig()), dtype="float16")
    cache.build(teacher, "val", data, ("logits",))
    with torch.no_grad():
        live = teacher(data.tensors[0])
    got = cache.rows("val", "logits", torch.arange(50))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, live, rtol=1e-3, atol=1e-3)
    assert TeacherOutputCache.make_key("abc", DataConfig()) != TeacherOutputCache.make_key(
        "abd", DataConfig()
    )
    assert TeacherOutputCache.make_key("abc", DataConfig()) != TeacherOutputCache.make_key(
        "abc", DataConfig(subset=100)
    )
    with pytest.raises(ValueError, match="unknown cache dtype 'bf16'"):
        TeacherOutputCache(tmp_path, "k", dtype="bf16")
    with pytest.raises(ValueError, match="unknown knowledge kind 'logit'"):
        cache.path("val", "logit")
    with pytest.raises(FileNotFoundError, match="call build"):
        cache.get("train", "logits")


def test_loop_with_cache_equals_loop_with_live_teacher(tmp_path: Path) -> None:
    data = tiny_data(96)
    torch.manual_seed(1)
    teacher = TinyNet(16).eval()
    cache = TeacherOutputCache(tmp_path, "k")
    cache.build(teacher, "train", data, ("logits",))
    cfg = TrainConfig(epochs=2, batch_size=32, amp=False)

    def run(**kw) -> list[float]:
        torch.manual_seed(0)
        tr = Trainer(TinyNet(), data, cfg, distiller=LocalKD(), **kw)
        losses: list[float] = []
        tr.add_callback("on_batch_end", lambda t: losses.append(t.state.loss))
        tr.run()
        return losses

    assert run(teacher_cache=cache) == pytest.approx(run(teacher=teacher), rel=1e-6)
