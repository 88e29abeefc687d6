"""Ensembles of runs (``scripts/predict.py --run A --run B``) and weight averaging (``--ema``).

The Kaggle pair is the session's tiny run (conftest.py) and a copy of it whose
fold models are other, untrained networks of the same backbone: two real runs
whose predictions differ. The K-class pair is the same on 8-class Kather
tissue tiles (a tiny run trained here, 6 images per class, 32 px).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcam.commands.predict import predict
from pcam.errors import PcamError
from pcam.metrics import choose_threshold
from pcam.predict.tta import combine, combine_runs
from pcam.settings import PredictSettings, RunSettings, to_json
from tests.conftest import REPO

KATHER = REPO.parent / "shared" / "data" / "kather-8class"


def other_models(run_dir: Path, dest: Path, num_classes: int, tile_size: int,
                 seed: int) -> Path:
    """A copy of ``run_dir`` whose fold models are fresh networks of its
    backbone (seeded): the same run files, other predictions."""
    import keras

    from pcam.models.registry import create_model

    shutil.copytree(run_dir, dest)
    keras.utils.set_random_seed(seed)
    for fold in sorted(dest.glob("fold_*")):
        create_model("simple-cnn", num_classes=num_classes, image_size=tile_size,
                     tile_size=tile_size, weights="none").save(fold / "best.keras")
    return dest


def predicted(runs, out: Path, **changes) -> tuple[pd.DataFrame, dict]:
    """predict() with ``runs``; the CSV written and its record."""
    record = predict(PredictSettings(run=tuple(map(str, runs)), tta=1, out=str(out), **changes))
    assert json.loads(out.with_suffix(".json").read_text())["model_files"] == record["model_files"]
    return pd.read_csv(out, dtype={"id": str}), record


# --- a Kaggle pair -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny run and its copy with other models and other OOF predictions
    (the same folds.csv): both real runs, predicting differently."""
    a = tiny_run.run_dir
    b = other_models(a, tmp_path_factory.mktemp("pair") / "other", 2, 96, seed=7)
    rng = np.random.default_rng(0)
    for oof in b.glob("fold_*/oof.csv"):
        table = pd.read_csv(oof, dtype={"id": str})
        table["prob"] = np.clip(table["prob"] + rng.normal(0, 0.2, len(table)), 0, 1)
        table.to_csv(oof, index=False)
    return a, b


def test_an_ensemble_of_two_kaggle_runs_is_the_mean_of_their_submissions(pair, tmp_path,
                                                                         monkeypatch):
    a, b = pair
    alone_a, _ = predicted([a], tmp_path / "a.csv")
    alone_b, _ = predicted([b], tmp_path / "b.csv")
    assert np.abs(alone_a["label"] - alone_b["label"]).max() > 1e-3  # two different runs
    monkeypatch.chdir(tmp_path)  # the default output name: both runs' names
    record = predict(PredictSettings(run=(str(a), str(b)), tta=1))
    both = pd.read_csv(tmp_path / "submissions" / "tiny+other.csv", dtype={"id": str})
    assert both["id"].tolist() == alone_a["id"].tolist()
    np.testing.assert_allclose(both["label"], (alone_a["label"] + alone_b["label"]) / 2,
                               atol=1e-6)
    # The record lists every model of the ensemble, and no single "run".
    assert [(Path(m["run"]).name, m["fold"], m["backbone"]) for m in record["model_files"]] == [
        ("tiny", 0, "simple-cnn"), ("tiny", 1, "simple-cnn"),
        ("other", 0, "simple-cnn"), ("other", 1, "simple-cnn")]
    assert [r["run"] for r in record["runs"]] == [str(a), str(b)] and "run" not in record
    assert record["model_files"][2]["path"] == str(b / "fold_0" / "best.keras")

    # Rank mean: each run's folds by rank, then the runs by rank. From each
    # fold's own probabilities, which the CSV holds exactly (float32 in 9
    # digits); a run's rank means would lose their ties to rounding.
    folds = [[predicted([run], tmp_path / f"{run.name}{k}.csv", folds=(k,))[0]["label"]
              for k in (0, 1)] for run in (a, b)]
    ranked, _ = predicted([a, b], tmp_path / "rank.csv", average="rank")
    np.testing.assert_allclose(ranked["label"], combine_runs(folds, "rank"), atol=1e-6)
    assert not np.allclose(combine_runs(folds, "rank"), combine(sum(folds, []), "rank"))


