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


def figure(fig, path: Path, title: str, caption: str) -> page.Figure:
    return page.Figure(figures.save(fig, path), title, caption)


# --- galleries -------------------------------------------------------------------------

def confident_mistakes(labels, probs, per_class: int) -> np.ndarray:
    """Row indices of the most confident mistakes of K-class predictions: up
    to ``per_class`` per true class, grouped by class in label order, each
    group from the highest probability given to a wrong class down."""
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
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


def multiclass_galleries(source: Source, frame: pd.DataFrame, out: Path,
                          n: int) -> list[page.Figure]:
    """The most confident mistakes of each true class; for a run, again with
    Grad-CAM of the (wrong) predicted class by the fold model that predicted it."""
    if not _can_show_tiles(source, frame):
        return []
    probs = probabilities(frame, source.classes)
    at = confident_mistakes(frame["label"], probs, n)
    rows = frame.iloc[at].reset_index(drop=True).assign(
        predicted=probs[at].argmax(axis=1), confidence=probs[at].max(axis=1))
    if rows.empty:
        return []
    tiles = _read_tiles(source, rows)
    title = f"The most confident mistakes, up to {n} per true class"
    shown = [figure(figures.mistakes(tiles, rows, source.classes, title, columns=n,
                                      label_region=source.label_region),
                     out / "mistakes.png", "Most confident mistakes",
                     "For each true class (a line), the tiles given the highest probability of "
                     "a wrong class, with that class and its probability." + _region_note(source))]
    if source.models and "fold" in rows:
        heat = _gradcam_by_fold(tiles, rows, source, rows["predicted"].to_numpy())
        shown.append(figure(
            figures.mistakes(tiles, rows, source.classes, f"{title}: Grad-CAM", columns=n,
                             heat=heat, label_region=source.label_region),
            out / "mistakes_gradcam.png", "Most confident mistakes: what the model saw",
            "Grad-CAM of each tile for the class it was wrongly called, by the fold model "
            "that predicted it (red: the strongest evidence in each tile; none: no tint)."))
    return shown


def binary_galleries(source: Source, frame: pd.DataFrame, threshold: float, out: Path,
                      n: int) -> list[page.Figure]:
    """The most confident mistakes: false positives with the highest
    probabilities, false negatives with the lowest; for a run, each again
    with Grad-CAM (evidence for the positive class) from the fold model
    that predicted it."""
    if not _can_show_tiles(source, frame):
        return []
    negative, positive = source.classes
    wrong_pos = frame[(frame["label"] == 0) & (frame["prob"] >= threshold)].nlargest(n, "prob")
    wrong_neg = frame[(frame["label"] == 1) & (frame["prob"] < threshold)].nsmallest(n, "prob")
    shown = []
    for rows, name, what in ((wrong_pos, "false_positives",
                              f"False positives ({negative} called {positive})"),
                             (wrong_neg, "false_negatives",
                              f"False negatives ({positive} called {negative})")):
        tiles = _read_tiles(source, rows)
        captions = [f"{figures.short_id(row.id)}\ntrue: {source.classes[int(row.label)]}\n"
                    f"p({positive}) = {row.prob:.3f}" for row in rows.itertuples()]
        title = f"{what}: the {len(rows)} most confident (threshold {threshold:.3f})"
        shown.append(figure(figures.gallery(tiles, captions, title,
                                             label_region=source.label_region),
                             out / f"{name}.png", what,
                             f"Each tile's true class and p({positive})." + _region_note(source)))
        if source.models and len(rows) and "fold" in rows:
            heat = _gradcam_by_fold(tiles, rows, source, 1)
            shown.append(figure(
                figures.gallery(tiles, captions, f"{title}: Grad-CAM", heat=heat,
                                label_region=source.label_region),
                out / f"{name}_gradcam.png", f"{what}: where the model saw {positive}",
                f"Grad-CAM of each tile by the fold model that predicted it (evidence for "
                f"{positive}, red the strongest in each tile; none: no tint). A false positive "
                f"shows what looked like {positive}; a false negative, what {positive} "
                "evidence the model still found. python scripts/explain.py --run RUN --ids ID "
                "draws one tile larger."))
    return shown


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
