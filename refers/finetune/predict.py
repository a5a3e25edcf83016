"""Score a user's images (PNG, JPEG, DICOM) with a fine-tuned checkpoint: one CSV row per image.

The original's ``predict.py`` never ran; this takes files and folders (searched recursively), uses
the evaluation transform of the checkpoint's ``img_size`` and writes ``image,<class 1>,<class 2>...``
with sigmoid probabilities at full precision.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.base.errors import UserError as UserError
from refers.base.atomic import atomic_write_text
from refers.data.registry import get_dataset
from refers.engine.distributed import DistInfo
from refers.finetune.data import ListDataset, eval_transform
from refers.finetune.evaluate import evaluate
from refers.finetune.model import load_finetuned
from refers.engine.precision import make_precision

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def collect_images(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the folders named.

    Raises:
        FileNotFoundError: an item that does not exist.
        UserError: no image at all.
    """
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    if not files:
        raise UserError(f"no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images in {', '.join(map(str, items))}")
    return files


def class_names(meta: dict, num_classes: int, dataset: str | None) -> list[str]:
    """Class names from the checkpoint's metadata, else from ``--dataset``, else ``class_<i>``."""
    names = meta.get("classes") or (list(get_dataset(dataset).classes) if dataset else None)
    if names and len(names) == num_classes:
        return list(names)
    return [f"class_{i}" for i in range(num_classes)]


def predict(checkpoint: str, images: Sequence[str], out: str | os.PathLike, model_type: str | None = None,
            img_size: int | None = None, dataset: str | None = None, batch_size: int = 32,
            skip_bad: bool = False, info: DistInfo | None = None) -> Path:
    """Write the probabilities of every image to the CSV ``out``; returns its path."""
    info = info or DistInfo()
    model, settings = load_finetuned(checkpoint, model_type, img_size, None)
    meta = settings["metadata"]
    if meta.get("synthetic"):
        logger.warning("this checkpoint was trained on SYNTHETIC data: its probabilities say nothing about real X-rays")
    names = class_names(meta, int(settings["num_classes"]), dataset)
    files = collect_images(images)
    labels = np.zeros((len(files), len(names)), dtype=np.float32)  # unknown; only the shape is used
    dataset_ = ListDataset(files, labels, eval_transform(int(settings["img_size"])), int(settings["img_size"]), skip_bad=skip_bad)
    model.to(info.device)
    result = evaluate(model, dataset_, batch_size, info, make_precision(False, False, 0.0, info.device), desc="Predicting")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", *names])
    for index, row in zip(result.indices, result.probs):
        writer.writerow([str(files[index]), *(repr(float(p)) for p in row)])
    out = Path(out)
    atomic_write_text(out, buffer.getvalue())
    logger.info("wrote %d predictions to %s", len(result.indices), out)
    return out
