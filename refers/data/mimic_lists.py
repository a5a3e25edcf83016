"""MIMIC-CXR study lists: the original's formats and the richer index that pre-training reads.

Three formats, one reader (:func:`read_study_index`), chosen by the file:

* **study index** (``{split}_studies.jsonl``, written by ``refers prepare mimic``): one JSON object
  per line with ``study_id``, ``subject_id``, ``split``, ``folder``, ``images`` (paths relative to the
  image root), ``views`` (``PA``, ``AP``, ``LATERAL``, ... or ``""``), ``findings``, ``impression``,
  ``text`` (the sections used for training, joined) and ``labels`` (the 14 CheXpert columns in
  :data:`~refers.data.registry.CHEXPERT_CLASSES` order: 1 positive, 0 negative, -1 uncertain,
  null not mentioned).
* **caption list** (the original's ``{split}_img_caption_patients.txt``, also spelled
  ``_img_captions_patients.txt``): tab-separated ``study folder<TAB>report text``, no header.
* **study folder list** (the original's ``train.txt`` / ``test.txt``): one folder per line, labels in
  ``<stem>_label.npy`` beside it (the published ``test_label.npy`` is 4,673 x 12).

Folders may be written as on the original's machine (``./data/MIMIC//data/files/p10/p10032725/s50331901``,
with or without a trailing ``/``): they are re-rooted at the part from ``files/`` on and never leave the
image root. For the two original formats the images are the files in the study folder (the
original's ``*-small.jpg`` when present, else every JPEG/PNG), and views are unknown (``""``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from refers.base.errors import ListFormatError
from refers.base.atomic import atomic_output, atomic_write_text
from refers.base.paths import safe_join
from refers.base.text_files import decode_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_PATIENT = re.compile(r"^p\d+$")


@dataclass
class Study:
    """One MIMIC-CXR study: the unit of a pre-training sample.

    Attributes:
        study_id: e.g. ``"50414267"`` (no ``s`` prefix).
        subject_id: e.g. ``"10000032"`` (no ``p`` prefix); the patient, for patient-level splits.
        folder: study folder relative to the image root, e.g. ``files/p10/p10000032/s50414267``.
        images: absolute image paths, sorted (one or more views).
        views: view position per image (``PA``, ``AP``, ``LATERAL``, ``LL``, ...; ``""`` unknown).
        findings: the FINDINGS section ("" when the report has none or the format does not keep it).
        impression: the IMPRESSION section ("" likewise).
        text: the report text used for training (configured sections joined, one line).
        labels: float32 [L] or None: CheXpert labels (1, 0, -1, NaN = not mentioned) from the index,
            or the row of ``<list>_label.npy`` for a folder list.
        split: ``train``, ``val`` or ``test`` (from the index; "" for the original formats).
        line_number: 1-based line in the file read (for error messages).
    """

    study_id: str
    subject_id: str
    folder: str
    images: list[Path]
    views: list[str]
    findings: str = ""
    impression: str = ""
    text: str = ""
    labels: np.ndarray | None = None
    split: str = ""
    line_number: int = 0


def reroot_folder(raw: str) -> str:
    """A study folder as written in a list, made relative to the image root.

    ``./data/MIMIC//data/files/p10/p10032725/s50331901/`` -> ``files/p10/p10032725/s50331901``;
    a path without a ``files/pXX`` part is returned normalised (leading ``./`` and trailing ``/`` removed).
    """
    parts = [p for p in raw.strip().replace("\\", "/").split("/") if p not in ("", ".")]
    for index in range(len(parts) - 1):
        if parts[index] == "files" and _PATIENT.match(parts[index + 1]):
            return "/".join(parts[index:])
    return "/".join(parts)


def _ids_from_folder(folder: str) -> tuple[str, str]:
    parts = folder.split("/")
    study = parts[-1][1:] if parts and parts[-1].startswith("s") else (parts[-1] if parts else "")
    subject = parts[-2][1:] if len(parts) >= 2 and _PATIENT.match(parts[-2]) else ""
    return study, subject


def list_study_images(folder: Path) -> list[Path]:
    """The image files of a study folder: the original's ``*-small.jpg`` if any, else all JPEG/PNG."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    small = [p for p in files if p.name.endswith("-small.jpg")]
    return small or files


def _resolve(image_root: Path, relative: str, source: Path, line_number: int, folders: dict[str, Path] | None = None) -> Path:
    try:
        return safe_join(image_root, relative, folders)
    except ValueError as error:
        raise ListFormatError(source, line_number, str(error)) from None


def _folder_study(image_root: Path, raw_folder: str, source: Path, line_number: int, require_images: bool) -> Study:
    folder = reroot_folder(raw_folder)
    if not folder:
        raise ListFormatError(source, line_number, "empty study folder")
    absolute = _resolve(image_root, folder, source, line_number)
    images = list_study_images(absolute)
    if require_images and not images:
        raise ListFormatError(source, line_number, f"study folder {folder} has no images under {image_root}")
    study_id, subject_id = _ids_from_folder(folder)
    return Study(study_id, subject_id, folder, images, [""] * len(images), line_number=line_number)


