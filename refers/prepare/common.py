"""What every ``refers prepare`` command shares: output guards, provenance, parallel work, summaries.

Every folder written gets a ``dataset.yaml`` that says where the images are, which classes the
label columns hold, and how each file was made (command, source files with sha256, seed, and
``synthetic: true`` when the source carries the ``SYNTHETIC.txt`` marker). List files themselves stay
in the original's plain format, so the provenance lives beside them, not inside them.
"""

from __future__ import annotations

import csv
import gzip
import os
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

import yaml

from refers.base.version import __version__
from refers.base.atomic import atomic_write_text
from refers.base.digest import sha256_file
from refers.base.errors import UserError
# dataset.yaml's reading and the parallel map are the data layer's (the packed cache and the
# loaders use them too); prepare writes dataset.yaml and keeps these names for its modules.
from refers.data.image_roots import DATASET_YAML, image_root_of, read_dataset_yaml  # noqa: F401
from refers.data.parallel import parallel_map  # noqa: F401


class PrepareError(UserError, ValueError):
    """Bad input or an unsafe request; the message names the file (and line) at fault (exit 1)."""


# --------------------------------------------------------------------------- output guards


def ensure_new(folder: str | os.PathLike, names: Iterable[str], force: bool) -> None:
    """Refuse to overwrite existing files (e.g. a user's copy of the published lists) without --force."""
    existing = [name for name in names if (Path(folder) / name).exists()]
    if existing and not force:
        shown = ", ".join(existing[:4]) + (" ..." if len(existing) > 4 else "")
        raise PrepareError(f"{folder} already holds {shown}; pass --force to overwrite")


def ensure_separate(output: str | os.PathLike, source: str | os.PathLike, what: str) -> None:
    """Refuse an output folder that is the folder the raw files are read from."""
    if Path(output).resolve() == Path(source).resolve():
        raise PrepareError(f"{what} {output} is the source folder; prepare never writes into the folder it reads")


def ensure_outside(output: str | os.PathLike, source: str | os.PathLike, what: str) -> None:
    """Refuse an output folder that is the source folder, lies inside it or holds it."""
    out, src = Path(output).resolve(), Path(source).resolve()
    if out == src or out.is_relative_to(src) or src.is_relative_to(out):
        raise PrepareError(f"{what} {output} overlaps the source folder {source}; prepare never writes into or around "
                           "the folder it reads")


def require_file(path: Path, hint: str = "") -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found" + (f" ({hint})" if hint else ""))
    return path


# --------------------------------------------------------------------------- source tables


def find_source(root: Path, name: str) -> Path:
    """``root/name``, also accepting the uncompressed ``.csv`` of a ``.csv.gz`` (and the reverse)."""
    candidates = [root / name]
    if name.endswith(".csv.gz"):
        candidates.append(root / name[:-3])
    elif name.endswith(".csv"):
        candidates.append(root / (name + ".gz"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{candidates[0]} not found (is --root the dataset's download folder?)")


def read_csv(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV (plain or gzipped) as ``(line number, {column: value})`` for the named columns only.

    Raises:
        PrepareError: a required column is missing (``file:1``) or a row is too short (``file:line``).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in required if name not in header]
            if missing:
                raise PrepareError(f"{path}:1: missing column {', '.join(repr(m) for m in missing)} (found {', '.join(header)})")
            index = {name: header.index(name) for name in (*required, *optional) if name in header}
            needed = 1 + max((header.index(name) for name in required), default=-1)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) < needed:
                    raise PrepareError(f"{path}:{reader.line_num}: expected at least {needed} fields, found {len(row)}")
                rows.append((reader.line_num, {name: (row[i].strip() if i < len(row) else "") for name, i in index.items()}))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as error:
        raise PrepareError(f"{path}: cannot read as CSV: {error}") from None
    return rows


# --------------------------------------------------------------------------- provenance


def command_line(argv: Sequence[str] | None) -> str:
    """The command as a user would retype it."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["refers", "prepare", *(shlex.quote(a) for a in args)])


def portable_path(target: str | os.PathLike, base: str | os.PathLike) -> str:
    """``target`` relative to ``base`` (so the project can move), or absolute when they share nothing."""
    target, base = Path(target).resolve(), Path(base).resolve()
    common = Path(os.path.commonpath([target, base]))
    if common == Path(common.anchor):
        return str(target)
    return Path(os.path.relpath(target, base)).as_posix()


def made_by(command: str, sources: Iterable[Path], seed: int | None, synthetic: bool, **options: Any) -> dict[str, Any]:
    """The provenance record of one command: what ran, on which files (sha256), with which seed."""
    record: dict[str, Any] = {"command": command, "refers_version": __version__, "synthetic": synthetic}
    if seed is not None:
        record["seed"] = seed
    options = {key: value for key, value in options.items() if value is not None}
    if options:
        record["options"] = options
    record["sources"] = {str(p): sha256_file(p) for p in sources}
    return record


def metadata_record(path: Path) -> dict[str, str]:
    """The ``metadata:`` entry of ``dataset.yaml``: which metadata / label file a preparation read, and its sha256.

    Several revisions of a dataset's metadata are in circulation (NIH's 2017 and 2020 files); this
    says which one the labels came from.
    """
    return {"file": str(path), "name": path.name, "sha256": sha256_file(path)}


def file_record(path: Path, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``files:`` entry of ``dataset.yaml``: checksum and line count of a written file."""
    entry: dict[str, Any] = {"sha256": sha256_file(path)}
    if path.suffix in (".txt", ".jsonl"):
        with open(path, "rb") as handle:
            entry["lines"] = sum(1 for line in handle if line.strip())
    if provenance:
        entry["made_by"] = provenance
    return entry


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated records in full (no ``&id001`` anchors), so each entry reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_dataset_yaml(
    folder: str | os.PathLike, info: dict[str, Any], files: Iterable[Path] = (), file_provenance: dict[str, Any] | None = None
) -> Path:
    """Write (or merge into) ``dataset.yaml``: ``info`` replaces top-level keys, ``files`` get records.

    Earlier ``files:`` entries are kept, so a fractions run adds to what ``refers prepare nih`` wrote.
    ``file_provenance`` goes into each new file record (for files whose making differs from the
    top-level ``made_by``, such as a fraction's seed).
    """
    folder = Path(folder)
    data = read_dataset_yaml(folder)
    data.update(info)
    records = dict(data.pop("files", None) or {})
    for path in files:
        records[Path(path).name] = file_record(Path(path), file_provenance)
    data["files"] = dict(sorted(records.items()))  # last, so the summary fields stay at the top
    target = folder / DATASET_YAML
    text = yaml.dump(data, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=None)
    atomic_write_text(target, text)
    return target


# --------------------------------------------------------------------------- parallel work


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class Summary:
    """Counts of what a command wrote and skipped, printed as one block at the end."""

    def __init__(self, title: str):
        self.title = title
        self.counts: Counter[str] = Counter()
        self.notes: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def note(self, text: str) -> None:
        self.notes.append(text)

    def print(self, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        parts = ", ".join(f"{key} {value}" for key, value in self.counts.items() if value)
        print(f"{self.title}: {parts or 'nothing to do'}", file=stream)
        for text in self.notes:
            print(f"  {text}", file=stream)
