"""Writing what ``export`` and ``report`` produce: a user's file is replaced only with ``--force``.

Each file is written to a temporary file beside it and renamed over the target, so an interrupted or failed
write (a full disk) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def refuse_existing(paths: list[Path], force: bool, what: str) -> None:
    """Refuse to overwrite files that exist unless ``force``.

    Args:
        paths: The files about to be written.
        force: The user passed ``--force``.
        what: What is overwritten, for the message (``"the export"``, ``"it"``).

    Raises:
        ValueError: Naming the first existing file (and how many more) and suggesting ``--force``.
    """
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more export file(s))" if len(existing) > 1 else ""
        raise ValueError(
            f"{str(existing[0])!r} already exists{more}; pass --force to overwrite {what}, or choose "
            "another --out"
        )


def make_folder(folder: Path, what: str) -> None:
    """Create ``folder`` (and its parents) and check that it can be written.

    Raises:
        ValueError: One line naming the folder and the reason (a file in the way, no permission, read-only).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"cannot create {what} {str(folder)!r}: a file of that name is in the way") from None
    except OSError as exc:
        raise ValueError(f"cannot create {what} {str(folder)!r}: {_reason(exc)}") from None
    try:  # a probe, so that a read-only folder is refused before any work (access() says yes to root)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write into {what} {str(folder)!r}: {_reason(exc)}") from None


def write_file(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename.

    Args:
        path: The target (replaced when it exists).
        text: UTF-8 content.
        mode: Permission bits of the new file (default 0o644).

    Raises:
        ValueError: One line naming ``path`` and the reason.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode if mode is not None else 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise ValueError(f"cannot write {str(path)!r}: {_reason(exc)}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
