"""VinBigData chest X-ray abnormalities (Kaggle) in its official layout::

    VinBigData_Chest_X-ray/
      train/<image_id>.dicom     (DICOM written with pydicom: MONOCHROME1/2, 12-16 bits stored, some with a
                                  VOI LUT window, a few compressed: RLE Lossless and JPEG-LS Lossless)
      train.csv                  (image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max; three
                                  radiologists per image; "No finding" rows, class 14, have empty boxes)

VinBigData has no official test labels; the preparation step splits ``train`` itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from refers.data.registry import VINBIG_CLASSES
from refers.data.synth.findings import Patient, View, sample_patient, sample_view, to_image
from refers.data.synth.io import csv_text
from refers.data.synth.labels import body_boxes, vinbig_findings
from refers.data.synth.plan import DatasetPlan, ImageJob, SynthConfig, date_from, hex_id

NAME = "VinBigData_Chest_X-ray"
HEADER = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
NO_FINDING = ("No finding", 14)
IMAGES_PER_STUDY = 2.6  # >= 5,000 images at 2,000 studies: a 20 % test split holds >= 1,000
RADIOLOGISTS = tuple(f"R{i}" for i in range(1, 18))
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def size_for(studies: int) -> int:
    return math.ceil(IMAGES_PER_STUDY * studies)


def _compression(index: int) -> str:
    """A few files need an extra decoder; the first ones always do, so small runs include them."""
    if index == 1 or index % 50 == 17:
        return "rle"
    if index == 2 or index % 50 == 33:
        return "jpegls"
    return ""


def _dicom_options(rng: np.random.Generator, cfg: SynthConfig, index: int, image_id: str, patient: Patient) -> dict:
    bits = int(rng.choice([12, 14, 16], p=[0.5, 0.3, 0.2]))
    options = {
        "image_id": image_id, "bits": bits, "monochrome1": bool(rng.random() < 0.3),
        "window": bool(rng.random() < 0.25), "compression": _compression(index),
        "window_low": float(rng.uniform(0.1, 0.3)), "window_width": float(rng.uniform(0.3, 0.55)),
        "sex": patient.sex if rng.random() < 0.8 else "O", "age": f"{patient.age:03d}Y" if rng.random() < 0.7 else "",
        "date": date_from(rng, 2018, 2020).strftime("%Y%m%d"), "seed": cfg.seed,
    }
    return options


def _rows_for_image(rng: np.random.Generator, image_id: str, patient: Patient, view: View, size: int) -> list[tuple]:
    """Three radiologists box what they see; each misses subtle findings now and then."""
    readers = rng.choice(len(RADIOLOGISTS), 3, replace=False)
    truth = vinbig_findings(patient)
    rows = []
    for reader in readers:
        rad = RADIOLOGISTS[int(reader)]
        marks = []
        for class_name, lesion in truth:
            if rng.random() > 0.55 + 0.4 * lesion.severity:
                continue
            for x0, y0, x1, y1 in body_boxes(patient, lesion):
                marks.append((class_name, (x0, y0, x1, y1)))
        if rng.random() < 0.04:  # an occasional false positive
            class_name = ("Lung Opacity", "Nodule/Mass", "Pleural thickening", "Aortic enlargement")[int(rng.integers(4))]
            x, y = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.2)
            marks.append((class_name, (x - 0.06, y - 0.06, x + 0.06, y + 0.06)))
        if not marks:
            rows.append((image_id, NO_FINDING[0], NO_FINDING[1], rad, "", "", "", ""))
        for class_name, (x0, y0, x1, y1) in marks:
            us, vs = to_image(view, np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]), size)
            jitter = rng.normal(0, 0.01 * size, 4)
            box = np.clip([us.min() + jitter[0], vs.min() + jitter[1], us.max() + jitter[2], vs.max() + jitter[3]], 0, size)
            rows.append((image_id, class_name, VINBIG_CLASSES.index(class_name), rad, *[f"{round(v)}.0" for v in box]))
    return rows


def build(cfg: SynthConfig) -> DatasetPlan:
    total = size_for(cfg.studies)
    plan = DatasetPlan(NAME)
    rows: list[tuple] = []
    for index in range(total):
        rng = cfg.rng(NAME, index)
        patient = sample_patient(rng)
        view = sample_view(rng, "AP" if rng.random() < 0.1 else "PA")
        image_id = hex_id(rng, (32,))
        options = _dicom_options(rng, cfg, index, image_id, patient)
        plan.images.append(ImageJob(f"train/{image_id}.dicom", patient, view, write_dicom, options))
        rows.extend(_rows_for_image(rng, image_id, patient, view, cfg.image_size))
    plan.texts["train.csv"] = csv_text(HEADER, rows)
    compressed = sum(1 for job in plan.images if job.options["compression"])
    plan.counts = {"images": total, "rows": len(rows), "compressed": compressed}
    return plan


def _stored_pixels(image: np.ndarray, options: dict) -> tuple[np.ndarray, tuple[float, float] | None]:
    """8-bit film -> stored values (bit depth, windowing, MONOCHROME1 inversion); returns the window."""
    top = 2 ** options["bits"] - 1
    values = image.astype(np.float64) / 255.0
    window = None
    if options["window"]:
        low, width = options["window_low"] * top, options["window_width"] * top
        values = low + values * width
        values[:2, :] = top  # burned-in border outside the window: windowing matters for display
        center = low + width / 2
        window = (top - center if options["monochrome1"] else center, width)
    else:
        values = values * top
    if options["monochrome1"]:
        values = top - values
    return np.clip(np.round(values), 0, top).astype(np.uint16), window


def write_dicom(path: Path, image: np.ndarray, options: dict) -> None:
    """Write one VinBigData-style DICOM file with pydicom (compressed when ``options`` says so)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless, generate_uid

    pixels, window = _stored_pixels(image, options)
    entropy = [str(options["seed"]), options["image_id"]]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=entropy + ["sop"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=entropy + ["study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=entropy + ["series"])
    ds.Modality = "DX"
    ds.PatientID = options["image_id"][:16]
    ds.PatientSex = options["sex"]
    ds.PatientAge = options["age"]
    ds.StudyDate = ds.ContentDate = options["date"]
    ds.BodyPartExamined = "CHEST"
    ds.ImageComments = "SYNTHETIC - generated by refers synth"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if options["monochrome1"] else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = options["bits"]
    ds.HighBit = options["bits"] - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:.1f}", f"{window[1]:.1f}"
        ds.VOILUTFunction = "LINEAR"
    if options["compression"] == "rle":
        ds.compress(RLELossless, pixels, generate_instance_uid=False)
    elif options["compression"] == "jpegls":
        try:
            ds.compress(JPEGLSLossless, pixels, encoding_plugin="pyjpegls", generate_instance_uid=False)
        except (RuntimeError, ImportError):  # pyjpegls (the optional "dicom" extra) missing: RLE instead
            ds.compress(RLELossless, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
