"""``refers prepare vinbig``: VinBigData ``train/*.dicom`` + its labels -> PNGs and 14-class lists.

Labels come from either download: the Kaggle competition's ``train.csv`` (one row per box per
radiologist: ``image_id,class_name,class_id,rad_id,x_min,...``; three radiologists per image, who may
disagree; ``No finding`` rows have no box), or VinDr-CXR's ``annotations/image_labels_train.csv``
(one row per image and radiologist, one 0/1 column per finding; the 14 classes are taken by name,
the other findings ignored). Kaggle's ``train.csv`` wins when both are there. The default rule is the **union**: a class is positive when
any radiologist boxed it (the original's notebook did not say; the union gives its prevalences);
``--label-rule majority`` needs more than half of the image's radiologists. Columns follow the
original's class order (:data:`~refers.data.registry.VINBIG_CLASSES`), written ``0.0``/``1.0``.

Images: each DICOM becomes ``<image_id>.png`` in ``Data/VinBigData_Chest_X-ray/prepared/`` (VOI LUT /
window applied, MONOCHROME1 inverted, 8 bits; see :func:`refers.data.dicom.read_dicom_uint8`),
scaled by ``--scale`` (0.25) or to a longer side of ``--max-size``. Every file is tried; those that
give no radiograph are listed by reason in ``conversion_failures.tsv`` beside the lists. Splits: seeded, 0.7 / 0.1 / 0.2,
the proportions of the original's 10,500 / 1,500 / 3,000 (every image is its own group: the dataset
has no patient ids), or, with ``--split original --lists DIR``, the original's published lists kept
line for line (see :func:`refers.prepare.splits.keep_published_lists`); only their images are converted.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.data.registry import VINBIG_CLASSES
from refers.prepare.common import (PrepareError, Summary, ensure_new, ensure_outside, ensure_separate, find_source, made_by, metadata_record,
                                   portable_path, read_csv, write_dataset_yaml)
from refers.base.synthetic import stamp_synthetic, synthetic_marker
from refers.prepare.resize import FAILURES_FILE, ResizeSpec, prepare_images
from refers.prepare.splits import SPLITS, assignment_from_lists, group_split, keep_published_lists, write_split_lists

TRAIN_CSV = "train.csv"  # Kaggle competition
VINDR_LABELS = "annotations/image_labels_train.csv"  # VinDr-CXR (PhysioNet)
NO_FINDING = "no finding"
LABEL_RULES = ("union", "majority")


def find_labels(root: Path) -> Path:
    """The label file of a download: Kaggle's ``train.csv`` (or ``.csv.gz``), else VinDr-CXR's image labels."""
    try:
        return find_source(root, TRAIN_CSV)
    except FileNotFoundError:
        if (root / VINDR_LABELS).is_file():
            return root / VINDR_LABELS
        raise FileNotFoundError(f"{root / TRAIN_CSV} (Kaggle) or {root / VINDR_LABELS} (VinDr-CXR) not found "
                                "(is --root the dataset's download folder?)") from None


def image_labels(csv_path: Path, rule: str = "union") -> tuple[list[str], np.ndarray]:
    """Image ids (in first-appearance order) and their labels [N, 14] under ``rule``.

    Reads Kaggle's box table or VinDr-CXR's per-radiologist label table (by its file name).

    Raises:
        PrepareError: missing column, unknown class name or a label other than 0/1 (``file:line``), unknown rule.
    """
    if rule not in LABEL_RULES:
        raise PrepareError(f"unknown --label-rule {rule!r} (union or majority)")
    if csv_path.name.startswith("image_labels"):
        readers, marks = _vindr_marks(csv_path)
    else:
        readers, marks = _kaggle_marks(csv_path)
    images = list(marks)
    labels = np.zeros((len(images), len(VINBIG_CLASSES)), dtype=np.float32)
    for i, image in enumerate(images):
        need = 1 if rule == "union" else len(readers[image]) // 2 + 1
        labels[i] = [len(rads) >= need for rads in marks[image]]
    return images, labels


def _vindr_marks(csv_path: Path) -> tuple[dict[str, set[str]], dict[str, list[set[str]]]]:
    """Per image: its radiologists, and per class those who marked it (VinDr-CXR's 0/1 columns)."""
    readers: dict[str, set[str]] = defaultdict(set)
    marks: dict[str, list[set[str]]] = {}
    for line, row in read_csv(csv_path, ("image_id", "rad_id", *VINBIG_CLASSES)):
        image = row["image_id"]
        if not image:
            raise PrepareError(f"{csv_path}:{line}: empty image_id")
        readers[image].add(row["rad_id"])
        classes = marks.setdefault(image, [set() for _ in VINBIG_CLASSES])
        for k, name in enumerate(VINBIG_CLASSES):
            value = row[name]
            if value not in ("0", "1", "0.0", "1.0"):
                raise PrepareError(f"{csv_path}:{line}: {name} is {value!r}, expected 0 or 1")
            if float(value):
                classes[k].add(row["rad_id"])
    return readers, marks


def _kaggle_marks(csv_path: Path) -> tuple[dict[str, set[str]], dict[str, list[set[str]]]]:
    """Per image: its radiologists, and per class those who boxed it (Kaggle's one row per box)."""
    lookup = {name.lower(): i for i, name in enumerate(VINBIG_CLASSES)}
    readers: dict[str, set[str]] = defaultdict(set)  # image -> radiologists who read it
    marks: dict[str, list[set[str]]] = {}  # image -> per class, the radiologists who boxed it
    for line, row in read_csv(csv_path, ("image_id", "class_name", "rad_id")):
        image, name = row["image_id"], row["class_name"].strip().lower()
        if not image:
            raise PrepareError(f"{csv_path}:{line}: empty image_id")
        readers[image].add(row["rad_id"])
        classes = marks.setdefault(image, [set() for _ in VINBIG_CLASSES])
        if name == NO_FINDING:
            continue
        if name not in lookup:
            raise PrepareError(f"{csv_path}:{line}: unknown class_name {row['class_name']!r} (expected one of {', '.join(VINBIG_CLASSES)} or 'No finding')")
        classes[lookup[name]].add(row["rad_id"])
    return readers, marks


def prepare_vinbig(
    root: Path,
    out: Path,
    images_out: Path,
    scale: float | None = 0.25,
    max_size: int | None = None,
    label_rule: str = "union",
    split: str = "patient",
    lists: Path | None = None,
    labels_from: str = "published",
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    skip_bad: bool = False,
    command: str = "refers prepare vinbig",
) -> Summary:
    """Convert the DICOMs and write the VinBigData lists (see the module docstring)."""
    ensure_separate(out, root, "--out")
    ensure_separate(images_out, root, "--images-out")
    ensure_outside(images_out, root / "train", "--images-out")  # the DICOMs it reads
    ensure_new(out, [f"{s}.txt" for s in SPLITS], force)
    summary = Summary(f"vinbig -> {out}")
    csv_path = find_labels(root)
    images, labels = image_labels(csv_path, label_rule)
    names = [f"{image}.png" for image in images]
    sources = [csv_path]
    if split == "original":
        if lists is None:
            raise PrepareError("--split original needs --lists DIR (the original's train.txt, val.txt, test.txt)")
        listed, _ = assignment_from_lists(lists, names, len(VINBIG_CLASSES))  # checks the lists before any conversion
        unlisted = int((listed < 0).sum())
        if unlisted:
            summary.note(f"{unlisted} images of {csv_path.name} are in none of the lists in {lists}: not converted")
    elif split == "patient":
        listed = group_split(images, ratios, seed)
    else:
        raise PrepareError(f"unknown --split {split!r} for vinbig (patient or original)")

    todo = np.flatnonzero(listed >= 0)
    jobs = [(str(root / "train" / f"{images[i]}.dicom"), str(images_out / names[i])) for i in todo]
    done = prepare_images(jobs, ResizeSpec(scale=None if max_size else scale, max_size=max_size), workers, skip_bad, summary,
                          "vinbig dicoms", failures_file=out / FAILURES_FILE)
    keep = np.zeros(len(images), dtype=bool)
    keep[todo] = [job[0] in done for job in jobs]

    describe = lambda chosen: {"positives": [int(v) for v in labels[chosen].sum(axis=0)]}  # noqa: E731
    if split == "original":
        assignment, written, list_files, counts = keep_published_lists(
            out, lists, SPLITS, names, labels, VINBIG_CLASSES, str(csv_path), summary, take=labels_from, style="float", keep=keep)
        sources += list_files
        for k, name in enumerate(SPLITS):
            counts[name].update(describe(np.flatnonzero(assignment == k)))
    else:
        written, counts = write_split_lists(out, names, labels, np.where(keep, listed, -1), summary, style="float", describe=describe)

    marker = synthetic_marker(root)
    stamp_synthetic(out, marker)
    stamp_synthetic(images_out, marker)
    write_dataset_yaml(out, {
        "dataset": "VinBigData_Chest_X-ray",
        "synthetic": marker is not None,
        "image_root": portable_path(images_out, out),
        "classes": list(VINBIG_CLASSES),
        "label_columns": len(VINBIG_CLASSES),
        "label_style": "float",
        "label_rule": label_rule,
        "metadata": metadata_record(csv_path),
        "split": split,
        "splits": counts,
        "made_by": made_by(command, sources, seed if split == "patient" else None, marker is not None, label_rule=label_rule,
                           scale=None if max_size else scale, max_size=max_size,
                           ratios=[float(r) for r in ratios] if split == "patient" else None,
                           labels=labels_from if split == "original" else None),
    }, written)
    return summary
