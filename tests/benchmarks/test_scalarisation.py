"""benchmarks.scalarisation: within-search Kendall tau of proxy scores against verified accuracy."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from benchmarks import scalarisation


def _search(path, name: str, values: list[list[float]], proxy: list[float], verified: list[list[float]]):
    storage = f"sqlite:///{path}"
    main = optuna.create_study(study_name=name, storage=storage, directions=["minimize"] * 3)
    check = optuna.create_study(study_name=f"{name}:verify", storage=storage, direction="maximize")
    dist = {"x": FloatDistribution(0, 100)}
    for i, (v, a) in enumerate(zip(values, proxy)):
        trial = create_trial(values=v, user_attrs={"accuracy": a}, params={"x": float(i)}, distributions=dist)
        main.add_trial(trial)
    for i, accs in enumerate(verified):
        for a in accs:
            attrs = {"role": "verify", "source_trial": i, "accuracy": a}
            check.add_trial(create_trial(value=a, state=TrialState.COMPLETE, user_attrs=attrs))


def test_taus_match_the_formula_and_the_pairing(tmp_path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # four candidates; the sum is decided by the large sharpness gap, the geometric mean is not
    values = [[0.5, 10.0, 0.1], [0.6, 2.0, 0.2], [0.9, 3.0, 0.3], [1.2, 1.0, 0.4]]
    proxy = [0.8, 0.7, 0.6, 0.5]
    verified = [[0.90, 0.92], [0.85], [0.80, 0.80], [0.70]]
    _search(tmp_path / "a.db", "s", values, proxy, verified)
    _search(tmp_path / "b.db", "few", values[:3], proxy[:3], verified[:3])  # < 4 verified: left out
    res = scalarisation.measure([str(tmp_path / "*.db")])
    assert [s["study"] for s in res["searches"]] == ["s"]
    tau = res["searches"][0]["tau"]

    def kendall(x: list[float], y: list[float]) -> float:  # no ties here: (concordant - discordant) / pairs
        n, c = len(x), 0
        for i in range(n):
            for j in range(i + 1, n):
                c += 1 if (x[i] - x[j]) * (y[i] - y[j]) > 0 else -1
        return c / (n * (n - 1) / 2)

    acc = [sum(a) / len(a) for a in verified]
    sums = [-sum(v) for v in values]
    geo = [-(math.prod(v) ** (1 / 3)) for v in values]
    assert tau["sum"] == pytest.approx(kendall(sums, acc))
    assert tau["geomean"] == pytest.approx(kendall(geo, acc))
    assert tau["cka_gap"] == pytest.approx(1.0) and tau["proxy_acc"] == pytest.approx(1.0)
    d = res["geomean_minus_sum"]
    assert d["mean"] == pytest.approx(tau["geomean"] - tau["sum"]) and d["n"] == 1
    assert d["better"] + d["worse"] + d["tied"] == 1
