"""The prepared-images cache: resized JPEGs (MIMIC) and DICOMs converted to PNG (VinBigData).

Each image is written to a temporary file in its target folder and renamed into place, so a file
in the cache is always complete. A re-run (after a crash, or with other settings) keeps every
existing output whose size already matches what the settings ask for, and redoes the rest: resuming
needs no bookkeeping, and changing ``--short-side`` cannot leave stale sizes behind.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from refers.data.images import DICOM_SUFFIXES, IMAGE_ERRORS, open_grey
from refers.base.atomic import atomic_write_text
from refers.base.errors import UnreadableImageError
from refers.prepare.common import PrepareError, Summary, parallel_map

WRITTEN, KEPT, MISSING, UNREADABLE = "written", "kept", "missing", "unreadable"
FAILURES_FILE = "conversion_failures.tsv"  # beside the lists: every image that gave no output, and why


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
        from refers.data.dicom import dicom_size

        return dicom_size(path)
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise
    except IMAGE_ERRORS as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from None


def _size_or_none(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except IMAGE_ERRORS:
        return None


def save_atomic(image: Image.Image, target: Path, quality: int = 95) -> None:
    """Save through a temporary file in the same folder and ``os.replace`` it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if target.suffix.lower() == ".png" else "JPEG"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if fmt == "JPEG":
                image.save(handle, fmt, quality=quality)
            else:
                image.save(handle, fmt, compress_level=3)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def prepare_image(job: tuple[str, str], spec: ResizeSpec) -> tuple[str, str, str, str]:
    """Make one cached image (a worker function: picklable, returns instead of raising).

    Args:
        job: (source path, target path).
        spec: output size.

    Returns:
        (status, source, message, fix): status is ``written``, ``kept`` (already done), ``missing``,
        ``unreadable``, or for a DICOM the reason it gives no radiograph (see
        :data:`refers.data.dicom.REASONS`); ``fix`` says what to do about a failure.
    """
    from refers.data.dicom import DicomError

    source, target = Path(job[0]), Path(job[1])
    try:
        width, height = source_size(source)
        size = spec.target(width, height)
        if target.is_file() and _size_or_none(target) == size:
            return KEPT, job[0], "", ""
        image = open_grey(source, min_side=min(size))
        if image.size != size:
            image = image.resize(size, Image.BILINEAR)
        save_atomic(image, target, spec.quality)
    except FileNotFoundError as error:
        return MISSING, job[0], str(error), "check --root: the file named in the metadata is not there"
    except DicomError as error:
        return error.reason, job[0], error.detail, error.fix
    except UnreadableImageError as error:
        return UNREADABLE, job[0], str(error), "re-download or re-export it, or leave it out (--skip-bad-images)"
    return WRITTEN, job[0], "", ""


@dataclass(frozen=True)
class Failure:
    """A source image that gave no output: why, and what to do."""

    source: str
    reason: str
    message: str
    fix: str


def prepare_images(
    jobs: Sequence[tuple[str, str]], spec: ResizeSpec, workers: int, skip_bad: bool, summary: Summary, desc: str,
    failures_file: Path | None = None,
) -> set[str]:
    """Run :func:`prepare_image` over ``jobs`` in parallel; the sources that ended up with an output.

    Every job runs, whatever fails: the failures are then printed grouped by reason, with what to do,
    and written to ``failures_file`` (a TSV: file, reason, what to do, detail) when given; an older
    failures file is removed when nothing failed. Failures stop the command with an error unless
    ``skip_bad`` (``--skip-bad-images``) leaves them out of the lists. Either way the images already
    done stay in the cache, so the next run converts only what is still missing.
    """
    done: set[str] = set()
    failures: list[Failure] = []
    for status, source, message, fix in parallel_map(functools.partial(prepare_image, spec=spec), jobs, workers, desc):
        if status in (WRITTEN, KEPT):
            summary.add(f"images {status}")
            done.add(source)
        else:
            summary.add("images failed")
            failures.append(Failure(source, status, message, fix))
    report_failures(failures, failures_file, skip_bad, summary)
    return done


def report_failures(failures: list[Failure], failures_file: Path | None, skip_bad: bool, summary: Summary) -> None:
    """Print the failures grouped by reason, write them to ``failures_file``, stop unless ``skip_bad``."""
    if failures_file is not None:
        if failures:
            rows = ["file\treason\twhat to do\tdetail"]
            rows += [f"{f.source}\t{f.reason}\t{f.fix}\t{' '.join(f.message.split())}" for f in sorted(failures, key=lambda f: f.source)]
            atomic_write_text(failures_file, "\n".join(rows) + "\n")
        elif failures_file.is_file():
            failures_file.unlink()
    if not failures:
        return
    groups: dict[str, list[Failure]] = {}
    for failure in sorted(failures, key=lambda f: f.source):
        groups.setdefault(failure.reason, []).append(failure)
    for reason, members in sorted(groups.items()):
        print(f"  {len(members)} {reason}: {members[0].fix}", file=sys.stderr)
        for failure in members[:10]:
            print(f"    {failure.source}: {failure.message}", file=sys.stderr)
        if len(members) > 10:
            print(f"    ... and {len(members) - 10} more", file=sys.stderr)
    where = f"; every one is listed in {failures_file}" if failures_file is not None else ""
    counts = ", ".join(f"{len(members)} {reason}" for reason, members in sorted(groups.items()))
    if not skip_bad:
        raise PrepareError(f"{len(failures)} image(s) gave no output ({counts}){where}; the others were converted. "
                           "Pass --skip-bad-images to leave these out of the lists")
    summary.note(f"left out {len(failures)} image(s) that gave no output ({counts}) (--skip-bad-images){where}")
