"""The report of K-class runs and test sets, on real predictions.

Run folders are built by hand as training writes them (``pcam.runs``):
config.json, folds.csv, fold_<k>/oof.csv, metrics.json and a history, with
the out-of-fold predictions of a scikit-learn logistic regression on colour
histograms of real images: Kather's 8 tissue classes and EBHI's 6
imbalanced diagnoses (../shared/data). No TensorFlow model is trained, so
these tests take seconds; what a user checks is asserted: class names in
the page and in metrics.json, a K x K confusion matrix that sums to the
tiles, a row per class, the macro AUC equal to scikit-learn's, and a page
that opens offline.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pcam import metrics
from pcam.errors import PcamError
from pcam.report.evaluate import evaluate, report_predictions
from pcam.runs import prob_columns
from pcam.settings import DataSettings, EvaluateSettings, FoldSettings, RunSettings, to_json

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def class_folder(name: str, per_class: int | None = None, seed: int = 0):
    """(paths, labels, classes) of a class-folder data set; skipped when absent."""
    root = DATA / name
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}: these tests run beside ../shared/data")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for c, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.is_file())
        if per_class and len(files) > per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
        paths += files
        labels += [c] * len(files)
    return paths, np.array(labels), classes


def histograms(paths) -> np.ndarray:
    """8-bin histograms of R, G, B, hue and saturation of each image (64 px)."""
    rows = []
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((64, 64))
            hsv = np.asarray(rgb.convert("HSV"))
        planes = np.concatenate([np.asarray(rgb), hsv[..., :2]], axis=-1).reshape(-1, 5)
        rows.append(np.concatenate([np.histogram(planes[:, i], 8, (0, 256))[0]
                                    for i in range(5)]) / len(planes))
    return np.array(rows)


def oof_predictions(paths, labels, classes, seed: int = 0) -> pd.DataFrame:
    """Out-of-fold probabilities of a logistic regression over 2 stratified folds."""
    x = histograms(paths)
    frame = pd.DataFrame({"id": [p.stem for p in paths], "label": labels, "fold": -1,
                          "path": [str(p) for p in paths]})
    probs = np.zeros((len(labels), len(classes)))
    for k, (train, val) in enumerate(StratifiedKFold(2, shuffle=True, random_state=seed)
                                     .split(x, labels)):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000))
        model.fit(x[train], labels[train])
        probs[val] = model.predict_proba(x[val])
        frame.loc[val, "fold"] = k
    columns = prob_columns(classes)
    if len(classes) == 2:
        frame["prob"] = probs[:, 1]
    else:
        frame[columns] = probs
    return frame


def write_run(root: Path, name: str, data_dir: Path, classes, tile_size: int,
              frame: pd.DataFrame) -> Path:
    """A finished 2-fold run folder as training writes it."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    settings = RunSettings(run=name, runs_dir=str(root),
                           data=DataSettings(data_dir=str(data_dir), classes=tuple(classes),
                                             tile_size=tile_size,
                                             store_dir=str(root / "no-store")),
                           folds=FoldSettings(folds=2))
    to_json(settings, run_dir / "config.json")
    frame[["id", "label", "fold"]].to_csv(run_dir / "folds.csv", index=False)
    columns = ["id", "label", "fold", *prob_columns(classes)]
    for k in (0, 1):
        fold = run_dir / f"fold_{k}"
        fold.mkdir()
        part = frame[frame["fold"] == k]
        part[columns].to_csv(fold / "oof.csv", index=False)
        history = pd.DataFrame({"epoch": [0, 1, 2], "loss": [1.6, 1.1, 0.9],
                                "auc": [0.7, 0.8, 0.85], "accuracy": [0.4, 0.5, 0.6],
                                "val_loss": [1.7, 1.3, 1.2], "val_auc": [0.68, 0.76, 0.79],
                                "val_accuracy": [0.35, 0.45, 0.5]})
        if len(classes) > 2:
            history["balanced_accuracy"] = [0.35, 0.45, 0.55]
            history["val_balanced_accuracy"] = [0.3, 0.4, 0.45]
        history.to_csv(fold / "history_finetune.csv", index=False)
        result = metrics.task_metrics(part["label"], _probs(part, classes), classes)
        (fold / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return run_dir


def _probs(frame, classes):
    return frame[prob_columns(classes)].to_numpy()[:, 0] if len(classes) == 2 \
        else frame[prob_columns(classes)].to_numpy()


def check_offline_page(folder: Path) -> str:
    page = (folder / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs, "the page shows no figures"
    for ref in refs:
        assert not re.match(r"[a-z]+:", ref), ref  # relative: no http, no file://
        assert (folder / ref).is_file(), ref
    assert "http://" not in page and "https://" not in page and "<script" not in page
    return page


def check_multiclass_report(folder: Path, frame: pd.DataFrame, classes, group: str) -> dict:
    record = json.loads((folder / "metrics.json").read_text())
    k, n = len(classes), len(frame)
    assert record["task"] == "multiclass" and record["classes"] == list(classes)
    m = record["groups"][group]
    labels, probs = frame["label"].to_numpy(), frame[prob_columns(classes)].to_numpy()
    assert m["n"] == n
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr",
                                                   average="macro"), abs=1e-9)
    assert m["auc_low"] < m["auc"] < m["auc_high"]
    assert m["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, probs.argmax(1)))
    confusion = np.array(m["confusion"])
    assert confusion.shape == (k, k) and confusion.sum() == n
    np.testing.assert_array_equal(confusion, confusion_matrix(labels, probs.argmax(1),
                                                              labels=range(k)))
    assert [c["class"] for c in m["per_class"]] == list(classes)
    assert [c["support"] for c in m["per_class"]] == np.bincount(labels, minlength=k).tolist()
    page = check_offline_page(folder)
    for name in classes:  # a row of the per-class table for each class, by its name
        assert f"<tr><td>{name}</td>" in page, name
    assert f"{m['auc']:.4f}" in page and "balanced accuracy" in page
    assert "tumour" not in page.replace("no tumour", "")  # no PCam words in another task
    return record


@pytest.fixture(scope="module")
def kather():
    paths, labels, classes = class_folder("kather-8class")
    return oof_predictions(paths, labels, classes), classes


@pytest.fixture(scope="module")
def ebhi():
    # 60 per class at most keeps the imbalance's shape (Normal 61, Serrated_adenoma 46)
    # small enough for seconds; every image of the two rare classes is in.
    paths, labels, classes = class_folder("ebhi-6class", per_class=60)
    return oof_predictions(paths, labels, classes), classes


def test_kather_8_class_run_report(kather, tmp_path):
    frame, classes = kather
    run_dir = write_run(tmp_path / "runs", "kather", DATA / "kather-8class", classes, 150, frame)
    record = evaluate(EvaluateSettings(run=str(run_dir), bootstrap=200))
    folder = run_dir / "report"
    assert {p.name for p in folder.glob("*.png")} == {
        "confusion.png", "roc_ovr.png", "sensitivity.png", "training_fold_0.png",
        "training_fold_1.png"}
    check_multiclass_report(folder, frame, classes, "pooled")
    fold_1 = frame[frame["fold"] == 1]
    assert record["groups"]["fold 1"]["auc"] == pytest.approx(roc_auc_score(
        fold_1["label"], fold_1[prob_columns(classes)].to_numpy(), multi_class="ovr"))
    assert record["fold_balanced_accuracy_std"] is not None
    assert any("no tile galleries" in note for note in record["notes"])
    page = (folder / "index.html").read_text()
    assert "Fold macro AUC" in page and "01_TUMOR" in page

    # As prediction calls it: the image files' paths as ids, no store; the
    # gallery reads the 150 px TIFFs themselves.
    test = frame.assign(id=frame["path"]).drop(columns=["path", "fold"])
    out = tmp_path / "kather-test"
    report_predictions(test, classes, out, "Kather test set",
                       EvaluateSettings(bootstrap=100, gallery=5))
    check_multiclass_report(out, test, classes, "test")
    with Image.open(out / "mistakes.png") as image:
        assert image.size[1] >= 8 * 150  # a line per class, eight of them


def test_ebhi_6_class_run_report_and_test_set_with_galleries(ebhi, tmp_path):
    frame, classes = ebhi
    run_dir = write_run(tmp_path / "runs", "ebhi", DATA / "ebhi-6class", classes, 224, frame)
    evaluate(EvaluateSettings(run=str(run_dir), bootstrap=200, gallery=0))
    check_multiclass_report(run_dir / "report", frame, classes, "pooled")

    # The lead's prediction on a labelled class-folder test set: images by path,
    # so the report shows the most confident mistakes from the files.
    test = frame[frame["fold"] == 0].drop(columns=["fold", "id"])
    out = tmp_path / "test-report"
    record = report_predictions(test, classes, out, "EBHI test set",
                                EvaluateSettings(bootstrap=200, gallery=4))
    check_multiclass_report(out, test, classes, "test")
    assert (out / "mistakes.png").is_file()
    with Image.open(out / "mistakes.png") as image:
        assert image.size[0] >= 600 and image.size[1] >= 6 * 150  # a line per class
    assert record["groups"]["test"]["n"] == len(test)


def test_a_class_absent_from_the_test_set_is_left_out_of_the_macro_auc(ebhi, tmp_path):
    frame, classes = ebhi
    absent = classes.index("Normal")
    test = frame[frame["label"] != absent]
    record = report_predictions(test, classes, tmp_path / "r", "without Normal",
                                EvaluateSettings(bootstrap=100, gallery=0))
    m = record["groups"]["test"]
    present = [c for c in range(len(classes)) if c != absent]
    probs = test[prob_columns(classes)].to_numpy()
    expected = np.mean([roc_auc_score(test["label"] == c, probs[:, c]) for c in present])
    assert m["auc"] == pytest.approx(expected)
    normal = json.loads((tmp_path / "r" / "metrics.json").read_text())["groups"]["test"][
        "per_class"][absent]
    assert normal["support"] == 0 and normal["auc"] is None and normal["sensitivity"] is None


def test_binary_class_folders_use_their_class_names(tmp_path):
    paths, labels, classes = class_folder("oral-oscc", per_class=80)
    frame = oof_predictions(paths, labels, classes)
    run_dir = write_run(tmp_path / "runs", "oral", DATA / "oral-oscc", classes, 224, frame)
    record = evaluate(EvaluateSettings(run=str(run_dir), bootstrap=200))
    assert record["task"] == "binary" and record["classes"] == list(classes)
    pooled = record["groups"]["pooled"]
    assert pooled["auc"] == pytest.approx(roc_auc_score(frame["label"], frame["prob"]))
    folder = run_dir / "report"
    assert {"confusion.png", "roc_pr.png", "calibration.png"} <= {
        p.name for p in folder.glob("*.png")}
    page = check_offline_page(folder)
    assert "tumour" not in page and classes[1] in page and classes[0] in page

    test = frame[frame["fold"] == 1].drop(columns=["id"])
    out = tmp_path / "oral-test"
    record = report_predictions(test, classes, out, "oral test", EvaluateSettings(
        bootstrap=100, gallery=3), threshold=0.5)
    assert record["threshold"]["value"] == 0.5
    assert (out / "false_positives.png").is_file() and (out / "false_negatives.png").is_file()
    assert "tumour" not in (out / "index.html").read_text()


def test_predictions_without_their_probability_columns_are_refused(kather, tmp_path):
    frame, classes = kather
    with pytest.raises(PcamError, match="prob_08_EMPTY") as err:
        report_predictions(frame.drop(columns=["prob_08_EMPTY"]), classes, tmp_path / "r",
                           "broken", EvaluateSettings(bootstrap=10))
    assert len(str(err.value).splitlines()) == 1
