"""Metric functions shared by validation, out-of-fold reports and the CV summary."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score


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
