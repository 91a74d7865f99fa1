"""A deterministic fake of trainers.ProxyEvaluator: fitness is a fixed function of the spec."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from study.config import StudyConfig, load_config
from trainers import Rejected


def smoke_config(
    url: str,
    n_trials: int,
    workers: int = 1,
    study: str = "s",
    run: dict[str, Any] | None = None,
    **search: Any,
) -> StudyConfig:
    """The smoke preset on ``url``: a logits-only search, no early stopping, heartbeats 1 s, grace 3 s."""
    return load_config(
        "smoke",
        overrides={
            "search": {"population": 4, "knowledge": ["logits"], "early_stop_warmup": 1000, **search},
            "run": {
                "storage": url,
                "study": study,
                "workers": workers,
                "n_trials": n_trials,
                "timeout": None,
                "heartbeat_interval": 1,
                "grace_period": 3,
                **(run or {}),
            },
        },
    )


@dataclass
class FakeFitness:
    ce: float
    sharpness_gap: float
    cka_gap: float
    accuracy: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    steps: int = 0
    resumed_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ce": self.ce,
            "sharpness_gap": self.sharpness_gap,
            "cka_gap": self.cka_gap,
            "accuracy": self.accuracy,
            "curve": [list(p) for p in self.curve],
            "wall_s": self.wall_s,
        }


def _unit(text: str, salt: str) -> float:
    """A number in [0, 1) fixed by text and salt."""
    return int(hashlib.sha256((salt + text).encode()).hexdigest()[:8], 16) / 2**32


def key_of(spec: Any) -> str:
    """The canonical key of a spec (twins get the same fake numbers)."""
    return spec.canonical_key()


def fake_objectives(spec: Any) -> tuple[float, float, float, float]:
    """(ce, sharpness_gap, cka_gap, accuracy) as a deterministic function of the spec."""
    key = key_of(spec)
    ce = 0.5 + _unit(key, "ce") + (0.3 if spec.distance != "kl" else 0.0)
    return ce, _unit(key, "sharp"), _unit(key, "cka"), max(0.0, 1.0 - ce / 2)


class FakeEvaluator:
    """check() rejects specs whose ``reject_gene`` equals ``reject_value``; evaluate() runs on_eval.

    Args:
        exp: Experiment (unused, as ProxyEvaluator's first argument).
        device: Device (unused).
        reject_gene: Spec attribute checked by loss rejection ("distance", "calibration", ...), or None.
        reject_value: Its value that is rejected (reason ``explode``).
        delay: Seconds each evaluate() sleeps (to let tests kill a worker mid-trial).
        error_value: A ``distance`` whose evaluate() raises RuntimeError (an unexpected bug).
        gate: A file path: while that file exists, a search trial's evaluate() holds after its delay, with
            a marker file ``<gate>.<pid>`` present, so a test knows the process is inside a trial before it
            kills it (a kill after a mere RUNNING check could land between two trials).
    """

    def __init__(
        self,
        exp: Any = None,
        device: str = "cpu",
        *,
        reject_gene: str | None = None,
        reject_value: Any = None,
        delay: float = 0.0,
        error_value: str | None = None,
        gate: str | None = None,
    ) -> None:
        self.reject_gene, self.reject_value, self.delay, self.error_value = (
            reject_gene,
            reject_value,
            delay,
            error_value,
        )
        self.gate = gate
        self.evaluated: list[str] = []
        self.continued: list[tuple[int, float | None]] = []

    def check(self, spec: Any) -> None:
        if self.reject_gene is not None and getattr(spec, self.reject_gene) == self.reject_value:
            raise Rejected("explode", f"planted rejection of {self.reject_gene}={self.reject_value}")

    def _hold(self) -> None:
        """Wait while the gate file exists, with this process's marker file present."""
        marker = f"{self.gate}.{os.getpid()}"
        while os.path.exists(self.gate):
            with open(marker, "w"):
                pass
            time.sleep(0.02)
        if os.path.exists(marker):
            os.remove(marker)

    def evaluate(
        self,
        spec: Any,
        callbacks: dict[str, list[Any]] | None = None,
        seed: int | None = None,
        *,
        fraction: float | None = None,
        rungs: Any = None,
        checkpoint: Any = None,
    ) -> FakeFitness:
        resumed = self._continue(checkpoint, fraction)
        if spec is None:  # the CE reference: a fixed, middling accuracy
            self.evaluated.append(f"ce:{seed}:{fraction}")
            fit = FakeFitness(1.0, 0.5, 0.5, 0.5, [(10, 0.25), (20, 0.5)], 0.0)
            return self._steps(fit, fraction, resumed, checkpoint)
        self.check(spec)  # as trainers.ProxyEvaluator.evaluate: loss rejection comes first
        if self.delay:
            time.sleep(self.delay)
        if self.gate is not None and fraction is None:
            self._hold()
        if self.error_value is not None and spec.distance == self.error_value:
            raise RuntimeError(f"planted bug on {spec.distance}")
        ce, sharp, cka, acc = fake_objectives(spec)
        curve = [(10, acc * 0.5), (20, acc)]
        for step, a in curve:
            trainer = SimpleNamespace(state=SimpleNamespace(step=step, val_acc=a))
            for fn in (callbacks or {}).get("on_eval", []):
                fn(trainer)
        if fraction is not None:  # a verification run: the accuracy moves a little with the seed
            acc = acc + 0.01 * _unit(f"{key_of(spec)}:{seed}", "seed")
        self.evaluated.append(spec.to_json() if fraction is None else f"verify:{spec.to_json()}:{seed}")
        return self._steps(FakeFitness(ce, sharp, cka, acc, curve, 0.0), fraction, resumed, checkpoint)

    FULL_STEPS = 400

    def _continue(self, checkpoint: Any, fraction: float | None) -> int:
        """The step a fake run continues from: its checkpoint holds ``step`` (and an empty student)."""
        if checkpoint is None or not os.path.exists(checkpoint):
            return 0
        step = int(torch.load(checkpoint, weights_only=True)["step"])
        self.continued.append((step, fraction))
        return step

    def _steps(self, fit: FakeFitness, fraction: float | None, resumed: int, checkpoint: Any) -> FakeFitness:
        if fraction is not None:
            fit.steps = max(1, round(fraction * self.FULL_STEPS))
            fit.resumed_from = resumed
        if checkpoint is not None:  # the shape of a real checkpoint, without weights
            torch.save({"model": {}, "distillers": [], "step": fit.steps}, checkpoint)
        return fit

    def test_metrics(self, path: Any) -> dict[str, float]:
        """A fixed test accuracy of the student in ``path`` (which must be a fake checkpoint)."""
        torch.load(path, weights_only=True)["step"]
        return {"accuracy": 0.625, "ce": 0.75}


def make_fake(exp: Any, device: str) -> FakeEvaluator:
    """Factory used by worker processes: no planted rejection."""
    return FakeEvaluator(exp, device)


@dataclass(frozen=True)
class GatedFake:
    """Picklable factory of fakes whose search trials hold while ``gate`` exists (see FakeEvaluator)."""

    gate: str
    delay: float = 0.0

    def __call__(self, exp: Any, device: str) -> FakeEvaluator:
        return FakeEvaluator(exp, device, delay=self.delay, gate=self.gate)

    def inside(self, pid: int) -> bool:
        """Whether process ``pid`` is holding inside a search trial."""
        return os.path.exists(f"{self.gate}.{pid}")
