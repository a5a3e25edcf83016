"""Where a list's images are: the one image-root resolver of preparation, fine-tuning, pre-training
and the packed cache.

A list line's path is relative to an *image root*. The candidates, in order of precedence:

1. ``--data_root`` (``DATA.IMAGE_ROOT`` for pre-training) when given, alone: that folder, then the
   dataset's official layouts under it (so the download folder itself also works);
2. else the ``image_root`` recorded in the list folder's ``dataset.yaml`` (``refers prepare`` writes it);
3. then the dataset's official layouts under ``Data/<Dataset>/`` (:data:`OFFICIAL_LAYOUTS`).

A path is looked for under each candidate in turn (:meth:`ImageRoots.find`, with NIH's download
layouts, :func:`locate_image`); a reader that needs one root for a whole list takes the first
candidate that holds the list's first image (:meth:`ImageRoots.root_for`). When nothing is found the
error lists every place tried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from refers.base.errors import UserError
from refers.base.paths import data_dir, safe_join

DATASET_YAML = "dataset.yaml"
PREPARED = "prepared"  # Data/<Dataset>/prepared/: images that refers prepare resized or converted

# The folders, relative to a dataset's download folder, that its lists' paths can be relative to, in
# the order tried: what refers prepare writes first, then the official download layouts.
OFFICIAL_LAYOUTS: dict[str, tuple[str, ...]] = {
    "MIMIC-CXR": (PREPARED, "."),  # files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg
    "NIH_ChestX-ray": (PREPARED, ".", "images"),  # images_001/ ... images_012/ (or the README's one images/)
    "Shenzhen_Tuberculosis": (PREPARED, "ChinaSet_AllFiles/CXR_png", "images/images", "images", "CXR_png", "."),
    "COVID-19_Image_Data_Collection": (PREPARED, "images", "."),
    "VinBigData_Chest_X-ray": (PREPARED, "."),  # PNGs converted from train/*.dicom
}
_OTHER_LAYOUTS = (".", "images")  # a custom dataset, or a --data_root: the folder itself, the README's images/


def read_dataset_yaml(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``dataset.yaml`` of a list folder, or ``{}`` when there is none.

    Raises:
        UserError: the file is not a YAML mapping.
    """
    path = Path(folder) / DATASET_YAML
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a mapping")
    return data


def image_root_of(folder: str | os.PathLike) -> Path | None:
    """The image root recorded in a list folder's ``dataset.yaml`` (resolved), or None."""
    root = read_dataset_yaml(folder).get("image_root")
    if not root:
        return None
    root = Path(root)
    return root if root.is_absolute() else (Path(folder) / root).resolve()


def locate_image(image_root: str | os.PathLike, relative: str) -> Path | None:
    """The file a list path names under one root, or None when it is not on disk.

    Besides ``<root>/<relative>`` this accepts NIH's download layouts for a list path
    ``images_XXX/NAME.png``: ``images_XXX/images/NAME.png`` (the unpacked archives) and one flat
    ``images/NAME.png`` folder (the original README's layout). Never leaves the image root.

    Raises:
        ValueError: ``relative`` is absolute or leaves the root (:func:`~refers.base.paths.safe_join`).
    """
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


def _under(base: Path, layouts: tuple[str, ...]) -> list[Path]:
    return [base if layout == "." else base / layout for layout in layouts]


@dataclass(frozen=True)
class ImageRoots:
    """The candidate image roots of one list folder, in the order they are tried.

    Attributes:
        roots: the folders tried, in order (existing or not).
        origin: where they came from, for messages (``--data_root``, ``dataset.yaml``, ...).
    """

    roots: tuple[Path, ...]
    origin: str

    def tried(self) -> str:
        """Every place tried, for an error message."""
        return ", ".join(str(root) for root in self.roots) + f" ({self.origin})"

    def find(self, relative: str) -> Path | None:
        """The file ``relative`` names under the first root that holds it, or None.

        Raises:
            ValueError: ``relative`` is absolute or leaves a root.
        """
        for root in self.roots:
            found = locate_image(root, relative)
            if found is not None:
                return found
        return None

    def root_for(self, relative: str | None, what: str = "the images") -> Path:
        """The first root holding ``relative`` (a list's first image, or a study folder): the root
        of a whole list.

        Args:
            relative: a path from the list, or None (an empty list: the first root).
            what: what is being looked for, for the message.

        Raises:
            UserError: no root holds it (or there is no candidate); the message lists every place tried.
        """
        if relative is None and self.roots:
            return self.roots[0]
        for root in self.roots if relative is not None else ():
            try:
                if locate_image(root, relative) is not None or safe_join(root, relative).is_dir():
                    return root
            except ValueError as error:
                raise UserError(f"{what}: {error}") from None
        if not self.roots:
            raise UserError(f"{what}: no image folder to look in ({self.origin}); pass --data_root")
        raise UserError(f"{what} not found: {relative} is under none of {self.tried()}; "
                        "pass the image folder (--data_root, DATA.IMAGE_ROOT or --images)")


def image_roots(dataset: str | None, list_dir: str | os.PathLike | None = None,
                data_root: str | os.PathLike | None = None) -> ImageRoots:
    """The image roots of a dataset's lists, by the precedence in the module docstring.

    Args:
        dataset: a registry name or alias, or None / ``"custom"`` (no official layout).
        list_dir: the folder of the list files (its ``dataset.yaml`` is read).
        data_root: a folder given on the command line; when set, the only base searched.
    """
    from refers.data.registry import get_dataset

    name = get_dataset(dataset).name if dataset and dataset != "custom" else None
    layouts = OFFICIAL_LAYOUTS.get(name, ()) if name else ()
    if data_root:
        base = Path(data_root)
        candidates = _under(base, _OTHER_LAYOUTS[:1] + tuple(l for l in (*layouts, *_OTHER_LAYOUTS) if l != "."))
        origin = "--data_root and its official layouts" if layouts else "--data_root"
    else:
        candidates, origins = [], []
        recorded = image_root_of(list_dir) if list_dir is not None and Path(list_dir).is_dir() else None
        if recorded is not None:
            candidates += _under(recorded, _OTHER_LAYOUTS)
            origins.append(f"image_root of {Path(list_dir) / DATASET_YAML}")
        if name:
            candidates += _under(data_dir() / name, (*layouts, *(l for l in _OTHER_LAYOUTS if l not in layouts)))
            origins.append(f"the official layouts of {name}")
        origin = ", then ".join(origins) or "no dataset.yaml, no --data_root"
    unique = tuple(dict.fromkeys(candidates))
    return ImageRoots(unique, origin)
