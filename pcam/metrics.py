"""Metric functions shared by validation, out-of-fold reports and the CV summary."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score, roc_curve

from pcam.errors import PcamError


def auc(labels, probs) -> float:
    """ROC AUC, the competition's metric; NaN when only one class is present."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, probs))


def binary_metrics(labels, probs) -> dict:
    """AUC, accuracy at 0.5, log loss and counts of one set of predictions."""
    labels, probs = np.asarray(labels, np.int64), np.asarray(probs, np.float64)
    return {
        "auc": auc(labels, probs),
        "accuracy": float(accuracy_score(labels, probs >= 0.5)),
        "log_loss": float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "n": int(len(labels)),
        "positives": int(labels.sum()),
    }


def cv_summary(per_fold: dict[int, dict], oof_labels, oof_probs) -> dict:
    """Per-fold AUC, their mean and standard deviation, and the pooled OOF AUC."""
    aucs = np.array([m["auc"] for m in per_fold.values()])
    return {
        "folds": {str(k): m for k, m in sorted(per_fold.items())},
        "auc_mean": float(aucs.mean()),
        "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
        "oof": binary_metrics(oof_labels, oof_probs),
    }


def format_cv(summary: dict) -> str:
    """The CV summary as a small text table."""
    lines = ["fold  tiles    AUC     accuracy", "----  -------  ------  --------"]
    for k, m in summary["folds"].items():
        lines.append(f"{k:>4}  {m['n']:>7,}  {m['auc']:.4f}  {m['accuracy']:.4f}")
    oof = summary["oof"]
    lines.append(f"mean           {summary['auc_mean']:.4f} ± {summary['auc_std']:.4f}")
    lines.append(f" OOF  {oof['n']:>7,}  {oof['auc']:.4f}  {oof['accuracy']:.4f}")
    return "\n".join(lines)


def bootstrap_auc(labels, probs, *, resamples: int = 1000, level: float = 0.95,
                  seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for the ROC AUC.

    Each resample draws ``n`` tiles with replacement. Instead of re-sorting
    every resample, the scores are ranked once and a resample is a vector
    of counts per tile; its AUC is the Mann-Whitney statistic with those
    counts as weights (ties count one half). 1,000 resamples of 220,025 OOF
    predictions take ~4 s this way, against ~77 s for 1,000 sklearn calls
    (measured on this 2-core machine while it was busy).

    Returns:
        ``(low, high)``; NaNs when only one class is present.
    """
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    if len(np.unique(labels)) < 2:
        return float("nan"), float("nan")
    _, score_rank = np.unique(probs, return_inverse=True)
    rng = np.random.default_rng(seed)
    n, n_scores = len(labels), score_rank.max() + 1
    aucs = np.empty(resamples)
    for r in range(resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        aucs[r] = weighted_auc(score_rank, n_scores, labels, counts)
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def weighted_auc(score_rank, n_scores: int, labels, weights) -> float:
    """ROC AUC of tiles counted ``weights`` times each; ``score_rank``: each
    tile's rank among the distinct scores (0 = lowest)."""
    pos = np.bincount(score_rank, weights=weights * labels, minlength=n_scores)
    neg = np.bincount(score_rank, weights=weights * (1 - labels), minlength=n_scores)
    below = np.cumsum(neg) - neg  # negatives scored strictly lower
    total = pos.sum() * neg.sum()
    return float((pos * (below + 0.5 * neg)).sum() / total) if total else float("nan")


def choose_threshold(labels, probs, target_sensitivity: float = 0.0) -> float:
    """The decision threshold chosen on (out-of-fold) predictions.

    Args:
        target_sensitivity: 0 picks the threshold that maximises Youden's J
            (sensitivity + specificity - 1); a value in (0, 1) picks the
            highest threshold whose sensitivity reaches it (the clinical
            operating point: a missed tumour costs more than a false alarm).
    """
    if not 0 <= target_sensitivity < 1:
        raise PcamError(f"--target-sensitivity {target_sensitivity}: give a fraction in "
                        "(0, 1), e.g. 0.95, or 0 for Youden's J")
    labels = np.asarray(labels, np.int64)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, probs)
    # roc_curve's first threshold is +inf (nothing positive); never choose it.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if target_sensitivity:
        i = int(np.argmax(tpr >= target_sensitivity))  # tpr rises as thresholds fall
    else:
        i = int(np.argmax(tpr - fpr))
    return float(thresholds[i])


def threshold_metrics(labels, probs, threshold: float) -> dict:
    """Confusion counts and the rates derived from them, predicting positive
    when ``prob >= threshold``."""
    labels = np.asarray(labels, np.int64).astype(bool)
    predicted = np.asarray(probs, np.float64) >= threshold
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    tn = int((~predicted & ~labels).sum())
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    return {
        "threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "accuracy": _ratio(tp + tn, len(labels)),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * precision * sensitivity, precision + sensitivity),
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def evaluate(labels, probs, threshold: float, *, resamples: int = 1000, seed: int = 0) -> dict:
    """Everything the report shows for one set of predictions: AUC with its
    bootstrap interval, log loss and the metrics at ``threshold``."""
    low, high = bootstrap_auc(labels, probs, resamples=resamples, seed=seed)
    return {**binary_metrics(labels, probs), "auc_low": low, "auc_high": high,
            **threshold_metrics(labels, probs, threshold)}
