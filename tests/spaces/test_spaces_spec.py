from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

import spaces
from spaces import (
    CALIBRATIONS,
    DISTANCES,
    KNOWLEDGE,
    KNOWN_DISTILLERS,
    TEMPERATURES,
    TRANSFORMS,
    WEIGHTS,
    DistillerSpec,
    space_size,
)

KD = {"knowledge": "logits", "transforms": ["no", "softmax_c", "no"], "distance": "kl", "calibration": "no",
      "weight": 1.0, "tau": 4.0}  # fmt: skip


def test_public_api():
    names = "DistillerSpec build_distiller suggest_spec TRANSFORMS DISTANCES CALIBRATIONS KNOWN_DISTILLERS"
    names += " space_size spec_to_params spec_from_params WEIGHTS TEMPERATURES KNOWLEDGE"
    for name in names.split():
        assert name in spaces.__all__ and hasattr(spaces, name)
    assert KNOWLEDGE == ("embedding", "feature", "logits")
    assert (
        len(WEIGHTS) >= 8
        and min(WEIGHTS) == 0.01
        and max(WEIGHTS) == 100
        and list(WEIGHTS) == sorted(WEIGHTS)
    )
    assert TEMPERATURES == (1.0, 4.0, 8.0)


def test_round_trips():
    for spec in KNOWN_DISTILLERS.values():
        assert DistillerSpec.from_dict(spec.to_dict()) == spec
        assert DistillerSpec.from_json(spec.to_json()) == spec
        assert json.loads(spec.to_json())["transforms"] == list(spec.transforms)
    assert DistillerSpec.from_dict(KD) == KNOWN_DISTILLERS["kd"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"transforms": ["no", "softmaxx", "no"]},
            r"transforms\[1\]: unknown transform 'softmaxx'; valid choices",
        ),
        ({"transforms": ["no", "no"]}, "transforms must be a sequence of 3"),
        ({"transforms": "no"}, "transforms must be a sequence of 3"),
        ({"distance": "kl2"}, "distance: unknown distance 'kl2'; valid choices are .*'correlation'"),
        ({"calibration": 3}, "calibration: unknown calibration 3"),
        ({"knowledge": "pixels"}, "knowledge: unknown knowledge 'pixels'"),
        ({"weight": "1"}, "weight must be a number, got str"),
        ({"weight": True}, "weight must be a number, got bool"),
        ({"weight": -1.0}, r"weight must be a finite number > 0, got -1\.0"),
        ({"weight": 0}, "weight must be a finite number > 0"),
        ({"tau": 0}, "tau must be a finite number > 0, got 0"),
        ({"tau": float("nan")}, "tau must be a finite number > 0"),
        ({"tau": None}, "tau must be a number, got NoneType"),
        ({"extra": 1}, r"unknown key\(s\) \['extra'\]"),
    ],
)
def test_bad_json_names_the_field(change, field):
    text = json.dumps({**KD, **change})
    with pytest.raises(ValueError, match=field):
        DistillerSpec.from_json(text)


def test_bad_json_text_and_missing_keys():
    with pytest.raises(ValueError, match="not valid JSON"):
        DistillerSpec.from_json("{not json")
    with pytest.raises(ValueError, match=r"missing key\(s\) \['distance'\]"):
        DistillerSpec.from_dict({k: v for k, v in KD.items() if k != "distance"})
    with pytest.raises(ValueError, match="expects a mapping"):
        DistillerSpec.from_json("[1, 2]")


def test_spec_is_frozen_and_int_becomes_float():
    spec = DistillerSpec("logits", ["no", "no", "no"], "l2", weight=2, tau=1)
    assert spec.transforms == ("no", "no", "no") and isinstance(spec.weight, float)
    with pytest.raises(AttributeError):
        spec.weight = 3.0  # type: ignore[misc]


def test_formula():
    assert KNOWN_DISTILLERS["kd"].formula() == "1 * kl(softmax_c(z_s/4), softmax_c(z_t/4)) * 16"
    assert KNOWN_DISTILLERS["wsld"].formula() == "2 * focal * kl(softmax_c(z_s/4), softmax_c(z_t/4)) * 16"
    assert KNOWN_DISTILLERS["fitnets"].formula() == "100 * l2(f_s, f_t)"
    assert KNOWN_DISTILLERS["at"].formula() == "100 * l2(norm_hw(pow2(f_s)), norm_hw(pow2(f_t)))"
    assert DistillerSpec("embedding", ("relu", "no", "mm"), "cosine", "conf", 0.05, 8).formula() == (
        "0.05 * conf * cosine(mm(relu(f_s/8)), mm(relu(f_t/8))) * 64"
    )


