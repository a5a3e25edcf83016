"""Prediction files: one ``<Class>.txt`` per class, one ``<label> <probability>`` line per test image.

This is the format of the original ``test.py`` and of the published ``Results_of_fine-tuning/``
folders: the label as ``0.0``/``1.0``, then the predicted probability, in test-list order. The
reader takes the published files unchanged (space or tab separated, CRLF line ends); the writer
keeps the probability at full precision (``repr``), so AUCs recomputed from the files are exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.base.errors import ListFormatError
from refers.base.text_files import text_lines
from refers.base.atomic import atomic_write_text
from refers.data.lists import format_label
from refers.data.registry import safe_class_filename


def prediction_filename(class_name: str) -> str:
    """``Nodule/Mass`` -> ``Nodule-Mass.txt`` (the published spelling)."""
    return f"{safe_class_filename(class_name)}.txt"


def write_prediction_files(folder: str | os.PathLike, class_names: Sequence[str], labels: np.ndarray, probs: np.ndarray) -> list[Path]:
    """Write one prediction file per class, atomically.

    Args:
        folder: created if missing.
        class_names: C names, in column order.
        labels: [N, C] 0/1 labels.
        probs: [N, C] probabilities.

    Returns:
        The C files written, in ``class_names`` order.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
    if labels.shape != probs.shape or labels.shape[1] != len(class_names):
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} must be [N, {len(class_names)}]")
    names = [prediction_filename(name) for name in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names map to the same file name: {names}")
    folder = Path(folder)
    written = []
    for c, name in enumerate(names):
        lines = "".join(f"{format_label(label, 'float')} {float(prob)!r}\n" for label, prob in zip(labels[:, c], probs[:, c]))
        atomic_write_text(folder / name, lines)
        written.append(folder / name)
    return written


def read_prediction_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one prediction file.

    Returns:
        (labels [N] float64 in {0, 1}, probabilities [N] float64).

    Raises:
        FileNotFoundError: if the file does not exist.
        ListFormatError: for a line that is not ``<0|1> <number>``, or a file without rows
            (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prediction file not found: {path}")
    labels: list[float] = []
    probs: list[float] = []
    for line_number, raw in text_lines(path):
        tokens = raw.split()  # any whitespace: space, tab
        if not tokens:
            continue
        if len(tokens) != 2:
            raise ListFormatError(path, line_number, f"expected '<label> <probability>', found {len(tokens)} fields")
        try:
            label, prob = float(tokens[0]), float(tokens[1])
        except ValueError:
            raise ListFormatError(path, line_number, f"not numbers: {raw.strip()!r}") from None
        if label not in (0.0, 1.0):
            raise ListFormatError(path, line_number, f"label {tokens[0]!r} is not 0 or 1")
        if not 0.0 <= prob <= 1.0:  # NaN fails this too
            raise ListFormatError(path, line_number, f"probability {tokens[1]!r} is not between 0 and 1")
        labels.append(label)
        probs.append(prob)
    if not labels:
        raise ListFormatError(path, 1, "no prediction rows")
    return np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
