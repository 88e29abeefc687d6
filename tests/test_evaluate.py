"""Evaluation: the metrics against scikit-learn on known inputs, and the report
of a real tiny run (and of a scored submission) with every file it promises."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_score,
                             recall_score, roc_auc_score, roc_curve)

from pcam import metrics
from pcam.commands.evaluate import main as evaluate_main
from pcam.errors import PcamError
from pcam.report.evaluate import evaluate
from pcam.settings import EvaluateSettings


@pytest.fixture(scope="module")
def scores():
    """2,000 noisy scores with ties (rounded to 2 decimals), 30% positives."""
    rng = np.random.default_rng(7)
    labels = (rng.random(2000) < 0.3).astype(int)
    probs = np.clip(np.round(0.35 + 0.3 * labels + rng.normal(0, 0.2, 2000), 2), 0, 1)
    return labels, probs


# --- metrics -----------------------------------------------------------------------

def test_weighted_auc_is_sklearns_auc_of_the_repeated_tiles(scores):
    labels, probs = scores
    _, rank = np.unique(probs, return_inverse=True)
    n_scores = rank.max() + 1
    ones = np.ones(len(labels))
    assert metrics.weighted_auc(rank, n_scores, labels, ones) == pytest.approx(
        roc_auc_score(labels, probs), abs=1e-12)
    counts = np.random.default_rng(0).integers(0, 4, len(labels))
    repeated = np.repeat(np.arange(len(labels)), counts)
    assert metrics.weighted_auc(rank, n_scores, labels, counts) == pytest.approx(
        roc_auc_score(labels[repeated], probs[repeated]), abs=1e-12)


def test_bootstrap_interval_brackets_the_auc_and_narrows_with_more_tiles(scores):
    labels, probs = scores
    low, high = metrics.bootstrap_auc(labels, probs, resamples=300, seed=1)
    point = roc_auc_score(labels, probs)
    assert low < point < high
    small_low, small_high = metrics.bootstrap_auc(labels[:200], probs[:200], resamples=300)
    assert (small_high - small_low) > 2 * (high - low)  # ~sqrt(10) = 3.2x wider
    assert metrics.bootstrap_auc(labels, probs, resamples=300, seed=1) == (low, high)
    assert all(np.isnan(metrics.bootstrap_auc([1, 1, 1], [0.2, 0.5, 0.9], resamples=10)))


def test_threshold_metrics_match_sklearn(scores):
    labels, probs = scores
    m = metrics.threshold_metrics(labels, probs, 0.5)
    predicted = probs >= 0.5
    tn, fp, fn, tp = confusion_matrix(labels, predicted).ravel()
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert m["precision"] == pytest.approx(precision_score(labels, predicted))
    assert m["sensitivity"] == pytest.approx(recall_score(labels, predicted))
    assert m["specificity"] == pytest.approx(recall_score(1 - labels, ~predicted))
    assert m["f1"] == pytest.approx(f1_score(labels, predicted))


def test_youden_threshold_maximises_j_and_target_sensitivity_is_reached(scores):
    labels, probs = scores
    chosen = metrics.choose_threshold(labels, probs)
    fpr, tpr, thresholds = roc_curve(labels, probs)
    j = tpr - fpr
    assert chosen == pytest.approx(thresholds[np.argmax(j)])
    at = metrics.threshold_metrics(labels, probs, chosen)
    assert at["sensitivity"] + at["specificity"] - 1 == pytest.approx(j.max())

    for target in (0.8, 0.95):
        t = metrics.choose_threshold(labels, probs, target)
        assert metrics.threshold_metrics(labels, probs, t)["sensitivity"] >= target
        higher = np.unique(probs)[np.unique(probs) > t].min()  # the next stricter threshold
        assert metrics.threshold_metrics(labels, probs, higher)["sensitivity"] < target
    with pytest.raises(PcamError, match="--target-sensitivity 1.5"):
        metrics.choose_threshold(labels, probs, 1.5)


# --- the report of a real run --------------------------------------------------------

def referenced_files(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


def check_report(folder: Path, pngs: set[str]) -> dict:
    """Every promised file exists and is non-trivial; the page refers only to
    files in the folder and uses nothing from the network."""
    assert {p.name for p in folder.glob("*.png")} == pngs
    for name in pngs:
        with Image.open(folder / name) as image:
            width, height = image.size
            assert width >= 400 and height >= 250, name
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 10, f"{name} is blank"
    page = (folder / "index.html").read_text()
    refs = referenced_files(page)
    assert set(pngs) <= set(refs)
    for ref in refs:
        assert (folder / ref).is_file(), ref
    assert "http://" not in page and "https://" not in page and "<script" not in page
    return json.loads((folder / "metrics.json").read_text())


def test_training_writes_the_report_and_its_metrics_match_sklearn(tiny_run):
    run_dir = tiny_run.run_dir
    folder = run_dir / "report"
    record = check_report(folder, {"confusion.png", "roc_pr.png", "calibration.png",
                                   "reliability.png", "training_fold_0.png", "training_fold_1.png",
                                   "false_positives.png", "false_negatives.png",
                                   "false_positives_gradcam.png",
                                   "false_negatives_gradcam.png"})
    oof = pd.concat([pd.read_csv(run_dir / f"fold_{k}" / "oof.csv") for k in (0, 1)])
    pooled = record["groups"]["pooled"]
    assert pooled["auc"] == pytest.approx(roc_auc_score(oof["label"], oof["prob"]))
    assert pooled["n"] == len(oof) == 300
    # The report is of the probabilities as the run gives them: at its temperature,
    # fitted on these predictions (so the log-loss cannot rise) and kept in model.json.
    from pcam.calibration import apply_temperature

    cal = record["calibration"]
    info = json.loads((run_dir / "fold_0" / "model.json").read_text())
    assert cal["temperature"] == pytest.approx(info["temperature"]) and cal["temperature"] != 1
    assert cal["after"]["log_loss"] <= cal["before"]["log_loss"] + 1e-9
    t = record["threshold"]["value"]
    assert t == pytest.approx(info["threshold"])
    calibrated = apply_temperature(oof["prob"].to_numpy(), cal["temperature"])
    assert pooled["f1"] == pytest.approx(f1_score(oof["label"], calibrated >= t))
    fold_1 = oof[oof["fold"] == 1]
    assert record["groups"]["fold 1"]["auc"] == pytest.approx(
        roc_auc_score(fold_1["label"], fold_1["prob"]))
    page = (folder / "index.html").read_text()
    assert f"{pooled['auc']:.4f}" in page and "simple-cnn" in page
    assert "the dashed line marks where fine-tuning starts" in page  # two phases ran


def test_evaluate_script_with_target_sensitivity_and_a_scored_submission(tiny_run, tmp_path,
                                                                         layout_cache, capsys):
    out = tmp_path / "clinical"
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--run", str(tiny_run.run_dir), "--target-sensitivity", "0.95",
                       "--bootstrap", "200", "--gallery", "0", "--out", str(out)])
    assert exit_.value.code == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["groups"]["pooled"]["sensitivity"] >= 0.95
    assert "sensitivity ≥ 0.95" in record["threshold"]["rule"]
    assert not (out / "false_positives.png").exists()
    assert "report: " in capsys.readouterr().out

    from pcam.commands.predict import predict
    from pcam.settings import PredictSettings
    submission = tmp_path / "sub.csv"
    predict(PredictSettings(run=str(tiny_run.run_dir), tta=1, out=str(submission)))
    answers = str(layout_cache) + ".answers.csv"
    test = evaluate(EvaluateSettings(submission=str(submission), answers=answers,
                                     bootstrap=200))
    folder = tmp_path / "sub-report"
    check_report(folder, {"confusion.png", "roc_pr.png", "calibration.png",
                          "false_positives.png", "false_negatives.png"})
    key = pd.read_csv(answers, dtype={"id": str}).merge(
        pd.read_csv(submission, dtype={"id": str}), on="id", suffixes=("", "_prob"))
    assert test["groups"]["test"]["auc"] == pytest.approx(
        roc_auc_score(key["label"], key["label_prob"]))
    assert test["threshold"]["chosen_on"] == "pooled out-of-fold predictions"


@pytest.mark.parametrize("args, message", [
    ([], "give --run runs/NAME"),
    (["--run", "RUN", "--submission", "x.csv"], "one of the two"),
    (["--submission", "SUB"], "--submission needs --answers"),
    (["--run", "RUN", "--target-sensitivity", "1.5"], "--target-sensitivity 1.5"),
    (["--run", "RUN", "--bootstrap", "0"], "--bootstrap 0"),
    (["--run", "nowhere"], "nowhere: no run here"),
    (["--submission", "SUB", "--answers", "ANSWERS_OTHER"], "none of its ids"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tiny_run, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("id,label\nabc,1\ndef,0\n")
    sub = tmp_path / "s.csv"
    sub.write_text("id,label\nxyz,0.5\n")
    names = {"RUN": str(tiny_run.run_dir), "SUB": str(sub), "ANSWERS_OTHER": str(other)}
    with pytest.raises(SystemExit) as exit_:
        evaluate_main([names.get(a, a) for a in args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert message in err and len(err.splitlines()) == 1, err


def test_a_run_without_finished_folds_is_refused(tiny_run, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.run_dir, copy)
    for marker in copy.glob("fold_*/metrics.json"):
        marker.unlink()
    with pytest.raises(PcamError, match="no finished fold"):
        evaluate(EvaluateSettings(run=str(copy)))


def test_history_joins_the_phases_in_order_without_repeated_epochs(tiny_run, tmp_path):
    from pcam.runs import read_history
    fold = tmp_path / "fold_0"
    fold.mkdir()
    for phase in ("frozen", "finetune"):
        text = (tiny_run.run_dir / "fold_0" / f"history_{phase}.csv").read_text()
        (fold / f"history_{phase}.csv").write_text(text)
    log = pd.read_csv(fold / "history_finetune.csv")
    again = log.assign(val_auc=0.123)  # epoch 0 logged again after a resume
    pd.concat([log, again]).to_csv(fold / "history_finetune.csv", index=False)
    history = read_history(fold)
    assert list(history["phase"]) == ["frozen", "finetune"]
    assert history["val_auc"].iloc[1] == 0.123


def test_a_partial_answer_key_is_said_and_a_replaced_report_too(tiny_run, tmp_path,
                                                                layout_cache, capsys):
    from pcam.commands.predict import predict
    from pcam.settings import PredictSettings
    submission = tmp_path / "sub.csv"
    predict(PredictSettings(run=str(tiny_run.run_dir), tta=1, out=str(submission)))
    key = pd.read_csv(str(layout_cache) + ".answers.csv", dtype={"id": str})
    partial = tmp_path / "partial.csv"
    key.iloc[:48].to_csv(partial, index=False)
    settings = EvaluateSettings(submission=str(submission), answers=str(partial), bootstrap=20,
                                gallery=0)
    capsys.readouterr()
    evaluate(settings)
    first = capsys.readouterr().out
    assert f"note: Only 48 of the submission's {len(key):,} tiles have an answer" in first
    assert "replaces" not in first
    written = json.loads((tmp_path / "sub-report" / "metrics.json").read_text())["written"]
    evaluate(settings)
    assert f"(replaces the earlier report, written {written})" in capsys.readouterr().out


@pytest.mark.parametrize("classes", [("Normal", "OSCC"), ("a", "b", "c")])
def test_scored_predictions_are_reported_from_the_csv_predict_wrote(tmp_path, classes):
    """predict.py --answers writes a CSV (path, predicted, label, one column per class);
    the command then reports it (pcam.report.evaluate.report_labelled)."""
    from pcam.report.evaluate import report_labelled

    rng = np.random.default_rng(0)
    labels = np.arange(60) % len(classes)
    probs = rng.dirichlet(np.ones(len(classes)), 60)
    probs[np.arange(60), labels] += 0.5  # better than chance, not perfect
    probs /= probs.sum(axis=1, keepdims=True)
    for c in classes:
        (tmp_path / c).mkdir()
    paths = [tmp_path / classes[y] / f"{i}.png" for i, y in enumerate(labels)]
    for path in paths:
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)
    table = pd.DataFrame({"path": [str(p) for p in paths],
                          "predicted": [classes[k] for k in probs.argmax(axis=1)],
                          "label": [classes[y] for y in labels]})
    for k, c in enumerate(classes):
        table[c] = probs[:, k]
    csv = tmp_path / "scored.csv"
    table.to_csv(csv, index=False, float_format="%.6g")
    record = {"classes": list(classes), "threshold": 0.5 if len(classes) == 2 else None,
              "labelled": {"csv": str(csv), "report": str(tmp_path / "scored-report"),
                           "title": "test images"}}
    report = report_labelled(record, EvaluateSettings(bootstrap=20, gallery=2))
    expected = (roc_auc_score(labels, probs[:, 1]) if len(classes) == 2
                else roc_auc_score(labels, probs, multi_class="ovr"))
    assert report["groups"]["test"]["auc"] == pytest.approx(expected, abs=1e-4)
    assert (tmp_path / "scored-report" / "index.html").is_file()
