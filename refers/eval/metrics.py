"""Per-class ROC AUC and AUPRC, their mean, and a bootstrap confidence interval of the mean AUC.

The mean AUC is the plain average of the per-class AUCs over the classes where the AUC is defined
(both label values present). This is how the original notebooks and ``test.py`` summarise a run and
how the numbers of the paper's tables are reproduced from the published prediction files.
"""

from __future__ import annotations

import warnings
from typing import Iterator, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def as_2d(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check and return ``labels``, ``probs`` as float64 arrays [N, C] (a 1-D array is one class).

    Labels are binarised at 0.5 so that ``0``/``1`` and ``0.0``/``1.0`` read the same.

    Raises:
        ValueError: for different shapes or non-finite values.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim == 1:
        labels = labels[:, None]
    if probs.ndim == 1:
        probs = probs[:, None]
    if labels.shape != probs.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} must both be [N, C]")
    if not (np.isfinite(labels).all() and np.isfinite(probs).all()):
        raise ValueError("labels and probabilities must be finite")
    return (labels >= 0.5).astype(np.float64), probs


def _class_name(class_names: Sequence[str] | None, index: int) -> str:
    return repr(class_names[index]) if class_names is not None else f"#{index}"


def defined_classes(labels: np.ndarray) -> np.ndarray:
    """Boolean [C]: True where a class has both label values (its AUC is defined). ``labels`` [N, C]."""
    positives = labels.sum(axis=0)
    return (positives > 0) & (positives < labels.shape[0])


def _per_class(metric, labels, probs, class_names, what) -> list[float | None]:
    labels, probs = as_2d(labels, probs)
    ok = defined_classes(labels)
    values: list[float | None] = []
    for c in range(labels.shape[1]):
        if not ok[c]:
            value = int(labels[0, c]) if len(labels) else "none"
            warnings.warn(f"class {_class_name(class_names, c)} has only label value {value}: its {what} is undefined and left out", stacklevel=3)
            values.append(None)
        else:
            values.append(float(metric(labels[:, c], probs[:, c])))
    return values


def per_class_auc(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str] | None = None) -> list[float | None]:
    """ROC AUC of each class (scikit-learn).

    Args:
        labels: [N, C] 0/1 labels (1-D for one class).
        probs: [N, C] scores (any monotone score works).
        class_names: optional names used in the warning for a class with one label value.

    Returns:
        C values; ``None`` (with a warning naming the class) where a class has only one label value.
    """
    return _per_class(roc_auc_score, labels, probs, class_names, "AUC")


def per_class_auprc(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str] | None = None) -> list[float | None]:
    """Area under the precision-recall curve (average precision, scikit-learn) of each class.

    Same conventions as :func:`per_class_auc`. Unlike the AUC, its chance level is the class's
    prevalence, which is why it is reported next to the AUC for rare classes.
    """
    return _per_class(average_precision_score, labels, probs, class_names, "AUPRC")


def mean_auc(aucs: Sequence[float | None]) -> float:
    """Mean over the defined (non-``None``) values; NaN when there is none."""
    values = [a for a in aucs if a is not None]
    return float(np.mean(values)) if values else float("nan")


def weighted_auc(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one class for many weightings of the images at once (ties count 1/2).

    With weights ``w`` (how often each image is drawn in a bootstrap resample) the AUC is
    ``sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg)``, which equals
    scikit-learn's AUC of the resampled data. Sorting once and summing per block of tied
    scores makes it O(B N) instead of O(B N log N) per resample.

    Args:
        labels: [N] 0/1 labels.
        probs: [N] scores.
        weights: [B, N] non-negative weights, one row per resample.

    Returns:
        [B] AUCs, NaN where a row has no positive or no negative weight.
    """
    order = np.argsort(probs, kind="mergesort")
    sorted_scores = probs[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order].astype(np.float64)
    positive = labels[order] >= 0.5
    pos = np.add.reduceat(w * positive, starts, axis=1)  # [B, G]: positive weight per tie block
    neg = np.add.reduceat(w * ~positive, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def bootstrap_weights(n_images: int, n: int, seed: int, block: int = 100) -> Iterator[np.ndarray]:
    """Yield the image counts of ``n`` bootstrap resamples, in blocks of at most ``block`` rows.

    Each row [N] counts how often each image is drawn (N draws with replacement). The same
    ``(n_images, n, seed)`` always yields the same rows, so two methods evaluated on the same test
    images get the same resamples: this is what makes the bootstrap *paired*.
    """
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        rows = min(block, n - done)
        draws = rng.integers(0, n_images, size=(rows, n_images))
        flat = (draws + np.arange(rows)[:, None] * n_images).ravel()
        yield np.bincount(flat, minlength=rows * n_images).reshape(rows, n_images)
        done += rows


def bootstrap_class_aucs(labels: np.ndarray, probs: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """Per-class AUC of ``n`` image-level bootstrap resamples.

    Args:
        labels: [N, C] 0/1 labels.
        probs: [N, C] scores.

    Returns:
        [n, C] AUCs; NaN where a class has one label value in that resample.
    """
    labels, probs = as_2d(labels, probs)
    blocks = []
    for weights in bootstrap_weights(labels.shape[0], n, seed):
        blocks.append(np.stack([weighted_auc(labels[:, c], probs[:, c], weights) for c in range(labels.shape[1])], axis=1))
    return np.concatenate(blocks, axis=0) if blocks else np.zeros((0, labels.shape[1]))


def resample_means(class_aucs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean AUC of each resample over the classes in ``keep`` [C]; NaN for a resample where one of them is undefined.

    Such resamples are *skipped* (not averaged over fewer classes) so that every kept resample
    measures the same statistic as the point estimate.
    """
    kept = class_aucs[:, keep]
    if kept.shape[1] == 0:
        return np.full(len(class_aucs), np.nan)
    return np.where(np.isnan(kept).any(axis=1), np.nan, kept.mean(axis=1))


def percentile_interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the finite ``samples``; (NaN, NaN) when there is none."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(labels: np.ndarray, probs: np.ndarray, n: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean AUC, resampling images.

    Classes whose AUC is undefined on the full data (one label value) are left out, as in
    :func:`mean_auc`. A resample in which a remaining class has one label value is skipped (rare:
    a class with k positives is absent from a resample with probability about e^-k).

    Args:
        labels: [N, C] 0/1 labels.
        probs: [N, C] scores.
        n: number of resamples.
        seed: seed of the resampling; the same seed gives the same interval.
        alpha: 0.05 for a 95% interval.

    Returns:
        (low, high), NaN when no resample is usable.
    """
    labels, probs = as_2d(labels, probs)
    means = resample_means(bootstrap_class_aucs(labels, probs, n, seed), defined_classes(labels))
    return percentile_interval(means, alpha)
