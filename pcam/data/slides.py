"""Whole-slide images: open one, read a region at a pyramid level, a thumbnail, its tissue.

Two readers behind one ``Slide``: OpenSlide (``openslide-python`` with
``openslide-bin``, the ``slides`` extra) for SVS, NDPI, MRXS, SCN and tiled
pyramidal TIFF, and tifffile for the TIFFs OpenSlide refuses (striped, OME,
pyramids in SubIFDs). Coordinates follow OpenSlide: a region's top-left in
level-0 pixels, its size in the level's own pixels.

Resolution is read, never guessed: ``Slide.mpp`` is the slide's metadata
(OpenSlide's ``openslide.mpp-x``, a TIFF's resolution tags, OME's
``PhysicalSizeX``) or 0, and the caller refuses a slide whose scale it
needs and does not know (``pcam.explain.slides``).

The tissue mask is Otsu's threshold on a thumbnail's saturation, on a log
scale (H&E is coloured, glass and background are grey or white), small holes filled and
small specks removed with ``scipy.ndimage``. Otsu is written out below
(ten lines) rather than taken from scikit-image, which pcam does not
otherwise need.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pcam.data.images import is_hidden
from pcam.errors import PcamError

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".vms", ".vmu", ".bif",
                  ".svslide")
OVERLAY_SUFFIX = ".overlay.tif"  # pcam's own probability maps (scripts/slide.py --overlay-tiff)
BLOCK = 2048  # side of the blocks a thumbnail is read in: 12 MB of RGB at a time
THUMB_MAX = 4096  # the longest side of a thumbnail: 48 MB of RGB for any slide
MIN_SATURATION = 0.05  # JPEG noise on white glass reaches ~0.02; H&E tissue is 0.1-0.6
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}


@dataclass(frozen=True)
class Level:
    """One level of a slide's pyramid: its size and how much smaller than level 0."""

    width: int
    height: int
    downsample: float


