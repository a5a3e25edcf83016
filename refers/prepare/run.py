"""One dataset command of ``refers prepare`` (mimic, nih, shenzhen, covid, vinbig, iu), with the command's defaults.

The command (:mod:`refers.cli.prepare`) reads the flags and comes here; the bench makes its data
here too, so both prepare a dataset the same way. Only the standard library is imported at the
top: the command line reads :data:`NIH_SHORT_SIDE` for its ``--help``.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Any

DATASET_COMMANDS = ("mimic", "nih", "shenzhen", "covid", "vinbig", "iu")
WITH_IMAGES = ("mimic", "nih", "vinbig", "iu")  # the commands that write prepared images (and take workers)

# ``refers prepare nih`` copies the images at this shorter side unless told otherwise (0: keep the originals).
NIH_SHORT_SIDE = 512


def prepare_dataset(action: str, root: str | os.PathLike | None = None, out: str | os.PathLike | None = None, *,
                    force: bool = False, command: str | None = None, workers: int | None = None,
                    images_out: str | os.PathLike | None = None, **options: Any):
    """Prepare one dataset's lists (and images) as ``refers prepare <action>`` does; the summary, unprinted.

    Args:
        action: one of :data:`DATASET_COMMANDS`.
        root: the dataset's download folder (default ``Data/<Dataset>/``).
        out: the list folder (default ``DataProcessed/<Dataset>/``).
        force: overwrite existing lists.
        command: the command line recorded in ``dataset.yaml`` (default ``refers prepare <action>``).
        workers: processes for image work (default: CPU cores, at most 8).
        images_out: prepared images (default ``<root>/prepared/``).
        options: the keywords of ``refers.prepare.<action>.prepare_<action>`` (``split``, ``seed``,
            ``skip_bad``, ...); for nih, ``short_side`` defaults to :data:`NIH_SHORT_SIDE`.

    Returns:
        The :class:`refers.prepare.common.Summary` of what was written.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        refers.prepare.common.PrepareError: bad input (the message names the file and line).
    """
    from refers.data.registry import get_dataset
    from refers.prepare import layout
    from refers.prepare.common import default_workers

    if action not in DATASET_COMMANDS:
        raise ValueError(f"unknown dataset command {action!r} (one of {', '.join(DATASET_COMMANDS)})")
    spec = get_dataset(action)
    root = Path(root) if root is not None else layout.raw_dir(spec)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} not found (put the download there or pass --root)")
    common: dict[str, Any] = {"root": root, "out": Path(out) if out is not None else layout.lists_dir(spec),
                              "force": force, "command": command or f"refers prepare {action}"}
    if action in WITH_IMAGES:
        common["images_out"] = Path(images_out) if images_out is not None else layout.prepared_dir(spec, root)
        common["workers"] = workers or default_workers()
    from refers.base.atomic import check_output_dir, remove_stale_temporaries

    check_output_dir(common["out"], "--out")  # before any work: a file, or an unwritable folder, in the way
    if "images_out" in common:
        check_output_dir(common["images_out"], "--images-out")
    if action == "nih":
        options["short_side"] = options.get("short_side", NIH_SHORT_SIDE) or None
    started = time.time()
    stale = remove_stale_temporaries(common["out"], started)
    if "images_out" in common:
        stale += remove_stale_temporaries(common["images_out"], started, recursive=True)
    prepare = getattr(importlib.import_module(f"refers.prepare.{action}"), f"prepare_{action}")
    summary = prepare(**common, **options)
    if stale:
        summary.note(f"removed {stale} temporary file(s) that an interrupted earlier run left behind")
    return summary