@dataclass
class IndexRecord:
    """One checked line of a ``{split}_studies.jsonl`` index, as both readers take it.

    ``relative`` are the image paths as written (relative to the image root), ``images`` the same
    joined onto the root by :func:`~refers.base.paths.safe_join`; ``labels`` is float32 [L] with
    NaN for "not mentioned", or None.
    """

    study_id: str
    subject_id: str
    folder: str
    relative: list[str]
    images: list[Path]
    views: list[str]
    findings: str
    impression: str
    text: str
    labels: np.ndarray | None
    split: str
    line_number: int


def _index_record(record: dict, image_root: Path, path: Path, line_number: int, folders: dict[str, Path]) -> IndexRecord:
    relative = [str(rel) for rel in record["images"]]
    images = [_resolve(image_root, rel, path, line_number, folders) for rel in relative]
    views = [str(v) for v in (record.get("views") or [""] * len(images))]
    if len(views) != len(images):
        raise ListFormatError(path, line_number, f"{len(images)} images but {len(views)} views")
    labels = record.get("labels")
    if labels is not None:
        labels = np.array([np.nan if v is None else v for v in labels], dtype=np.float32)
    return IndexRecord(
        study_id=str(record["study_id"]), subject_id=str(record.get("subject_id", "")), folder=str(record.get("folder", "")),
        relative=relative, images=images, views=views, findings=record.get("findings") or "",
        impression=record.get("impression") or "", text=record.get("text") or "", labels=labels,
        split=record.get("split", ""), line_number=line_number,
    )


def iter_study_index(path: str | os.PathLike, image_root: str | os.PathLike, require_images: bool = True) -> Iterator[IndexRecord]:
    """The one parser of the JSON-lines study index: its checked records in file order.

    Every image path goes through :func:`~refers.base.paths.safe_join`; with ``require_images``
    every study must have images and each must be a file on disk.

    Raises:
        ListFormatError: a malformed line (also a byte that is not UTF-8, or labels of another count
            than the first labelled line's), a path leaving the image root, a views/images mismatch,
            or (``require_images``) a study without images or a missing image; ``file:line`` first.
    """
    path, image_root = Path(path), Path(image_root)
    folders: dict[str, Path] = {}  # safe_join's memo of resolved study folders, for this read
    label_count: tuple[int, int] | None = None  # (labels per study, the line that set it)
    with open(path, "rb") as handle:  # line by line: the index of MIMIC is too big to hold at once
        for line_number, raw in enumerate(handle, start=1):
            line = decode_line(raw, path, line_number)
            if not line.strip():
                continue
            if len(folders) > 4096:  # the index goes study by study: a small memo serves, a big one stays in RSS
                folders.clear()
            try:
                record = _index_record(json.loads(line), image_root, path, line_number, folders)
            except ListFormatError:
                raise
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
                raise ListFormatError(path, line_number, f"not a study record: {error}") from None
            if record.labels is not None:
                label_count = label_count or (len(record.labels), line_number)
                if len(record.labels) != label_count[0]:
                    raise ListFormatError(path, line_number, f"{len(record.labels)} labels, expected {label_count[0]} "
                                                             f"(as line {label_count[1]})")
            if require_images:
                missing = next((p for p in record.images if not p.is_file()), None)
                if missing is not None or not record.images:
                    raise ListFormatError(path, line_number, f"image {missing} not found" if missing else "study without images")
            yield record


def study_of(record: IndexRecord) -> Study:
    """The :class:`Study` of an index record."""
    return Study(
        study_id=record.study_id, subject_id=record.subject_id, folder=record.folder, images=record.images,
        views=record.views, findings=record.findings, impression=record.impression, text=record.text,
        labels=record.labels, split=record.split, line_number=record.line_number,
    )


def _read_text_list(path: Path, image_root: Path, require_images: bool) -> list[Study]:
    with open(path, encoding="utf-8", newline=None) as handle:
        lines = handle.read().split("\n")
    captioned = any("\t" in line for line in lines)
    studies = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if captioned:
            folder, sep, text = line.partition("\t")
            if not sep:
                raise ListFormatError(path, line_number, "expected 'study folder<TAB>report text'")
            study = _folder_study(image_root, folder, path, line_number, require_images)
            study.text = " ".join(text.split())
        else:
            study = _folder_study(image_root, line, path, line_number, require_images)
        studies.append(study)
    if not captioned:
        label_file = path.with_name(f"{path.stem}_label.npy")
        if label_file.is_file():
            labels = np.load(label_file, allow_pickle=False)
            if labels.ndim != 2 or len(labels) != len(studies):
                raise ListFormatError(label_file, 1, f"label matrix of shape {labels.shape} for {len(studies)} studies in {path.name}")
            for study, row in zip(studies, labels.astype(np.float32)):
                study.labels = row
    return studies


