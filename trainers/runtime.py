"""Device and thread settings of every command that trains (``--device``, ``--threads``, ``--seed``)."""

from __future__ import annotations

import argparse
import contextlib
import re

import torch

_DEVICE = re.compile(r"^(cpu|cuda)(:(\d+))?$")


def resolve_device(device: str | torch.device, option: str = "--device") -> torch.device:
    """Validate ``cpu``, ``cuda`` or ``cuda:N`` and check it exists.

    Args:
        device: The device name (or a torch device).
        option: The option or setting that named it, for the error's hint.

    Raises:
        ValueError: Unknown device string, CUDA asked for but unavailable, or an index beyond the GPU count.
    """
    if isinstance(device, torch.device):
        device = str(device)
    m = _DEVICE.match(str(device).strip())
    if m is None or (m.group(1) == "cpu" and m.group(2)):
        raise ValueError(f"unknown device {device!r}; valid: 'cpu', 'cuda', 'cuda:N'")
    if m.group(1) == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use {option} cpu")
        count = torch.cuda.device_count()
        if m.group(3) is not None and int(m.group(3)) >= count:
            raise ValueError(f"device {device!r}: only {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    return torch.device(m.group(0))


def add_runtime_arguments(parser: argparse.ArgumentParser, seed_default: int | None = None) -> None:
    """Add ``--device``, ``--threads`` and ``--seed`` to a command's parser."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--seed", type=int, default=seed_default, help="training seed")


def apply_runtime(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and validate ``--device``; returns the device."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def autocast(device: str | torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``, else a no-op: the one policy of training and every evaluation."""
    dev = torch.device(device)
    if amp and dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
