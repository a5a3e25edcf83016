"""``refers prepare vinbig``: VinBigData ``train/*.dicom`` + ``train.csv`` -> PNGs and 14-class lists.

Labels: ``train.csv`` has one row per box per radiologist (three radiologists per image, who may
disagree; ``No finding`` rows have no box). The default rule is the **union**: a class is positive when
any radiologist boxed it (the original's notebook did not say; the union gives its prevalences);
``--label-rule majority`` needs more than half of the image's radiologists. Columns follow the
original's class order (:data:`~refers.data.registry.VINBIG_CLASSES`), written ``0.0``/``1.0``.

Images: each DICOM becomes ``<image_id>.png`` in ``Data/VinBigData_Chest_X-ray/prepared/`` (VOI LUT /
window applied, MONOCHROME1 inverted, 8 bits; see :func:`refers.data.dicom.read_dicom_uint8`),
scaled by ``--scale`` (0.25) or to a longer side of ``--max-size``. Every file is tried; those that
give no radiograph are listed by reason in ``conversion_failures.tsv`` beside the lists. Splits: seeded, 0.7 / 0.1 / 0.2,
the proportions of the original's 10,500 / 1,500 / 3,000 (every image is its own group: the dataset
has no patient ids).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.data.registry import VINBIG_CLASSES
from refers.prepare.common import PrepareError, Summary, ensure_new, ensure_separate, find_source, made_by, portable_path, read_csv, write_dataset_yaml
from refers.base.synthetic import stamp_synthetic, synthetic_marker
from refers.prepare.resize import FAILURES_FILE, ResizeSpec, prepare_images
from refers.prepare.splits import SPLITS, group_split, write_split_lists

TRAIN_CSV = "train.csv"
NO_FINDING = "no finding"
LABEL_RULES = ("union", "majority")


def image_labels(csv_path: Path, rule: str = "union") -> tuple[list[str], np.ndarray]:
    """Image ids (in first-appearance order) and their labels [N, 14] under ``rule``.

    Raises:
        PrepareError: missing column, unknown class name (``file:line``), unknown rule.
    """
    if rule not in LABEL_RULES:
        raise PrepareError(f"unknown --label-rule {rule!r} (union or majority)")
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
    images = list(marks)
    labels = np.zeros((len(images), len(VINBIG_CLASSES)), dtype=np.float32)
    for i, image in enumerate(images):
        need = 1 if rule == "union" else len(readers[image]) // 2 + 1
        labels[i] = [len(rads) >= need for rads in marks[image]]
    return images, labels


def prepare_vinbig(
    root: Path,
    out: Path,
    images_out: Path,
    scale: float | None = 0.25,
    max_size: int | None = None,
    label_rule: str = "union",
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
    ensure_separate(images_out, root / "train", "--images-out")
    ensure_new(out, [f"{s}.txt" for s in SPLITS], force)
    summary = Summary(f"vinbig -> {out}")
    csv_path = find_source(root, TRAIN_CSV)
    images, labels = image_labels(csv_path, label_rule)

    jobs = [(str(root / "train" / f"{image}.dicom"), str(images_out / f"{image}.png")) for image in images]
    done = prepare_images(jobs, ResizeSpec(scale=None if max_size else scale, max_size=max_size), workers, skip_bad, summary,
                          "vinbig dicoms", failures_file=out / FAILURES_FILE)
    keep = np.array([job[0] in done for job in jobs], dtype=bool)

    assignment = group_split(images, ratios, seed)
    written, counts = write_split_lists(
        out, [f"{image}.png" for image in images], labels, np.where(keep, assignment, -1), summary, style="float",
        describe=lambda chosen: {"positives": [int(v) for v in labels[chosen].sum(axis=0)]},
    )

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
        "splits": counts,
        "made_by": made_by(command, [csv_path], seed, marker is not None, label_rule=label_rule,
                           scale=None if max_size else scale, max_size=max_size, ratios=[float(r) for r in ratios]),
    }, written)
    return summary
