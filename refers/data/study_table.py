"""The pre-training study index as columns: a few numpy arrays instead of 227,835 Python objects.

A list of :class:`~refers.data.mimic_lists.Study` objects for all of MIMIC-CXR costs about a
gigabyte of small Python objects (paths, strings, dataclasses), takes many seconds to build, and
grows in every data-loader worker: reading an object writes its reference count, so the page that
holds it is copied into the worker (copy-on-write after ``fork`` does not survive refcounting).

:class:`StudyTable` keeps the same information in flat arrays (UTF-8 buffers with offsets, int8
view codes, a float16 label matrix): a handful of Python objects in total, whose pages workers
only read. ``table[i]`` builds the one :class:`Study` a sample needs, with absolute image paths
checked by :func:`refers.base.paths.safe_join`.

Loading a ``{split}_studies.jsonl`` parses it once, with the format's one parser
(:func:`refers.data.mimic_lists.iter_study_index`: ``safe_join`` on every path, every image checked
on disk, every report section kept), and keeps the columns in a cache folder beside it
(``.<name>.table/``, keyed by the index's size and modification time) that later loads
memory-map: they take a fraction of a second and read nothing until samples do.
"""

from __future__ import annotations

import json
import os
import shutil
from array import array
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.base.errors import ListFormatError
from refers.base.json_files import read_json
from refers.data.mimic_lists import IndexRecord, Study, iter_study_index, read_study_index
from refers.base.paths import safe_join

CACHE_VERSION = 2  # 2: findings and impression columns; images checked on disk when parsed
SPLIT_NAMES = ("", "train", "val", "test", "validate")
_SPLITS = {name: code for code, name in enumerate(SPLIT_NAMES)}
COLUMNS = ("text", "text_offsets", "section_spans", "extra_sections", "extra_sections_offsets", "ids", "ids_offsets", "paths", "paths_offsets", "image_start", "view_codes", "labels",
           "has_labels", "text_nonblank", "split_codes", "line_numbers")


class PackedStrings:
    """Strings stored as one UTF-8 buffer (uint8 [bytes]) and offsets (int64 [n + 1])."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray):
        self.buffer, self.offsets = buffer, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.buffer[start:end].tobytes().decode("utf-8")


class StringsBuilder:
    """Appends strings to a growing buffer without keeping a Python object per string."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.offsets = array("q", [0])

    def add(self, text: str) -> None:
        self.buffer += text.encode("utf-8")
        self.offsets.append(len(self.buffer))

    def finish(self) -> PackedStrings:
        buffer = np.frombuffer(bytes(self.buffer), dtype=np.uint8)
        return PackedStrings(buffer, np.frombuffer(self.offsets, dtype=np.int64).copy())


