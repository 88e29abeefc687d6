"""One whole slide through a run's model: tissue found, tiles at the run's scale, answers.

::

    slide ─▶ thumbnail ─▶ tissue mask ─▶ TilePlan: the pyramid level, the tile grid
          at the run's microns per pixel, the tiles with enough tissue
          ─▶ read_blocks (a background thread reads 2,048 px blocks and cuts
             their tiles) ─▶ predict_tiles (folds x TTA, as predict.py)
          ─▶ (N, K) probabilities ─▶ scores, tiles table, GeoJSON, heat map

A tile covers what one training image covered: ``ModelInfo.window`` pixels
at the run's ``mpp`` (PCam: 96 px x 0.972 um = 93 um). It is read at the
coarsest level still at least that fine, so that tiles are shrunk, never
enlarged, and resized to the model's tile size. Memory does not grow with the
slide: two blocks in flight, a thumbnail of at most 4,096 px a side, and
K floats per tile.

Compute here; ``write_slide`` writes one slide's files (``pcam.explain.cohort``
runs folders of slides).
"""
from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from pcam.data.slides import BLOCK, OVERLAY_SUFFIX, THUMB_MAX, Slide, tissue_mask
from pcam.errors import PcamError
from pcam.task import Task

PREFETCH = 2  # blocks read ahead of the model: 2 x 12 MB
MASK_PX_PER_TILE = 8  # a tile spans ~8 mask pixels, so its tissue fraction has 64 samples


@dataclass(frozen=True)
class TilePlan:
    """Where a slide's tiles are read: a grid at one pyramid level, the tiles kept.

    Attributes:
        level: the pyramid level read.
        side: a tile's side at that level, in its pixels.
        downsample: that level's downsample from level 0.
        grid: (rows, columns) of the whole grid over the level.
        rows, cols: grid cell of each kept tile, (N,) each, row-major order.
        tissue: tissue fraction of each kept tile, (N,).
        mpp: microns per pixel at level 0.
    """

    level: int
    side: int
    downsample: float
    grid: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    tissue: np.ndarray
    mpp: float

    @property
    def size0(self) -> float:
        """A tile's side in level-0 pixels."""
        return self.side * self.downsample

    @property
    def xs(self) -> np.ndarray:
        """Level-0 left edge of each kept tile."""
        return np.round(self.cols * self.size0).astype(np.int64)

    @property
    def ys(self) -> np.ndarray:
        return np.round(self.rows * self.size0).astype(np.int64)

    @property
    def tile_mm2(self) -> float:
        return (self.size0 * self.mpp / 1000) ** 2


@dataclass
class Timings:
    """Seconds spent on one slide, by part (reading overlaps the model: ``waiting``
    is the part of it the model did not hide)."""

    tissue: float = 0.0
    reading: float = 0.0
    waiting: float = 0.0
    model: float = 0.0
    writing: float = 0.0


def choose_level(slide: Slide, target_mpp: float) -> int:
    """The coarsest level whose pixels are at most ``target_mpp`` (1% slack for
    rounded metadata); level 0 when even it is coarser (tiles then enlarged)."""
    fine = [i for i, lv in enumerate(slide.levels)
            if slide.mpp * lv.downsample <= target_mpp * 1.01]
    return max(fine, default=0)


