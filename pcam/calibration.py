"""Calibrated probabilities: one temperature fitted on a run's out-of-fold predictions.

A model's probabilities rank well (AUC) but are often over-confident: of the
tiles it calls 95% tumour, fewer than 95% are. Temperature scaling (Guo et
al. 2017) divides the logits by one number T fitted to minimise the log-loss
of the pooled out-of-fold predictions, which the model never trained on:
T > 1 softens, T < 1 sharpens. One parameter cannot overfit a few hundred
tiles, keeps every tile's ranking (two classes: AUC unchanged) and the
most probable class. The logits are recovered from the probabilities
(``log p``: softmax's are defined up to a constant; a sigmoid's p gives
log p - log(1 - p) as the difference of the two columns' logs), so a
probability anywhere in pcam can be calibrated after the fact, after the
fold ensemble's mean or TTA's.

Arrays in, numbers out: nothing here reads or writes files.
"""
from __future__ import annotations

import numpy as np

from pcam.task import as_matrix

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before their logs
ECE_BINS = 15  # Guo et al.'s choice; fewer bins hide mis-calibration, more are noisy
T_RANGE = (0.05, 20.0)  # a temperature outside means the probabilities carry no signal


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Probabilities (N, K) with their logits divided by ``temperature``
    (``softmax(log p / T)``); a two-class (N,) array of p(class 1) stays (N,)."""
    probs = np.asarray(probs, np.float64)
    if temperature == 1.0:
        return probs
    full = as_matrix(probs)
    logits = np.log(np.clip(full, EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    out /= out.sum(axis=1, keepdims=True)
    return out[:, 1] if probs.ndim == 1 else out


def log_loss(labels, probs) -> float:
    """Mean negative log-probability of the true class."""
    full = as_matrix(np.asarray(probs, np.float64))
    labels = np.asarray(labels, np.int64)
    return float(-np.log(np.clip(full[np.arange(len(labels)), labels], EPS, 1.0)).mean())


def fit_temperature(labels, probs) -> float:
    """The temperature that minimises the log-loss of ``probs`` against ``labels``
    (a bounded search on log T; 1.0 for fewer than two classes present)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, np.int64)
    if len(np.unique(labels)) < 2:
        return 1.0
    full = as_matrix(np.asarray(probs, np.float64))
    result = minimize_scalar(lambda log_t: log_loss(labels, apply_temperature(full, np.exp(log_t))),
                             bounds=np.log(T_RANGE), method="bounded",
                             options={"xatol": 1e-4})
    return float(np.exp(result.x))


def brier(labels, probs) -> float:
    """Brier score: mean squared distance to the one-hot truth, summed over classes
    (two classes: twice the familiar (p - y)^2, so one scale serves 2 and K)."""
    full = as_matrix(np.asarray(probs, np.float64))
    truth = np.eye(full.shape[1])[np.asarray(labels, np.int64)]
    return float(((full - truth) ** 2).sum(axis=1).mean())


def reliability(labels, probs, bins: int = ECE_BINS) -> dict:
    """Confidence (the most probable class's probability) against accuracy in
    equal-width bins: ``edges``, and per bin ``confidence``, ``accuracy``,
    ``count`` (NaN where empty), and ``ece``: the count-weighted mean gap."""
    full = as_matrix(np.asarray(probs, np.float64))
    labels = np.asarray(labels, np.int64)
    confidence = full.max(axis=1)
    correct = full.argmax(axis=1) == labels
    edges = np.linspace(1 / full.shape[1], 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(which, confidence, bins) / count
        acc = np.bincount(which, correct, bins) / count
    gaps = np.nan_to_num(np.abs(conf - acc)) * count
    return {"edges": edges, "confidence": conf, "accuracy": acc, "count": count,
            "ece": float(gaps.sum() / max(1, len(labels)))}


def calibration_metrics(labels, probs) -> dict:
    """ECE (15 bins), Brier score and log-loss of (N, K) or two-class (N,) probabilities."""
    return {"ece": reliability(labels, probs)["ece"], "brier": brier(labels, probs),
            "log_loss": log_loss(labels, probs)}
