"""``refers prepare fractions``: label-efficient subsets ``train_<pct>_seed<k>.txt`` of ``train.txt``.

The subset of a seed is drawn as follows: the seed fixes one random order of the list; first, for
each class (rarest first) that has a positive in the full list but none among the images picked so
far, the first positive image of that class in this order is picked; then the rest of the order fills
up to ``round(N * pct / 100)`` images (more only when the coverage picks alone exceed it). So the
draw is reproducible, every class with a positive in the full set has one in the subset (for the
one-hot binary lists: both classes), and for one seed the 1% set is contained in the 10% set.
Lines are copied unchanged, in the source's order. ``train_<pct>.txt`` (the name the original loader
expects for ``--data_volume``) is the seed-0 draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from refers.base.atomic import atomic_write_text
from refers.base.text_files import text_lines
from refers.data.lists import find_split_file, read_list
from refers.prepare.common import PrepareError, Summary, ensure_new, made_by, write_dataset_yaml


def sample_fraction(labels: np.ndarray, percent: float, seed: int) -> np.ndarray:
    """Indices (sorted) of a ``percent`` % subset covering every class that has a positive.

    Args:
        labels: [N, C] 0/1 labels.
        percent: in (0, 100].
        seed: random seed.

    Returns:
        int64 array of row indices, ascending.
    """
    if not 0 < percent <= 100:
        raise PrepareError(f"--percent must be in (0, 100], got {percent:g}")
    count = len(labels)
    target = max(1, int(round(count * percent / 100.0))) if count else 0
    order = np.random.default_rng(seed).permutation(count)
    positive = np.asarray(labels) > 0.5
    covered = ~positive.any(axis=0)  # classes without positives need no pick
    picked: list[int] = []
    for cls in np.argsort(positive.sum(axis=0), kind="stable"):
        if covered[cls]:
            continue
        first = int(order[positive[order, cls]][0])
        picked.append(first)
        covered |= positive[first]
    chosen = set(picked)
    for index in order:
        if len(chosen) >= target:
            break
        chosen.add(int(index))
    return np.array(sorted(chosen), dtype=np.int64)


def fraction_name(prefix: str, percent: float, seed: int | None = None) -> str:
    """``train_1_seed0.txt`` / ``train_10.txt`` / ``val_0.5_seed2.txt``."""
    stem = f"{prefix}_{percent:g}"
    return f"{stem}.txt" if seed is None else f"{stem}_seed{seed}.txt"


def _raw_lines(path: Path) -> list[str]:
    lines = [text for _, text in text_lines(path)]
    return lines[:-1] if lines and not lines[-1] else lines  # the empty piece after the last line end


def write_fractions(
    lists: Path,
    percents: Sequence[float],
    seeds: Sequence[int],
    val_percents: Sequence[float] = (),
    num_labels: int | None = None,
    force: bool = False,
    command: str = "refers prepare fractions",
) -> Summary:
    """Write the subsets of ``train.txt`` (and of ``val.txt`` for ``val_percents``) into ``lists``."""
    summary = Summary(f"fractions -> {lists}")
    jobs = [("train", p) for p in percents] + [("val", p) for p in val_percents]
    names = []
    for prefix, percent in jobs:
        names += [fraction_name(prefix, percent, seed) for seed in seeds]
        if 0 in seeds:
            names.append(fraction_name(prefix, percent))
    ensure_new(lists, names, force)
    noted: set[str] = set()
    for prefix, percent in jobs:
        source = find_split_file(lists, prefix)
        image_list = read_list(source, num_labels=num_labels)
        lines = _raw_lines(source)
        if prefix not in noted:
            noted.add(prefix)
            summary.note(f"{source.name}: {len(image_list)} images")
        for seed in seeds:
            chosen = sample_fraction(image_list.labels, percent, seed)
            text = "".join(lines[image_list.line_numbers[i] - 1].strip() + "\n" for i in chosen)
            targets = [lists / fraction_name(prefix, percent, seed)]
            if seed == 0:
                targets.append(lists / fraction_name(prefix, percent))
            for target in targets:
                atomic_write_text(target, text)
            provenance = made_by(command, [source], seed, False, percent=float(percent))
            provenance.pop("synthetic")  # the folder's top-level flag says it
            write_dataset_yaml(lists, {}, targets, file_provenance=provenance)
            summary.add(f"{prefix} {percent:g}% seed {seed}: images", len(chosen))
    return summary
