"""``refers prepare mimic``: MIMIC-CXR-JPG + reports -> resized images, study lists and the study index.

Reads ``mimic-cxr-2.0.0-split.csv.gz`` (which image is in which official split),
``mimic-cxr-2.0.0-metadata.csv.gz`` (view positions), ``mimic-cxr-2.0.0-chexpert.csv.gz`` (labels)
and the report files ``files/pXX/pSUBJECT/sSTUDY.txt`` (a folder, or the ``mimic-cxr-reports.zip``
given with ``--reports``). Writes, per split (``train``, ``val`` = official ``validate``, ``test``):

* ``{split}_img_caption_patients.txt``: the original's caption list (study folder ``/``, TAB, text);
* ``{split}.txt`` + ``{split}_label.npy``: the original's study list and its 0/1 CheXpert matrix
  (float32 [N, 14]; 1 = positive, anything else 0);
* ``{split}_studies.jsonl``: the study index read by pre-training (:mod:`refers.data.mimic_lists`);

plus ``dataset.yaml``, and the images resized to a shorter side of ``short_side`` (bilinear) under
``Data/MIMIC-CXR/prepared/files/...`` with their original names.
"""

from __future__ import annotations

import re
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.data.mimic_lists import Study, write_caption_list, write_study_index, write_study_list
from refers.data.registry import CHEXPERT_CLASSES
from refers.data.study_table import load_study_table
from refers.prepare.common import PrepareError, Summary, ensure_new, ensure_outside, ensure_separate, find_source, made_by, portable_path, read_csv, write_dataset_yaml
from refers.base.synthetic import stamp_synthetic, synthetic_marker
from refers.prepare.reports import extract_sections, report_text
from refers.prepare.resize import FAILURES_FILE, ResizeSpec, prepare_images

SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "valid": "val", "test": "test"}
OUTPUT_SPLITS = ("train", "val", "test")
_REPORT_NAME = re.compile(r"p(\d+)/s(\d+)\.txt$")


def output_names(splits: Sequence[str] = OUTPUT_SPLITS) -> list[str]:
    names = []
    for split in splits:
        names += [f"{split}_img_caption_patients.txt", f"{split}.txt", f"{split}_label.npy", f"{split}_studies.jsonl"]
    return names


