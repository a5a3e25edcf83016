"""Tiny hand-made datasets in the official layouts, for the bad-input cases of ``refers prepare``.

The synthetic datasets of ``refers synth`` cover the normal paths; these few-file fixtures let a test
break one thing (a column, a pixel, a label count) and see the error.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def grey_png(path: Path, value: int = 128, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(path)
    return path


def make_nih(root: Path, rows: list[tuple[str, str]]) -> Path:
    """``rows``: (image name, finding labels); images go to images_001/images/."""
    lines = [NIH_HEADER]
    for name, findings in rows:
        patient = name.split("_")[0]
        lines.append(f"{name},{findings},0,{int(patient)},50,M,PA,24,20,0.143,0.143")
        grey_png(root / "images_001" / "images" / name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return root


def make_vinbig_csv(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """``rows``: (image_id, class_name, rad_id); class ids and boxes are filled in."""
    path = root / "train.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
        for image, name, rad in rows:
            box = ["", "", "", ""] if name == "No finding" else [1, 1, 5, 5]
            writer.writerow([image, name, 14 if name == "No finding" else 0, rad, *box])
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None,
                compress: str | None = None, bits: int = 12) -> Path:
    """A minimal but valid secondary-capture DICOM with ``pixels`` (uint16 [H, W])."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4." + str(abs(hash(path.name)) % 10**8)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if compress == "rle":
        ds.compress(RLELossless, pixels.astype(np.uint16))
    elif compress == "jpegls":
        ds.compress(JPEGLSLossless, pixels.astype(np.uint16))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def gz_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as handle:
        handle.write(buffer.getvalue())
    return path


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 FINDINGS:

 The heart is {size}.  No pleural effusion.

 IMPRESSION:

 {impression}
"""


def make_mimic(root: Path, subjects: dict[str, str], studies_per_subject: int = 2, size: tuple[int, int] = (60, 80)) -> Path:
    """``subjects``: subject id -> official split (train/validate/test); two views per study."""
    from refers.data.registry import CHEXPERT_CLASSES

    split_rows, meta_rows, chexpert_rows = [], [], []
    count = 0
    for subject, split in subjects.items():
        for s in range(studies_per_subject):
            study = f"5{subject[-4:]}{s:03d}"
            folder = root / f"files/p{subject[:2]}/p{subject}/s{study}"
            for view in ("PA", "LATERAL"):
                dicom = f"{count:04d}aa-{view.lower()}"
                count += 1
                grey_png(folder / f"{dicom}.jpg", value=count, size=size)
                split_rows.append([dicom, study, subject, split])
                meta_rows.append([dicom, subject, study, "CHEST (PA AND LAT)", view, size[1], size[0]])
            chexpert_rows.append([subject, study, "1.0" if s == 0 else "", "-1.0"] + [""] * 12)
            enlarged = s == 0
            (folder.parent / f"s{study}.txt").write_text(REPORT.format(
                size="enlarged" if enlarged else "normal", impression="Cardiomegaly." if enlarged else "No acute process."))
    gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz",
           ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns"], meta_rows)
    gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_CLASSES], chexpert_rows)
    return root


COVID_COLUMNS = ("patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,intubation_present,went_icu,in_icu,"
                 "needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,lymphocyte_count,"
                 "view,modality,date,location,folder,filename,doi,url,license,clinical_notes,other_notes").split(",")


def make_covid(root: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    """``rows``: (patientid, finding, view, modality, filename); X-ray images are written to images/."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COVID_COLUMNS)
        writer.writeheader()
        for patient, finding, view, modality, name in rows:
            record = dict.fromkeys(COVID_COLUMNS, "")
            record.update(patientid=patient, finding=finding, view=view, modality=modality, filename=name,
                          folder="images" if modality == "X-ray" else "volumes")
            writer.writerow(record)
            if modality == "X-ray":
                grey_png(root / "images" / name)
    return root


# --------------------------------------------------------------------------- real metadata revisions

# NIH's 2020 revision: ``Patient Sex`` for ``Patient Gender``, no trailing comma, LF line ends.
NIH_2020_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,"
                   "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_REVISIONS = {"2017": "Data_Entry_2017.csv", "2020": "Data_Entry_2017_v2020.csv"}


def nih_metadata(root: Path, rows: list[tuple[str, str]], revision: str = "2017", gz: bool = False) -> Path:
    """The data entry file of one NIH revision: ``rows`` (image name, finding labels), in that order.

    ``2017``: ``Data_Entry_2017.csv``, CRLF line ends and the header's trailing comma (as NIH ships
    it); ``2020``: ``Data_Entry_2017_v2020.csv``, LF. ``gz`` writes ``<name>.gz``.
    """
    header, newline = (NIH_HEADER, "\r\n") if revision == "2017" else (NIH_2020_HEADER, "\n")
    lines = [header, *(f"{name},{findings},0,{int(name.split('_')[0])},50,M,PA,24,20,0.143,0.143" for name, findings in rows)]
    data = "".join(line + newline for line in lines).encode()
    path = root / (NIH_REVISIONS[revision] + (".gz" if gz else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def vindr_labels(root: Path, rows: list[tuple[str, str, list[str]]]) -> Path:
    """VinDr-CXR's ``annotations/image_labels_train.csv``: ``rows`` (image_id, rad_id, findings marked).

    One 0/1 column per finding, VinDr-CXR's 28 in its order (22 local, 6 global, ``No finding`` last).
    """
    columns = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
               "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
               "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
               "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis",
               "Other diseases", "No finding"]
    path = root / "annotations" / "image_labels_train.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "rad_id", *columns])
        for image, rad, marked in rows:
            writer.writerow([image, rad, *(int(c in marked or (c == "No finding" and not marked)) for c in columns)])
    return path
