"""Galleries of a report: the most confident mistakes, with where the model looked."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pcam.errors import PcamError
from pcam.models.saved import load_fold_model
from pcam.report import figures, page
from pcam.report.source import Source
from pcam.runs import probabilities
from pcam.task import Task


def figure(fig, path: Path, title: str, caption: str) -> page.Figure:
    return page.Figure(figures.save(fig, path), title, caption)


# --- galleries -------------------------------------------------------------------------

def confident_mistakes(labels, probs, per_class: int, predicted=None) -> np.ndarray:
    """Row indices of the most confident mistakes: up to ``per_class`` per
    true class, grouped by class in label order, each group from the
    highest probability given to the (wrong) predicted class down.

    Args:
        probs: (N, K) class probabilities.
        predicted: each row's predicted class (``Task.predict``: for two
            classes at the run's threshold); None: the most probable.
    """
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    predicted = probs.argmax(axis=1) if predicted is None else np.asarray(predicted, np.int64)
    confidence = probs[np.arange(len(probs)), predicted]
    chosen = []
    for c in range(probs.shape[1]):
        wrong = np.flatnonzero((labels == c) & (predicted != c))
        chosen.append(wrong[np.argsort(-confidence[wrong], kind="stable")][:per_class])
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


def _can_show_tiles(source: Source, frame: pd.DataFrame) -> bool:
    return source.store is not None or "path" in frame


def _read_tiles(source: Source, rows: pd.DataFrame) -> np.ndarray:
    """The gallery's tiles: from the tile store by id, else from image files."""
    if source.store is not None:
        from pcam.data.pipeline import read_tiles  # imports TensorFlow: only for galleries

        return read_tiles(source.store, rows["id"])
    return read_images(rows["path"])


def read_images(paths) -> np.ndarray:
    """RGB uint8 images from files (TIFF, PNG, JPEG, ...), for a gallery of a
    test set outside any store; made square tiles of the first one's size
    (centre crop and resize, as a store makes them) when they differ."""
    from pcam.data.images import decode_image, to_tile

    images = []
    for path in paths:
        image, problem = decode_image(path)
        if image is None:
            raise PcamError(f"{path} {problem}: the report's gallery cannot show it; pass "
                            "--gallery 0 to leave galleries out")
        if images and image.shape != images[0].shape:
            image = to_tile(image, images[0].shape[0])
        elif not images and image.shape[0] != image.shape[1]:
            image = to_tile(image, min(image.shape[:2]))
        images.append(image)
    return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)


def _region_note(source: Source) -> str:
    if not source.label_region:
        return ""
    r = source.label_region
    return f" The outlined square is the centre {r}×{r} region that decides a label."


def mistake_galleries(source: Source, frame: pd.DataFrame, out: Path, n: int,
                      threshold: float | None = None) -> list[page.Figure]:
    """The most confident mistakes of each true class; for a run, again with
    Grad-CAM by the fold model that predicted each tile.

    Two classes (``threshold``: the report's): a gallery per kind of mistake
    (false positives, then false negatives), Grad-CAM showing the evidence
    for the positive class in both; K classes: one figure of a line per true
    class, Grad-CAM of the (wrong) predicted class.
    """
    if not _can_show_tiles(source, frame):
        return []
    task = Task(source.classes)
    probs = probabilities(frame, task.classes)
    predicted = task.predict(probs, 0.5 if threshold is None else threshold)
    at = confident_mistakes(frame["label"], probs, n, predicted)
    rows = frame.iloc[at].reset_index(drop=True).assign(
        predicted=predicted[at], confidence=probs[at, predicted[at]])
    if rows.empty and not task.binary:
        return []
    tiles = _read_tiles(source, rows)
    heat = None
    if source.models and len(rows) and "fold" in rows:
        heat = _gradcam_by_fold(tiles, rows, source,
                                1 if task.binary else rows["predicted"].to_numpy())
    if task.binary:
        shown = []
        for true in (0, 1):
            shown.append(_binary_gallery(tiles, rows, None, true, source, out, threshold))
            if heat is not None and (rows["label"] == true).any():
                shown.append(_binary_gallery(tiles, rows, heat, true, source, out, threshold))
        return shown
    title = f"The most confident mistakes, up to {n} per true class"
    shown = [figure(figures.mistakes(tiles, rows, task.classes, title, columns=n,
                                      label_region=source.label_region),
                     out / "mistakes.png", "Most confident mistakes",
                     "For each true class (a line), the tiles given the highest probability of "
                     "a wrong class, with that class and its probability." + _region_note(source))]
    if heat is not None:
        shown.append(figure(
            figures.mistakes(tiles, rows, task.classes, f"{title}: Grad-CAM", columns=n,
                             heat=heat, label_region=source.label_region),
            out / "mistakes_gradcam.png", "Most confident mistakes: what the model saw",
            "Grad-CAM of each tile for the class it was wrongly called, by the fold model "
            "that predicted it (red: the strongest evidence in each tile; none: no tint)."))
    return shown