def test_space_size_counts_valid_candidates():
    n_t, n_c, n_w, n_tau = len(TRANSFORMS), len(CALIBRATIONS), len(WEIGHTS), len(TEMPERATURES)
    valid = sum(
        1 for k, d in itertools.product(KNOWLEDGE, DISTANCES) if not (d == "hard" and k != "logits")
    )  # (knowledge, distance) pairs: 8 + 7 + 7
    assert valid == 22
    assert space_size() == valid * n_t**3 * n_c * n_w * n_tau >= 10_000
    assert space_size(["logits"]) == 8 * n_t**3 * n_c * n_w * n_tau
    with pytest.raises(ValueError, match="unknown knowledge 'x'"):
        space_size(["x"])


def test_nothing_in_spaces_evaluates_or_unpickles_strings():
    root = Path(spaces.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\b(eval|exec|compile|__import__)\(|pickle|import_module", text), path


def test_canonical_removes_identity_ops_on_the_knowledges_shape() -> None:
    from spaces import KNOWN_DISTILLERS, TRANSFORMS

    kd = KNOWN_DISTILLERS["kd"]
    # map-only ops do nothing on logits: these are all KD
    chains = [("softmax_c", "no", "no"), ("bmm", "softmax_c", "local_r4")]
    chains.append(("scale", "softmax_hw", "softmax_c"))
    for chain in chains:
        twin = DistillerSpec("logits", chain, "kl", "no", 1.0, 4.0)
        assert twin.canonical() == kd.canonical() and twin.canonical_key() == kd.canonical_key()
        assert twin.formula() == kd.formula() == "1 * kl(softmax_c(z_s/4), softmax_c(z_t/4)) * 16"
    # on a feature map the same ops act
    f = DistillerSpec("feature", ("bmm", "no", "softmax_hw"), "l2")
    assert f.canonical().transforms == ("bmm", "softmax_hw", "no")
    # after `batch` turns a map into vectors, map-only ops stop acting
    g = DistillerSpec("feature", ("batch", "softmax_hw", "relu"), "l2")
    assert g.effective_transforms() == ("batch", "relu")
    assert "softmax_hw" not in g.formula()
    # the rule, written independently: an op is dropped iff it is "no" or needs a map and the data is a vector
    names = TRANSFORMS.names()
    for t1, t2 in zip(names, reversed(names)):
        spec = DistillerSpec("embedding", (t1, t2, "no"), "l1")
        expected = tuple(n for n in (t1, t2) if n != "no" and not TRANSFORMS[n].needs_map)
        assert spec.effective_transforms() == expected
    # canonical form keeps everything else
    c = DistillerSpec("logits", ("no", "relu", "no"), "l1", "focal", 5.0, 8.0).canonical()
    got = (c.transforms, c.distance, c.calibration, c.weight, c.tau)
    assert got == (("relu", "no", "no"), "l1", "focal", 5.0, 8.0)


def test_space_size_counts_distinct_candidates() -> None:
    from spaces import TRANSFORMS, distinct_chains, space_size

    n = len(TRANSFORMS)
    vector_ops = sum(1 for t in TRANSFORMS.values() if t.name != "no" and not t.needs_map)
    v = vector_ops  # ops acting on vectors (mm keeps vectors)
    # Written out here, not read from the space: on vectors, the ops whose output is never negative, the
    # rectifiers (the identity on such outputs), the idempotent ops and the distribution ops D.
    nonneg = {"exp", "pow2", "pow4", "relu", "sigmoid", "softmax_c", "softmax_n"}
    rect = {"relu", "leaky_relu"}
    idem = {"relu", "logsoftmax_c", "logsoftmax_n"}
    dist_ops = {"softmax_c", "logsoftmax_c", "softmax_n", "logsoftmax_n"}
    # A pair (a, b) is forbidden when b goes after a: an idempotent op after itself, a rectifier after a
    # non-negative op. A canonical chain is a sequence of 0..3 ops with no forbidden adjacent pair.
    forbidden = {(a, a) for a in idem} | {(a, b) for a in nonneg for b in rect}
    f = len(forbidden)
    assert f == 16  # 3 repeats + 7 x 2, (relu, relu) in both
    # chains of 3 with a forbidden pair at (1, 2) and one at (2, 3): sum over the middle op b of
    # in(b) * out(b)
    both = sum(
        sum(1 for a, x in forbidden if x == b) * sum(1 for x, c in forbidden if x == b) for b in rect | idem
    )
    assert distinct_chains("logits") == 1 + v + (v**2 - f) + (v**3 - 2 * f * v + both)
    assert distinct_chains("embedding") == distinct_chains("logits")
    # kl / hard compute the log-softmax over X of what precedes a final distribution op (in D), over c when
    # there is none, and a logsoftmax_X right before it is absorbed. A rectifier right after softmax_c /
    # softmax_n stays when it is the chain's last op (it decides what kl takes the log-softmax of), so for
    # the last pair only `final` is forbidden. The distinct forms: the chains ending outside D (E), what a
    # chain ending in an axis-c op of D leaves (C: a canonical chain of <= 2 not ending in logsoftmax_c),
    # and what one ending in an axis-n op leaves (N: q + softmax_n, q canonical of <= 2 not ending in
    # logsoftmax_n); E and N share nothing, E and C the canonical chains of <= 2 ending outside D; C's forms
    # ending in softmax_n keep logsoftmax_c as a marker, so C and N share nothing.
    m = len(dist_ops)
    final = forbidden - {(a, b) for a in ("softmax_c", "softmax_n") for b in rect}
    final_out = [p for p in final if p[1] not in dist_ops]  # the last op ends outside D
    first_out = [p for p in forbidden if p[1] not in dist_ops]
    both_e = sum(
        sum(1 for a, x in forbidden if x == b) * sum(1 for x, c in final_out if x == b) for b in rect | idem
    )
    e = (
        1
        + (v - m)
        + (v * (v - m) - len(final_out))
        + (v**2 * (v - m) - f * (v - m) - v * len(final_out) + both_e)
    )
    c = n_ = 1 + (v - 1) + (v * (v - 1) - (f - 1))  # of the forbidden pairs, one ends in logsoftmax_c
    e_and_c = 1 + (v - m) + (v * (v - m) - len(first_out))
    want_kl = e + n_ + c - e_and_c
    assert distinct_chains("logits", "kl") == distinct_chains("logits", "hard") == want_kl
    assert distinct_chains("logits", "l2") == distinct_chains("logits")
    per_chain = len(CALIBRATIONS) * len(WEIGHTS) * len(TEMPERATURES)
    want = sum(distinct_chains("logits", d) for d in DISTANCES) * per_chain
    assert space_size(["logits"], distinct=True) == want
    assert distinct_chains("feature") < n**3
    assert space_size(["logits"], distinct=True) < space_size(["logits"])
    kinds = ("embedding", "feature", "logits")
    assert space_size(distinct=True) == sum(space_size([k], distinct=True) for k in kinds)


def test_weight_step_moves_along_the_weight_grid() -> None:
    import dataclasses

    grid = [0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0]  # written out, not read from the space
    kd = KNOWN_DISTILLERS["kd"]  # W 1
    steps = (-4, -3, -2, -1, 1, 2, 5)
    assert [kd.weight_step(k).weight for k in steps] == [grid[grid.index(1.0) + k] for k in steps]
    assert [kd.weight_step(k).weight for k in (-1, -2, 1)] == [0.5, 0.1, 2.0]
    assert kd.weight_step(-5) is None and kd.weight_step(6) is None  # off the grid
    down = kd.weight_step(-1)
    assert dataclasses.replace(down, weight=1.0) == kd  # nothing but the weight changes
    at = KNOWN_DISTILLERS["at"]
    assert at.weight_step(1) is None and at.weight_step(-2).weight == grid[grid.index(100.0) - 2]
    with pytest.raises(ValueError, match=r"weight 0\.3 of .* is not on the weight grid"):
        dataclasses.replace(kd, weight=0.3).weight_step(1)


def _loss(spec: DistillerSpec, a, b) -> float:
    import torch

    from spaces import build_distiller

    torch.manual_seed(1)  # the same draws for the random ops (drop, mask) of twins
    distiller = build_distiller(spec, tuple(a.shape[1:]), tuple(b.shape[1:]), generator=torch.Generator())
    return distiller(a, b)[0].item()


def test_a_softmax_the_distribution_distance_applies_itself_makes_twins() -> None:
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    zs, zt = (
        torch.randn(6, 10, generator=g, dtype=torch.float64),
        torch.randn(6, 10, generator=g, dtype=torch.float64),
    )
    fs, ft = (
        torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64),
    )

    def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
        x = x - x.max(axis=axis, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))

    def kl_ref(a: np.ndarray, b: np.ndarray, axis: int) -> float:
        """16 KL(p_b || p_a), p = softmax(x / 4) along ``axis``, summed over it, mean over the rest."""
        la, lb = log_softmax(a / 4, axis), log_softmax(b / 4, axis)
        kl = (np.exp(lb) * (lb - la)).sum(axis=axis)
        return 16 * kl.reshape(len(a), -1).mean(axis=1).mean()

    kd = kl_ref(zs.numpy(), zt.numpy(), 1)
    relu_kd = kl_ref(np.maximum(zs.numpy(), 0), np.maximum(zt.numpy(), 0), 1)
    cwd = kl_ref(fs.numpy().reshape(6, 4, 25), ft.numpy().reshape(6, 4, 25), 2)
    cases = [
        ("logits", ["no", "softmax_c", "logsoftmax_c"], (), kd),
        ("logits", ["relu", "relu softmax_c", "relu logsoftmax_c"], ("relu",), relu_kd),
        ("feature", ["softmax_hw", "logsoftmax_hw"], ("softmax_hw",), cwd),
        ("feature", ["no", "softmax_c", "logsoftmax_c"], (), kl_ref(fs.numpy(), ft.numpy(), 1)),
    ]
    for knowledge, chains, canonical, want in cases:
        a, b = (zs, zt) if knowledge == "logits" else (fs, ft)
        specs = [DistillerSpec(knowledge, (*c.split(), "no", "no")[:3], "kl", "no", 1.0, 4.0) for c in chains]
        assert {s.canonical().transforms for s in specs} == {(*canonical, "no", "no", "no")[:3]}
        for s in specs:
            assert _loss(s, a, b) == pytest.approx(want, rel=1e-9), s.formula()
    # not twins: a second softmax, another axis, or a distance that does not read distributions
    kd_spec = KNOWN_DISTILLERS["kd"]
    others = [
        DistillerSpec("logits", ("softmax_c", "softmax_c", "no"), "kl", "no", 1.0, 4.0),
        DistillerSpec("logits", ("softmax_n", "no", "no"), "kl", "no", 1.0, 4.0),
        DistillerSpec("logits", ("softmax_c", "no", "no"), "l2", "no", 1.0, 4.0),
    ]
    for s in others:
        assert s.canonical_key() != kd_spec.canonical_key()
        assert _loss(s, zs, zt) != pytest.approx(kd, rel=1e-6)
    l2 = DistillerSpec("logits", ("no", "no", "no"), "l2", "no", 1.0, 4.0)
    assert l2.canonical_key() != others[2].canonical_key()


