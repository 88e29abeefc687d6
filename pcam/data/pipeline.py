"""tf.data datasets for training, evaluation and prediction, read from a store.

Training and evaluation read the store in one of two ways (``InputSettings.cache``):

* **In RAM**, when the store fits (the default on a machine with the memory):
  every tile once, in one uint8 ``tf.Variable`` on the CPU (``ram_tiles``),
  shared by the training and validation datasets of every fold. An epoch is
  a full shuffle of the fold's row numbers; each batch is one gather::

      rows ─▶ shuffle ─▶ batch ─▶ gather tiles + labels ─▶ augment (whole batches, seeded) ─▶ prefetch

* **Streamed** from the shard files, with a shuffle buffer::

      shards ─▶ parse ─▶ select the fold's tiles ─▶ shuffle ─▶ batch ─▶ augment ─▶ prefetch

Tiles stay uint8 until an op needs floats; the model casts and preprocesses
them itself, so no float32 copy of the data set is ever made (the train set
is 6.1 GB as uint8, 24 GB as float32). Prediction always streams: it reads
each test tile once per fold.
"""
from __future__ import annotations

import ctypes
import os
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from pcam.data.augment import compose, eval_ops, train_ops
from pcam.data.store import Store, check_shards
from pcam.errors import PcamError
from pcam.settings import AugmentSettings, InputSettings
from pcam.task import encode_labels

AUTOTUNE = tf.data.AUTOTUNE
RECORD_BATCH = 256  # records parsed per call: parsing whole batches is ~3x faster than one by one
_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "id": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "index": tf.io.FixedLenFeature([], tf.int64),
}


def parse(records, shape):
    """A batch of serialized store records -> dict of image (uint8 NxHxWx3), id, label, index.

    Parsing whole batches is ~3x faster than one record at a time.
    """
    example = tf.io.parse_example(records, _FEATURES)
    example["image"] = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), (-1, *shape))
    return example


def worker_shards(store: Store, worker=(0, 1)) -> list[int]:
    """The shard files one worker of a multi-worker run reads: every count-th,
    starting at its index, so that no tile is read twice."""
    index, count = worker
    if count > len(store.shards):
        raise PcamError(f"{store.path} has {len(store.shards)} shard file(s) for {count} workers; "
                        "rebuild the store with a smaller --shard-tiles")
    return list(range(index, len(store.shards), count))


def record_batches(store: Store, shards=None) -> tf.data.Dataset:
    """Batches of parsed records (image, id, label, index, position) in store
    order, from the shard files numbered ``shards`` (default: all).

    ``position`` is the tile's row in ``store.index()``: its place in the stream
    of shard files. The ``index`` feature numbers the source listing instead,
    which differs once ``--skip-bad`` has left tiles out.
    """
    check_shards(store)  # a shard deleted or cut short would shift every tile after it
    shards = range(len(store.shards)) if shards is None else shards
    starts = store.shard_starts
    positions = tf.constant(np.concatenate(
        [np.arange(starts[s], starts[s + 1]) for s in shards] + [np.zeros(0, np.int64)]))
    files = tf.data.Dataset.from_tensor_slices(
        tf.constant([str(store.shards[s]) for s in shards], tf.string))
    shape = tuple(store.manifest["tile_shape"])

    def parse_at(batch_number, raw):
        example = parse(raw, shape)
        first = batch_number * RECORD_BATCH
        example["position"] = tf.gather(
            positions, first + tf.range(tf.size(raw, out_type=tf.int64)))
        return example

    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=1)  # keeps store order
    return ds.batch(RECORD_BATCH).enumerate().map(parse_at, num_parallel_calls=AUTOTUNE)


def records(store: Store, indices=None, worker=(0, 1), shards=None) -> tf.data.Dataset:
    """Parsed records of ``store`` in store order, only those at positions
    ``indices`` if given, from the shard files a ``worker`` reads (see
    ``worker_shards``) or those numbered ``shards``."""
    ds = record_batches(store, worker_shards(store, worker) if shards is None else shards)
    if indices is not None:
        keep = np.zeros(store.n_tiles, bool)
        keep[np.asarray(indices, np.int64)] = True
        keep = tf.constant(keep)
        ds = ds.map(lambda ex: {k: tf.boolean_mask(v, tf.gather(keep, ex["position"]))
                                for k, v in ex.items()})
    return ds.unbatch()


