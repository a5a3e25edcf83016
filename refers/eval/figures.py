"""PNG figures of a report: ROC curves per class (one line per method), bar charts of the mean AUC, and
the label-efficiency curve (mean AUC against the label fraction).

matplotlib runs with the Agg backend (no display needed); each PNG is written to a temporary file
and renamed, so an interrupted run leaves no half-written figure. Figures made from synthetic data
carry "SYNTHETIC" in their title and across the plot.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from refers.base.atomic import atomic_output
from refers.eval.report import MethodSummary, Report
from refers.eval.tree import FRACTION_FOLDER, dataset_key, group_key, group_label, method_key


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slug(text: str) -> str:
    """A file-name-safe version of a dataset or folder name."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "x"


def _save(fig, path: Path) -> Path:
    with atomic_output(path, suffix=".png") as tmp:  # matplotlib picks the format from the name
        fig.savefig(tmp, dpi=100)  # layout already tightened: no second draw for bbox_inches="tight"
    return path


def _stamp(fig, synthetic: bool, title: str) -> None:
    fig.suptitle(f"SYNTHETIC DATA - {title}" if synthetic else title, fontsize=11)
    if synthetic:
        fig.text(0.5, 0.5, "SYNTHETIC", fontsize=60, color="red", alpha=0.15, ha="center", va="center", rotation=30)


def roc_figure(summaries: list[MethodSummary], path: Path) -> Path:
    """ROC curves of one task folder: one panel per class, one line per method (its first seed).

    Args:
        summaries: the methods of one (dataset, group), in display order.
    """
    plt = _pyplot()
    classes = list(dict.fromkeys(c for s in summaries for c in s.results[0].run.class_names))
    cols = min(4, len(classes))
    rows = math.ceil(len(classes) / cols)
    width, height = max(6.0, 4 * cols), 4 * rows
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, sharex=True, sharey=True)
    for ax, class_name in zip(axes.flat, classes):
        for s in summaries:
            result = s.results[0]
            if class_name not in result.run.classes:
                continue
            labels, probs = result.run.classes[class_name]
            auc = result.aucs[result.run.class_names.index(class_name)]
            if auc is None:
                continue
            fpr, tpr, _ = roc_curve(labels, probs)
            seed = "" if result.run.seed is None else f", seed {result.run.seed}"
            ax.plot(fpr, tpr, lw=1.2, label=f"{s.method} (AUC {100 * auc:.1f}{seed})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(title=class_name, xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[:, 0]:
        ax.set_ylabel("true positive rate")
    for column in range(cols):  # the lowest panel of each column, which may sit above an empty cell
        lowest = axes[(len(classes) - 1 - column) // cols, column]
        lowest.set_xlabel("false positive rate")
        lowest.xaxis.set_tick_params(labelbottom=True)
    for ax in list(axes.flat)[len(classes):]:
        ax.axis("off")
    first = summaries[0]
    _stamp(fig, any(s.synthetic for s in summaries), f"{first.dataset}, {group_label(first.group)}: ROC curves")
    # Fixed margins in inches: tight_layout measured every tick label of every panel (14 panels: 1.85 s a
    # figure with it, 1.26 s without).
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.2 / width, bottom=0.6 / height, top=1 - 0.75 / height,
                        wspace=0.15, hspace=0.35)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _error_bar(mean: float, low: float, high: float) -> tuple[float, float] | None:
    """Lengths (below, above) of an error bar, or None when the interval cannot be drawn.

    A bootstrap with few usable resamples (``--bootstrap 20`` on a small tree, where most resamples
    lose a class) gives a single value or an interval that excludes the point estimate: matplotlib
    refuses a negative length, so such a bar is left out (and the figure says so) rather than faked.
    """
    if not all(np.isfinite([mean, low, high])) or not low <= mean <= high:
        return None
    return mean - low, high - mean


def bar_figure(summaries: list[MethodSummary], path: Path) -> Path:
    """Mean AUC per fraction/task folder (x) and method (bars) of one dataset.

    Error bars: sd over seeds where there are several, else the bootstrap 95% interval; a bar whose
    interval is degenerate (see :func:`_error_bar`) has none, listed under the plot.
    """
    plt = _pyplot()
    groups = sorted({s.group for s in summaries}, key=group_key)
    methods = sorted({s.method for s in summaries}, key=method_key)
    cell = {(s.group, s.method): s for s in summaries}
    width, bottom = 0.8 / len(methods), 100.0
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups) * len(methods) / 3), 4))
    left_out = []
    for i, method in enumerate(methods):
        heights, errors = [], [[], []]
        for group in groups:
            s = cell.get((group, method))
            mean, sd = s.mean_sd() if s else (np.nan, None)
            heights.append(100 * mean)
            low, high = (mean - sd, mean + sd) if sd is not None else s.ci if s else (np.nan, np.nan)
            bar = _error_bar(mean, low, high)
            if bar is None and s is not None and np.isfinite(mean) and not (np.isnan(low) and np.isnan(high)):
                left_out.append(f"{method} {group_label(group)}")  # an interval was computed but cannot be drawn
            errors[0].append(100 * bar[0] if bar else 0.0)
            errors[1].append(100 * bar[1] if bar else 0.0)
        bottom = np.nanmin([bottom, *(h - e for h, e in zip(heights, errors[0]))])
        x = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(x, heights, width, yerr=errors, capsize=2, label=method)
    if left_out:
        fig.text(0.01, 0.01, "no error bar (degenerate bootstrap interval; use a larger --bootstrap): " + ", ".join(left_out), fontsize=6)
        print(f"note: {path.name}: no error bar for {', '.join(left_out)}: bootstrap interval degenerate (too few usable resamples)")
    ax.set_ylim(max(0.0, 5 * np.floor(bottom / 5) - 5), 100)  # zoom on the bars, intervals included
    ax.set_xticks(np.arange(len(groups)), [group_label(g) for g in groups])
    ax.set_ylabel("mean AUC (%)")
    ax.legend(fontsize=8, ncol=min(3, len(methods)))
    _stamp(fig, any(s.synthetic for s in summaries), f"{summaries[0].dataset}: mean AUC")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def fraction_of(group: str) -> float | None:
    """The label percentage of a fraction folder (``data10`` -> 10.0), None for a task folder."""
    match = FRACTION_FOLDER.match(group)
    return float(match.group(1)) if match else None


