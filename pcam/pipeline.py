"""tf.data datasets for training, evaluation and prediction, read from a store.

    shards ─▶ parse ─▶ select the fold's tiles ─▶ (RAM cache) ─▶ shuffle ─▶ batch
           ─▶ augment (whole batches, seeded) ─▶ prefetch

Tiles stay uint8 until an op needs floats; the model casts and preprocesses
them itself, so no float32 copy of the data set is ever made (the train set
is 6.1 GB as uint8, 24 GB as float32).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import tensorflow as tf

from pcam.augment import compose, eval_ops, train_ops
from pcam.errors import PcamError
from pcam.settings import AugmentSettings, InputSettings
from pcam.store import Store

AUTOTUNE = tf.data.AUTOTUNE
_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "id": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "index": tf.io.FixedLenFeature([], tf.int64),
}


def parse(records, shape=(96, 96, 3)):
    """A batch of serialized store records -> dict of image (uint8 NxHxWx3), id, label, index.

    Parsing whole batches is ~3x faster than one record at a time.
    """
    example = tf.io.parse_example(records, _FEATURES)
    example["image"] = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), (-1, *shape))
    return example


def records(store: Store, indices=None, worker=(0, 1)) -> tf.data.Dataset:
    """Parsed records of ``store`` in store order, only those at ``indices`` if given.

    ``worker=(index, count)``: in a multi-worker run each worker reads every
    count-th shard file, starting at its index, so no tile is read twice.
    """
    index, count = worker
    if count > len(store.shards):
        raise PcamError(f"{store.path} has {len(store.shards)} shard file(s) for {count} workers; "
                        "rebuild the store with a smaller --shard-tiles")
    files = tf.data.Dataset.from_tensor_slices([str(p) for p in store.shards[index::count]])
    shape = tuple(store.manifest["tile_shape"])
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=1)  # keeps store order
    ds = ds.batch(256).map(lambda r: parse(r, shape), num_parallel_calls=AUTOTUNE)
    if indices is not None:
        keep = np.zeros(store.n_tiles, bool)
        keep[np.asarray(indices, np.int64)] = True
        keep = tf.constant(keep)
        ds = ds.map(lambda ex: {k: tf.boolean_mask(v, tf.gather(keep, ex["index"]))
                                for k, v in ex.items()})
    return ds.unbatch()


def _fits_in_ram(nbytes: int) -> bool:
    """True when ``nbytes`` is under half of the memory available now."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every platform
        return False
    return nbytes < available / 2


def _should_cache(store: Store, n_tiles: int, mode: str) -> bool:
    per_tile = int(np.prod(store.manifest["tile_shape"]))
    return mode == "yes" or (mode == "auto" and _fits_in_ram(n_tiles * per_tile))


def _compiled(op):
    """``op`` as a graph function, fused by XLA where every op allows it (see
    ``pcam.augment``: 45x faster for the dihedral op on a CPU)."""
    return tf.function(op, jit_compile=op.xla)


def _options() -> tf.data.Options:
    """Deterministic order, and no automatic sharding: training splits the
    shard files between workers itself (``records``); evaluation and
    prediction read everything on every worker, so each holds every prediction."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def train_dataset(store: Store, indices, inputs: InputSettings = InputSettings(),
                  augment: AugmentSettings = AugmentSettings(), *, seed: int = 0,
                  balance: str = "weights", worker=(0, 1)) -> tf.data.Dataset:
    """Shuffled, augmented ``(images, labels)`` batches of the tiles at ``indices``.

    One pass over the dataset is one epoch. ``balance="resample"`` draws both
    classes equally (an epoch still has ``len(indices)`` tiles) instead of
    relying on loss weights. Same seed, same batches. ``worker``: see ``records``.
    """
    indices = np.asarray(indices, np.int64)
    cache = _should_cache(store, len(indices), inputs.cache)

    def prepared(ds):
        ds = ds.map(lambda ex: (ex["image"], ex["label"]))
        ds = ds.cache() if cache else ds
        return ds.shuffle(inputs.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    base = records(store, indices, worker)
    if balance == "resample":
        parts = [prepared(base.filter(lambda ex, c=c: tf.equal(ex["label"], c))).repeat()
                 for c in (0, 1)]
        ds = tf.data.Dataset.sample_from_datasets(parts, [0.5, 0.5], seed=seed,
                                                  rerandomize_each_iteration=True)
        ds = ds.take(len(indices))
    else:
        ds = prepared(base)
    ds = ds.batch(inputs.batch_size, drop_remainder=len(indices) >= inputs.batch_size,
                  num_parallel_calls=AUTOTUNE)
    op = _compiled(compose(train_ops(augment)))
    seeds = tf.data.Dataset.random(seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        lambda batch, s: (op(batch[0], s), tf.cast(batch[1], tf.float32)),
        num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def eval_dataset(store: Store, indices=None, inputs: InputSettings = InputSettings(),
                 augment: AugmentSettings = AugmentSettings()) -> tf.data.Dataset:
    """``(images, labels)`` batches of the tiles at ``indices`` (all when None), in
    store order, not shuffled, with only the deterministic ops of training."""
    n = store.n_tiles if indices is None else len(indices)
    ds = records(store, indices).map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.float32)))
    ds = ds.cache() if _should_cache(store, n, inputs.cache) else ds
    op = compose(eval_ops(augment))
    ds = ds.batch(inputs.batch_size).map(lambda x, y: (op(x, None), y), num_parallel_calls=AUTOTUNE)
    return _known_length(ds, n, inputs.batch_size).prefetch(AUTOTUNE).with_options(_options())


def predict_dataset(store: Store, inputs: InputSettings = InputSettings(),
                    augment: AugmentSettings = AugmentSettings()) -> tf.data.Dataset:
    """Image batches of the whole store in store order (ids: ``store.index()``)."""
    op = compose(eval_ops(augment))
    ds = records(store).map(lambda ex: ex["image"]).batch(inputs.batch_size)
    ds = ds.map(lambda x: op(x, None), num_parallel_calls=AUTOTUNE)
    return _known_length(ds, store.n_tiles, inputs.batch_size).prefetch(AUTOTUNE) \
        .with_options(_options())


def _known_length(ds, n_tiles: int, batch_size: int):
    """Tell tf.data (and so Keras' progress bars) how many batches there are;
    filtering makes the count unknowable to tf.data itself."""
    return ds.apply(tf.data.experimental.assert_cardinality(-(-n_tiles // batch_size)))


def read_tiles(store: Store, ids) -> np.ndarray:
    """The tiles with these ``ids`` as a uint8 array, in the order given.

    For a few tiles (galleries, explanations): it reads the whole store once,
    keeping only the tiles asked for. An id the store lacks is a PcamError.
    """
    ids = [str(i) for i in ids]
    position = pd.Series(np.arange(store.n_tiles), index=store.index()["id"])
    missing = [i for i in ids if i not in position.index]
    if missing:
        raise PcamError(f"{len(missing)} id(s) not in the tile store {store.path}: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    wanted = position[ids].to_numpy()
    shape = tuple(store.manifest["tile_shape"])
    if not ids:
        return np.zeros((0, *shape), np.uint8)
    found = {int(ex["index"]): ex["image"].numpy()
             for ex in records(store, np.unique(wanted))}
    return np.stack([found[int(p)] for p in wanted])
