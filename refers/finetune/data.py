"""Fine-tuning data: which list files, where their images are and transforms.

Lists come from ``DataProcessed/<Dataset>/`` (``--list_dir``); ``--data_volume`` picks the fraction
files written by ``refers prepare`` (``train_<pct>_seed<k>.txt``, or ``train_<pct>.txt`` without
``--data_seed``). Images are found by the one image-root resolver (:mod:`refers.data.image_roots`):
``--data_root`` (and the dataset's official layouts under it) alone if given, else the
``image_root`` of the list folder's ``dataset.yaml``, then the official layouts under
``Data/<Dataset>/`` (``prepared/``, Shenzhen's ``ChinaSet_AllFiles/CXR_png/``, COVID-19's
``images/``, ...). Under each root a list path is found as
:func:`refers.data.image_roots.locate_image` does (NIH's download unpacks ``images_001/images/*.png``
while the lists say ``images_001/*.png``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from refers.base.errors import UserError as UserError
from refers.data.device_transforms import ORIGINAL_MIN_CROP_AREA, host_eval_transform, host_train_transform
from refers.base.errors import UnreadableImageError
from refers.data.images import open_grey
from refers.data.lists import ImageList, find_split_file, read_list
from refers.data.registry import get_dataset
from refers.base.synthetic import is_synthetic
from refers.base.paths import processed_dir
from refers.data.image_roots import ImageRoots, image_roots, read_dataset_yaml
from refers.data.lists import fraction_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSetup:
    """Where a dataset's lists and images are, and how list columns become targets.

    Attributes:
        dataset: registry name, or "custom".
        classes: output classes in head order.
        list_dir: folder of the list files.
        image_roots: the folders searched for images, in order (:func:`refers.data.image_roots.image_roots`;
            a plain sequence of folders is taken as they are).
        label_columns: list-file columns per line.
        target_columns: indices of the columns used as targets (binary datasets: the second one).
        synthetic: the data carries the ``SYNTHETIC.txt`` marker.
    """

    dataset: str
    classes: tuple[str, ...]
    list_dir: Path
    image_roots: ImageRoots
    label_columns: int
    target_columns: tuple[int, ...]
    synthetic: bool

    def __post_init__(self) -> None:
        if not isinstance(self.image_roots, ImageRoots):  # folders given as a plain sequence: searched in order
            object.__setattr__(self, "image_roots", ImageRoots(tuple(Path(r) for r in self.image_roots), "the folders given"))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def resolve_data(args: argparse.Namespace) -> DataSetup:
    """The data of a run from its flags (``--dataset``, ``--list_dir``, ``--data_root``, ``--classes``).

    Raises:
        UserError: unknown dataset, a ``--num_classes`` that does not fit, missing folders.
    """
    if args.dataset is None:
        raise UserError("--dataset is required (or run Fine-tune/<Dataset>/train.py)", exit_code=2)
    info: dict = {}
    if args.dataset == "custom":
        if not args.list_dir:
            raise UserError("--dataset custom needs --list_dir (and --data_root, --classes)", exit_code=2)
        list_dir = Path(args.list_dir)
        info = read_dataset_yaml(list_dir) if list_dir.is_dir() else {}
        names = args.classes.split(",") if args.classes else info.get("classes")
        if not names:
            if not args.num_classes:
                raise UserError("--dataset custom needs --classes (or --num_classes)", exit_code=2)
            names = [f"class_{i}" for i in range(args.num_classes)]
        classes = tuple(str(n).strip() for n in names)
        columns = None
    else:
        spec = get_dataset(args.dataset)
        list_dir = Path(args.list_dir) if args.list_dir else processed_dir() / spec.processed
        classes = spec.classes
        columns = spec.label_columns
    if args.num_classes is not None and args.num_classes != len(classes):
        kind = "binary: one output, the positive column of its two one-hot columns" if len(classes) == 1 else "classes"
        raise UserError(
            f"--num_classes {args.num_classes} does not fit {args.dataset}: it has {len(classes)} output(s) ({kind})", exit_code=2
        )
    if not list_dir.is_dir():
        raise UserError(f"list folder not found: {list_dir} (run refers prepare, or pass --list_dir)")
    roots = image_roots(args.dataset, list_dir, args.data_root)
    if columns is None:
        columns = 2 if len(classes) == 1 and info.get("label_columns", 2) == 2 else len(classes)
    targets = (1,) if len(classes) == 1 and columns == 2 else tuple(range(len(classes)))
    synthetic = is_synthetic(list_dir, *[r for r in roots.roots if r.exists()])
    return DataSetup(args.dataset, classes, list_dir, roots, columns, targets, synthetic)


def fraction_file(list_dir: Path, split: str, volume: int, seed: int | None) -> Path:
    """The list of ``split`` at ``volume`` percent: ``train.txt``, ``train_10.txt`` or ``train_10_seed1.txt``."""
    if volume == 100:
        return find_split_file(list_dir, split)
    name = fraction_name(split, volume, seed)
    path = list_dir / name
    if not path.is_file():
        raise UserError(
            f"no {name} in {list_dir}: make the {volume}% draw with refers prepare (fractions), "
            "or pick another --data_volume / --data_seed"
        )
    return path


def read_targets(setup: DataSetup, path: Path) -> ImageList:
    """Read a list file and keep the target columns (labels [N, num_classes]).

    Raises:
        UserError: the list holds no image.
    """
    binary = setup.label_columns == 2 and setup.num_classes == 1  # "negative positive" one-hot columns
    images = read_list(path, num_labels=setup.label_columns, one_hot=binary)
    if len(images) == 0:
        raise UserError(f"{path} holds no images")
    images.labels = np.ascontiguousarray(images.labels[:, list(setup.target_columns)])
    return images


def locate_images(images: ImageList, roots: ImageRoots, skip_missing: bool) -> tuple[list[Path], np.ndarray]:
    """Find every image of a list on disk (:meth:`ImageRoots.find`: the first root holding it).

    Returns:
        (files, kept): the files found and the list positions [K] they belong to (all positions
        unless ``skip_missing`` dropped some).

    Raises:
        UserError: a missing image (file and list line, and every place tried, in the message)
            without ``skip_missing``.
    """
    files: list[Path] = []
    kept: list[int] = []
    missing = 0
    for i, relative in enumerate(images.paths):
        try:
            found = roots.find(relative)
        except ValueError as error:  # the path escapes its root
            raise UserError(f"{images.source}:{images.line_numbers[i]}: {error}") from None
        if found is None:
            if not skip_missing:
                raise UserError(
                    f"image {relative} not found ({images.source}:{images.line_numbers[i]}); looked under {roots.tried()} "
                    "(--data_root sets the image folder; --skip_bad_images skips missing images)"
                )
            missing += 1
            continue
        files.append(found)
        kept.append(i)
    if missing:
        logger.warning("skipped %d missing image(s) of %s (--skip_bad_images)", missing, images.source)
    return files, np.asarray(kept, dtype=np.int64)


def train_transform(img_size: int, min_crop_area: float = ORIGINAL_MIN_CROP_AREA):
    """RandomResizedCrop + horizontal flip (the original's) on the grey image -> uint8 [1, S, S].

    The original's ToTensor + ImageNet normalisation to three channels happens on the device
    (:class:`refers.data.device_transforms.DeviceNormalize`, same values): a quarter of the bytes
    through the loader's queues and the host-to-device copy, a third of the resizing work.
    """
    return host_train_transform(img_size, min_crop_area)


def eval_transform(img_size: int):
    """Resize (shorter side) + centre crop (the original's) on the grey image -> uint8 [1, S, S];
    normalised on the device like :func:`train_transform`."""
    return host_eval_transform(img_size)


class ListDataset(Dataset):
    """Images of a list file with their targets: item ``i`` is (image [3, S, S], labels [C], i).

    With ``skip_bad`` an unreadable image is logged and replaced: by the next readable image in
    training (``replace=True``, so batches keep their size and DDP stays in step), by ``None`` in
    evaluation (the collate function drops it, so it gets no prediction line).
    """

    def __init__(self, files: Sequence[Path], labels: np.ndarray, transform, img_size: int,
                 where: Sequence[str] | None = None, skip_bad: bool = False, replace: bool = False):
        # numpy string arrays, not lists of Path/str objects: reading them in a forked loader
        # worker touches no reference counts, so no page of them is copied into each worker.
        self.files = np.asarray([str(f) for f in files], dtype=str)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        self.transform = transform
        self.img_size = img_size
        self.where = np.asarray(list(where), dtype=str) if where is not None else self.files
        self.skip_bad = skip_bad
        self.replace = replace

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        try:
            image = open_grey(self.files[index], min_side=self.img_size)
        except UnreadableImageError as error:
            raise UnreadableImageError(f"{error} ({self.where[index]})") from None
        return self.transform(image)

    def __getitem__(self, index: int):
        for attempt in range(len(self.files)):
            current = (index + attempt) % len(self.files)
            try:
                return self.load(current), self.labels[current], current
            except UnreadableImageError as error:
                if not self.skip_bad:
                    raise
                logger.warning("skipped unreadable image: %s", error)
                if not self.replace:
                    return None
        raise UnreadableImageError("no readable image in the list")


def collate_dropping_none(batch: list):
    """Default collation of the items that are not ``None`` (skipped images); None if nothing is left."""
    from torch.utils.data import default_collate

    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


def build_dataset(setup: DataSetup, list_file: Path, img_size: int, train: bool, skip_bad: bool,
                  packed: str | None = None, min_crop_area: float = ORIGINAL_MIN_CROP_AREA) -> tuple[ListDataset, ImageList]:
    """A :class:`ListDataset` of ``list_file`` (training or evaluation transforms) and the list read;
    with ``packed`` (a pack folder of ``refers prepare pack``), a dataset of the same items read from it.
    ``min_crop_area`` is the smallest random crop of the training transform."""
    images = read_targets(setup, list_file)
    if packed:
        from refers.data.packed_cache import PackError, PackedDataset, PackedImages

        transform = train_transform(img_size, min_crop_area) if train else eval_transform(img_size)
        try:
            return PackedDataset(PackedImages(packed), images.paths, images.labels, transform), images
        except PackError as error:
            raise UserError(f"--packed_cache: {error}") from None
    files, kept = locate_images(images, setup.image_roots, skip_bad)
    images = images.subset(kept) if len(kept) != len(images.paths) else images
    where = [f"{images.source}:{line}" for line in images.line_numbers]
    transform = train_transform(img_size, min_crop_area) if train else eval_transform(img_size)
    return ListDataset(files, images.labels, transform, img_size, where, skip_bad, replace=train), images


def default_workers(world_size: int) -> int:
    """Data-loading processes per rank: the CPUs left after one per rank, at most 8."""
    import os

    return max(0, min(8, (os.cpu_count() or 1) // world_size - 1))
