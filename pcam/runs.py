"""Run directories: finding a run's folds, its models and what they predicted.

Training writes a run, and evaluation, prediction, explanation, comparison
and the app read it, all through this module::

    RUN/config.json               the resolved settings (RunSettings), classes included
    RUN/config.toml               the same, as a file --config takes (pcam.config)
    RUN/folds.csv                 id, label, fold
    RUN/fold_<k>/best.keras       the fold's best model
    RUN/fold_<k>/model.json       what the model needs besides itself (ModelInfo)
    RUN/fold_<k>/history_<phase>.csv
    RUN/fold_<k>/oof.csv          id, label, fold, then the probabilities (``prob_columns``)
    RUN/fold_<k>/metrics.json     written last: its presence means "fold finished"

Nothing here imports TensorFlow at module level, so reports start quickly.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pcam import places
from pcam.errors import PcamError
from pcam.io import atomic_write_json, read_csv_log
from pcam.settings import RunSettings, from_json
from pcam.task import Task

PHASES = ("frozen", "finetune")  # training order; names of history_<phase>.csv
FOLDS = "folds.csv"  # a run's (or a comparison's) folds: id, label, fold
# Runs and stores made before datasets carried their classes were PCam's.
LEGACY_CLASSES = ("normal", "tumour")
LEGACY_REGION = 32


@dataclass(frozen=True)
class FoldDir:
    """One fold's folder of a run (``RUN/fold_<k>/``): the name of every file in it."""

    path: Path

    @property
    def model(self) -> Path:
        return self.path / "best.keras"  # the fold's best model by validation AUC

    @property
    def info(self) -> Path:
        return info_path(self.model)

    @property
    def oof(self) -> Path:
        return self.path / "oof.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"  # written last: its presence means "finished"

    @property
    def finished(self) -> bool:
        return self.metrics.is_file()

    def history(self, phase: str) -> Path:
        return self.path / f"history_{phase}.csv"

    def done(self, phase: str) -> Path:
        return self.path / f"{phase}.done"  # the phase finished: a resumed fold skips it

    def backup(self, phase: str) -> Path:
        return self.path / f"backup_{phase}"  # the phase's last epoch, to resume from

    @property
    def started(self) -> bool:
        """Whether an epoch of it has finished (a best model or a logged row)."""
        return (self.model.exists() or self.metrics.exists()
                or any(len(read_csv_log(p)) for p in self.path.glob(self.history("*").name)))


@dataclass(frozen=True)
class RunDir:
    """A run's folder (``RUNS_DIR/RUN/``): the name of every file in it but its folds'."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def config_toml(self) -> Path:
        return self.path / "config.toml"

    @property
    def folds(self) -> Path:
        return self.path / FOLDS

    @property
    def cv(self) -> Path:
        return self.path / "cv.json"

    @property
    def report(self) -> Path:
        return self.path / "report"

    def fold(self, k: int) -> FoldDir:
        return FoldDir(self.path / f"fold_{k}")


def load_run(run: str | Path) -> tuple[Path, RunSettings]:
    """The run folder and the settings it was trained with (its config.json).

    ``latest`` (or ``RUNS_DIR/latest``) is the last run trained (``pcam.places``)."""
    run_dir = places.resolve_run(run)
    config = RunDir(run_dir).config
    if not config.is_file():
        hint = ""
        if not run_dir.is_absolute() and (Path("runs") / RunDir(run_dir).config).is_file():
            hint = f" (did you mean --run {Path('runs') / run_dir}?)"
        raise PcamError(f"{run_dir}: no run here (no config.json){hint}; pass --run with a "
                        f"folder that scripts/train.py wrote, such as runs/NAME")
    try:
        return run_dir, from_json(RunSettings, config)
    except (PcamError, TypeError, ValueError) as err:
        raise PcamError(f"{config} is not a pcam run config ({err})") from None


def run_classes(config: RunSettings) -> tuple[str, ...]:
    """The run's class names in label order (label i is ``classes[i]``)."""
    return tuple(config.data.classes) or LEGACY_CLASSES


def finished_folds(run_dir: Path, n_folds: int) -> list[int]:
    """Folds of the run whose training finished (``fold_<k>/metrics.json`` is written last)."""
    return [k for k in range(n_folds) if RunDir(run_dir).fold(k).metrics.is_file()]


