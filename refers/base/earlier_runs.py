"""A new run never silently replaces an earlier one: the check both training stages make before work.

A run's folder may hold an earlier run of the same name (its checkpoints, metrics, logs). Starting
again there would overwrite them one by one as the new run goes, leaving a mix of both; instead the
command refuses, naming how to continue the earlier run (``--resume``, ``--resume auto``) or to
replace it (``--overwrite``, which removes the earlier run's files first, so no stale best
checkpoint or later-iteration checkpoint of the old run survives beside the new ones).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from refers.base.errors import UserError


def existing(paths: Iterable[Path]) -> list[Path]:
    """The files, and non-empty folders, among ``paths`` (in their order)."""
    return [p for p in paths if p.is_file() or (p.is_dir() and any(p.iterdir()))]


def claim_run_folder(earlier: Iterable[Path], *, where: str, instead: str, overwrite: bool, remove: bool = True,
                     leftovers: Iterable[Path] = ()) -> list[Path]:
    """Refuse to start a run over ``earlier`` outputs, or (``overwrite``) remove them.

    Args:
        earlier: the files and folders an earlier run of the same name leaves (absent ones are ignored).
        where: the folder as the user named it (e.g. ``--output_dir runs/nih``), for the message.
        instead: what else the user can do, e.g. ``continue it with --resume``.
        overwrite: the user passed ``--overwrite``.
        remove: delete them (False on the ranks other than 0, which only check).
        leftovers: files removed with them (``overwrite``), never a reason to refuse.

    Returns:
        What was (or, with ``remove`` False, would be) removed.

    Raises:
        UserError: (exit 2) an earlier run is there and ``overwrite`` is off.
    """
    found = existing(earlier)
    if found and not overwrite:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise UserError(f"{where} already holds an earlier run ({found[0]}{more}); {instead}, "
                        "or replace it with --overwrite", 2)
    if not (found and overwrite):
        return []
    found = existing([*found, *(p for p in leftovers if p not in found)])
    if remove:
        for path in found:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return found
