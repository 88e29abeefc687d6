"""Class probabilities of images a user brings: files or folders, any size.

An image two windows wide and high or more is answered as the tiles that
cover it (``image_tiles``): the mean of the tiles (K classes) or the highest
tile (two classes), and the share of its tiles given to each class. The CSV
(``path``, ``predicted``, one column per class) and a record beside it.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pcam.data.images import list_images
from pcam.errors import SHOW, PcamError
from pcam.io import atomic_path, atomic_write_json, cannot_write, check_writable
from pcam.predict.ensemble import (ensemble_line, ensemble_name, ensemble_threshold, member_threshold,
                                   images_per_call, inputs_name, iso_time, load_ensemble,
                                   load_members, model_files, predict_test_sets, predict_tiles,
                                   runs_record)
from pcam.predict.tta import TTA_VIEWS, combine, combine_runs
from pcam.runs import run_classes
from pcam.settings import PredictSettings, to_dict
from pcam.task import Task, as_matrix

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
    from pcam.data.images import cut_windows, to_tile, window_starts

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
        probs: per image, (N, K) class probabilities: for two classes its
            highest tile's p(class 1) (is the positive class anywhere in it?)
            and its complement; for more the mean over its tiles.
        tiles: (N,) how many tiles each image was.
        areas: (N, K) the share of each image's tiles predicted as each class.
    """

    probs: np.ndarray
    tiles: np.ndarray
    areas: np.ndarray


def answer_images(tile_probs: np.ndarray, owner: np.ndarray, n_images: int,
                  threshold: float) -> ImageAnswers:
    """Tiles' (N, K) probabilities (``predict_tiles`` of ``images_as_tiles``) as
    answers per image; ``threshold`` decides a two-class tile's class."""
    tile_probs = as_matrix(tile_probs)
    tiles = np.bincount(owner, minlength=n_images)
    k = tile_probs.shape[1]
    if k == 2:
        top = np.full(n_images, -np.inf)
        np.maximum.at(top, owner, tile_probs[:, 1])
        positive = np.bincount(owner, weights=tile_probs[:, 1] >= threshold, minlength=n_images)
        share = positive / np.maximum(tiles, 1)
        return ImageAnswers(as_matrix(top), tiles, as_matrix(share))
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
    """Each image's class (``Task.predict``): ``classes[1]`` when its
    probability >= threshold (two classes), else the most probable."""
    return [classes[i] for i in Task(tuple(classes)).predict(probs, threshold)]


def probability_table(names, probs: np.ndarray, classes: Sequence[str],
                      threshold: float) -> pd.DataFrame:
    """``path``, ``predicted``, then one probability column per class (named by it)."""
    full = as_matrix(probs)
    table = pd.DataFrame({"path": [str(n) for n in names],
                          "predicted": predicted_classes(probs, classes, threshold)})
    for k, c in enumerate(classes):
        table[c] = full[:, k]
    return table


