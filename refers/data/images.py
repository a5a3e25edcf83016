"""Reading radiographs from disk: PNG, JPEG and DICOM, as 8-bit grey images.

Grey images stay one channel until the model needs three (:func:`to_rgb`), and JPEGs decode at a
reduced size when a smaller target is asked for (PIL draft mode: DCT scaling), which is most of
the cost of reading MIMIC's 2500x3000 JPEGs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from refers.base.errors import UnreadableImageError

DICOM_SUFFIXES = (".dcm", ".dicom")


def open_grey(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Open an image as 8-bit grey ('L').

    Args:
        path: PNG, JPEG or DICOM file.
        min_side: if given, a JPEG may be decoded at a reduced scale whose shorter side is still at
            least ``min_side`` (exact resizing is the transform's job).
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        from refers.data.dicom import read_dicom_uint8

        return Image.fromarray(read_dicom_uint8(path))
    try:
        image = Image.open(path)
        if min_side is not None and image.format == "JPEG":
            width, height = image.size
            scale = min(width, height) / float(min_side)
            if scale >= 2:
                image.draft("L", (int(width / scale) + 1, int(height / scale) + 1))
        image = image.convert("L") if image.mode != "L" else image
        image.load()
        return image
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Three equal channels, for encoders trained on RGB ImageNet statistics."""
    return image.convert("RGB")


def grey_array(path: str | os.PathLike) -> np.ndarray:
    """An image as a uint8 [H, W] array."""
    return np.asarray(open_grey(path))
