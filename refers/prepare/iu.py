"""``refers prepare iu``: IU X-ray (Open-i's Indiana University chest X-rays) as a pre-training and
retrieval set.

Reads the official download under ``--root`` (default ``Data/IU_X-ray/``):

* ``NLMCXR_png/``: the images, ``CXR<report>_<k>_IM-<a>-<b>.png``;
* the reports, one XML per report: the extracted ``NLMCXR_reports/ecgen-radiology/*.xml`` when that
  folder exists, else ``NLMCXR_reports.tgz`` (read in place, nothing extracted); never both;
* optionally ``--projections indiana_projections.csv`` (``uid, filename, projection``: the views
  read from the DICOM files, as Kaggle's copy has them). The XML names no view, so without it every
  view is unknown and a report's images keep the XML's order.

Every report with at least one image on disk and a non-empty FINDINGS or IMPRESSION becomes a
study (on the real archive about 3,826 of 3,955; 104 reports have no image). Its text is FINDINGS
then IMPRESSION, as for MIMIC; Open-i's de-identification mark ``XXXX`` stays as it is. Its labels
are its MeSH "major" terms mapped to the 14 CheXpert classes by :data:`MESH_TO_CHEXPERT` (1 present,
-1 when marked ``borderline``, blank otherwise; "No Finding" when the only term is ``normal``).
IU X-ray has no patient ids: the seeded split keeps each report in one split.

Writes into ``--out`` (default ``DataProcessed/IU_X-ray/``) the MIMIC-style ``{split}_studies.jsonl``,
``{split}_img_caption_patients.txt``, ``{split}.txt`` with ``{split}_label.npy``, and ``dataset.yaml``
(with the licence, CC BY-NC-ND 4.0); the images are copied at ``--short-side`` into one folder per
report under ``--images-out`` (default ``Data/IU_X-ray/prepared/``), as the caption lists need.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from refers.base.paths import is_safe_name
from refers.base.synthetic import stamp_synthetic, synthetic_marker
from refers.data.mimic_lists import Study
from refers.data.registry import CHEXPERT_CLASSES
from refers.prepare.common import PrepareError, Summary, ensure_new, ensure_outside, ensure_separate, made_by, portable_path, read_csv, write_dataset_yaml
from refers.prepare.mimic import OUTPUT_SPLITS, output_names, write_split_lists
from refers.prepare.resize import FAILURES_FILE, ResizeSpec, prepare_images
from refers.prepare.splits import group_split

IMAGES = "NLMCXR_png"
REPORT_FOLDER = "NLMCXR_reports/ecgen-radiology"
REPORT_ARCHIVE = "NLMCXR_reports.tgz"
LICENSE = "CC BY-NC-ND 4.0 (https://creativecommons.org/licenses/by-nc-nd/4.0/); Open-i, National Library of Medicine"

# MeSH major term (its first part, lower case) -> CheXpert class. A term of the form "term/modifier"
# counts when its first part matches; entries with a modifier need that modifier too.
MESH_TO_CHEXPERT: dict[str, str] = {
    "atelectasis": "Atelectasis", "pulmonary atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "pulmonary edema": "Edema", "edema": "Edema",
    "cardiac shadow/enlarged": "Enlarged Cardiomediastinum", "mediastinum/enlarged": "Enlarged Cardiomediastinum",
    "mediastinum/widened": "Enlarged Cardiomediastinum",
    "fractures, bone": "Fracture", "rib fractures": "Fracture", "fracture": "Fracture",
    "nodule": "Lung Lesion", "mass": "Lung Lesion", "lung neoplasms": "Lung Lesion", "multiple pulmonary nodules": "Lung Lesion",
    "opacity": "Lung Opacity", "infiltrate": "Lung Opacity", "airspace disease": "Lung Opacity",
    "lung diseases, interstitial": "Lung Opacity", "pulmonary fibrosis": "Lung Opacity", "density": "Lung Opacity",
    "pleural effusion": "Pleural Effusion",
    "thickening/pleural": "Pleural Other", "pleural diseases": "Pleural Other",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "catheters, indwelling": "Support Devices", "medical device": "Support Devices", "implanted medical device": "Support Devices",
    "tube, inserted": "Support Devices", "pacemaker, artificial": "Support Devices", "surgical instruments": "Support Devices",
}
UNCERTAIN_MODIFIERS = {"borderline"}
IMAGE_ID = re.compile(r"^CXR(\d+)_(\d+)_(IM-[\d-]+)$")
PROJECTION_FILE = re.compile(r"^(?:CXR)?(\d+)_(?:\d+_)?(IM-[\d-]+)\.dcm\.png$")


@dataclass
class IUReport:
    """One ``ecgen-radiology/<n>.xml``: its id, sections, MeSH major terms and image ids, in order."""

    uid: str
    source: str
    findings: str = ""
    impression: str = ""
    mesh: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


def _text(element: ElementTree.Element | None) -> str:
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def read_report(data: bytes, source: str) -> IUReport:
    """Parse one report XML (empty sections, no image, several images and ``XXXX`` as in the real files).

    Raises:
        PrepareError: not well-formed XML, or no report id (the message names ``source``).
    """
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as error:
        raise PrepareError(f"{source}: not a readable report XML ({error})") from None
    uid_element = root.find("uId")
    uid = uid_element.get("id", "") if uid_element is not None else ""
    if not uid:
        stem = Path(source).stem
        uid = f"CXR{stem}" if stem.isdigit() else ""
    if not uid:
        raise PrepareError(f"{source}: no <uId id=...> and no report number in the file name")
    sections = {element.get("Label", "").upper(): _text(element) for element in root.iter("AbstractText")}
    mesh = [_text(m) for m in root.iterfind("MeSH/major") if _text(m)]
    images = [p.get("id", "") for p in root.iter("parentImage") if p.get("id")]
    for what, name in (("uId", uid), *(("parentImage id", image) for image in images)):
        if not is_safe_name(name):  # it names a folder or file of --images-out
            raise PrepareError(f"{source}: {what} {name!r} is not a plain file name (letters, digits, '_', '.', '-')")
    return IUReport(uid, source, sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""), mesh, images)


def _report_order(name: str) -> tuple[int, str]:
    """Reports in number order (2.xml before 10.xml), from a folder or an archive alike."""
    stem = Path(name).stem
    return (len(stem), stem)


def iter_reports(root: Path, summary: Summary) -> Iterator[IUReport]:
    """The reports of the download: the extracted folder when present, else the archive."""
    folder = root / REPORT_FOLDER
    archive = root / REPORT_ARCHIVE
    if folder.is_dir():
        if archive.is_file():
            summary.note(f"read the reports from {folder} ({archive} is left unread)")
        files = sorted(folder.glob("*.xml"), key=lambda p: _report_order(p.name))
        if not files:
            raise PrepareError(f"{folder} holds no .xml reports")
        for path in files:
            yield read_report(path.read_bytes(), str(path))
        return
    if not archive.is_file():
        raise PrepareError(f"no reports under {root}: expected {REPORT_FOLDER}/*.xml or {REPORT_ARCHIVE} (the Open-i download)")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = sorted((m for m in tar if m.isfile() and m.name.endswith(".xml")), key=lambda m: _report_order(m.name))
            if not members:
                raise PrepareError(f"{archive} holds no .xml reports")
            for member in members:  # read in place: nothing is extracted, so no path can escape
                handle = tar.extractfile(member)
                yield read_report(handle.read() if handle else b"", f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise PrepareError(f"{archive} is damaged or not a .tgz archive ({error}); download it again") from None


def mesh_labels(terms: list[str]) -> np.ndarray:
    """CheXpert values [14] of a report's MeSH major terms (NaN = not mentioned)."""
    row = np.full(len(CHEXPERT_CLASSES), np.nan, dtype=np.float32)
    for term in terms:
        parts = [p.strip().lower() for p in term.split("/")]
        head, modifiers = parts[0], set(parts[1:])
        target = MESH_TO_CHEXPERT.get(head) or next(
            (MESH_TO_CHEXPERT[f"{head}/{m}"] for m in sorted(modifiers) if f"{head}/{m}" in MESH_TO_CHEXPERT), None)
        if target is None:
            continue
        value = -1.0 if modifiers & UNCERTAIN_MODIFIERS else 1.0
        column = CHEXPERT_CLASSES.index(target)
        row[column] = value if np.isnan(row[column]) else max(row[column], value)
    pathology = [i for i, c in enumerate(CHEXPERT_CLASSES) if c not in ("No Finding", "Support Devices")]
    if any(t.strip().lower() == "normal" for t in terms) and not np.any(np.abs(row[pathology]) == 1):
        row[CHEXPERT_CLASSES.index("No Finding")] = 1.0
    return row