def test_a_repeated_idempotent_op_makes_twins_and_other_repeats_do_not() -> None:
    import torch

    g = torch.Generator().manual_seed(3)
    z = (
        torch.randn(6, 10, generator=g, dtype=torch.float64),
        torch.randn(6, 10, generator=g, dtype=torch.float64),
    )
    f = (
        torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64),
    )

    def spec(knowledge: str, chain: tuple[str, ...], distance: str) -> DistillerSpec:
        return DistillerSpec(knowledge, (*chain, *("no",) * (3 - len(chain))), distance, "no", 1.0, 4.0)

    same = [  # (knowledge, distance, chain, its twin): relu(relu(x)) = relu(x); log-softmax is idempotent
        ("logits", "l2", ("relu", "relu"), ("relu",)),
        ("logits", "l2", ("relu", "norm_hw", "relu"), ("relu",)),  # norm_hw does nothing on vectors
        ("logits", "cosine", ("logsoftmax_c", "logsoftmax_c", "tanh"), ("logsoftmax_c", "tanh")),
        ("feature", "l2", ("logsoftmax_hw", "logsoftmax_hw"), ("logsoftmax_hw",)),
        ("logits", "l1", ("logsoftmax_n", "logsoftmax_n", "logsoftmax_n"), ("logsoftmax_n",)),
        # kl takes the log-softmax of what precedes its final softmax; a log-softmax there changes nothing
        ("logits", "kl", ("logsoftmax_c", "softmax_c"), ()),
        ("logits", "kl", ("tanh", "logsoftmax_c", "logsoftmax_c"), ("tanh",)),
        ("logits", "kl", ("logsoftmax_n", "softmax_n"), ("softmax_n",)),
        ("logits", "hard", ("logsoftmax_n", "logsoftmax_n"), ("softmax_n",)),
        ("feature", "kl", ("logsoftmax_hw", "softmax_hw"), ("softmax_hw",)),
        ("logits", "kl", ("softmax_n", "logsoftmax_c", "softmax_c"), ("softmax_n", "softmax_c")),
    ]
    for knowledge, distance, chain, twin in same:
        a, b = spec(knowledge, chain, distance), spec(knowledge, twin, distance)
        assert a.canonical_key() == b.canonical_key(), (a.formula(), b.formula())
        data = z if knowledge == "logits" else f
        assert _loss(a, *data) == pytest.approx(_loss(b, *data), rel=1e-9), (a.formula(), b.formula())
    different = [  # not idempotent: the log-softmax of probabilities is not that of logits; squares square
        ("logits", "kl", ("softmax_c", "softmax_c"), ()),
        # log-softmax over c of softmax_n(z) is not the log-softmax over n of z
        ("logits", "kl", ("softmax_n", "softmax_c"), ("softmax_n",)),
        ("logits", "kl", ("softmax_n", "softmax_c"), ("softmax_n", "softmax_c", "softmax_c")),
        ("logits", "l2", ("pow2", "pow2"), ("pow2",)),
        ("logits", "l2", ("softmax_c", "softmax_c"), ("softmax_c",)),
        ("logits", "l2", ("batchnorm", "batchnorm"), ("batchnorm",)),  # var / (var + eps) is not 1
        ("logits", "l2", ("logsoftmax_c", "tanh", "logsoftmax_c"), ("logsoftmax_c", "tanh")),  # not adjacent
    ]
    for knowledge, distance, chain, other in different:
        a, b = spec(knowledge, chain, distance), spec(knowledge, other, distance)
        assert a.canonical_key() != b.canonical_key(), (a.formula(), b.formula())
        assert _loss(a, *z) != pytest.approx(_loss(b, *z), rel=1e-6), (a.formula(), b.formula())


