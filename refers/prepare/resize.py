"""The prepared-images cache: resized JPEGs (MIMIC) and DICOMs converted to PNG (VinBigData).

Each image is written to a temporary file in its target folder and renamed into place, so a file
in the cache is always complete. A re-run (after a crash, or with other settings) keeps every
existing output whose size already matches what the settings ask for, and redoes the rest: resuming
needs no bookkeeping, and changing ``--short-side`` cannot leave stale sizes behind.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from refers.base.atomic import atomic_output
from refers.data.images import DICOM_SUFFIXES, open_grey
from refers.base.errors import UnreadableImageError
from refers.prepare.common import PrepareError, Summary, parallel_map

WRITTEN, KEPT, MISSING, UNREADABLE = "written", "kept", "missing", "unreadable"


@dataclass(frozen=True)
class ResizeSpec:
    """How to size an output image; never upscales.

    Attributes:
        short_side: shorter side in pixels (MIMIC: 320 like the original's ``-small.jpg``).
        scale: factor on both sides (VinBigData: 0.25).
        max_size: cap on the longer side.
        quality: JPEG quality.
    """

    short_side: int | None = None
    scale: float | None = None
    max_size: int | None = None
    quality: int = 95

    def target(self, width: int, height: int) -> tuple[int, int]:
        factor = 1.0
        if self.short_side:
            factor = min(factor, self.short_side / min(width, height))
        if self.scale:
            factor = min(factor, self.scale)
        if self.max_size:
            factor = min(factor, self.max_size / max(width, height))
        return max(1, round(width * factor)), max(1, round(height * factor))

    def min_side(self, width: int, height: int) -> int:
        """The shorter side of the target, for reduced-scale JPEG decoding."""
        return min(self.target(width, height))


def source_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        from refers.data.dicom import import_pydicom

        try:
            header = import_pydicom().dcmread(path, stop_before_pixels=True)
            return int(header.Columns), int(header.Rows)
        except (AttributeError, ValueError, OSError, EOFError, KeyError) as error:
            raise UnreadableImageError(f"cannot read DICOM header of {path}: {error}") from None
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from None


def _size_or_none(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError):
        return None


def save_atomic(image: Image.Image, target: Path, quality: int = 95) -> None:
    """Save through a temporary file in the same folder, renamed into place (:func:`atomic_output`)."""
    fmt = "PNG" if target.suffix.lower() == ".png" else "JPEG"
    with atomic_output(target) as tmp, open(tmp, "wb") as handle:
        if fmt == "JPEG":
            image.save(handle, fmt, quality=quality)
        else:
            image.save(handle, fmt, compress_level=3)


def prepare_image(job: tuple[str, str], spec: ResizeSpec) -> tuple[str, str, str]:
    """Make one cached image (a worker function: picklable, returns instead of raising).

    Args:
        job: (source path, target path).
        spec: output size.

    Returns:
        (status, source, message): status is ``written``, ``kept`` (already done), ``missing`` or
        ``unreadable``. A missing DICOM decoder raises :class:`~refers.data.dicom.MissingDicomDecoder`,
        which stops the run: it would fail the same way on every file.
    """
    source, target = Path(job[0]), Path(job[1])
    try:
        width, height = source_size(source)
        size = spec.target(width, height)
        if target.is_file() and _size_or_none(target) == size:
            return KEPT, job[0], ""
        image = open_grey(source, min_side=min(size))
        if image.size != size:
            image = image.resize(size, Image.BILINEAR)
        save_atomic(image, target, spec.quality)
    except FileNotFoundError as error:
        return MISSING, job[0], str(error)
    except UnreadableImageError as error:
        return UNREADABLE, job[0], str(error)
    return WRITTEN, job[0], ""


def prepare_images(
    jobs: Sequence[tuple[str, str]], spec: ResizeSpec, workers: int, skip_bad: bool, summary: Summary, desc: str
) -> set[str]:
    """Run :func:`prepare_image` over ``jobs`` in parallel; the sources that ended up with an output.

    Missing or unreadable sources are printed (the first 20) and stop the command with an error
    naming the first one, unless ``skip_bad`` (``--skip-bad-images``) leaves them out. Either way the
    images already done stay in the cache, so the next run resumes.
    """
    done: set[str] = set()
    bad: list[tuple[str, str, str]] = []
    for status, source, message in parallel_map(functools.partial(prepare_image, spec=spec), jobs, workers, desc):
        summary.add(f"images {status}")
        if status in (WRITTEN, KEPT):
            done.add(source)
        else:
            bad.append((source, status, message))
    if bad:
        bad.sort()
        for source, status, message in bad[:20]:
            print(f"  {status}: {message or source}", file=sys.stderr)
        if len(bad) > 20:
            print(f"  ... and {len(bad) - 20} more", file=sys.stderr)
        if not skip_bad:
            raise PrepareError(f"{len(bad)} image(s) missing or unreadable, first: {bad[0][2] or bad[0][0]}; "
                               "pass --skip-bad-images to leave them out of the lists")
        summary.note(f"left out {len(bad)} missing or unreadable image(s) (--skip-bad-images)")
    return done
