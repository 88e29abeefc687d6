"""Prediction and submission on real tiles: TTA views, the fold ensemble, the
submission's checks, scripts/predict.py end to end, and submitting to a fake Kaggle.

One tiny run (simple-cnn, 2 folds, 1 epoch per phase, 300 real tiles) is
trained once for the session (conftest.py); its test store holds 100 real tiles.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from pcam.commands.predict import parse_folds, predict
from pcam.data.augment import dihedral_view
from pcam.errors import PcamError
from pcam.kaggle.submission import validate_submission, write_submission
from pcam.metrics import auc
from pcam.models.saved import load_fold_model
from pcam.predict.ensemble import predict_tiles
from pcam.predict.tta import (TTA_VIEWS, VIEW_NAMES, cached_tta_predictor, combine, predict_batches,
                              rank_normalise, tta_predictor)
from pcam.runs import resolve_folds
from pcam.settings import DataSettings, InputSettings, PredictSettings, RunSettings, to_json

pytest_plugins = ["fake_kaggle"]  # its fixtures: fake_kaggle, kaggle_home


@pytest.fixture(scope="module")
def run(tiny_run) -> RunSettings:
    """The session's finished 2-fold run of the compact CNN (see conftest.py)."""
    return tiny_run


@pytest.fixture(scope="module")
def data(run) -> DataSettings:
    """The 300/100-tile layout and the run's tile store."""
    return run.data


@pytest.fixture(scope="module")
def store(data):
    """The test store (100 real tiles), the one the run's predictions read."""
    from pcam.data.store import prepare

    return prepare(data, splits=("test",), quiet=True)["test"]


@pytest.fixture(scope="module")
def tiles(store) -> np.ndarray:
    """The first 16 test tiles of the store, uint8 (16, 96, 96, 3)."""
    from pcam.data.pipeline import predict_dataset

    return next(iter(predict_dataset(store, InputSettings(batch_size=16)))).numpy()


def sample_of(layout) -> pd.DataFrame:
    return pd.read_csv(layout / "sample_submission.csv", dtype=str)


def view(tiles, k: int) -> np.ndarray:
    """Dihedral view k of a batch of tiles, as numpy."""
    import tensorflow as tf

    return dihedral_view(tf.constant(tiles), k).numpy()


