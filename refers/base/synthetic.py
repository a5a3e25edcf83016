"""The synthetic-data marker: a ``SYNTHETIC.txt`` in a folder says its data (or what was made from it) is synthetic.

Everything computed from synthetic data carries the marker on, so that no number from it can pass
for a result on real radiographs.
"""

from __future__ import annotations

import os
from pathlib import Path

from refers.base.atomic import atomic_write_text

SYNTHETIC_MARKER = "SYNTHETIC.txt"


def synthetic_marker(path: str | os.PathLike) -> Path | None:
    """The ``SYNTHETIC.txt`` of ``path`` or of a folder above it, or None for real data."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if (folder / SYNTHETIC_MARKER).is_file():
            return folder / SYNTHETIC_MARKER
    return None


def is_synthetic(*paths: str | os.PathLike | None) -> bool:
    """True when any of ``paths`` (a data folder, or a file below one) carries the marker."""
    return any(synthetic_marker(path) is not None for path in paths if path)


def mark_synthetic(folder: str | os.PathLike, text: str) -> None:
    """Put the marker, saying ``text``, into ``folder``."""
    atomic_write_text(Path(folder) / SYNTHETIC_MARKER, text if text.endswith("\n") else text + "\n")


def stamp_synthetic(folder: str | os.PathLike, marker: Path | None) -> None:
    """Copy a source's marker into an output folder (nothing when ``marker`` is None)."""
    if marker is not None:
        mark_synthetic(folder, marker.read_text(encoding="utf-8", errors="replace"))
