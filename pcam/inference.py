"""Prediction: a run's fold models x test-time augmentation -> a validated submission.

::

    runs/NAME/fold_<k>/best.keras ─▶ for each batch of test tiles, in store order:
        the batch's TTA views stacked on the batch axis ─▶ ONE model call
        ─▶ reshape (views, tiles) ─▶ mean over views
    ─▶ one prediction per fold ─▶ mean (or rank mean) over folds
    ─▶ id,label in sample_submission's order ─▶ checked ─▶ submissions/NAME.csv + NAME.json

Only one batch's views exist at a time: ``batch_size`` images per model call
(by default twice the run's training batch: 256 images, 7 MB as uint8, for
the default 128), never an array of all views of all tiles (8 views of the
competition's 57,458 tiles would be 12.7 GB as uint8, 51 GB as float32).
Predicting those 57,458 tiles x 8 views adds ~0.4 GB to the process
(``benchmarks/predict.py``).

The TTA views are fixed elements of the dihedral group D4 (``TTA_VIEWS``);
every subset used is a subgroup, so a TTA prediction is itself unchanged when
a tile is turned by any of its views.

TensorFlow and Keras are imported inside the functions that run models, so
that checking and submitting a file (``scripts/submit.py``) starts in a
second instead of the ~5 s TensorFlow takes to import.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import shlex
import threading
import time
import weakref
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pcam import competition as comp
from pcam import metrics
from pcam.errors import PcamError
from pcam.images import IMAGE_SUFFIXES, list_images
from pcam.io import atomic_path, atomic_write_text
from pcam.runs import (ModelInfo, finished_folds, info_path,  # noqa: F401
                       load_fold_model, load_model_with_info, load_run, prob_columns,
                       read_oof, resolve_folds, run_classes)
from pcam.settings import (AugmentSettings, DataSettings, PredictSettings, RunSettings,
                           to_dict)

# View k of pcam.augment.dihedral_view: bit 1 flips left-right, bit 2 flips
# up-down, bit 4 transposes. Each TTA size takes a subgroup of D4: {identity},
# {identity, left-right flip}, the four flips-and-180 (Klein four-group), all 8.
TTA_VIEWS = {1: (0,), 2: (0, 1), 4: (0, 1, 2, 3), 8: tuple(range(8))}
VIEW_NAMES = ("identity", "flip left-right", "flip up-down", "rotate 180",
              "transpose", "rotate 90 counter-clockwise", "rotate 90 clockwise",
              "anti-transpose")
SHOW = comp.SHOW  # names an error message lists before "..."


# --- TTA -------------------------------------------------------------------------

def tta_predictor(model, views: Sequence[int], batch_spec=None):
    """A graph function: uint8 tiles (N, H, W, 3) -> float32 probabilities,
    each the mean over the dihedral ``views`` (``pcam.augment.dihedral_view``):
    (N,) of class 1 for a one-unit (two-class) model, (N, K) for a K-class one.

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
    predict = _tta_function(lambda: model, views, model.output_shape[-1])
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
            predict = _tta_function(weakref.ref(model), views, model.output_shape[-1])
            graphs[key] = tf.function(predict, input_signature=[
                tf.TensorSpec((None, *shape), tf.as_dtype(dtype))])
        return graphs[key]


def _check_views(views: Sequence[int]) -> tuple:
    views = tuple(int(k) for k in views)
    if not views or any(not 0 <= k < 8 for k in views):
        raise ValueError(f"views must be dihedral view numbers 0..7, got {views}")
    return views


def _tta_function(get_model, views: tuple, units: int):
    """The Python body of a TTA predictor; ``get_model()`` gives the model when traced."""
    import tensorflow as tf

    from pcam.augment import dihedral_view

    # Plain TensorFlow ops over a Python list of views: nothing for AutoGraph
    # to convert, and converting resolved dihedral_view to another function
    # once a training run had compiled the dihedral op in the same process.
    @tf.autograph.experimental.do_not_convert
    def predict(images):
        n = tf.shape(images)[0]
        stacked = tf.concat([dihedral_view(images, k) for k in views], axis=0)  # view-major
        probs = tf.cast(get_model()(stacked, training=False), tf.float32)
        mean = tf.reduce_mean(tf.reshape(probs, [len(views), n, units]), axis=0)
        return mean[:, 0] if units == 1 else mean

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
    return np.concatenate(out) if out else np.zeros(0, np.float32)


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
    from pcam.pipeline import predict_dataset
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


# --- the submission ----------------------------------------------------------------

def _first(items, show=SHOW) -> str:
    items = list(items)
    return ", ".join(map(str, items[:show])) + (f", ... ({len(items)} in all)"
                                                if len(items) > show else "")


def read_sample_submission(path: Path) -> pd.DataFrame:
    """The competition's sample_submission.csv (its ids, in submission order)."""
    table, problems = comp.read_ids_csv(Path(path), labelled=False)
    if problems:
        raise PcamError("; ".join(problems))
    return table