def resolve_folds(run_dir: Path, config: RunSettings, folds: Sequence[int] = ()) -> list[int]:
    """The folds to use: ``folds``, or every finished fold when empty.

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


# --- a model and its facts ------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    """What a saved model needs besides its weights to be used on a raw image.

    Written as ``model.json`` beside every ``best.keras``.

    Attributes:
        classes: class names in output order (two classes: one sigmoid unit
            giving the probability of ``classes[1]``).
        positive: the class whose probability a two-class model reports ("" for K > 2).
        tile_size: side of the square tiles of the store it was trained on;
            an image is made a tile of this size the way the store made them.
        centre_crop: side of the centre crop the model is fed (0: the whole tile).
        label_region: side of the centre square that decides a label (PCam:
            32; 0: the whole tile), outlined on pictures.
        backbone: registry name of the backbone.
        image_size: side the backbone sees (the model resizes to it itself).
        threshold: the decision threshold for ``positive``, chosen on the run's
            pooled out-of-fold predictions (0.5 until every fold has finished).
        pcam_version: the version of pcam that trained it.
        source_side: the shorter side of the images its tiles were made from
            (``pcam.data.sources.Source.source_side``): a larger image is answered
            as windows of that side, each made a tile, at the training scale.
        mpp: microns per pixel of those images (0: unknown), so that a whole
            slide is read at the scale the model learnt (``pcam.explain.slides``).
        temperature: the run's logits are divided by it (``pcam.calibration``),
            fitted on the pooled out-of-fold predictions once every fold has
            finished (1.0 until then, and for runs of an older pcam).
    """

    classes: tuple[str, ...]
    positive: str
    tile_size: int
    centre_crop: int = 0
    label_region: int = 0
    backbone: str = ""
    image_size: int = 0
    threshold: float = 0.5
    pcam_version: str = ""
    source_side: int = 0
    mpp: float = 0.0
    temperature: float = 1.0

    @property
    def task(self) -> Task:
        return Task(tuple(self.classes))

    @property
    def binary(self) -> bool:
        return self.task.binary

    @property
    def window(self) -> int:
        """Side, in an image's own pixels, of the part of it one tile was made from
        (the training images' side; a model.json without it: the tile size)."""
        return self.source_side or self.tile_size

    @property
    def input_size(self) -> int:
        """Side of the tiles the model takes."""
        return self.centre_crop or self.tile_size

    def to_json(self, path: Path) -> None:
        atomic_write_json(Path(path), asdict(self))

    @classmethod
    def from_json(cls, path: Path) -> ModelInfo:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}
            return cls(**{k: (tuple(v) if k == "classes" else v)
                          for k, v in data.items() if k in known})
        except FileNotFoundError:
            raise PcamError(f"{path}: missing; a pcam model needs its model.json beside it "
                            "(train again, or copy it from the run's fold folder)") from None
        except (ValueError, TypeError) as err:
            raise PcamError(f"{path}: not a pcam model.json ({err})") from None


def info_path(model_path: Path) -> Path:
    return Path(model_path).with_name("model.json")


def run_temperature(run_dir: Path, folds: Sequence[int]) -> float:
    """The run's temperature (every fold's model.json holds the same; 1.0 without one)."""
    for k in folds:
        path = RunDir(Path(run_dir)).fold(k).info
        if path.is_file():
            return ModelInfo.from_json(path).temperature
    return 1.0


def read_folds(path: Path, remedy: str = "delete it, or start a new --run") -> pd.DataFrame:
    """A folds table (``id``, ``label``, ``fold``: a run's or a comparison's ``folds.csv``)."""
    try:
        folds = pd.read_csv(path, dtype={"id": str})
        return folds[["id", "label", "fold"]].astype({"label": int, "fold": int})
    except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
        raise PcamError(f"{path}: not a folds table (id,label,fold); {remedy}") from None


def same_folds(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two folds tables put the same tiles, with the same labels, in the same folds."""
    key = ["id", "label", "fold"]
    a, b = a[key].sort_values("id", ignore_index=True), b[key].sort_values("id", ignore_index=True)
    return a.equals(b)


# --- what the folds predicted ---------------------------------------------------------

def prob_columns(classes: Sequence[str]) -> list[str]:
    """Probability columns of an OOF table: ``prob`` (of class 1) for two
    classes, as PCam runs always had; ``prob_<class>`` per class for more."""
    return Task(tuple(classes)).prob_columns


def probabilities(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """The (N, K) class probabilities of an OOF-style table (two classes: its
    one ``prob`` column of class 1 and its complement)."""
    return Task(tuple(classes)).from_columns(frame)


def read_oof(run_dir: Path, folds: Sequence[int]) -> pd.DataFrame:
    """The out-of-fold predictions of ``folds``, concatenated (id, label, fold, probabilities)."""
    return pd.concat([pd.read_csv(RunDir(Path(run_dir)).fold(k).oof, dtype={"id": str})
                      for k in folds], ignore_index=True)


def read_history(fold_dir: Path) -> pd.DataFrame:
    """The fold's phases' CSV logs, in training order, with a ``phase`` column."""
    logs = []
    for phase in PHASES:
        path = FoldDir(Path(fold_dir)).history(phase)
        if not path.is_file() or not path.stat().st_size:
            continue
        log = read_csv_log(path)  # survives a repeated header or a half line
        if "epoch" in log:
            # A phase killed between its CSV row and its backup logs that epoch
            # again when it resumes; the later row is the one training continued from.
            log = log.drop_duplicates("epoch", keep="last")
        logs.append(log.assign(phase=phase))
    return pd.concat(logs, ignore_index=True) if logs else pd.DataFrame()


def resolve_target(target: str, info: ModelInfo) -> int | None:
    """A Grad-CAM target as a class index: a class name; "predicted" -> None
    (each image's own answer); "" -> the positive class of a two-class model,
    else None."""
    if target == "predicted" or (not target and not info.binary):
        return None
    if not target:
        return 1
    if target not in info.classes:
        raise PcamError(f"--target {target}: not a class of this model; choose one of "
                        f"{', '.join(info.classes)}, or predicted")
    return info.classes.index(target)
