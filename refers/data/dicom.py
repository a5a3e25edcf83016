"""DICOM radiographs as 8-bit grey arrays (VinBigData's ``train/*.dicom``, or any user DICOM).

The pixel data go through the modality LUT (rescale slope / intercept), then the VOI LUT or the
window centre / width when the file has one, are inverted for MONOCHROME1 (where a high value means
dark), and are scaled linearly to 0-255 over their range. pydicom decodes every bit depth and sign
(12 bits stored in 16, signed data, JPEG 2000 files whose codestream disagrees with the header's
pixel representation). pydicom is imported only here, so that the rest of the package works
without it.

A file that gives no radiograph raises :class:`DicomError`, whose ``reason`` groups it (a decoder
that is really absent, a corrupt or truncated file, a file that is not a single-frame greyscale
image, a transfer syntax pydicom cannot decode at all) and whose ``fix`` says what to do. A decoder
counts as missing only when pydicom reports it unavailable; when it is installed and the file still
fails, the file is corrupt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from refers.base.errors import UnreadableImageError

MISSING_DECODER = "missing decoder"
CORRUPT = "corrupt or truncated"
NOT_AN_IMAGE = "not a greyscale radiograph"
UNSUPPORTED = "unsupported transfer syntax"
REASONS = (MISSING_DECODER, CORRUPT, NOT_AN_IMAGE, UNSUPPORTED)

# Transfer syntax UID -> the pip packages (the `dicom` extra) that decode it for pydicom 3.
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
_GREY = ("MONOCHROME1", "MONOCHROME2")
_SKIP = "leave it out (--skip-bad-images)"


class DicomError(UnreadableImageError):
    """A DICOM file that gives no radiograph.

    Attributes:
        path: the file.
        reason: one of :data:`REASONS`.
        fix: what to do about it.
    """

    def __init__(self, path: str | os.PathLike, reason: str, detail: str, fix: str):
        self.path, self.reason, self.detail, self.fix = str(path), reason, detail, fix
        super().__init__(f"cannot read DICOM {path}: {reason} ({detail}); {fix}")


class MissingDicomDecoder(DicomError):
    """pydicom, or the decoder of a compressed transfer syntax, is not installed; says what to install."""

    def __init__(self, path: str | os.PathLike, detail: str, packages: str):
        super().__init__(path, MISSING_DECODER, detail, f"pip install {packages}")


def import_pydicom(path: str | os.PathLike = "") -> Any:
    """The pydicom module, or :class:`MissingDicomDecoder` naming the package to install."""
    try:
        import pydicom
    except ImportError:
        raise MissingDicomDecoder(path, "reading DICOM files needs pydicom", "pydicom") from None
    return pydicom


def _read(path: Path, header_only: bool) -> Any:
    pydicom = import_pydicom(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except pydicom.errors.InvalidDicomError:
        pass  # no 128-byte preamble and "DICM" prefix: perhaps a bare data set, as older systems write
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DicomError(path, CORRUPT, f"not a readable DICOM file: {error}", "re-export it from the source, or " + _SKIP) from None
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
    except Exception:  # forced reading of what is likely no DICOM at all: any failure says so
        dataset = None
    if dataset is None or "Rows" not in dataset:
        raise DicomError(path, CORRUPT, "not a DICOM file (no DICM header, no image attributes)",
                         "check that it is a DICOM file, or " + _SKIP)
    return dataset


def _check_radiograph(path: Path, dataset: Any) -> None:
    """Refuse what is not one greyscale frame: no pixel data, several frames, colour."""
    if "Rows" not in dataset or "Columns" not in dataset:
        kind = getattr(getattr(dataset, "SOPClassUID", None), "name", "")
        raise DicomError(path, NOT_AN_IMAGE, "no pixel data" + (f" ({kind})" if kind else ""), _SKIP)
    try:
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as error:
        raise DicomError(path, CORRUPT, f"a malformed header value: {error}", "re-export it from the source, or " + _SKIP) from None
    if frames > 1:
        raise DicomError(path, NOT_AN_IMAGE, f"multi-frame ({frames} frames)", "export the frame you want as its own file, or " + _SKIP)
    photometric = str(getattr(dataset, "PhotometricInterpretation", "")).upper()
    if photometric not in _GREY or int(getattr(dataset, "SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(path, NOT_AN_IMAGE, f"photometric interpretation {photometric or 'missing'}, not MONOCHROME1/2",
                         "convert it to greyscale first, or " + _SKIP)


def _check_decoder(path: Path, dataset: Any) -> None:
    """A compressed transfer syntax needs a decoder that is really installed."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        raise DicomError(path, CORRUPT, "the file meta has no transfer syntax", "re-export it from the source, or " + _SKIP)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(path, UNSUPPORTED, f"pydicom has no decoder for {getattr(syntax, 'name', syntax)} ({syntax})",
                         "convert it to an uncompressed transfer syntax, or " + _SKIP) from None
    if not decoder.is_available:
        packages = _DECODERS.get(str(syntax), "pylibjpeg")
        raise MissingDicomDecoder(path, f"{getattr(syntax, 'name', syntax)} ({syntax}) needs a decoder", packages)


def dicom_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a radiograph from its header, without decoding the pixels.

    Raises:
        FileNotFoundError, DicomError: as :func:`read_dicom_uint8`.
    """
    path = Path(path)
    dataset = _read(path, header_only=True)
    _check_radiograph(path, dataset)
    return int(dataset.Columns), int(dataset.Rows)


def read_dicom_uint8(path: str | os.PathLike) -> np.ndarray:
    """Read a single-frame greyscale DICOM as uint8 [H, W].

    Raises:
        FileNotFoundError: the file does not exist.
        MissingDicomDecoder: pydicom or the decoder of the file's transfer syntax is not installed.
        DicomError: the file is corrupt or truncated, not a single-frame greyscale image, or in a
            transfer syntax pydicom cannot decode.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    dataset = _read(path, header_only=False)
    _check_radiograph(path, dataset)
    if "PixelData" not in dataset:
        raise DicomError(path, NOT_AN_IMAGE, "no pixel data", _SKIP)
    _check_decoder(path, dataset)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # the decoder is installed: whatever it raises, the data are at fault
        detail = " ".join(str(error).split())[:200] or type(error).__name__
        raise DicomError(path, CORRUPT, f"the pixel data do not decode: {detail}",
                         "re-export it from the source, or " + _SKIP) from None
    values = apply_modality_lut(pixels, dataset)
    if "VOILUTSequence" in dataset or "WindowCenter" in dataset:
        values = apply_voi_lut(values, dataset, prefer_lut=True)
    values = np.asarray(values, dtype=np.float64)
    if str(dataset.PhotometricInterpretation).upper() == "MONOCHROME1":
        values = values.max() - values
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)