def _read_submission(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise PcamError(f"{path}: no such file; write a submission first "
                        f"(python scripts/predict.py --run runs/NAME)")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise PcamError(f"{path}: empty file (expected a header 'id,label' and one row per "
                        f"test tile)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise PcamError(f"{path}: not a readable CSV ({' '.join(str(err).split())})") from None


def validate_submission(submission: str | Path | pd.DataFrame, sample_submission: str | Path,
                        name: str | None = None) -> pd.DataFrame:
    """Check a submission against the competition's sample_submission.csv.

    Checked: the header is exactly ``id,label``; every id of the sample is
    there once and no other id (so the row count matches: 57,458 for the
    competition); every label is a finite probability in [0, 1]. The row
    order is not checked: Kaggle matches rows by id (``predict`` writes
    sample_submission's order anyway). Every problem found is reported
    together, each with its count and first few rows or ids.

    Args:
        submission: a CSV path, or a table with columns id and label.
        sample_submission: path of the competition's sample_submission.csv.
        name: how to call the submission in messages (default: its path).

    Returns:
        The submission as a table: id (str), label (float64).

    Raises:
        PcamError: one message naming every problem.
    """
    if isinstance(submission, pd.DataFrame):
        table, shown = submission, name or "the submission"
    else:
        table, shown = _read_submission(Path(submission)), name or str(submission)
    if list(table.columns) != ["id", "label"]:
        header = ",".join(map(str, table.columns))
        if not isinstance(submission, pd.DataFrame):  # as written, not as pandas names it
            with open(submission, encoding="utf-8", errors="replace") as fh:
                header = fh.readline().rstrip("\r\n")
        raise PcamError(f"{shown}: header is '{header}', expected exactly 'id,label'")
    sample = read_sample_submission(Path(sample_submission))
    sample_name = Path(sample_submission).name
    ids = table["id"].astype(str)
    row = pd.Series(np.arange(len(table)) + 2, index=table.index)  # CSV line, after the header
    problems = []

    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        lines = dup.groupby(dup, sort=False).apply(
            lambda g: f"'{g.iloc[0]}' (rows {', '.join(map(str, row[g.index]))})")
        problems.append(f"{dup.nunique()} id(s) appear more than once: {_first(lines)}")
    wanted, have = set(sample["id"]), set(ids)
    missing = [i for i in sample["id"] if i not in have]
    extra = [i for i in ids.drop_duplicates() if i not in wanted]
    if missing:
        problems.append(f"{len(missing)} id(s) of {sample_name} are missing: {_first(missing)}")
    if extra:
        problems.append(f"{len(extra)} id(s) are not in {sample_name}: {_first(extra)}")
    if len(table) != len(sample):
        problems.append(f"{len(table):,} rows, {sample_name} has {len(sample):,}")

    raw = table["label"]
    labels = pd.to_numeric(raw, errors="coerce").astype(np.float64)
    text = raw.astype(str).str.strip()
    nan = labels.isna() & text.str.lower().isin(["", "nan", "na", "n/a", "null", "none"])
    word = labels.isna() & ~nan
    inf = np.isinf(labels)
    outside = labels.notna() & ~inf & ((labels < 0) | (labels > 1))
    for mask, what in ((nan, "are NaN or empty"), (word, "are not numbers"),
                       (inf, "are infinite"), (outside, "are outside [0, 1]")):
        if mask.any():
            where = [f"row {row[i]} ({ids[i]}: '{text[i]}')" for i in table.index[mask]]
            problems.append(f"{int(mask.sum())} label(s) {what}: {_first(where)}")
    if problems:
        raise PcamError(f"{shown} is not a valid submission: " + "; ".join(problems))
    return pd.DataFrame({"id": ids.to_numpy(), "label": labels.to_numpy()})


def write_submission(frame: pd.DataFrame, out: Path, sample_submission: Path,
                     record: dict | None = None) -> pd.DataFrame:
    """Check ``frame`` (id, label), then write it to ``out`` atomically, and the
    ``record`` of how it was made beside it as ``out`` with suffix .json.

    Nothing is written when the check fails. The written file is read back
    and checked again before it takes its name, so what Kaggle reads is
    what was checked.
    """
    out = Path(out)
    frame = validate_submission(frame, sample_submission, name=f"the submission for {out}")
    try:
        with atomic_path(out) as tmp:
            # 9 significant digits: every float32 probability, and every rank of
            # 57,458 tiles, survives the round trip through text.
            frame.to_csv(tmp, index=False, float_format="%.9g")
            validate_submission(tmp, sample_submission, name=str(out))
        if record is not None:
            atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    except OSError as err:
        raise PcamError(f"cannot write {out}: {err.strerror}; choose another --out") from None
    return frame


def read_answers(path: Path) -> pd.DataFrame:
    """An answer key: id,label with labels 0/1 (as make_kaggle_layout.py writes it)."""
    table, problems = comp.read_ids_csv(Path(path), labelled=True)
    if problems:
        raise PcamError("--answers: " + "; ".join(problems))
    return table.assign(label=table["label"].astype(int))


def score(submission: pd.DataFrame, answers: pd.DataFrame) -> tuple[float, int]:
    """AUC of the submission on the tiles the answer key covers, and how many those are."""
    both = submission.merge(answers, on="id", suffixes=("", "_true"))
    if both.empty:
        raise PcamError("--answers: none of its ids is in the submission; is it the answer "
                        "key of this test set?")
    return metrics.auc(both["label_true"], both["label"]), len(both)


# --- the command ---------------------------------------------------------------

def data_settings(config: RunSettings, settings) -> DataSettings:
    """The run's data settings, with the command line's folders (``settings.data_dir``,
    ``settings.store_dir``) in place of its own."""
    data = config.data
    if settings.data_dir:  # another folder: its own store, unless --store-dir says otherwise
        data = dataclasses.replace(data, data_dir=settings.data_dir, store_dir=settings.store_dir)
    elif settings.store_dir:
        data = dataclasses.replace(data, store_dir=settings.store_dir)
    return data


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of an ensemble: its folder, the settings it was trained with,
    and the folds of it that predict."""

    run_dir: Path
    config: RunSettings
    folds: tuple[int, ...]


def load_members(settings: PredictSettings) -> list[Member]:
    """The runs of ``settings.run`` with their folds (``settings.folds``, the
    same for every run, or each run's finished folds), checked to be usable
    together: the same classes in the same label order.

    Raises:
        PcamError: no run given; a run, or a fold asked for, is missing or
            unfinished; two runs' classes differ (both runs named).
    """
    if not settings.run:
        raise PcamError("no --run given: name the run folder(s) to predict with, such as "
                        "--run runs/NAME (several: --run runs/A --run runs/B)")
    members = []
    for run in settings.run:
        run_dir, config = load_run(run)
        members.append(Member(run_dir, config, tuple(resolve_folds(run_dir, config,
                                                                   settings.folds))))
    first = members[0]
    for other in members[1:]:
        mine, theirs = run_classes(first.config), run_classes(other.config)
        if mine != theirs:
            raise PcamError(f"runs {first.run_dir} and {other.run_dir} cannot be ensembled: "
                            f"their classes differ ({', '.join(mine)} vs {', '.join(theirs)}, "
                            "in label order); ensemble runs trained on the same classes, "
                            "in the same order")
    return members


def ensemble_name(members: Sequence[Member]) -> str:
    """The default output name: the run's name, or the runs' names joined by
    "+" (the first's and a count when that would pass 80 characters)."""
    names = [m.run_dir.resolve().name for m in members]
    joined = "+".join(names)
    return joined if len(joined) <= 80 else f"{names[0]}+{len(names) - 1}-more"


def inputs_name(paths: Sequence[str]) -> str:
    """The part of a default output name that says what was predicted: the one
    file's or folder's name, or the first's and a count, so that predicting
    other images never overwrites an earlier CSV (the same images, asked
    again, replace their own)."""
    names = [re.sub(r"[^A-Za-z0-9._-]+", "-", Path(p).resolve().name).strip("-.") or "images"
             for p in paths]
    first = Path(names[0]).stem if Path(names[0]).suffix.lower() in IMAGE_SUFFIXES else names[0]
    return first if len(names) == 1 else f"{first}-and-{len(names) - 1}-more"


def _read_folds(run_dir: Path) -> pd.DataFrame | None:
    path = Path(run_dir) / "folds.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"id": str})[["id", "label", "fold"]]
    return table.sort_values("id", kind="stable").reset_index(drop=True)


def ensemble_oof(members: Sequence[Member], average: str = "mean"
                 ) -> tuple[pd.DataFrame | None, str]:
    """Out-of-fold predictions (id, label, prob) of two-class runs ensembled,
    or None and why none exist.

    One run: the pooled OOF predictions of its finished folds. Several:
    the runs' OOF predictions combined tile by tile (``average``, as the
    test predictions are) -- which are out-of-fold for the ensemble only
    when every run held out the same tiles in the same fold. So they exist
    for runs with identical folds.csv (ids, labels, folds) and every fold
    finished.
    """
    if len(members) == 1:
        m = members[0]
        done = finished_folds(m.run_dir, m.config.folds.folds)
        if not done:
            return None, f"run {m.run_dir} has no finished fold"
        return read_oof(m.run_dir, done)[["id", "label", "prob"]], ""
    for m in members:
        done = finished_folds(m.run_dir, m.config.folds.folds)
        if len(done) < m.config.folds.folds:
            return None, (f"run {m.run_dir} has {len(done)} of {m.config.folds.folds} folds "
                          "finished, so the ensemble has no complete out-of-fold predictions")
    tables = [_read_folds(m.run_dir) for m in members]
    for m, table in zip(members[1:], tables[1:]):
        if tables[0] is None or table is None or not table.equals(tables[0]):
            return None, (f"runs {members[0].run_dir} and {m.run_dir} were trained on "
                          "different folds (their folds.csv differ), so no out-of-fold "
                          "prediction of the ensemble exists; train the runs with the same "
                          "--folds, --seed and data for one")
    ids = tables[0]["id"]
    probs = [read_oof(m.run_dir, range(m.config.folds.folds)).set_index("id")
             .loc[ids, "prob"].to_numpy(np.float64) for m in members]
    return pd.DataFrame({"id": ids, "label": tables[0]["label"],
                         "prob": combine(probs, average)}), ""


def ensemble_threshold(members: Sequence[Member], average: str = "mean") -> tuple[float, str]:
    """The two-class decision threshold of several runs ensembled, and why
    it is 0.5 when it cannot be chosen ("" when it was).

    A run's threshold is chosen on its pooled out-of-fold predictions
    (Youden's J, ``pcam.training.summarise``); the ensemble's the same way
    on theirs combined (``ensemble_oof``), or 0.5 when they have none. The
    probabilities themselves do not depend on it: only the ``predicted``
    column does.
    """
    oof, why = ensemble_oof(members, average)
    if oof is None:
        return 0.5, f"threshold 0.5: {why}"
    return metrics.choose_threshold(oof["label"].to_numpy(), oof["prob"].to_numpy()), ""


def _batch_images(settings: PredictSettings, member: Member) -> int:
    return settings.batch_size or 2 * member.config.inputs.batch_size


def _model_files(members: Sequence[Member]) -> list[dict]:
    """Every model of the ensemble: its run, fold, backbone and file."""
    files = []
    for m in members:
        for k in m.folds:
            path = m.run_dir / f"fold_{k}" / "best.keras"
            stat = path.stat()
            files.append({"run": str(m.run_dir), "fold": k, "backbone": m.config.model.backbone,
                          "path": str(path), "bytes": stat.st_size,
                          "modified": _iso(stat.st_mtime)})
    return files


def _runs_record(members: Sequence[Member], settings: PredictSettings) -> dict:
    """What the record says of the runs: each run (folds, backbone, config);
    with one run, also ``run``, ``folds`` and ``run_config`` as before, which
    ``scripts/evaluate.py --submission`` reads to find the run's OOF predictions."""
    record = {"runs": [{"run": str(m.run_dir), "folds": list(m.folds),
                        "backbone": m.config.model.backbone,
                        "batch_images": _batch_images(settings, m),
                        "config": to_dict(m.config)} for m in members]}
    if len(members) == 1:
        record.update(run=str(members[0].run_dir), folds=list(members[0].folds),
                      run_config=to_dict(members[0].config))
    return record


def _ensemble_line(members: Sequence[Member], views, average: str) -> str:
    runs = "; ".join(f"{m.run_dir} fold(s) {', '.join(map(str, m.folds))}" for m in members)
    how = f"{average} over folds" + (", then over runs" if len(members) > 1 else "")
    return (f"run {runs} x {len(views)} TTA view(s) "
            f"({', '.join(VIEW_NAMES[k] for k in views)}), {how}")


def _predict_test_sets(members: Sequence[Member], settings: PredictSettings, views,
                       missing: str, desc: str = "fold {k} x{views}"):
    """Every fold of every run over its run's test store, run by run.

    Each run's store is built (or reused) with its own data settings, so at
    its own tile size, just before that run predicts: two runs sharing a
    store folder at different tile sizes rebuild it in turn, and neither
    reads the other's tiles. The stores must hold the same tiles.

    Args:
        missing: the error message's end when a run's data has no test split.

    Returns:
        (for each run, its folds' predictions in the first store's tile
        order; the first store's index; ``(path, count)`` of each store that
        left out unreadable tiles).
    """
    from pcam.store import prepare

    per_run, index, bad = [], None, []
    for m in members:
        data = data_settings(m.config, settings)
        found = prepare(data, splits=("test",))
        if "test" not in found:
            raise PcamError(f"{data.data_dir} has no test {missing}")
        store = found["test"]
        ids = store.index()["id"]
        if index is None:
            index, first = store.index(), store.path
        elif len(ids) != len(index) or set(ids) != set(index["id"]):
            raise PcamError(f"runs {members[0].run_dir} and {m.run_dir} cannot be ensembled on "
                            f"their test sets: {first} and {store.path} hold different tiles; "
                            "give them the same data with --data-dir")
        if store.manifest.get("bad_tiles"):
            bad.append((store.path, store.manifest["bad_tiles"]))
        batch_images = _batch_images(settings, m)
        print(f"run {m.run_dir}: {store.n_tiles:,} test tiles, {batch_images} images per "
              "model call", flush=True)
        # Positions in this run's store of the first store's tiles, in its order.
        position = pd.Series(np.arange(store.n_tiles), index=ids)[index["id"]].to_numpy()
        prefix = f"{m.run_dir.name} " if len(members) > 1 else ""
        per_fold = []
        for k in m.folds:  # one model in memory at a time
            model = load_fold_model(m.run_dir / f"fold_{k}" / "best.keras")
            probs = predict_store(model, store, views, batch_images, m.config.augment,
                                  desc=prefix + desc.format(k=k, views=len(views)))
            per_fold.append(probs[position])
            del model
        per_run.append(per_fold)
    return per_run, index, bad


def predict(settings: PredictSettings) -> dict:
    """Predict with one or more runs' folds x TTA views: loose images
    (``settings.images``, or a labelled class-folder ``answers`` folder) into
    a CSV of class probabilities; class-folder runs' test/ folder likewise;
    Kaggle runs' test set into a checked submission (``predict_submission``).

    Several runs are one ensemble (``combine_runs``): their classes must be
    the same, in the same order; for their test set, their data must be of
    the same kind and hold the same test tiles.

    Returns:
        The record written beside the output CSV.
    """
    members = load_members(settings)
    answers_dir = bool(settings.answers) and Path(settings.answers).is_dir()
    if settings.images or answers_dir:
        return predict_images(settings)
    for m in members[1:]:
        if m.config.data.source != members[0].config.data.source:
            raise PcamError(f"runs {members[0].run_dir} ({members[0].config.data.source}) and "
                            f"{m.run_dir} ({m.config.data.source}) have different kinds of "
                            "test set; ensemble them on images with --images PATH...")
    if members[0].config.data.source == "folders":
        return predict_folder_test(settings)
    return predict_submission(settings)


def predict_submission(settings: PredictSettings) -> dict:
    """Predict the test set with the runs' folds x TTA views and write the submission.

    Steps: the runs and their finished folds; each run's test tile store
    (built or reused, in sample_submission's order); for each fold, its best
    model over the store with TTA; the folds combined, then the runs
    (``combine_runs``); the submission checked and written with its record
    (``NAME.json``); with ``answers``, the AUC printed.

    Returns:
        The record written beside the submission (settings, runs and their
        folds, views, every model file, time, the runs' configs, and the AUC
        when scored).
    """
    start = time.perf_counter()
    members = load_members(settings)
    views = TTA_VIEWS[settings.tta]
    data = data_settings(members[0].config, settings)
    out = Path(settings.out or Path("submissions") / f"{ensemble_name(members)}.csv")
    answers = read_answers(Path(settings.answers)) if settings.answers else None  # fail fast
    try:  # fail fast, too: before minutes of prediction, not after
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PcamError(f"cannot write {out}: {err.strerror}; choose another --out") from None
    if len(members) == 1:  # the resolved settings, as one run's record always had them
        settings = dataclasses.replace(settings, folds=members[0].folds,
                                       batch_size=_batch_images(settings, members[0]),
                                       data_dir=data.data_dir, store_dir=data.store_dir)
    settings = dataclasses.replace(settings, out=str(out))

    sample = Path(data.data_dir) / comp.TEST_CSV
    print(_ensemble_line(members, views, settings.average), flush=True)
    per_run, index, bad = _predict_test_sets(members, settings, views,
                                             "images to predict; pass --images")
    frame = pd.DataFrame({"id": index["id"].to_numpy(),
                          "label": combine_runs(per_run, settings.average)})
    record = {
        **_runs_record(members, settings), "tta": settings.tta,
        "views": [VIEW_NAMES[k] for k in views], "average": settings.average,
        "batch_images": _batch_images(settings, members[0]), "tiles": len(frame),
        "model_files": _model_files(members),
        "sample_submission": str(sample), "written": _iso(time.time()),
        "seconds": round(time.perf_counter() - start, 1),
        "settings": to_dict(settings), "data": to_dict(data),
    }
    scored = None
    if answers is not None:
        scored = score(frame, answers)
        record["answers"] = {"path": settings.answers, "auc": _json_float(scored[0]),
                             "tiles": scored[1]}
    try:
        write_submission(frame, out, sample, record)
    except PcamError as err:
        if bad:  # the likely cause: tiles left out of the store with --skip-bad
            path, n = bad[0]
            raise PcamError(f"{err} (the test store left out {n} unreadable tile(s), "
                            f"listed in {path / 'bad_tiles.csv'}: a submission needs "
                            f"every test tile)") from None
        raise
    print(f"submission: {out} ({len(frame):,} rows, checked against {sample})", flush=True)
    print(f"settings:   {out.with_suffix('.json')}", flush=True)
    if scored is not None:
        auc, n = scored
        print(f"AUC on {settings.answers}: {auc:.4f} ({n:,} of {len(frame):,} tiles)", flush=True)
    if len(frame) == comp.N_TEST:
        print(f"submit it: python scripts/submit.py {shlex.quote(str(out))} -m \"...\"",
              flush=True)
    else:  # a sample (the demo's) or a test set of one's own: Kaggle would refuse it
        print(f"not the competition's test set ({len(frame):,} of {comp.N_TEST:,} tiles): "
              "nothing to submit to Kaggle", flush=True)
    return record


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _json_float(value: float):
    return None if math.isnan(value) else value


def submit_file(csv_path: str | Path, message: str, competition: str = comp.NAME,
                data_dir: str | Path = DataSettings().data_dir) -> str:
    """Check a submission against the competition's sample_submission.csv, then
    upload it (``pcam.kaggle_api.submit``). Nothing is uploaded when the check fails.

    Returns:
        Kaggle's answer ("Successfully submitted to ...").
    """
    from pcam.kaggle_api import submit, submit_command

    csv_path = Path(csv_path)
    sample = Path(data_dir) / comp.TEST_CSV
    if not sample.is_file():
        raise PcamError(f"cannot check {csv_path}: {sample} not found; pass --data-dir with "
                        f"the competition folder (the one holding {comp.TEST_CSV})")
    frame = validate_submission(csv_path, sample)
    print(f"{csv_path}: valid ({len(frame):,} rows, every id of {sample} once)", flush=True)
    print(f"the same with the kaggle client: {submit_command(csv_path, message, competition)}",
          flush=True)
    answer = submit(csv_path, message, competition)
    print(answer, flush=True)
    return answer


# --- class probabilities of any images -------------------------------------------------

def load_ensemble(run_dir: Path, folds: Sequence[int]) -> list:
    """``(model, ModelInfo)`` of each fold, loaded once (the app keeps them)."""
    return [load_model_with_info(Path(run_dir) / f"fold_{k}" / "best.keras") for k in folds]


def as_tiles(arrays: Sequence[np.ndarray], tile_size: int) -> np.ndarray:
    """Decoded RGB images made into tiles the way a class-folder store makes
    them (centre-cropped to a square, resized), stacked as uint8 (N, S, S, 3)."""
    from pcam.images import to_tile

    if not len(arrays):
        return np.zeros((0, tile_size, tile_size, 3), np.uint8)
    return np.stack([to_tile(np.asarray(a), tile_size) for a in arrays])


def predict_tiles(ensemble: Sequence, tiles: np.ndarray, views: Sequence[int] = TTA_VIEWS[8],
                  augment: AugmentSettings = AugmentSettings(), batch_images: int = 256,
                  average: str = "mean") -> np.ndarray:
    """Class probabilities of uint8 tiles (N, S, S, 3) by an ensemble x TTA views.

    Returns:
        (N,) probabilities of class 1 for a two-class run, (N, K) otherwise.
    """
    from pcam.augment import compose, eval_ops

    fed = np.asarray(compose(eval_ops(augment))(tiles, None)) if len(tiles) else tiles
    per_model = []
    for model, _ in ensemble:
        predictor = cached_tta_predictor(model, views, fed.shape[1:], fed.dtype)
        step = max(1, batch_images // len(views))
        per_model.append(predict_batches(
            predictor, (fed[i:i + step] for i in range(0, len(fed), step))))
    if not len(tiles):
        units = ensemble[0][0].output_shape[-1]
        return np.zeros((0,) if units == 1 else (0, units), np.float32)
    return combine(per_model, average)


# --- images larger than a tile: answered as a set of tiles ---------------------------------

def image_tiles(image: np.ndarray, tile_size: int, window: int = 0) -> np.ndarray:
    """An image as the tiles a model of ``tile_size`` answers, (T, S, S, 3) uint8.

    ``window`` is the side, in image pixels, of what one tile was made from in
    training (``ModelInfo.window``: the training images' side; 0: the tile
    size). An image less than two windows wide or high is one tile, made as
    the store made them (centre-cropped to a square, resized). A larger one
    is cut into the windows that cover it without overlap (the last row and
    column ending on its edge, as heat maps cut them), each made a tile: the
    same scale as in training. Shrunk to one tile, a 1,000 px mosaic of
    tumour, stroma and fat was answered "mucosa" (issue 24).
    """
    from pcam.images import cut_windows, to_tile, window_starts

    image = np.asarray(image)
    window = window or tile_size
    height, width = image.shape[:2]
    if min(height, width) < 2 * window:
        return to_tile(image, tile_size)[None]
    ys, xs = window_starts(height, window, window), window_starts(width, window, window)
    windows = cut_windows(image, ys, xs, window)
    if window == tile_size:
        return windows
    return np.stack([to_tile(w, tile_size) for w in windows])


def images_as_tiles(images: Sequence[np.ndarray], tile_size: int,
                    window: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every image's tiles (``image_tiles``) stacked, and the image each tile is of."""
    parts = [image_tiles(image, tile_size, window) for image in images]
    if not parts:
        return np.zeros((0, tile_size, tile_size, 3), np.uint8), np.zeros(0, int)
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(parts)])
    return np.concatenate(parts), owner


@dataclasses.dataclass(frozen=True)
class ImageAnswers:
    """Images answered as sets of tiles.

    Attributes:
        probs: per image, (N,) p(class 1) for two classes, its highest tile's
            (is the positive class anywhere in it?); (N, K) otherwise, the
            mean over its tiles.
        tiles: (N,) how many tiles each image was.
        areas: (N, K) the share of each image's tiles predicted as each class.
    """

    probs: np.ndarray
    tiles: np.ndarray
    areas: np.ndarray


def answer_images(tile_probs: np.ndarray, owner: np.ndarray, n_images: int,
                  threshold: float) -> ImageAnswers:
    """Tiles' probabilities (``predict_tiles`` of ``images_as_tiles``) as answers per image."""
    tile_probs = np.asarray(tile_probs, np.float64)
    tiles = np.bincount(owner, minlength=n_images)
    if tile_probs.ndim == 1:
        probs = np.full(n_images, -np.inf)
        np.maximum.at(probs, owner, tile_probs)
        positive = np.bincount(owner, weights=tile_probs >= threshold, minlength=n_images)
        share = positive / np.maximum(tiles, 1)
        return ImageAnswers(probs, tiles, np.stack([1 - share, share], axis=1))
    k = tile_probs.shape[1]
    sums = np.zeros((n_images, k))
    np.add.at(sums, owner, tile_probs)
    votes = np.zeros((n_images, k))
    np.add.at(votes, (owner, tile_probs.argmax(axis=1)), 1)
    return ImageAnswers(sums / np.maximum(tiles, 1)[:, None], tiles,
                        votes / np.maximum(tiles, 1)[:, None])


def with_areas(table: pd.DataFrame, answers: ImageAnswers, classes: Sequence[str]) -> pd.DataFrame:
    """``table`` with ``tiles`` and one ``area_<class>`` column per class appended."""
    table = table.copy()
    table["tiles"] = answers.tiles
    for k, c in enumerate(classes):
        table[f"area_{c}"] = answers.areas[:, k]
    return table


def predicted_classes(probs: np.ndarray, classes: Sequence[str], threshold: float) -> list[str]:
    """Each image's class: ``classes[1]`` when p >= threshold (two classes), else the argmax."""
    probs = np.asarray(probs)
    if probs.ndim == 1:
        return [classes[int(p >= threshold)] for p in probs]
    return [classes[i] for i in probs.argmax(axis=1)]


def probability_table(names, probs: np.ndarray, classes: Sequence[str],
                      threshold: float) -> pd.DataFrame:
    """``path``, ``predicted``, then one probability column per class (named by it)."""
    probs = np.asarray(probs, np.float64)
    full = np.stack([1 - probs, probs], axis=1) if probs.ndim == 1 else probs
    table = pd.DataFrame({"path": [str(n) for n in names],
                          "predicted": predicted_classes(probs, classes, threshold)})
    for k, c in enumerate(classes):
        table[c] = full[:, k]
    return table


def labelled_images(folder: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Images of a labelled class-folder set (``DIR/<class>/<image>``) and
    their label indices in the run's ``classes``."""
    from pcam.sources import images_under, subfolders

    present = subfolders(folder)
    unknown = [c for c in present if c not in classes]
    if not present or unknown:
        raise PcamError(f"--answers {folder}: its class folders ({', '.join(present) or 'none'}) "
                        f"must be classes of the run ({', '.join(classes)})"
                        + (f"; {', '.join(unknown)} is not" if unknown else ""))
    paths, labels = [], []
    for c in present:
        for rel in images_under(folder / c)[0]:
            paths.append(folder / c / rel)
            labels.append(list(classes).index(c))
    return paths, labels


def predict_images(settings: PredictSettings) -> dict:
    """Class probabilities of loose images (files or folders, any size) by
    one or more runs' folds x TTA; a CSV (``path``, ``predicted``, one column
    per class) and its record beside it; with a labelled ``answers`` folder,
    the report.

    Each run makes the images into tiles of its own tile size, as its store
    made them, so runs trained at different tile sizes ensemble too.
    """
    from pcam.images import decode_image

    start = time.perf_counter()
    members = load_members(settings)
    classes = run_classes(members[0].config)
    labels = None
    if settings.answers:
        if settings.images:
            raise PcamError("give --images PATH... or --answers DIR (a labelled class-folder "
                            "set, predicted and scored), not both")
        paths, labels = labelled_images(Path(settings.answers), classes)
    else:
        paths = list_images(settings.images)
    # Named after what was predicted: other images never overwrite it; scored
    # answers (a label column and a report) never overwrite plain predictions.
    what = (inputs_name([settings.answers]) + "-scored" if settings.answers
            else inputs_name(settings.images))
    out = Path(settings.out or Path("predictions") / f"{ensemble_name(members)}-{what}.csv")
    _writable(out)
    decoded, bad = [], []
    for path in paths:
        image, problem = decode_image(path)
        (bad.append(f"{path} {problem}") if problem else decoded.append(image))
    if bad:
        raise PcamError(f"{len(bad)} image(s) cannot be used: {'; '.join(bad[:SHOW])}"
                        f"{' ...' if len(bad) > SHOW else ''}; remove them or leave them out")
    views = TTA_VIEWS[settings.tta]
    per_run, threshold = [], 0.5
    print(f"{_ensemble_line(members, views, settings.average)}; {len(paths):,} image(s)",
          flush=True)
    for m in members:
        ensemble = load_ensemble(m.run_dir, m.folds)
        info = ensemble[0][1]
        threshold = info.threshold
        tiles, owner = images_as_tiles(decoded, info.tile_size, info.window)
        print(f"run {m.run_dir}: the images as {len(tiles):,} tile(s) of {info.tile_size}x"
              f"{info.tile_size} (an image at least {2 * info.window} px a side: the "
              f"{info.window} px windows that cover it)", flush=True)
        per_run.append(answer_images(
            predict_tiles(ensemble, tiles, views, m.config.augment, _batch_images(settings, m),
                          settings.average), owner, len(decoded), threshold))
        del ensemble
    # predict_tiles combined each run's folds; the runs are combined as combine_runs does.
    probs = (per_run[0].probs if len(per_run) == 1
             else combine([a.probs for a in per_run], settings.average))
    answers = ImageAnswers(probs, per_run[0].tiles,
                           np.mean([a.areas for a in per_run], axis=0))
    threshold, note = ((threshold, "") if len(members) == 1 or len(classes) != 2
                       else ensemble_threshold(members, settings.average))
    table = with_areas(probability_table(paths, probs, classes, threshold), answers, classes)
    return _write_probabilities(table, probs, labels, out, settings, members, threshold,
                                note, start)


def predict_folder_test(settings: PredictSettings) -> dict:
    """Class-folder runs' test/ images (their test stores) -> CSV of class probabilities."""
    start = time.perf_counter()
    members = load_members(settings)
    out = Path(settings.out or Path("predictions") / f"{ensemble_name(members)}-test.csv")
    _writable(out)
    views = TTA_VIEWS[settings.tta]
    print(_ensemble_line(members, views, settings.average), flush=True)
    per_run, index, _ = _predict_test_sets(
        members, settings, views, "folder beside train/; pass --images PATH... (files or "
        "folders) or --answers DIR (labelled class folders)", desc="x{views}")
    probs = combine_runs(per_run, settings.average)
    classes = run_classes(members[0].config)
    if len(members) == 1 or len(classes) != 2:
        # One run's own threshold, in every fold's model.json (0.5 for a model without one).
        model = members[0].run_dir / f"fold_{members[0].folds[-1]}" / "best.keras"
        threshold = (ModelInfo.from_json(info_path(model)).threshold
                     if info_path(model).is_file() else 0.5)
        note = ""
    else:
        threshold, note = ensemble_threshold(members, settings.average)
    table = probability_table(index["id"], probs, classes, threshold)
    labelled = (index["label"] >= 0).all()
    return _write_probabilities(table, probs, index["label"].to_numpy() if labelled else None,
                                out, settings, members, threshold, note, start)


def _writable(out: Path) -> None:
    try:  # fail fast: before minutes of prediction, not after
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PcamError(f"cannot write {out}: {err.strerror}; choose another --out") from None


def _write_probabilities(table, probs, labels, out, settings, members, threshold, note,
                         start) -> dict:
    classes = run_classes(members[0].config)
    binary = len(classes) == 2
    record = {**_runs_record(members, settings), "tta": settings.tta,
              "average": settings.average, "images": len(table), "classes": list(classes),
              "threshold": threshold if binary else None,
              "threshold_note": note if binary else "",
              "model_files": _model_files(members),
              "written": _iso(time.time()), "seconds": round(time.perf_counter() - start, 1),
              "settings": to_dict(settings)}
    if note and binary:
        print(f"note: {note}", flush=True)
    if labels is not None:
        table.insert(2, "label", [classes[k] for k in labels])
    try:
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    except OSError as err:
        raise PcamError(f"cannot write {out}: {err.strerror}; choose another --out") from None
    print(f"predictions: {out} ({len(table):,} images; columns path, predicted, "
          f"{', '.join(classes)})", flush=True)
    if labels is not None:
        from pcam.evaluate import report_predictions
        from pcam.settings import EvaluateSettings

        answers = settings.answers or members[0].config.data.data_dir
        frame = pd.DataFrame({"id": table["path"], "label": np.asarray(labels)})
        frame[prob_columns(classes)] = np.asarray(probs).reshape(len(frame), -1)
        report = out.with_name(out.stem + "-report")
        record["report"] = report_predictions(
            frame, classes, report, f"{Path(answers).name}: labelled test images",
            EvaluateSettings(), threshold=threshold)
    return record
