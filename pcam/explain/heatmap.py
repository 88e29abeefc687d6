"""Heat maps over images larger than a tile: where in the image each class is.

An image is cut into overlapping tile-sized windows on a grid (``stride``
pixels apart, default a third of a tile; the last row and column of windows
end on the image's edge), every window is predicted by the run's model(s) in
large batches (``pcam.predict.ensemble.predict_tiles``, so the same preprocessing
and optional test-time views as prediction), and each window's probabilities
are spread over its *footprint* and averaged where footprints overlap.

The footprint is the part of the window the answer is about: PCam labels
describe the centre 32x32 of a 96 px tile (``ModelInfo.label_region``), so
there a window speaks for its centre square; a model without a label region
speaks for the centre third of its window, so that the map resolves regions
as small as the stride rather than blurring them over a whole tile (``region
0`` spreads over the whole window instead). The footprint is at least
``stride`` wide, so footprints always meet, and the windows on the image's
edges reach out to it: every pixel is covered.

The averaging is two matrix products (rows covered x window grid x columns
covered), not a loop over windows, and so is the cutting (a strided view).
Nothing here writes files; ``write_heat_map`` does, through ``pcam.report.figures``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pcam.data.images import cut_windows, window_starts
from pcam.errors import PcamError
from pcam.task import Task

CHUNK_WINDOWS = 2048  # windows cut and predicted at once: 57 MB of 96 px uint8 tiles


@dataclass(frozen=True)
class HeatMap:
    """Class probabilities over an image, per window and per pixel.

    Attributes:
        classes: class names in label order.
        positive: index of the class a two-class map shows (1), or -1 for K classes.
        tile: side of the windows, in image pixels (``ModelInfo.window``: what one
            tile was made from in training; the tile size unless images were resized).
        stride: pixels between neighbouring windows.
        footprint: side of the centre square of a window its answer is spread over.
        ys: top rows of the window grid's rows, (R,).
        xs: left columns of the window grid's columns, (C,).
        grid: window probabilities: (R, C) of the positive class for two
            classes, (R, C, K) otherwise.
        pixels: per-pixel mean of the covering windows: (H, W) or (H, W, K).
    """

    classes: tuple[str, ...]
    positive: int
    tile: int
    stride: int
    footprint: int
    ys: np.ndarray
    xs: np.ndarray
    grid: np.ndarray
    pixels: np.ndarray

    @property
    def task(self) -> Task:
        return Task(tuple(self.classes))

    @property
    def binary(self) -> bool:
        return self.task.binary

    @property
    def class_map(self) -> np.ndarray:
        """(H, W) int: the most likely class per pixel (K classes; two
        classes: 1 where p >= 0.5); -1 where the map is NaN."""
        if self.binary:
            covered = ~np.isnan(self.pixels)
            return np.where(covered, (np.nan_to_num(self.pixels) >= 0.5).astype(int), -1)
        covered = ~np.isnan(self.pixels[..., 0])
        return np.where(covered, np.nan_to_num(self.pixels).argmax(axis=-1), -1)

    def table(self, threshold: float = 0.5) -> pd.DataFrame:
        """The window grid as rows: ``y``, ``x`` (window's top-left pixel),
        ``predicted`` and one probability column per class."""
        from pcam.predict.images import probability_table

        yy, xx = np.meshgrid(self.ys, self.xs, indexing="ij")
        probs = self.grid.reshape(len(self.ys) * len(self.xs), *self.grid.shape[2:])
        table = probability_table(np.zeros(len(probs)), probs, self.classes, threshold)
        table = table.drop(columns="path")
        table.insert(0, "x", xx.ravel())
        table.insert(0, "y", yy.ravel())
        return table


def _coverage(starts: np.ndarray, length: int, tile: int, footprint: int) -> np.ndarray:
    """(len(starts), length) float32: 1 where a window's footprint covers a pixel.

    The first and last windows' footprints reach out to the image's edges
    (nothing nearer to the edge speaks for those pixels)."""
    lo = starts + (tile - footprint) // 2
    hi = lo + footprint
    lo[0], hi[-1] = 0, length
    pixels = np.arange(length)
    return ((pixels >= lo[:, None]) & (pixels < hi[:, None])).astype(np.float32)


def heat_map(ensemble: Sequence, image: np.ndarray, info, stride: int | None = None,
             views: Sequence[int] = (0,), batch: int = 256, region: int = -1) -> HeatMap:
    """Class probabilities over an image larger than a tile.

    Args:
        ensemble: ``(model, ModelInfo)`` pairs (``pcam.predict.ensemble.load_ensemble``).
        image: RGB uint8 (H, W, 3), at least a tile on each side.
        info: the models' ``ModelInfo`` (tile size, classes, centre crop, label region).
        stride: pixels between windows (default: a third of the tile).
        views: dihedral test-time views (``pcam.predict.tta.TTA_VIEWS[n]``).
        batch: images per model call (windows x views).
        region: side of the centre square a window's answer is about (-1: the
            model's ``label_region``, else a third of the tile; 0: the whole
            window). PCam tiles in class folders carry no region; 32 says
            what their labels mean.

    Returns:
        The ``HeatMap``.

    Raises:
        PcamError: the image is smaller than a tile, or the stride is not
            between 1 and the tile size.
    """
    image = np.asarray(image)
    # Windows at the training scale: a model whose 224 px images were made
    # 128 px tiles sees 224 px of an image per tile (ModelInfo.window), each
    # window resized to the tile as the store resized the images.
    tile = info.window
    stride = stride or max(1, tile // 3)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PcamError(f"a heat map needs an RGB uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    if height < tile or width < tile:
        raise PcamError(f"image of {width}x{height} px is smaller than the model's "
                        f"{tile}x{tile} px window: predict it as one tile instead")
    if not 1 <= stride <= tile:
        raise PcamError(f"--stride {stride}: must be from 1 to the window's side ({tile} px)")
    ys, xs = window_starts(height, tile, stride), window_starts(width, tile, stride)
    grid = _window_probs(ensemble, image, (ys, xs), info, views, batch)

    if region < 0:  # the label region is in tile pixels: in image pixels, scaled
        region = (round(info.label_region * tile / info.tile_size) if info.label_region
                  else max(1, tile // 3))
    footprint = min(tile, max(region or tile, stride))
    rows = _coverage(ys, height, tile, footprint)            # (R, H)
    cols = _coverage(xs, width, tile, footprint)             # (C, W)
    count = rows.T @ np.ones((len(ys), len(xs)), np.float32) @ cols
    with np.errstate(invalid="ignore", divide="ignore"):
        if grid.ndim == 2:
            pixels = (rows.T @ grid @ cols) / count
        else:
            pixels = np.einsum("rh,rck,cw->hwk", rows, grid, cols, optimize=True) / count[..., None]
    return HeatMap(tuple(info.classes), 1 if info.binary else -1, tile, stride, footprint,
                   ys, xs, grid, pixels.astype(np.float32))


def _window_probs(ensemble: Sequence, image: np.ndarray, starts: tuple, info, views,
                  batch: int) -> np.ndarray:
    """The ensemble's answer for every window of the grid (rows, columns[, K]),
    in chunks of rows: the windows of a large image are never all in memory."""
    from pcam.data.images import to_tile
    from pcam.predict.ensemble import predict_tiles
    from pcam.settings import AugmentSettings

    ys, xs = starts
    augment = AugmentSettings(centre_crop=info.centre_crop)
    per_chunk = []
    rows_per_chunk = max(1, CHUNK_WINDOWS // len(xs))
    for r in range(0, len(ys), rows_per_chunk):
        windows = cut_windows(image, ys[r:r + rows_per_chunk], xs, info.window)
        if info.window != info.tile_size:
            windows = np.stack([to_tile(w, info.tile_size) for w in windows])
        per_chunk.append(predict_tiles(ensemble, windows, views, augment, batch))
    probs = np.concatenate(per_chunk)
    if info.binary:  # a two-class map is p(class 1) per pixel (HeatMap.pixels)
        probs = probs[:, 1]
    return probs.reshape(len(ys), len(xs), *probs.shape[1:]).astype(np.float32)


def centre_means(heat: HeatMap, boxes: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """The map's mean over squares ``(top, left, side)`` (NaN pixels left out):
    (N,) for two classes, (N, K) otherwise."""
    out = []
    for top, left, side in boxes:
        patch = heat.pixels[top:top + side, left:left + side]
        out.append(np.nanmean(patch.reshape(side * side, -1), axis=0))
    out = np.asarray(out)
    return out[:, 0] if heat.binary else out


def write_heat_map(heat: HeatMap, image: np.ndarray, out_dir: Path, stem: str, title: str,
                   threshold: float = 0.5) -> tuple[Path, Path]:
    """The overlay PNG and the window grid CSV of one image, written atomically.

    Returns:
        ``(png, csv)`` paths: ``OUT_DIR/STEM-heatmap.png`` and ``OUT_DIR/STEM-heatmap.csv``.
    """
    from pcam.io import atomic_path
    from pcam.report.figures import save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, csv = out_dir / f"{stem}-heatmap.png", out_dir / f"{stem}-heatmap.csv"
    save(heat_map_figure(heat, image, title), png)
    with atomic_path(csv) as tmp:
        heat.table(threshold).to_csv(tmp, index=False, float_format="%.6g")
    return png, csv


def heat_map_figure(heat: HeatMap, image: np.ndarray, title: str):
    """The image beside its map: two classes, p(positive) over the image with a
    colour bar; K classes, the most likely class per region with a legend.

    Returns:
        A matplotlib Figure (``pcam.report.figures.save`` writes it).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    height, width = image.shape[:2]
    aspect = height / width
    # Constrained layout keeps the two-line title clear of the panels' titles.
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 1.0 + 4.6 * aspect), layout="constrained")
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(image)
    if heat.binary:
        masked = np.ma.masked_invalid(heat.pixels)
        shown = axes[1].imshow(masked, cmap="magma", vmin=0, vmax=1, alpha=0.55)
        axes[1].set_title(f"p({heat.classes[1]}) per region", fontsize=10)
        bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03, ticks=[0, 0.5, 1])
        bar.set_label(f"probability of {heat.classes[1]}", fontsize=9)
    else:
        colours = plt.get_cmap("tab10" if len(heat.classes) <= 10 else "tab20")
        cmap = plt.matplotlib.colors.ListedColormap(
            [colours(k) for k in range(len(heat.classes))])
        masked = np.ma.masked_less(heat.class_map, 0)
        axes[1].imshow(masked, cmap=cmap, vmin=-0.5, vmax=len(heat.classes) - 0.5,
                       alpha=0.55, interpolation="nearest")
        axes[1].set_title("most likely class per region", fontsize=10)
        present = set(np.unique(heat.class_map[heat.class_map >= 0]).tolist())
        handles = [Patch(color=colours(k), label=c + ("" if k in present else " (none)"))
                   for k, c in enumerate(heat.classes)]
        axes[1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1),
                       fontsize=8, frameon=False)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}\nwindows {heat.tile} px every {heat.stride} px "
                 f"({len(heat.ys)}x{len(heat.xs)}); each speaks for its centre "
                 f"{heat.footprint} px", fontsize=9.5)
    return fig


