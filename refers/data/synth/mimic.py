"""MIMIC-CXR-JPG (2.0.0) with the MIMIC-CXR free-text reports, in the official layout::

    MIMIC-CXR/
      files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
      files/p10/p10000032/s50414267.txt          (the report, as unzipped from mimic-cxr-reports.zip)
      mimic-cxr-2.0.0-metadata.csv.gz
      mimic-cxr-2.0.0-split.csv.gz               (train / validate / test, by subject)
      mimic-cxr-2.0.0-chexpert.csv.gz            (14 labels: 1.0, 0.0, -1.0 or blank, from the report)
      mimic-cxr-2.0.0-negbio.csv.gz
      IMAGE_FILENAMES
"""

from __future__ import annotations

import numpy as np

from refers.data.registry import CHEXPERT_CLASSES
from refers.data.synth.findings import sample_patient, sample_view
from refers.data.synth.io import csv_text, write_jpeg
from refers.data.synth.plan import DatasetPlan, ImageJob, SynthConfig, date_from, hex_id, unique_ints
from refers.data.synth.reports import mimic_report

NAME = "MIMIC-CXR"
METADATA_HEADER = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


def _projections(rng: np.random.Generator, portable: bool) -> list[str]:
    """1-3 views: a frontal film, usually a lateral, sometimes a second frontal."""
    if portable:
        return ["AP"] if rng.random() < 0.85 else ["AP", "AP"]
    draw = rng.random()
    return ["PA"] if draw < 0.2 else (["PA", "LATERAL"] if draw < 0.9 else ["PA", "LATERAL", "AP"])


def _label(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def build(cfg: SynthConfig) -> DatasetPlan:
    """Plan ``cfg.studies`` studies of ``~cfg.studies / 2.2`` subjects."""
    rng = cfg.rng(NAME)
    plan = DatasetPlan(NAME)
    studies_left = cfg.studies
    per_subject: list[int] = []
    while studies_left > 0:
        per_subject.append(min(studies_left, int(rng.geometric(0.45))))  # 2.2 studies per subject on average
        studies_left -= per_subject[-1]
    subjects = sorted(unique_ints(rng, len(per_subject), 10_000_000, 20_000_000))
    study_ids = unique_ints(rng, cfg.studies, 50_000_000, 60_000_000)
    split_draw = rng.random(len(subjects))
    splits = ["validate" if d < 0.02 else ("test" if d < 0.05 else "train") for d in split_draw]
    if len(splits) >= 3:  # every split exists, even for tiny runs
        splits[-1], splits[-2] = "test", "validate"
    metadata, split_rows, chexpert_rows, filenames = [], [], [], []
    study_index = 0
    for subject_index, (subject, n_studies) in enumerate(zip(subjects, per_subject)):
        base_rng = cfg.rng(NAME, 1, subject_index)
        base = sample_patient(base_rng)
        day = date_from(base_rng, 2110, 2195)
        for k in range(n_studies):
            study = study_ids[study_index]
            srng = cfg.rng(NAME, 2, study_index)
            study_index += 1
            patient = sample_patient(srng)
            patient.sex, patient.age, patient.body = base.sex, min(base.age + k, 99), base.body
            portable = srng.random() < (0.7 if "support_devices" in patient.lesions else 0.3)
            projections = _projections(srng, portable)
            text, labels = mimic_report(patient, projections, srng)
            folder = f"files/p{str(subject)[:2]}/p{subject}/s{study}"
            plan.texts[f"{folder}.txt"] = text
            chexpert_rows.append((subject, study, *[_label(labels[c]) for c in CHEXPERT_CLASSES]))
            day = day.fromordinal(day.toordinal() + int(srng.integers(1, 400)))
            time = f"{int(srng.integers(0, 24)):02d}{int(srng.integers(0, 60)):02d}{int(srng.integers(0, 60)):02d}.{int(srng.integers(0, 1000)):03d}"
            procedure = "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)"
            for projection in projections:
                dicom_id = hex_id(srng, (8, 8, 8, 8, 8))
                view = sample_view(srng, projection)
                position = "LL" if projection == "LATERAL" and srng.random() < 0.1 else projection
                path = f"{folder}/{dicom_id}.jpg"
                plan.images.append(ImageJob(path, patient, view, write_jpeg))
                filenames.append(path)
                orientation = "Recumbent" if projection == "AP" and srng.random() < 0.5 else "Erect"
                metadata.append((dicom_id, subject, study, procedure, position, cfg.image_size, cfg.image_size,
                                 day.strftime("%Y%m%d"), time, procedure, VIEW_MEANING[position], orientation))
                split_rows.append((dicom_id, study, subject, splits[subject_index]))
    plan.gz_texts["mimic-cxr-2.0.0-metadata.csv.gz"] = csv_text(METADATA_HEADER, metadata)
    plan.gz_texts["mimic-cxr-2.0.0-split.csv.gz"] = csv_text(("dicom_id", "study_id", "subject_id", "split"), split_rows)
    chexpert_rows.sort()
    header = ("subject_id", "study_id", *CHEXPERT_CLASSES)
    plan.gz_texts["mimic-cxr-2.0.0-chexpert.csv.gz"] = csv_text(header, chexpert_rows)
    plan.gz_texts["mimic-cxr-2.0.0-negbio.csv.gz"] = csv_text(header, chexpert_rows)
    plan.texts["IMAGE_FILENAMES"] = "".join(f"{name}\n" for name in filenames)
    plan.counts = {"subjects": len(subjects), "studies": cfg.studies, "images": len(plan.images)}
    return plan