def labelled_images(folder: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Images of a labelled class-folder set (``DIR/<class>/<image>``) and
    their label indices in the run's ``classes``."""
    from pcam.data.sources import images_under, subfolders

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
    check_writable(out)
    decoded = _decoded(paths)
    views = TTA_VIEWS[settings.tta]
    per_run, threshold = [], 0.5
    calibrate = settings.calibration == "temperature"
    print(f"{ensemble_line(members, views, settings.average)}; {len(paths):,} image(s)",
          flush=True)
    for m in members:
        ensemble = load_ensemble(m.run_dir, m.folds)
        info = ensemble[0][1]
        threshold = member_threshold(m, calibrate)
        tiles, owner = images_as_tiles(decoded, info.tile_size, info.window)
        print(f"run {m.run_dir}: the images as {len(tiles):,} tile(s) of {info.tile_size}x"
              f"{info.tile_size} (an image at least {2 * info.window} px a side: the "
              f"{info.window} px windows that cover it)", flush=True)
        per_run.append(answer_images(
            predict_tiles(ensemble, tiles, views, m.config.augment, images_per_call(settings, m),
                          settings.average, calibrate), owner, len(decoded), threshold))
        del ensemble
    # predict_tiles combined each run's folds; the runs are combined as combine_runs does.
    probs = (per_run[0].probs if len(per_run) == 1
             else combine([a.probs for a in per_run], settings.average))
    answers = ImageAnswers(probs, per_run[0].tiles,
                           np.mean([a.areas for a in per_run], axis=0))
    threshold, note = ((threshold, "") if len(members) == 1 or len(classes) != 2
                       else ensemble_threshold(members, settings.average, calibrate))
    table = with_areas(probability_table(paths, probs, classes, threshold), answers, classes)
    return _write_probabilities(table, probs, labels, out, settings, members, threshold,
                                note, start)


def _decoded(paths: list) -> list:
    """The images, decoded; all refused at once when any cannot be used."""
    from pcam.data.images import decode_image

    decoded, bad = [], []
    for path in paths:
        image, problem = decode_image(path)
        (bad.append(f"{path} {problem}") if problem else decoded.append(image))
    if bad:
        raise PcamError(f"{len(bad)} image(s) cannot be used: {'; '.join(bad[:SHOW])}"
                        f"{' ...' if len(bad) > SHOW else ''}; remove them or leave them out")
    return decoded


def predict_folder_test(settings: PredictSettings) -> dict:
    """Class-folder runs' test/ images (their test stores) -> CSV of class probabilities."""
    start = time.perf_counter()
    members = load_members(settings)
    out = Path(settings.out or Path("predictions") / f"{ensemble_name(members)}-test.csv")
    check_writable(out)
    views = TTA_VIEWS[settings.tta]
    print(ensemble_line(members, views, settings.average), flush=True)
    per_run, index, _ = predict_test_sets(
        members, settings, views, "folder beside train/; pass --images PATH... (files or "
        "folders) or --answers DIR (labelled class folders)", desc="x{views}")
    probs = combine_runs(per_run, settings.average)
    classes = run_classes(members[0].config)
    calibrate = settings.calibration == "temperature"
    if len(members) == 1 or len(classes) != 2:
        threshold, note = member_threshold(members[0], calibrate), ""
    else:
        threshold, note = ensemble_threshold(members, settings.average, calibrate)
    table = probability_table(index["id"], probs, classes, threshold)
    labelled = (index["label"] >= 0).all()
    return _write_probabilities(table, probs, index["label"].to_numpy() if labelled else None,
                                out, settings, members, threshold, note, start)


def _write_probabilities(table, probs, labels, out, settings, members, threshold, note,
                         start) -> dict:
    classes = run_classes(members[0].config)
    binary = len(classes) == 2
    record = {**runs_record(members, settings), "tta": settings.tta,
              "average": settings.average, "images": len(table), "classes": list(classes),
              "threshold": threshold if binary else None,
              "threshold_note": note if binary else "",
              "model_files": model_files(members),
              "written": iso_time(time.time()), "seconds": round(time.perf_counter() - start, 1),
              "settings": to_dict(settings)}
    if note and binary:
        print(f"note: {note}", flush=True)
    if labels is not None:
        table.insert(2, "label", [classes[k] for k in labels])
    try:
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        atomic_write_json(out.with_suffix(".json"), record)
    except OSError as err:
        raise cannot_write(out, err) from None
    print(f"predictions: {out} ({len(table):,} images; columns path, predicted, "
          f"{', '.join(classes)})", flush=True)
    if labels is not None:  # the command reports them (pcam.report.evaluate.report_labelled)
        answers = settings.answers or members[0].config.data.data_dir
        record["labelled"] = {"csv": str(out), "report": str(out.with_name(out.stem + "-report")),
                              "title": f"{Path(answers).name}: labelled test images"}
    return record
