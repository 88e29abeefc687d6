"""Ensembles: the folds of one or more runs, their out-of-fold predictions and threshold.

A ``Member`` is one run and the folds of it that predict; ``predict_tiles``
runs an ensemble of loaded ``(model, ModelInfo)`` pairs x TTA on tiles in
memory, ``predict_test_sets`` on a store's test split.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pcam import metrics
from pcam.calibration import apply_temperature
from pcam.data.images import IMAGE_SUFFIXES
from pcam.errors import PcamError
from pcam.models.saved import load_fold_model, load_model_with_info
from pcam.predict.tta import (TTA_VIEWS, VIEW_NAMES, cached_tta_predictor, combine, predict_batches,
                              predict_store)
from pcam.runs import (FOLDS, RunDir, finished_folds, load_run, read_folds, read_oof, resolve_folds,
                       ModelInfo, run_classes, run_temperature)
from pcam.settings import AugmentSettings, DataSettings, PredictSettings, RunSettings, to_dict

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
    path = Path(run_dir) / FOLDS
    if not path.is_file():
        return None
    return read_folds(path).sort_values("id", kind="stable").reset_index(drop=True)


def ensemble_oof(members: Sequence[Member], average: str = "mean", calibrate: bool = True
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
        oof = read_oof(m.run_dir, done)[["id", "label", "prob"]]
        return oof.assign(prob=_calibrated(oof["prob"], m, calibrate)), ""
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
    probs = [_calibrated(read_oof(m.run_dir, range(m.config.folds.folds)).set_index("id")
                         .loc[ids, "prob"].to_numpy(np.float64), m, calibrate)
             for m in members]
    return pd.DataFrame({"id": ids, "label": tables[0]["label"],
                         "prob": combine(probs, average)}), ""


def _calibrated(prob, member: Member, calibrate: bool) -> np.ndarray:
    """A run's out-of-fold p(class 1) as its predictions are made: at its temperature."""
    folds = member.folds or range(member.config.folds.folds)
    temperature = run_temperature(member.run_dir, folds) if calibrate else 1.0
    return apply_temperature(np.asarray(prob, np.float64), temperature)


def member_threshold(member: Member, calibrate: bool = True) -> float:
    """A run's own two-class threshold (every fold's model.json), chosen on its
    calibrated out-of-fold predictions: without calibration, the same cut moved
    back to the models' own scale (0.5 for a model without a model.json)."""
    path = RunDir(member.run_dir).fold(member.folds[-1]).info
    if not path.is_file():
        return 0.5
    info = ModelInfo.from_json(path)
    return float(info.threshold if calibrate
                 else apply_temperature(np.array([info.threshold]), 1 / info.temperature)[0])


def ensemble_threshold(members: Sequence[Member], average: str = "mean", calibrate: bool = True
                       ) -> tuple[float, str]:
    """The two-class decision threshold of several runs ensembled, and why
    it is 0.5 when it cannot be chosen ("" when it was).

    A run's threshold is chosen on its pooled out-of-fold predictions
    (Youden's J, ``pcam.train.training.summarise``); the ensemble's the same way
    on theirs combined (``ensemble_oof``), or 0.5 when they have none. The
    probabilities themselves do not depend on it: only the ``predicted``
    column does.
    """
    oof, why = ensemble_oof(members, average, calibrate)
    if oof is None:
        return 0.5, f"threshold 0.5: {why}"
    return metrics.choose_threshold(oof["label"].to_numpy(), oof["prob"].to_numpy()), ""


def images_per_call(settings: PredictSettings, member: Member) -> int:
    return settings.batch_size or 2 * member.config.inputs.batch_size


def model_files(members: Sequence[Member]) -> list[dict]:
    """Every model of the ensemble: its run, fold, backbone and file."""
    files = []
    for m in members:
        for k in m.folds:
            path = RunDir(m.run_dir).fold(k).model
            stat = path.stat()
            files.append({"run": str(m.run_dir), "fold": k, "backbone": m.config.model.backbone,
                          "path": str(path), "bytes": stat.st_size,
                          "modified": iso_time(stat.st_mtime)})
    return files


