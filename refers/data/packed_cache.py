"""An optional packed cache of resized images: one memory-mapped uint8 file, no decoding at all.

Decoding dominates data loading for chest X-rays (a 1024x1024 NIH PNG takes ~15 ms to inflate,
the crop and resize after it ~2 ms). The pack stores every image of a dataset's lists once,
already decoded, grey, and resized to a shorter side of ``size`` (never upscaled, aspect kept), so
a loader worker only slices a memory map: the operating system's page cache is shared by every
worker and every process on the machine, and nothing is copied per worker.

Layout of a pack folder::

    images.u8     all images, row-major uint8, one after another
    index.npz     paths (as written in the lists, sorted), offsets (int64), heights, widths (int32)
    pack.json     format, size, count, bytes, source lists and image root (written last: a pack
                  without it is incomplete and refused)
    SYNTHETIC.txt when the source images carry the synthetic marker

Trade-off: the training crop (RandomResizedCrop, down to 8% of the area) is taken from the
``size``-pixel image rather than the original; with ``size`` >= 2 x the crop size the crops that
matter are unchanged, smaller crops are upsampled instead of downsampled.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from refers.base.atomic import atomic_output, atomic_write_text
from refers.base.json_files import read_json

PACK_FORMAT = "refers-packed-images-v1"
DATA_FILE, INDEX_FILE, META_FILE = "images.u8", "index.npz", "pack.json"


class PackError(ValueError):
    """A pack that is missing, incomplete, or lacks an image asked for."""


def resized_grey(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode an image as grey at a shorter side of ``size`` (never upscaled): uint8 [H, W].

    JPEGs decode at a reduced scale first (DCT scaling); the exact size comes from an antialiased
    bilinear resize, as ``refers prepare`` resizes MIMIC.
    """
    from refers.data.images import open_grey

    image = open_grey(path, min_side=size)
    width, height = image.size
    factor = min(1.0, size / min(width, height))
    target = (max(1, round(width * factor)), max(1, round(height * factor)))
    if target != image.size:
        image = image.resize(target, Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _decode_job(job: tuple[int, str], size: int) -> tuple[int, bytes, int, int, str]:
    """Worker function: (row, file) -> (row, pixels, height, width, error message or "")."""
    row, path = job
    try:
        pixels = resized_grey(path, size)
    except OSError as error:  # missing or unreadable: reported by the caller with the path
        return row, b"", 0, 0, f"{path}: {error}"
    return row, pixels.tobytes(), int(pixels.shape[0]), int(pixels.shape[1]), ""


def list_paths(list_files: Iterable[str | os.PathLike]) -> list[str]:
    """The distinct image paths of some list files, sorted."""
    from refers.data.lists import read_list

    paths: set[str] = set()
    for list_file in list_files:
        paths.update(read_list(list_file).paths)
    return sorted(paths)


def build_packed_cache(list_files: Sequence[str | os.PathLike], image_root: str | os.PathLike, out: str | os.PathLike,
                       size: int = 256, workers: int = 1, progress: bool = True) -> Path:
    """Pack the images of ``list_files`` (found under ``image_root``) into ``out``.

    Args:
        list_files: list files in the original format (``path label ...`` per line).
        image_root: the folder their paths are relative to (the command finds it with
            :mod:`refers.data.image_roots`; NIH's ``images_XXX/images/`` layout is found as the
            fine-tuning loader finds it).
        out: the pack folder (created; an existing pack there is replaced only once the new one
            is complete).
        size: shorter side of the stored images.
        workers: decoding processes.

    Returns:
        ``out``.

    Raises:
        PackError: an image that is missing or unreadable (the first few are named).
    """
    from refers.base.synthetic import stamp_synthetic, synthetic_marker
    from refers.data.image_roots import locate_image
    from refers.data.parallel import parallel_map

    if size < 8:
        raise PackError(f"pack size must be at least 8 pixels, got {size}")
    image_root, out = Path(image_root), Path(out)
    paths = list_paths(list_files)
    if not paths:
        raise PackError(f"no images in {', '.join(str(p) for p in list_files)}")
    files, missing = [], []
    for relative in paths:
        found = locate_image(image_root, relative)
        (missing.append(relative) if found is None else files.append(str(found)))
    if missing:
        raise PackError(f"{len(missing)} image(s) not found under {image_root}, first: {', '.join(missing[:3])}")
    out.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(len(paths), dtype=np.int64)
    heights = np.zeros(len(paths), dtype=np.int32)
    widths = np.zeros(len(paths), dtype=np.int32)
    errors: list[str] = []
    written = 0
    # Both files are renamed into place together, once complete (np.savez wants a name ending in .npz).
    with atomic_output(out / DATA_FILE) as tmp_data, atomic_output(out / INDEX_FILE, suffix=".npz") as tmp_index:
        with open(tmp_data, "wb") as handle:
            jobs = list(enumerate(files))
            results = parallel_map(functools.partial(_decode_job, size=size), jobs, workers, "packing images") if progress \
                else map(functools.partial(_decode_job, size=size), jobs)
            for row, pixels, height, width, error in results:  # unordered: each row records its offset
                if error:
                    errors.append(error)
                    continue
                offsets[row], heights[row], widths[row] = written, height, width
                handle.write(pixels)
                written += len(pixels)
        if errors:
            raise PackError(f"{len(errors)} image(s) unreadable, first: {'; '.join(sorted(errors)[:3])}")
        np.savez(tmp_index, paths=np.asarray(paths), offsets=offsets, heights=heights, widths=widths)
        (out / META_FILE).unlink(missing_ok=True)  # the pack is incomplete from here until pack.json
    marker = synthetic_marker(image_root)
    stamp_synthetic(out, marker)
    meta = {"format": PACK_FORMAT, "size": size, "count": len(paths), "bytes": int(written),
            "lists": [str(Path(p).resolve()) for p in list_files], "image_root": str(image_root.resolve()),
            "synthetic": marker is not None}
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return out


class PackedImages:
    """Read access to a pack; cheap to pickle (the memory map opens lazily in each process).

    Holds no per-image Python objects: paths are one numpy string array (looked up by binary
    search), offsets and shapes numpy integer arrays, pixels a read-only memory map.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise PackError(f"{self.folder} holds no complete pack (no {META_FILE}); build it again")
        try:
            self.meta = read_json(meta_path)
        except ValueError as error:
            raise PackError(f"{meta_path}: unreadable ({error}); build the pack again") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != PACK_FORMAT:
            found = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise PackError(f"{meta_path}: not a pack of this version ({found!r})")
        with np.load(self.folder / INDEX_FILE, allow_pickle=False) as index:
            self.paths, self.offsets = index["paths"], index["offsets"]
            self.heights, self.widths = index["heights"], index["widths"]
        if len(self.paths) != self.meta["count"]:
            raise PackError(f"{self.folder}: index and {META_FILE} disagree; build the pack again")
        self._data: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    @property
    def data(self) -> np.memmap:
        if self._data is None:
            self._data = np.memmap(self.folder / DATA_FILE, dtype=np.uint8, mode="r")
        return self._data

    def rows(self, relative_paths: Sequence[str]) -> np.ndarray:
        """Row of each list path (int64 [N]).

        Raises:
            PackError: a path that is not in the pack (the first is named).
        """
        wanted = np.asarray(list(relative_paths))
        rows = np.searchsorted(self.paths, wanted)
        rows = np.minimum(rows, len(self.paths) - 1)
        bad = self.paths[rows] != wanted
        if bad.any():
            raise PackError(f"{int(bad.sum())} image(s) not in the pack {self.folder}, first: {wanted[bad][0]}")
        return rows.astype(np.int64)

    def array(self, row: int) -> np.ndarray:
        """The stored image of ``row``: uint8 [H, W] (a view of the memory map)."""
        start, height, width = int(self.offsets[row]), int(self.heights[row]), int(self.widths[row])
        return self.data[start:start + height * width].reshape(height, width)

    def image(self, row: int) -> Image.Image:
        """The stored image of ``row`` as a grey PIL image (what the transforms take)."""
        return Image.fromarray(np.ascontiguousarray(self.array(row)))


class PackedDataset:
    """The images of a list read from a pack: item ``i`` is (transform(image), labels[i], i).

    The same items as :class:`refers.finetune.data.ListDataset`, so the same loaders, collation
    and evaluation apply.
    """

    def __init__(self, pack: PackedImages, relative_paths: Sequence[str], labels: np.ndarray, transform):
        import torch

        self.pack = pack
        self.rows = pack.rows(relative_paths)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return self.transform(self.pack.image(int(self.rows[index]))), self.labels[index], index
