"""Training: two phases as data, folds as independent ``run_fold`` calls, resume.

A run lives in ``RUNS_DIR/RUN/``::

    config.json                 the resolved settings (RunSettings)
    folds.csv                   id, label, fold
    fold_<k>/best.keras         best model of the fold by validation AUC (both phases)
    fold_<k>/model.json         its classes, tile size, threshold... (pcam.runs.ModelInfo)
    fold_<k>/history_<phase>.csv
    fold_<k>/oof.csv            id, label, fold, probabilities: out-of-fold predictions
    fold_<k>/metrics.json       written last: its presence means "fold finished"
    cv.json                     per-fold AUC, mean ± std, OOF AUC
    report/index.html           the evaluation report: written after training by the
                                command (pcam.report.evaluate.report_run), not here

Started again with the same command, a run skips finished folds and phases
and continues an unfinished phase from its last finished epoch
(``keras.callbacks.BackupAndRestore``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pcam import __version__, calibration, locks, metrics, places, runs, task
from pcam.config import write_config
from pcam.data.augment import on_model
from pcam.data.folds import assign_folds, check_folds, class_weights, load_or_assign, subset
from pcam.data.pipeline import eval_dataset, train_dataset
from pcam.data.sources import Source, read_source
from pcam.data.store import Store, is_current, open_store, prepare
from pcam.errors import PcamError
from pcam.io import (atomic_write_json, atomic_write_text, cannot_write, check_writable,
                     remove_stale_temporaries)
from pcam.models.freeze import count_trainable_weights, set_backbone_trainable
from pcam.models.registry import create_model, default_image_size, get_backbone
from pcam.models.saved import load_fold_model
from pcam.predict.tta import TTA_VIEWS, predict_batches, tta_predictor
from pcam.runs import FoldDir, ModelInfo, RunDir
from pcam.settings import (DataSettings, RunSettings, TrainSettings, changed_on_resume, from_dict,
                           from_json, to_dict, to_json)
from pcam.train import checkpoints, distribute
from pcam.train.preflight import check_crop, check_fold, check_run, small_data_warning


@dataclass(frozen=True)
class Phase:
    """One training phase: which backbone layers learn, at what rate, how long.

    ``trainable``: False freezes the backbone; True unfreezes it all; an int
    N unfreezes its top N layers.
    """

    name: str
    trainable: bool | int
    lr: float
    epochs: int


def phases(train: TrainSettings) -> list[Phase]:
    """The recipe: train the head on a frozen backbone, then fine-tune."""
    frozen, finetune = runs.PHASES
    return [Phase(frozen, False, train.lr_frozen, train.epochs_frozen),
            Phase(finetune, train.unfreeze or True, train.lr_finetune, train.epochs_finetune)]


def run_cv(settings: RunSettings, folds: pd.DataFrame | None = None,
           source: Source | None = None, callbacks=()) -> dict | None:
    """Train the folds of a run (all, or ``settings.fold``), then summarise them.

    Training writes the run and nothing else: the commands write its report
    (``pcam.report.evaluate.report_run``) when this returns a summary.

    Args:
        settings: the run's settings.
        folds: the folds to use (id, label, fold), as a run's ``folds.csv``
            holds them, instead of assigning new ones: a comparison
            (``pcam.train.compare``) hands every backbone's run the same folds. A
            run started earlier keeps its own ``folds.csv``.
        source: the source as ``pcam.train.preflight.check_run`` scanned and checked
            it (the command does that before TensorFlow loads); None: scan it here.
        callbacks: extra Keras callbacks for every phase of every fold (a
            search's pruner, ``pcam.train.tune``).

    Returns:
        The CV summary once every fold is finished, else None.
    """
    if not settings.run:
        settings = dataclasses.replace(settings, run=places.default_run_name(
            settings.data.data_dir, to_dict(settings)))
    k_all = settings.folds.folds
    # The strategy comes first: a multi-worker strategy must exist before any
    # other TensorFlow op runs.
    distribute.configure(settings.device, settings.folds.seed)
    strategy = distribute.make_strategy(settings.device.strategy)
    chief = distribute.is_chief(strategy)
    if chief:  # a run attached read-only (a Kaggle input) resumes in a copy
        copy = places.writable_run(settings.run_dir, Path(settings.runs_dir))
        if copy != settings.run_dir:
            settings = dataclasses.replace(settings, run=copy.name,
                                           runs_dir=str(copy.parent))
    run_dir = settings.run_dir
    store = _train_store(settings, strategy, source)
    settings = resolve(settings, store)
    # Locks (pcam.locks), taken by the chief only: other workers write nothing
    # of the run. The run's own lock is held briefly (settings and folds, then
    # the summary), so processes training other folds of it (--fold K on
    # several machines) wait their turn; a fold's lock is held while it trains,
    # and a second process on the same fold is refused.
    if chief:
        with _run_lock(run_dir):
            folds = _check_or_write_config(settings, run_dir, store, folds)
            remove_stale_temporaries(run_dir)
        places.mark_latest(run_dir)
    elif folds is None:  # the same seeded folds as the chief's, nothing written
        folds = assign_folds(subset(store.index(), settings.folds.max_tiles, settings.folds.seed),
                             settings.folds, store.classes)
    for k in range(k_all) if settings.fold == -1 else [settings.fold]:
        _train_fold_once(settings, k, store, folds, strategy, chief, callbacks)
    if not chief:
        return None
    with _run_lock(run_dir):
        return summarise(run_dir, k_all)


def _train_store(settings: RunSettings, strategy, source: Source | None) -> Store:
    """The run's train store: built here, or, for several workers, beforehand."""
    if distribute.is_multi_worker(strategy):
        check_fold(settings)
        store = _built_store(settings.data)
    else:
        source = source or check_run(settings)
        store = prepare(settings.data, splits=("train",), source=source)["train"]
    check_crop(settings, store.tile_size)
    return store


def _train_fold_once(settings: RunSettings, k: int, store: Store, folds: pd.DataFrame,
                     strategy, chief: bool, callbacks=()) -> None:
    """Train fold ``k`` unless it is finished, under its lock (the chief's)."""
    fold = RunDir(settings.run_dir).fold(k)
    with (locks.exclusive(fold.path, f"fold {k} of run {settings.run_dir}") if chief
          else contextlib.nullcontext()):
        if fold.finished:  # checked under the lock: maybe just finished
            print(f"fold {k}: finished earlier, skipped", flush=True)
            return
        if chief:  # temporary files of killed processes
            for folder in [fold.path, *fold.path.glob(fold.backup("*").name)]:
                remove_stale_temporaries(folder)
        run_fold(settings, k, store, folds, strategy, callbacks)


def resolve(settings: RunSettings, store: Store) -> RunSettings:
    """``settings`` with the dataset's facts as the store recorded them (classes,
    positive class, tile size, microns per pixel unless ``--mpp`` said) and the
    backbone's input size made explicit (0: ``pcam.models.registry.default_image_size``):
    what the run's config.json keeps, so that every later step reads them from there."""
    # The store's folder is recorded as a full path: a later command, started
    # from another folder, finds the same store (the default is relative to the
    # working folder, pcam.places.default_store).
    data = dataclasses.replace(settings.data, source=store.manifest["kind"],
                               classes=store.classes, positive=store.manifest["positive"],
                               tile_size=store.tile_size, mpp=settings.data.mpp or store.mpp,
                               store_dir=str(Path(store.path).parent.resolve()))
    fed = settings.augment.centre_crop or store.tile_size
    m = settings.model
    model = dataclasses.replace(
        m, image_size=m.image_size or default_image_size(m.backbone, fed, m.weights))
    return dataclasses.replace(settings, data=data, model=model)


def _built_store(data: DataSettings) -> Store:
    """The train store of a multi-worker run, which must be built beforehand:
    workers that each found it missing would all build it at once."""
    source = read_source(data)
    path = data.store_path / "train"
    if not is_current(source.train, source, path):
        raise PcamError(f"a multi-worker run reads a tile store built beforehand, and {path} is "
                        f"missing or out of date: run python scripts/prepare.py --data-dir "
                        f"{data.data_dir} first, where every worker can read it")
    return open_store(path)


def _run_lock(run_dir: Path):
    """The run's lock, in a run folder made here if need be; waits for its holder."""
    check_writable(run_dir / "config.json", "--runs-dir")
    return locks.exclusive(run_dir, f"run {run_dir}", wait=True)


def _check_or_write_config(settings: RunSettings, run_dir: Path, store: Store,
                           handed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Check a resumed run's settings, or check a new run's and write them.

    A run whose first epoch has not finished (a command refused, or stopped
    early) takes the new settings: nothing trained depends on the old ones.
    Everything that could refuse the command is checked before anything is
    written, so a refused command never ties its run name to its settings.

    Args:
        handed: folds to write instead of assigning new ones (see ``run_cv``).

    Returns:
        The run's folds (id, label, fold).
    """
    config = RunDir(run_dir).config
    if config.is_file():
        try:
            saved = to_dict(from_json(RunSettings, config))
        except (PcamError, TypeError, json.JSONDecodeError) as err:
            raise PcamError(f"{config} is not a pcam config ({err}); use a new --run") from None
        if _started(run_dir):
            _refuse_changes(settings, saved, run_dir)
            if not RunDir(run_dir).config_toml.is_file():  # a run made before config.toml
                with contextlib.suppress(OSError):
                    write_config(from_dict(RunSettings, saved), RunDir(run_dir).config_toml)
            return load_or_assign(RunDir(run_dir).folds, store.index(), settings.folds,
                                  store.classes)
    _check_model(settings, store)
    if handed is not None:
        folds = check_folds(handed, store.index(), settings.folds.folds,
                            f"the folds handed to run {settings.run_dir}",
                            "start a new comparison", "use the comparison's --folds")
    else:
        folds = assign_folds(subset(store.index(), settings.folds.max_tiles,
                                    settings.folds.seed), settings.folds, store.classes)
    try:
        to_json(settings, config)
        write_config(settings, RunDir(run_dir).config_toml)  # for --config: the same recipe
        atomic_write_text(RunDir(run_dir).folds, folds.to_csv(index=False))
    except OSError as err:
        raise cannot_write(run_dir, err, "--runs-dir") from None
    return folds


def _started(run_dir: Path) -> bool:
    """Whether any epoch of the run has finished (a logged row or a best model),
    or another process is training one of its folds now (with these settings)."""
    return any(FoldDir(fold_dir).started or locks.busy(fold_dir)
               for fold_dir in run_dir.glob(RunDir(run_dir).fold("*").path.name))


def weights_note(settings: RunSettings) -> str | None:
    """The line that tells a user of ``--weights imagenet`` (the default for every
    backbone) that this backbone has none and starts from random weights; None
    when the weights are what they say."""
    m = settings.model
    if m.weights != "imagenet" or get_backbone(m.backbone).pretrained:
        return None
    frozen = (f"; phase 1 ({settings.train.epochs_frozen} epochs) would train the head on a "
              "frozen random backbone: --epochs-frozen 0 skips it"
              if settings.train.epochs_frozen else "")
    return (f"note: {m.backbone} has no ImageNet weights in Keras: it starts from random "
            f"weights (as --weights none){frozen}")


def _check_model(settings: RunSettings, store: Store) -> None:
    """Build the model once, outside any strategy, to refuse what would fail
    later: an unknown backbone, an image size it cannot take, a missing
    weights file, ImageNet weights that cannot be fetched, --unfreeze N of
    a backbone with fewer blocks."""
    m = settings.model
    note = weights_note(settings)
    if note:
        print(note, flush=True)
    model = create_model(m.backbone, num_classes=len(store.classes), image_size=m.image_size,
                         tile_size=settings.augment.centre_crop or store.tile_size,
                         weights=m.weights, dense_units=m.dense_units, dropout=m.dropout)
    set_backbone_trainable(model, phases(settings.train)[-1].trainable)
    del model


def _refuse_changes(settings: RunSettings, saved: dict, run_dir: Path) -> None:
    """Refuse settings that differ from a started run's in what is trained."""
    changed = changed_on_resume(settings, saved)
    if changed:
        raise PcamError(f"run {run_dir} was started with other settings ({', '.join(changed)}); "
                        "resume it with the same settings or choose a new --run")


def split_positions(store: Store, folds: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Store positions of fold k's training and validation tiles."""
    position = pd.Series(np.arange(store.n_tiles), index=store.index()["id"])
    train = position[folds.loc[folds["fold"] != k, "id"]].to_numpy()
    val = position[folds.loc[folds["fold"] == k, "id"]].to_numpy()
    return np.sort(train), np.sort(val)


def run_fold(settings: RunSettings, k: int, store: Store, folds: pd.DataFrame,
             strategy: tf.distribute.Strategy, callbacks=()) -> dict:
    """Train fold ``k`` through every phase; write its OOF predictions and metrics.

    ``callbacks``: extra Keras callbacks, given to every phase's ``fit``.
    """
    keras.utils.set_random_seed(settings.folds.seed + k)
    chief = distribute.is_chief(strategy)
    multi_worker = distribute.is_multi_worker(strategy)
    # Non-chief workers of a multi-worker run write to a scratch folder: only
    # the chief's files are the run's.
    fold_dir = RunDir(settings.run_dir).fold(k).path if chief else Path(tempfile.mkdtemp())
    fold_dir.mkdir(parents=True, exist_ok=True)
    train_pos, val_pos = split_positions(store, folds, k)
    replicas = strategy.num_replicas_in_sync
    inputs = dataclasses.replace(settings.inputs,
                                 batch_size=settings.inputs.batch_size * replicas)
    train_ds, val_ds, model_augment = _datasets(settings, store, (train_pos, val_pos), inputs,
                                                strategy, k)
    labels = store.index()["label"].to_numpy()
    weights = class_weights(labels[train_pos]) if settings.folds.balance == "weights" else None
    num_classes = len(store.classes)
    steps = max(1, len(train_pos) // inputs.batch_size)
    print(f"fold {k}: {len(train_pos):,} train / {len(val_pos):,} validation tiles, "
          f"{replicas} replica(s), global batch {inputs.batch_size}", flush=True)
    if warning := small_data_warning(len(train_pos), inputs.batch_size):
        print(warning, flush=True)

    model = _new_model(settings, num_classes, store.tile_size, model_augment, strategy)
    # BatchNorm keeps its pretrained statistics when fine-tuning (see
    # set_backbone_trainable); a backbone from random weights has none to keep.
    pretrained = (settings.model.weights != "none"
                  and get_backbone(settings.model.backbone).pretrained)
    best = FoldDir(fold_dir).model
    for phase in phases(settings.train):
        done = FoldDir(fold_dir).done(phase.name)
        if best.is_file():
            checkpoints.load_weights(model, best, fold_dir)  # hand-over: each phase starts from the best so far
        if done.is_file() or phase.epochs == 0:
            continue
        with strategy.scope():
            set_backbone_trainable(model, phase.trainable, freeze_batchnorm=pretrained)
            _compile(model, phase, settings, steps, num_classes)
        print(f"fold {k}, phase {phase.name}: {phase.epochs} epoch(s), lr {phase.lr:g}, "
              f"{count_trainable_weights(model):,} trainable weights", flush=True)
        # A repeated stream with a fixed epoch length: Keras then never meets the
        # end of the data mid-epoch, and a resumed phase knows its steps.
        model.fit(train_ds.repeat(), steps_per_epoch=steps, validation_data=val_ds,
                  validation_steps=math.ceil(len(val_pos) / inputs.batch_size),
                  epochs=phase.epochs, class_weight=weights, shuffle=False,
                  callbacks=_callbacks(phase, settings.train, fold_dir, best_auc(fold_dir),
                                       backup=not multi_worker) + list(callbacks),
                  verbose=_verbosity(chief))
        done.touch()
    if multi_worker and not chief:
        return {}
    return _finish_fold(_best_model(model, best, fold_dir, multi_worker), store, val_pos, k,
                        fold_dir, inputs, settings)


def _best_model(model, best: Path, fold_dir: Path, multi_worker: bool):
    """The fold's best model, to predict its validation tiles."""
    if multi_worker:
        # Keras' predict under a multi-worker strategy gathers every worker's
        # predictions, and each worker reads the whole validation set: twice
        # the rows. The chief predicts alone, with the saved model outside the strategy.
        return load_fold_model(best)
    if best.is_file():
        checkpoints.load_weights(model, best, fold_dir)
    return model


def _datasets(settings: RunSettings, store: Store, positions: tuple, inputs, strategy, k: int):
    """Fold ``k``'s training and validation datasets, and the augmentation layers that
    run in the model instead (on an accelerator: ``pcam.data.augment.on_model``)."""
    train_pos, val_pos = positions
    pipeline_augment, model_augment = on_model(settings.augment,
                                               distribute.has_accelerator(strategy))
    train_ds = train_dataset(store, train_pos, inputs, pipeline_augment,
                             seed=settings.folds.seed + k, balance=settings.folds.balance,
                             worker=distribute.worker(strategy))
    return train_ds, eval_dataset(store, val_pos, inputs, settings.augment), model_augment


def _new_model(settings: RunSettings, num_classes: int, tile_size: int, augment, strategy):
    m = settings.model
    with strategy.scope():
        # With --centre-crop the pipeline feeds N x N crops (see augment.eval_ops).
        return create_model(m.backbone, num_classes=num_classes, image_size=m.image_size,
                            tile_size=settings.augment.centre_crop or tile_size,
                            augment=augment, weights=m.weights, dense_units=m.dense_units,
                            dropout=m.dropout)


def _verbosity(chief: bool) -> int:
    """Keras' progress: a live bar on a terminal, one line per epoch in a log
    file (the bar's redraws fill logs with escape codes), none off the chief."""
    if not chief:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _compile(model, phase: Phase, settings: RunSettings, steps: int, num_classes: int) -> None:
    lr = phase.lr
    if phase.trainable is not False and settings.train.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(phase.lr, decay_steps=steps * phase.epochs)
    model.compile(
        optimizer=keras.optimizers.Adam(lr, use_ema=settings.train.ema,
                                        ema_momentum=settings.train.ema_momentum),
        loss=task.loss(num_classes, settings.train.label_smoothing),
        metrics=task.metrics(num_classes),
        jit_compile=settings.device.jit,
        steps_per_execution=settings.device.steps_per_execution)


def best_auc(fold_dir: Path) -> float | None:
    """The best validation AUC logged in any phase of this fold so far."""
    history = runs.read_history(fold_dir)
    if history.empty or "val_auc" not in history:
        return None
    best = history["val_auc"].max()
    return None if math.isnan(best) else float(best)


def _warm_up(phase: Phase, train: TrainSettings) -> int:
    """Epochs of a phase before early stopping watches it: half of a cosine phase."""
    cosine = phase.trainable is not False and train.schedule == "cosine"
    return phase.epochs // 2 if cosine else 0


def _callbacks(phase: Phase, train: TrainSettings, fold_dir: Path, best_so_far,
               backup: bool = True) -> list:
    """The phase's callbacks. ``backup=False`` (multi-worker runs): no
    BackupAndRestore, whose backups would live in each worker's own scratch
    folder and restore different epochs; a killed fold then restarts.

    With ``train.ema`` the averaged weights are swapped into the model at the
    end of every epoch (``checkpoints.EMASwap``), before the checkpoint saves
    them; validation, which picks the best epoch, swaps them in too. Keras
    calls ``on_epoch_end`` in list order, so the swap comes first.
    """
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if train.ema else []
    callbacks += [
        # Before the CSV logger: it adds the epoch's seconds to the logs the
        # logger writes (a comparison reports training time per epoch from them).
        EpochSeconds(FoldDir(fold_dir).history(phase.name)),
        # Best model over both phases: phase 2 only overwrites phase 1's best
        # when it beats it, and a resumed phase remembers the best so far.
        # Written under a temporary name and renamed (pcam.train.checkpoints): a process
        # killed mid-write never leaves a truncated best.keras.
        checkpoints.AtomicModelCheckpoint(FoldDir(fold_dir).model, monitor=task.MONITOR,
                                          mode="max", save_best_only=True,
                                          initial_value_threshold=best_so_far),
        # Under cosine decay the first half of a phase runs at a high learning
        # rate and validation AUC swings: the CPU recipe's read 0.882, 0.874,
        # 0.840, 0.881 over epochs 1-4 of 12 while training AUC rose from 0.87
        # to 0.91, and patience 3 ended the run there. Early stopping watches
        # the second half; the checkpoint above keeps the best of every epoch.
        keras.callbacks.EarlyStopping(monitor=task.MONITOR, mode="max", patience=train.patience,
                                      restore_best_weights=False,
                                      start_from_epoch=_warm_up(phase, train)),
        keras.callbacks.CSVLogger(FoldDir(fold_dir).history(phase.name), append=True),
    ]
    if backup:
        best = FoldDir(fold_dir).model

        def restart(model):  # an unreadable backup: the phase starts from the best so far
            if best.is_file():
                checkpoints.load_weights(model, best, fold_dir)

        callbacks.append(checkpoints.AtomicBackupAndRestore(FoldDir(fold_dir).backup(phase.name),
                                                            restart=restart))
        if train.ema:  # the backup, taken last, holds the averaged weights in the model
            callbacks[0] = checkpoints.EMASwap(callbacks[-1])
    if phase.trainable is not False and train.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=task.MONITOR, mode="max",
                                                           factor=0.5, patience=1))
    if train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(fold_dir / "tensorboard"))
    return callbacks


class EpochSeconds(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of the epoch: its training steps and
    its validation pass) to the epoch's logs, so that ``history_<phase>.csv``
    records how long each epoch took on the machine that trained it.

    A phase resumed from a log written without that column (by an older
    pcam) is left without it: the CSV logger appends under the old header.
    """

    def __init__(self, log: Path):
        super().__init__()
        header = log.read_text().partition("\n")[0] if log.is_file() else ""
        self._on = not header or "epoch_seconds" in header.split(",")
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self._on and logs is not None and self._start is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


def _finish_fold(model, store, val_pos, k, fold_dir, inputs, settings) -> dict:
    """Predict the fold's validation tiles; write model.json, oof.csv and,
    last, metrics.json (its presence marks the fold finished)."""
    classes = store.classes
    # With the test-time views predict.py uses by default: the threshold chosen
    # on these predictions is then applied to predictions made the same way.
    views = TTA_VIEWS[settings.train.oof_tta]
    ds = eval_dataset(store, val_pos, dataclasses.replace(
        inputs, batch_size=max(1, inputs.batch_size // len(views))), settings.augment)
    ds = ds.map(_images_only)
    probs = predict_batches(tta_predictor(model, views, ds.element_spec), ds)
    index = store.index().iloc[val_pos]
    oof = pd.DataFrame({"id": index["id"].to_numpy(), "label": index["label"].to_numpy(),
                        "fold": k})
    oof[runs.prob_columns(classes)] = task.Task(classes).file_columns(probs)
    model_info(settings, store).to_json(FoldDir(fold_dir).info)
    atomic_write_text(FoldDir(fold_dir).oof, oof.to_csv(index=False))
    result = metrics.task_metrics(oof["label"], probs, classes)
    atomic_write_json(FoldDir(fold_dir).metrics, result)
    print(f"fold {k}: validation {task.Task(classes).metric} "
          f"{result['auc']:.4f}", flush=True)
    return result


def model_info(settings: RunSettings, store: Store, threshold: float = 0.5) -> ModelInfo:
    """What a fold's model needs besides itself, from the run's settings and its store."""
    return ModelInfo(classes=store.classes, positive=store.manifest["positive"],
                     tile_size=store.tile_size, centre_crop=settings.augment.centre_crop,
                     label_region=store.label_region,
                     backbone=settings.model.backbone, image_size=settings.model.image_size,
                     threshold=threshold, pcam_version=__version__,
                     source_side=int(store.manifest.get("source_side", 0)),
                     mpp=settings.data.mpp or store.mpp)


@tf.autograph.experimental.do_not_convert
def _images_only(images, labels):
    # Nothing for AutoGraph to convert, and converting reads the source file
    # (a lambda sharing its line with another could not be read; a file edited
    # while training runs gives it the wrong lines).
    return images


def summarise(run_dir: Path, k_all: int) -> dict | None:
    """CV summary of a run (printed and saved as cv.json) once all folds are finished.

    It fits the run's temperature on the pooled out-of-fold predictions
    (``pcam.calibration``) and, for two classes, chooses the decision threshold
    on them calibrated (Youden's J); both go into every fold's model.json, so
    that a model used on its own answers as the report does.
    """
    done = runs.finished_folds(run_dir, k_all)
    if len(done) < k_all:
        print(f"{len(done)} of {k_all} folds finished; the CV summary comes when all are",
              flush=True)
        return None
    _, config = runs.load_run(run_dir)
    classes = runs.run_classes(config)
    finished = {k: json.loads(RunDir(run_dir).fold(k).metrics.read_text()) for k in done}
    oof = runs.read_oof(run_dir, done)
    probs = runs.probabilities(oof, classes)
    summary = metrics.cv_summary(finished, oof["label"], probs, classes)
    temperature = calibration.fit_temperature(oof["label"], probs)
    calibrated = calibration.apply_temperature(probs, temperature)
    summary["calibration"] = {
        "temperature": temperature,
        "before": calibration.calibration_metrics(oof["label"], probs),
        "after": calibration.calibration_metrics(oof["label"], calibrated)}
    facts = {"temperature": temperature}
    if len(classes) == 2:
        facts["threshold"] = summary["threshold"] = metrics.choose_threshold(oof["label"],
                                                                             calibrated)
    for k in done:
        path = RunDir(run_dir).fold(k).info
        if path.is_file():
            info = ModelInfo.from_json(path)
            ModelInfo(**{**dataclasses.asdict(info), **facts}).to_json(path)
    atomic_write_json(RunDir(run_dir).cv, summary)
    print(metrics.format_cv(summary), flush=True)
    cal = summary["calibration"]
    print(f"calibration: temperature {temperature:.3f} fitted on the out-of-fold predictions; "
          f"ECE {cal['before']['ece']:.4f} -> {cal['after']['ece']:.4f}, log-loss "
          f"{cal['before']['log_loss']:.4f} -> {cal['after']['log_loss']:.4f}", flush=True)
    return summary
