"""Model zoo: every model builds, trains one step, and its knowledge has the shapes ``shapes()`` announces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers import KnowledgeExtractor, count_parameters, create_model, list_models
from trainers.models import model_entry, register_model

CIFAR = [
    "mobilenetv2",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "shufflenetv1",
    "shufflenetv2",
    "vgg8",
    "vgg11",
    "vgg13",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]
SMALL = ["cnn_tiny", "mlp", "vit_tiny"]


def _check_model(name: str, in_channels: int, size: int, classes: int) -> dict[str, tuple[int, ...]]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_channels=in_channels)
    ext = KnowledgeExtractor(model)
    predicted = ext.shapes((in_channels, size, size))
    x = torch.randn(2, in_channels, size, size)
    out = ext(x)
    assert set(out) == {"logits", "embedding", "feature"}
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == predicted
    assert predicted["logits"] == (classes,)
    assert len(predicted["embedding"]) == 1
    loss = out["logits"].logsumexp(1).mean() + out["feature"].pow(2).mean() + out["embedding"].pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the extractor's logits are exactly the model's own forward
    model.eval()
    ext.eval()
    with torch.no_grad():
        torch.testing.assert_close(ext(x)["logits"], model(x))
    return predicted


def test_registry_holds_the_paper_models_and_is_sorted():
    names = list_models()
    assert names == sorted(names)
    assert set(CIFAR + SMALL) <= set(names)
    assert {"resnet18", "mobilenet_v2", "tv_vgg11", "tv_vgg13"} <= set(names)
    assert model_entry("vgg11").family == "cifar" and model_entry("tv_vgg11").family == "torchvision"
    assert list_models("small") == SMALL


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_models_at_32x32x3(name):
    shapes = _check_model(name, 3, 32, 100)
    assert len(shapes["feature"]) == 3  # (C, H, W) before global pooling
    assert shapes["feature"][0] == shapes["embedding"][0]


@pytest.mark.parametrize("name", ["wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv2"])
def test_cifar_models_at_28x28x1(name):
    shapes = _check_model(name, 1, 28, 10)
    assert len(shapes["feature"]) == 3


def test_resnet_feature_sizes_follow_the_strides():
    # three stages, strides 1, 2, 2: 32 -> 8 and 28 -> 7; widths 64 (x1) and 256 (x4)
    ext = KnowledgeExtractor(create_model("resnet8", 10, 1))
    assert ext.shapes((1, 28, 28)) == {"logits": (10,), "embedding": (64,), "feature": (64, 7, 7)}
    ext = KnowledgeExtractor(create_model("resnet8x4", 100, 3))
    assert ext.shapes((3, 32, 32)) == {"logits": (100,), "embedding": (256,), "feature": (256, 8, 8)}


@pytest.mark.parametrize("name", SMALL)
def test_small_models_at_28x28x1(name):
    shapes = _check_model(name, 1, 28, 10)
    expected = {"cnn_tiny": (48, 7, 7), "mlp": (128,), "vit_tiny": (64, 7, 7)}[name]
    assert shapes["feature"] == expected


def test_cnn_tiny_is_about_9k_parameters_without_batchnorm():
    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    # conv 1->8, 8->16, 16->48 (3x3, with bias) and linear 48->10
    expected = (1 * 8 * 9 + 8) + (8 * 16 * 9 + 16) + (16 * 48 * 9 + 48) + (48 * 10 + 10)
    assert count_parameters(model) == expected == 8698
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_resnet8_parameter_count_matches_crd():
    # CRD's resnet8 on CIFAR-100 has 0.08M parameters; check the exact count by the formula
    def conv(cin, cout, k=3):
        return cin * cout * k * k

    def bn(c):
        return 2 * c

    stem = conv(3, 16) + bn(16)
    blocks = conv(16, 16) + bn(16) + conv(16, 16) + bn(16)
    blocks += conv(16, 32) + bn(32) + conv(32, 32) + bn(32) + conv(16, 32, 1) + bn(32)
    blocks += conv(32, 64) + bn(64) + conv(64, 64) + bn(64) + conv(32, 64, 1) + bn(64)
    assert count_parameters(create_model("resnet8", 100, 3)) == stem + blocks + 64 * 100 + 100


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("mobilenet_v2", 64)])
def test_torchvision_models(name, size):
    shapes = _check_model(name, 3, size, 7)
    assert len(shapes["feature"]) == 3


def test_torchvision_model_adapts_in_channels():
    model = create_model("resnet18", num_classes=5, in_channels=1)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_mlp_and_vit_take_an_image_size():
    assert create_model("mlp", 10, 3, image_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    ext = KnowledgeExtractor(create_model("vit_tiny", 10, 3, image_size=32))
    assert ext.shapes((3, 32, 32))["feature"] == (64, 8, 8)
    with pytest.raises(ValueError, match="multiple of patch"):
        create_model("vit_tiny", 10, 1, image_size=30)


def test_unknown_model_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet9'.*resnet8"):
        create_model("resnet9")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet8", "cifar")(lambda num_classes=10, in_channels=3: nn.Identity())


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": 0}, {"num_classes": 2.5}])
def test_bad_sizes_raise(kwargs):
    with pytest.raises(ValueError, match="must be an int >= 1"):
        create_model("cnn_tiny", **kwargs)