def runs_record(members: Sequence[Member], settings: PredictSettings) -> dict:
    """What the record says of the runs: each run (folds, backbone, config);
    with one run, also ``run``, ``folds`` and ``run_config`` as before, which
    ``scripts/evaluate.py --submission`` reads to find the run's OOF predictions."""
    record = {"runs": [{"run": str(m.run_dir), "folds": list(m.folds),
                        "backbone": m.config.model.backbone,
                        "batch_images": images_per_call(settings, m),
                        "config": to_dict(m.config)} for m in members]}
    if len(members) == 1:
        record.update(run=str(members[0].run_dir), folds=list(members[0].folds),
                      run_config=to_dict(members[0].config))
    return record


def ensemble_line(members: Sequence[Member], views, average: str) -> str:
    runs = "; ".join(f"{m.run_dir} fold(s) {', '.join(map(str, m.folds))}" for m in members)
    how = f"{average} over folds" + (", then over runs" if len(members) > 1 else "")
    return (f"run {runs} x {len(views)} TTA view(s) "
            f"({', '.join(VIEW_NAMES[k] for k in views)}), {how}")


def predict_test_sets(members: Sequence[Member], settings: PredictSettings, views,
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
    from pcam.data.store import prepare

    per_run, index, bad = [], None, []
    calibrate = settings.calibration == "temperature"
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
        batch_images = images_per_call(settings, m)
        print(f"run {m.run_dir}: {store.n_tiles:,} test tiles, {batch_images} images per "
              "model call", flush=True)
        # Positions in this run's store of the first store's tiles, in its order.
        position = pd.Series(np.arange(store.n_tiles), index=ids)[index["id"]].to_numpy()
        prefix = f"{m.run_dir.name} " if len(members) > 1 else ""
        per_fold = []
        temperature = run_temperature(m.run_dir, m.folds) if calibrate else 1.0
        for k in m.folds:  # one model in memory at a time
            model = load_fold_model(RunDir(m.run_dir).fold(k).model)
            probs = predict_store(model, store, views, batch_images, m.config.augment,
                                  desc=prefix + desc.format(k=k, views=len(views)))
            per_fold.append(apply_temperature(probs[position], temperature))
            del model
        per_run.append(per_fold)
    return per_run, index, bad


def iso_time(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


# --- class probabilities of any images -------------------------------------------------

def load_ensemble(run_dir: Path, folds: Sequence[int]) -> list:
    """``(model, ModelInfo)`` of each fold, loaded once (the app keeps them)."""
    return [load_model_with_info(RunDir(Path(run_dir)).fold(k).model) for k in folds]


def as_tiles(arrays: Sequence[np.ndarray], tile_size: int) -> np.ndarray:
    """Decoded RGB images made into tiles the way a class-folder store makes
    them (centre-cropped to a square, resized), stacked as uint8 (N, S, S, 3)."""
    from pcam.data.images import to_tile

    if not len(arrays):
        return np.zeros((0, tile_size, tile_size, 3), np.uint8)
    return np.stack([to_tile(np.asarray(a), tile_size) for a in arrays])


def predict_tiles(ensemble: Sequence, tiles: np.ndarray, views: Sequence[int] = TTA_VIEWS[8],
                  augment: AugmentSettings = AugmentSettings(), batch_images: int = 256,
                  average: str = "mean", calibrate: bool = True) -> np.ndarray:
    """Class probabilities of uint8 tiles (N, S, S, 3) by an ensemble x TTA views.

    Args:
        calibrate: each model's probabilities at its run's temperature
            (``ModelInfo.temperature``) before they are combined, as its
            out-of-fold predictions were when the temperature was fitted.

    Returns:
        (N, K) class probabilities.
    """
    from pcam.data.augment import compose, eval_ops

    fed = np.asarray(compose(eval_ops(augment))(tiles, None)) if len(tiles) else tiles
    per_model = []
    for model, info in ensemble:
        predictor = cached_tta_predictor(model, views, fed.shape[1:], fed.dtype)
        step = max(1, batch_images // len(views))
        probs = predict_batches(predictor, (fed[i:i + step] for i in range(0, len(fed), step)))
        # A bare model (no ModelInfo: tests, benchmarks) has no temperature.
        calibrated = calibrate and info is not None
        per_model.append(apply_temperature(probs, info.temperature if calibrated else 1.0))
    if not len(tiles):
        units = ensemble[0][0].output_shape[-1]
        return np.zeros((0, max(units, 2)), np.float32)  # a sigmoid's one unit: two classes
    return combine(per_model, average)