def _binary_gallery(tiles, rows, heat, true: int, source: Source, out: Path,
                    threshold: float) -> page.Figure:
    """One two-class gallery: the mistakes on true class ``true`` (0: false
    positives, 1: false negatives), with Grad-CAM when ``heat`` is given."""
    negative, positive = source.classes
    name, what = (("false_positives", f"False positives ({negative} called {positive})")
                  if true == 0 else
                  ("false_negatives", f"False negatives ({positive} called {negative})"))
    at = np.flatnonzero(rows["label"].to_numpy() == true)
    captions = [f"{figures.short_id(row.id)}\ntrue: {source.classes[int(row.label)]}\n"
                f"p({positive}) = {row.prob:.3f}" for row in rows.iloc[at].itertuples()]
    title = f"{what}: the {len(at)} most confident (threshold {threshold:.3f})"
    if heat is None:
        return figure(figures.gallery(tiles[at], captions, title,
                                      label_region=source.label_region),
                      out / f"{name}.png", what,
                      f"Each tile's true class and p({positive})." + _region_note(source))
    return figure(
        figures.gallery(tiles[at], captions, f"{title}: Grad-CAM", heat=heat[at],
                        label_region=source.label_region),
        out / f"{name}_gradcam.png", f"{what}: where the model saw {positive}",
        f"Grad-CAM of each tile by the fold model that predicted it (evidence for "
        f"{positive}, red the strongest in each tile; none: no tint). A false positive "
        f"shows what looked like {positive}; a false negative, what {positive} "
        "evidence the model still found. python scripts/explain.py --run RUN --ids ID "
        "draws one tile larger.")


def _gradcam_by_fold(tiles: np.ndarray, rows: pd.DataFrame, source: Source,
                     target) -> np.ndarray:
    """Grad-CAM maps (0..1, the tiles' size), each tile by its own fold's model.

    Args:
        target: the class whose evidence is shown: an index for every tile,
            or an array with one per row.

    A model that takes centre crops is shown the crop, as in validation;
    outside it the map is 0 (the model saw nothing there).
    """
    from pcam.data.augment import compose, eval_ops
    from pcam.models.gradcam import explainer, gradcam

    as_fed = np.asarray(compose(eval_ops(source.config.augment))(tiles, None))
    start = (tiles.shape[1] - as_fed.shape[1]) // 2
    heat = np.zeros(tiles.shape[:3], np.float32)
    folds = rows["fold"].to_numpy()
    targets = np.broadcast_to(np.asarray(target), (len(rows),))
    for k in np.unique(folds):
        at = np.flatnonzero(folds == k)
        wanted = targets[at]
        maps, _ = gradcam(explainer(load_fold_model(source.models[int(k)])), as_fed[at],
                          target=int(wanted[0]) if np.ndim(target) == 0 else wanted.copy())
        heat[at, start:start + maps.shape[1], start:start + maps.shape[2]] = maps
    return heat
