"""The tf.data pipelines on a real store: selection, order, determinism, balance."""
import gc
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from pcam.data import pipeline
from pcam.data.folds import assign_folds, class_weights, load_or_assign, subset
from pcam.data.pipeline import eval_dataset, predict_dataset, read_tiles, train_dataset
from pcam.data.store import prepare
from pcam.errors import PcamError
from pcam.settings import AugmentSettings, DataSettings, FoldSettings, InputSettings


@pytest.fixture(scope="module")
def stores(layout_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    return prepare(DataSettings(data_dir=str(layout_cache), store_dir=str(out), shard_tiles=64),
                   quiet=True)


# Tiles exactly as stored (the defaults jitter colour and stain).
NO_AUGMENT = AugmentSettings(dihedral=False, brightness=0, contrast=0, saturation=0, hue=0,
                             stain=0)


def batches(ds):
    return [(np.asarray(x), np.asarray(y)) for x, y in ds]


def test_train_dataset_yields_the_fold_tiles_once_per_epoch(stores):
    store = stores["train"]
    index = store.index()
    chosen = np.arange(0, store.n_tiles, 3)
    inputs = InputSettings(batch_size=25)
    data = batches(train_dataset(store, chosen, inputs, NO_AUGMENT, seed=1))
    images = np.concatenate([x for x, _ in data])
    labels = np.concatenate([y for _, y in data])
    assert images.dtype == np.uint8 and images.shape[1:] == (96, 96, 3)
    assert len(images) == len(chosen) // 25 * 25       # whole batches only
    assert labels.dtype == np.float32
    # every tile is one of the chosen ones, each at most once, with its own label
    reference = {np.asarray(x).tobytes(): y for x, y in eval_dataset(store, chosen).unbatch()}
    keys = [im.tobytes() for im in images]
    assert len(set(keys)) == len(keys)
    assert all(reference[k] == y for k, y in zip(keys, labels))
    assert sorted(labels) != list(labels)               # shuffled
    assert labels.sum() <= index["label"].to_numpy()[chosen].sum()


def test_same_seed_same_batches_other_seed_other_batches(stores):
    store = stores["train"]
    ids = np.arange(store.n_tiles)
    a = batches(train_dataset(store, ids, InputSettings(batch_size=50), seed=5))
    b = batches(train_dataset(store, ids, InputSettings(batch_size=50), seed=5))
    c = batches(train_dataset(store, ids, InputSettings(batch_size=50), seed=6))
    assert all(np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not np.array_equal(a[0][0], c[0][0])


def test_epochs_differ_but_cover_the_same_tiles(stores):
    store = stores["train"]
    ds = train_dataset(store, np.arange(store.n_tiles), InputSettings(batch_size=100, cache="yes"),
                       NO_AUGMENT, seed=2)
    first, second = batches(ds), batches(ds)
    assert not np.array_equal(first[0][0], second[0][0])
    def key(data):
        return sorted(x.tobytes() for b, _ in data for x in b)

    assert key(first) == key(second)


def test_resample_balances_classes(stores):
    store = stores["train"]
    index = store.index()
    # a set with 4x more negatives than positives
    neg = np.flatnonzero(index["label"] == 0)
    pos = np.flatnonzero(index["label"] == 1)[: len(neg) // 4]
    chosen = np.concatenate([neg, pos])
    labels = np.concatenate([y for _, y in batches(
        train_dataset(store, chosen, InputSettings(batch_size=10), seed=0, balance="resample"))])
    assert len(labels) == len(chosen) // 10 * 10
    assert 0.4 < labels.mean() < 0.6


def test_eval_and_predict_keep_store_order(stores):
    test = stores["test"]
    predicted = np.concatenate([np.asarray(x) for x in predict_dataset(test, InputSettings(batch_size=32))])
    assert len(predicted) == test.n_tiles == 100
    evaluated = np.concatenate([x for x, _ in batches(eval_dataset(test, None, InputSettings(batch_size=32)))])
    np.testing.assert_array_equal(predicted, evaluated)
    cropped = next(iter(predict_dataset(test, InputSettings(batch_size=8), AugmentSettings(centre_crop=32))))
    np.testing.assert_array_equal(cropped, predicted[:8, 32:64, 32:64])


def test_read_tiles_returns_the_source_tiles_in_the_order_asked(stores, layout_cache):
    import tifffile
    ids = list(stores["train"].index()["id"].iloc[[40, 3, 40, 150]])
    tiles = read_tiles(stores["train"], ids)
    expected = [tifffile.imread(layout_cache / "train" / f"{i}.tif") for i in ids]
    np.testing.assert_array_equal(tiles, np.stack(expected))
    with pytest.raises(PcamError, match="not-an-id"):
        read_tiles(stores["train"], [ids[0], "not-an-id"])


def test_folds_are_stratified_saved_and_reused(stores, tmp_path):
    index = stores["train"].index()
    settings = FoldSettings(folds=3, seed=0)
    folds = load_or_assign(tmp_path / "folds.csv", index, settings)
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    rates = folds.groupby("fold")["label"].mean()
    assert rates.max() - rates.min() < 0.02
    again = load_or_assign(tmp_path / "folds.csv", index, FoldSettings(folds=3, seed=99))
    pd.testing.assert_frame_equal(folds, again)           # reused, not redrawn
    with pytest.raises(PcamError, match="3 folds"):
        load_or_assign(tmp_path / "folds.csv", index, FoldSettings(folds=5))
    relabelled = index.assign(label=index["label"].where(index.index != 7, 1 - index["label"]))
    with pytest.raises(PcamError, match=f"1 tile.*labelled otherwise.*{index['id'][7]}"):
        load_or_assign(tmp_path / "folds.csv", relabelled, settings)
    with pytest.raises(PcamError, match="not in the store"):
        load_or_assign(tmp_path / "folds.csv", index.iloc[1:], settings)


def test_grouped_folds_keep_each_slide_in_one_fold(stores, tmp_path):
    index = stores["train"].index()
    slides = pd.DataFrame({"id": index["id"], "wsi": [f"slide{i % 20}" for i in range(len(index))]})
    slides.to_csv(tmp_path / "groups.csv", index=False)
    folds = assign_folds(index, FoldSettings(folds=4, groups=str(tmp_path / "groups.csv")))
    per_slide = folds.assign(wsi=slides["wsi"]).groupby("wsi")["fold"].nunique()
    assert (per_slide == 1).all()
    # Saved by pandas with its index (an unnamed column of row numbers first),
    # columns in another order: the wsi column is still the one read.
    slides[["wsi", "id"]].to_csv(tmp_path / "indexed.csv")
    again = assign_folds(index, FoldSettings(folds=4, groups=str(tmp_path / "indexed.csv")))
    pd.testing.assert_frame_equal(folds, again)
    slides.iloc[1:].to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(PcamError, match="no group"):
        assign_folds(index, FoldSettings(folds=4, groups=str(tmp_path / "partial.csv")))


def test_bad_fold_settings_are_refused(stores):
    index = stores["train"].index()
    with pytest.raises(PcamError, match="at least 2"):
        assign_folds(index, FoldSettings(folds=1))
    with pytest.raises(PcamError, match="too small"):
        subset(index, 3, 0)


def test_subset_is_stratified_and_class_weights_balance():
    index = pd.DataFrame({"id": [str(i) for i in range(1000)], "label": [0] * 800 + [1] * 200})
    small = subset(index, 100, seed=0)
    assert len(small) == 100 and small["label"].sum() == 20
    weights = class_weights(index["label"])
    assert weights == {0: 1000 / 1600, 1: 1000 / 400}
    assert weights[0] * 800 == pytest.approx(weights[1] * 200)


@pytest.fixture(scope="module")
def skipped(layout_cache, tmp_path_factory):
    """A store built with --skip-bad from a layout whose 5th tile is unreadable,
    in 64-tile shards: from there on, a tile's store position is one less than
    its place in the source listing."""
    layout = tmp_path_factory.mktemp("skip-bad") / "comp"
    shutil.copytree(layout_cache, layout)
    bad = pd.read_csv(layout / "train_labels.csv", dtype=str)["id"].iloc[4]
    (layout / "train" / f"{bad}.tif").write_text("not an image")
    settings = DataSettings(data_dir=str(layout), shard_tiles=64, skip_bad=True)
    return prepare(settings, splits=("train",), quiet=True)["train"], layout


@pytest.mark.parametrize("cache", ["yes", "no"])
def test_positions_name_the_same_tiles_after_skip_bad(skipped, cache):
    store, layout = skipped
    assert store.n_tiles == 299
    index = store.index()
    chosen = np.array([0, 3, 4, 5, 62, 63, 64, 200, store.n_tiles - 1])
    expected = np.stack([tifffile.imread(layout / "train" / f"{i}.tif")
                         for i in index["id"].iloc[chosen]])
    inputs = InputSettings(batch_size=len(chosen), cache=cache)
    images, labels = next(iter(eval_dataset(store, chosen, inputs)))
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, index["label"].iloc[chosen])
    trained = batches(train_dataset(store, chosen, InputSettings(batch_size=1, cache=cache),
                                    NO_AUGMENT))
    assert sorted(x.tobytes() for x, _ in trained) == sorted(e.tobytes() for e in expected)
    np.testing.assert_array_equal(read_tiles(store, index["id"].iloc[chosen]), expected)


def test_ram_tiles_are_shared_kept_alive_by_their_datasets_then_freed(stores):
    store = stores["train"]
    inputs = InputSettings(batch_size=30, cache="yes")
    train = train_dataset(store, np.arange(0, 300, 2), inputs, seed=0)
    val = eval_dataset(store, np.arange(1, 300, 2), inputs)
    ram = pipeline.ram_tiles(store)
    assert ram.tiles.shape == (store.n_tiles, 96, 96, 3) and ram.tiles.dtype == "uint8"
    assert pipeline.ram_tiles(store) is ram               # one copy for both datasets
    del ram
    gc.collect()
    assert sum(len(x) for x, _ in batches(train)) == 150  # still readable
    assert sum(len(x) for x, _ in batches(val)) == 150
    del train, val
    gc.collect()
    assert pipeline._key(store) not in pipeline._LOADED   # freed with its last dataset


def test_resample_needs_both_classes(stores):
    store = stores["train"]
    negatives = np.flatnonzero(store.index()["label"] == 0)
    with pytest.raises(PcamError, match="every class"):
        train_dataset(store, negatives, balance="resample")