def find_tissue(slide: Slide, tile_um: float, threshold: float = 0.0
           ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The slide's thumbnail and tissue mask, fine enough that a tile spans
    ``MASK_PX_PER_TILE`` mask pixels and at most ``THUMB_MAX`` pixels a side.

    Returns:
        ``(thumbnail, mask, downsample of both, saturation threshold used)``.
    """
    width, height = slide.dimensions
    tile0 = tile_um / slide.mpp
    downsample = max(1.0, tile0 / MASK_PX_PER_TILE, max(width, height) / THUMB_MAX)
    thumb, downsample = slide.thumbnail(downsample)
    # Specks under a quarter of a tile are dust or debris; holes under four tiles
    # (fat, small lumens) are read as tissue: on a mosaic of real PCam tiles, one
    # tile's area as the limit lost 9.5% of the tissue tiles, four tiles' 3.8%.
    tile_px = (tile0 / downsample) ** 2
    mask, used = tissue_mask(thumb, threshold, speck_px=max(4, int(tile_px / 4)),
                             hole_px=max(16, int(4 * tile_px)))
    return thumb, mask, downsample, used


def tissue_fractions(mask: np.ndarray, mask_ds: float, xs: np.ndarray, ys: np.ndarray,
                     size0: float) -> np.ndarray:
    """Fraction of each level-0 square (xs, ys, size0) that the mask calls tissue
    (an integral image: one sum per tile, whatever its size)."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)

    def edges(start):
        lo = np.clip(np.round(start / mask_ds).astype(int), 0, None)
        hi = np.round((start + size0) / mask_ds).astype(int)
        return lo, np.maximum(hi, lo + 1)

    x0, x1 = edges(xs)
    y0, y1 = edges(ys)
    x0, x1 = np.minimum(x0, mask.shape[1]), np.minimum(x1, mask.shape[1])
    y0, y1 = np.minimum(y0, mask.shape[0]), np.minimum(y1, mask.shape[0])
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return inside / area


def plan_tiles(slide: Slide, run_mpp: float, window: int, mask: np.ndarray, mask_ds: float,
               min_tissue: float) -> TilePlan:
    """The tile grid at the run's scale and the tiles with enough tissue.

    Args:
        run_mpp: microns per pixel of the images the run learnt from.
        window: their side in pixels (``ModelInfo.window``).

    Raises:
        PcamError: the slide is smaller than one tile, or no tile has enough tissue.
    """
    level = choose_level(slide, run_mpp)
    lv = slide.levels[level]
    side = max(1, int(round(window * run_mpp / (slide.mpp * lv.downsample))))
    grid = (lv.height // side, lv.width // side)
    if not all(grid):
        raise PcamError(f"{slide.path}: {lv.width}x{lv.height} px at level {level} is smaller "
                        f"than one tile ({side} px there, {window * run_mpp:.0f} um)")
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    size0 = side * lv.downsample
    fractions = tissue_fractions(mask, mask_ds, np.round(cols * size0), np.round(rows * size0),
                                 size0)
    keep = fractions >= min_tissue
    if not keep.any():
        raise PcamError(f"{slide.path}: no tissue found (no tile is {min_tissue:.0%} tissue; "
                        f"{mask.mean():.1%} of the thumbnail is): if there is tissue, lower "
                        "--tissue-threshold or --min-tissue")
    return TilePlan(level, side, float(lv.downsample), grid, rows[keep], cols[keep],
                    fractions[keep], slide.mpp)


def read_blocks(slide: Slide, plan: TilePlan, tile_size: int, timings: Timings | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The kept tiles, a block of the grid at a time: ``(indices into the plan,
    uint8 tiles (n, tile_size, tile_size, 3))``.

    Each block (about ``BLOCK`` px a side at the plan's level) is read once, in
    a background thread ``PREFETCH`` blocks ahead of the caller, and its tiles
    are cut from it in memory and resized to the model's tile size.
    """
    from pcam.data.images import to_tile

    per = max(1, BLOCK // plan.side)
    block_of = (plan.rows // per) * (-(-plan.grid[1] // per)) + plan.cols // per
    order = np.argsort(block_of, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(block_of[order]) != 0])
    groups = np.split(order, starts[1:])
    timings = timings or Timings()

    def load(indices):
        began = time.perf_counter()
        r0, c0 = (plan.rows[indices[0]] // per) * per, (plan.cols[indices[0]] // per) * per
        height = (min(plan.grid[0], r0 + per) - r0) * plan.side
        width = (min(plan.grid[1], c0 + per) - c0) * plan.side
        region = slide.read(plan.level, round(c0 * plan.size0), round(r0 * plan.size0),
                            width, height)
        tiles = np.stack([to_tile(np.ascontiguousarray(
            region[(r - r0) * plan.side:(r - r0 + 1) * plan.side,
                   (c - c0) * plan.side:(c - c0 + 1) * plan.side]), tile_size)
            for r, c in zip(plan.rows[indices], plan.cols[indices])])
        timings.reading += time.perf_counter() - began
        return indices, tiles

    with ThreadPoolExecutor(1, thread_name_prefix="slide-reader") as pool:
        pending = deque(pool.submit(load, g) for g in groups[:PREFETCH])
        following = iter(groups[PREFETCH:])
        while pending:
            began = time.perf_counter()
            indices, tiles = pending.popleft().result()
            timings.waiting += time.perf_counter() - began
            nxt = next(following, None)
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            yield indices, tiles


def predict_slide(ensemble: Sequence, slide: Slide, plan: TilePlan, views: Sequence[int],
                  batch: int, desc: str | None = None, timings: Timings | None = None
                  ) -> np.ndarray:
    """(N, K) class probabilities of the plan's tiles by the ensemble x TTA views
    (``pcam.predict.ensemble.predict_tiles``, the code predict.py runs)."""
    from tqdm.auto import tqdm

    from pcam.predict.ensemble import predict_tiles
    from pcam.settings import AugmentSettings

    info = ensemble[0][1]
    augment = AugmentSettings(centre_crop=info.centre_crop)
    timings = timings or Timings()
    probs = np.zeros((len(plan.rows), max(2, len(info.classes))), np.float32)
    with tqdm(total=len(plan.rows), unit="tile", desc=desc, disable=desc is None,
              smoothing=0.1) as bar:
        for indices, tiles in read_blocks(slide, plan, info.tile_size, timings):
            began = time.perf_counter()
            probs[indices] = predict_tiles(ensemble, tiles, views, augment, batch)
            timings.model += time.perf_counter() - began
            bar.update(len(indices))
    return probs


# --- what a slide's answers say --------------------------------------------------------

def slide_scores(probs: np.ndarray, plan: TilePlan, classes: Sequence[str], threshold: float,
                 tissue_mm2: float) -> dict:
    """The slide's row of ``slides.csv``: tissue area and tiles; two classes: the
    positive area fraction (tiles at or over the threshold), the maximum and the
    mean of the top 1% of tile probabilities; K classes: the area of each class
    (tiles whose most likely class it is)."""
    task = Task(tuple(classes))
    row = {"tissue_mm2": round(tissue_mm2, 4), "tiles": int(len(probs)),
           "tile_um": round(plan.size0 * plan.mpp, 2), "level": plan.level}
    if task.binary:
        p = np.sort(probs[:, 1])[::-1]
        top = p[:max(1, int(np.ceil(len(p) / 100)))]
        row.update({"positive_fraction": round(float((p >= threshold).mean()), 4),
                    "max": round(float(p[0]), 4), "top1_mean": round(float(top.mean()), 4)})
    else:
        counts = np.bincount(probs.argmax(axis=1), minlength=len(classes))
        row.update({f"{c}_mm2": round(float(n * plan.tile_mm2), 4)
                    for c, n in zip(classes, counts)})
    return row


def tiles_table(plan: TilePlan, probs: np.ndarray, classes: Sequence[str],
                threshold: float) -> pd.DataFrame:
    """One row per tile: level-0 ``x``, ``y``, ``size``, ``tissue``, ``predicted``,
    one probability column per class."""
    from pcam.predict.images import probability_table

    table = probability_table(np.zeros(len(probs)), probs, classes, threshold).drop(columns="path")
    table.insert(0, "tissue", np.round(plan.tissue, 4))
    table.insert(0, "size", round(plan.size0, 2))
    table.insert(0, "y", plan.ys)
    table.insert(0, "x", plan.xs)
    return table


def geojson(plan: TilePlan, probs: np.ndarray, classes: Sequence[str], threshold: float) -> dict:
    """A GeoJSON FeatureCollection QuPath imports (File > Import objects): one tile
    object per tile, its class probabilities as measurements, in level-0 pixels;
    for two classes also the positive region (tiles at or over the threshold,
    merged by shapely) as one annotation."""
    task = Task(tuple(classes))
    predicted = task.predict(probs, threshold)
    s = plan.size0
    features = []
    for x, y, k, p, t in zip(plan.xs.tolist(), plan.ys.tolist(), predicted.tolist(),
                             probs.tolist(), plan.tissue.tolist()):
        measurements = {f"p({c})": round(v, 5) for c, v in zip(classes, p)}
        measurements["tissue"] = round(t, 4)
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]},
            "properties": {"objectType": "tile", "classification": {"name": classes[k]},
                           "measurements": measurements}})
    if task.binary:
        region = positive_region(plan, probs[:, 1] >= threshold)
        if region is not None:
            features.append({"type": "Feature", "geometry": region, "properties": {
                "objectType": "annotation", "name": f"{classes[1]} (p >= {threshold:.3g})",
                "classification": {"name": classes[1]}}})
    return {"type": "FeatureCollection", "features": features}


def positive_region(plan: TilePlan, positive: np.ndarray) -> dict | None:
    """The union of the positive tiles as a GeoJSON (Multi)Polygon, or None."""
    try:
        from shapely.geometry import box, mapping
        from shapely.ops import unary_union
    except ImportError:
        raise PcamError("a slide's positive region needs shapely: pip install "
                        "'pcam[slides]'") from None
    if not positive.any():
        return None
    s = plan.size0
    union = unary_union([box(x, y, x + s, y + s)
                         for x, y in zip(plan.xs[positive], plan.ys[positive])])
    return json.loads(json.dumps(mapping(union)))  # tuples to lists


def grid_image(plan: TilePlan, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Per-tile values laid out on the plan's grid (rows, cols); ``fill`` elsewhere."""
    out = np.full(plan.grid, fill, np.float64)
    out[plan.rows, plan.cols] = values
    return out


def slide_figure(thumb: np.ndarray, thumb_ds: float, plan: TilePlan, probs: np.ndarray,
                 classes: Sequence[str], title: str):
    """The thumbnail beside the tiles' answers over it: two classes, p(positive)
    with a colour bar; K classes, the most likely class with a legend."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    height, width = thumb.shape[:2]
    extent = (0, plan.grid[1] * plan.size0 / thumb_ds, plan.grid[0] * plan.size0 / thumb_ds, 0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.0 + 4.8 * height / width),
                             layout="constrained")
    for ax in axes:
        ax.imshow(thumb)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title("slide", fontsize=10)
    if len(classes) == 2:
        shown = axes[1].imshow(np.ma.masked_invalid(grid_image(plan, probs[:, 1])), cmap="magma",
                               vmin=0, vmax=1, alpha=0.6, extent=extent, interpolation="nearest")
        axes[1].set_title(f"p({classes[1]}) per tile", fontsize=10)
        bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03, ticks=[0, 0.5, 1])
        bar.set_label(f"probability of {classes[1]}", fontsize=9)
    else:
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        best = grid_image(plan, probs.argmax(axis=1).astype(float))
        axes[1].imshow(np.ma.masked_invalid(best), alpha=0.6, extent=extent,
                       cmap=ListedColormap([colours(k) for k in range(len(classes))]),
                       vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest")
        axes[1].set_title("most likely class per tile", fontsize=10)
        axes[1].legend(handles=[Patch(color=colours(k), label=c) for k, c in enumerate(classes)],
                       loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    axes[1].set_xlim(0, width)
    axes[1].set_ylim(height, 0)
    fig.suptitle(title, fontsize=9.5)
    return fig


# --- one slide's files ------------------------------------------------------------------

def slide_files(out: Path, stem: str) -> dict[str, Path]:
    """The files one slide writes in ``out``, by kind (``done`` last: its presence
    says the others are complete)."""
    return {kind: Path(out) / f"{stem}.{suffix}" for kind, suffix in (
        ("tiles", "tiles.csv"), ("geojson", "geojson"), ("heatmap", "heatmap.png"),
        ("mask", "mask.png"), ("overlay", OVERLAY_SUFFIX[1:]), ("done", "slide.json"))}


def write_slide(files: dict[str, Path], thumb: np.ndarray, thumb_ds: float, mask: np.ndarray,
                plan: TilePlan, probs: np.ndarray, classes: Sequence[str], threshold: float,
                title: str, overlay: bool = False) -> None:
    """Write one slide's files atomically (``slide_files``), all but ``done``."""
    from PIL import Image

    from pcam.io import atomic_path
    from pcam.report.figures import save

    with atomic_path(files["tiles"]) as tmp:
        tiles_table(plan, probs, classes, threshold).to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(files["geojson"]) as tmp:
        Path(tmp).write_text(json.dumps(geojson(plan, probs, classes, threshold)))
    with atomic_path(files["mask"]) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    save(slide_figure(thumb, thumb_ds, plan, probs, classes, title), files["heatmap"])
    if overlay:
        with atomic_path(files["overlay"]) as tmp:
            write_overlay(tmp, plan, probs)


def write_overlay(path: Path, plan: TilePlan, probs: np.ndarray) -> None:
    """A pyramidal TIFF of the tile map, one pixel per tile, its resolution tags
    the tile's size in microns, so a viewer lays it over the slide at scale:
    p(class 1) x 255 for two classes, else the most likely class + 1 (0: no tile)."""
    import tifffile

    if probs.shape[1] == 2:
        values = grid_image(plan, np.round(probs[:, 1] * 255).astype(float), 0.0)
    else:
        values = grid_image(plan, probs.argmax(axis=1) + 1.0, 0.0)
    image = values.astype(np.uint8)
    per_cm = 1e4 / (plan.size0 * plan.mpp)
    levels = []
    while min(image.shape) >= 2 and (not levels or max(levels[-1].shape) > 256):
        levels.append(image)
        image = image[::2, ::2]
    if not levels:
        levels = [image]
    with tifffile.TiffWriter(path) as tif:
        opts = dict(photometric="minisblack", compression="zlib", resolutionunit="CENTIMETER")
        tif.write(levels[0], subifds=len(levels) - 1, resolution=(per_cm, per_cm), **opts)
        for k, level in enumerate(levels[1:], 1):
            tif.write(level, subfiletype=1, resolution=(per_cm / 2 ** k, per_cm / 2 ** k), **opts)
