"""Where things live: the project root and the default folders of every dataset.

Defaults resolve from the project root (the folder holding ``pyproject.toml``, or ``$REFERS_HOME``),
never from the working directory, so commands behave the same from ``Fine-tune/NIH_ChestX-ray/``
as from the top. Paths a user types stay relative to the working directory.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from refers.base.errors import UserError

# One folder or file name that stays where it is joined: letters, digits, ``_``, ``.``, ``-``.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
SAFE_NAME_RULE = "one folder name of letters, digits, '_', '.' or '-'"  # what a refusal asks for


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


def is_safe_name(name: str) -> bool:
    """Whether ``name`` is one path component of safe characters (not ``.`` or ``..``), so that
    joining it onto a folder stays in that folder on every platform."""
    return bool(_SAFE_NAME.fullmatch(name)) and name not in (".", "..")


def check_method(method: str) -> str:
    """Refuse (exit 2) a ``--method`` that is not one folder name: every command joins it onto a results folder."""
    if not is_safe_name(method):
        raise UserError(f"--method {method!r} must be {SAFE_NAME_RULE}", 2)
    return method


@functools.lru_cache(maxsize=256)
def _resolved_root(root: str) -> Path:
    # Data loaders join millions of list paths onto a handful of roots: resolve each root once.
    return Path(root).resolve()


def _resolve_stepwise(root_path: Path, rel: str, folders: dict[str, Path], leaf: bool = True) -> Path:
    """``(root_path / rel).resolve()``, one component at a time, over the memo ``folders``.

    Resolving ``a/b/c`` follows ``a``, then ``a/b``, then ``a/b/c`` (each a link or not), so a
    folder's result serves every path below it: one ``lstat`` per new component. Folders are
    memoised, files (``leaf``) are not.
    """
    if not leaf and rel in folders:
        return folders[rel]
    head, _, name = rel.rpartition("/")
    if name in ("", ".", ".."):
        resolved = (root_path / rel).resolve()
    else:
        resolved = (_resolve_stepwise(root_path, head, folders, leaf=False) if head else root_path) / name
        if resolved.is_symlink():
            resolved = resolved.resolve()
    if not leaf:
        folders[rel] = resolved
    return resolved


def safe_join(root: str | os.PathLike, relative: str, folders: dict[str, Path] | None = None) -> Path:
    """Join a path read from a list file onto its data root, refusing to escape the root.

    The joined path is resolved (``..`` and symbolic links followed) before it is checked.

    Args:
        folders: a memo (an empty dict to start) that the caller keeps for this one ``root`` while
            it reads one list: each folder is resolved once, the same result as resolving every
            path in full, which made reading MIMIC's study index about ten times slower.

    Raises:
        ValueError: if ``relative`` is absolute or climbs out of ``root`` (``..``).
    """
    root_path = _resolved_root(os.fspath(root))
    rel = relative.replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise ValueError(f"absolute path {relative!r} in a list file; list paths are relative to the data root")
    joined = (root_path / rel).resolve() if folders is None else _resolve_stepwise(root_path, rel, folders)
    # Both are resolved and normalised: being under the root is a prefix test on the strings
    # (cheaper than ``joined.parents``, which mattered at 377,110 MIMIC images).
    inside, top = os.fspath(joined), os.fspath(root_path)
    if inside != top and not inside.startswith(top if top.endswith(os.sep) else top + os.sep):
        raise ValueError(f"path {relative!r} escapes the data root {root_path}")
    return joined
