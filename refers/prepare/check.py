"""``refers prepare check``: a list folder (ours or the original's published one) against its images.

Prints one summary line per list file (``<split>: N lines, M missing, K unreadable, D duplicated,
B bad lines``), then every problem with its file and line (missing, unreadable and duplicated
images, label columns of the wrong count or not 0/1, label matrices that do not match their list),
and the patients shared between train, val and test. Anything wrong makes the command fail.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from PIL import Image

from refers.base.errors import UnreadableImageError
from refers.data.images import HIGH_BIT_DEPTH_MODES, open_grey
from refers.base.errors import ListFormatError
from refers.base.text_files import text_lines
from refers.data.lists import parse_list_line
from refers.data.mimic_lists import read_study_index
from refers.data.registry import DatasetSpec
from refers.prepare.common import parallel_map, read_csv
from refers.prepare.layout import locate_image
from refers.prepare.splits import SPLITS, overlaps

MAX_SHOWN = 20
_MIMIC_LISTS = ("{}.txt", "{}_img_caption_patients.txt", "{}_img_captions_patients.txt", "{}_studies.jsonl")


@dataclass
class Entry:
    """One list line: where it is, what it names, the files found for it, and its patient."""

    line: int
    key: str
    files: list[Path]
    patient: str


@dataclass
class ListReport:
    """The check of one list file."""

    path: Path
    split: str
    entries: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"missing": 0, "unreadable": 0, "duplicated": 0, "bad lines": 0})

    def problem(self, kind: str, line: int, message: str) -> None:
        self.counts[kind] += 1
        self.problems.append(f"{self.path}:{line}: {message}")

    def summary(self) -> str:
        lines = len(self.entries) + self.counts["bad lines"]
        rest = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        return f"{self.split} ({self.path.name}): {lines} lines, {rest}"


def _patient_function(spec: DatasetSpec, image_root: Path):
    """file name -> patient id for the dataset (each image its own patient when unknown)."""
    if spec.name == "NIH_ChestX-ray":
        return lambda path: Path(path).name.split("_")[0]
    if spec.name == "Shenzhen_Tuberculosis":
        return lambda path: Path(path).name.rsplit("_", 1)[0]
    if spec.name == "COVID-19_Image_Data_Collection":
        metadata = image_root.parent / "metadata.csv"
        if metadata.is_file():
            try:
                mapping = {row["filename"]: row["patientid"] for _, row in read_csv(metadata, ("patientid", "filename"))}
                return lambda path: mapping.get(Path(path).name, Path(path).name)
            except ValueError:
                pass
    return lambda path: Path(path).name


def _check_image_list(report: ListReport, spec: DatasetSpec, image_root: Path, patient_of) -> None:
    one_hot = spec.binary and spec.label_columns == 2
    try:
        lines = list(text_lines(report.path))
    except ListFormatError as error:  # a byte that is not UTF-8: the rest of the file cannot be trusted
        report.problem("bad lines", error.line_number, str(error).split(": ", 1)[-1])
        return
    for number, raw in lines:
        tokens = raw.split()
        if not tokens:
            continue
        try:
            path, _ = parse_list_line(tokens, report.path, number, spec.label_columns, spec.label_columns, one_hot)
            found = locate_image(image_root, path)
        except ListFormatError as error:
            report.problem("bad lines", number, str(error).split(": ", 1)[-1])
            continue
        except ValueError as error:
            report.problem("bad lines", number, str(error))
            continue
        report.entries.append(Entry(number, path, [found] if found else [], patient_of(path)))


def _check_study_list(report: ListReport, image_root: Path) -> None:
    try:
        studies = read_study_index(report.path, image_root, require_images=False)
    except ListFormatError as error:
        report.problem("bad lines", error.line_number, str(error).split(": ", 1)[-1])
        return
    for study in studies:
        report.entries.append(Entry(study.line_number, study.folder, list(study.images), study.subject_id or study.folder))


def _decode(path: Path) -> tuple[Path, str, bool]:
    """(path, error message or "", whether it holds more than 8 bits of grey)."""
    try:
        open_grey(path)
        with Image.open(path) as image:
            high = image.mode in HIGH_BIT_DEPTH_MODES
    except (UnreadableImageError, OSError, ValueError) as error:
        return path, str(error), False
    return path, "", high


def list_files(spec: DatasetSpec, lists: Path) -> list[tuple[str, Path]]:
    """(split, file) of every list in the folder: the splits, then fraction files such as ``train_1_seed0.txt``."""
    found: list[tuple[str, Path]] = []
    if spec.alias == "mimic":
        for split in SPLITS:
            for pattern in _MIMIC_LISTS:
                for name in ([split, "valid"] if split == "val" else [split]):
                    path = lists / pattern.format(name)
                    if path.is_file():
                        found.append((split, path))
        return found
    for split in SPLITS:
        for name in ([f"{split}.txt", "valid.txt"] if split == "val" else [f"{split}.txt"]):
            if (lists / name).is_file():
                found.append((split, lists / name))
    for path in sorted(lists.glob("*.txt")):
        if re.match(r"^(train|val)_[\d.]+(_seed\d+)?\.txt$", path.name):
            found.append((path.stem, path))
    return found


def check_lists(
    spec: DatasetSpec, lists: Path, image_root: Path, workers: int = 1, decode: bool = True, stream: TextIO | None = None
) -> bool:
    """Check a list folder against an image root; print the report; True when nothing is wrong."""
    stream = stream or sys.stdout
    files = list_files(spec, lists)
    if not files:
        raise FileNotFoundError(f"no list files (train.txt, val.txt, test.txt, ...) in {lists}")
    patient_of = _patient_function(spec, image_root)
    reports = []
    for split, path in files:
        report = ListReport(path, split)
        if spec.alias == "mimic":
            _check_study_list(report, image_root)
        else:
            _check_image_list(report, spec, image_root, patient_of)
        seen: dict[str, int] = {}
        for entry in report.entries:
            if entry.key in seen:
                report.problem("duplicated", entry.line, f"{entry.key} already on line {seen[entry.key]}")
            seen.setdefault(entry.key, entry.line)
            if not entry.files:
                what = "study folder without images" if spec.alias == "mimic" else "image not found"
                report.problem("missing", entry.line, f"{what}: {entry.key} (under {image_root})")
        reports.append(report)

    if decode:
        unique = sorted({f for r in reports for e in r.entries for f in e.files})
        decoded = list(parallel_map(_decode, unique, workers, "check images"))
        failures = {p: m for p, m, _ in decoded if m}
        high_bits = sorted(p for p, _, high in decoded if high)
        for report in reports:
            for entry in report.entries:
                for path in entry.files:
                    if path in failures:
                        report.problem("unreadable", entry.line, failures[path])

    print(f"lists {lists}, images {image_root}", file=stream)
    for report in reports:
        print(report.summary(), file=stream)
    if decode and high_bits:  # not wrong: read scaled by their bit depth, but worth knowing
        print(f"  {len(high_bits)} image(s) hold 16-bit grey (read scaled to 8 bits by their bit depth), e.g. {high_bits[0]}",
              file=stream)
    wrong = False
    for report in reports:
        for text in report.problems[:MAX_SHOWN]:
            print(f"  {text}", file=stream)
        if len(report.problems) > MAX_SHOWN:
            print(f"  ... and {len(report.problems) - MAX_SHOWN} more in {report.path.name}", file=stream)
        wrong |= bool(report.problems)

    patients: dict[str, set[str]] = defaultdict(set)
    for report in reports:
        if report.split in SPLITS:
            patients[report.split] |= {e.patient for e in report.entries}
    for a, b, shared in overlaps(dict(patients)):
        wrong = True
        print(f"patient overlap: {len(shared)} patient(s) in both {a} and {b}, e.g. {', '.join(sorted(shared)[:5])}", file=stream)
    print("check: " + ("problems found" if wrong else "OK"), file=stream)
    return not wrong