def read_projections(path: Path) -> dict[tuple[str, str], str]:
    """(report number, ``IM-a-b``) -> ``FRONTAL`` / ``LATERAL`` from ``indiana_projections.csv``."""
    views: dict[tuple[str, str], str] = {}
    for line, row in read_csv(path, ("filename", "projection")):
        match = PROJECTION_FILE.match(row["filename"].strip())
        if not match:
            raise PrepareError(f"{path}:{line}: filename {row['filename']!r} is not <report>_IM-<a>-<b>.dcm.png")
        projection = row["projection"].strip().upper()
        views[(match.group(1), match.group(2))] = projection if projection in ("FRONTAL", "LATERAL") else ""
    return views


def _view(image: str, views: dict[tuple[str, str], str]) -> str:
    match = IMAGE_ID.match(image)
    return views.get((match.group(1), match.group(3)), "") if match else ""


def prepare_iu(root: Path, out: Path, images_out: Path, projections: Path | None = None, short_side: int = 320,
               ratios=(0.7, 0.1, 0.2), seed: int = 0, workers: int = 1, force: bool = False, skip_bad: bool = False,
               command: str = "refers prepare iu") -> Summary:
    """Prepare IU X-ray (see the module docstring for what is read and written)."""
    ensure_separate(out, root, "--out")
    ensure_separate(images_out, root, "--images-out")
    for folder, flag in ((out, "--out"), (images_out, "--images-out")):
        ensure_outside(folder, root / IMAGES, flag)
    ensure_new(out, output_names(), force)
    summary = Summary(f"iu -> {out}")
    if not (root / IMAGES).is_dir():
        raise PrepareError(f"no {IMAGES}/ under {root} (the Open-i image download, extracted)")
    views = read_projections(projections) if projections is not None else {}
    reports: list[IUReport] = []
    jobs = []
    seen: dict[str, str] = {}  # report id -> the file that gave it
    for report in iter_reports(root, summary):
        if report.uid in seen:  # its images would land in the other's folder
            raise PrepareError(f"{report.source}: uId {report.uid} is also the id of {seen[report.uid]}")
        seen[report.uid] = report.source
        summary.add("reports")
        if not (report.findings or report.impression):
            summary.add("reports without FINDINGS and IMPRESSION")
            continue
        present = [image for image in report.images if (root / IMAGES / f"{image}.png").is_file()]
        if len(present) < len(report.images):
            summary.add("listed images not on disk", len(report.images) - len(present))
        if not present:
            summary.add("reports without images")
            continue
        report.images = present
        reports.append(report)
        jobs += [(str(root / IMAGES / f"{image}.png"), str(images_out / report.uid / f"{image}.png")) for image in present]
    if not reports:
        raise PrepareError(f"{root}: no report has both an image and a FINDINGS or IMPRESSION section")
    done = prepare_images(jobs, ResizeSpec(short_side=short_side), workers, skip_bad, summary, "iu images",
                          failures_file=out / FAILURES_FILE)
    split_of = group_split([r.uid for r in reports], ratios, seed)
    by_split: dict[str, list[Study]] = defaultdict(list)
    for report, split in zip(reports, split_of):
        images = [image for image in report.images if str(root / IMAGES / f"{image}.png") in done]
        if not images:
            continue
        name = OUTPUT_SPLITS[int(split)]
        text = " ".join(part for part in (report.findings, report.impression) if part)
        by_split[name].append(Study(
            study_id=report.uid, subject_id=report.uid, folder=report.uid,
            images=[images_out / report.uid / f"{image}.png" for image in images], views=[_view(i, views) for i in images],
            findings=report.findings, impression=report.impression, text=text, labels=mesh_labels(report.mesh), split=name,
        ))
    written = write_split_lists(out, images_out, by_split, summary)
    marker = synthetic_marker(root)
    stamp_synthetic(out, marker)
    stamp_synthetic(images_out, marker)
    from_archive = not (root / REPORT_FOLDER).is_dir()
    sources = ([root / REPORT_ARCHIVE] if from_archive else []) + ([projections] if projections is not None else [])
    write_dataset_yaml(out, {
        "dataset": "IU_X-ray",
        "license": LICENSE,
        "synthetic": marker is not None,
        "image_root": portable_path(images_out, out),
        "classes": list(CHEXPERT_CLASSES),
        "label_rule": "MeSH major terms mapped to CheXpert classes (refers.prepare.iu.MESH_TO_CHEXPERT): 1 present, -1 borderline, "
                      "blank not indexed; *_label.npy: 1 -> 1, else 0",
        "views": "from --projections" if projections is not None else "unknown (no --projections): the XML's image order",
        "splits": {s: {"studies": len(by_split.get(s, [])), "images": sum(len(x.images) for x in by_split.get(s, []))}
                   for s in OUTPUT_SPLITS},
        "made_by": made_by(command, sources, seed, marker is not None, short_side=short_side, ratios=list(ratios)),
    }, written)
    return summary
