"""KnowledgeExtractor values (checked against forward hooks) and FrozenTeacher's frozen-by-construction
contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers import FrozenTeacher, KnowledgeExtractor, create_model
from trainers.knowledge import find_knowledge_nodes


def _hooked(model: nn.Module, module: nn.Module, x: torch.Tensor, want_input: bool) -> torch.Tensor:
    seen = {}

    def hook(_m, inputs, output):
        seen["t"] = inputs[0] if want_input else output

    handle = module.register_forward_hook(hook)
    model(x)
    handle.remove()
    return seen["t"]


def test_values_match_forward_hooks_on_resnet8():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1).eval()
    x = torch.randn(3, 1, 28, 28)
    out = KnowledgeExtractor(model).eval()(x)
    feature = _hooked(model, model.layer3, x, want_input=False)  # last feature map (N, 64, 7, 7)
    embedding = _hooked(model, model.fc, x, want_input=True)  # classifier input (N, 64)
    torch.testing.assert_close(out["feature"], feature)
    torch.testing.assert_close(out["embedding"], embedding)
    torch.testing.assert_close(out["embedding"], feature.mean(dim=(2, 3)))  # global average pool
    torch.testing.assert_close(out["logits"], model(x))


def test_user_model_nodes_found_and_overridable():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
            self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 3))

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            h = torch.relu(self.conv2(h))
            return self.head(h.mean(dim=(2, 3)))

    net = Net()
    assert find_knowledge_nodes(net) == {"logits": "head.1", "embedding": "mean", "feature": "relu_1"}
    ext = KnowledgeExtractor(net, nodes={"feature": "relu"})
    assert ext.shapes((1, 8, 8)) == {"logits": (3,), "embedding": (6,), "feature": (4, 8, 8)}
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(ext(x)["feature"], torch.relu(net.conv1(x)))
    with pytest.raises(ValueError, match=r"'relu_9' is not a node.*closest"):
        KnowledgeExtractor(net, nodes={"feature": "relu_9"})
    with pytest.raises(ValueError, match=r"unknown knowledge name.*'logit'"):
        KnowledgeExtractor(net, nodes={"logit": "head.1"})


def test_training_through_the_extractor_trains_the_model():
    model = create_model("cnn_tiny", 10, 1)
    ext = KnowledgeExtractor(model)
    out = ext(torch.randn(4, 1, 28, 28))
    out["logits"].sum().backward()
    assert model.fc.weight.grad is not None and model.features[0].weight.grad is not None


def test_shapes_runs_no_real_computation():
    model = create_model("resnet8", 10, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    shapes = KnowledgeExtractor(model).shapes((1, 28, 28))
    assert shapes["feature"] == (64, 7, 7)
    for k, v in model.state_dict().items():  # BatchNorm running stats untouched
        torch.testing.assert_close(v, before[k])
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_frozen_teacher_is_frozen_by_construction():
    model = create_model("resnet8", 10, 1)
    teacher = FrozenTeacher(model)
    assert not teacher.training and not model.training
    teacher.train()
    assert not teacher.training and not model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    logits = teacher(x)
    assert not logits.requires_grad
    stats = model.bn1.running_mean.clone()
    teacher(torch.randn(8, 1, 28, 28) * 5 + 3)
    torch.testing.assert_close(model.bn1.running_mean, stats)  # eval mode: BN statistics do not move


def test_extractor_of_a_frozen_teacher_stays_frozen():
    model = create_model("cnn_tiny", 10, 1)
    ext = KnowledgeExtractor(FrozenTeacher(model))
    ext.train()
    assert not ext.training
    out = ext(torch.randn(2, 1, 28, 28, requires_grad=True))
    assert all(not t.requires_grad for t in out.values())
    assert ext.nodes == KnowledgeExtractor(model).nodes  # traced through the wrapper
