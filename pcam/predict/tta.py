"""Test-time augmentation: a model's probabilities as the mean over dihedral views.

::

    runs/NAME/fold_<k>/best.keras ─▶ for each batch of tiles, in store order:
        the batch's TTA views stacked on the batch axis ─▶ ONE model call
        ─▶ reshape (views, tiles) ─▶ mean over views
    ─▶ one prediction per fold ─▶ mean (or rank mean) over folds (``combine``)

Only one batch's views exist at a time: ``batch_size`` images per model call
(by default twice the run's training batch: 256 images, 7 MB as uint8, for
the default 128), never an array of all views of all tiles (8 views of the
competition's 57,458 tiles would be 12.7 GB as uint8, 51 GB as float32).
Predicting those 57,458 tiles x 8 views adds ~0.4 GB to the process
(``benchmarks/predict.py``).

The TTA views are fixed elements of the dihedral group D4 (``TTA_VIEWS``);
every subset used is a subgroup, so a TTA prediction is itself unchanged when
a tile is turned by any of its views.

TensorFlow is imported inside the functions that run models, so that
checking and submitting a file (``scripts/submit.py``) starts in a second.
"""
from __future__ import annotations

import threading
import weakref
from typing import Iterable, Sequence

import numpy as np

from pcam.errors import PcamError
from pcam.settings import AugmentSettings

# View k of pcam.data.augment.dihedral_view: bit 1 flips left-right, bit 2 flips
# up-down, bit 4 transposes. Each TTA size takes a subgroup of D4: {identity},
# {identity, left-right flip}, the four flips-and-180 (Klein four-group), all 8.
TTA_VIEWS = {1: (0,), 2: (0, 1), 4: (0, 1, 2, 3), 8: tuple(range(8))}


VIEW_NAMES = ("identity", "flip left-right", "flip up-down", "rotate 180",
              "transpose", "rotate 90 counter-clockwise", "rotate 90 clockwise",
              "anti-transpose")


# --- TTA -------------------------------------------------------------------------

def tta_predictor(model, views: Sequence[int], batch_spec=None):
    """A graph function: uint8 tiles (N, H, W, 3) -> float32 class probabilities
    (N, K), each the mean over the dihedral ``views``
    (``pcam.data.augment.dihedral_view``); a one-unit (two-class, sigmoid)
    model's p gives the two columns 1 - p and p.

    The batch's views go through the model in one call of V*N images, so
    TTA x8 costs the model's compute for 8x the images and nothing more
    (``benchmarks/predict.py``). Each call of this function makes a new
    graph function, traced on its first batch; callers that predict small
    batches again and again (the app, heat maps) use ``cached_tta_predictor``.

    Args:
        batch_spec: the ``tf.TensorSpec`` of the batches (a dataset's
            ``element_spec``), when known: the graph is then traced once
            for every batch size.
    """
    import tensorflow as tf

    views = _check_views(views)
    predict = tta_graph(lambda: model, views, model.output_shape[-1])
    if batch_spec is not None:
        return tf.function(predict, input_signature=[batch_spec])
    # reduce_retracing: after a second batch size, one graph serves every size.
    return tf.function(predict, reduce_retracing=True)


# model -> {(views, image shape, dtype): graph function}. Weak keys: a model
# dropped by its caller (the app's cache evicting a run) takes its graphs with it.
_PREDICTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


_PREDICTORS_LOCK = threading.Lock()  # the app serves each browser session from its own thread


def cached_tta_predictor(model, views: Sequence[int], image_shape: Sequence[int],
                         dtype="uint8"):
    """``tta_predictor(model, views)`` for batches of images of one shape and
    dtype, made and traced once per model and kept while the model lives.

    Tracing a new graph costs ~0.1 s on a CPU (simple-cnn; more for larger
    models), as much as predicting a few hundred tiles: the app, which
    predicts one upload at a time, paid it on every upload before.

    Args:
        image_shape: (H, W, C) of one image; any number of images per batch.
        dtype: the images' dtype (uint8 tiles, or float32 after a centre crop).
    """
    import tensorflow as tf

    views = _check_views(views)
    shape = tuple(int(d) for d in image_shape)
    key = (views, shape, tf.as_dtype(dtype).name)
    with _PREDICTORS_LOCK:
        graphs = _PREDICTORS.setdefault(model, {})
        if key not in graphs:
            # The graph reaches the model through a weak reference: a strong one
            # would keep the model, the dictionary's key, alive for ever.
            predict = tta_graph(weakref.ref(model), views, model.output_shape[-1])
            graphs[key] = tf.function(predict, input_signature=[
                tf.TensorSpec((None, *shape), tf.as_dtype(dtype))])
        return graphs[key]