class Slide:
    """An open whole-slide image (``open_slide``).

    Attributes:
        path: the file.
        levels: the pyramid, level 0 (full resolution) first.
        mpp: microns per pixel at level 0; 0 when the file does not say.
        reader: "openslide" or "tifffile".
    """

    def __init__(self, path: Path, levels: Sequence[Level], mpp: float, reader: str, read):
        self.path, self.levels, self.mpp, self.reader = Path(path), tuple(levels), mpp, reader
        self._read = read
        self._lock = threading.Lock()  # a reader's file handle serves one read at a time

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.levels[0].width, self.levels[0].height

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of a region: top-left (x, y) in level-0
        pixels, size in the level's pixels; outside the slide is white.

        Raises:
            PcamError: the file cannot be decoded there (e.g. truncated).
        """
        try:
            with self._lock:
                return self._read(level, int(x), int(y), int(width), int(height))
        except PcamError:
            raise
        except Exception as err:  # the readers' own errors: OpenSlideError, tifffile's, zlib's
            raise PcamError(f"{self.path}: cannot read level {level} at ({x}, {y}) "
                            f"({type(err).__name__}: {err}); the file may be truncated or "
                            "damaged") from None

    def thumbnail(self, downsample: float) -> tuple[np.ndarray, float]:
        """The slide shrunk about ``downsample`` times, by area averaging, read in
        blocks so that memory does not grow with the slide.

        Returns:
            ``(image, exact downsample)``: from the level just finer than asked,
            averaged over whole pixel squares.
        """
        level = max((i for i, lv in enumerate(self.levels) if lv.downsample <= downsample),
                    default=0)
        lv = self.levels[level]
        factor = max(1, int(downsample / lv.downsample))
        block = factor * max(1, BLOCK // factor)
        rows, cols = lv.height // factor, lv.width // factor
        if not rows or not cols:
            raise PcamError(f"{self.path}: {lv.width}x{lv.height} px is too small for a "
                            f"thumbnail {factor}x smaller")
        out = np.empty((rows, cols, 3), np.uint8)
        for top in range(0, rows * factor, block):
            for left in range(0, cols * factor, block):
                h = min(block, rows * factor - top)
                w = min(block, cols * factor - left)
                region = self.read(level, left * lv.downsample, top * lv.downsample, w, h)
                pooled = region.reshape(h // factor, factor, w // factor, factor, 3).mean((1, 3))
                out[top // factor:(top + h) // factor, left // factor:(left + w) // factor] = \
                    np.round(pooled).astype(np.uint8)
        return out, lv.downsample * factor

    def close(self) -> None:
        closer = getattr(self._read, "close", None)
        if closer:
            closer()


def list_slides(paths: Sequence[str | Path], exclude: Path | None = None) -> list[Path]:
    """Slide files among ``paths`` (files as given; folders searched recursively
    for slide suffixes), sorted, without duplicates, hidden files, pcam's own
    overlay TIFFs (``OVERLAY_SUFFIX``) or anything under ``exclude`` (the output
    folder)."""
    found = []
    skip = Path(exclude).resolve() if exclude else None
    for p in map(Path, paths):
        if p.is_dir():
            found += [f for f in sorted(p.rglob("*")) if f.is_file()
                      and f.suffix.lower() in SLIDE_SUFFIXES
                      and not f.name.lower().endswith(OVERLAY_SUFFIX)
                      and not any(is_hidden(part) for part in f.relative_to(p).parts)
                      and not (skip and (skip == f.resolve().parent
                                         or skip in f.resolve().parents))]
        else:
            found.append(p)
    unique = {str(f.resolve()): f for f in found}
    return sorted(unique.values(), key=lambda f: str(f.resolve()))


def open_slide(path: str | Path, mpp: float = 0.0) -> Slide:
    """Open a slide with OpenSlide, or with tifffile when OpenSlide cannot (or is
    not installed) and the file is a TIFF.

    Args:
        mpp: microns per pixel at level 0, replacing the file's (0: the file's).

    Raises:
        PcamError: the file is missing, or neither reader can open it.
    """
    path = Path(path)
    if not path.is_file():
        raise PcamError(f"{path}: no such file")
    problem = ""
    try:
        import openslide
    except ImportError:
        openslide = None
        problem = "OpenSlide is not installed (pip install 'pcam[slides]')"
    if openslide is not None:
        try:
            slide = _openslide(openslide, path)
        except openslide.OpenSlideUnsupportedFormatError:
            problem = "OpenSlide does not know its format"
        except (openslide.OpenSlideError, OSError) as err:
            problem = f"OpenSlide cannot read it ({err})"
        else:
            if len(slide.levels) > 1 or path.suffix.lower() not in (".tif", ".tiff"):
                return _with_mpp(slide, mpp)
            # OpenSlide reads a TIFF's pyramid only from its top-level pages; an
            # OME-style pyramid in SubIFDs is one level to it, which tifffile sees.
            try:
                other = _tifffile(path)
            except PcamError:
                return _with_mpp(slide, mpp)
            chosen, spare = (other, slide) if len(other.levels) > 1 else (slide, other)
            spare.close()
            return _with_mpp(chosen, mpp)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _with_mpp(_tifffile(path), mpp)
    raise PcamError(f"{path}: not a slide pcam can read: {problem}")


def _with_mpp(slide: Slide, mpp: float) -> Slide:
    if mpp:
        slide.mpp = float(mpp)
    return slide


def _openslide(openslide, path: Path) -> Slide:
    handle = openslide.OpenSlide(str(path))
    levels = [Level(w, h, float(d)) for (w, h), d in zip(handle.level_dimensions,
                                                          handle.level_downsamples)]
    try:
        mpp = float(handle.properties.get(openslide.PROPERTY_NAME_MPP_X, 0) or 0)
    except ValueError:
        mpp = 0.0

    def read(level, x, y, width, height):
        region = handle.read_region((x, y), level, (width, height))
        rgb = np.array(region.convert("RGB"))  # Pillow's: 5x faster than slicing RGBA in numpy
        if region.getextrema()[3][0] == 0:  # outside the scanned area: white, like glass
            rgb[np.asarray(region.getchannel("A")) == 0] = 255
        return rgb

    read.close = handle.close
    return Slide(path, levels, mpp, "openslide", read)


def _tifffile(path: Path) -> Slide:
    import logging

    import tifffile

    # tifffile logs a damaged page's offset as a warning before raising or
    # skipping it; the one line the caller prints says it.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    try:
        tif = tifffile.TiffFile(path)
        pages = [level.keyframe for level in tif.series[0].levels]
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct errors
        raise PcamError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from None
    first = pages[0]
    if first.ndim < 2 or first.imagewidth < 1:
        raise PcamError(f"{path}: its first image has no pixels")
    levels = [Level(p.imagewidth, p.imagelength, first.imagewidth / p.imagewidth) for p in pages]
    whole = {}  # striped levels are read whole once: plain TIFFs are small

    def read(level, x, y, width, height):
        page = pages[level]
        lx, ly = int(round(x / levels[level].downsample)), int(round(y / levels[level].downsample))
        if page.is_tiled:
            return _rgb(_tiled_region(tif, page, lx, ly, width, height))
        if level not in whole:
            whole[level] = _rgb(page.asarray())
        out = np.full((height, width, 3), 255, np.uint8)
        part = whole[level][ly:ly + height, lx:lx + width]
        out[:part.shape[0], :part.shape[1]] = part
        return out

    read.close = tif.close
    return Slide(path, levels, _tiff_mpp(tif, first), "tifffile", read)


def _tiled_region(tif, page, x: int, y: int, width: int, height: int) -> np.ndarray:
    """A region of a tiled page, decoding only the TIFF tiles it overlaps."""
    th, tw = page.tilelength, page.tilewidth
    across = -(-page.imagewidth // tw)
    samples = page.samplesperpixel
    out = np.full((height, width, samples), 255, np.uint8)
    fh = tif.filehandle
    for row in range(max(0, y // th), min(-(-page.imagelength // th), -(-(y + height) // th))):
        for col in range(max(0, x // tw), min(across, -(-(x + width) // tw))):
            index = row * across + col
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
            if len(data) < page.databytecounts[index]:
                raise PcamError(f"{tif.filehandle.path}: ends inside image data (offset "
                                f"{page.dataoffsets[index]:,}): the file is truncated")
            tile = page.decode(data, index, jpegtables=page.jpegtables)[0]
            tile = np.asarray(tile).reshape(th, tw, samples)
            top, left = row * th, col * tw
            y0, x0 = max(y, top), max(x, left)
            y1, x1 = min(y + height, top + th, page.imagelength), min(x + width, left + tw,
                                                                      page.imagewidth)
            out[y0 - y:y1 - y, x0 - x:x1 - x] = tile[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def _rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise PcamError(f"slides of {array.dtype} samples are not supported (8-bit RGB only)")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    return array[..., :3] if array.shape[2] >= 3 else np.repeat(array[..., :1], 3, axis=2)


def _tiff_mpp(tif, page) -> float:
    """Microns per pixel from OME's PhysicalSizeX, else the resolution tags
    (0 when neither says: a resolution of 1 pixel per unit, or no unit)."""
    if tif.is_ome and tif.ome_metadata:
        found = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if found:
            return float(found.group(1)) * _OME_UNITS.get(unit.group(1) if unit else "µm", 0)
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return 0.0
    num, den = tags["XResolution"].value
    per_unit = num / den if den else 0
    microns = {2: 25_400.0, 3: 10_000.0}.get(int(tags["ResolutionUnit"].value), 0)
    return microns / per_unit if per_unit > 1 and microns else 0.0


# --- tissue ------------------------------------------------------------------------

def saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation, 0..1, of an RGB uint8 image."""
    rgb = image.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0).astype(np.float32)


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in 0..1: the cut maximising the between-class variance."""
    counts, edges = np.histogram(values, bins=bins, range=(0, 1))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    mean = np.cumsum(counts * centres)
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    if not np.isfinite(between[:-1]).any():  # one value throughout: nothing to split
        return 1.0
    return float(centres[int(np.nanargmax(between[:-1]))])


def log_otsu(sat: np.ndarray, floor: float = 0.005) -> float:
    """Otsu's threshold of saturation on a log scale (from ``floor`` to 1).

    H&E tissue's saturation spans a decade (pale stroma 0.05, nuclei 0.6) while
    glass is a narrow spike near 0.01: on a linear scale Otsu splits the
    tissue (0.2 on a mosaic of real PCam tiles, losing 24% of the tissue
    tiles); on a log scale the two are comparable modes (0.04, losing 3%).
    """
    span = -np.log10(floor)
    scaled = (np.log10(np.maximum(sat, floor)) + span) / span
    return float(10 ** (otsu(scaled) * span - span))


def tissue_mask(thumbnail: np.ndarray, threshold: float = 0.0, speck_px: int = 16,
                hole_px: int = 64) -> tuple[np.ndarray, float]:
    """Where a thumbnail shows tissue.

    Args:
        threshold: saturation above which a pixel is tissue (0: ``log_otsu``, not
            below ``MIN_SATURATION``, so that blank glass finds no tissue in its noise).
        speck_px: pieces of tissue smaller than this (thumbnail pixels) are dropped.
        hole_px: holes in tissue smaller than this are filled.

    Returns:
        ``(mask, threshold used)``: bool (H, W).
    """
    from scipy import ndimage

    sat = saturation(thumbnail)
    used = threshold or max(MIN_SATURATION, log_otsu(sat))
    mask = sat > used
    holes, n = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if n:
        sizes = np.bincount(holes.ravel())
        mask |= (sizes < hole_px)[holes] & (holes > 0)
    pieces, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(pieces.ravel())
        mask &= (sizes >= speck_px)[pieces]
    return mask, float(used)
