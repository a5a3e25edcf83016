"""``refers prepare covid``: the COVID-19 Image Data Collection -> ``train.txt`` / ``val.txt`` / ``test.txt``.

From ``metadata.csv`` (either revision: a flat ``finding`` such as ``COVID-19`` or ``COVID-19, ARDS``,
or the later hierarchical one such as ``Pneumonia/Viral/COVID-19``): X-ray rows only (``modality``
``X-ray``; CT rows are left out), all views like the original's lists (``--views frontal`` keeps PA/AP
variants only). Task "COVID vs others": a line is ``filename 0 1`` when ``finding`` names COVID-19
(e.g. ``Pneumonia/Viral/COVID-19``), else ``filename 1 0``; the target is the second column. The image root is ``images/``. Splits are
patient-disjoint (``patientid``), stratified by whether a patient has COVID-19 (~0.7 / 0.1 / 0.2 like
the original's 664 / 93 / 172), or, with ``--split original --lists DIR``, the published lists kept
line for line (see :func:`refers.prepare.splits.keep_published_lists`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.prepare.common import (PrepareError, Summary, ensure_new, ensure_separate, find_source, made_by, metadata_record,
                                   portable_path, read_csv, write_dataset_yaml)
from refers.base.synthetic import stamp_synthetic, synthetic_marker
from refers.prepare.splits import SPLITS, group_split, keep_published_lists, write_split_lists

METADATA = "metadata.csv"
IMAGES = "images"


def is_frontal(view: str) -> bool:
    """PA, AP, ``AP Supine``, ``AP semi erect``, ... (not ``L``, not CT planes)."""
    return view.strip().upper().split(" ")[0] in ("PA", "AP")


def is_covid(finding: str) -> bool:
    """``COVID-19``, ``COVID-19, ARDS`` (flat revision) or ``Pneumonia/Viral/COVID-19`` (hierarchical)."""
    return "covid-19" in finding.lower()


@dataclass
class _Rows:
    """The metadata's X-ray rows kept, in file order (``present``: the image is on disk)."""

    names: list[str] = field(default_factory=list)
    positive: list[int] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    present: list[bool] = field(default_factory=list)


def _xray_rows(csv_path: Path, image_root: Path, views: str, skip_bad: bool, summary: Summary) -> _Rows:
    """The X-ray rows of ``metadata.csv`` (frontal only with ``views="frontal"``); an image listed twice
    is an error, and missing images are one too unless ``skip_bad``."""
    rows, first_line, missing = _Rows(), {}, []
    for line, row in read_csv(csv_path, ("patientid", "finding", "view", "modality", "filename")):
        if row["modality"].strip().lower() != "x-ray":
            summary.add("non-X-ray rows left out")
            continue
        if views == "frontal" and not is_frontal(row["view"]):
            summary.add("non-frontal rows left out")
            continue
        name = row["filename"]
        if name in first_line:
            raise PrepareError(f"{csv_path}:{line}: image {name} listed twice (first on line {first_line[name]})")
        first_line[name] = line
        rows.present.append((image_root / name).is_file())
        if not rows.present[-1]:
            missing.append((line, name))
        rows.names.append(name)
        rows.positive.append(int(is_covid(row["finding"])))
        rows.patients.append(row["patientid"])
    if missing:
        if not skip_bad:
            line, name = missing[0]
            raise PrepareError(f"{len(missing)} image(s) of {csv_path.name} not in {image_root}, first: {name} "
                               f"({csv_path}:{line}); pass --skip-bad-images to leave them out")
        summary.note(f"left out {len(missing)} images not on disk (--skip-bad-images)")
    return rows


def prepare_covid(
    root: Path,
    out: Path,
    split: str = "patient",
    lists: Path | None = None,
    labels_from: str = "published",
    views: str = "all",
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    force: bool = False,
    skip_bad: bool = False,
    command: str = "refers prepare covid",
) -> Summary:
    """Write the COVID-19 lists (see the module docstring)."""
    ensure_separate(out, root, "--out")
    ensure_new(out, [f"{s}.txt" for s in SPLITS], force)
    summary = Summary(f"covid -> {out}")
    csv_path = find_source(root, METADATA)
    image_root = root / IMAGES
    rows = _xray_rows(csv_path, image_root, views, skip_bad, summary)
    on_disk = np.asarray(rows.present, dtype=bool)
    names, positive, patients = rows.names, rows.positive, rows.patients
    if split != "original":  # the published lists may name a missing image: they leave it out themselves
        names, positive, patients = ([v for v, keep in zip(values, on_disk) if keep] for values in (names, positive, patients))
    covid = np.asarray(positive, dtype=np.int64)
    labels = np.stack([1 - covid, covid], axis=1).astype(np.float32) if names else np.zeros((0, 2), np.float32)

    def describe(chosen: np.ndarray) -> dict[str, int]:
        return {"covid": int(covid[chosen].sum()), "patients": len({patients[i] for i in chosen})}

    sources = [csv_path]
    if split == "patient":
        # A patient's stratum: whether any of their images is COVID-19.
        covid_patients = {p for p, c in zip(patients, positive) if c}
        assignment = group_split(patients, ratios, seed, strata=[p in covid_patients for p in patients])
        written, counts = write_split_lists(out, names, labels, assignment, summary, describe=describe)
    elif split == "original":
        if lists is None:
            raise PrepareError("--split original needs --lists DIR (train.txt, val.txt, test.txt)")
        assignment, written, list_files, counts = keep_published_lists(
            out, lists, SPLITS, names, labels, ("others", "COVID-19"), str(csv_path), summary, take=labels_from, keep=on_disk)
        sources += list_files
        unlisted = int(((assignment < 0) & on_disk).sum())
        if unlisted:
            summary.note(f"{unlisted} images are in none of the lists in {lists}")
        for k, name in enumerate(SPLITS):
            counts[name].update(describe(np.flatnonzero(assignment == k)))
    else:
        raise PrepareError(f"unknown --split {split!r} for covid (original or patient)")

    marker = synthetic_marker(root)
    stamp_synthetic(out, marker)
    write_dataset_yaml(out, {
        "dataset": "COVID-19_Image_Data_Collection",
        "synthetic": marker is not None,
        "image_root": portable_path(image_root, out),
        "classes": ["COVID-19"],
        "columns": ["others", "COVID-19"],
        "label_columns": 2,
        "label_style": "int",
        "views": views,
        "metadata": metadata_record(csv_path),
        "split": split,
        "splits": counts,
        "made_by": made_by(command, sources, seed if split == "patient" else None, marker is not None, split=split,
                           views=views, ratios=[float(r) for r in ratios] if split == "patient" else None,
                           labels=labels_from if split == "original" else None),
    }, written)
    return summary