def map_images(settings) -> list[dict]:
    """``scripts/heatmap.py``: each image's heat map by a run's folds, written
    as ``OUT/STEM-heatmap.png`` and ``.csv``.

    Every image is checked (decoded, at least a tile on each side) before the
    models load, so a bad file costs seconds, not minutes.

    Args:
        settings: a ``pcam.settings.HeatmapSettings``.

    Returns:
        One record per image: ``image``, ``png``, ``csv``, ``windows``.

    Raises:
        PcamError: no images, a file that cannot be used, or a bad run.
    """
    from pcam.data.images import decode_image, list_images
    from pcam.predict.ensemble import load_ensemble
    from pcam.predict.tta import TTA_VIEWS
    from pcam.runs import load_run, resolve_folds

    if not settings.images:
        raise PcamError("name the images to map: scripts/heatmap.py --run RUN IMAGE ...")
    run_dir, config = load_run(settings.run)
    folds = resolve_folds(run_dir, config, settings.folds)
    images, bad = [], []
    for path in list_images(settings.images):  # files and folders alike
        image, problem = decode_image(path)
        (bad.append(f"{path} {problem}") if problem else images.append((path, image)))
    if bad:
        raise PcamError(f"{len(bad)} image(s) cannot be used: {'; '.join(bad[:3])}"
                        f"{' ...' if len(bad) > 3 else ''}")
    ensemble = load_ensemble(run_dir, folds)
    info = ensemble[0][1]
    small = [f"{p} ({a.shape[1]}x{a.shape[0]})" for p, a in images
             if min(a.shape[:2]) < info.window]
    if small:
        raise PcamError(f"smaller than the run's {info.window} px window (what one tile was "
                        f"made from): {', '.join(small[:3])}; predict such images with "
                        "scripts/predict.py --images")
    records, stems = [], set()
    for path, image in images:
        heat = heat_map(ensemble, image, info, settings.stride or None,
                        TTA_VIEWS[settings.tta], settings.batch_size, settings.region)
        stem = path.stem if path.stem not in stems else f"{path.stem}-{len(stems)}"
        stems.add(stem)
        png, csv = write_heat_map(heat, image, Path(settings.out), stem,
                                  f"{path.name}: run {run_dir.name}, fold(s) "
                                  f"{', '.join(map(str, folds))}", info.threshold)
        print(f"{path}: {heat.grid.shape[0] * heat.grid.shape[1]:,} windows -> {png}, {csv}",
              flush=True)
        records.append({"image": str(path), "png": str(png), "csv": str(csv),
                        "windows": int(heat.grid.shape[0] * heat.grid.shape[1])})
    return records
