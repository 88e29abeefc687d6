"""What a report is about: a run's out-of-fold predictions, or labelled test predictions.

A ``Source`` holds the predictions in groups (each fold, pooled, or a test
set), the classes, the threshold chosen on out-of-fold predictions, and the
tile store that holds the images, for the galleries.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from pcam.calibration import apply_temperature
from pcam.data.competition import LABEL_REGION
from pcam.data.store import Store, open_store
from pcam.errors import PcamError
from pcam.kaggle.submission import read_answers
from pcam.places import default_store
from pcam.predict.ensemble import Member, ensemble_oof
from pcam.report import figures
from pcam.runs import (LEGACY_CLASSES, RunDir, finished_folds, load_run, prob_columns,
                       read_history, read_oof, run_classes, run_temperature)
from pcam.settings import RunSettings
from pcam.task import Task

POOLED = figures.POOLED


TEST = "test"


@dataclass
class Source:
    """What one report is about.

    Attributes:
        title: the report's heading.
        groups: predictions (``id``, ``label``, the ``prob_columns`` of
            ``classes``; a ``fold`` column for a run; optionally ``path``)
            per group: each fold and ``pooled``, or ``test``.
        oof: the out-of-fold predictions a two-class threshold is chosen on
            (None: chosen on the test tiles, and said so, unless ``threshold``).
        config: the run's settings, shown in the report.
        classes: class names in label order.
        histories: per fold, the phases' training logs in order.
        store: where the gallery's tiles are (None: from a ``path`` column,
            or no galleries).
        notes: sentences the report shows under its summary.
        models: each fold's best model (a run's report), for Grad-CAM of
            the gallery tiles, each by the fold model that predicted it.
        label_region: side of the centre square that decides a label,
            outlined on gallery tiles (PCam: 32; class folders: 0, none).
        threshold: a two-class threshold decided elsewhere (the run's), used
            instead of choosing one.
        calibration: a run's temperature (``temperature``) and its pooled
            out-of-fold predictions before it (``before``, a frame like the
            groups'), whose groups are then at that temperature; None: not
            calibrated.
    """

    title: str
    groups: dict[str, pd.DataFrame]
    oof: pd.DataFrame | None
    config: RunSettings | None
    classes: tuple[str, ...] = LEGACY_CLASSES
    histories: dict[int, pd.DataFrame] = field(default_factory=dict)
    store: Store | None = None
    notes: list[str] = field(default_factory=list)
    models: dict[int, Path] = field(default_factory=dict)
    label_region: int = 0
    threshold: float | None = None
    calibration: dict | None = None

    @property
    def task(self) -> Task:
        return Task(tuple(self.classes))


# --- what a report is about --------------------------------------------------------

def run_source(run_dir: Path) -> Source:
    """A run's finished folds: OOF predictions, histories, the train store."""
    run_dir, config = load_run(run_dir)
    classes = run_classes(config)
    done = finished_folds(run_dir, config.folds.folds)
    if not done:
        raise PcamError(f"run {run_dir} has no finished fold (no fold_<k>/metrics.json yet): "
                        "finish training first; it resumes where it stopped")
    oof = {}
    for k in done:
        oof[k] = read_oof(run_dir, [k])
        check_labels(oof[k], classes, str(RunDir(run_dir).fold(k).oof))
    groups = {f"fold {k}": frame for k, frame in oof.items()}
    groups[POOLED] = pd.concat(oof.values(), ignore_index=True)
    temperature = run_temperature(run_dir, done)
    calibration = None
    if temperature != 1.0:  # the probabilities as the run's predictions give them
        calibration = {"temperature": temperature, "before": groups[POOLED]}
        groups = {name: at_temperature(frame, classes, temperature)
                  for name, frame in groups.items()}
    notes = []
    if len(done) < config.folds.folds:
        notes.append(f"{len(done)} of {config.folds.folds} folds are finished; the pooled "
                     "figures cover those.")
    store = _open_or_none(config.data.store_path / "train", notes)
    return Source(title=f"run {run_dir.resolve().name}: out-of-fold predictions",
                  groups=groups, oof=groups[POOLED], config=config, classes=classes,
                  histories={k: read_history(RunDir(run_dir).fold(k).path) for k in done},
                  store=store, notes=notes,
                  models={k: RunDir(run_dir).fold(k).model for k in done},
                  label_region=label_region(store, classes), calibration=calibration)


def at_temperature(frame: pd.DataFrame, classes: Sequence[str], temperature: float
                   ) -> pd.DataFrame:
    """A predictions table with its probability columns at ``temperature``."""
    task = Task(tuple(classes))
    probs = apply_temperature(task.from_columns(frame), temperature)
    return frame.assign(**dict(zip(task.prob_columns, task.file_columns(probs).T)))


def submission_source(path: Path, answers: str) -> Source:
    """A submission joined with its answer key; the run it came from, if found
    through the submission's record (``NAME.json``), gives the threshold and
    the class names. Submissions hold one probability per tile: two classes."""
    if not answers:
        raise PcamError("--submission needs --answers CSV (id,label of its tiles) to be scored")
    if not path.is_file():
        raise PcamError(f"{path}: no such submission; write one with scripts/predict.py")
    key = read_answers(Path(answers))
    try:
        submitted = pd.read_csv(path, dtype={"id": str})
        frame = submitted.rename(columns={"label": "prob"}).merge(key, on="id")[
            ["id", "label", "prob"]]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError, UnicodeDecodeError):
        raise PcamError(f"{path}: not a submission (expected a CSV with columns id,label)") \
            from None
    if frame.empty:
        raise PcamError(f"--answers {answers}: none of its ids is in {path}; is it the answer "
                        "key of this test set?")
    notes = [] if len(frame) == len(submitted) else [
        f"Only {len(frame):,} of the submission's {len(submitted):,} tiles have an answer; "
        "the report covers those."]
    record = path.with_suffix(".json")
    run = json.loads(record.read_text()) if record.is_file() else {}
    config, oof, store, classes = None, None, None, LEGACY_CLASSES
    # An ensemble's record lists its runs; one run's also names it as "run".
    runs = [r["run"] for r in run.get("runs", [])] or ([run["run"]] if run.get("run") else [])
    missing = [r for r in runs if not RunDir(Path(r)).config.is_file()]
    why = (f"its run {missing[0]} is not there" if missing else
           "no NAME.json beside the submission names its runs")
    if runs and not missing:
        members = [Member(*load_run(Path(r)), ()) for r in runs]
        config = members[0].config
        classes = run_classes(config)
        if len(classes) != 2:
            raise PcamError(f"{path}: its run {members[0].run_dir} has {len(classes)} classes; "
                            "a submission holds one probability per tile, so it is scored for "
                            "two-class runs only (report a labelled K-class test set with "
                            "scripts/predict.py)")
        oof, why = ensemble_oof(members, run.get("average", "mean"),
                                run.get("settings", {}).get("calibration") != "none")
    if oof is None:
        notes.append(f"No out-of-fold predictions of the submission's runs ({why}), so the "
                     "threshold was chosen on these test tiles themselves: the metrics at the "
                     "threshold are optimistic.")
    data = run.get("data", {})
    if data:
        store_path = Path(data.get("store_dir") or default_store(
            data["data_dir"], data.get("tile_size", 0), data.get("max_tile_size", 0))) / "test"
        store = _open_or_none(store_path, notes)
    return Source(title=f"submission {path.name} against {Path(answers).name}",
                  groups={TEST: frame}, oof=oof, config=config, classes=classes, store=store,
                  notes=notes, label_region=label_region(store, classes))


def check_labels(frame: pd.DataFrame, classes: Sequence[str], what: str) -> None:
    missing = [c for c in ["label", *prob_columns(classes)] if c not in frame]
    if missing:
        raise PcamError(f"{what} lacks column(s) {', '.join(missing)} for the classes "
                        f"{', '.join(classes)}; was it written by another version of pcam?")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    if labels.isna().any() or not labels.between(0, len(classes) - 1).all():
        raise PcamError(f"{what}: labels must be class indices 0 to {len(classes) - 1} "
                        f"({', '.join(classes)})")


def label_region(store: Store | None, classes: Sequence[str]) -> int:
    """Side of the centre square that decides a label: the store's word, else
    PCam's 32 for stores and runs from before stores said it (they were PCam's)."""
    if store is not None and "label_region" in store.manifest:
        return int(store.manifest["label_region"] or 0)
    return LABEL_REGION if tuple(classes) == LEGACY_CLASSES and store is not None else 0


def _open_or_none(path: Path, notes: list[str]) -> Store | None:
    try:
        return open_store(path)
    except PcamError:
        notes.append(f"No tile store at {path}, so the report has no tile galleries "
                     "(build it with scripts/prepare.py and evaluate again).")
        return None
