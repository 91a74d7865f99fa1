"""The user's own models by import path, allowed imports only, and a pretrained teacher from a state_dict."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.trainers.test_teacher import write_fashion
from trainers import DataConfig, TeacherCheckpointError, TrainConfig, get_teacher
from trainers.__main__ import main
from trainers.config import ExperimentConfig
from trainers.models import ALLOW_ENV, ImportNotAllowedError, allow_imports, create_model
from trainers.output_cache import TeacherOutputCache
from trainers.run import load_parts
from trainers.teacher import state_dict_hash

MODELS = '''
import torch
from torch import nn


class Teacher(nn.Module):
    """A tiny CNN with the CIFAR-zoo signature forward(x, is_feat=False)."""

    def __init__(self, num_classes, in_channels, width=8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x, is_feat=False):
        f = torch.relu(self.conv(x))
        e = f.mean(dim=(2, 3))
        out = self.fc(e)
        return ([f, e], out) if is_feat else out


def build_teacher(num_classes, in_channels, width=8):
    return Teacher(num_classes, in_channels, width)


def build_student(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes))


def not_a_module(num_classes, in_channels):
    return {"weights": 1}


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(user_module_factory) -> str:
    """A models file outside kdzero, importable from the working directory; nothing allowed yet."""
    return user_module_factory(MODELS)


@pytest.fixture
def data_cfg(tmp_path) -> DataConfig:
    write_fashion(tmp_path / "fm")
    return DataConfig(root=str(tmp_path / "fm"), val_size=16)


def test_import_path_needs_an_allowance_naming_module_and_flag(user_module) -> None:
    with pytest.raises(ImportNotAllowedError, match=rf"{user_module}.*--allow-import {user_module}"):
        create_model(f"{user_module}:build_teacher", num_classes=10, in_channels=1)
    assert allow_imports([user_module]) == (user_module,)
    model = create_model(f"{user_module}:build_teacher", num_classes=7, in_channels=3, width=5)
    # conv 3x5x3x3 + 5 biases, linear 5x7 + 7 biases, written out from the model file's definition
    assert sum(p.numel() for p in model.parameters()) == 3 * 5 * 9 + 5 + 5 * 7 + 7
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 7)


def test_allowance_is_by_module_prefix_and_inherited_by_the_environment(user_module, monkeypatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, f"other, {user_module}.sub")
    with pytest.raises(ImportNotAllowedError):  # a sub-module allowance does not allow its parent
        create_model(f"{user_module}:build_student", num_classes=10, in_channels=1)
    monkeypatch.setenv(ALLOW_ENV, user_module)
    assert isinstance(create_model(f"{user_module}:build_student", num_classes=10, in_channels=1), nn.Module)
    import os

    allow_imports(["lab.models"])
    assert os.environ[ALLOW_ENV] == f"lab.models,{user_module}"  # what spawned workers inherit


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("missing_fn", "has no attribute 'missing_fn'"),
        ("NOT_CALLABLE", "is a int, not a callable builder"),
        ("not_a_module", "returned a dict, not a torch.nn.Module"),
    ],
)
def test_bad_builders_are_named(user_module, attr, message) -> None:
    allow_imports([user_module])
    with pytest.raises(ValueError, match=message):
        create_model(f"{user_module}:{attr}", num_classes=10, in_channels=1)


def test_missing_module_and_malformed_paths_are_named(monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    allow_imports(["no_such_pkg_kdzero"])
    with pytest.raises(ValueError, match="module 'no_such_pkg_kdzero.models' not found.*PYTHONPATH"):
        create_model("no_such_pkg_kdzero.models:build", num_classes=10, in_channels=1)
    for bad in ("pkg:", ":fn", "pkg:fn:x", "pkg-1:fn", "a b:fn"):
        with pytest.raises(ValueError, match="not a valid import path"):
            create_model(bad, num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="not a module name"):
        allow_imports(["bad prefix"])


def test_experiment_config_carries_models_kwargs_and_checkpoint(user_module) -> None:
    exp = ExperimentConfig(
        teacher=f"{user_module}:build_teacher",
        student="cnn_tiny",
        teacher_kwargs={"width": 4},
        teacher_checkpoint="t.pt",
    )
    assert ExperimentConfig.from_dict(exp.to_dict()) == exp
    assert exp.import_paths() == [f"{user_module}:build_teacher"]
    with pytest.raises(ValueError, match="teacher_kwargs must be a table"):
        ExperimentConfig(teacher_kwargs=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="student_kwargs must hold plain values"):
        ExperimentConfig(student_kwargs={"x": float("nan")})
    with pytest.raises(ValueError, match="not a valid import path"):
        ExperimentConfig(student="pkg:fn:extra")


def test_state_dict_hash_is_the_weights_identity() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    state = model.state_dict()
    same = {k: state[k].clone() for k in reversed(list(state))}  # another order, other storage
    assert state_dict_hash(state) == state_dict_hash(same)
    changed = {k: v.clone() for k, v in state.items()}
    changed["bias"][0] += 1e-6
    assert state_dict_hash(changed) != state_dict_hash(state)
    as_double = {k: v.double() for k, v in state.items()}
    assert state_dict_hash(as_double) != state_dict_hash(state)
    renamed = {"w": state["weight"], "bias": state["bias"]}
    assert state_dict_hash(renamed) != state_dict_hash(state)
    bn = nn.BatchNorm2d(3).state_dict()  # 0-dim num_batches_tracked, and bfloat16 tensors hash too
    assert state_dict_hash(bn) != state_dict_hash({**bn, "num_batches_tracked": torch.tensor(1)})
    half = {"w": torch.ones(2, dtype=torch.bfloat16)}
    assert state_dict_hash(half) != state_dict_hash({"w": torch.ones(2)})


def _trained(user_module: str) -> nn.Module:
    allow_imports([user_module])
    torch.manual_seed(3)
    return create_model(f"{user_module}:build_teacher", num_classes=10, in_channels=1, width=6)


def test_checkpoint_teacher_is_loaded_never_trained(tmp_path, data_cfg, user_module) -> None:
    model = _trained(user_module)
    path = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), path)

    def never(*_a, **_k):
        raise AssertionError("a checkpoint teacher must not be trained")

    name = f"{user_module}:build_teacher"
    teacher, meta = get_teacher(
        name,
        data_cfg,
        TrainConfig(epochs=1),
        cache_dir=tmp_path / "c",
        train_fn=never,
        checkpoint=path,
        model_kwargs={"width": 6},
    )
    assert meta["checkpoint"] and meta["identity"] == state_dict_hash(model.state_dict())
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(teacher(x), model.eval()(x))
    # accuracy measured once, by hand: argmax agreement with the labels of the validation split
    from trainers.data import load_dataset

    splits = load_dataset(data_cfg)
    xs = torch.stack([splits.val[i][0] for i in range(len(splits.val))])
    ys = torch.tensor([int(splits.val[i][1]) for i in range(len(splits.val))])
    assert meta["val_acc"] == pytest.approx(float((model(xs).argmax(1) == ys).float().mean()))
    # a changed file is a new identity: its outputs can never be served from the old cache
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    torch.save(model.state_dict(), path)
    _, meta2 = get_teacher(
        name,
        data_cfg,
        TrainConfig(epochs=1),
        cache_dir=tmp_path / "c",
        checkpoint=path,
        model_kwargs={"width": 6},
    )
    assert meta2["identity"] != meta["identity"]
    assert TeacherOutputCache.make_key(meta2["identity"], data_cfg) != TeacherOutputCache.make_key(
        meta["identity"], data_cfg
    )


def test_training_checkpoints_and_ddp_prefixes_are_unwrapped(tmp_path, data_cfg, user_module) -> None:
    model = _trained(user_module)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    _, meta = get_teacher(
        f"{user_module}:build_teacher",
        data_cfg,
        TrainConfig(epochs=1),
        cache_dir=tmp_path / "c",
        checkpoint=path,
        model_kwargs={"width": 6},
    )
    assert meta["identity"] == state_dict_hash(model.state_dict())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m, p: p.write_bytes(b"not a checkpoint"), "corrupt or unreadable"),
        (lambda m, p: torch.save(m, p), "holds pickled objects rather than a plain state_dict"),
        (lambda m, p: torch.save({"epoch": 3}, p), "not a state_dict of tensors"),
        (
            lambda m, p: torch.save({k: v for k, v in m.state_dict().items() if k != "fc.bias"}, p),
            r"missing keys \['fc.bias'\]",
        ),
        (
            lambda m, p: torch.save({**m.state_dict(), "extra": torch.zeros(1)}, p),
            r"unexpected keys \['extra'\]",
        ),
        (
            lambda m, p: torch.save(
                {**m.state_dict(), "fc.weight": torch.zeros(5, 6), "fc.bias": torch.zeros(5)}, p
            ),
            r"wrong class count",
        ),
        (lambda m, p: None, "does not exist"),
    ],
    ids=["corrupt", "pickled-model", "no-tensors", "missing-key", "unexpected-key", "class-count", "missing"],
)
def test_bad_checkpoints_are_refused_by_name(tmp_path, data_cfg, user_module, make, message) -> None:
    model = _trained(user_module)
    path = tmp_path / "bad.pt"
    make(model, path)
    with pytest.raises(TeacherCheckpointError, match=message):
        get_teacher(
            f"{user_module}:build_teacher",
            data_cfg,
            TrainConfig(epochs=1),
            cache_dir=tmp_path / "c",
            checkpoint=path,
            model_kwargs={"width": 6},
        )


def test_another_architecture_is_refused(tmp_path, data_cfg) -> None:
    torch.manual_seed(0)
    path = tmp_path / "resnet8.pt"
    torch.save(create_model("resnet8", 10, 1).state_dict(), path)
    with pytest.raises(TeacherCheckpointError, match="is not a 'cnn_tiny'"):
        get_teacher("cnn_tiny", data_cfg, TrainConfig(epochs=1), cache_dir=tmp_path / "c", checkpoint=path)


def test_load_parts_uses_the_checkpoint_and_keys_the_output_cache_on_its_identity(
    tmp_path, data_cfg, user_module
) -> None:
    model = _trained(user_module)
    path = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), path)
    exp = ExperimentConfig(
        dataset=data_cfg,
        teacher=f"{user_module}:build_teacher",
        teacher_kwargs={"width": 6},
        student=f"{user_module}:build_student",
        teacher_checkpoint=str(path),
        cache_dir=str(tmp_path / "c"),
        student_train=TrainConfig(epochs=1, batch_size=8),
    )
    parts = load_parts(exp)
    identity = state_dict_hash(model.state_dict())
    assert parts.teacher_meta["identity"] == identity
    assert parts.cache is not None
    assert parts.cache.dir.name == TeacherOutputCache.make_key(identity, exp.dataset)
    assert parts.teacher_shapes["logits"] == (10,) and parts.teacher_shapes["embedding"] == (6,)


def test_trainers_teacher_cli_reports_a_checkpoint(tmp_path, data_cfg, user_module, capsys, monkeypatch):
    model = _trained(user_module)
    monkeypatch.delenv(ALLOW_ENV, raising=False)  # named on the command line: allowed by it
    path = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), path)
    argv = ["teacher", "--model", f"{user_module}:build_teacher", "--checkpoint", str(path)]
    argv += ["--data-root", data_cfg.root, "--val-size", "16", "--cache-dir", str(tmp_path / "c")]
    code = main([*argv, "--kwargs", '{"width": 6}'])
    out = capsys.readouterr().out
    assert code == 0 and f"identity {state_dict_hash(model.state_dict())}" in out
    assert "seen the whole training split" in out
    code = main(argv)
    assert code == 2 and "shape mismatch" in capsys.readouterr().err  # width 8 by default, file has 6


def test_config_replace_revalidates(user_module) -> None:
    exp = ExperimentConfig()
    with pytest.raises(ValueError, match="experiment.teacher must be"):
        dataclasses.replace(exp, teacher="")
    assert Path(__file__).exists()


DYNAMIC = '''
import torch
from torch import nn


class Gated(nn.Module):
    """Data-dependent control flow: FX cannot trace it even with its extra arguments fixed."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x, is_feat=False):
        f = self.conv(x)
        if f.sum() > 0:
            f = torch.relu(f)
        return self.fc(f.mean(dim=(2, 3)))