def label_efficiency_points(summaries: list[MethodSummary]) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per method, in display order: (label %, mean over seeds, lowest seed, highest seed) per fraction."""
    points: dict[str, list[tuple[float, float, float, float]]] = {}
    for method in sorted({s.method for s in summaries}, key=method_key):
        rows = []
        for s in sorted((s for s in summaries if s.method == method), key=lambda s: fraction_of(s.group)):
            values = np.array([r.mean_auc for r in s.results], dtype=np.float64)
            rows.append((fraction_of(s.group), float(np.nanmean(values)), float(np.nanmin(values)), float(np.nanmax(values))))
        points[method] = rows
    return points


def label_efficiency_figure(summaries: list[MethodSummary], path: Path) -> Path:
    """Mean AUC against the label fraction (log axis) of one dataset: a line per method through its
    seed-averaged means, the seeds' range (lowest to highest run) as a band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    fractions = sorted({fraction_of(s.group) for s in summaries})
    for method, points in label_efficiency_points(summaries).items():
        x, mean, low, high = (np.array(column) for column in zip(*points))
        (line,) = ax.plot(x, 100 * mean, marker="o", label=method)
        if (high > low).any():
            ax.fill_between(x, 100 * low, 100 * high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}%" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("mean AUC (%)")
    ax.legend(fontsize=8)
    _stamp(fig, any(s.synthetic for s in summaries), f"{summaries[0].dataset}: label efficiency")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_figures(report: Report, out: Path, progress=None) -> list[Path]:
    """``roc_<dataset>_<folder>.png`` per task folder, ``bars_<dataset>.png`` per dataset and
    ``label_efficiency_<dataset>.png`` per dataset with two or more label fractions, under ``out``."""
    by_group: dict[tuple[str, str], list[MethodSummary]] = defaultdict(list)
    by_dataset: dict[str, list[MethodSummary]] = defaultdict(list)
    for s in sorted(report.summaries, key=lambda s: (dataset_key(s.dataset), group_key(s.group), method_key(s.method))):
        by_group[(s.dataset, s.group)].append(s)
        by_dataset[s.dataset].append(s)
    jobs = [(roc_figure, members, out / f"roc_{slug(d)}_{slug(g)}.png") for (d, g), members in by_group.items()]
    jobs += [(bar_figure, members, out / f"bars_{slug(d)}.png") for d, members in by_dataset.items()]
    for d, members in by_dataset.items():
        fractions = [s for s in members if fraction_of(s.group) is not None]
        if len({s.group for s in fractions}) >= 2:
            jobs.append((label_efficiency_figure, fractions, out / f"label_efficiency_{slug(d)}.png"))
    return [draw(members, path) for draw, members, path in (jobs if progress is None else progress(jobs))]