def calibrated_oof(run):
    """A run's out-of-fold predictions at its temperature, as its predictions are made."""
    from pcam.calibration import apply_temperature
    from pcam.runs import read_oof

    oof = read_oof(run, [0, 1]).set_index("id")
    temperature = json.loads((run / "fold_0" / "model.json").read_text())["temperature"]
    assert temperature != 1.0  # fitted once both folds finished
    return oof.assign(prob=apply_temperature(oof["prob"].to_numpy(), temperature))


def test_the_threshold_of_runs_with_the_same_folds_is_chosen_on_their_pooled_oof(
        pair, tiny_run, tmp_path):

    a, b = pair
    images = sorted((Path(tiny_run.data.data_dir) / "test").glob("*.tif"))[:6]
    _, record = predicted([a, b], tmp_path / "ab.csv", images=tuple(map(str, images)))
    oof_a, oof_b = calibrated_oof(a), calibrated_oof(b)
    oof_b = oof_b.loc[oof_a.index]
    expected = choose_threshold(oof_a["label"], (oof_a["prob"] + oof_b["prob"]) / 2)
    alone = json.loads((a / "fold_0" / "model.json").read_text())["threshold"]
    assert record["threshold"] == pytest.approx(expected) and expected != pytest.approx(alone)
    assert record["threshold_note"] == ""

    # Other folds: no out-of-fold prediction of the ensemble exists, the threshold is 0.5.
    c = tmp_path / "refolded"
    shutil.copytree(b, c)
    folds = pd.read_csv(c / "folds.csv", dtype={"id": str})
    folds["fold"] = 1 - folds["fold"]
    folds.to_csv(c / "folds.csv", index=False)
    table, record = predicted([a, c], tmp_path / "ac.csv", images=tuple(map(str, images)))
    assert record["threshold"] == 0.5 and "different folds" in record["threshold_note"]
    assert table["predicted"].tolist() == np.where(table["tumour"] >= 0.5, "tumour",
                                                   "normal").tolist()


def test_an_ensembles_submission_is_scored_at_the_threshold_of_its_runs_pooled_oof(
        pair, layout_cache, tmp_path):
    from pcam.report.evaluate import evaluate
    from pcam.settings import EvaluateSettings

    a, b = pair
    predicted([a, b], tmp_path / "ab.csv")
    answers = str(layout_cache) + ".answers.csv"
    report = evaluate(EvaluateSettings(submission=str(tmp_path / "ab.csv"), answers=answers,
                                       bootstrap=200, gallery=0))
    oof_a, oof_b = calibrated_oof(a), calibrated_oof(b)
    oof_b = oof_b.loc[oof_a.index]
    expected = choose_threshold(oof_a["label"], (oof_a["prob"] + oof_b["prob"]) / 2)
    assert report["threshold"]["chosen_on"] == "pooled out-of-fold predictions"
    assert report["threshold"]["value"] == pytest.approx(expected)

    # Without one of its runs the threshold falls back to the test tiles, and says why.
    record = json.loads((tmp_path / "ab.json").read_text())
    record["runs"][1]["run"] = str(tmp_path / "gone")
    (tmp_path / "ab.json").write_text(json.dumps(record))
    report = evaluate(EvaluateSettings(submission=str(tmp_path / "ab.csv"), answers=answers,
                                       bootstrap=200, gallery=0))
    assert report["threshold"]["chosen_on"] == "these test tiles"
    assert any("gone is not there" in note for note in report["notes"])


