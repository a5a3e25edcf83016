"""``refers prepare nih``: ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``) -> ``train.txt`` / ``val.txt`` / ``test.txt``.

Metadata: NIH's current download names it ``Data_Entry_2017_v2020.csv`` (labels revised for 181
images); the 2017 file ``Data_Entry_2017.csv`` (CRLF, a trailing comma in the header) is read too,
plain or gzipped. When both are there the 2020 revision is used, and the summary says so;
``--metadata FILE`` chooses. ``dataset.yaml`` records the file read and its sha256.

Lines in the original format: ``images_XXX/NAME.png`` (the archive folder the image is in; the
loader also finds it under ``images_XXX/images/``) followed by the 14 labels in the original class
order (:data:`~refers.data.registry.NIH_CLASSES`) as ``0``/``1``. The image root is the dataset folder.

Splits (never the same patient in two):

* ``original`` (with ``--lists DIR``): validation and test are the original's published ``val.txt`` /
  ``test.txt``, written line for line (order, text, labels; see
  :func:`refers.prepare.splits.keep_published_lists`); train is every other image in metadata order
  (78,468 on the real data), less any image whose patient is in validation or test. This reproduces
  the paper's split and its test labels.
* ``official``: test = the official ``test_list.txt``; validation carved from ``train_val_list.txt``
  by patient (share ``val / (train + val)`` of ``--ratios``).
* ``patient``: seeded patient-disjoint split by ``--ratios`` (default 0.7 / 0.1 / 0.2, like the original's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.data.registry import NIH_CLASSES
from refers.data.lists import write_list
from refers.prepare.common import (PrepareError, Summary, ensure_new, ensure_separate, find_source, made_by, metadata_record,
                                   portable_path, read_csv, write_dataset_yaml)
from refers.base.synthetic import stamp_synthetic, synthetic_marker
from refers.prepare.layout import locate_image
from refers.prepare.resize import ResizeSpec, prepare_images, source_size
from refers.prepare.splits import SPLITS, assignment_from_lists, group_split, keep_published_lists, overlaps, write_split_lists

DATA_ENTRY = "Data_Entry_2017.csv"
# Newest first: the first present is read by default.
DATA_ENTRIES = ("Data_Entry_2017_v2020.csv", DATA_ENTRY)
NO_FINDING = "No Finding"


def find_images(root: Path) -> dict[str, str]:
    """Image file name -> list path (``images_XXX/NAME.png``, or ``images/NAME.png`` for one flat folder)."""
    found: dict[str, str] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("images")):
        for sub in (folder / "images", folder):
            if not sub.is_dir():
                continue
            with os.scandir(sub) as entries:
                for entry in entries:
                    if entry.is_file() and entry.name.lower().endswith(".png"):
                        found.setdefault(entry.name, f"{folder.name}/{entry.name}")
    return found


def parse_findings(text: str, where: str) -> np.ndarray:
    """``Cardiomegaly|Effusion`` -> 14 0/1 labels in :data:`NIH_CLASSES` order (``No Finding`` -> zeros)."""
    labels = np.zeros(len(NIH_CLASSES), dtype=np.float32)
    for name in (part.strip() for part in text.split("|")):
        if name in ("", NO_FINDING):
            continue
        if name not in NIH_CLASSES:
            raise PrepareError(f"{where}: unknown finding {name!r} (expected one of {', '.join(NIH_CLASSES)} or {NO_FINDING!r})")
        labels[NIH_CLASSES.index(name)] = 1
    return labels


def _names_from_text(path: Path) -> list[tuple[int, str]]:
    """Image names of ``train_val_list.txt`` / ``test_list.txt`` with their line numbers."""
    with open(path, encoding="utf-8", newline=None) as handle:
        return [(n, line.strip()) for n, line in enumerate(handle, start=1) if line.strip()]


def _shorter_side(path: Path) -> int:
    """The shorter side of an image from its header; 0 when unreadable (prepare_images reports it)."""
    try:
        return min(source_size(path))
    except OSError:
        return 0


def find_metadata(root: Path, chosen: Path | None, summary: Summary) -> Path:
    """``--metadata`` (as given, or under ``root``), else the newest revision in ``root`` (plain or ``.gz``).

    Raises:
        FileNotFoundError: the chosen file, or every revision, is missing.
    """
    if chosen is not None:
        for candidate in (Path(chosen), root / chosen):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"--metadata {chosen} not found")
    found = []
    for name in DATA_ENTRIES:
        try:
            found.append(find_source(root, name))
        except FileNotFoundError:
            pass
    if not found:
        raise FileNotFoundError(f"{' or '.join(str(root / n) for n in DATA_ENTRIES)} not found (plain or .gz; "
                                "is --root the dataset's download folder? --metadata names another file)")
    if len(found) > 1:
        summary.note(f"found {' and '.join(p.name for p in found)}: read {found[0].name}, the current revision "
                     "(--metadata chooses)")
    return found[0]


@dataclass
class _Entries:
    """The rows of the data entry file: one image each, in the file's order."""

    csv_path: Path
    names: list[str]
    labels: list[np.ndarray]
    patients: list[str]
    line_of: dict[str, int]  # image name -> its line in the CSV

    def indices(self, source: Path, entries: list[tuple[int, str]]) -> list[int]:
        """The rows of the image names ``entries`` (line, name) read from ``source``."""
        index = {name: i for i, name in enumerate(self.names)}
        found = []
        for line, name in entries:
            if name not in index:
                raise PrepareError(f"{source}:{line}: image {name} is not in {self.csv_path.name}")
            found.append(index[name])
        return found