def build(num_classes, in_channels):
    return Gated(num_classes, in_channels)
'''


def test_extra_forward_arguments_are_held_at_their_defaults(user_module) -> None:
    from trainers.knowledge import KnowledgeExtractor

    model = _trained(user_module).eval()
    ext = KnowledgeExtractor(model)
    assert ext.mode == "fx" and ext.nodes["logits"] == "fc"
    x = torch.rand(3, 1, 28, 28)
    got = ext(x)
    f = torch.relu(model.conv(x))  # written from the model file: feature, then its spatial mean
    torch.testing.assert_close(got["feature"], f)
    torch.testing.assert_close(got["embedding"], f.mean(dim=(2, 3)))
    torch.testing.assert_close(got["logits"], model(x))


def test_untraceable_models_fall_back_to_forward_hooks(user_module_factory, monkeypatch) -> None:
    from trainers.knowledge import KnowledgeExtractor, list_nodes, set_knowledge_nodes

    name = user_module_factory(DYNAMIC, "dyn_models")
    monkeypatch.setenv(ALLOW_ENV, name)
    torch.manual_seed(0)
    model = create_model(f"{name}:build", num_classes=5, in_channels=1).eval()
    ext = KnowledgeExtractor(model)
    assert ext.mode == "hooks"
    assert ext.shapes((1, 12, 12)) == {"logits": (5,), "embedding": (4,), "feature": (4, 12, 12)}
    x = torch.rand(2, 1, 12, 12)
    got = ext(x)
    f = model.conv(x)
    f = torch.relu(f) if f.sum() > 0 else f
    torch.testing.assert_close(got["embedding"], f.mean(dim=(2, 3)))  # the input of the last Linear
    torch.testing.assert_close(got["feature"], model.conv(x))  # the last 4-D module output before it
    torch.testing.assert_close(got["logits"], model(x))
    for _ in range(3):  # hooks live only during the extractor's forward: none pile up on the model
        KnowledgeExtractor(model)(x)
    assert not model.conv._forward_hooks and not model.fc._forward_pre_hooks
    assert [n for n, _ in list_nodes(model, (1, 12, 12))] == ["conv", "fc"]
    # a user-named module is read from its output
    set_knowledge_nodes(model, {"embedding": "conv"})
    named = KnowledgeExtractor(model)
    assert named.shapes((1, 12, 12))["embedding"] == (4,)  # (N, 4, 12, 12) averaged over space
    with pytest.raises(ValueError, match="'convv' is not a module of Gated.*closest: \\['conv'\\]"):
        KnowledgeExtractor(set_knowledge_nodes(model, {"feature": "convv"}))


def test_configured_nodes_reach_every_extractor_and_bad_names_are_named(user_module) -> None:
    from trainers.knowledge import KnowledgeExtractor, set_knowledge_nodes

    model = _trained(user_module)
    set_knowledge_nodes(model, {"feature": "conv"})
    ext = KnowledgeExtractor(model)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(ext(x)["feature"], model.conv(x))  # before the relu now
    with pytest.raises(ValueError, match="'cnv' is not a node of Teacher; closest: \\['conv'"):
        KnowledgeExtractor(set_knowledge_nodes(model, {"embedding": "cnv"}))
    with pytest.raises(ValueError, match="only 'embedding' and 'feature'"):
        set_knowledge_nodes(model, {"logits": "fc"})
    with pytest.raises(ValueError, match="experiment.knowledge.student must map"):
        ExperimentConfig(knowledge={"student": {"logit": "fc"}})


def test_nodes_cli_lists_nodes_and_the_automatic_choice(user_module, capsys, monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    assert main(["nodes", f"{user_module}:build_teacher", "--kwargs", '{"width": 3}']) == 0
    out = capsys.readouterr().out
    assert "conv                                     (3, 28, 28)" in out
    assert "embedding  mean" in out and "(3,)" in out


def test_several_teachers_sum_the_same_distiller_over_teachers(tmp_path, data_cfg, user_module) -> None:
    """Paper Eq. 3: the loss is the sum over teachers; each teacher has its own cache; gaps are averaged."""
    import torch.nn.functional as F

    from spaces import KNOWN_DISTILLERS
    from trainers.proxy import ProxyEvaluator
    from trainers.run import assemble_run

    paths = []
    for seed, width in ((1, 6), (2, 4)):
        torch.manual_seed(seed)
        allow_imports([user_module])
        model = create_model(f"{user_module}:build_teacher", num_classes=10, in_channels=1, width=width)
        paths.append(tmp_path / f"t{seed}.pt")
        torch.save(model.state_dict(), paths[-1])
    exp = ExperimentConfig(
        dataset=data_cfg,
        teachers=(
            {"model": f"{user_module}:build_teacher", "checkpoint": str(paths[0]), "kwargs": {"width": 6}},
            {"model": f"{user_module}:build_teacher", "checkpoint": str(paths[1]), "kwargs": {"width": 4}},
        ),
        teacher=f"{user_module}:build_teacher",
        student="cnn_tiny",
        cache_dir=str(tmp_path / "c"),
        student_train=TrainConfig(epochs=1, batch_size=8, amp=False),
    )
    assert ExperimentConfig.from_dict(exp.to_dict()) == exp
    parts = load_parts(exp)
    assert len(parts.teachers) == 2 and parts.caches[0].dir != parts.caches[1].dir
    assert parts.teacher_meta["identity"] == "+".join(m["identity"] for m in parts.teacher_metas)
    kd = KNOWN_DISTILLERS["kd"]
    trainer = assemble_run(exp, parts, kd)
    assert len(trainer.distillers) == 2
    batch = next(iter(trainer.train_batches(0)))
    _, loss, _ = trainer.batch_losses(batch)
    x = batch[0]
    with torch.no_grad():
        z_s = trainer.model(x)
        want = 0.0
        for teacher in parts.teachers:  # tau^2 * KL(p_t || p_s) at tau 4, weight 1, summed over teachers
            p_t = F.softmax(teacher(x) / 4, dim=1)
            want += 16 * float((p_t * (p_t.log() - F.log_softmax(z_s / 4, dim=1))).sum(1).mean())
    assert loss.item() == pytest.approx(want, rel=1e-4)
    evaluator = ProxyEvaluator(exp)
    student = evaluator.new_student(0)
    from trainers.metrics import evaluate_split

    each = [evaluate_split(student, parts.val, teacher=t) for t in parts.teachers]
    got = evaluator.fitness_metrics(student)
    assert got["sharpness_gap"] == pytest.approx(sum(e["sharpness_gap"] for e in each) / 2, rel=1e-5)
    assert got["cka_gap"] == pytest.approx(sum(e["cka_gap"] for e in each) / 2, rel=1e-4)


def test_teachers_config_errors_are_named() -> None:
    with pytest.raises(ValueError, match="teacher_checkpoint / teacher_kwargs must be left unset"):
        ExperimentConfig(teachers=({"model": "resnet8"},), teacher_checkpoint="x.pt")
    with pytest.raises(ValueError, match=r"teachers\[1\]: unknown key\(s\) \['ckpt'\]"):
        ExperimentConfig.from_dict({"teachers": [{"model": "resnet8"}, {"model": "cnn_tiny", "ckpt": "x"}]})
    with pytest.raises(ValueError, match="differs from the first of `teachers`"):
        ExperimentConfig.from_dict({"teacher": "cnn_tiny", "teachers": [{"model": "resnet8"}]})
    with pytest.raises(ValueError, match=r"teachers\[0\] needs a model"):
        ExperimentConfig.from_dict({"teachers": [{"checkpoint": "x.pt"}]})


def test_the_user_names_the_validation_split(tmp_path, data_cfg) -> None:
    """An index file fixes the validation split; bad files are refused naming the bad value."""
    import json as _json

    from trainers.data import load_dataset

    path = tmp_path / "val.json"
    path.write_text(_json.dumps([3, 0, 7, 11]))
    cfg = dataclasses.replace(data_cfg, val_indices=str(path))
    splits = load_dataset(cfg)
    assert splits.val_indices.tolist() == [0, 3, 7, 11]
    assert len(splits.train) == 48 - 4 and not set(splits.train_indices.tolist()) & {0, 3, 7, 11}
    (tmp_path / "val.txt").write_text("0, 3\n7 11\n")  # plain text works too
    same = load_dataset(dataclasses.replace(data_cfg, val_indices=str(tmp_path / "val.txt")))
    assert same.val_indices.tolist() == [0, 3, 7, 11]
    assert DataConfig.from_dict(cfg.to_dict()) == cfg and "val_indices" not in data_cfg.to_dict()
    for text, message in (
        ("[1, 1]", "distinct"),
        ("[0, 48]", "48 is not a position"),
        ("[0, 2.5]", "2.5"),
        ("zero", "not a list of integers"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_dataset(cfg)
    with pytest.raises(ValueError, match="cannot read"):
        load_dataset(dataclasses.replace(data_cfg, val_indices=str(tmp_path / "nope.json")))
