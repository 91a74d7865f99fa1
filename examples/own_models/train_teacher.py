"""Train the example teacher with a plain PyTorch loop and save it as users do: ``torch.save(state_dict)``.

kdzero's data loader only supplies the tensors (it reads Fashion-MNIST offline); the training is the user's
own. The validation images kdzero carves (``--val-size``, seed 0) are left out here, so the teacher's
validation accuracy in kdzero is honest. A teacher trained on the whole split works too: kdzero then says
that its validation accuracy is optimistic.

    python examples/own_models/train_teacher.py --epochs 3 --out teacher.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # kdzero's data loader
sys.path.insert(0, str(Path(__file__).resolve().parent))  # my_models

import my_models  # noqa: E402

from trainers.config import DataConfig  # noqa: E402
from trainers.data import load_dataset  # noqa: E402


def tensors(split: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of a split as two tensors."""
    items = [split[i] for i in range(len(split))]
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


def main(argv: list[str] | None = None) -> float:
    """Train, save the state_dict, print and return the test accuracy."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--val-size", type=int, default=5000, help="kdzero's validation carve, left out here")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--out", default="teacher.pt")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    splits = load_dataset(DataConfig(name=args.dataset, root=args.data_root, val_size=args.val_size))
    x, y = tensors(splits.train)
    xt, yt = tensors(splits.test)
    model = my_models.teacher(splits.num_classes, splits.in_channels, width=args.width)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps = args.epochs * max(1, len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(x))
        for i in range(0, max(len(x) - 127, 1), 128):
            sel = order[i : i + 128]
            loss = F.cross_entropy(model(x[sel]), y[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    torch.save(model.state_dict(), args.out)
    print(
        f"teacher: test accuracy {acc:.4f} after {args.epochs} epochs ({time.perf_counter() - t0:.0f} s); "
        f"state_dict saved to {args.out}"
    )
    return acc


if __name__ == "__main__":
    main()
