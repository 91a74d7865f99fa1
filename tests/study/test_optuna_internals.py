"""Pin the private Optuna attributes kdzero relies on (all of them live in ``study/_optuna.py``)."""

import ast
from pathlib import Path

import optuna

from study import _optuna

ROOT = Path(__file__).resolve().parents[2]


def test_installed_optuna_still_provides_every_internal() -> None:
    problems = _optuna.check()
    assert not problems, "\n".join(problems)


def test_check_names_a_changed_internal(monkeypatch) -> None:
    monkeypatch.setattr(_optuna, "GENERATION_KEY", "NSGAIISampler:gen")
    problems = _optuna.check()
    assert any("_get_generation_key" in p and optuna.__version__ in p for p in problems), problems


def test_requirements_bound_optuna_to_the_checked_releases() -> None:
    line = next(ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln.startswith("optuna>"))
    lower, upper = (part.split("=")[-1].lstrip("<>") for part in line[len("optuna") :].split(","))
    version = tuple(int(x) for x in optuna.__version__.split(".")[:2])
    assert (
        tuple(int(x) for x in lower.split(".")[:2]) <= version < tuple(int(x) for x in upper.split(".")[:2])
    )


def test_no_other_module_touches_a_private_optuna_name() -> None:
    """Outside ``study/_optuna.py`` no package reads ``study._storage``, ``trial._trial_id`` or imports
    an underscore module of Optuna."""
    private = {"_storage", "_study_id", "_trial_id", "_backend", "_get_generation_key"}
    offenders = []
    for package in ("spaces", "trainers", "study", "analysis", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "_optuna.py" and path.parent.name == "study":
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in private:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optuna"):
                    if any(part.startswith("_") for part in node.module.split(".")):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}")
    assert not offenders, offenders
