"""Where things live: the project root and the default folders of every dataset.

Defaults resolve from the project root (the folder holding ``pyproject.toml``, or ``$REFERS_HOME``),
never from the working directory, so commands behave the same from ``Fine-tune/NIH_ChestX-ray/``
as from the top. Paths a user types stay relative to the working directory.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


def project_root() -> Path:
    """The REFERS project folder: ``$REFERS_HOME`` if set, else the checkout holding this package."""
    env = os.environ.get("REFERS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent
    for candidate in (here.parent, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "refers").is_dir():
            return candidate
    # Installed without a checkout: fall back to the working directory.
    return Path.cwd().resolve()


def data_dir() -> Path:
    """Raw downloads: ``Data/<Dataset>/``."""
    return project_root() / "Data"


def processed_dir() -> Path:
    """Lists, labels and ``dataset.yaml``: ``DataProcessed/<Dataset>/``."""
    return project_root() / "DataProcessed"


def results_dir() -> Path:
    """Prediction files of fine-tuned models: ``Results_of_fine-tuning/``."""
    return project_root() / "Results_of_fine-tuning"


@functools.lru_cache(maxsize=256)
def _resolved_root(root: str) -> Path:
    # Data loaders join millions of list paths onto a handful of roots: resolve each root once.
    return Path(root).resolve()


def safe_join(root: str | os.PathLike, relative: str) -> Path:
    """Join a path read from a list file onto its data root, refusing to escape the root.

    Raises:
        ValueError: if ``relative`` is absolute or climbs out of ``root`` (``..``).
    """
    root_path = _resolved_root(os.fspath(root))
    rel = relative.replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise ValueError(f"absolute path {relative!r} in a list file; list paths are relative to the data root")
    joined = (root_path / rel).resolve()
    if joined != root_path and root_path not in joined.parents:
        raise ValueError(f"path {relative!r} escapes the data root {root_path}")
    return joined
