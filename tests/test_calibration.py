"""Temperature scaling, with known answers: probabilities made over-confident
by a known factor give that factor back, and calibration error falls."""
from __future__ import annotations

import numpy as np
import pytest

from pcam.calibration import (apply_temperature, brier, calibration_metrics, fit_temperature,
                              log_loss, reliability)
from pcam.metrics import auc


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("classes, factor", [(2, 3.0), (2, 0.5), (4, 2.5)])
def test_an_over_confident_model_gives_back_its_factor(classes, factor):
    rng = np.random.default_rng(classes)
    logits = rng.normal(0, 1.5, (20_000, classes))
    truth = _softmax(logits)  # the labels are drawn from these: they are calibrated
    labels = (rng.random(len(truth))[:, None] > truth.cumsum(axis=1)).sum(axis=1)
    skewed = _softmax(factor * logits)  # over-confident by the factor (or under, below 1)
    found = fit_temperature(labels, skewed)
    assert found == pytest.approx(factor, rel=0.05)
    fixed = apply_temperature(skewed, found)
    before, after = calibration_metrics(labels, skewed), calibration_metrics(labels, fixed)
    assert after["ece"] < before["ece"] and after["ece"] < 0.02
    assert after["log_loss"] < before["log_loss"] and after["brier"] < before["brier"]
    np.testing.assert_array_equal(fixed.argmax(axis=1), skewed.argmax(axis=1))


def test_two_class_vectors_keep_their_shape_and_ranking():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    labels = (rng.random(500) < p).astype(int)
    cooled = apply_temperature(p, 2.0)
    assert cooled.shape == p.shape
    assert auc(labels, cooled) == pytest.approx(auc(labels, p), abs=1e-12)
    assert np.all(np.abs(cooled - 0.5) <= np.abs(p - 0.5) + 1e-12)  # softer, never sharper
    np.testing.assert_allclose(apply_temperature(p, 1.0), p)
    # A sigmoid's logit: log p - log(1 - p), divided by T.
    logit = np.log(p) - np.log1p(-p)
    np.testing.assert_allclose(cooled, 1 / (1 + np.exp(-logit / 2.0)), rtol=1e-9)


def test_scores_by_hand():
    labels = np.array([1, 0, 1, 1])
    p = np.array([0.9, 0.2, 0.6, 0.3])
    assert brier(labels, p) == pytest.approx(2 * np.mean((p - labels) ** 2))
    assert log_loss(labels, p) == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.6, 0.3])))
    bins = reliability(labels, p, bins=2)  # confidences 0.9, 0.8, 0.6, 0.7 in [0.5, 0.75), [0.75, 1]
    assert bins["count"].tolist() == [2, 2]
    np.testing.assert_allclose(bins["accuracy"], [0.5, 1.0])  # 0.3 for a 1 is a mistake
    assert bins["ece"] == pytest.approx((2 * abs(0.65 - 0.5) + 2 * abs(0.85 - 1.0)) / 4)
    assert fit_temperature([1, 1, 1], [0.9, 0.8, 0.7]) == 1.0  # one class: nothing to fit


def test_a_finished_run_predicts_at_its_temperature(tiny_run, tmp_path):
    """A 2-fold run: its temperature and calibrated threshold are in every fold's
    model.json and cv.json; predict.py's probabilities are the models' own at
    that temperature (--calibration none: the models' own), the ranking the same."""
    import json

    import pandas as pd

    from pcam.commands.predict import predict
    from pcam.runs import read_oof
    from pcam.settings import PredictSettings

    run = tiny_run.run_dir
    infos = [json.loads((run / f"fold_{k}" / "model.json").read_text()) for k in (0, 1)]
    temperature = infos[0]["temperature"]
    assert temperature != 1.0 and infos[1]["temperature"] == temperature
    cv = json.loads((run / "cv.json").read_text())
    assert cv["calibration"]["temperature"] == temperature
    oof = read_oof(run, [0, 1])
    assert temperature == pytest.approx(fit_temperature(oof["label"], oof["prob"]), rel=1e-6)
    from pcam.metrics import choose_threshold
    assert infos[0]["threshold"] == pytest.approx(
        choose_threshold(oof["label"], apply_temperature(oof["prob"].to_numpy(), temperature)))

    tables = {}
    for mode in ("temperature", "none"):
        out = tmp_path / f"{mode}.csv"
        record = predict(PredictSettings(run=str(run), folds=(0,), tta=1, out=str(out),
                                         calibration=mode))
        tables[mode] = (pd.read_csv(out, dtype={"id": str}), record)
    (calibrated, rec_cal), (raw, rec_raw) = tables["temperature"], tables["none"]
    assert (calibrated["id"] == raw["id"]).all()
    # One fold: its answer at the run's temperature (with several, each fold's
    # answer is, before their mean).
    np.testing.assert_allclose(calibrated["label"],
                               apply_temperature(raw["label"].to_numpy(), temperature), atol=1e-6)
    assert not np.allclose(calibrated["label"], raw["label"], atol=1e-3)
    assert rec_cal["settings"]["calibration"] == "temperature"
    assert rec_raw["settings"]["calibration"] == "none"
