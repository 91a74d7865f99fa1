"""The README's bring-your-own-pair path, end to end on tiny data: the example's own models and a teacher
checkpoint, a search with 2 workers, export, and ``torchrun --nproc_per_node 2`` for one epoch on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_models"


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_own_models_checkpoint_search_export_and_torchrun(tmp_path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("KDZERO_ALLOW_IMPORT", "KDZERO_ROOT")},
        "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT)]),
        "KDZERO_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    # 1. the user's own teacher, trained by the user's own loop and saved as a plain state_dict
    proc = _run(
        [
            sys.executable,
            str(EXAMPLE / "train_teacher.py"),
            "--dataset",
            "digits",
            "--val-size",
            "300",
            "--epochs",
            "2",
            "--width",
            "8",
            "--out",
            str(tmp_path / "teacher.pt"),
        ],
        tmp_path,
        env,
    )
    assert "state_dict saved" in proc.stdout
    # 2. the example's config on digits, smaller: a short search with 2 worker processes
    config = (EXAMPLE / "config.toml").read_text()
    config = config.replace("teacher_kwargs = { width = 32 }", "teacher_kwargs = { width = 8 }")
    config = config.replace(
        'name = "fashion_mnist"\nval_size = 5000\nsubset = 0.1', 'name = "digits"\nval_size = 300'
    )
    config = config.replace("epochs = 40", "epochs = 4").replace("warmup_epochs = 2.0", "warmup_epochs = 0.5")
    config = config.replace("population = 8\ngenerations = 4", "population = 4\ngenerations = 2")
    config = config.replace("verify_top = 3", "verify_top = 1")
    config = config.replace("verify_seeds = 2", "verify_seeds = 1")
    config = config.replace(
        'teacher_checkpoint = "teacher.pt"', f'teacher_checkpoint = "{tmp_path / "teacher.pt"}"'
    )
    url = f"sqlite:///{tmp_path / 'own.db'}"
    config = config.replace('storage = "sqlite:///own_models.db"', f'storage = "{url}"')
    assert "digits" in config and "width = 8" in config and str(tmp_path) in config
    (tmp_path / "config.toml").write_text(config)
    proc = _run(
        [
            sys.executable,
            "-m",
            "study",
            "search",
            "--config",
            str(tmp_path / "config.toml"),
            "--n-trials",
            "6",
        ],
        ROOT,
        env,
    )
    assert "your checkpoint" in proc.stdout and "seen the whole training split" in proc.stdout
    study = optuna.load_study(study_name="own-models", storage=url)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 6
    assert study.user_attrs["kdzero_teacher"]["checkpoint"] is True
    # 3. export: the stored config names the user's module, so the export must be allowed to import it
    out = tmp_path / "export"
    export = [sys.executable, "-m", "analysis", "export", "--storage", url, "--study", "own-models"]
    denied = subprocess.run(
        [*export, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert denied.returncode == 2 and "--allow-import my_models" in denied.stderr and not out.exists()
    _run(
        [*export, "--out", str(out), "--allow-import", "my_models"],
        ROOT,
        env,
    )
    # 4. the exported script under torchrun, 2 CPU processes, one epoch; run from the user's folder
    run_env = {**env, "PYTHONPATH": str(EXAMPLE)}
    result = tmp_path / "run" / "result.json"
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(out / "train_student.py"),
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--no-progress",
            "--out",
            str(result),
        ],
        tmp_path,
        run_env,
    )
    rec = json.loads(result.read_text())
    assert rec["world_size"] == 2 and rec["epochs"] == 1 and 0.0 <= rec["test_accuracy"] <= 1.0
    state = torch.load(rec["weights"], weights_only=True)
    sys.path.insert(0, str(EXAMPLE))
    try:
        import my_models

        my_models.student(10, 1, width=8).load_state_dict(state)  # strict: the student's exact keys
    finally:
        sys.path.remove(str(EXAMPLE))
    if rec["distiller"] is not None:
        assert Path(rec["aligners"]).exists()
    assert Path(result.with_name("result.ckpt.pt")).exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
