"""Training on tiny real slices: files of a run, resume, phases, strategies, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from pcam.errors import PcamError
from pcam.settings import (AugmentSettings, DataSettings, FoldSettings, InputSettings,
                           ModelSettings, RunSettings, TrainSettings)
from pcam.train.training import run_cv


def tiny(layout, tmp_path, **changes) -> RunSettings:
    """Two folds of the compact CNN, one epoch per phase, on the 300-tile layout."""
    settings = RunSettings(
        run="tiny", runs_dir=str(tmp_path / "runs"),
        data=DataSettings(data_dir=str(layout), store_dir=str(tmp_path / "store")),
        folds=FoldSettings(folds=2, seed=0),
        inputs=InputSettings(batch_size=32),
        model=ModelSettings(backbone="simple-cnn", weights="none"),
        train=TrainSettings(epochs_frozen=1, epochs_finetune=1))
    return settings if not changes else _replace(settings, **changes)


def _replace(settings, **changes):
    import dataclasses
    return dataclasses.replace(settings, **changes)


@pytest.fixture(scope="module")
def finished_run(layout_cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    settings = tiny(layout_cache, tmp)
    summary = run_cv(settings)
    return settings, summary


def test_a_run_writes_every_file_and_a_cv_summary(finished_run):
    settings, summary = finished_run
    run = settings.run_dir
    assert json.loads((run / "config.json").read_text())["model"]["backbone"] == "simple-cnn"
    folds = pd.read_csv(run / "folds.csv")
    assert len(folds) == 300 and sorted(folds["fold"].unique()) == [0, 1]
    oofs = []
    for k in (0, 1):
        fold = run / f"fold_{k}"
        for name in ("best.keras", "history_frozen.csv", "history_finetune.csv", "oof.csv",
                     "metrics.json"):
            assert (fold / name).is_file(), name
        history = pd.read_csv(fold / "history_frozen.csv")
        assert {"auc", "val_auc", "loss", "val_loss"} <= set(history.columns)
        oofs.append(pd.read_csv(fold / "oof.csv"))
    oof = pd.concat(oofs)
    assert sorted(oof["id"]) == sorted(folds["id"])           # every tile predicted once
    assert oof["prob"].between(0, 1).all()
    cv = json.loads((run / "cv.json").read_text())
    assert cv == json.loads(json.dumps(summary))
    assert cv["oof"]["n"] == 300 and set(cv["folds"]) == {"0", "1"}
    assert 0 <= cv["auc_mean"] <= 1


def test_best_model_loads_and_predicts_raw_tiles(finished_run, layout_cache):
    import keras
    import tifffile

    settings, _ = finished_run
    model = keras.models.load_model(settings.run_dir / "fold_0" / "best.keras")
    oof = pd.read_csv(settings.run_dir / "fold_0" / "oof.csv")
    tiles = np.stack([tifffile.imread(layout_cache / "train" / f"{i}.tif") for i in oof["id"][:8]])
    # The out-of-fold predictions average the 8 flips and rotations (oof_tta),
    # as predict.py does by default.
    views = [np.rot90(t, k, axes=(1, 2)) for t in (tiles, tiles[:, :, ::-1]) for k in range(4)]
    probs = np.mean([model.predict(np.ascontiguousarray(v), verbose=0).ravel() for v in views],
                    axis=0)
    np.testing.assert_allclose(probs, oof["prob"][:8], atol=1e-4)
    assert not np.allclose(model.predict(tiles, verbose=0).ravel(), oof["prob"][:8], atol=1e-4)


def test_rerun_skips_finished_folds(finished_run, capsys):
    settings, summary = finished_run
    stamp = (settings.run_dir / "fold_0" / "best.keras").stat().st_mtime_ns
    again = run_cv(settings)
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 2
    assert (settings.run_dir / "fold_0" / "best.keras").stat().st_mtime_ns == stamp
    assert again == summary


def test_interrupted_fold_resumes_from_its_last_phase(layout_cache, tmp_path, capsys):
    settings = tiny(layout_cache, tmp_path, fold=0)
    run_cv(settings)
    fold = settings.run_dir / "fold_0"
    # Undo the end of the fold as a kill during phase 2 would leave it.
    for name in ("metrics.json", "oof.csv", "finetune.done"):
        (fold / name).unlink()
    frozen = (fold / "history_frozen.csv").read_text()
    capsys.readouterr()
    run_cv(settings)
    out = capsys.readouterr().out
    assert "phase frozen" not in out and "phase finetune" in out
    assert (fold / "history_frozen.csv").read_text() == frozen
    assert (fold / "metrics.json").is_file()
    assert "1 of 2 folds finished" in out


@pytest.mark.parametrize("changes, message", [
    (dict(fold=7), "--fold 7: folds are numbered 0 to 1"),
    (dict(folds=FoldSettings(folds=1)), "--folds 1: need at least 2"),
])
def test_bad_fold_choices(layout_cache, tmp_path, changes, message):
    with pytest.raises(PcamError, match=message):
        run_cv(tiny(layout_cache, tmp_path, **changes))


def test_run_with_other_settings_is_refused_and_kept(finished_run):
    settings, _ = finished_run
    config = (settings.run_dir / "config.json").read_text()
    other = _replace(settings, model=ModelSettings(backbone="simple-cnn", weights="none",
                                                   dropout=0.1))
    with pytest.raises(PcamError, match="model.dropout"):
        run_cv(other)
    assert (settings.run_dir / "config.json").read_text() == config


def run_script(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_unknown_backbone_lists_the_valid_ones(layout_cache, tmp_path):
    result = run_script("--data-dir", str(layout_cache), "--store-dir", str(tmp_path / "s"),
                        "--runs-dir", str(tmp_path / "runs"), "--backbone", "resnet51")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "resnet51" in error[0] and "resnet50" in error[0] \
        and "simple-cnn" in error[0]


def test_unwritable_run_directory(layout_cache, tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs folder should be")
    result = run_script("--data-dir", str(layout_cache), "--runs-dir", str(blocker),
                        "--run", "x", "--backbone", "simple-cnn", "--weights", "none")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot write" in result.stderr and "--runs-dir" in result.stderr
    assert blocker.read_text() == "a file where the runs folder should be"


MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pcam.commands.train import main
main(sys.argv[1:])
"""


