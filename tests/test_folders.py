"""Class-folder datasets end to end, on real images from ../shared/data.

Each dataset (binary oral-oscc JPEGs, 8-class Kather TIFFs grouped by slide,
imbalanced 6-class EBHI JPEGs) goes through ingest -> 2-fold training of the
compact CNN at a small tile size -> report -> prediction on a folder ->
Grad-CAM, through the command-line entry points, and each is checked as a
user would check it. Small subsets keep each run to seconds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from tests.conftest import REPO

DATA = REPO.parent / "shared" / "data"


def need(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not found: the class-folder tests run only beside ../shared/data")
    return path


def subset(source: Path, dest: Path, per_class: int, classes=None) -> Path:
    """Copy the first ``per_class`` images of each class folder (sorted names)."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        if classes and folder.name not in classes:
            continue
        (dest / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:per_class]:
            shutil.copy(f, dest / folder.name / f.name)
    return dest


def cli(main, *args, capsys=None):
    """Run a command's main() as a script would; return (status, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out, err = capsys.readouterr() if capsys else ("", "")
    return done.value.code, out, err


def train_args(data: Path, tmp: Path, *extra):
    return ["--data-dir", data, "--store-dir", tmp / "store", "--runs-dir", tmp / "runs",
            "--run", "r", "--backbone", "simple-cnn", "--weights", "none",
            "--epochs-frozen", 0, "--epochs-finetune", 1, "--folds", 2, "--batch-size", 16,
            *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three datasets, each trained once (module-wide: ~1 minute in all)."""
    from pcam.commands.train import main

    made = {}
    for name, per_class, extra in (
            ("oral-oscc", 16, ["--positive", "OSCC"]),
            ("kather-8class", 10, ["--group-pattern", r"CRC-Prim-HE-(\d+)"]),
            ("ebhi-6class", 8, [])):
        tmp = tmp_path_factory.mktemp(name)
        data = subset(need(name), tmp / "data", per_class)
        with pytest.raises(SystemExit) as done:
            main([str(a) for a in train_args(data, tmp, "--tile-size", 32, *extra)])
        assert done.value.code == 0
        made[name] = (tmp, data)
    return made


@pytest.mark.parametrize("name, classes", [
    ("oral-oscc", ["Normal", "OSCC"]),
    ("kather-8class", ["01_TUMOR", "02_STROMA", "03_COMPLEX", "04_LYMPHO", "05_DEBRIS",
                       "06_MUCOSA", "07_ADIPOSE", "08_EMPTY"]),
    ("ebhi-6class", ["Adenocarcinoma", "High-grade_IN", "Low-grade_IN", "Normal", "Polyp",
                     "Serrated_adenoma"]),
])
def test_a_class_folder_dataset_trains_reports_predicts_and_explains(runs, name, classes,
                                                                     capsys):
    from pcam.commands.explain import main as explain
    from pcam.commands.predict import main as predict
    from pcam.models.saved import load_model_with_info

    tmp, data = runs[name]
    run = tmp / "runs" / "r"
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["classes"] == classes and config["data"]["tile_size"] == 32
    assert config["model"]["image_size"] == 32  # 0 resolved: the tiles fed, not PCam's 96
    manifest = json.loads((tmp / "store" / "train" / "manifest.json").read_text())
    assert manifest["classes"] == classes and manifest["tile_shape"] == [32, 32, 3]

    # The report names the classes and its confusion matrix is K x K over every tile.
    report = json.loads((run / "report" / "metrics.json").read_text())
    html = (run / "report" / "index.html").read_text()
    assert all(c in html for c in classes)
    pooled = report["groups"]["pooled"]
    k = len(classes)
    if k == 2:
        assert {pooled["tp"] + pooled["fn"], pooled["tn"] + pooled["fp"]} == {16}
    else:
        confusion = np.array(pooled["confusion"])
        assert confusion.shape == (k, k) and confusion.sum() == pooled["n"]

    # Prediction on a folder: one row per image, a probability column per class.
    out = tmp / "pred.csv"
    status, _, _ = cli(predict, "--run", run, "--images", data, "--out", out, "--tta", 2)
    assert status == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "predicted", *classes, "tiles",
                                   *[f"area_{c}" for c in classes]]
    assert (table["tiles"] == 1).all()  # images the size of the training ones: one tile each
    assert len(table) == sum(1 for _ in data.rglob("*.*"))
    np.testing.assert_allclose(table[classes].sum(axis=1), 1, atol=1e-5)
    assert set(table["predicted"]) <= set(classes)

    # A model loaded from best.keras + model.json alone gives the same probabilities.
    model, info = load_model_with_info(run / "fold_0" / "best.keras")
    assert info.classes == tuple(classes) and info.tile_size == 32
    from pcam.data.images import decode_image
    from pcam.predict.ensemble import as_tiles, predict_tiles
    first = [Path(p) for p in table["path"][:4]]
    tiles = as_tiles([decode_image(p)[0] for p in first], info.tile_size)
    alone = predict_tiles([(model, info)], tiles, views=(0, 1))
    assert alone.shape == (4, len(classes))  # (N, K) for two classes too
    single_fold = tmp / "fold0.csv"
    cli(predict, "--run", run, "--images", *first, "--out", single_fold, "--tta", 2,
        "--folds", "0")
    np.testing.assert_allclose(pd.read_csv(single_fold)[classes].to_numpy(), alone, atol=1e-5)

    # Grad-CAM for a named class of any run.
    status, _, _ = cli(explain, "--run", run, "--images", first[0], "--target", classes[-1],
                       "--out", tmp / "explain")
    assert status == 0
    explained = pd.read_csv(tmp / "explain" / "explanations.csv")
    assert explained["evidence_for"].tolist() == [classes[-1]]