def _read_entries(csv_path: Path) -> _Entries:
    """Parse the data entry file; an image listed twice is an error naming both lines."""
    entries = _Entries(csv_path, [], [], [], {})
    for line, row in read_csv(csv_path, ("Image Index", "Finding Labels", "Patient ID")):
        name = row["Image Index"]
        if name in entries.line_of:
            raise PrepareError(f"{csv_path}:{line}: image {name} listed twice (first on line {entries.line_of[name]})")
        entries.line_of[name] = line
        entries.names.append(name)
        entries.labels.append(parse_findings(row["Finding Labels"], f"{csv_path}:{line}"))
        entries.patients.append(row["Patient ID"])
    return entries


def _assign(entries: _Entries, root: Path, split: str, lists: Path | None, ratios: Sequence[float], seed: int,
            sources: list[Path]) -> np.ndarray:
    """Each row's split (0 train, 1 val, 2 test; -1 left out) by the ``split`` rule; adds the files read to ``sources``."""
    names, patients = entries.names, entries.patients
    assignment = np.full(len(names), -1, dtype=np.int64)
    if split == "patient":
        assignment[:] = group_split(patients, ratios, seed)
    elif split == "official":
        test_path = find_source(root, "test_list.txt")
        sources.append(test_path)
        test = entries.indices(test_path, _names_from_text(test_path))
        assignment[:] = 0
        assignment[test] = 2
        rest = np.flatnonzero(assignment == 0)
        shares = (ratios[0], ratios[1], 0.0)
        assignment[rest] = group_split([patients[i] for i in rest], shares, seed)
    elif split == "original":
        if lists is None:
            raise PrepareError("--split original needs --lists DIR (the original's published val.txt and test.txt)")
        assignment, list_files = assignment_from_lists(lists, names, len(NIH_CLASSES), ("val", "test"))
        sources += list_files
        assignment[assignment < 0] = 0  # train = every other image
    else:
        raise PrepareError(f"unknown --split {split!r} (original, official or patient)")
    return assignment


def _keep_patients_apart(entries: _Entries, assignment: np.ndarray, lists: Path | None,
                         summary: Summary) -> dict[str, set[str]]:
    """Leave out the train images of val/test patients; the patients of each split."""
    patients = entries.patients
    held_out = {patients[i] for i in np.flatnonzero(assignment > 0)}
    leaking = [i for i in np.flatnonzero(assignment == 0) if patients[i] in held_out]
    if leaking:
        assignment[leaking] = -1
        summary.note(f"left {len(leaking)} train images out: their patients are in val/test")
    by_split = {name: {patients[i] for i in np.flatnonzero(assignment == k)} for k, name in enumerate(SPLITS)}
    for a, b, shared in overlaps(by_split):
        raise PrepareError(f"patients in both {a} and {b} (e.g. {sorted(shared)[0]}): the lists in {lists} are not patient-disjoint")
    return by_split


def _leave_out_missing(entries: _Entries, assignment: np.ndarray, on_disk: dict[str, str], root: Path,
                       skip_bad: bool, summary: Summary) -> None:
    """Stop at listed images that are not on disk, or with ``skip_bad`` leave them out."""
    names, csv_path = entries.names, entries.csv_path
    missing = [i for i in np.flatnonzero(assignment >= 0) if names[i] not in on_disk]
    if missing:
        first = names[missing[0]]
        if not skip_bad:
            raise PrepareError(f"{len(missing)} image(s) of {csv_path.name} not under {root}, first: {first} "
                               f"({csv_path}:{entries.line_of[first]}); pass --skip-bad-images to leave them out")
        summary.note(f"left out {len(missing)} images not on disk (--skip-bad-images)")
        assignment[missing] = -1


