"""Keras checkpoint callbacks that write atomically and resume from what they can read.

Keras' ``ModelCheckpoint`` and ``BackupAndRestore`` write ``best.keras`` and
``latest.weights.h5`` at their final paths: a process killed while writing
leaves a truncated file, and every later run then fails reading it. These
subclasses write under a temporary name in the same folder (the
``.NAME.tmp-PID`` pattern of ``pcam.io``, with the extension Keras wants
kept last) and rename it into place, so a reader sees the old file or the
whole new one. A backup that cannot be read is set aside with a warning and
its phase starts again from the fold's best model instead of failing.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import sys
import warnings
from pathlib import Path

import keras

from pcam.errors import PcamError
from pcam.io import temporary_name


def keras_temporary(path: Path) -> Path:
    """A temporary name beside ``path`` that keeps the extension Keras checks.

    ``model.save`` wants ``.keras``, ``save_weights`` wants ``.weights.h5``.
    """
    path = Path(path)
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix
    return temporary_name(path).with_name(temporary_name(path).name + suffix)


def _fsync(path: Path) -> None:
    # The rename is atomic; fsync first so that after a power cut the new name
    # does not point at blocks that were never written.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(tmp: Path, final: Path) -> None:
    _fsync(tmp)
    os.replace(tmp, final)


def _close_h5(path: Path) -> None:
    """Close h5py's handles on ``path`` left open by a write that failed.

    On a full disk Keras' ``save_weights`` raises with its h5py file still
    open, kept alive by the traceback; h5py then closes it while the
    interpreter exits, the flush fails again and the process segfaulted
    (exit 139). Closed here, nothing is left for the exit.
    """
    try:
        import h5py
    except ImportError:  # Keras without h5py writes no h5 file
        return
    target = os.fsencode(os.path.abspath(path))
    for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            if os.path.abspath(fid.name) == target:
                # HDF5 flushes on close and cannot close what it cannot flush:
                # give the half-written file's blocks back first (it is deleted
                # anyway), so that the flush of a few KiB fits.
                os.truncate(path, 0)
                fid.close()
        except Exception:  # best effort: the write has failed already
            pass


def _unwritable(path: Path, err: OSError) -> PcamError:
    """The one-line error of a checkpoint that cannot be written."""
    # h5py's strerror is its whole many-line report: say what the errno means instead.
    found = re.search(r"errno = (\d+)", str(err))
    errno = err.errno or (int(found[1]) if found else None)
    why = os.strerror(errno) if errno else str(err).splitlines()[0]
    return PcamError(f"cannot write {path}: {why}; free space or fix the "
                     "folder's permissions, then run the same command again to resume")


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` for one fixed file path, written atomically."""

    def _save_model(self, epoch, batch, logs):
        final = Path(self.filepath)
        tmp = keras_temporary(final)
        self.filepath = str(tmp)
        try:
            super()._save_model(epoch, batch, logs)
            if tmp.exists():  # absent when this epoch was not an improvement
                _replace(tmp, final)
        except OSError as err:
            _close_h5(tmp)
            raise _unwritable(final, err) from None
        finally:
            self.filepath = str(final)
            tmp.unlink(missing_ok=True)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backup is written atomically and whose
    unreadable backup restarts the phase instead of failing.

    ``restart``: called with the model when the backup cannot be read, after
    the model's own weights are put back; it loads the fold's best model so
    far (or leaves the fresh weights when there is none).
    """

    def __init__(self, backup_dir, restart=None):
        super().__init__(backup_dir)
        self._restart = restart

    def _save_model(self):
        # Weights first, then the epoch number: killed between the two renames,
        # the backup holds epoch N+1's weights under epoch N's number, and the
        # resumed phase trains one epoch more than it would have, never one less.
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = Path(self._weights_path)
        metadata = Path(self._training_metadata_path)
        tmp_weights = keras_temporary(weights)
        tmp_metadata = keras_temporary(metadata)
        try:
            self.model.save_weights(str(tmp_weights), overwrite=True)
            _replace(tmp_weights, weights)
            tmp_metadata.write_text(json.dumps({"epoch": self._current_epoch,
                                                "batch": self._last_batch_seen}))
            _replace(tmp_metadata, metadata)
        except OSError as err:
            _close_h5(tmp_weights)
            raise _unwritable(weights, err) from None
        finally:
            tmp_weights.unlink(missing_ok=True)
            tmp_metadata.unlink(missing_ok=True)

    restored = False  # whether on_train_begin loaded a backup

    def on_train_begin(self, logs=None):
        self.restored = False
        if not Path(self._weights_path).exists() and not Path(self._training_metadata_path).exists():
            return
        # A load that fails half-way may have changed some variables: keep the
        # values to put back.
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        saved = [(v, v.numpy()) for v in self.model.variables
                 + (list(self.model.optimizer.variables) if self.model.optimizer else [])]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._load_model()
        except Exception as err:  # h5py raises OSError, RuntimeError, KeyError...
            for variable, value in saved:
                variable.assign(value)
            self.model._initial_epoch = 0
            aside = set_aside(Path(self.backup_dir))
            print(f"warning: the backup {self._weights_path} cannot be read "
                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                  f"moved to {aside}, the phase starts again from the fold's best model",
                  file=sys.stderr, flush=True)
            if self._restart is not None:
                self._restart(self.model)
        else:
            self.restored = True


class EMASwap(keras.callbacks.SwapEMAWeights):
    """``SwapEMAWeights(swap_on_epoch=True)`` for a phase whose backup is taken
    after the swap.

    The swap leaves the averaged weights in the model, and the raw weights in
    the optimizer's average slots, from the end of an epoch to the start of
    the next; the backup (last in the callback list, after the checkpoint
    and the log) saves them so. A phase resumed from that backup starts with
    them still exchanged, while a new ``SwapEMAWeights`` believes the raw
    weights are in the model: it would train on from the averages and
    average the raw weights. Told that the backup was restored, this one
    swaps them back before the first epoch.

    Args:
        backup: the phase's ``AtomicBackupAndRestore``.
    """

    def __init__(self, backup: AtomicBackupAndRestore):
        super().__init__(swap_on_epoch=True)
        self._backup = backup

    def on_train_begin(self, logs=None):
        self._ema_weights_in_model = False

    def on_epoch_begin(self, epoch, logs=None):
        # The backup's on_train_begin has run by now (every callback's does
        # before the first epoch), whatever the list order.
        if self._backup.restored:
            self._backup.restored = False
            self._ema_weights_in_model = True
        super().on_epoch_begin(epoch, logs)


def set_aside(folder: Path) -> Path:
    """Rename ``folder`` to ``folder.unreadable-TIMESTAMP`` and return the new name."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    aside = folder.with_name(f"{folder.name}.unreadable-{stamp}")
    os.replace(folder, aside)
    return aside


def load_weights(model, path: Path, fold_dir: Path) -> None:
    """Load ``path`` into ``model``; a file that cannot be read is a PcamError
    saying which and what to do (Keras' own error is a zipfile traceback)."""
    with warnings.catch_warnings():
        # The file also holds the optimizer state of the phase that saved it; a
        # new phase compiles a fresh optimizer, so Keras' warning that it skips
        # those variables is expected.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        try:
            model.load_weights(path)
        except Exception as err:  # zipfile, h5py and Keras each raise their own
            raise PcamError(
                f"{path} cannot be read ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else 'no detail'}); the fold's best "
                f"model is lost: delete {fold_dir} and run the same command again to "
                "train that fold anew") from None
