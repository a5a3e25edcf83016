"""AUC, AUPRC, bootstrap, DeLong and Holm against values computed independently here, and the prediction files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refers.base.errors import ListFormatError
from refers.eval.metrics import bootstrap_class_aucs, bootstrap_ci, bootstrap_weights, mean_auc, per_class_auc, per_class_auprc, weighted_auc
from refers.eval.predictions import read_prediction_file, write_prediction_files
from refers.eval.stats import delong_covariance, delong_test, holm, paired_bootstrap


def pair_count_auc(labels, scores) -> float:
    """Mann-Whitney: the fraction of (positive, negative) pairs ranked right, ties 1/2, by explicit loops."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def loop_average_precision(labels, scores) -> float:
    """sum over distinct thresholds (descending) of (recall step) x precision, by loops."""
    positives = sum(labels)
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for s, y in zip(scores, labels) if s >= t and y == 1)
        fp = sum(1 for s, y in zip(scores, labels) if s >= t and y == 0)
        recall = tp / positives
        ap += (recall - previous_recall) * tp / (tp + fp)
        previous_recall = recall
    return ap


def toy(n=60, classes=3, seed=0, signal=0.8, decimals=1):
    """Labels [n, C] and rounded scores [n, C] (rounding makes ties)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < 0.4).astype(float)
    scores = np.round(rng.normal(size=(n, classes)) + signal * labels, decimals)
    return labels, scores


def test_auc_and_auprc_match_pair_counting_and_loops():
    labels, scores = toy()
    aucs = per_class_auc(labels, scores)
    auprcs = per_class_auprc(labels, scores)
    for c in range(labels.shape[1]):
        assert aucs[c] == pytest.approx(pair_count_auc(labels[:, c], scores[:, c]), abs=1e-12)
        assert auprcs[c] == pytest.approx(loop_average_precision(list(labels[:, c]), list(scores[:, c])), abs=1e-12)
    assert mean_auc(aucs) == pytest.approx(sum(aucs) / 3)


def test_single_label_class_is_none_with_a_warning_naming_it():
    labels, scores = toy(classes=2)
    labels[:, 1] = 0
    with pytest.warns(UserWarning, match="'Hernia' has only label value 0"):
        aucs = per_class_auc(labels, scores, class_names=["Mass", "Hernia"])
    assert aucs[1] is None and aucs[0] == pytest.approx(pair_count_auc(labels[:, 0], scores[:, 0]))
    assert mean_auc(aucs) == aucs[0]
    assert math.isnan(mean_auc([None]))


def test_weighted_auc_equals_auc_of_the_resampled_data():
    labels, scores = toy(n=40, classes=1)
    weights = next(bootstrap_weights(40, 5, seed=3))
    assert (weights.sum(axis=1) == 40).all()
    fast = weighted_auc(labels[:, 0], scores[:, 0], weights)
    for row, value in zip(weights, fast):
        index = np.repeat(np.arange(40), row)
        assert value == pytest.approx(pair_count_auc(labels[index, 0], scores[index, 0]), abs=1e-12)


def test_bootstrap_ci_is_reproducible_and_brackets_the_estimate():
    labels, scores = toy(n=150, classes=3, seed=1)
    ci = bootstrap_ci(labels, scores, n=300, seed=7)
    assert ci == bootstrap_ci(labels, scores, n=300, seed=7)
    assert ci != bootstrap_ci(labels, scores, n=300, seed=8)
    assert ci[0] < mean_auc(per_class_auc(labels, scores)) < ci[1]
    # The same seed gives the same resamples: the first 100 of 300 are the 100 of a shorter run.
    assert np.array_equal(bootstrap_class_aucs(labels, scores, 300, 7)[:100], bootstrap_class_aucs(labels, scores, 100, 7))


def test_bootstrap_ci_coverage_and_width_on_a_binormal_model():
    # Positives ~ N(d, 1), negatives ~ N(0, 1): the true AUC is Phi(d / sqrt 2).
    d, true_auc, trials, covered = 1.0, 0.7602499389065233, 60, 0
    rng = np.random.default_rng(0)
    widths, estimates = [], []
    for trial in range(trials):
        labels = (rng.random(120) < 0.5).astype(float)
        scores = rng.normal(size=120) + d * labels
        low, high = bootstrap_ci(labels, scores, n=200, seed=trial)
        covered += low <= true_auc <= high
        widths.append(high - low)
        estimates.append(pair_count_auc(labels, scores))
    # A 95% interval misses sometimes (here 4 of 60): an interval that always covers (e.g. [0, 1]) fails.
    assert 0.85 <= covered / trials <= 0.99
    # Its width is that of the estimator's own spread over the trials (2 x 1.96 sd; here ratio 0.95), so
    # neither a too-wide interval that always covers nor a too-narrow one that is lucky can pass.
    assert 0.75 < np.mean(widths) / (2 * 1.96 * np.std(estimates, ddof=1)) < 1.33


def test_bootstrap_skips_resamples_where_a_class_loses_its_positives():
    labels = np.zeros((30, 1))
    labels[-1] = 1  # one positive, ranked first: AUC 1 when drawn, undefined (skipped) when not
    scores = np.linspace(0, 1, 30)[:, None]
    aucs = bootstrap_class_aucs(labels, scores, n=200, seed=0)
    not_drawn = np.concatenate(list(bootstrap_weights(30, 200, seed=0)))[:, -1] == 0
    assert 30 < not_drawn.sum() < 120  # about (29/30)^30 = 36% of the resamples
    assert np.array_equal(np.isnan(aucs[:, 0]), not_drawn) and (aucs[~not_drawn] == 1.0).all()
    assert bootstrap_ci(labels, scores, n=200, seed=0) == (1.0, 1.0)


def brute_force_delong(labels, a, b):
    """The structural components of DeLong et al. (1988) by explicit loops; returns the covariance matrix."""
    methods = [a, b]
    pos = [[m[i] for i in range(len(labels)) if labels[i] == 1] for m in methods]
    neg = [[m[i] for i in range(len(labels)) if labels[i] == 0] for m in methods]
    psi = lambda x, y: 1.0 if x > y else 0.5 if x == y else 0.0  # noqa: E731
    v10 = [[sum(psi(x, y) for y in neg[k]) / len(neg[k]) for x in pos[k]] for k in range(2)]
    v01 = [[sum(psi(x, y) for x in pos[k]) / len(pos[k]) for y in neg[k]] for k in range(2)]

    def cov(u, v):
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        return sum((x - mu) * (y - mv) for x, y in zip(u, v)) / (len(u) - 1)

    m, n = len(pos[0]), len(neg[0])
    return np.array([[cov(v10[r], v10[s]) / m + cov(v01[r], v01[s]) / n for s in range(2)] for r in range(2)])


def test_delong_covariance_matches_brute_force_structural_components():
    labels, scores = toy(n=45, classes=2, seed=4)
    y = labels[:, 0]
    a, b = scores[:, 0], np.round(scores[:, 1] + 0.5 * y, 1)  # ties inside and across methods
    aucs, cov = delong_covariance(y, np.stack([a, b]))
    assert aucs == pytest.approx([pair_count_auc(y, a), pair_count_auc(y, b)], abs=1e-12)
    np.testing.assert_allclose(cov, brute_force_delong(list(y), list(a), list(b)), rtol=1e-10, atol=1e-14)
    auc_a, auc_b, p = delong_test(y, a, b)
    z = (auc_a - auc_b) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert p == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))


def test_delong_variance_agrees_with_the_bootstrap_variance():
    rng = np.random.default_rng(5)
    labels = (rng.random(300) < 0.3).astype(float)
    scores = rng.normal(size=300) + 1.2 * labels
    _, cov = delong_covariance(labels, scores)
    boot = bootstrap_class_aucs(labels, scores, n=2000, seed=0)[:, 0]
    assert 0.75 < cov[0, 0] / np.var(boot, ddof=1) < 1.33


def test_delong_identical_and_clearly_different_methods():
    rng = np.random.default_rng(6)
    labels = (rng.random(200) < 0.5).astype(float)
    good = rng.normal(size=200) + 2.0 * labels
    assert delong_test(labels, good, good)[2] == 1.0
    assert delong_test(labels, good, rng.normal(size=200))[2] < 1e-6


def test_holm_on_known_p_values():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.6, 0.5]) == [1.0, 1.0]
    assert holm([]) == []


def test_paired_bootstrap_identical_methods_and_reproducibility():
    labels, scores = toy(n=120, classes=3, seed=2)
    same = paired_bootstrap(labels, scores, scores, n=200, seed=0)
    assert same.difference == 0 and same.low == 0 and same.high == 0 and same.p_value == 1.0
    worse = scores + np.random.default_rng(0).normal(scale=2.0, size=scores.shape)
    result = paired_bootstrap(labels, scores, worse, n=300, seed=1)
    assert result == paired_bootstrap(labels, scores, worse, n=300, seed=1)
    expected = np.mean([pair_count_auc(labels[:, c], scores[:, c]) - pair_count_auc(labels[:, c], worse[:, c]) for c in range(3)])
    assert result.difference == pytest.approx(expected)
    assert result.low < result.difference < result.high and result.p_value < 0.05


def test_prediction_files_round_trip_at_full_precision(tmp_path):
    labels = np.array([[0, 1], [1, 0], [1, 1]], dtype=float)
    probs = np.array([[1 / 3, 0.1], [2 / 3, 1e-17], [0.123456789012345678, 1.0]])
    files = write_prediction_files(tmp_path / "REFERS" / "seed0", ["Atelectasis", "Nodule/Mass"], labels, probs)
    assert [f.name for f in files] == ["Atelectasis.txt", "Nodule-Mass.txt"]
    assert files[0].read_text().splitlines()[0] == "0.0 0.3333333333333333"
    for c, path in enumerate(files):
        read_labels, read_probs = read_prediction_file(path)
        assert np.array_equal(read_labels, labels[:, c]) and np.array_equal(read_probs, probs[:, c])
    assert not [p for p in files[0].parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_prediction_reader_takes_tabs_and_crlf_and_rejects_bad_lines(tmp_path):
    path = tmp_path / "covid_others.txt"
    path.write_bytes(b"1.0\t0.916\r\n0\t0.5\r\n\r\n")
    labels, probs = read_prediction_file(path)
    assert labels.tolist() == [1.0, 0.0] and probs.tolist() == [0.916, 0.5]
    for body, line, message in [("0.0 0.3\n1.0 high\n", 2, "not numbers"), ("0.0 0.3 7\n", 1, "found 3 fields"),
                                ("2.0 0.3\n", 1, "not 0 or 1"), ("0.0 nan\n", 1, "not between 0 and 1"),
                                ("1 7.5\n", 1, "'7.5' is not between 0 and 1"), ("0 0.2\n1 -3\n", 2, "'-3' is not between 0 and 1"), ("\n", 1, "no prediction rows")]:
        path.write_text(body)
        with pytest.raises(ListFormatError, match=f"covid_others.txt:{line}: .*{message}"):
            read_prediction_file(path)
    with pytest.raises(FileNotFoundError):
        read_prediction_file(tmp_path / "missing.txt")
