"""Where things go: the default folders of every dataset, and finding a listed image on disk.

| what | where |
|---|---|
| raw downloads | ``Data/<Dataset>/`` |
| lists, labels, ``dataset.yaml`` | ``DataProcessed/<Dataset>/`` (MIMIC: ``DataProcessed/MIMIC/``) |
| prepared images (resized, converted) | ``Data/<Dataset>/prepared/`` |

A list line's path is relative to the dataset's *image root*: the folder recorded as
``image_root`` in the list folder's ``dataset.yaml``, else the default below.
"""

from __future__ import annotations

import os
from pathlib import Path

from refers.base import paths
from refers.data.registry import DatasetSpec, get_dataset
from refers.prepare.common import image_root_of

PREPARED = "prepared"

# Image root, relative to Data/<Dataset>/, when no dataset.yaml says otherwise. Candidates are tried in
# order (the first existing wins) to cover the known download layouts.
_DEFAULT_IMAGE_ROOTS = {
    "MIMIC-CXR": (PREPARED,),
    "NIH_ChestX-ray": (".",),
    "Shenzhen_Tuberculosis": ("ChinaSet_AllFiles/CXR_png", "images/images", "images", "CXR_png"),
    "COVID-19_Image_Data_Collection": ("images",),
    "VinBigData_Chest_X-ray": (PREPARED,),
}


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


def default_image_root(spec: DatasetSpec | str, root: str | os.PathLike | None = None) -> Path:
    """The image root of a dataset's raw folder when no ``dataset.yaml`` records one."""
    spec = get_dataset(spec) if isinstance(spec, str) else spec
    base = Path(root if root is not None else raw_dir(spec))
    candidates = [base / rel for rel in _DEFAULT_IMAGE_ROOTS.get(spec.name, (".",))]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def image_root_for(spec: DatasetSpec | str, list_dir: str | os.PathLike | None = None) -> Path:
    """The image root that a list folder's paths are relative to.

    ``image_root`` of ``<list_dir>/dataset.yaml`` when present (written by ``refers prepare``),
    else the dataset's default under ``Data/<Dataset>/``.
    """
    spec = get_dataset(spec) if isinstance(spec, str) else spec
    recorded = image_root_of(list_dir if list_dir is not None else lists_dir(spec))
    return recorded if recorded is not None else default_image_root(spec)


def locate_image(image_root: str | os.PathLike, relative: str) -> Path | None:
    """The file a list path names, or None when it is not on disk.

    Besides ``<root>/<relative>`` this accepts NIH's download layouts for a list path
    ``images_XXX/NAME.png``: ``images_XXX/images/NAME.png`` (the unpacked archives) and one flat
    ``images/NAME.png`` folder (the original README's layout). Never leaves the image root.
    """
    from refers.base.paths import safe_join

    direct = safe_join(image_root, relative)
    if direct.is_file():
        return direct
    parts = relative.replace("\\", "/").split("/")
    if len(parts) >= 2:
        for alternative in ("/".join([*parts[:-1], "images", parts[-1]]), "images/" + parts[-1]):
            candidate = safe_join(image_root, alternative)
            if candidate.is_file():
                return candidate
    return None
