"""The metrics against scikit-learn on known inputs, for two classes and K."""
from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, cohen_kappa_score,
                             confusion_matrix, f1_score, log_loss, precision_recall_fscore_support,
                             roc_auc_score)

from pcam import metrics
from pcam.errors import PcamError

CLASSES = ("01_TUMOR", "02_STROMA", "03_COMPLEX", "04_LYMPHO", "05_DEBRIS")


def noisy(n: int, k: int, seed: int = 0, signal: float = 1.0):
    """Labels and softmax probabilities that favour the true class, in steps
    of 1/1000 (many ties) that still sum to 1 (scikit-learn's OvR AUC checks)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    steps = np.floor(probs * 1000)
    steps[np.arange(n), probs.argmax(axis=1)] += 1000 - steps.sum(axis=1)
    return labels, steps / 1000


def test_multiclass_metrics_match_sklearn():
    labels, probs = noisy(1500, len(CLASSES))
    m = metrics.task_metrics(labels, probs, CLASSES)
    predicted = probs.argmax(axis=1)
    k = len(CLASSES)
    assert m["n"] == 1500
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs,
                                                   multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(labels, predicted))
    assert m["log_loss"] == pytest.approx(
        log_loss(labels, probs, labels=range(k)), rel=1e-6)
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(labels, predicted))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted)
    rows = m["per_class"]
    assert [r["class"] for r in rows] == list(CLASSES)
    for c, row in enumerate(rows):
        assert row["precision"] == pytest.approx(precision[c])
        assert row["sensitivity"] == pytest.approx(recall[c])
        assert row["f1"] == pytest.approx(f1[c])
        assert row["support"] == support[c]
        assert row["specificity"] == pytest.approx(
            ((labels != c) & (predicted != c)).sum() / (labels != c).sum())
        assert row["auc"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_a_class_absent_from_the_labels_is_left_out_of_the_macro_scores():
    labels, probs = noisy(800, len(CLASSES), seed=3, signal=0.8)
    keep = labels != 2  # no 03_COMPLEX tile, though the model still predicts it
    labels, probs = labels[keep], probs[keep]
    predicted = probs.argmax(axis=1)
    assert (predicted == 2).any()
    m = metrics.task_metrics(labels, probs, CLASSES)
    present = [0, 1, 3, 4]
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(labels == c, probs[:, c])
                                              for c in present]))
    assert np.isnan(m["per_class"][2]["auc"]) and m["per_class"][2]["support"] == 0
    assert np.isnan(m["per_class"][2]["sensitivity"])
    assert m["per_class"][2]["precision"] == 0.0  # called 03_COMPLEX, never right
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    # scikit-learn's default macro F1 covers the classes in the labels or the predictions
    assert m["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(labels, predicted))
    assert np.array(m["confusion"]).shape == (5, 5) and np.array(m["confusion"])[2].sum() == 0
    low, high = metrics.bootstrap_auc(labels, probs, resamples=200)
    assert low < m["auc"] < high


def test_task_metrics_picks_binary_for_two_classes_and_multiclass_for_more():
    labels, probs = noisy(500, 2, seed=1)
    binary = metrics.task_metrics(labels, probs[:, 1], ("Normal", "OSCC"))
    assert set(binary) == {"auc", "accuracy", "log_loss", "n", "positives"}
    assert binary["positives"] == labels.sum() and binary["n"] == 500
    assert binary["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    labels, probs = noisy(500, 3, seed=1)
    multi = metrics.task_metrics(labels, probs, ("a", "b", "c"))
    assert multi["auc"] == pytest.approx(roc_auc_score(labels, probs,
                                                       multi_class="ovr"))
    assert len(multi["per_class"]) == 3


def test_wrong_shapes_and_labels_are_one_line_errors():
    labels, probs = noisy(50, 3)
    with pytest.raises(PcamError, match="expected \\(50, 5\\)") as err:
        metrics.task_metrics(labels, probs, CLASSES)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(PcamError, match="label 7 is not a class index"):
        metrics.task_metrics(np.r_[labels[:-1], 7], probs, ("a", "b", "c"))


def test_bootstrap_macro_auc_brackets_the_point_estimate_and_narrows_with_n():
    labels, probs = noisy(2000, 8, seed=5, signal=0.7)
    names = [f"c{i}" for i in range(8)]
    point = metrics.task_metrics(labels, probs, names)["auc"]
    start = time.perf_counter()
    low, high = metrics.bootstrap_auc(labels, probs, resamples=1000, seed=2)
    took = time.perf_counter() - start
    assert low < point < high
    assert took < 10, f"1,000 resamples of 2,000 x 8 took {took:.1f} s"
    small_low, small_high = metrics.bootstrap_auc(labels[:200], probs[:200],
                                                        resamples=300)
    assert (small_high - small_low) > 2 * (high - low)  # ~sqrt(10) = 3.2x wider
    assert metrics.bootstrap_auc(labels, probs, resamples=1000, seed=2) == (low, high)
    assert all(np.isnan(metrics.bootstrap_auc([1, 1, 1], probs[:3], resamples=10)))


def test_bootstrap_macro_auc_of_one_resample_of_all_ones_is_the_auc():
    """The weighted statistic itself: with level 0 and a resample forced to be
    the data (every count 1), the interval collapses to sklearn's macro AUC."""
    labels, probs = noisy(300, 4, seed=9)

    class Ones:  # a generator whose "draw" is every tile once
        def integers(self, low, high, size):
            return np.arange(size)

    real = np.random.default_rng
    np.random.default_rng = lambda seed=None: Ones()
    try:
        low, high = metrics.bootstrap_auc(labels, probs, resamples=3, level=0)
    finally:
        np.random.default_rng = real
    expected = roc_auc_score(labels, probs, multi_class="ovr")
    assert low == pytest.approx(expected, abs=1e-12) and high == pytest.approx(expected,
                                                                               abs=1e-12)


def test_cv_summary_and_its_table_for_k_classes():
    labels, probs = noisy(600, 3, seed=4)
    folds = np.arange(600) % 2
    names = ("Normal", "Polyp", "Serrated_adenoma")
    per_fold = {k: metrics.task_metrics(labels[folds == k], probs[folds == k], names)
                for k in (0, 1)}
    summary = metrics.cv_summary(per_fold, labels, probs, names)
    assert summary["oof"]["auc"] == pytest.approx(
        roc_auc_score(labels, probs, multi_class="ovr"))
    assert summary["auc_mean"] == pytest.approx(np.mean([m["auc"] for m in per_fold.values()]))
    assert summary["classes"] == list(names)
    table = metrics.format_cv(summary)
    assert "macro AUC" in table and "balanced acc." in table
    assert f"{summary['oof']['balanced_accuracy']:.4f}" in table
    assert len(table.splitlines()) == 2 + 2 + 2  # header, 2 folds, mean, OOF


def test_binary_cv_summary_is_unchanged():
    labels, probs = noisy(400, 2, seed=6)
    probs = probs[:, 1]
    folds = np.arange(400) % 2
    per_fold = {k: metrics.task_metrics(labels[folds == k], probs[folds == k], ("n", "t"))
                for k in (0, 1)}
    summary = metrics.cv_summary(per_fold, labels, probs)
    assert set(summary) == {"folds", "auc_mean", "auc_std", "oof"}
    assert summary == metrics.cv_summary(per_fold, labels, probs, ("normal", "tumour"))
    assert metrics.format_cv(summary).splitlines()[0] == "fold  tiles    AUC     accuracy"
