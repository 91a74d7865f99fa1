"""Search-space shrinkage: the weight formula, and fewer draws of an op planted to be rejected."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from study_fakes import FakeEvaluator

from study.config import SearchConfig
from study.objective import Objective
from study.sampler import build_sampler
from study.shrinkage import choice_key, shrinkage_weights

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"op": CategoricalDistribution(["a", "b", "c"])}


def _trial(op: str, state: TrialState, reason: str | None = None) -> optuna.trial.FrozenTrial:
    attrs = {"reject_reason": reason} if reason else {}
    values = [1.0, 1.0, 1.0] if state == TrialState.COMPLETE else None
    return create_trial(params={"op": op}, distributions=DIST, state=state, values=values, user_attrs=attrs)


def test_weights_follow_the_formula() -> None:
    c, p = TrialState.COMPLETE, TrialState.PRUNED
    trials = (
        [_trial("a", c)] * 3
        + [_trial("a", p, "nan")]
        + [_trial("b", p, "explode")] * 4
        + [_trial("c", p, "error")]
        + [_trial("c", p, "early_stop")]
        + [_trial("c", TrialState.FAIL)]
    )
    w = shrinkage_weights(trials, reasons=("nan", "explode"), floor=0.25)
    # (1 + completed) / (1 + completed + rejected), floored at 0.25; error / early_stop / FAIL do not count.
    assert w["op"][choice_key("a")] == pytest.approx((1 + 3) / (1 + 3 + 1))
    assert w["op"][choice_key("b")] == pytest.approx(max(0.25, 1 / (1 + 4)))
    assert choice_key("c") not in w["op"]  # never counted: weight 1 when drawn
    w2 = shrinkage_weights(trials, reasons=("nan", "explode", "early_stop"), floor=0.01)
    assert w2["op"][choice_key("b")] == pytest.approx(1 / 5)
    assert w2["op"][choice_key("c")] == pytest.approx(1 / 2)


def _run(floor: float, n_trials: int = 60) -> optuna.Study:
    """A study whose loss rejection refuses distance 'hard' (reason explode)."""
    # mutation_prob 1: every gene of every child is drawn by sample_independent, where shrinkage acts.
    search = SearchConfig(
        population=6,
        seed=1,
        knowledge=("logits",),
        shrink_floor=floor,
        mutation_prob=1.0,
        early_stop_warmup=1000,
    )
    study = optuna.create_study(directions=["minimize"] * 3, sampler=build_sampler(search, refresh_s=0.0))
    fake = FakeEvaluator(reject_gene="distance", reject_value="hard")
    study.optimize(Objective(fake, knowledge=("logits",)), n_trials=n_trials)
    return study


def _rejected(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    out = [t for t in study.trials if t.user_attrs.get("reject_reason") == "explode"]
    assert all(t.state == TrialState.PRUNED and t.params["distance"] == "hard" for t in out)
    assert all("planted rejection" in t.user_attrs["reject_detail"] for t in out)
    return out


def test_shrinkage_lowers_the_frequency_of_a_rejected_op() -> None:
    shrunk = _run(floor=0.05)
    plain = _run(floor=1.0)  # floor 1: every weight is 1, i.e. no shrinkage
    assert 1 <= len(_rejected(shrunk)) < len(_rejected(plain))
    # Draw the distance gene many times from each sampler, given each study's history.
    dist = shrunk.trials[0].distributions["distance"]
    n = 2000
    freq = {}
    for name, study in (("shrunk", shrunk), ("plain", plain)):
        sampler = study.sampler
        sampler.refresh_s = 3600.0  # weights read once from the finished study
        last = study.trials[-1]
        draws = [sampler.sample_independent(study, last, "distance", dist) for _ in range(n)]
        freq[name] = draws.count("hard") / n
    uniform = 1 / len(dist.choices)
    assert abs(freq["plain"] - uniform) < 0.04, freq
    assert freq["shrunk"] < uniform / 2, freq


def test_weights_are_published_in_study_user_attrs() -> None:
    search = SearchConfig(population=4, seed=0, knowledge=("logits",))
    study = optuna.create_study(directions=["minimize"] * 3, sampler=build_sampler(search, refresh_s=0.0))
    study.optimize(
        Objective(FakeEvaluator(reject_gene="distance", reject_value="kl"), knowledge=("logits",)),
        n_trials=12,
    )
    stored = study.user_attrs["kdzero_shrinkage"]
    now = shrinkage_weights(study.trials, search.shrink_reasons, search.shrink_floor)
    # The last publication happened before the last trial finished; both agree on every published gene.
    assert set(stored) <= set(now)
    assert "distance" in stored
