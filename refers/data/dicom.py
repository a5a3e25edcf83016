"""DICOM radiographs as 8-bit grey arrays (VinBigData's ``train/*.dicom``, or any user DICOM).

The pixel data go through the modality LUT (rescale slope / intercept), then the VOI LUT or the
window centre / width when the file has one, are inverted for MONOCHROME1 (where a high value means
dark), and are scaled linearly to 0-255 over their range. pydicom is imported only here, so that the
rest of the package works without it; compressed transfer syntaxes need an extra decoder package,
and a missing one is named in the error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from refers.base.errors import UnreadableImageError

# Transfer syntax UID -> the pip packages that decode it for pydicom 3.
_DECODERS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE (pydicom 3 also decodes it natively)
}


class MissingDicomDecoder(ImportError):
    """pydicom, or the decoder of a compressed transfer syntax, is not installed; says what to install."""


def import_pydicom():
    """The pydicom module, or :class:`MissingDicomDecoder` naming the package to install."""
    try:
        import pydicom
    except ImportError:
        raise MissingDicomDecoder("reading DICOM files needs pydicom: pip install pydicom") from None
    return pydicom


def _decoder_hint(dataset) -> str | None:
    uid = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "") or "")
    package = _DECODERS.get(uid)
    if package is None:
        return None
    name = getattr(dataset.file_meta.TransferSyntaxUID, "name", uid)
    return f"transfer syntax {name} ({uid}) needs a decoder: pip install {package}"


def read_dicom_uint8(path: str | os.PathLike) -> np.ndarray:
    """Read a DICOM image as uint8 [H, W] (first frame; colour images averaged to grey).

    Raises:
        FileNotFoundError: the file does not exist.
        MissingDicomDecoder: pydicom or the decoder of the file's transfer syntax is missing.
        UnreadableImageError: the file is not DICOM, has no pixel data, or is truncated.
    """
    pydicom = import_pydicom()
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        dataset = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, KeyError) as error:
        raise UnreadableImageError(f"cannot read DICOM {path}: {error}") from None
    if "PixelData" not in dataset:
        raise UnreadableImageError(f"cannot read DICOM {path}: no pixel data")
    try:
        pixels = dataset.pixel_array
    except (RuntimeError, NotImplementedError, ImportError) as error:
        hint = _decoder_hint(dataset)
        if hint and ("missing" in str(error).lower() or "plugin" in str(error).lower() or isinstance(error, ImportError)):
            raise MissingDicomDecoder(f"cannot decode {path}: {hint}") from None
        raise UnreadableImageError(f"cannot decode DICOM {path}: {error}") from None
    except (ValueError, EOFError, OSError, AttributeError, KeyError) as error:
        raise UnreadableImageError(f"cannot decode DICOM {path}: {error}") from None

    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if pixels.ndim == 3:  # colour: RGB samples last
        pixels = pixels.mean(axis=-1)
    values = apply_modality_lut(pixels, dataset)
    if "VOILUTSequence" in dataset or "WindowCenter" in dataset:
        values = apply_voi_lut(values, dataset, prefer_lut=True)
    values = np.asarray(values, dtype=np.float64)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = values.max() - values
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)
