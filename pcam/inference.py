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
import shlex
import time
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pcam import competition as comp
from pcam import metrics
from pcam.errors import PcamError
from pcam.io import atomic_path, atomic_write_text
from pcam.settings import (AugmentSettings, DataSettings, PredictSettings, RunSettings,
                           from_json, to_dict)

# View k of pcam.augment.dihedral_view: bit 1 flips left-right, bit 2 flips
# up-down, bit 4 transposes. Each TTA size takes a subgroup of D4: {identity},
# {identity, left-right flip}, the four flips-and-180 (Klein four-group), all 8.
TTA_VIEWS = {1: (0,), 2: (0, 1), 4: (0, 1, 2, 3), 8: tuple(range(8))}
VIEW_NAMES = ("identity", "flip left-right", "flip up-down", "rotate 180",
              "transpose", "rotate 90 counter-clockwise", "rotate 90 clockwise",
              "anti-transpose")
SHOW = comp.SHOW  # names an error message lists before "..."


# --- the run and its folds ---------------------------------------------------

def load_run(run: str | Path) -> tuple[Path, RunSettings]:
    """The run folder and the settings it was trained with (its config.json)."""
    run_dir = Path(run)
    config = run_dir / "config.json"
    if not config.is_file():
        hint = ""
        if not run_dir.is_absolute() and (Path("runs") / run_dir / "config.json").is_file():
            hint = f" (did you mean --run {Path('runs') / run_dir}?)"
        raise PcamError(f"{run_dir}: no run here (no config.json){hint}; pass --run with a "
                        f"folder that scripts/train.py wrote, such as runs/NAME")
    try:
        return run_dir, from_json(RunSettings, config)
    except (PcamError, TypeError, ValueError) as err:
        raise PcamError(f"{config} is not a pcam run config ({err})") from None


def finished_folds(run_dir: Path, n_folds: int) -> list[int]:
    """Folds of the run whose training finished (``fold_<k>/metrics.json`` is written last)."""
    return [k for k in range(n_folds) if (run_dir / f"fold_{k}" / "metrics.json").is_file()]


def resolve_folds(run_dir: Path, config: RunSettings, folds: Sequence[int] = ()) -> list[int]:
    """The folds to ensemble: ``folds``, or every finished fold when empty.

    Raises:
        PcamError: the run has no finished fold, or a requested fold does not
            exist or is not finished (the message says how to train it).
    """
    n_folds = config.folds.folds
    done = finished_folds(run_dir, n_folds)
    train = f"python scripts/train.py --run {config.run} --runs-dir {config.runs_dir}"
    if not done:
        raise PcamError(f"run {run_dir} has no finished fold (none of its {n_folds} "
                        f"fold_<k>/ folders has metrics.json): finish training first with "
                        f"the command that started it ({train} ...); it resumes where it stopped")
    if not folds:
        return done
    wrong = sorted({k for k in folds if not 0 <= k < n_folds})
    if wrong:
        raise PcamError(f"--folds {','.join(map(str, wrong))}: run {run_dir} has folds "
                        f"0 to {n_folds - 1}")
    missing = sorted({k for k in folds if k not in done})
    if missing:
        raise PcamError(f"fold(s) {', '.join(map(str, missing))} of run {run_dir} are not finished "
                        f"(finished: {', '.join(map(str, done))}): train them with "
                        f"{train} --fold K ..., or pass --folds {','.join(map(str, done))}")
    return sorted(set(folds))


def load_fold_model(path: Path, remedy: str | None = None):
    """A fold's saved model, ready to predict (no optimizer state is loaded).

    The model carries its preprocessing, resizing and precision policy, so
    any backbone, image size or precision loads the same way; its output
    layer is float32 even under mixed precision.

    Args:
        remedy: what the error message tells the user to do when the file is
            missing or unreadable (default: train that fold again).
    """
    import keras

    import pcam.augment  # noqa: F401 -- registers the custom layers the file may hold
    import pcam.models  # noqa: F401

    remedy = remedy or (f"train that fold again (delete {path.parent} and run the training "
                        "command)")
    if not path.is_file():
        raise PcamError(f"{path}: missing, though its fold finished; {remedy}")
    try:
        model = keras.models.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as err:
        reason = " ".join(str(err).split())[:200]
        raise PcamError(f"cannot load {path} ({reason}); {remedy}") from None
    if model.output_shape[-1] != 1:
        raise PcamError(f"{path} gives {model.output_shape[-1]} outputs per tile; a pcam "
                        f"model gives one probability")
    return model


# --- TTA -------------------------------------------------------------------------