def test_a_labelled_test_folder_gets_a_report(runs, capsys):
    from pcam.commands.predict import main as predict

    tmp, data = runs["kather-8class"]
    out = tmp / "answers.csv"
    status, _, _ = cli(predict, "--run", tmp / "runs" / "r", "--answers", data, "--out", out,
                       "--tta", 1)
    assert status == 0
    assert "label" in pd.read_csv(out).columns
    assert "01_TUMOR" in (tmp / "answers-report" / "index.html").read_text()


def test_kaggle_run_keeps_its_classes(tiny_run):
    config = json.loads((tiny_run.run_dir / "config.json").read_text())
    assert config["data"]["classes"] == ["normal", "tumour"]
    info = json.loads((tiny_run.run_dir / "fold_0" / "model.json").read_text())
    assert info["positive"] == "tumour" and info["tile_size"] == 96 and info["label_region"] == 32
    assert 0 < info["threshold"] < 1


# --- bad inputs: one line, exit 2, nothing half-written -------------------------------

def _two_classes(root: Path, n=4, size=(40, 40)) -> Path:
    rng = np.random.default_rng(0)
    for c in ("benign", "malignant"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(root / c / f"{i}.png")
    return root


def _prepare_error(tmp: Path, data: Path, capsys, *extra) -> str:
    from pcam.commands.train import main

    status, _, err = cli(main, *train_args(data, tmp, *extra), capsys=capsys)
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert status == 2 and len(lines) == 1, err
    assert "Traceback" not in err and not (tmp / "store" / "train" / "manifest.json").exists()
    assert not (tmp / "runs").exists() or not any((tmp / "runs").rglob("config.json"))
    return lines[0]


def _damage(case: str, root: Path) -> list:
    """Make the bad input of ``case``; the extra command-line arguments it needs."""
    mal = root / "malignant"
    if case == "one class":
        shutil.rmtree(mal)
    elif case == "empty class":
        for f in mal.iterdir():
            f.unlink()
    elif case == "too few for folds":
        for f in sorted(mal.iterdir())[1:]:
            f.unlink()
    elif case == "corrupt png":
        data = (mal / "0.png").read_bytes()
        (mal / "0.png").write_bytes(data[:len(data) // 2])
    elif case == "transparent png":
        rgba = np.full((40, 40, 4), 200, np.uint8)
        rgba[0, 0, 3] = 0
        Image.fromarray(rgba, "RGBA").save(mal / "0.png")
    elif case == "mixed sizes":  # the GPU recipe has no size cap (the CPU recipe's resizes)
        Image.fromarray(np.zeros((50, 30, 3), np.uint8)).save(mal / "0.png")
    return OPTIONS.get(case, [])


# The options of the cases that are a mistake on the command line.
OPTIONS = {"mixed sizes": ["--recipe", "gpu"], "missing class": ["--classes", "benign,atypical"],
           "positive not a class": ["--positive", "tumour"],
           "pattern matches nothing": ["--group-pattern", r"patient-(\d+)"],
           "crop larger than the tiles": ["--centre-crop", 64]}


@pytest.mark.parametrize("case, expected", [
    ("one class", "need at least two class folders"),
    ("empty class", "malignant hold no images"),
    ("too few for folds", "class malignant has only 1 image"),
    ("corrupt png", "0.png cannot be decoded"),
    ("transparent png", "transparent"),
    ("mixed sizes", "pass --tile-size N"),
    ("missing class", "atypical, not a folder"),
    ("positive not a class", "--positive tumour is not a class"),
    ("pattern matches nothing", "matches no file name"),
    ("crop larger than the tiles", "--centre-crop 64 is larger than the tiles (40x40)"),
])
def test_bad_class_folders_are_one_line_errors(tmp_path, capsys, case, expected):
    data = _two_classes(tmp_path / "data")
    extra = _damage(case, data)
    line = _prepare_error(tmp_path, data, capsys, *extra)
    assert expected in line, line


def test_16_bit_tiff_and_cmyk_jpeg_work(tmp_path, capsys):
    from pcam.data.sources import read_source
    from pcam.data.store import prepare
    from pcam.settings import DataSettings

    data = _two_classes(tmp_path / "data")
    tifffile.imwrite(data / "benign" / "deep.tif",
                     (np.arange(40 * 40 * 3).reshape(40, 40, 3) * 20).astype(np.uint16))
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).convert("CMYK").save(
        data / "malignant" / "cmyk.jpg")
    settings = DataSettings(data_dir=str(data), store_dir=str(tmp_path / "store"))
    source = read_source(settings)
    assert source.tile_size == 40 and len(source.train.ids) == 10
    store = prepare(settings, quiet=True)["train"]
    assert store.n_tiles == 10 and store.classes == ("benign", "malignant")


def test_answers_with_other_classes_are_refused(runs, tmp_path, capsys):
    from pcam.commands.predict import main as predict

    tmp, _ = runs["oral-oscc"]
    answers = _two_classes(tmp_path / "answers")
    status, _, err = cli(predict, "--run", tmp / "runs" / "r", "--answers", answers,
                         "--out", tmp_path / "x.csv", capsys=capsys)
    assert status == 2 and "must be classes of the run" in err
    assert not (tmp_path / "x.csv").exists()


# --- the source scan: layouts and what it says ---------------------------------------

def test_train_and_test_folders_hidden_files_and_the_positive_class(tmp_path):
    from pcam.data.sources import read_source
    from pcam.settings import DataSettings

    root = tmp_path / "gastric"
    _two_classes(root / "train")
    _two_classes(root / "test", n=2)
    (root / "train" / "benign" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "__MACOSX").mkdir()
    (root / "train" / "__MACOSX" / "x.png").write_bytes(b"junk")
    (root / "train" / "malignant" / "notes.txt").write_text("scanned 2024")
    source = read_source(DataSettings(data_dir=str(root), positive="benign"))
    assert source.kind == "folders" and source.classes == ("malignant", "benign")
    assert source.positive == "benign" and source.tile_size == 40
    assert len(source.train.ids) == 8 and source.test.labelled and len(source.test.ids) == 4
    assert source.train.labels[source.train.ids.index("benign/0.png")] == 1
    assert "2 classes (malignant 4, benign 4)" in source.summary
    assert "positive class: benign" in source.summary and "notes.txt" in source.summary

    shutil.rmtree(root / "test")
    (root / "test").mkdir()
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(root / "test" / "new.jpg")
    source = read_source(DataSettings(data_dir=str(root), tile_size=32))
    assert source.test.ids == ("new.jpg",) and not source.test.labelled
    assert "1 image(s) centre-cropped to a square, 9 resized" in source.summary


def test_a_kaggle_folder_is_recognised_and_a_file_is_not_a_data_dir(layout, tmp_path):
    from pcam.data.sources import read_source
    from pcam.errors import PcamError
    from pcam.settings import DataSettings

    assert read_source(DataSettings(data_dir=str(layout))).kind == "kaggle"
    with pytest.raises(PcamError, match="a file, not a folder"):
        read_source(DataSettings(data_dir=str(layout / "train_labels.csv")))
    with pytest.raises(PcamError, match="--positive normal: in the Kaggle layout"):
        read_source(DataSettings(data_dir=str(layout), positive="normal"))