def test_runs_that_cannot_be_ensembled_are_refused_in_one_line(pair, tmp_path, capsys):
    from pcam.commands.predict import main

    a, b = pair
    swapped = tmp_path / "swapped"
    shutil.copytree(b, swapped)
    config = json.loads((swapped / "config.json").read_text())
    config["data"]["classes"] = ["tumour", "normal"]  # the same classes, the other order
    (swapped / "config.json").write_text(json.dumps(config))
    out = tmp_path / "subs" / "x.csv"
    with pytest.raises(SystemExit) as done:
        main(["--run", str(a), "--run", str(swapped), "--out", str(out)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert (f"runs {a} and {swapped} cannot be ensembled: their classes differ (normal, "
            "tumour vs tumour, normal, in label order)") in err
    assert not out.parent.exists()
    with pytest.raises(SystemExit):  # the runs listed after one --run: the same
        main(["--run", str(a), str(swapped), "--out", str(out)])
    assert "their classes differ" in capsys.readouterr().err

    # --folds applies to every run: a fold one of them lacks is refused, naming that run.
    half = tmp_path / "half"
    shutil.copytree(b, half)
    (half / "fold_1" / "metrics.json").unlink()
    with pytest.raises(PcamError, match=f"fold\\(s\\) 1 of run {half} are not finished"):
        predict(PredictSettings(run=(str(a), str(half)), folds=(1,), out=str(out)))
    with pytest.raises(PcamError, match=f"--run {a} is given more than once"):
        PredictSettings(run=(str(a), str(a) + "/"))
    assert PredictSettings(run=str(a)).run == (str(a),)  # one run, as Python callers give it


# --- a K-class pair ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kather_pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny 8-class run (train/ 6 and test/ 2 images per class, 32 px) and
    its copy with other models; and the data folder."""
    from pcam.settings import (DataSettings, FoldSettings, InputSettings, ModelSettings,
                               TrainSettings)
    from pcam.train.training import run_cv

    if not KATHER.is_dir():
        pytest.skip(f"{KATHER} not found: the class-folder tests run only beside ../shared/data")
    tmp = tmp_path_factory.mktemp("kather-pair")
    for folder in sorted(p for p in KATHER.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        for split, chosen in (("train", files[:6]), ("test", files[6:8])):
            (tmp / "data" / split / folder.name).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, tmp / "data" / split / folder.name / f.name)
    settings = RunSettings(
        run="k8", runs_dir=str(tmp / "runs"), report=False,
        data=DataSettings(data_dir=str(tmp / "data"), store_dir=str(tmp / "store"),
                          tile_size=32),
        folds=FoldSettings(folds=2, seed=0), inputs=InputSettings(batch_size=16),
        model=ModelSettings(backbone="simple-cnn", weights="none"),
        train=TrainSettings(epochs_frozen=0, epochs_finetune=1))
    run_cv(settings)
    other = other_models(settings.run_dir, tmp / "runs" / "k8-other", 8, 32, seed=3)
    return settings.run_dir, other, tmp / "data"


def test_an_ensemble_of_two_class_folder_runs_is_the_mean_of_their_probabilities(
        kather_pair, tmp_path):
    a, b, data = kather_pair
    classes = json.loads((a / "config.json").read_text())["data"]["classes"]
    assert len(classes) == 8
    for how in ("test", "images"):  # the runs' test/ folder (their stores), and loose images
        extra = {} if how == "test" else {"images": (str(data / "test"),)}
        alone_a, _ = predicted([a], tmp_path / f"{how}-a.csv", **extra)
        alone_b, _ = predicted([b], tmp_path / f"{how}-b.csv", **extra)
        both, record = predicted([a, b], tmp_path / f"{how}-ab.csv", **extra)
        assert len(both) == 16 and both["path"].tolist() == alone_a["path"].tolist()
        mean = (alone_a[classes].to_numpy() + alone_b[classes].to_numpy()) / 2
        assert np.abs(alone_a[classes].to_numpy() - mean).max() > 1e-3
        np.testing.assert_allclose(both[classes].to_numpy(), mean, atol=1e-6)
        assert both["predicted"].tolist() == [classes[i] for i in mean.argmax(axis=1)]
        assert record["threshold"] is None and len(record["model_files"]) == 4


# --- --ema ----------------------------------------------------------------------------------

class Kill(Exception):
    """Raised by a callback to stop training as a killed process would."""


def test_ema_saves_and_validates_the_averaged_weights_and_resumes_with_them(layout_cache,
                                                                           tmp_path):
    """Fold 0, 3 epochs, with --ema (momentum 0.5: 3 steps an epoch move the
    average clearly). The run is stopped after epoch 2's backup and resumed."""
    import keras

    from pcam import task
    from pcam.data.folds import load_or_assign
    from pcam.data.pipeline import eval_dataset
    from pcam.data.store import prepare
    from pcam.runs import read_history
    from pcam.settings import (DataSettings, FoldSettings, InputSettings, ModelSettings,
                               TrainSettings, to_dict)
    from pcam.train import distribute
    from pcam.train.training import resolve, run_fold, split_positions

    settings = RunSettings(
        run="ema", runs_dir=str(tmp_path / "runs"), fold=0,
        data=DataSettings(data_dir=str(layout_cache), store_dir=str(tmp_path / "store")),
        folds=FoldSettings(folds=2, seed=0, max_tiles=96), inputs=InputSettings(batch_size=16),
        model=ModelSettings(backbone="simple-cnn", weights="none"),
        train=TrainSettings(epochs_frozen=0, epochs_finetune=3, lr_finetune=2e-3, ema=True,
                            ema_momentum=0.5))
    assert to_dict(settings)["train"]["ema"] is True  # so config.json records it
    store = prepare(settings.data, splits=("train",), quiet=True)["train"]
    settings = resolve(settings, store)
    settings.run_dir.mkdir(parents=True)
    to_json(settings, settings.run_dir / "config.json")
    folds = load_or_assign(settings.run_dir / "folds.csv", store.index(), settings.folds)
    ends, begins = {}, {}

    class Spy(keras.callbacks.Callback):
        """After every other callback: at an epoch's end the averaged weights
        are in the model and the raw ones in the optimizer's average slots."""

        def __init__(self, stop_after=None):
            super().__init__()
            self.stop_after = stop_after

        def weights(self):
            # (built at the first step: none before it, unless a backup was restored)
            averages = getattr(self.model.optimizer, "_model_variables_moving_average", [])
            return ([v.numpy() for v in self.model.trainable_variables],
                    [v.numpy() for v in averages])

        def on_epoch_begin(self, epoch, logs=None):
            begins[epoch] = self.weights()

        def on_epoch_end(self, epoch, logs=None):
            ends[epoch] = self.weights()
            if epoch == self.stop_after:
                raise Kill

    strategy = distribute.make_strategy("auto")
    with pytest.raises(Kill):
        run_fold(settings, 0, store, folds, strategy, callbacks=[Spy(stop_after=1)])
    stopped = ends[1]
    begins.clear()
    run_fold(settings, 0, store, folds, strategy, callbacks=[Spy()])
    # Resumed from epoch 2's backup: training goes on from the raw weights,
    # and the average from the average (not the two exchanged).
    assert sorted(begins) == [2]
    for now, then in zip(begins[2][0], stopped[1]):
        np.testing.assert_array_equal(now, then)
    for now, then in zip(begins[2][1], stopped[0]):
        np.testing.assert_array_equal(now, then)

    # best.keras holds the averaged weights of the best epoch, which differ from the raw ones.
    fold = settings.run_dir / "fold_0"
    history = read_history(fold)
    best_epoch = int(history.loc[history["val_auc"].idxmax(), "epoch"])
    best = keras.models.load_model(fold / "best.keras", compile=False)
    for saved, averaged in zip([v.numpy() for v in best.trainable_variables],
                               ends[best_epoch][0]):
        np.testing.assert_array_equal(saved, averaged)
    assert max(np.abs(e - r).max() for e, r in zip(*ends[0])) > 1e-4

    # The validation AUC that chose it was measured with those weights.
    _, val_pos = split_positions(store, folds, 0)
    best.compile(loss=task.loss(2), metrics=task.metrics(2))
    measured = best.evaluate(eval_dataset(store, val_pos, settings.inputs, settings.augment),
                             return_dict=True, verbose=0)["auc"]
    assert measured == pytest.approx(history["val_auc"].max(), abs=1e-6)
    assert dataclasses.asdict(settings.train)["ema_momentum"] == 0.5
