"""Paired comparison of two models scored on the same test images.

* DeLong's test for the difference of two correlated ROC AUCs (DeLong, DeLong & Clarke-Pearson,
  Biometrics 1988), computed with the fast midrank algorithm of Sun & Xu (IEEE SPL 2014).
* Holm's step-down correction of the per-class p-values (family-wise error rate).
* A paired image-level bootstrap of the difference of the mean AUCs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import norm, rankdata

from refers.eval.metrics import as_2d, bootstrap_class_aucs, defined_classes, percentile_interval, resample_means, weighted_auc


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of K score vectors on the same images and the DeLong covariance of these AUCs.

    With m positives X and n negatives Y, the structural components are
    ``V10(X_i) = mean_j psi(X_i, Y_j)`` and ``V01(Y_j) = mean_i psi(X_i, Y_j)`` (psi = 1 if X > Y,
    1/2 if equal, 0 otherwise), and ``Cov(AUC) = S10 / m + S01 / n`` with S10, S01 the sample
    covariances (ddof 1) of the components across methods. The midranks give the components in
    O(N log N): ``V10(X_i) = (rank of X_i among all - rank among positives) / n``.

    Args:
        labels: [N] 0/1 labels, both values present.
        scores: [K, N] scores of K methods (1-D for one method).

    Returns:
        (aucs [K], covariance [K, K]).
    """
    labels = np.asarray(labels, dtype=np.float64) >= 0.5
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(labels.sum()), int((~labels).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both positive and negative images")
    x, y = scores[:, labels], scores[:, ~labels]
    rank_x = rankdata(x, axis=1)  # midranks (ties share the average rank)
    rank_y = rankdata(y, axis=1)
    rank_all = rankdata(np.concatenate([x, y], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (rank_all[:, :m] - rank_x) / n  # [K, m]
    v01 = 1.0 - (rank_all[:, m:] - rank_y) / m  # [K, n]
    s10 = np.atleast_2d(np.cov(v10, ddof=1)) if m > 1 else np.zeros((len(scores), len(scores)))
    s01 = np.atleast_2d(np.cov(v01, ddof=1)) if n > 1 else np.zeros((len(scores), len(scores)))
    return aucs, s10 / m + s01 / n


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> tuple[float, float, float]:
    """Two-sided DeLong test of AUC(a) = AUC(b) for one class.

    Args:
        labels: [N] 0/1 labels.
        scores_a, scores_b: [N] scores of the two methods on the same images.

    Returns:
        (AUC of a, AUC of b, p-value). The p-value is 1 when the difference has zero variance and
        the AUCs are equal (e.g. identical rankings), NaN when the variance is zero but they differ.
    """
    aucs, cov = delong_covariance(labels, np.stack([scores_a, scores_b]))
    diff = aucs[0] - aucs[1]
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if variance <= 1e-15:
        p = 1.0 if abs(diff) < 1e-12 else float("nan")
    else:
        p = float(2 * norm.sf(abs(diff) / np.sqrt(variance)))
    return float(aucs[0]), float(aucs[1]), p


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); ``None``/NaN entries are left out.

    The i-th smallest of the k p-values becomes ``max_{j <= i} min(1, (k - j + 1) p_(j))``.
    """
    index = [i for i, p in enumerate(pvalues) if p is not None and np.isfinite(p)]
    adjusted: list[float | None] = [None] * len(pvalues)
    k = len(index)
    running = 0.0
    for rank, i in enumerate(sorted(index, key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (k - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


@dataclass
class PairedBootstrap:
    """Paired bootstrap of ``mean AUC(a) - mean AUC(b)``.

    Attributes:
        difference: the difference on the full test set.
        low, high: percentile confidence interval.
        p_value: two-sided, from the resampled differences shifted to the null:
            ``(1 + #{|d* - d| >= |d|}) / (1 + B)``.
        resamples: resamples used (those where a class is undefined are skipped).
    """

    difference: float
    low: float
    high: float
    p_value: float
    resamples: int


def paired_bootstrap(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n: int = 1000, seed: int = 0, alpha: float = 0.05) -> PairedBootstrap:
    """Bootstrap the difference of mean AUCs of two methods, resampling the same images for both.

    Args:
        labels: [N, C] labels shared by both methods.
        probs_a, probs_b: [N, C] scores.
        n: resamples; seed: resampling seed (same seed, same resamples for every method).
    """
    labels, probs_a = as_2d(labels, probs_a)
    _, probs_b = as_2d(labels, probs_b)
    return paired_difference(labels, probs_a, probs_b, bootstrap_class_aucs(labels, probs_a, n, seed), bootstrap_class_aucs(labels, probs_b, n, seed), alpha)


def paired_difference(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, boot_a: np.ndarray, boot_b: np.ndarray, alpha: float = 0.05) -> PairedBootstrap:
    """:func:`paired_bootstrap` from per-class resampled AUCs [B, C] already computed with the same seed for both."""
    keep = defined_classes(labels)
    if not keep.any():
        nan = float("nan")
        return PairedBootstrap(nan, nan, nan, nan, 0)
    diffs = resample_means(boot_a, keep) - resample_means(boot_b, keep)
    diffs = diffs[np.isfinite(diffs)]
    ones = np.ones((1, len(labels)))  # unit weights: the AUCs of the full test set
    point = float(np.mean([weighted_auc(labels[:, c], probs_a[:, c], ones)[0] - weighted_auc(labels[:, c], probs_b[:, c], ones)[0] for c in np.flatnonzero(keep)]))
    low, high = percentile_interval(diffs, alpha)
    p = (1 + np.count_nonzero(np.abs(diffs - point) >= abs(point) - 1e-12)) / (1 + len(diffs))
    return PairedBootstrap(point, low, high, float(min(1.0, p)), int(len(diffs)))
