"""Where things go: the default folders of every dataset, and finding a listed image on disk.

| what | where |
|---|---|
| raw downloads | ``Data/<Dataset>/`` |
| lists, labels, ``dataset.yaml`` | ``DataProcessed/<Dataset>/`` (MIMIC: ``DataProcessed/MIMIC/``) |
| prepared images (resized, converted) | ``Data/<Dataset>/prepared/`` |

A list line's path is relative to the dataset's *image root*: the folder recorded as
``image_root`` in the list folder's ``dataset.yaml``, else one of the dataset's official layouts
(:mod:`refers.data.image_roots`, the one resolver every command uses).
"""

from __future__ import annotations

import os
from pathlib import Path

from refers.base import paths
from refers.data.image_roots import PREPARED, image_roots, locate_image  # noqa: F401 (prepare's names for them)
from refers.data.lists import read_list
from refers.data.registry import DatasetSpec, get_dataset

# Image roots (dataset.yaml, the official layouts, finding a listed image) are the data layer's
# (refers.data.image_roots): one resolver for preparation, fine-tuning, pre-training and the packed cache.


def raw_dir(spec: DatasetSpec | str) -> Path:
    """``Data/<Dataset>/`` of the project."""
    spec = get_dataset(spec) if isinstance(spec, str) else spec
    return paths.data_dir() / spec.name


def lists_dir(spec: DatasetSpec | str) -> Path:
    """``DataProcessed/<Dataset>/`` of the project."""
    spec = get_dataset(spec) if isinstance(spec, str) else spec
    return paths.processed_dir() / spec.processed


def prepared_dir(spec: DatasetSpec | str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/prepared/``: where resized and converted images go."""
    return Path(root if root is not None else raw_dir(spec)) / PREPARED


def image_root_for(spec: DatasetSpec | str, list_dir: str | os.PathLike | None = None) -> Path:
    """The one image root of a list folder's lists (``refers prepare pack`` / ``check``).

    The first candidate of :mod:`refers.data.image_roots` (``image_root`` of
    ``<list_dir>/dataset.yaml``, then the dataset's official layouts under ``Data/<Dataset>/``) that
    holds the first listed image. When none does, the first candidate that is a folder (so that
    ``refers prepare check`` reports each missing image with its list line, as before).
    """
    from refers.base.errors import UserError

    spec = get_dataset(spec) if isinstance(spec, str) else spec
    folder = Path(list_dir) if list_dir is not None else lists_dir(spec)
    roots = image_roots(spec.name, folder)
    try:
        first = next((path for name in ("train.txt", "val.txt", "valid.txt", "test.txt") if (folder / name).is_file()
                      for path in read_list(folder / name).paths[:1]), None)
        return roots.root_for(first, f"the images of {folder}")
    except (UserError, ValueError):  # no root holds it, or a bad list: check reports each line
        return next((root for root in roots.roots if root.is_dir()), roots.roots[0])
