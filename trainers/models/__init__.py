"""Model zoo: one registry holding the CIFAR models of CRD/mdistiller, small 28x28 models and torchvision's.

Registration is explicit: the zoo modules below register their builders when this package imports them,
and torchvision's classification models are added by :func:`register_torchvision_models`.
"""

from . import resnet_cifar, shufflenet, small, vgg_mobilenet  # noqa: F401  (register the zoo)
from ._registry import (
    ALLOW_ENV,
    ImportNotAllowedError,
    ModelEntry,
    add_model,
    allow_imports,
    allowed_prefixes,
    check_model_name,
    create_model,
    import_allowed,
    is_import_path,
    list_models,
    model_entry,
    register_model,
    split_import_path,
)
from .tv import register_torchvision_models

register_torchvision_models()


def count_parameters(model: object) -> int:
    """Number of trainable parameters of an ``nn.Module``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)  # type: ignore[attr-defined]


__all__ = [
    "ALLOW_ENV",
    "ImportNotAllowedError",
    "ModelEntry",
    "add_model",
    "allow_imports",
    "allowed_prefixes",
    "check_model_name",
    "import_allowed",
    "is_import_path",
    "split_import_path",
    "count_parameters",
    "create_model",
    "list_models",
    "model_entry",
    "register_model",
]