def read_study_index(path: str | os.PathLike, image_root: str | os.PathLike, require_images: bool = True) -> list[Study]:
    """Read the studies of a MIMIC list file in any of the three formats (see the module docstring).

    Args:
        path: ``{split}_studies.jsonl``, ``{split}_img_caption(s)_patients.txt`` or a folder list
            such as ``test.txt`` (labels from ``test_label.npy`` beside it when present).
        image_root: the folder the list's paths are relative to (``Data/MIMIC-CXR/prepared``, or
            ``image_root`` of ``DataProcessed/MIMIC/dataset.yaml``).
        require_images: raise when a study has no image on disk (turn off to read a list without
            its images, e.g. the published files).

    Returns:
        the studies in file order.

    Raises:
        FileNotFoundError: no such list file.
        ListFormatError: a malformed line, a path leaving the image root, a study without images,
            or a label matrix whose rows do not match (file and line in the message).
    """
    path, image_root = Path(path), Path(image_root)
    if not path.is_file():
        raise FileNotFoundError(f"study list not found: {path}")
    if path.suffix == ".jsonl":
        return [study_of(record) for record in iter_study_index(path, image_root, require_images)]
    return _read_text_list(path, image_root, require_images)


def first_listed_path(path: str | os.PathLike) -> str | None:
    """The first image (study index) or study folder (the original's lists) a list names, relative
    to its image root as the readers take it; None for an empty or unreadable list. Used to find
    the image root (:meth:`refers.data.image_roots.ImageRoots.root_for`) before the list is read."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            line = next((line for line in handle if line.strip()), None)
    except (OSError, UnicodeDecodeError):
        return None
    if line is None:
        return None
    if path.suffix == ".jsonl":
        try:
            images = json.loads(line).get("images") or []
        except (json.JSONDecodeError, AttributeError):
            return None
        return str(images[0]) if images and isinstance(images[0], str) else None
    return reroot_folder(line.partition("\t")[0]) or None


def find_caption_list(folder: str | os.PathLike, split: str) -> Path:
    """``{split}_img_caption_patients.txt`` in ``folder``, also under the README's spelling and ``valid``."""
    folder = Path(folder)
    names = [split, "valid"] if split == "val" else [split]
    for name in names:
        for pattern in ("{}_img_caption_patients.txt", "{}_img_captions_patients.txt"):
            candidate = folder / pattern.format(name)
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no {split}_img_caption_patients.txt in {folder}")


# --------------------------------------------------------------------------- writers (refers prepare mimic)


def one_line(text: str) -> str:
    """Report text for a tab-separated line: tabs and newlines removed, spaces collapsed."""
    return " ".join(text.split())


def _relative(path: Path, image_root: Path) -> str:
    return Path(path).resolve().relative_to(image_root.resolve()).as_posix()


def write_study_index(path: str | os.PathLike, studies: Iterable[Study], image_root: str | os.PathLike) -> Path:
    """Write the JSON-lines study index (image paths relative to ``image_root``), atomically."""
    image_root = Path(image_root)
    lines = []
    for study in studies:
        labels = None
        if study.labels is not None:
            labels = [None if math.isnan(v) else float(v) for v in study.labels.tolist()]
        record = {
            "study_id": study.study_id,
            "subject_id": study.subject_id,
            "split": study.split,
            "folder": study.folder,
            "images": [_relative(p, image_root) for p in study.images],
            "views": list(study.views),
            "findings": study.findings,
            "impression": study.impression,
            "text": study.text,
            "labels": labels,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return Path(path)


def write_caption_list(path: str | os.PathLike, studies: Sequence[Study]) -> Path:
    """Write the original's ``{split}_img_caption_patients.txt`` (folder ending in ``/``, TAB, text)."""
    lines = [f"{study.folder}/\t{one_line(study.text)}" for study in studies]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return Path(path)


def write_study_list(path: str | os.PathLike, studies: Sequence[Study], labels: np.ndarray) -> tuple[Path, Path]:
    """Write a folder list (``train.txt``) and its label matrix (``train_label.npy``, float32 [N, L])."""
    path = Path(path)
    if len(labels) != len(studies):
        raise ValueError(f"{len(studies)} studies but {len(labels)} label rows")
    atomic_write_text(path, "".join(f"{study.folder}\n" for study in studies))
    label_path = path.with_name(f"{path.stem}_label.npy")
    with atomic_output(label_path, suffix=".npy") as tmp:  # (np.save adds .npy to any other name)
        np.save(tmp, np.asarray(labels, dtype=np.float32))
    return path, label_path