def test_a_rectifier_after_a_non_negative_op_makes_twins_in_value_and_gradient() -> None:
    """relu / leaky_relu of an output that is never negative is that output: one distiller, one gradient."""
    import torch

    from spaces import build_distiller

    g = torch.Generator().manual_seed(5)
    # large logits: some softmax, exp and sigmoid entries underflow to exactly 0, and pow2 meets exact zeros
    zs = torch.randn(6, 10, generator=g, dtype=torch.float64) * 300
    zs[0, :3] = 0.0
    zt = torch.randn(6, 10, generator=g, dtype=torch.float64) * 300

    def spec(chain: tuple[str, ...], distance: str) -> DistillerSpec:
        return DistillerSpec("logits", (*chain, *("no",) * (3 - len(chain))), distance, "no", 1.0, 1.0)

    def loss_and_grad(s: DistillerSpec) -> tuple[float, torch.Tensor]:
        x = zs.clone().requires_grad_(True)
        torch.manual_seed(1)
        loss = build_distiller(s, (10,), (10,), generator=torch.Generator())(x, zt)[0]
        (grad,) = torch.autograd.grad(loss, x)
        return loss.item(), grad

    same = [  # (distance, chain, its twin)
        ("l2", ("softmax_c", "relu"), ("softmax_c",)),
        ("l2", ("exp", "leaky_relu"), ("exp",)),
        ("cosine", ("pow2", "relu", "tanh"), ("pow2", "tanh")),
        ("l1", ("sigmoid", "leaky_relu", "relu"), ("sigmoid",)),
        ("l2", ("relu", "leaky_relu"), ("relu",)),
        ("l2", ("softmax_n", "leaky_relu"), ("softmax_n",)),
        ("pearson", ("pow4", "leaky_relu", "norm_c"), ("pow4", "norm_c")),
        # before a final softmax the rectified tensor is what kl takes the log-softmax of: the same
        ("kl", ("exp", "relu", "softmax_c"), ("exp",)),
        ("kl", ("softmax_n", "leaky_relu", "softmax_c"), ("softmax_n", "softmax_c")),
        # the last op before kl / hard, after a softmax: kept, so both rectifiers (or a repeat) agree
        ("kl", ("softmax_c", "relu", "relu"), ("softmax_c", "relu")),
        ("kl", ("sigmoid", "relu"), ("sigmoid",)),  # sigmoid is no distribution op: kl's layout is the same
    ]
    for distance, chain, twin in same:
        a, b = spec(chain, distance), spec(twin, distance)
        assert a.canonical_key() == b.canonical_key(), (a.formula(), b.formula())
        (la, ga), (lb, gb) = loss_and_grad(a), loss_and_grad(b)
        assert la == pytest.approx(lb, rel=1e-12), (a.formula(), b.formula())
        assert torch.allclose(ga, gb, rtol=1e-12, atol=1e-15), (a.formula(), b.formula())
    different = [  # (distance, chain, other)
        # kl(relu(softmax_c(z))) is the log-softmax of probabilities, kl(softmax_c(z)) that of logits
        ("kl", ("softmax_c", "relu"), ("softmax_c",)),
        ("hard", ("softmax_c", "leaky_relu"), ("softmax_c",)),
        ("l2", ("leaky_relu", "relu"), ("leaky_relu",)),  # leaky_relu's output can be negative
        ("l2", ("tanh", "relu"), ("tanh",)),
        ("l2", ("min_max", "relu"), ("min_max",)),  # kept out of NON_NEGATIVE on purpose
        ("l2", ("softmax_c", "tanh", "relu"), ("softmax_c", "tanh")),  # not adjacent
    ]
    for distance, chain, other in different:
        a, b = spec(chain, distance), spec(other, distance)
        assert a.canonical_key() != b.canonical_key(), (a.formula(), b.formula())
    # the kl / hard exceptions do compute other losses
    for distance, chain, other in different[:2]:
        a, b = spec(chain, distance), spec(other, distance)
        assert loss_and_grad(a)[0] != pytest.approx(loss_and_grad(b)[0], rel=1e-6), (a.formula(), b.formula())


