"""``refers prepare shenzhen``: the Shenzhen TB images -> ``train.txt`` / ``val.txt`` / ``test.txt``.

The label is in the file name: ``CHNCXR_0001_0.png`` is normal (line ``CHNCXR_0001_0.png 1 0``),
``CHNCXR_0327_1.png`` tuberculosis (``... 0 1``); the target is the second column. The image root is
the folder holding the PNGs (``ChinaSet_AllFiles/CXR_png/``, or Kaggle's ``images/images/``). Each
image is one patient; the ``patient`` split is stratified by label (~0.7 / 0.1 / 0.2 like the
original's 463 / 67 / 132); ``original`` keeps the published lists of ``--lists DIR`` line for line
(see :func:`refers.prepare.splits.keep_published_lists`; the "metadata" is the file names).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.prepare.common import PrepareError, Summary, ensure_new, ensure_separate, made_by, portable_path, write_dataset_yaml
from refers.base.synthetic import stamp_synthetic, synthetic_marker
from refers.prepare.layout import PREPARED
from refers.prepare.splits import SPLITS, group_split, keep_published_lists, write_split_lists

NAME = re.compile(r"^CHNCXR_(\d+)_([01])\.png$", re.IGNORECASE)


def find_image_folder(root: Path) -> tuple[Path, list[str]]:
    """The folder holding the most ``CHNCXR_NNNN_L.png`` files under ``root`` and their names (sorted)."""
    folders: Counter[Path] = Counter()
    for path in root.rglob("*.png"):
        if NAME.match(path.name) and PREPARED not in path.relative_to(root).parts:
            folders[path.parent] += 1
    if not folders:
        raise FileNotFoundError(f"no CHNCXR_NNNN_L.png images under {root} (expected ChinaSet_AllFiles/CXR_png/)")
    folder = folders.most_common(1)[0][0]
    return folder, sorted(p.name for p in folder.iterdir() if NAME.match(p.name))


def prepare_shenzhen(
    root: Path,
    out: Path,
    split: str = "patient",
    lists: Path | None = None,
    labels_from: str = "published",
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    force: bool = False,
    command: str = "refers prepare shenzhen",
) -> Summary:
    """Write the Shenzhen lists (see the module docstring)."""
    ensure_separate(out, root, "--out")
    ensure_new(out, [f"{s}.txt" for s in SPLITS], force)
    summary = Summary(f"shenzhen -> {out}")
    folder, names = find_image_folder(root)
    tb = np.array([int(NAME.match(n).group(2)) for n in names], dtype=np.int64)
    labels = np.stack([1 - tb, tb], axis=1).astype(np.float32)  # one-hot: normal, tuberculosis

    sources: list[Path] = []
    if split == "patient":
        assignment = group_split(names, ratios, seed, strata=tb.tolist())
    elif split == "original":
        if lists is None:
            raise PrepareError("--split original needs --lists DIR (train.txt, valid.txt or val.txt, test.txt)")
        assignment, written, sources, counts = keep_published_lists(
            out, lists, SPLITS, names, labels, ("normal", "tuberculosis"), f"the file names in {folder}", summary, take=labels_from)
        unlisted = int((assignment < 0).sum())
        if unlisted:
            summary.note(f"{unlisted} images are in none of the lists in {lists}")
        for k, name in enumerate(SPLITS):
            counts[name]["tuberculosis"] = int(tb[assignment == k].sum())
    else:
        raise PrepareError(f"unknown --split {split!r} for shenzhen (original or patient)")
    if split == "patient":
        written, counts = write_split_lists(
            out, names, labels, assignment, summary, describe=lambda chosen: {"tuberculosis": int(tb[chosen].sum())}
        )

    marker = synthetic_marker(root)
    stamp_synthetic(out, marker)
    write_dataset_yaml(out, {
        "dataset": "Shenzhen_Tuberculosis",
        "synthetic": marker is not None,
        "image_root": portable_path(folder, out),
        "classes": ["Tuberculosis"],
        "columns": ["normal", "tuberculosis"],
        "label_columns": 2,
        "label_style": "int",
        "metadata": {"file": None, "name": "the file names (CHNCXR_NNNN_L.png: L is the label)"},
        "split": split,
        "splits": counts,
        "made_by": made_by(command, sources, seed if split == "patient" else None, marker is not None, split=split,
                           ratios=[float(r) for r in ratios] if split == "patient" else None,
                           labels=labels_from if split == "original" else None),
    }, written)
    return summary
