"""The one reader and writer of image list files (``train.txt``, ``val.txt``, ``test.txt``, ...).

A list line is an image path relative to the dataset's image root followed by label columns,
separated by whitespace: ``images_006/00011997_000.png 0 0 1 ...`` (NIH), ``CHNCXR_0001_0.png 1 0``
(Shenzhen), ``hash.png 1.0 0.0 ...`` (VinBigData). The original published files are read unchanged:
CRLF line ends, ``0``/``1`` or ``0.0``/``1.0`` labels, ``valid.txt`` for ``val.txt``, and MIMIC's
label-less folder lists. A malformed line is rejected with its file and line number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from refers.base.atomic import atomic_write_text
from refers.base.errors import ListFormatError
from refers.base.text_files import text_lines
from refers.data.registry import SPLIT_ALIASES


@dataclass
class ImageList:
    """A parsed list file.

    Attributes:
        paths: image paths as written in the file (relative to the image root).
        labels: float32 array [N, C] (C = 0 for label-less lists).
        line_numbers: int32 array [N], 1-based line of each entry in ``source``.
        source: the file read.
    """

    paths: list[str]
    labels: np.ndarray
    line_numbers: np.ndarray
    source: Path

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_labels(self) -> int:
        return int(self.labels.shape[1])

    def subset(self, indices: Sequence[int]) -> "ImageList":
        idx = np.asarray(indices, dtype=np.int64)
        return ImageList([self.paths[i] for i in idx], self.labels[idx], self.line_numbers[idx], self.source)


def _parse_label(token: str, path: Path, line_number: int) -> float:
    try:
        value = float(token)
    except ValueError:
        raise ListFormatError(path, line_number, f"label {token!r} is not a number") from None
    if value not in (0.0, 1.0):
        raise ListFormatError(path, line_number, f"label {token!r} is not 0 or 1")
    return value


def read_list(path: str | os.PathLike, num_labels: int | None = None, one_hot: bool = False) -> ImageList:
    """Read a list file.

    Args:
        path: the list file (UTF-8, a byte-order mark and any line ending accepted).
        num_labels: the expected number of label columns. With it, the labels are the last
            ``num_labels`` tokens and everything before them is the path (so paths may contain
            spaces); a line with another count is an error. Without it, the first token is the
            path and every line must have as many labels as the first one.
        one_hot: the labels are a one-hot row (the binary datasets' ``negative positive``
            columns): exactly one 1 per line.

    Raises:
        FileNotFoundError: if the file does not exist.
        ListFormatError: for a malformed line (file and line number in the message): a byte that
            is not UTF-8, a wrong number of labels, a label other than 0 or 1, a contradictory
            one-hot row, an image listed twice (both lines named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    paths: list[str] = []
    rows: list[list[float]] = []
    line_numbers: list[int] = []
    first_line: dict[str, int] = {}
    expected = num_labels
    for line_number, raw in text_lines(path):
        tokens = raw.split()
        if not tokens:
            continue
        if expected is None:
            expected = len(tokens) - 1
        image, row = parse_list_line(tokens, path, line_number, num_labels, expected, one_hot)
        if image in first_line:
            raise ListFormatError(path, line_number, f"image {image} is listed twice (lines {first_line[image]} and {line_number})")
        first_line[image] = line_number
        paths.append(image)
        rows.append(row)
        line_numbers.append(line_number)
    width = expected or 0
    labels = np.asarray(rows, dtype=np.float32).reshape(len(rows), width)
    return ImageList(paths, labels, np.asarray(line_numbers, dtype=np.int32), path)


def parse_list_line(tokens: list[str], path: str | os.PathLike, line_number: int, num_labels: int | None,
                    expected: int, one_hot: bool = False) -> tuple[str, list[float]]:
    """(image path, labels) of one list line's whitespace-separated tokens (see :func:`read_list`).

    Raises:
        ListFormatError: a wrong number of labels, a label other than 0 or 1, a contradictory one-hot row.
    """
    image, label_tokens = _split_line(tokens, num_labels, expected, Path(path), line_number)
    row = [_parse_label(t, path, line_number) for t in label_tokens]
    if one_hot and sum(row) != 1:
        raise ListFormatError(path, line_number, f"one-hot labels {' '.join(label_tokens)!r} must hold exactly one 1")
    return image, row


def _split_line(tokens: list[str], num_labels: int | None, expected: int, path: Path, line_number: int) -> tuple[str, list[str]]:
    """(image path, label tokens) of one line's tokens; a wrong count is named as such."""
    if num_labels is None:
        if len(tokens) - 1 != expected:
            raise ListFormatError(path, line_number, f"expected {expected} labels like the first line, found {len(tokens) - 1}")
        return tokens[0], tokens[1:]
    if len(tokens) < num_labels + 1:
        raise ListFormatError(path, line_number, f"expected an image path and {num_labels} labels, found {len(tokens)} fields "
                                                 f"({'no image path, or ' if len(tokens) == num_labels else ''}"
                                                 f"{num_labels + 1 - len(tokens)} too few)")
    path_tokens = tokens[: len(tokens) - num_labels]
    extra = 0
    while extra < len(path_tokens) - 1 and _is_label(path_tokens[-1 - extra]):
        extra += 1
    if extra:  # "x.png 0 1 ... 0" with one label too many: the label would be glued onto the path
        raise ListFormatError(path, line_number, f"expected {num_labels} labels after the image path, found {num_labels + extra}")
    return " ".join(path_tokens), tokens[len(tokens) - num_labels:]


def _is_label(token: str) -> bool:
    try:
        return float(token) in (0.0, 1.0)
    except ValueError:
        return False


def find_split_file(list_dir: str | os.PathLike, split: str) -> Path:
    """The list file of ``split`` in ``list_dir``, accepting the original's spellings (``valid.txt``).

    ``split`` may also be a file name such as ``train_10_seed1.txt``.
    """
    list_dir = Path(list_dir)
    names = SPLIT_ALIASES.get(split, (split if split.endswith(".txt") else f"{split}.txt",))
    for name in names:
        candidate = list_dir / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {' or '.join(names)} in {list_dir}")


def format_label(value: float, style: str) -> str:
    """``style`` 'int' writes 0/1 (NIH, Shenzhen, COVID); 'float' writes 0.0/1.0 (VinBigData)."""
    if style == "int":
        return str(int(round(value)))
    if style == "float":
        return f"{float(value):.1f}"
    raise ValueError(f"unknown label style {style!r}")


def write_list(path: str | os.PathLike, paths: Iterable[str], labels: np.ndarray | None, style: str = "int") -> Path:
    """Write a list file atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = list(paths)
    if labels is None:
        labels = np.zeros((len(paths), 0), dtype=np.float32)
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} label rows")
    lines = [" ".join([p, *(format_label(v, style) for v in row)]) for p, row in zip(paths, labels)]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