def leftovers(folder) -> list[str]:
    """Every file in ``folder`` (a refused submission must leave none, not even a temporary)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- the TTA views --------------------------------------------------------------------

# The 8 elements of D4 in numpy, on one (H, W, 3) tile, by the names inference uses.
NUMPY_D4 = {
    "identity": lambda t: t,
    "flip left-right": lambda t: t[:, ::-1],
    "flip up-down": lambda t: t[::-1],
    "rotate 180": lambda t: np.rot90(t, 2),
    "transpose": lambda t: t.transpose(1, 0, 2),
    "rotate 90 counter-clockwise": lambda t: np.rot90(t, 1),
    "rotate 90 clockwise": lambda t: np.rot90(t, -1),
    "anti-transpose": lambda t: np.rot90(t, 2).transpose(1, 0, 2),
}


def test_tta_views_are_the_8_distinct_dihedral_transforms(tiles):
    views = [view(tiles, k) for k in range(8)]
    for k, name in enumerate(VIEW_NAMES):  # each view is the group element it is named after
        expected = np.stack([NUMPY_D4[name](t) for t in tiles])
        np.testing.assert_array_equal(views[k], expected, err_msg=name)
    for i in range(len(tiles)):            # and they are 8 different images of every tile
        assert len({v[i].tobytes() for v in views}) == 8
    for n, subset in TTA_VIEWS.items():    # each TTA size: n views, identity first, a subgroup
        assert len(set(subset)) == n and subset[0] == 0
        images = {k: view(tiles[:1], k).tobytes() for k in range(8)}
        for a in subset:
            for b in subset:
                both = view(view(tiles[:1], a), b).tobytes()
                assert both in {images[c] for c in subset}, (n, a, b)


def test_tta_prediction_is_the_mean_of_single_view_predictions(run, tiles):
    model = load_fold_model(run.run_dir / "fold_0" / "best.keras")
    single = np.stack([model.predict(view(tiles, k), verbose=0).ravel()
                       for k in range(8)])
    assert np.ptp(single, axis=0).max() > 1e-4  # the views do differ for this model
    for n, views in TTA_VIEWS.items():
        predictor = tta_predictor(model, views)
        # Two batches of different sizes: the reshape must keep each tile's own views.
        tta = predict_batches(predictor, [tiles[:5], tiles[5:]])
        # (N, K) for two classes too: the sigmoid's p and its complement.
        assert tta.shape == (16, 2) and tta.dtype == np.float32
        np.testing.assert_allclose(tta[:, 1], single[list(views)].mean(axis=0), atol=1e-5,
                                   err_msg=n)
        np.testing.assert_allclose(tta.sum(axis=1), 1, atol=1e-6)
    # A mean over a subgroup does not change when the tiles are turned by one of its views.
    all8 = tta_predictor(model, TTA_VIEWS[8])
    turned = predict_batches(all8, [view(tiles, 5)])
    np.testing.assert_allclose(turned, predict_batches(all8, [tiles]), atol=1e-5)


def test_the_kept_predictor_gives_the_same_numbers_and_is_traced_once(run, tiles):
    """The app predicts one upload at a time: each model keeps one graph per
    (views, image shape, dtype), traced once for every batch size."""
    import gc
    import weakref

    import keras

    from pcam.predict import tta

    model = load_fold_model(run.run_dir / "fold_0" / "best.keras")
    for views in (TTA_VIEWS[1], TTA_VIEWS[8]):
        kept = cached_tta_predictor(model, views, tiles.shape[1:], tiles.dtype)
        batches = [tiles[:1], tiles[1:6], tiles[6:]]  # three batch sizes
        np.testing.assert_allclose(predict_batches(kept, batches),
                                   predict_batches(tta_predictor(model, views), batches),
                                   atol=1e-6)
        # predict_tiles (the app, heat maps) finds the same graph and traces nothing new.
        for n in (1, 2, 7):
            predict_tiles([(model, None)], tiles[:n], views)
        assert cached_tta_predictor(model, views, tiles.shape[1:], "uint8") is kept
        assert kept.experimental_get_tracing_count() == 1
    assert cached_tta_predictor(model, (0,), (48, 48, 3)) is not cached_tta_predictor(
        model, (0,), (96, 96, 3))

    # A model dropped by its caller takes its graphs with it.
    small = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    cached_tta_predictor(small, (0,), (8, 8, 3))(np.zeros((2, 8, 8, 3), np.uint8))
    assert small in tta._PREDICTORS
    alive = weakref.ref(small)
    del small
    gc.collect()
    # Freed, so its entry is gone (counting the cache's entries would also count
    # models of earlier tests that this collection frees).
    assert alive() is None


def test_orientation_invariant_model_gives_the_same_answer_for_every_view(tiles):
    import keras

    # The mean colour of a tile does not change under any flip or rotation.
    model = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.layers[-1].set_weights([np.array([[0.02], [-0.03], [0.01]], np.float32),
                                  np.zeros(1, np.float32)])
    per_view = np.stack([predict_batches(tta_predictor(model, (k,)), [tiles]) for k in range(8)])
    assert np.ptp(per_view[0]) > 1e-3  # tiles differ, so mixing up tiles would show
    np.testing.assert_allclose(per_view, np.broadcast_to(per_view[0], per_view.shape), atol=1e-6)
    tta8 = predict_batches(tta_predictor(model, TTA_VIEWS[8]), [tiles[:3], tiles[3:]])
    np.testing.assert_allclose(tta8, per_view[0], atol=1e-6)


def test_fold_predictions_combine_by_mean_or_rank():
    a = np.array([0.1, 0.4, 0.35, 0.8])
    b = np.array([0.5, 0.6, 0.7, 0.9])
    np.testing.assert_allclose(combine([a, b], "mean"), (a + b) / 2)
    np.testing.assert_allclose(rank_normalise(a), [0, 2 / 3, 1 / 3, 1])
    np.testing.assert_allclose(rank_normalise([0.2, 0.2, 0.9]), [0.25, 0.25, 1])  # ties share
    # ranks of a: 0, 2/3, 1/3, 1; of b: 0, 1/3, 2/3, 1
    np.testing.assert_allclose(combine([a, b], "rank"), [0, 0.5, 0.5, 1])
    labels = [0, 1, 0, 1]
    assert auc(labels, combine([a], "rank")) == auc(labels, a)  # one fold: the same AUC


def test_folds_to_ensemble(run, tmp_path):
    assert parse_folds("all") == () and parse_folds("0,2") == (0, 2)
    with pytest.raises(Exception, match="expected 'all' or fold numbers"):
        parse_folds("first")
    assert resolve_folds(run.run_dir, run) == [0, 1]
    assert resolve_folds(run.run_dir, run, [1]) == [1]
    with pytest.raises(PcamError, match="--folds 5: run .* has folds 0 to 1"):
        resolve_folds(run.run_dir, run, [5])
    # A run whose fold 1 has not finished: asking for it says how to get it.
    half = tmp_path / "half"
    (half / "fold_0").mkdir(parents=True)
    (half / "fold_0" / "metrics.json").write_text("{}")
    (half / "fold_1").mkdir()
    assert resolve_folds(half, run) == [0]
    with pytest.raises(PcamError, match=r"fold\(s\) 1 of run .* not finished \(finished: 0\).*"
                                        r"--fold K.*or pass --folds 0"):
        resolve_folds(half, run, [1])


# --- end to end ---------------------------------------------------------------

def test_predict_script_end_to_end_with_answers(run, layout_cache, tmp_path):
    out = tmp_path / "subs" / "tiny.csv"
    answers = f"{layout_cache}.answers.csv"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"),
                           "--run", str(run.run_dir), "--out", str(out), "--answers", answers],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = validate_submission(out, layout_cache / "sample_submission.csv")
    assert list(frame["id"]) == list(sample_of(layout_cache)["id"])  # sample_submission's order
    assert frame["label"].nunique() > 50                            # real, varied predictions
    printed = re.search(r"AUC on .*: (\d\.\d{4}) \(100 of 100 tiles\)", done.stdout)
    assert printed, done.stdout
    truth = pd.read_csv(answers, dtype={"id": str}).set_index("id").loc[frame["id"], "label"]
    assert float(printed.group(1)) == pytest.approx(auc(truth, frame["label"]), abs=1e-4)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["folds"] == [0, 1] and record["tta"] == 8 and record["average"] == "mean"
    assert [m["path"] for m in record["model_files"]] == [
        str(run.run_dir / f"fold_{k}" / "best.keras") for k in (0, 1)]
    assert record["run_config"]["model"]["backbone"] == "simple-cnn"
    assert record["answers"]["auc"] == pytest.approx(float(printed.group(1)), abs=1e-4)
    assert leftovers(out.parent) == ["tiny.csv", "tiny.json"]


def test_run_of_another_image_size_and_precision(run, store, tmp_path):
    """A model that resizes to 48x48 inside itself and computes in bfloat16 loads and
    predicts like any other: raw 96x96 uint8 tiles in, float32 probabilities out."""
    import keras

    from pcam.models.registry import create_model

    other = dataclasses.replace(
        run, run="mixed", runs_dir=str(tmp_path / "runs"),
        model=dataclasses.replace(run.model, image_size=48),
        device=dataclasses.replace(run.device, precision="mixed_bfloat16"))
    fold = other.run_dir / "fold_0"
    fold.mkdir(parents=True)
    to_json(other, other.run_dir / "config.json")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        made = create_model("simple-cnn", image_size=48, tile_size=96, weights="none")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    made.save(fold / "best.keras")
    (fold / "metrics.json").write_text("{}")

    out = tmp_path / "mixed.csv"
    record = predict(PredictSettings(run=str(other.run_dir), tta=2, out=str(out)))
    loaded = load_fold_model(fold / "best.keras")
    conv = loaded.get_layer("backbone").get_layer("block1_conv")
    assert conv.dtype_policy.name == loaded.get_layer("head_dense").dtype_policy.name \
        == "mixed_bfloat16"
    frame = validate_submission(out, run.data.data_dir + "/sample_submission.csv")
    assert record["folds"] == [0] and record["views"] == ["identity", "flip left-right"]
    from pcam.data.pipeline import predict_dataset
    first = next(iter(predict_dataset(store, InputSettings(batch_size=8)))).numpy()
    direct = np.mean([loaded.predict(view(first, k), verbose=0).ravel()
                      for k in (0, 1)], axis=0)
    np.testing.assert_allclose(frame["label"][:8], direct, atol=1e-3)  # bfloat16 arithmetic


# --- bad input: one clear error, nothing written --------------------------------------------

def run_predict(capsys, *args) -> tuple[int, str]:
    """scripts/predict.py in this process: (exit status, stderr)."""
    from pcam.commands.predict import main

    with pytest.raises(SystemExit) as done:
        main(list(args))
    return done.value.code, capsys.readouterr().err


def test_run_with_no_finished_fold(run, tmp_path, capsys):
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)
    shutil.copy(run.run_dir / "config.json", empty / "config.json")
    out = tmp_path / "subs" / "empty.csv"
    status, err = run_predict(capsys, "--run", str(empty), "--out", str(out))
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert f"run {empty} has no finished fold" in err and "finish training first" in err
    assert leftovers(out.parent) == []
    status, err = run_predict(capsys, "--run", str(tmp_path / "nowhere"))
    assert status == 2 and "no run here (no config.json)" in err


def test_sample_submission_with_ids_missing_from_the_test_store(run, store, layout, tmp_path,
                                                                capsys):
    sample = sample_of(layout)
    extra = ["ab" * 20, "cd" * 20, "ef" * 20]
    longer = pd.concat([sample, pd.DataFrame({"id": extra, "label": "0"})])
    longer.to_csv(layout / "sample_submission.csv", index=False)
    # Predictions for the store's tiles checked against that sample: the ids are named.
    predicted = pd.DataFrame({"id": store.index()["id"], "label": 0.5})
    with pytest.raises(PcamError, match=f"3 id\\(s\\) of sample_submission.csv are missing: "
                                        f"{extra[0]}, {extra[1]}, {extra[2]}; 100 rows, "
                                        f"sample_submission.csv has 103"):
        validate_submission(predicted, layout / "sample_submission.csv")
    # Through the command: the ids without tiles are named before any model runs.
    out = tmp_path / "subs" / "x.csv"
    status, err = run_predict(capsys, "--run", str(run.run_dir), "--data-dir", str(layout),
                              "--store-dir", str(tmp_path / "store"), "--out", str(out))
    assert status == 2 and "3 id(s) have no tile" in err and extra[0] in err
    assert leftovers(out.parent) == []


def broken(sample: pd.DataFrame, case: str) -> pd.DataFrame:
    """A submission for ``sample`` with one kind of problem."""
    rng = np.random.default_rng(0)
    frame = sample.assign(label=rng.uniform(0, 1, len(sample)).round(4).astype(str))
    if case == "nan":
        frame.loc[[3, 7], "label"] = "nan"
    elif case == "header":
        frame = frame.rename(columns={"label": "prob"})
    elif case == "duplicate":
        frame.loc[5, "id"] = frame.loc[2, "id"]
    elif case == "range":
        frame.loc[4, "label"] = "1.5"
    elif case == "word":
        frame.loc[0, "label"] = "tumour"
    elif case == "short":
        frame = frame.iloc[:-2]
    return frame


def expected_error(case: str, sample: pd.DataFrame) -> str:
    ids = sample["id"]
    return {
        "nan": rf"2 label\(s\) are NaN or empty: row 5 \({ids[3]}: 'nan'\), row 9 \({ids[7]}",
        "header": "header is 'id,prob', expected exactly 'id,label'",
        "duplicate": rf"1 id\(s\) appear more than once: '{ids[2]}' \(rows 4, 7\); 1 id\(s\) of "
                     rf"sample_submission.csv are missing: {ids[5]}",
        "range": rf"1 label\(s\) are outside \[0, 1\]: row 6 \({ids[4]}: '1.5'\)",
        "word": rf"1 label\(s\) are not numbers: row 2 \({ids[0]}: 'tumour'\)",
        "short": rf"2 id\(s\) of sample_submission.csv are missing: {ids[98]}, {ids[99]}; "
                 r"98 rows, sample_submission.csv has 100",
    }[case]


@pytest.mark.parametrize("case", ["nan", "header", "duplicate", "range", "word", "short"])
def test_invalid_submission_is_named_and_never_written(case, layout_cache, tmp_path):
    sample_path = layout_cache / "sample_submission.csv"
    sample = sample_of(layout_cache)
    frame = broken(sample, case)
    csv = tmp_path / "given.csv"
    frame.to_csv(csv, index=False)
    with pytest.raises(PcamError, match=expected_error(case, sample)):
        validate_submission(csv, sample_path)                  # a file, as submit.py checks it
    out = tmp_path / "subs" / "never.csv"
    with pytest.raises(PcamError, match=expected_error(case, sample)):
        write_submission(frame, out, sample_path, {"run": "x"})  # a table, as predict writes it
    assert leftovers(out.parent) == []
    good = broken(sample, "none")
    assert len(write_submission(good, out, sample_path, {"run": "x"})) == 100
    assert leftovers(out.parent) == ["never.csv", "never.json"]


# --- submit ---------------------------------------------------------------------------------

def run_submit(capsys, *args) -> tuple[int, str, str]:
    from pcam.commands.submit import main

    with pytest.raises(SystemExit) as done:
        main(list(args))
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def test_submit_checks_the_file_then_uploads_it(fake_kaggle, layout_cache, tmp_path, capsys):
    from pcam.kaggle.api import submit_command

    fake_kaggle.add_competition("pcam-fake", b"")
    csv = tmp_path / "good.csv"
    broken(sample_of(layout_cache), "none").to_csv(csv, index=False)
    status, out, err = run_submit(capsys, str(csv), "-m", "2 folds x 8 TTA",
                                  "--competition", "pcam-fake", "--data-dir", str(layout_cache))
    assert status == 0, err
    assert f"{csv}: valid (100 rows" in out
    assert submit_command(csv, "2 folds x 8 TTA", "pcam-fake") in out
    assert "Successfully submitted to Fake Competition" in out
    [made] = fake_kaggle.submissions
    assert made["bytes"] == csv.read_bytes() and made["description"] == "2 folds x 8 TTA"


@pytest.mark.parametrize("case", ["nan", "duplicate"])
def test_submit_refuses_an_invalid_file_before_any_upload(case, fake_kaggle, layout_cache,
                                                          tmp_path, capsys):
    fake_kaggle.add_competition("pcam-fake", b"")
    csv = tmp_path / "bad.csv"
    sample = sample_of(layout_cache)
    broken(sample, case).to_csv(csv, index=False)
    status, out, err = run_submit(capsys, str(csv), "-m", "m", "--competition", "pcam-fake",
                                  "--data-dir", str(layout_cache))
    assert status == 2 and err.startswith(f"error: {csv} is not a valid submission")
    assert re.search(expected_error(case, sample), err)
    assert fake_kaggle.requests == [] and fake_kaggle.submissions == []
    status, _, err = run_submit(capsys, str(csv), "-m", "m", "--data-dir", str(tmp_path))
    assert status == 2 and "sample_submission.csv not found; pass --data-dir" in err