def study_folder(subject_id: str, study_id: str) -> str:
    """``files/p10/p10000032/s50414267``: MIMIC-CXR's folder of a study."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


class ReportSource:
    """Report texts from the report folder (``files/pXX/pSUBJECT/sSTUDY.txt``) or ``mimic-cxr-reports.zip``."""

    def __init__(self, location: Path):
        self.location = location
        self.archive: zipfile.ZipFile | None = None
        self.members: dict[tuple[str, str], str] = {}
        if location.is_file():
            try:
                self.archive = zipfile.ZipFile(location)
            except zipfile.BadZipFile as error:
                raise PrepareError(f"{location}: not a zip archive of reports ({error})") from None
            for name in self.archive.namelist():
                match = _REPORT_NAME.search(name)
                if match:
                    self.members[(match.group(1), match.group(2))] = name
        elif not location.is_dir():
            raise FileNotFoundError(f"report folder or zip {location} not found")

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()

    def read(self, subject_id: str, study_id: str) -> str | None:
        if self.archive is not None:
            name = self.members.get((subject_id, study_id))
            return None if name is None else self.archive.read(name).decode("utf-8", errors="replace")
        path = self.location / f"{study_folder(subject_id, study_id)}.txt"
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def _read_tables(root: Path, summary: Summary) -> tuple[dict, dict, dict, list[Path]]:
    """Studies by id (subject, split, dicoms), view per dicom, CheXpert row per study; sources read."""
    split_csv = find_source(root, SPLIT_CSV)
    sources = [split_csv]
    studies: dict[str, dict] = {}
    for line, row in read_csv(split_csv, ("dicom_id", "study_id", "subject_id", "split")):
        split = SPLIT_NAMES.get(row["split"].lower())
        if split is None:
            raise PrepareError(f"{split_csv}:{line}: unknown split {row['split']!r} (expected train, validate or test)")
        study = studies.setdefault(row["study_id"], {"subject_id": row["subject_id"], "split": split, "dicoms": []})
        if study["split"] != split:
            raise PrepareError(f"{split_csv}:{line}: study {row['study_id']} is in both {study['split']} and {split}")
        study["dicoms"].append(row["dicom_id"])

    views: dict[str, str] = {}
    try:
        metadata_csv = find_source(root, METADATA_CSV)
        sources.append(metadata_csv)
        for _, row in read_csv(metadata_csv, ("dicom_id", "ViewPosition")):
            views[row["dicom_id"]] = row["ViewPosition"]
    except FileNotFoundError:
        summary.note(f"no {METADATA_CSV}: view positions unknown")

    labels: dict[str, np.ndarray] = {}
    try:
        chexpert_csv = find_source(root, CHEXPERT_CSV)
        sources.append(chexpert_csv)
        for line, row in read_csv(chexpert_csv, ("study_id", *CHEXPERT_CLASSES)):
            try:
                labels[row["study_id"]] = np.array([float(row[c]) if row[c] else np.nan for c in CHEXPERT_CLASSES], dtype=np.float32)
            except ValueError as error:
                raise PrepareError(f"{chexpert_csv}:{line}: {error}") from None
    except FileNotFoundError:
        summary.note(f"no {CHEXPERT_CSV}: labels unknown (all-zero label matrices)")
    return studies, views, labels, sources


def prepare_mimic(
    root: Path,
    out: Path,
    images_out: Path,
    reports: Path | None = None,
    short_side: int = 320,
    sections: Sequence[str] = ("findings", "impression"),
    workers: int = 1,
    force: bool = False,
    skip_bad: bool = False,
    command: str = "refers prepare mimic",
) -> Summary:
    """Prepare MIMIC-CXR for pre-training (see the module docstring for the files written)."""
    ensure_separate(out, root, "--out")
    ensure_separate(images_out, root, "--images-out")
    ensure_outside(images_out, root / "files", "--images-out")  # the JPGs it reads
    ensure_new(out, output_names(), force)
    summary = Summary(f"mimic -> {out}")
    studies, views, labels, sources = _read_tables(root, summary)
    wanted = tuple(sections)
    # Reports first: a study without report text is useless for pre-training, so its images are not resized.
    texts = _read_reports(ReportSource(reports if reports is not None else root), studies, wanted, summary)
    jobs = []
    for study_id in texts:
        folder = study_folder(studies[study_id]["subject_id"], study_id)
        for dicom in studies[study_id]["dicoms"]:
            jobs.append((str(root / folder / f"{dicom}.jpg"), str(images_out / folder / f"{dicom}.jpg")))
    done = prepare_images(jobs, ResizeSpec(short_side=short_side), workers, skip_bad, summary, "mimic images",
                          failures_file=out / FAILURES_FILE)
    by_split = _studies_by_split(root, images_out, studies, views, labels, texts, done)
    written = write_split_lists(out, images_out, by_split, summary)
    marker = synthetic_marker(root)
    stamp_synthetic(out, marker)
    stamp_synthetic(images_out, marker)
    write_dataset_yaml(out, {
        "dataset": "MIMIC-CXR",
        "synthetic": marker is not None,
        "image_root": portable_path(images_out, out),
        "classes": list(CHEXPERT_CLASSES),
        "label_rule": "CheXpert 1 -> 1; 0, -1 (uncertain) and blank -> 0 in *_label.npy; raw values (null = blank) in *_studies.jsonl",
        "sections": list(wanted),
        "short_side": short_side,
        "splits": {s: {"studies": len(by_split.get(s, [])), "images": sum(len(x.images) for x in by_split.get(s, []))} for s in OUTPUT_SPLITS},
        "made_by": made_by(command, sources, None, marker is not None, short_side=short_side, sections=list(wanted)),
    }, written)
    return summary


def _read_reports(source: ReportSource, studies: dict[str, dict], wanted: tuple[str, ...],
                  summary: Summary) -> dict[str, dict[str, str]]:
    """study id -> its wanted sections and their joined ``text``, for studies with report text."""
    texts: dict[str, dict[str, str]] = {}
    try:
        for study_id, info in studies.items():
            report = source.read(info["subject_id"], study_id)
            if report is None:
                summary.add("studies without report")
                continue
            parts = extract_sections(report, wanted)
            parts["text"] = report_text(parts, wanted)
            if not parts["text"]:
                summary.add("studies with empty sections")
                continue
            texts[study_id] = parts
    finally:
        source.close()
    return texts


def _studies_by_split(root: Path, images_out: Path, studies: dict[str, dict], views: dict[str, str],
                      labels: dict[str, np.ndarray], texts: dict[str, dict[str, str]],
                      done: set[str]) -> dict[str, list[Study]]:
    """The studies with a report and at least one converted image, per split, in (subject, study) order."""
    by_split: dict[str, list[Study]] = defaultdict(list)
    for study_id in sorted(texts, key=lambda s: (studies[s]["subject_id"], s)):
        info = studies[study_id]
        folder = study_folder(info["subject_id"], study_id)
        dicoms = sorted(d for d in info["dicoms"] if str(root / folder / f"{d}.jpg") in done)
        if not dicoms:
            continue
        parts = texts[study_id]
        by_split[info["split"]].append(Study(
            study_id=study_id, subject_id=info["subject_id"], folder=folder,
            images=[images_out / folder / f"{d}.jpg" for d in dicoms], views=[views.get(d, "") for d in dicoms],
            findings=parts.get("findings", ""), impression=parts.get("impression", ""), text=parts["text"],
            labels=labels.get(study_id, np.full(len(CHEXPERT_CLASSES), np.nan, dtype=np.float32)), split=info["split"],
        ))
    return by_split


def write_split_lists(out: Path, images_out: Path, by_split: dict[str, list[Study]], summary: Summary) -> list[Path]:
    """Every split's caption list, study list with labels, and study index (with its column cache);
    MIMIC's and IU X-ray's (both labelled with the 14 CheXpert classes)."""
    written: list[Path] = []
    for split in OUTPUT_SPLITS:
        items = by_split.get(split, [])
        written.append(write_caption_list(out / f"{split}_img_caption_patients.txt", items))
        positive = np.array([(s.labels == 1).astype(np.float32) for s in items]).reshape(len(items), len(CHEXPERT_CLASSES))
        written.extend(write_study_list(out / f"{split}.txt", items, positive))
        written.append(write_study_index(out / f"{split}_studies.jsonl", items, images_out))
        load_study_table(written[-1], images_out)  # its column cache: pre-training then loads it in milliseconds
        summary.add(f"{split} studies", len(items))
    return written