def _check_views(views: Sequence[int]) -> tuple:
    views = tuple(int(k) for k in views)
    if not views or any(not 0 <= k < 8 for k in views):
        raise ValueError(f"views must be dihedral view numbers 0..7, got {views}")
    return views


def tta_graph(get_model, views: tuple, units: int):
    """The Python body of a TTA predictor; ``get_model()`` gives the model when traced."""
    import tensorflow as tf

    from pcam.data.augment import dihedral_view

    # Plain TensorFlow ops over a Python list of views: nothing for AutoGraph
    # to convert, and converting resolved dihedral_view to another function
    # once a training run had compiled the dihedral op in the same process.
    @tf.autograph.experimental.do_not_convert
    def predict(images):
        n = tf.shape(images)[0]
        stacked = tf.concat([dihedral_view(images, k) for k in views], axis=0)  # view-major
        probs = tf.cast(get_model()(stacked, training=False), tf.float32)
        mean = tf.reduce_mean(tf.reshape(probs, [len(views), n, units]), axis=0)
        return tf.concat([1 - mean, mean], axis=1) if units == 1 else mean

    return predict


def predict_batches(predictor, batches: Iterable, total: int | None = None,
                    desc: str | None = None) -> np.ndarray:
    """Run ``predictor`` over image batches; their predictions concatenated.

    Args:
        total: tiles expected, for the progress bar (None: a counter only).
        desc: the progress bar's label; None shows no bar.
    """
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=total, unit="tile", desc=desc, disable=desc is None, smoothing=0.1) as bar:
        for images in batches:
            out.append(np.asarray(predictor(images)))
            bar.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_store(model, store, views: Sequence[int], batch_images: int = 256,
                  augment: AugmentSettings = AugmentSettings(), desc: str | None = None) -> np.ndarray:
    """TTA predictions of one model for every tile of ``store``, in store order.

    Args:
        views: dihedral view numbers, e.g. ``TTA_VIEWS[8]``.
        batch_images: images per model call; a batch holds
            ``batch_images // len(views)`` tiles (at least one).
        augment: the run's augmentation settings; only their deterministic
            ops (a centre crop) apply, exactly as in validation.
    """
    from pcam.data.pipeline import predict_dataset
    from pcam.settings import InputSettings

    tiles_per_batch = max(1, batch_images // len(views))
    side = augment.centre_crop or store.manifest["tile_shape"][0]
    expected = tuple(model.input_shape[1:3])
    if None not in expected and expected != (side, side):
        raise PcamError(f"the model takes {expected[0]}x{expected[1]} tiles, the run's "
                        f"pipeline gives {side}x{side}: is this the run the model came from?")
    ds = predict_dataset(store, InputSettings(batch_size=tiles_per_batch), augment)
    predictor = tta_predictor(model, views, ds.element_spec)
    return predict_batches(predictor, ds, store.n_tiles, desc)


def rank_normalise(probs) -> np.ndarray:
    """Ranks scaled to 0..1 (ties share their mean rank), per column of a
    (N, K) array; AUC is unchanged."""
    from scipy.stats import rankdata

    probs = np.asarray(probs, np.float64)
    if len(probs) < 2:
        return np.full(probs.shape, 0.5)
    return (rankdata(probs, axis=0) - 1) / (len(probs) - 1)


def combine(per_fold: Sequence[np.ndarray], average: str = "mean") -> np.ndarray:
    """One prediction per tile from the folds': mean of probabilities, or mean of ranks.

    Rank averaging puts folds whose probabilities are scaled differently
    (one confident, one not) on an equal footing; its output is a score in
    0..1, not a calibrated probability, which AUC does not need.
    """
    stacked = np.stack([np.asarray(p, np.float64) for p in per_fold])
    if average == "rank":
        stacked = np.stack([rank_normalise(p) for p in stacked])
    elif average != "mean":
        raise ValueError(f"average must be 'mean' or 'rank', got {average!r}")
    return stacked.mean(axis=0)


def combine_runs(per_run: Sequence[Sequence[np.ndarray]], average: str = "mean") -> np.ndarray:
    """One prediction per tile from several runs' folds: each run's folds
    combined as that run alone combines them, then the runs, each counting
    equally (a 5-fold run does not outweigh a 2-fold one).

    One run gives exactly its own prediction (``combine`` of its folds).
    With ``average="rank"`` the runs' rank-mean scores are ranked again and
    averaged: mean of ranks at both levels.

    Args:
        per_run: for each run, its folds' predictions, all in the same tile order.
    """
    runs = [combine(folds, average) for folds in per_run]
    return runs[0] if len(runs) == 1 else combine(runs, average)