def test_mirrored_strategy_over_two_cpu_devices_trains_a_fold(layout_cache, tmp_path):
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, "--data-dir", str(layout_cache),
         "--store-dir", str(tmp_path / "store"), "--runs-dir", str(runs), "--run", "m",
         "--folds", "2", "--fold", "0", "--backbone", "simple-cnn", "--weights", "none",
         "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "16",
         "--strategy", "mirrored"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 replica(s), global batch 32" in result.stdout
    assert (runs / "m" / "fold_0" / "best.keras").is_file()
    assert (runs / "m" / "fold_0" / "metrics.json").is_file()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_workers(args: list[str], timeout=600) -> list[tuple[int, str, str]]:
    """Run ``args`` as the two workers of a cluster on 127.0.0.1 (TF_CONFIG);
    (exit status, stdout, stderr) of each."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    workers = []
    for index in (0, 1):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    outputs = [w.communicate(timeout=timeout) for w in workers]
    return [(w.returncode, out, err) for w, (out, err) in zip(workers, outputs)]


def test_multi_worker_strategy_two_processes_chief_writes_the_run(layout_cache, tmp_path):
    """Keras 3 needs pcam.train.distribute.fix_keras_multi_worker for this (keras-team/keras#20585)."""
    from pcam.data.store import prepare

    store_dir = tmp_path / "store"
    runs = tmp_path / "runs"
    args = [sys.executable, str(REPO / "scripts" / "train.py"), "--data-dir", str(layout_cache),
            "--store-dir", str(store_dir), "--runs-dir", str(runs), "--run", "mw",
            "--folds", "2", "--fold", "1", "--backbone", "simple-cnn", "--weights", "none",
            "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "16",
            "--strategy", "multiworker"]
    # Workers do not build the store (they would all build it at once): it must exist.
    for status, _, err in two_workers(args):
        assert status == 2 and "scripts/prepare.py" in err.splitlines()[-1], err[-2000:]

    # Several shards, so that a streamed store could be split by files too.
    prepare(DataSettings(data_dir=str(layout_cache), store_dir=str(store_dir), shard_tiles=64),
            splits=("train",), quiet=True)
    (chief, out, err), (other, _, other_err) = two_workers(args)
    assert chief == 0, err[-3000:]
    assert other == 0, other_err[-3000:]
    assert "2 replica(s), global batch 32" in out
    fold = runs / "mw" / "fold_1"
    assert (fold / "best.keras").is_file() and (fold / "metrics.json").is_file()
    history = pd.read_csv(fold / "history_finetune.csv")
    assert history["val_auc"].between(0, 1).all()
    oof = pd.read_csv(fold / "oof.csv", dtype={"id": str})
    folds = pd.read_csv(runs / "mw" / "folds.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(folds.loc[folds["fold"] == 1, "id"])  # all of it, once
    assert sorted(p.name for p in (runs / "mw").iterdir()) == [
        ".pcam.lock", "config.json", "config.toml", "fold_1", "folds.csv"]  # lock: pcam.locks


def test_resnet50_two_phases_counts_batchnorm_and_hand_over(layout_cache, tmp_path):
    """ResNet50 from a local weights file (so it counts as pretrained), 32 px:
    phase 1 trains only the head, phase 2 the backbone too with every
    BatchNorm frozen, and phase 2 starts from phase 1's best weights."""
    import keras

    from pcam.data.folds import load_or_assign
    from pcam.data.store import prepare
    from pcam.models.registry import create_model
    from pcam.train import distribute
    from pcam.train.training import run_fold

    weights = tmp_path / "resnet50.weights.h5"
    create_model("resnet50", image_size=32, weights="none").get_layer("backbone") \
        .save_weights(weights)
    settings = tiny(layout_cache, tmp_path, fold=0,
                    model=ModelSettings(backbone="resnet50", image_size=32, weights=str(weights)),
                    folds=FoldSettings(folds=2, max_tiles=96), inputs=InputSettings(batch_size=16))
    store = prepare(settings.data, splits=("train",), quiet=True)["train"]
    settings.run_dir.mkdir(parents=True)
    folds = load_or_assign(settings.run_dir / "folds.csv", store.index(), settings.folds)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            backbone = self.model.get_layer("backbone")
            norms = [layer for layer in backbone.layers
                     if isinstance(layer, keras.layers.BatchNormalization)]
            best = settings.run_dir / "fold_0" / "best.keras"
            seen.append({
                "trainable": sum(int(np.prod(w.shape)) for w in self.model.trainable_weights),
                "backbone_trainable": sum(int(np.prod(w.shape)) for w in backbone.trainable_weights),
                "bn_trainable": sum(layer.trainable for layer in norms),
                "bn_count": len(norms),
                "same_as_best": best.is_file() and all(
                    np.array_equal(a, b) for a, b in zip(
                        self.model.get_weights(), keras.models.load_model(best).get_weights())),
            })

    run_fold(settings, 0, store, folds, distribute.make_strategy("auto"), callbacks=[Spy()])
    frozen, finetune = seen
    head = frozen["trainable"]
    assert frozen["backbone_trainable"] == 0 and 0 < head < 1_000_000
    # ResNet50's conv and dense kernels and biases, BatchNorm's gamma/beta excluded
    assert finetune["backbone_trainable"] > 23_000_000
    assert finetune["trainable"] == head + finetune["backbone_trainable"]
    assert finetune["bn_count"] == 53 and finetune["bn_trainable"] == 0
    assert frozen["same_as_best"] is False and finetune["same_as_best"] is True


@pytest.mark.parametrize("model, message", [
    (ModelSettings(backbone="resnet51", weights="none"), "unknown backbone"),
    (ModelSettings(backbone="simple-cnn", weights="none", image_size=4), "too small"),
    (ModelSettings(backbone="simple-cnn", weights="missing.weights.h5"), "not found"),
])
def test_a_refused_command_does_not_tie_its_run_name(layout_cache, tmp_path, model, message):
    """Checks come before config.json and folds.csv are written, and a run with
    no finished epoch takes the corrected command's settings."""
    refused = tiny(layout_cache, tmp_path, fold=0, report=False, model=model)
    with pytest.raises(PcamError, match=message):
        run_cv(refused)
    assert not (refused.run_dir / "config.json").exists()
    assert not (refused.run_dir / "folds.csv").exists()
    # A run stopped before its first epoch ended, under other settings:
    stopped = tiny(layout_cache, tmp_path, fold=0, report=False,
                   folds=FoldSettings(folds=3, seed=1))
    from pcam.settings import to_json
    refused.run_dir.mkdir(parents=True, exist_ok=True)
    to_json(stopped, refused.run_dir / "config.json")
    corrected = tiny(layout_cache, tmp_path, fold=0, report=False,
                     train=TrainSettings(epochs_frozen=0, epochs_finetune=1))
    run_cv(corrected)
    assert json.loads((corrected.run_dir / "config.json").read_text())["folds"]["folds"] == 2
    assert pd.read_csv(corrected.run_dir / "folds.csv")["fold"].max() == 1
    assert (corrected.run_dir / "fold_0" / "metrics.json").is_file()


def test_image_size_zero_resolves_to_the_recipe_size_in_config(finished_run):
    """The GPU recipe's input size is decided once, from the store's tile size,
    and kept in config.json: 96 px tiles are seen at 192 by an ImageNet
    ResNet50, at their own size by a backbone from random weights."""
    from pcam.data.store import open_store
    from pcam.train.training import resolve

    settings, _ = finished_run
    store = open_store(Path(settings.data.store_dir) / "train")
    assert store.tile_size == 96
    gpu = resolve(_replace(settings, model=ModelSettings()), store)   # resnet50, imagenet
    assert gpu.model.image_size == 192
    cropped = resolve(_replace(settings, model=ModelSettings(),
                               augment=AugmentSettings(centre_crop=64)), store)
    assert cropped.model.image_size == 128
    assert resolve(settings, store).model.image_size == 96
    assert json.loads((settings.run_dir / "config.json").read_text())["model"]["image_size"] == 96


def test_a_run_started_before_a_setting_existed_resumes_and_a_changed_one_is_refused(tmp_path):
    from pcam.settings import ModelSettings, RunSettings, to_dict
    from pcam.train.training import _refuse_changes

    settings = RunSettings(run="r", runs_dir=str(tmp_path))
    saved = to_dict(settings)
    del saved["train"]["oof_tta"]  # a config.json written before --oof-tta existed
    _refuse_changes(settings, saved, tmp_path)
    changed = RunSettings(run="r", runs_dir=str(tmp_path), model=ModelSettings(dropout=0.3))
    with pytest.raises(PcamError, match=r"other settings \(model\.dropout\)"):
        _refuse_changes(changed, saved, tmp_path)
