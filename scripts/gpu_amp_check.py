"""What bf16 autocast (``TrainConfig.amp`` on CUDA) buys and costs on kdzero's models.

A device check, not a test: run it on a GPU machine (``python3 scripts/gpu_amp_check.py --out DIR``); on CPU
it runs too, but autocast is a no-op there. For each model, the time of one SGD step (forward, backward,
update) and of one evaluation batch in float32 and under bf16 autocast, each the median of repeated timed
blocks after a warm-up, on random inputs of the data set's shape; then, for a small CNN trained on
scikit-learn's digits with 3 seeds in each precision, the validation accuracy and cross-entropy of each
trained model evaluated both ways (``trainers.loop.Trainer`` and ``trainers.metrics.evaluate_split``, the
runs' own loop and evaluation). Prints a summary, writes ``amp_check.json`` and ``amp_check.txt`` to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers import DataConfig, TrainConfig, create_model, load_dataset  # noqa: E402
from trainers.loop import Trainer  # noqa: E402
from trainers.metrics import evaluate_split  # noqa: E402
from trainers.runtime import autocast  # noqa: E402

# (model, classes, channels, image size, batch): Fashion-MNIST students and teacher, CIFAR-100 pairs.
CASES = [
    ("mlp", 10, 1, 28, 128),
    ("cnn_tiny", 10, 1, 28, 128),
    ("resnet20", 10, 1, 28, 128),
    ("resnet8x4", 100, 3, 32, 64),
    ("resnet32x4", 100, 3, 32, 64),
    ("wrn_40_2", 100, 3, 32, 64),
]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev: torch.device, steps: int, repeats: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` blocks of ``steps`` calls, after a warm-up block."""
    for _ in range(steps):
        fn()
    _sync(dev)
    per = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(dev)
        per.append((time.perf_counter() - t) / steps)
    return statistics.median(per)


def _time_model(
    model: torch.nn.Module,
    dev: torch.device,
    amp: bool,
    shape: tuple[int, int, int, int],
    classes: int,
    steps: int,
    repeats: int,
) -> tuple[float, float]:
    """Seconds per training step on a batch of ``shape`` and per evaluation of 1000 inputs."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(*shape, device=dev)  # (B, C, H, W)
    y = torch.randint(0, classes, (shape[0],), device=dev)
    xe = torch.randn(1000, *shape[1:], device=dev)  # (1000, C, H, W)

    def step() -> None:
        with autocast(dev, amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def evaluate() -> None:
        with autocast(dev, amp):
            model(xe)

    model.train()
    t_step = _timed(step, dev, steps, repeats)
    model.eval()
    t_eval = _timed(evaluate, dev, max(1, steps // 5), repeats)
    return t_step, t_eval


def speed(dev: torch.device, steps: int, repeats: int) -> list[dict]:
    """Step and evaluation time per model, float32 against bf16 autocast."""
    rows = []
    for name, classes, ch, size, batch in CASES:
        kwargs = {"image_size": size} if name == "mlp" else {}
        row: dict = {"model": name, "batch": batch, "shape": [ch, size, size]}
        for amp in (False, True):
            torch.manual_seed(0)
            model = create_model(name, classes, ch, **kwargs).to(dev)
            t_step, t_eval = _time_model(model, dev, amp, (batch, ch, size, size), classes, steps, repeats)
            key = "bf16" if amp else "fp32"
            row[f"step_ms_{key}"] = t_step * 1e3
            row[f"eval1000_ms_{key}"] = t_eval * 1e3
        row["step_speedup"] = row["step_ms_fp32"] / row["step_ms_bf16"]
        row["eval_speedup"] = row["eval1000_ms_fp32"] / row["eval1000_ms_bf16"]
        rows.append(row)
    return rows


def accuracy(dev: torch.device, seeds: int, epochs: int) -> list[dict]:
    """cnn_tiny on digits, trained by kdzero's one loop in each precision, evaluated in both."""
    splits = load_dataset(DataConfig(name="digits", val_size=300))
    rows = []
    for seed in range(seeds):
        for amp_train in (False, True):
            torch.manual_seed(seed)
            model = create_model("cnn_tiny", splits.num_classes, splits.in_channels)
            cfg = TrainConfig(
                epochs=epochs, batch_size=64, lr=0.05, warmup_epochs=1.0, amp=amp_train, seed=seed
            )
            Trainer(model, splits.train, cfg, device=dev).run()
            row = {"seed": seed, "train": "bf16" if amp_train else "fp32"}
            for amp_eval in (False, True):
                m = evaluate_split(model, splits.val, device=dev, cka=False, amp=amp_eval)
                key = "bf16" if amp_eval else "fp32"
                row[f"val_acc_eval_{key}"], row[f"val_ce_eval_{key}"] = m["accuracy"], m["ce"]
            rows.append(row)
    return rows


def main() -> None:
    """Run both measurements and write the summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="amp_check")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=60)
    args = p.parse_args()
    dev = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    lines = [f"torch {torch.__version__}, device {name}"]
    sp = speed(dev, args.steps, args.repeats)
    for r in sp:
        lines.append(
            f"{r['model']:>10} batch {r['batch']:>3}: step {r['step_ms_fp32']:6.2f} ms fp32, "
            f"{r['step_ms_bf16']:6.2f} ms bf16 (x{r['step_speedup']:.2f}); eval of 1000 "
            f"{r['eval1000_ms_fp32']:6.2f} / {r['eval1000_ms_bf16']:6.2f} ms (x{r['eval_speedup']:.2f})"
        )
    acc = accuracy(dev, args.seeds, args.epochs)
    for r in acc:
        lines.append(
            f"cnn_tiny/digits seed {r['seed']} trained {r['train']}: val acc "
            f"{r['val_acc_eval_fp32']:.4f} (fp32 eval) {r['val_acc_eval_bf16']:.4f} (bf16 eval); "
            f"ce {r['val_ce_eval_fp32']:.4f} / {r['val_ce_eval_bf16']:.4f}"
        )
    for key in ("fp32", "bf16"):
        accs = [r["val_acc_eval_fp32"] for r in acc if r["train"] == key]
        mean = statistics.fmean(accs)
        lines.append(f"trained {key}: mean val acc {mean:.4f}, {len(accs)} seeds (fp32 eval)")
    diffs = [abs(r["val_acc_eval_fp32"] - r["val_acc_eval_bf16"]) for r in acc]
    lines.append(
        f"|acc(fp32 eval) - acc(bf16 eval)| of one model: max {max(diffs):.4f}, "
        f"mean {statistics.fmean(diffs):.4f}"
    )
    text = "\n".join(lines)
    print(text)
    (out / "amp_check.txt").write_text(text + "\n")
    (out / "amp_check.json").write_text(json.dumps({"device": name, "speed": sp, "accuracy": acc}, indent=1))


if __name__ == "__main__":
    main()