def test_specs_with_one_canonical_form_compute_one_loss() -> None:
    """Over random chains of kl / hard / l2 on logits and kl on maps: equal canonical keys, equal losses."""
    import random

    import torch

    from spaces import TRANSFORMS

    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    data = {
        "logits": (
            torch.randn(6, 10, generator=g, dtype=torch.float64),
            torch.randn(6, 10, generator=g, dtype=torch.float64),
        ),
        "feature": (
            torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64),
            torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64),
        ),
    }
    ends = ["no", "softmax_c", "logsoftmax_c", "softmax_hw", "logsoftmax_hw", "softmax_n", "logsoftmax_n"]
    rect = ["relu", "leaky_relu"]
    names = TRANSFORMS.names()
    groups: dict[str, list[tuple[DistillerSpec, float]]] = {}
    for _ in range(600):
        knowledge = rng.choice(["logits", "feature"])
        distance = rng.choice(["kl", "hard", "l2"] if knowledge == "logits" else ["kl", "l2"])
        chain = (rng.choice(names), rng.choice(["no", *names]), rng.choice(ends))
        if rng.random() < 0.3:  # repeats, e.g. relu(relu(.)) or logsoftmax_c before a final softmax_c
            chain = (chain[0], chain[0], chain[2]) if rng.random() < 0.5 else (chain[0], chain[2], chain[2])
        elif rng.random() < 0.25:  # a rectifier after an op whose output is never negative
            nonneg = rng.choice(["exp", "pow2", "sigmoid", "softmax_c", "softmax_n"])
            chain = (nonneg, rng.choice(rect), chain[2])
            chain = chain if rng.random() < 0.5 else (rng.choice(names), *chain[:2])
        spec = DistillerSpec(knowledge, chain, distance, "no", 1.0, 4.0)
        try:
            value = _loss(spec, *data[knowledge])
        except ValueError:
            continue  # a chain this knowledge refuses
        groups.setdefault(spec.canonical_key(), []).append((spec, value))
    merged = [g for g in groups.values() if len({s.transforms for s, _ in g}) > 1]
    assert len(merged) >= 20  # the sample holds many twins
    for group in merged:
        (first, v0), *rest = group
        for spec, v in rest:
            assert v == pytest.approx(v0, rel=1e-6, abs=1e-9, nan_ok=True), (first.formula(), spec.formula())
