"""The one model registry: zoo builders by name, and the user's own builders by import path.

A model name is either a zoo name (``python -m trainers models`` lists them) or an import path
``"package.module:callable"`` whose callable has the zoo builders' signature
``(num_classes, in_channels, **kwargs) -> nn.Module``. An import path is imported only when its module is
allowed in this process (:func:`allow_imports`, or ``KDZERO_ALLOW_IMPORT`` in the environment, which spawned
workers inherit): a worker that reads a configuration from storage never imports a module because the stored
configuration names it.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

Builder = Callable[..., nn.Module]

ALLOW_ENV = "KDZERO_ALLOW_IMPORT"
"""Environment variable holding allowed module prefixes, comma-separated (inherited by spawned workers)."""
_MODULE = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_IMPORT_PATH = re.compile(rf"^({_MODULE}):({_MODULE})$")
_PREFIX = re.compile(rf"^{_MODULE}$")


class ImportNotAllowedError(ValueError):
    """A model import path names a module this process was not allowed to import."""


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
        name: Registered name (see :func:`list_models`), or an allowed import path ``package.module:callable``
            (see :func:`allow_imports`).
        num_classes: Output logits.
        in_channels: Input image channels (1 for Fashion-MNIST, 3 for CIFAR).
        **kwargs: Builder-specific options (e.g. ``image_size`` for ``mlp`` and ``vit_tiny``).

    Returns:
        The model, in training mode.

    Raises:
        ValueError: Unknown name, import path not allowed or not importable, a builder that does not return an
            ``nn.Module``, or invalid ``num_classes`` / ``in_channels``.
    """
    builder = resolve_builder(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
    try:
        model = builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as exc:
        if not is_import_path(name):
            raise
        raise ValueError(
            f"model {name!r}: calling builder(num_classes=..., in_channels=..., **kwargs) failed "
            f"({exc}); a builder takes num_classes and in_channels as keyword arguments"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def is_import_path(name: object) -> bool:
    """Whether ``name`` is written as an import path ``package.module:callable`` (not a zoo name)."""
    return isinstance(name, str) and ":" in name


def split_import_path(name: str) -> tuple[str, str]:
    """``"pkg.mod:fn"`` -> ``("pkg.mod", "fn")``; a malformed path raises ``ValueError`` naming it."""
    match = _IMPORT_PATH.match(name)
    if match is None:
        raise ValueError(
            f"model {name!r} is not a valid import path; write 'package.module:callable' "
            "(e.g. 'my_models:build_teacher') or a zoo name from `python -m trainers models`"
        )
    return match.group(1), match.group(2)


def allowed_prefixes() -> tuple[str, ...]:
    """Module prefixes this process may import model builders from (``KDZERO_ALLOW_IMPORT``), sorted."""
    raw = os.environ.get(ALLOW_ENV, "")
    return tuple(sorted({p.strip() for p in raw.split(",") if p.strip()}))


def allow_imports(prefixes: Iterable[str]) -> tuple[str, ...]:
    """Allow model builders from modules under ``prefixes`` in this process and the processes it spawns.

    The allowance is kept in ``KDZERO_ALLOW_IMPORT`` so that spawned workers inherit it.

    Args:
        prefixes: Module names (``my_models``, ``lab.models``); a module is allowed when it equals a prefix or
            lies below one (``lab.models.resnet`` under ``lab.models``). Import paths are accepted too
            (their module is allowed).

    Returns:
        All allowed prefixes after the call.

    Raises:
        ValueError: A prefix is not a dotted module name (named in the message).
    """
    new = set(allowed_prefixes())
    for prefix in prefixes:
        module = split_import_path(prefix)[0] if is_import_path(prefix) else str(prefix).strip()
        if not _PREFIX.match(module):
            raise ValueError(
                f"--allow-import {prefix!r} is not a module name like 'my_models' or 'lab.models'"
            )
        new.add(module)
    os.environ[ALLOW_ENV] = ",".join(sorted(new))
    return tuple(sorted(new))


def import_allowed(module: str) -> bool:
    """Whether ``module`` equals or lies below an allowed prefix."""
    return any(module == p or module.startswith(p + ".") for p in allowed_prefixes())


def check_model_name(name: object) -> str:
    """Check a model name without building the model: a zoo name, or an allowed and importable import path.

    Returns:
        The name.

    Raises:
        ImportNotAllowedError: An import path whose module is not allowed (names the module and the flag).
        ValueError: Unknown zoo name, malformed path, missing module or attribute, or not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if is_import_path(name):
        resolve_builder(name)
    else:
        model_entry(name)
    return name


def resolve_builder(name: str) -> Builder:
    """The builder of a zoo name or of an allowed import path (imports the module).

    Raises:
        ImportNotAllowedError: The module of an import path is not allowed in this process.
        ValueError: Unknown zoo name, malformed path, module or attribute not found, or not callable.
    """
    if not is_import_path(name):
        return model_entry(name).builder
    module_name, attr = split_import_path(name)
    if not import_allowed(module_name):
        raise ImportNotAllowedError(
            f"model {name!r}: importing module {module_name!r} is not allowed in this process; "
            f"pass --allow-import {module_name} (or set {ALLOW_ENV}={module_name}), or give the config file "
            "that names it on the command line"
        )
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"model {name!r}: module {module_name!r} not found ({exc}); run from the folder that holds it "
            "or add that folder to PYTHONPATH"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ValueError(
            f"model {name!r}: importing {module_name!r} failed ({type(exc).__name__}: {exc})"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model {name!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model {name!r}: {attr!r} is a {type(obj).__name__}, not a callable builder")
    return obj  # type: ignore[return-value]
