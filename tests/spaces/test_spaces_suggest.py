from __future__ import annotations

import collections

import optuna
import pytest

from spaces import GENES, KNOWN_DISTILLERS, DistillerSpec, spec_from_params, spec_to_params, suggest_spec
from study._optuna import study_system_attrs, trial_id

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_every_gene_in_every_trial_and_params_rebuild_the_spec():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = collections.Counter()
    for _ in range(40):
        trial = study.ask()
        spec = suggest_spec(trial)
        assert tuple(trial.params) == GENES
        assert spec_from_params(trial.params) == spec
        assert spec_to_params(spec) == trial.params
        seen[spec.knowledge] += 1
        study.tell(trial, 0.0)
    assert set(seen) == {"embedding", "feature", "logits"}


def test_enqueued_known_distiller_comes_back():
    study = optuna.create_study()
    study.enqueue_trial(spec_to_params(KNOWN_DISTILLERS["wsld"]))
    trial = study.ask()
    assert suggest_spec(trial) == KNOWN_DISTILLERS["wsld"]


def test_restricted_knowledge_and_errors():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    assert suggest_spec(trial, knowledge=("feature",)).knowledge == "feature"
    with pytest.raises(ValueError, match="unknown knowledge 'pixels'"):
        suggest_spec(optuna.create_study().ask(), knowledge=("pixels",))


def test_spec_from_params_takes_only_its_genes_and_names_missing_ones():
    params = {**spec_to_params(KNOWN_DISTILLERS["kd"]), "lr": 0.1}
    assert spec_from_params(params) == KNOWN_DISTILLERS["kd"]
    del params["tau"]
    with pytest.raises(ValueError, match=r"lack the gene\(s\) \['tau'\]"):
        spec_from_params(params)


def _fake_objectives(spec: DistillerSpec) -> tuple[float, float, float]:
    """Cheap deterministic 3-objective function of the genes (no training)."""
    ops = sorted({*spec.transforms})
    return (
        len(ops) + (spec.distance != "kl"),
        abs(spec.weight - 1.0) + (spec.calibration != "focal"),
        float(spec.tau) + sum(not t.startswith(("softmax", "logsoftmax")) for t in spec.transforms),
    )


def test_nsga2_children_inherit_genes_from_their_parents():
    pop, gens = 8, 4
    sampler = optuna.samplers.NSGAIISampler(population_size=pop, seed=0)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)
    study.optimize(lambda t: _fake_objectives(suggest_spec(t)), n_trials=pop * gens)
    gen_key = "NSGAIISampler:generation"  # optuna 5: BaseGASampler._GENERATION_KEY for NSGAIISampler
    parent_key = "NSGAIISampler:parent:"  # study system attr: parent trial ids of generation g
    trials = {trial_id(t): t for t in study.trials}
    study_attrs = study_system_attrs(study)
    assert all(gen_key in t.system_attrs for t in study.trials)
    control = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # chance level
    inherited = by_chance = total = 0
    for t in study.trials:
        g = t.system_attrs[gen_key]
        if g == 0:
            continue
        parents = [trials[i] for i in study_attrs[parent_key + str(g)]]
        assert parents
        random_trial = control.ask()
        suggest_spec(random_trial)
        for gene in GENES:
            values = {p.params[gene] for p in parents}
            total += 1
            inherited += t.params[gene] in values
            by_chance += random_trial.params[gene] in values
    assert total >= 2 * pop * len(GENES)  # at least two child generations were formed
    assert inherited / total > 0.8, (inherited, total)
    assert inherited / total > by_chance / total + 0.2, (inherited, by_chance, total)
