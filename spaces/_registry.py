"""One explicit registry per kind of component (transform, distance, calibration).

Registry keys become Optuna categorical choices stored in a database, so they are listed in sorted order and
a name can be registered only once (torchvision ``register_model`` / ``list_models`` style, without
import-time decorators: each table is filled explicitly in its own module).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from ._files import short_repr

V = TypeVar("V")


class Registry(Mapping[str, V], Generic[V]):
    """A name -> component table; iteration and :meth:`names` are sorted; duplicate names raise.

    Args:
        kind: What the registry holds (``"transform"``, ``"distance"``...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, V] = {}

    def register(self, name: str, item: V) -> V:
        """Add ``item`` under ``name``.

        Args:
            name: Registry key (a stable identifier stored in study databases).
            item: The component.

        Returns:
            ``item``, unchanged.

        Raises:
            ValueError: If ``name`` is already registered or is not a non-empty identifier.
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} name must be a non-empty identifier, got {name!r}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._items))

    def get_or_raise(self, name: object, field: str | None = None) -> V:
        """Look ``name`` up; an unknown name raises ``ValueError`` listing the valid ones.

        Args:
            name: The name to look up.
            field: Field name to cite in the error message (defaults to the registry kind).

        Returns:
            The registered component.
        """
        if not isinstance(name, str) or name not in self._items:
            raise ValueError(
                f"{field or self.kind}: unknown {self.kind} {short_repr(name)}; valid choices are "
                f"{list(self.names())}"
            )
        return self._items[name]

    def __getitem__(self, name: str) -> V:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self.names())})"
