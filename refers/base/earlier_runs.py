"""A new run never silently replaces an earlier one: the check both training stages make before work.

A run's folder may hold an earlier run of the same name (its checkpoints, metrics, logs). Starting
again there would overwrite them one by one as the new run goes, leaving a mix of both; instead the
command refuses, naming how to continue the earlier run (``--resume``, ``--resume auto``) or to
replace it (``--overwrite``, which removes the earlier run's files first, so no stale best
checkpoint or later-iteration checkpoint of the old run survives beside the new ones).

Results folders (tests, zero-shot, retrieval) are different: running again with the same inputs
replaces their own results, so they record what they were made from and refuse only other inputs
(``check_recorded_inputs``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterable, Mapping

from refers.base.errors import UserError
from refers.base.json_files import read_json
from refers.base.synthetic import SYNTHETIC_MARKER


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


def check_recorded_inputs(record: Path, inputs: Mapping[str, str], other: Mapping[str, str], *, results: str,
                          instead: str, overwrite: bool) -> None:
    """Refuse (exit 2) to replace results that ``record`` says were made from other inputs, unless ``overwrite``.

    Args:
        record: the JSON file the earlier results wrote beside themselves, before any other file; each
            input is recorded under its key as ``{"path": ..., "sha256": ...}``. No such file and no
            other file in its folder: nothing to protect.
        inputs: key -> sha256 of this run's inputs (e.g. ``"checkpoint"``, ``"test_list"``).
        other: key -> how the message names a different one (``"another checkpoint"``).
        results: what the folder holds, for the message (``"zero-shot results"``).
        instead: what else the user can do (``"write into another --results_dir or --method"``).
        overwrite: the user passed ``--overwrite``.

    An unreadable record, or one that lacks an input, is not provably of the same inputs, so it is
    refused too; the inputs are compared by their sha256 alone (the path is only named).
    """
    if overwrite:
        return
    if not (record.exists() or record.is_symlink()):  # a dangling link is a record that cannot be read
        found = [p.name for p in _visible(record.parent) if p.name != SYNTHETIC_MARKER]
        if found:  # e.g. the original's prediction files: what made them is unknown
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            raise UserError(f"{record.parent} already holds files ({found[0]}{more}) but no {record.name} that says "
                            f"what made them; {instead}, or replace them with --overwrite", 2)
        return
    try:
        recorded = read_json(record)
    except (OSError, ValueError):  # also a folder, a link loop, a byte that is not UTF-8
        recorded = None
    for key, sha in inputs.items():
        entry = recorded.get(key) if isinstance(recorded, dict) else None
        if isinstance(entry, dict) and entry.get("sha256") == sha:
            continue
        if isinstance(entry, dict):
            what = f"made with {other[key]} ({entry.get('path', 'its path not recorded')})"
        elif isinstance(recorded, dict) and key not in recorded:
            what = f"whose {record.name} does not record its {key.replace('_', ' ')}"
        else:
            what = f"with an unreadable {record.name}"
        raise UserError(f"{record.parent} holds {results} {what}; {instead}, or replace them with --overwrite", 2)


def clear_earlier_results(folder: Path, ours: Callable[[Path], bool]) -> tuple[list[Path], list[Path]]:
    """Remove the files of ``folder`` that ``ours`` says the command writes there (and the synthetic
    marker), the results that ``--overwrite`` replaces, before the new record is written: none of the
    earlier run's files then outlives an interrupted replacement beside the new record.

    Returns:
        (removed, left): the files removed, and the folder's other files, which stay (e.g. a user's
        notes), for the caller to name.
    """
    files = [p for p in _visible(folder) if p.is_file() or p.is_symlink()]
    removed = [p for p in files if p.name == SYNTHETIC_MARKER or ours(p)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed, [p for p in files if p not in removed]


def _visible(folder: Path) -> list[Path]:
    """What ``folder`` holds, sorted, without hidden names (an interrupted write's temporary, .DS_Store,
    .ipynb_checkpoints: no results, and not the user's to be told of); nothing when it is no folder."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