class StudyTable:
    """Studies in columns; a sequence of :class:`Study` (``len``, ``table[i]``, iteration).

    Args:
        image_root: folder the image paths are relative to.
        columns: the arrays named in :data:`COLUMNS`.
        rows: the studies of ``columns`` this table shows, in order (default: all).
        view_names: view name of each view code.
    """

    def __init__(self, image_root: str | os.PathLike, columns: dict[str, np.ndarray], rows: np.ndarray | None = None,
                 view_names: Sequence[str] = ("",)):
        self.image_root = Path(image_root)
        self.columns = columns
        self.view_names = tuple(view_names)
        self.rows = np.arange(len(columns["text_offsets"]) - 1, dtype=np.int64) if rows is None else rows
        self._text = PackedStrings(columns["text"], columns["text_offsets"])
        self._extra_sections = PackedStrings(columns["extra_sections"], columns["extra_sections_offsets"])
        self._ids = PackedStrings(columns["ids"], columns["ids_offsets"])
        self._paths = PackedStrings(columns["paths"], columns["paths_offsets"])

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_studies(cls, studies: Sequence[Study], image_root: str | os.PathLike) -> "StudyTable":
        """Columns of already-read studies (the original's text formats).

        Raises:
            ValueError: an image that is not under ``image_root``.
        """
        builder = _TableBuilder(Path(image_root))
        root = Path(image_root).resolve()
        for study in studies:
            rel = [Path(path).resolve().relative_to(root).as_posix() for path in study.images]
            builder.add(study.study_id, study.subject_id, study.folder, rel, study.views, study.findings, study.impression,
                        study.text, study.labels, study.split, study.line_number)
        return builder.finish()

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, image_root: str | os.PathLike, require_images: bool = True) -> "StudyTable":
        """Parse a ``{split}_studies.jsonl`` index into columns, with the one parser of the format
        (:func:`refers.data.mimic_lists.iter_study_index`: ``safe_join`` on every path, every report
        section, and with ``require_images`` every image found on disk).

        Raises:
            ListFormatError: a malformed line, a path leaving the image root, a missing image (file:line).
        """
        builder = _TableBuilder(Path(image_root))
        for record in iter_study_index(path, image_root, require_images):
            builder.add_record(record, path)
        return builder.finish()

    # -- access ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _strings(self, row: int) -> tuple[str, str, str]:
        return self._ids[3 * row], self._ids[3 * row + 1], self._ids[3 * row + 2]

    def _section(self, row: int, which: int) -> str:
        """FINDINGS (0) or IMPRESSION (1) of ``row``: a byte span of its text, or a stored extra string."""
        start, end = (int(v) for v in self.columns["section_spans"][row, 2 * which:2 * which + 2])
        if start < 0:
            return self._extra_sections[end]
        base = int(self.columns["text_offsets"][row])
        return self.columns["text"][base + start:base + end].tobytes().decode("utf-8")

    def text(self, index: int) -> str:
        """Report text of study ``index`` (without building the whole study)."""
        return self._text[int(self.rows[index])]

    def __getitem__(self, index: int) -> Study:
        row = int(self.rows[index])
        cols = self.columns
        study_id, subject_id, folder = self._strings(row)
        first, last = int(cols["image_start"][row]), int(cols["image_start"][row + 1])
        labels = cols["labels"][row].astype(np.float32) if cols["has_labels"][row] else None
        return Study(
            study_id=study_id, subject_id=subject_id, folder=folder,
            images=[safe_join(self.image_root, self._paths[j]) for j in range(first, last)],
            views=[self.view_names[int(code)] for code in cols["view_codes"][first:last]],
            findings=self._section(row, 0), impression=self._section(row, 1),
            text=self._text[row], labels=labels, split=SPLIT_NAMES[int(cols["split_codes"][row])],
            line_number=int(cols["line_numbers"][row]),
        )

    def usable(self) -> np.ndarray:
        """bool [len]: studies with report text and at least one image (what pre-training can use)."""
        cols = self.columns
        images = np.diff(cols["image_start"])[self.rows]
        return (cols["text_nonblank"][self.rows]) & (images > 0)

    def select(self, indices: np.ndarray) -> "StudyTable":
        """The studies at ``indices`` (of this table), sharing the columns."""
        return StudyTable(self.image_root, self.columns, self.rows[np.asarray(indices, dtype=np.int64)], self.view_names)

    def nbytes(self) -> int:
        """Bytes held by the columns (the table's memory, give or take a few hundred bytes)."""
        return int(sum(a.nbytes for a in self.columns.values()) + self.rows.nbytes)

    # -- cache ----------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike, key: dict) -> None:
        """Write the columns as ``.npy`` files in ``folder`` with ``key.json`` (identifying the source)
        last; the folder is built beside and renamed into place."""
        folder = Path(folder)
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for name, values in {**self.columns, "rows": self.rows, "view_names": np.asarray(self.view_names)}.items():
                with open(tmp / f"{name}.npy", "wb") as handle:
                    np.save(handle, values)
                    handle.flush()
                    # On disk before use: a crash leaves no half-written cache, and the pages that
                    # workers map are clean page cache, shared, never private to one of them.
                    os.fsync(handle.fileno())
            (tmp / "key.json").write_text(json.dumps(key), encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load_cached(cls, folder: str | os.PathLike, key: dict, image_root: str | os.PathLike) -> "StudyTable | None":
        """The table saved in ``folder`` if its key matches ``key``, else None.

        The columns are memory-mapped read-only: loading reads nothing, pages come in as samples
        touch them, and they are the page cache's (shared by every worker), not private copies.
        """
        folder = Path(folder)
        try:
            if read_json(folder / "key.json") != key:
                return None
            columns = {f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in folder.glob("*.npy")}
            rows, names = columns.pop("rows"), columns.pop("view_names")
            if set(columns) != set(COLUMNS):
                return None
            return cls(image_root, columns, np.asarray(rows), [str(v) for v in names])
        except (OSError, ValueError, KeyError):  # missing or damaged: rebuilt, never trusted
            return None


class _TableBuilder:
    """Accumulates studies into the columns of a :class:`StudyTable`."""

    def __init__(self, image_root: Path):
        self.image_root = image_root
        self.text, self.extra_sections = StringsBuilder(), StringsBuilder()
        self.section_spans = array("i")
        self.ids, self.paths = StringsBuilder(), StringsBuilder()
        self.image_start = array("q", [0])
        self.view_codes = array("b")
        self.view_index: dict[str, int] = {"": 0}
        self.labels = array("f")
        self.label_width: int | None = None
        self.has_labels, self.nonblank, self.splits, self.lines = array("b"), array("b"), array("b"), array("i")

    def add_record(self, record: IndexRecord, source: str | os.PathLike) -> None:
        """Add one parsed index line (a bad label row becomes a ``file:line`` error)."""
        try:
            self.add(record.study_id, record.subject_id, record.folder, record.relative, record.views, record.findings,
                     record.impression, record.text, record.labels, record.split, record.line_number)
        except ValueError as error:
            raise ListFormatError(source, record.line_number, str(error)) from None

    def add(self, study_id: str, subject_id: str, folder: str, images: Sequence[str], views: Sequence[str], findings: str,
            impression: str, text: str, labels: np.ndarray | None, split: str, line_number: int) -> None:
        """Add one study; ``images`` relative to the image root, ``labels`` float [L] (NaN: not mentioned) or None."""
        # Inlined appends: this runs 227,835 times for MIMIC, and method calls are most of the cost.
        text_buf, text_offsets = self.text.buffer, self.text.offsets
        text_buf += text.encode("utf-8")
        text_offsets.append(len(text_buf))
        # The sections are (almost always) parts of the training text: kept as byte spans of it, 16 bytes
        # a study instead of a second copy of every report (which doubled the index's memory).
        for value in (findings, impression):
            at = text.find(value) if value else 0
            if at < 0:
                self.section_spans.extend((-1, len(self.extra_sections.offsets) - 1))
                self.extra_sections.add(value)
                continue
            start = at if text.isascii() else len(text[:at].encode("utf-8"))
            self.section_spans.extend((start, start + len(value.encode("utf-8"))))
        self.nonblank.append(1 if text and not text.isspace() else 0)
        ids_buf, ids_offsets = self.ids.buffer, self.ids.offsets
        for value in (study_id, subject_id, folder):
            ids_buf += value.encode("utf-8")
            ids_offsets.append(len(ids_buf))
        paths_buf, paths_offsets, codes, view_index = self.paths.buffer, self.paths.offsets, self.view_codes, self.view_index
        for relative, view in zip(images, views):
            paths_buf += relative.encode("utf-8")
            paths_offsets.append(len(paths_buf))
            code = view_index.get(view)
            if code is None:
                code = view_index[view] = len(view_index)
                if code > 127:
                    raise ValueError(f"more than 127 distinct view names (at {view!r})")
            codes.append(code)
        self.image_start.append(len(codes))
        self.has_labels.append(labels is not None)
        if labels is not None:  # only labelled rows are stored; finish() places them
            if self.label_width is None:
                self.label_width = len(labels)
            if len(labels) != self.label_width:
                raise ValueError(f"{len(labels)} labels, expected {self.label_width}")
            self.labels.frombytes(np.asarray(labels, dtype=np.float32).tobytes())
        self.splits.append(_SPLITS.get(split, 0))
        self.lines.append(line_number)

    def finish(self) -> StudyTable:
        count = len(self.lines)
        width = self.label_width or 0
        text, extra, ids, paths = self.text.finish(), self.extra_sections.finish(), self.ids.finish(), self.paths.finish()
        has_labels = np.frombuffer(self.has_labels, dtype=np.int8).astype(bool)
        # float16 holds the CheXpert values (1, 0, -1, NaN = not mentioned) exactly, in half the bytes.
        labels = np.full((count, width), np.nan, dtype=np.float16)
        if width:
            labels[has_labels] = np.frombuffer(self.labels, dtype=np.float32).reshape(-1, width)
        columns = {
            "text": text.buffer, "text_offsets": text.offsets,
            "section_spans": np.frombuffer(self.section_spans, dtype=np.int32).reshape(count, 4).copy(),
            "extra_sections": extra.buffer, "extra_sections_offsets": extra.offsets,
            "ids": ids.buffer, "ids_offsets": ids.offsets,
            "paths": paths.buffer, "paths_offsets": paths.offsets,
            "image_start": np.frombuffer(self.image_start, dtype=np.int64).copy(),
            "view_codes": np.frombuffer(self.view_codes, dtype=np.int8).copy(),
            "labels": labels,
            "has_labels": has_labels,
            "text_nonblank": np.frombuffer(self.nonblank, dtype=np.int8).astype(bool),
            "split_codes": np.frombuffer(self.splits, dtype=np.int8).copy(),
            "line_numbers": np.frombuffer(self.lines, dtype=np.int32).copy(),
        }
        views = sorted(self.view_index, key=self.view_index.get)
        return StudyTable(self.image_root, columns, view_names=views)


def cache_path(index: str | os.PathLike) -> Path:
    """The cache folder of an index file: ``.<name>.table`` beside it."""
    index = Path(index)
    return index.with_name(f".{index.name}.table")


def load_study_table(path: str | os.PathLike, image_root: str | os.PathLike, use_cache: bool = True,
                     require_images: bool = True) -> StudyTable:
    """The studies of a MIMIC list file as a :class:`StudyTable`.

    A ``.jsonl`` index is parsed into columns (once: they are cached beside it when the folder is
    writable, and later loads memory-map the cache); the original's text formats go through
    :func:`read_study_index`. With ``require_images`` (the default) every image must be on disk
    when the index is parsed; a cache records whether its parse checked them, and one that did
    not is not used for a load that requires them.

    Raises:
        FileNotFoundError: no such list. ListFormatError: a malformed line or a missing image (file:line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study list not found: {path}")
    if path.suffix != ".jsonl":
        return StudyTable.from_studies(read_study_index(path, image_root, require_images), image_root)
    if not use_cache:
        return StudyTable.from_jsonl(path, image_root, require_images)
    stat = path.stat()
    key = {"version": CACHE_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "images_checked": True}
    for checked in (True,) if require_images else (True, False):
        cached = StudyTable.load_cached(cache_path(path), {**key, "images_checked": checked}, image_root)
        if cached is not None:
            return cached
    key["images_checked"] = require_images
    table = StudyTable.from_jsonl(path, image_root, require_images)
    try:
        table.save(cache_path(path), key)
    except OSError:  # a read-only list folder: no cache, same table
        return table
    # Swap the parsed arrays for the memory-mapped copy: their memory goes back to the system.
    return StudyTable.load_cached(cache_path(path), key, image_root) or table
