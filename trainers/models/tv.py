"""Every torchvision classification model, by its torchvision name, built with ``weights=None``.

Names that clash with the CIFAR zoo (``vgg11``, ``vgg13``) are registered with a ``tv_`` prefix.
Most torchvision models expect ImageNet-sized inputs; the ResNets, MobileNets and similar convolutional
ones also run at 32x32 or 64x64, the vision transformers need their fixed ``image_size`` (224).
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from ._registry import add_model, list_models

# Options that make a model a plain ``x -> logits`` module (no auxiliary heads, no input re-mapping).
_EXTRA_KWARGS: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first ``nn.Conv2d`` for one taking ``in_channels`` inputs (all other settings kept)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels:
                    return model
                new = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                    child.padding_mode,
                )
                setattr(parent, child_name, new)
                return model
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d to adapt to in_channels={in_channels}")


def _tv_builder(tv_name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> nn.Module:
        extra = {**_EXTRA_KWARGS.get(tv_name, {}), **kwargs}
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **extra)
        if in_channels != 3:
            replace_first_conv(model, in_channels)
        return model

    return build


def register_torchvision_models() -> list[str]:
    """Register every torchvision classification model; returns the registry names used (called once)."""
    taken = set(list_models())
    names = []
    for tv_name in torchvision.models.list_models(module=torchvision.models):
        name = f"tv_{tv_name}" if tv_name in taken else tv_name
        add_model(name, "torchvision", _tv_builder(tv_name))
        names.append(name)
    return names