def _copy_smaller(entries: _Entries, assignment: np.ndarray, on_disk: dict[str, str], root: Path,
                  images_out: Path | None, short_side: int | None, workers: int, skip_bad: bool,
                  summary: Summary) -> Path:
    """With ``short_side``, copy the listed images smaller into ``images_out`` when they are larger; the image root."""
    names = entries.names
    listed = np.flatnonzero(assignment >= 0)
    files = {i: locate_image(root, on_disk[names[i]]) for i in listed}
    sample = [files[i] for i in listed[:: max(1, len(listed) // 50)]]
    if short_side and images_out is not None and any(_shorter_side(p) > short_side for p in sample):
        ensure_separate(images_out, root, "--images-out")
        jobs = [(str(files[i]), str(images_out / on_disk[names[i]])) for i in listed]
        done = prepare_images(jobs, ResizeSpec(short_side=short_side), workers, skip_bad, summary, "nih images")
        for i, (source, _) in zip(listed, jobs):
            if source not in done:  # unreadable, left out with --skip-bad-images
                assignment[i] = -1
        stamp_synthetic(images_out, synthetic_marker(root))
        return images_out
    if short_side:
        summary.note(f"images are at most {short_side} px on their shorter side already: the lists point to the originals")
    return root


def _write_original(entries: _Entries, labels: np.ndarray, paths: list[str], assignment: np.ndarray, lists: Path,
                    image_root: Path, labels_from: str, out: Path, summary: Summary) -> tuple[list[Path], dict[str, dict]]:
    """val/test as published (line for line), train = every other listed image in metadata order."""
    train = np.flatnonzero(assignment == 0)
    summary.add("train", len(train))
    rewritten = []

    def path_of(published: str, i: int) -> str:
        # The published path when it finds the image (the download's images_XXX/ or a flat images/ folder).
        if published == paths[i] or locate_image(image_root, published) is not None:
            return published
        rewritten.append(published)
        return paths[i]

    kept, written, _, counts = keep_published_lists(
        out, lists, ("val", "test"), entries.names, labels, NIH_CLASSES, str(entries.csv_path), summary,
        take=labels_from, keep=assignment > 0, path_of=path_of)
    if rewritten:
        summary.note(f"{len(rewritten)} published paths name another folder than the download's (e.g. {rewritten[0]}): "
                     "wrote the download's")
    written.insert(0, write_list(out / "train.txt", [paths[i] for i in train], labels[train]))
    return written, {"train": {"images": int(len(train))}, **counts}


def prepare_nih(
    root: Path,
    out: Path,
    split: str = "patient",
    lists: Path | None = None,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    force: bool = False,
    skip_bad: bool = False,
    command: str = "refers prepare nih",
    images_out: Path | None = None,
    short_side: int | None = None,
    workers: int = 1,
    metadata: Path | None = None,
    labels_from: str = "published",
) -> Summary:
    """Write the NIH ChestX-ray14 lists (see the module docstring).

    With ``short_side`` (and ``images_out``), the listed images are also copied to ``images_out``
    at that shorter side (PNG, bilinear, never upscaled) and the lists' image root is that copy:
    decoding a 1024x1024 PNG is most of the cost of loading it, and 512 px still holds every crop
    the 224 px training transform takes at scale >= 0.19 at full detail. Skipped when the images
    are no larger than that already. ``metadata`` names the data entry file (default: see
    :func:`find_metadata`); ``labels_from`` (``published`` or ``metadata``) says whose labels the
    published val/test lines take where they differ (``--split original``).
    """
    ensure_separate(out, root, "--out")
    ensure_new(out, [f"{s}.txt" for s in SPLITS], force)
    summary = Summary(f"nih -> {out}")
    csv_path = find_metadata(root, metadata, summary)
    sources = [csv_path]
    entries = _read_entries(csv_path)
    on_disk = find_images(root)

    assignment = _assign(entries, root, split, lists, ratios, seed, sources)
    by_split = _keep_patients_apart(entries, assignment, lists, summary)  # never the same patient in two splits
    _leave_out_missing(entries, assignment, on_disk, root, skip_bad, summary)
    image_root = _copy_smaller(entries, assignment, on_disk, root, images_out, short_side, workers, skip_bad, summary)

    labels = entries.labels
    label_matrix = np.stack(labels) if labels else np.zeros((0, len(NIH_CLASSES)), dtype=np.float32)
    # Listed images are all on disk (checked above); the path includes their images_XXX folder.
    paths = [on_disk.get(name, name) for name in entries.names]
    if split == "original":
        written, counts = _write_original(entries, label_matrix, paths, assignment, lists, image_root, labels_from, out, summary)
    else:
        written, counts = write_split_lists(out, paths, label_matrix, assignment, summary)
    for name in SPLITS:
        counts[name]["patients"] = len(by_split[name])

    marker = synthetic_marker(root)
    stamp_synthetic(out, marker)
    write_dataset_yaml(out, {
        "dataset": "NIH_ChestX-ray",
        "synthetic": marker is not None,
        "image_root": portable_path(image_root, out),
        "short_side": short_side if image_root != root else None,
        "classes": list(NIH_CLASSES),
        "label_columns": len(NIH_CLASSES),
        "label_style": "int",
        "metadata": metadata_record(csv_path),
        "split": split,
        "splits": counts,
        "made_by": made_by(command, sources, seed if split != "original" else None, marker is not None,
                           split=split, ratios=[float(r) for r in ratios] if split != "original" else None,
                           labels=labels_from if split == "original" else None),
    }, written)
    return summary
