"""A realistic kdzero-shaped study (known distillers in generation 0, random specs after, rejections)."""

from __future__ import annotations

import json
import random
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from tests.analysis.helpers import add_spec, new_study

# tiny: digits (sklearn's bundled 8x8 images), cnn_tiny teacher (one epoch) and student
EXPERIMENT = {
    "dataset": {"name": "digits", "val_size": 200, "subset": 400},
    "teacher": "cnn_tiny",
    "student": "cnn_tiny",
    "teacher_train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "amp": False, "warmup_epochs": 0.0},
    "student_train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "amp": False, "warmup_epochs": 0.0},
    "proxy": {"steps": 5},
}


def random_spec(rng: random.Random):
    from spaces import CALIBRATIONS, DISTANCES, TEMPERATURES, TRANSFORMS, WEIGHTS, DistillerSpec

    ops = list(TRANSFORMS.names())
    return DistillerSpec(
        knowledge=rng.choice(["logits", "embedding", "feature"]),
        transforms=(rng.choice(ops), rng.choice(ops), rng.choice(ops)),
        distance=rng.choice([d for d in DISTANCES.names() if d != "hard"]),
        calibration=rng.choice(list(CALIBRATIONS.names())),
        weight=rng.choice(list(WEIGHTS)),
        tau=rng.choice(list(TEMPERATURES)),
    )


def fill_study(study: optuna.Study, n_random: int, seed: int = 0) -> None:
    """Known distillers (generation 0, user attr ``known``), then random specs in generations of 10.

    Objectives depend on one gene each (val_ce on tau, sharpness_gap on the distance, cka_gap on the
    knowledge), so parameter importances have a known answer; every 6th random trial is rejected.
    """
    from spaces import DISTANCES, KNOWN_DISTILLERS

    rng = random.Random(seed)
    dist_rank = {d: i for i, d in enumerate(sorted(DISTANCES.names()))}
    know_rank = {"logits": 0.0, "embedding": 0.3, "feature": 0.6}

    def values(spec) -> list[float]:
        return [
            0.5 + 0.2 * spec.tau + 0.01 * rng.random(),
            0.05 * dist_rank[spec.distance] + 0.005 * rng.random(),
            0.1 + know_rank[spec.knowledge] + 0.01 * rng.random(),
        ]

    for name in sorted(KNOWN_DISTILLERS):
        spec = KNOWN_DISTILLERS[name]
        add_spec(study, spec, values(spec), attrs={"known": name, "generation": 0, "accuracy": rng.random()})
    reasons = ["nan", "explode", "collapse", "explode", "invalid"]
    for i in range(n_random):
        spec = random_spec(rng)
        gen = 1 + i // 10
        if i % 6 == 5:
            add_spec(
                study,
                spec,
                None,
                state=TrialState.PRUNED,
                attrs={
                    "generation": gen,
                    "reject_reason": reasons[i // 6 % len(reasons)],
                    "reject_detail": "test",
                },
            )
        else:
            add_spec(study, spec, values(spec), attrs={"generation": gen, "accuracy": rng.random()})
    study.set_user_attr(
        "kdzero_shrinkage",
        {
            "t1": {json.dumps("exp"): 0.25, json.dumps("no"): 1.0},
            "weight": {json.dumps(100.0): 0.5, json.dumps(1.0): 1.0},
        },
    )


@pytest.fixture(scope="session")
def study_url(tmp_path_factory) -> tuple[str, str]:
    """(storage URL, study name) of a sqlite study with 7 known + 40 random trials."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = f"sqlite:///{tmp_path_factory.mktemp('analysis') / 'kd.db'}"
    study = new_study(url, name="kd", config={"experiment": EXPERIMENT, "search": {"population": 10}})
    fill_study(study, 40)
    return url, "kd"
