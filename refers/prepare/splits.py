"""Patient-disjoint, seeded, optionally stratified train/val/test splits."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

from refers.base.atomic import atomic_write_text
from refers.data.lists import find_split_file, read_list, write_list
from refers.prepare.common import PrepareError, Summary

SPLITS = ("train", "val", "test")


def normalise_ratios(ratios: Sequence[float]) -> np.ndarray:
    """Ratios as fractions summing to 1 (``0.7 0.1 0.2`` and ``70 10 20`` mean the same)."""
    values = np.asarray(ratios, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(SPLITS) or (values < 0).any() or values.sum() <= 0:
        raise ValueError(f"--ratios needs {len(SPLITS)} non-negative numbers (train val test), got {list(ratios)}")
    return values / values.sum()


def group_split(
    groups: Sequence[Hashable],
    ratios: Sequence[float],
    seed: int,
    strata: Sequence[Hashable] | None = None,
) -> np.ndarray:
    """Assign every item to a split so that no group (patient) is in two splits.

    Groups are shuffled with ``seed`` (from their sorted order, so the result does not depend on
    the input order) and dealt into the splits until each holds its share of *items*. With
    ``strata`` (e.g. the label of a binary dataset) each stratum is dealt separately, so that every
    split gets its share of each class; a group takes the stratum of its first item.

    Args:
        groups: group id per item, length N.
        ratios: train/val/test shares.
        seed: random seed.
        strata: optional stratum per item, length N.

    Returns:
        int array [N]: 0 train, 1 val, 2 test.
    """
    shares = np.cumsum(normalise_ratios(ratios))
    members: dict[Hashable, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    by_stratum: dict[Hashable, list[Hashable]] = defaultdict(list)
    for group, items in members.items():
        by_stratum[strata[items[0]] if strata is not None else 0].append(group)

    assignment = np.zeros(len(groups), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for stratum in sorted(by_stratum, key=str):
        ordered = sorted(by_stratum[stratum], key=str)
        ordered = [ordered[i] for i in rng.permutation(len(ordered))]
        total = sum(len(members[g]) for g in ordered)
        seen = 0
        for group in ordered:
            size = len(members[group])
            # The group goes where the middle of its items falls on the cumulative shares.
            position = (seen + size / 2) / total
            split = int(min(np.searchsorted(shares, position, side="right"), len(SPLITS) - 1))
            assignment[members[group]] = split
            seen += size
    return assignment


def overlaps(groups_by_split: Mapping[str, set]) -> list[tuple[str, str, set]]:
    """Pairs of splits sharing groups (patients), with the shared ids."""
    found = []
    for a, b in combinations(groups_by_split, 2):
        shared = groups_by_split[a] & groups_by_split[b]
        if shared:
            found.append((a, b, shared))
    return found


def assignment_from_lists(
    list_dir: Path, names: Sequence[str], num_labels: int, splits: Sequence[str] = SPLITS
) -> tuple[np.ndarray, list[Path]]:
    """The split of each image as given by existing list files (e.g. the original's published ones).

    Images are matched by file name, so lists written for another folder layout still apply.

    Args:
        list_dir: folder with ``train.txt``, ``val.txt`` (or ``valid.txt``), ``test.txt``.
        names: image file names of the dataset, length N.
        num_labels: label columns of the list lines.
        splits: which of the lists to read.

    Returns:
        (int array [N]: index into :data:`SPLITS`, -1 for images in none of the lists; list files read).

    Raises:
        ListFormatError: a malformed list line.
        PrepareError: a listed image is not in the dataset, or is in two lists (``file:line``).
    """
    index = {name: i for i, name in enumerate(names)}
    assignment = np.full(len(names), -1, dtype=np.int64)
    sources = []
    for split in splits:
        image_list = read_list(find_split_file(list_dir, split), num_labels=num_labels)
        sources.append(image_list.source)
        for line, path in zip(image_list.line_numbers, image_list.paths):
            name = Path(path.replace("\\", "/")).name
            if name not in index:
                raise PrepareError(f"{image_list.source}:{line}: image {name} is not in the dataset")
            previous = assignment[index[name]]
            if previous >= 0:
                raise PrepareError(f"{image_list.source}:{line}: image {name} is already in the {SPLITS[previous]} list")
            assignment[index[name]] = SPLITS.index(split)
    return assignment, sources


def write_split_lists(
    out: Path,
    paths: Sequence[str],
    labels: np.ndarray,
    assignment: np.ndarray,
    summary: Summary,
    style: str = "int",
    describe: Callable[[np.ndarray], dict] = lambda chosen: {},
) -> tuple[list[Path], dict[str, dict]]:
    """Write ``train.txt`` / ``val.txt`` / ``test.txt`` from one split assignment.

    Args:
        out: the list folder.
        paths: list path of each image, length N.
        labels: [N, C] label rows.
        assignment: int [N], index into :data:`SPLITS` (-1: in no list).
        summary: receives one count per split.
        style: label style of :func:`refers.data.lists.write_list`.
        describe: extra per-split counts for ``dataset.yaml``, from the chosen indices.

    Returns:
        (files written, ``{split: {"images": n, **describe(chosen)}}``).
    """
    written, counts = [], {}
    for k, name in enumerate(SPLITS):
        chosen = np.flatnonzero(assignment == k)
        written.append(write_list(out / f"{name}.txt", [paths[i] for i in chosen], labels[chosen], style=style))
        counts[name] = {"images": int(len(chosen)), **describe(chosen)}
        summary.add(name, int(len(chosen)))
    return written, counts


# --------------------------------------------------------------------------- published lists, kept line for line

DIFFERENCES_FILE = "label_differences.tsv"
LABEL_SOURCES = ("published", "metadata")


def keep_published_lists(
    out: Path,
    list_dir: Path,
    splits: Sequence[str],
    names: Sequence[str],
    labels: np.ndarray,
    classes: Sequence[str],
    metadata: str,
    summary: Summary,
    take: str = "published",
    style: str = "int",
    keep: np.ndarray | None = None,
    path_of: Callable[[str, int], str] | None = None,
) -> tuple[np.ndarray, list[Path], list[Path], dict[str, dict]]:
    """Write each published list of ``splits`` as published: same order, same line text, same line ends.

    A published line whose labels differ from the metadata's keeps the published labels (they define
    the benchmark) unless ``take`` is ``"metadata"``; every differing class is written to
    ``label_differences.tsv`` (split, line, image, class, published, metadata) beside the lists.

    Args:
        out: the list folder.
        list_dir: folder with the published lists (``val.txt`` or ``valid.txt``, ...).
        splits: which published lists to keep.
        names: image file names of the metadata, length N (images are matched by file name).
        labels: [N, C] the metadata's labels, columns in ``classes`` order.
        classes: the name of each label column (for the differences file); C names.
        metadata: the metadata file's name, for the messages.
        summary: receives one count per split and the notes.
        take: ``published`` (default) or ``metadata`` labels.
        style: label style when a line is rewritten with the metadata's labels.
        keep: optional bool [N]: images that may be listed (False: left out, e.g. not on disk).
        path_of: ``(published path, index) -> path`` to write; the line is rewritten when it changes it.

    Returns:
        (int [N] split of each image, -1 in none; list files written; published lists read;
        ``{split: {"images": n}}``).

    Raises:
        ListFormatError: a malformed published line.
        PrepareError: a published image is not in the metadata, or is in two lists (``file:line``).
    """
    if take not in LABEL_SOURCES:
        raise PrepareError(f"unknown --labels {take!r} (published or metadata)")
    matcher = _PublishedMatcher(names, labels, classes, metadata, take, style, keep, path_of)
    written, sources, counts = [], [], {}
    for split in splits:
        source = find_split_file(list_dir, split)
        sources.append(source)
        newline = "\r\n" if source.read_bytes().split(b"\n", 1)[0].endswith(b"\r") else "\n"  # as published
        lines = matcher.kept_lines(split, source)
        target_file = out / f"{split}.txt"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target_file, "".join(line + newline for line in lines))
        written.append(target_file)
        counts[split] = {"images": len(lines)}
        summary.add(split, len(lines))
    if matcher.left_out:
        summary.note(f"left {matcher.left_out} published lines out: their images are not on disk or did not convert")
    _report_differences(out, matcher.differences, metadata, take, summary)
    return matcher.assignment, written, sources, counts


class _PublishedMatcher:
    """Matches published lines to the metadata's images (see :func:`keep_published_lists`)."""

    def __init__(self, names: Sequence[str], labels: np.ndarray, classes: Sequence[str], metadata: str, take: str,
                 style: str, keep: np.ndarray | None, path_of: Callable[[str, int], str] | None):
        self.index = {name: i for i, name in enumerate(names)}
        self.assignment = np.full(len(names), -1, dtype=np.int64)
        self.labels, self.classes, self.metadata = labels, classes, metadata
        self.take, self.style, self.keep, self.path_of = take, style, keep, path_of
        self.differences: list[tuple] = []
        self.left_out = 0

    def kept_lines(self, split: str, source: Path) -> list[str]:
        """The lines of the published list ``source`` to write (without line ends), in its order."""
        from refers.base.text_files import text_lines
        from refers.data.lists import format_label

        published = read_list(source, num_labels=self.labels.shape[1])
        text = dict(text_lines(source))
        lines = []
        for line, path, row in zip(published.line_numbers.tolist(), published.paths, published.labels):
            name = Path(path.replace("\\", "/")).name
            if name not in self.index:
                raise PrepareError(f"{source}:{line}: image {name} is not in {self.metadata}")
            i = self.index[name]
            if self.assignment[i] >= 0:
                raise PrepareError(f"{source}:{line}: image {name} is already in the {SPLITS[self.assignment[i]]} list")
            if self.keep is not None and not self.keep[i]:
                self.left_out += 1
                continue
            self.assignment[i] = SPLITS.index(split)
            for c in np.flatnonzero(row != self.labels[i]):
                self.differences.append((split, line, path, self.classes[c], format_label(row[c], self.style),
                                         format_label(self.labels[i, c], self.style)))
            target = self.path_of(path, i) if self.path_of is not None else path
            if self.take == "metadata" or target != path:
                chosen = self.labels[i] if self.take == "metadata" else row
                lines.append(" ".join([target, *(format_label(v, self.style) for v in chosen)]))
            else:
                lines.append(text[line])
        return lines


def _report_differences(out: Path, differences: list[tuple], metadata: str, take: str, summary: Summary) -> None:
    """``label_differences.tsv`` and the one line that says which labels were kept."""
    target = out / DIFFERENCES_FILE
    if not differences:
        target.unlink(missing_ok=True)  # a stale file of an earlier run (--force) would mislead
        if take == "metadata":
            summary.note(f"took the labels of {metadata} (--labels metadata); they agree with the published ones")
        return
    rows = ["split\tline\timage\tclass\tpublished\tmetadata", *("\t".join(str(v) for v in row) for row in differences)]
    atomic_write_text(target, "\n".join(rows) + "\n")
    lines = len({(split, line) for split, line, *_ in differences})
    if take == "metadata":
        summary.note(f"{lines} published labels differ from {metadata}; took the metadata's (--labels metadata)")
    else:
        summary.note(f"{lines} published labels differ from {metadata}; kept the published ones")
    summary.note(f"each differing label: {target}")