class RamTiles:
    """Every tile of a store in RAM: a uint8 variable (n, H, W, 3) on the CPU
    whose row i is the store's tile i, and the labels as float32.

    One variable, not tf.data's ``cache()``: cached element by element, next to
    an 8,192-tile shuffle buffer, a 2.59 GiB store of 100,000 tiles peaked at
    3.75 GiB; here the tiles cost their own size and a shuffle costs 8 bytes a
    tile. Datasets made from it keep it alive (tf.data holds variables weakly).
    """

    def __init__(self, tiles: tf.Variable, labels: np.ndarray):
        self.tiles = tiles
        self.labels = labels
        self._labels = tf.constant(labels, tf.float32)

    def gather(self, rows: tf.data.Dataset) -> tf.data.Dataset:
        """Batches of row numbers -> ``(images uint8, labels float32)`` batches."""
        ds = rows.map(lambda r: (tf.gather(self.tiles, r), tf.gather(self._labels, r)),
                      num_parallel_calls=AUTOTUNE)
        ds._pcam_ram_tiles = self  # the strong reference that keeps the variable alive
        return ds


# Loaded stores, for as long as a dataset uses them: the folds of a run and their
# validation sets share one copy instead of reading the store again.
_LOADED: "weakref.WeakValueDictionary[tuple, RamTiles]" = weakref.WeakValueDictionary()


def _key(store: Store) -> tuple:
    return str(Path(store.path).resolve()), store.manifest["fingerprint"]


def ram_tiles(store: Store) -> RamTiles:
    """The store's tiles in RAM, loaded now or shared with the datasets that loaded them.

    Call it outside any ``strategy.scope()``: inside one the variable would be
    mirrored onto every device.
    """
    key = _key(store)
    found = _LOADED.get(key)
    if found is not None:
        return found
    _limit_malloc_arenas()
    n, shape = store.n_tiles, tuple(store.manifest["tile_shape"])
    with tf.device("/cpu:0"):
        # Made from a callable and filled with scatter_update, both in place. A
        # variable made from a tensor shares that tensor's buffer, and slice
        # assignment then copies the whole variable each time (measured: 104 s
        # and twice the memory to fill 100,000 tiles; scatter_update: ~1 s).
        tiles = tf.Variable(lambda: tf.zeros((n, *shape), tf.uint8), trainable=False,
                            name="store_tiles")
        ids = []
        with tqdm(total=n, unit="tile", desc=f"{store.path.name} store -> RAM",
                  disable=n < 20 * RECORD_BATCH) as bar:
            try:
                for batch in record_batches(store).prefetch(2):  # every shard
                    tiles.scatter_update(tf.IndexedSlices(batch["image"], batch["position"]))
                    ids.append(batch["id"].numpy())
                    bar.update(int(batch["position"].shape[0]))
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
                raise _damaged(store, err.message.splitlines()[0]) from None
    _check_ids(store, np.concatenate(ids) if ids else np.zeros(0, object))
    loaded = RamTiles(tiles, store.index()["label"].to_numpy(np.float32))
    _LOADED[key] = loaded
    return loaded


def _damaged(store: Store, why: str) -> PcamError:
    return PcamError(f"the tile store {store.path} does not hold what its manifest says "
                     f"({why}); delete {store.path / 'manifest.json'} and run "
                     "python scripts/prepare.py again to rebuild it")


def _check_ids(store: Store, ids: np.ndarray) -> None:
    """Refuse a store whose records are not its index's tiles, one for one: a
    missing record would pair every later tile with another tile's label, and
    leave black tiles at the end."""
    expected = store.index()["id"].to_numpy()
    if len(ids) != len(expected):
        raise _damaged(store, f"{len(ids):,} records for {len(expected):,} tiles")
    wrong = np.flatnonzero(np.asarray([i.decode() for i in ids], object) != expected)
    if len(wrong):
        raise _damaged(store, f"record {wrong[0]} is tile {ids[wrong[0]].decode()}, "
                              f"not {expected[wrong[0]]}")


M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (process-wide) at ``arenas``, where libc is glibc.

    tf.data's threads each allocate batch-sized buffers (3.5 MB for 128
    tiles), glibc gives threads their own arenas (up to 8 per core) and keeps
    freed buffers in them. Iterating a 100,000-tile store in RAM for two epochs
    peaked at 3.65 GiB with the default, 3.51 GiB with 2 arenas, at the same
    speed (87k against 82k tiles/s on 2 cores); the default's cost grows with
    the number of cores.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to cap
        pass