def tta_predictor(model, views: Sequence[int], batch_spec=None):
    """A graph function: uint8 tiles (N, H, W, 3) -> (N,) float32 probabilities,
    each the mean over the dihedral ``views`` (``pcam.augment.dihedral_view``).

    The batch's views go through the model in one call of V*N images, so
    TTA x8 costs the model's compute for 8x the images and nothing more
    (``benchmarks/predict.py``).

    Args:
        batch_spec: the ``tf.TensorSpec`` of the batches (a dataset's
            ``element_spec``), when known: the graph is then traced once
            for every batch size.
    """
    import tensorflow as tf

    from pcam.augment import dihedral_view

    views = tuple(views)
    if not views or any(not 0 <= k < 8 for k in views):
        raise ValueError(f"views must be dihedral view numbers 0..7, got {views}")

    def predict(images):
        n = tf.shape(images)[0]
        stacked = tf.concat([dihedral_view(images, k) for k in views], axis=0)  # view-major
        probs = tf.cast(model(stacked, training=False), tf.float32)
        return tf.reduce_mean(tf.reshape(probs, [len(views), n]), axis=0)

    if batch_spec is not None:
        return tf.function(predict, input_signature=[batch_spec])
    # reduce_retracing: after a second batch size, one graph serves every size.
    return tf.function(predict, reduce_retracing=True)


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
    """Ranks scaled to 0..1 (ties share their mean rank); AUC is unchanged."""
    from scipy.stats import rankdata

    probs = np.asarray(probs, np.float64)
    if len(probs) < 2:
        return np.full(len(probs), 0.5)
    return (rankdata(probs) - 1) / (len(probs) - 1)


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
    if settings.data_dir:  # another folder: its own store/, unless --store-dir says otherwise
        data = dataclasses.replace(data, data_dir=settings.data_dir, store_dir=settings.store_dir)
    elif settings.store_dir:
        data = dataclasses.replace(data, store_dir=settings.store_dir)
    return data


def predict(settings: PredictSettings) -> dict:
    """Predict the test set with a run's folds x TTA views and write the submission.

    Steps: the run and its finished folds; the test tile store (built or
    reused, in sample_submission's order); for each fold, its best model over
    the store with TTA; the folds combined; the submission checked and
    written with its record (``NAME.json``); with ``answers``, the AUC printed.

    Returns:
        The record written beside the submission (settings, folds, views,
        model files, time, the run's config, and the AUC when scored).
    """
    start = time.perf_counter()
    run_dir, config = load_run(settings.run)
    folds = resolve_folds(run_dir, config, settings.folds)
    views = TTA_VIEWS[settings.tta]
    data = data_settings(config, settings)
    out = Path(settings.out or Path("submissions") / f"{run_dir.resolve().name}.csv")
    answers = read_answers(Path(settings.answers)) if settings.answers else None  # fail fast
    try:  # fail fast, too: before minutes of prediction, not after
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PcamError(f"cannot write {out}: {err.strerror}; choose another --out") from None
    batch_images = settings.batch_size or 2 * config.inputs.batch_size
    settings = dataclasses.replace(settings, folds=tuple(folds), batch_size=batch_images,
                                   out=str(out), data_dir=data.data_dir, store_dir=data.store_dir)

    from pcam.store import prepare

    store = prepare(data, splits=("test",))["test"]
    sample = Path(data.data_dir) / comp.TEST_CSV
    print(f"run {run_dir}: fold(s) {', '.join(map(str, folds))} x {len(views)} TTA view(s) "
          f"({', '.join(VIEW_NAMES[k] for k in views)}), {settings.average} over folds; "
          f"{store.n_tiles:,} test tiles, {batch_images} images per model call", flush=True)
    per_fold, model_files = [], []
    for k in folds:
        path = run_dir / f"fold_{k}" / "best.keras"
        model = load_fold_model(path)
        per_fold.append(predict_store(model, store, views, batch_images, config.augment,
                                      desc=f"fold {k} x{len(views)}"))
        stat = path.stat()
        model_files.append({"fold": k, "path": str(path), "bytes": stat.st_size,
                            "modified": _iso(stat.st_mtime)})
        del model

    frame = pd.DataFrame({"id": store.index()["id"].to_numpy(), "label": combine(per_fold, settings.average)})
    record = {
        "run": str(run_dir), "folds": folds, "tta": settings.tta,
        "views": [VIEW_NAMES[k] for k in views], "average": settings.average,
        "batch_images": batch_images, "tiles": len(frame), "model_files": model_files,
        "sample_submission": str(sample), "written": _iso(time.time()),
        "seconds": round(time.perf_counter() - start, 1),
        "settings": to_dict(settings), "data": to_dict(data), "run_config": to_dict(config),
    }
    scored = None
    if answers is not None:
        scored = score(frame, answers)
        record["answers"] = {"path": settings.answers, "auc": _json_float(scored[0]),
                             "tiles": scored[1]}
    try:
        write_submission(frame, out, sample, record)
    except PcamError as err:
        bad = store.manifest.get("bad_tiles", 0)
        if bad:  # the likely cause: tiles left out of the store with --skip-bad
            raise PcamError(f"{err} (the test store left out {bad} unreadable tile(s), "
                            f"listed in {store.path / 'bad_tiles.csv'}: a submission needs "
                            f"every test tile)") from None
        raise
    print(f"submission: {out} ({len(frame):,} rows, checked against {sample})", flush=True)
    print(f"settings:   {out.with_suffix('.json')}", flush=True)
    if scored is not None:
        auc, n = scored
        print(f"AUC on {settings.answers}: {auc:.4f} ({n:,} of {len(frame):,} tiles)", flush=True)
    print(f"submit it: python scripts/submit.py {shlex.quote(str(out))} -m \"...\"", flush=True)
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
