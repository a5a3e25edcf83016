"""Patient-disjoint, seeded, optionally stratified train/val/test splits."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

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