def _fits_in_ram(nbytes: int) -> bool:
    """True when ``nbytes`` is under half of the memory available now."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every platform
        return False
    return nbytes < available / 2


def _in_ram(store: Store, mode: str) -> bool:
    """Whether training and evaluation read ``store`` from RAM (``InputSettings.cache``)."""
    if mode == "auto":
        return _key(store) in _LOADED or _fits_in_ram(store.nbytes)
    return mode == "yes"


def _compiled(op):
    """``op`` as a graph function, fused by XLA where every op allows it (see
    ``pcam.data.augment``: 45x faster for the dihedral op on a CPU)."""
    return tf.function(op, jit_compile=op.xla)


def _options() -> tf.data.Options:
    """Deterministic order, and no automatic sharding: training splits the
    tiles between workers itself (``train_dataset``); evaluation and
    prediction read everything on every worker, so each holds every prediction."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def train_dataset(store: Store, indices, inputs: InputSettings = InputSettings(),
                  augment: AugmentSettings = AugmentSettings(), *, seed: int = 0,
                  balance: str = "weights", worker=(0, 1)) -> tf.data.Dataset:
    """Shuffled, augmented ``(images, labels)`` batches of the tiles at ``indices``.

    Labels come as the loss wants them (``pcam.task.encode_labels``: 0/1 for
    two classes, one-hot for more). One pass over the dataset is one epoch.
    ``balance="resample"`` draws every class equally (an epoch still has ``len(indices)`` tiles) instead of
    relying on loss weights. Same seed, same batches. ``worker=(index, count)``:
    each worker of a multi-worker run trains on its own share of the tiles
    (in RAM: every count-th of ``indices``; streamed: its shard files).
    """
    indices = np.sort(np.asarray(indices, np.int64))
    k = len(store.classes)
    if balance == "resample":
        _check_every_class(store.index()["label"].to_numpy()[indices], store.classes)
    if _in_ram(store, inputs.cache):
        ram = ram_tiles(store)
        rows = indices[worker[0]::worker[1]]
        ds = _shuffled_rows(rows, ram.labels[rows], seed, balance, k)
        n = len(rows)
        ds = ram.gather(ds.batch(inputs.batch_size, drop_remainder=n >= inputs.batch_size))
    else:
        base = records(store, indices, worker).map(lambda ex: (ex["image"], ex["label"]))
        n = len(indices) // worker[1]
        ds = _shuffled_records(base, inputs.shuffle_buffer, seed, balance, n, k)
        ds = ds.batch(inputs.batch_size, drop_remainder=n >= inputs.batch_size,
                      num_parallel_calls=AUTOTUNE)
    op = _compiled(compose(train_ops(augment)))
    seeds = tf.data.Dataset.random(seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        lambda batch, s: (op(batch[0], s), encode_labels(batch[1], k)),
        num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def _shuffled_rows(rows: np.ndarray, labels: np.ndarray, seed: int, balance: str, k: int):
    """One epoch of row numbers: a full shuffle, or (resample) the ``k``
    classes drawn equally, ``len(rows)`` in all."""
    def shuffled(part):
        return tf.data.Dataset.from_tensor_slices(part).shuffle(
            max(1, len(part)), seed=seed, reshuffle_each_iteration=True)

    if balance != "resample":
        return shuffled(rows)
    parts = [rows[labels == c] for c in range(k)]
    return tf.data.Dataset.sample_from_datasets(
        [shuffled(part).repeat() for part in parts], [1 / k] * k, seed=seed,
        rerandomize_each_iteration=True).take(len(rows))


def _shuffled_records(ds, buffer: int, seed: int, balance: str, n: int, k: int):
    """``(image, label)`` records through a shuffle buffer; (resample) the ``k``
    classes drawn equally, ``n`` in all."""
    if balance != "resample":
        return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    parts = [ds.filter(lambda x, y, c=c: tf.equal(y, c))
             .shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat() for c in range(k)]
    return tf.data.Dataset.sample_from_datasets(parts, [1 / k] * k, seed=seed,
                                                rerandomize_each_iteration=True).take(n)


def _check_every_class(labels, classes) -> None:
    absent = [c for k, c in enumerate(classes) if not np.any(labels == k)]
    if absent:
        raise PcamError(f"--balance resample needs tiles of every class in the training set; "
                        f"{', '.join(absent)} has none (use --balance weights, or more tiles)")


def eval_dataset(store: Store, indices=None, inputs: InputSettings = InputSettings(),
                 augment: AugmentSettings = AugmentSettings()) -> tf.data.Dataset:
    """``(images, labels)`` batches of the tiles at ``indices`` (all when None), in
    store order, not shuffled, with only the deterministic ops of training."""
    rows = np.arange(store.n_tiles) if indices is None else np.sort(np.asarray(indices, np.int64))
    k = len(store.classes)
    if _in_ram(store, inputs.cache):
        ds = ram_tiles(store).gather(
            tf.data.Dataset.from_tensor_slices(rows).batch(inputs.batch_size))
    else:
        ds = records(store, None if indices is None else rows).map(
            lambda ex: (ex["image"], ex["label"])).batch(inputs.batch_size)
    op = compose(eval_ops(augment))
    ds = ds.map(lambda x, y: (op(x, None), encode_labels(y, k)), num_parallel_calls=AUTOTUNE)
    return _known_length(ds, len(rows), inputs.batch_size).prefetch(AUTOTUNE) \
        .with_options(_options())


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

    For a few tiles (galleries, explanations): it reads only the shard files
    that hold them. An id the store lacks is a PcamError.
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
    shards = np.unique(np.searchsorted(store.shard_starts, wanted, side="right") - 1).tolist()
    found = {int(ex["position"]): ex["image"].numpy()
             for ex in records(store, np.unique(wanted), shards=shards)}
    return np.stack([found[int(p)] for p in wanted])
