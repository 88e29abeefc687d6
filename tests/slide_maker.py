"""Synthetic whole slides made of real PCam tiles, with a known answer.

No real slide can be fetched here, so a "slide" is a mosaic of held-out real
PCam tiles (``pcam-real/valid``, slides the test models never saw) on a grid
of 96 px cells at PCam's 0.972 um/px: tissue inside a disc, tumour tiles in
the cells inside a known triangle, normal tiles in the rest of the disc,
white glass with a little noise elsewhere. ``write_tiff`` writes it as a
tiled pyramidal TIFF with resolution tags in microns: levels as successive
pages (how SVS lays them out; OpenSlide reads them) or in SubIFDs (OME style;
tifffile reads them), JPEG or deflate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcam.data.images import decode_image
from tests.conftest import PCAM_REAL

CELL = 96
PCAM_MPP = 0.972


@dataclass
class Mosaic:
    """A synthetic slide and its known answer."""

    image: np.ndarray      # (H, W, 3) uint8 at PCAM_MPP
    tissue: np.ndarray     # (G, G) bool: cells holding a tile
    tumour: np.ndarray     # (G, G) bool: cells holding a tumour tile
    triangle: list         # the tumour polygon's corners, level-0 pixels at PCAM_MPP
    tiles: np.ndarray      # (N, 96, 96, 3): the tiles of the tissue cells, row-major
    labels: np.ndarray     # (N,) their labels

    @property
    def positive_fraction(self) -> float:
        return float(self.tumour.sum() / self.tissue.sum())


def _inside_triangle(px, py, corners) -> np.ndarray:
    (x1, y1), (x2, y2), (x3, y3) = corners

    def side(ax, ay, bx, by):
        return (px - bx) * (ay - by) - (ax - bx) * (py - by)

    d1, d2, d3 = side(x1, y1, x2, y2), side(x2, y2, x3, y3), side(x3, y3, x1, y1)
    neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
    pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(neg & pos)


def make_mosaic(grid: int = 24, seed: int = 0, offset: int = 0) -> Mosaic:
    """A ``grid`` x ``grid`` cell mosaic; ``offset`` shifts which valid tiles are used."""
    rng = np.random.default_rng(seed)
    centres = (np.arange(grid) + 0.5) * CELL
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    side = grid * CELL
    tissue = (cx - side / 2) ** 2 + (cy - side / 2) ** 2 <= (0.42 * side) ** 2
    triangle = [(0.18 * side, 0.25 * side), (0.78 * side, 0.18 * side), (0.45 * side, 0.8 * side)]
    tumour = tissue & _inside_triangle(cx, cy, triangle)
    pools = {k: sorted((PCAM_REAL / "valid" / str(k)).iterdir())[offset:] for k in (0, 1)}
    used = {0: 0, 1: 0}
    image = np.clip(rng.normal(243, 3, (side, side, 3)), 0, 255).astype(np.uint8)
    tiles, labels = [], []
    for r, c in zip(*np.nonzero(tissue)):
        label = int(tumour[r, c])
        tile = decode_image(pools[label][used[label]])[0]
        used[label] += 1
        image[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = tile
        tiles.append(tile)
        labels.append(label)
    return Mosaic(image, tissue, tumour, triangle, np.stack(tiles), np.asarray(labels))


def write_tiff(path: Path, image: np.ndarray, mpp: float, levels: int = 3,
               compression: str = "jpeg", subifds: bool = False, tile: int = 256) -> Path:
    """A tiled pyramidal TIFF (each level half the last, by taking every other pixel)."""
    import tifffile

    opts = dict(tile=(tile, tile), compression=compression, photometric="rgb",
                resolutionunit="CENTIMETER")
    if compression == "jpeg":
        opts["compressionargs"] = {"level": 90}
    with tifffile.TiffWriter(path) as tif:
        for k in range(levels):
            scale = 2 ** k
            kwargs = dict(resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)), **opts)
            if subifds and k == 0:
                kwargs["subifds"] = levels - 1
            tif.write(image[::scale, ::scale], subfiletype=1 if k else 0, **kwargs)
    return Path(path)
