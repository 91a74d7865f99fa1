"""The one model registry: a sorted table of builders, filled explicitly by the zoo modules."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its name, family (``cifar``, ``small``, ``torchvision``) and builder."""

    name: str
    family: str
    builder: Builder


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, family: str) -> Callable[[Builder], Builder]:
    """Decorator adding ``builder(num_classes, in_channels, **kwargs) -> nn.Module`` under ``name``.

    Args:
        name: Registry key (stable: it is stored in studies and checkpoints).
        family: Group shown by ``python -m trainers models``.

    Returns:
        The decorator, which returns the builder unchanged.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(builder: Builder) -> Builder:
        add_model(name, family, builder)
        return builder

    return decorator


def add_model(name: str, family: str, builder: Builder) -> None:
    """Register ``builder`` under ``name``; a duplicate name raises ``ValueError``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        old = _REGISTRY[name]
        raise ValueError(
            f"model {name!r} is already registered (family {old.family!r}); names must be unique"
        )
    _REGISTRY[name] = ModelEntry(name, family, builder)


def list_models(family: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally only one ``family``."""
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name raises ``ValueError`` listing the closest names."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; closest: {close}" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}. `python -m trainers models` lists all {len(_REGISTRY)} names"
        )
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> nn.Module:
    """Build a freshly initialised model (never downloads weights).

    Args:
        name: Registered name, see :func:`list_models`.
        num_classes: Output logits.
        in_channels: Input image channels (1 for Fashion-MNIST, 3 for CIFAR).
        **kwargs: Builder-specific options (e.g. ``image_size`` for ``mlp`` and ``vit_tiny``).

    Returns:
        The model, in training mode.

    Raises:
        ValueError: Unknown name or invalid ``num_classes`` / ``in_channels``.
    """
    entry = model_entry(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
    return entry.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
