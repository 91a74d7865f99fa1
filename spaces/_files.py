"""Reading the user's spec and config files safely: size and nesting limits, UTF-8, errors that name the file.

Every spec file (``distiller.json``) and config file (``--config``, ``experiment.json``) is read through
:func:`read_data_file`, so a huge, deeply nested or binary file is refused up front with one line naming it,
never a ``RecursionError`` or a decode error without a file name. Nothing read is evaluated: JSON goes through
``json.loads``, TOML through ``tomllib.loads``. :func:`short_repr` caps what an error message quotes.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import tomllib

MAX_DATA_FILE_BYTES = 1_048_576
"""Largest spec or config file read (1 MiB; kdzero's own are under 4 KiB)."""
MAX_DATA_DEPTH = 32
"""Deepest nesting of tables / arrays (objects / lists) accepted in a spec or config file."""
QUOTE_CHARS = 200
"""Most characters of a user's value an error message quotes (see :func:`short_repr`)."""
FORMATS = ("JSON", "TOML")

# Strings and comments, whose brackets do not nest; TOML's multi-line strings first. Every alternative that
# opens also matches when unterminated (up to the end of the line or text), so the scan stays linear in the
# size of the text (patterns are cached by re).
_JSON_STRINGS = r'"(?:[^"\\]|\\[\s\S])*(?:"|\\?\Z)'
_TOML_STRINGS = (
    r'"""[\s\S]*?(?:"""|\Z)|\'\'\'[\s\S]*?(?:\'\'\'|\Z)'
    r'|"(?:[^"\\\n]|\\.)*(?:"|\\?(?=\n|\Z))|\'[^\'\n]*(?:\'|(?=\n|\Z))|#[^\n]*'
)
_NOT_BRACKETS = r"[^\[\]{}]+"
_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}


def short_repr(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with ``... (N chars)`` when longer.

    Args:
        value: The value an error message quotes.
        limit: Characters kept.

    Returns:
        The (shortened) representation.
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"


def text_depth(text: str, fmt: str = "JSON") -> int:
    """Deepest bracket nesting of JSON or TOML text, brackets inside strings and comments not counted.

    Runs without recursion, so it measures text that would make a parser recurse too deep.
    """
    strings = _TOML_STRINGS if fmt == "TOML" else _JSON_STRINGS
    brackets = re.sub(_NOT_BRACKETS, "", re.sub(strings, "", text))
    return max(0, max(itertools.accumulate(map(_DELTA.__getitem__, brackets)), default=0))


def value_depth(value: Any) -> int:
    """Deepest nesting of dicts and lists in a parsed value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_DATA_DEPTH:
            break
    return deepest


def _too_deep(source: str, depth: int | None = None) -> ValueError:
    levels = f"{depth}" if depth is not None else f"more than {MAX_DATA_DEPTH}"
    return ValueError(f"{source} is nested {levels} levels deep; the limit is {MAX_DATA_DEPTH} levels")


def parse_data_text(text: str, source: str, fmt: str = "JSON") -> Any:
    """Parse JSON or TOML text after checking its size and nesting; nothing is evaluated.

    Args:
        text: The text.
        source: How messages name it, e.g. ``"spec file 'a.json'"``.
        fmt: ``"JSON"`` or ``"TOML"``.

    Returns:
        The parsed value.

    Raises:
        ValueError: Over :data:`MAX_DATA_FILE_BYTES` characters, nested deeper than :data:`MAX_DATA_DEPTH`, or
            not valid ``fmt``; the message names ``source`` and quotes no more than a position.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {short_repr(fmt)}")
    if not isinstance(text, str):
        raise ValueError(f"{source} must be {fmt} text, got {type(text).__name__}")
    if len(text) > MAX_DATA_FILE_BYTES:
        raise ValueError(
            f"{source} is {len(text):,} characters; the limit is {MAX_DATA_FILE_BYTES:,} (1 MiB)"
        )
    depth = text_depth(text, fmt)
    if depth > MAX_DATA_DEPTH:
        raise _too_deep(source, depth)
    try:
        data = tomllib.loads(text) if fmt == "TOML" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{source} is not valid {fmt}: {exc}") from None
    except RecursionError:  # brackets the scan could not see: refuse all the same
        raise _too_deep(source) from None
    if value_depth(data) > MAX_DATA_DEPTH:  # TOML dotted keys nest without brackets
        raise _too_deep(source)
    return data


def read_data_file(path: str | Path, what: str = "file", fmt: str | None = None) -> Any:
    """Read a spec or config file: at most 1 MiB, UTF-8, nested at most 32 levels, valid JSON or TOML.

    Args:
        path: The file.
        what: What the file is, for messages (``"spec file"``, ``"config file"``).
        fmt: ``"JSON"`` or ``"TOML"``; ``None``: TOML for a ``.toml`` suffix, else JSON.

    Returns:
        The parsed value (any JSON / TOML value; callers check its shape).

    Raises:
        ValueError: One line naming the file: not found, a folder, unreadable, too large, not UTF-8,
            nested too deep, or not valid JSON / TOML.
    """
    p = Path(path)
    fmt = fmt or ("TOML" if p.suffix.lower() == ".toml" else "JSON")
    name = f"{what} {str(p)!r}"
    if not p.exists():
        raise ValueError(f"{name} not found")
    if p.is_dir():
        raise ValueError(f"{name} is a folder, not a {fmt} file")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_DATA_FILE_BYTES + 1)  # never more, whatever the size says (a pipe, /dev/zero)
    except OSError as exc:
        raise ValueError(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(raw) > MAX_DATA_FILE_BYTES:
        size = p.stat().st_size
        shown = f"{size:,} bytes" if size > MAX_DATA_FILE_BYTES else f"over {MAX_DATA_FILE_BYTES:,} bytes"
        raise ValueError(f"{name} is {shown}; the limit is {MAX_DATA_FILE_BYTES:,} bytes (1 MiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{name} is not UTF-8 {fmt} text (a binary file?): byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start} cannot be decoded"
        ) from None
    return parse_data_text(text.removeprefix("\ufeff"), name, fmt)
