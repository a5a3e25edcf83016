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
# PIL modes of more than 8 bits of grey, with the bit depth their container declares ("I" holds
# 16-bit PNG and TIFF grey when PIL widens it).
HIGH_BIT_DEPTH_MODES = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 16}
# Every error PIL raises for a file it cannot (or will not) decode.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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
        if image.mode in HIGH_BIT_DEPTH_MODES:
            return _to_8_bits(image, HIGH_BIT_DEPTH_MODES[image.mode])
        image = image.convert("L") if image.mode != "L" else image
        image.load()
        return image
    except FileNotFoundError:
        raise
    except IMAGE_ERRORS as error:  # a decompression bomb too: PIL refuses images of > 2 x MAX_IMAGE_PIXELS
        raise UnreadableImageError(f"cannot read image {path}: {error}") from None


def _to_8_bits(image: Image.Image, bits: int) -> Image.Image:
    """Scale grey values by the declared bit depth (PIL's own conversion clips them at 255)."""
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.round(np.clip(values, 0, 2**bits - 1) * (255.0 / (2**bits - 1))).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Three equal channels, for encoders trained on RGB ImageNet statistics."""
    return image.convert("RGB")


def grey_array(path: str | os.PathLike) -> np.ndarray:
    """An image as a uint8 [H, W] array."""
    return np.asarray(open_grey(path))
