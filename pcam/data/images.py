"""One image decoder for all of pcam: any tile or picture file as RGB uint8.

Every place that reads pixels from a file (the ingest of competition tiles,
folders of class images, ``explain`` and the web app's uploads) goes through
:func:`decode_image` / :func:`decode_bytes`, so the same file gives the same
array everywhere and the same sentence when it cannot be used.

This module must not import TensorFlow: it runs in forked ingest worker
processes, where importing (or inheriting an initialised) TensorFlow costs
seconds and memory per worker and can deadlock after ``fork``.

Decisions that apply to every format:

* The file's content decides how it is decoded, not its extension: a JPEG
  named ``.png`` decodes as a JPEG; a text file named ``.png`` is reported as
  "is not an image". TIFF (classic and BigTIFF) goes through ``tifffile`` with
  any compression ``imagecodecs`` reads; everything else through Pillow.
* 16-bit samples become 8-bit as ``round(v / 257)``: 257 = 65535 / 255 maps
  0 -> 0 and 65535 -> 255 exactly and is the inverse of the usual 8 -> 16-bit
  widening (``v8 * 257``), so an 8-bit image saved as 16-bit comes back
  unchanged. (Taking the high byte, ``v >> 8``, as Pillow does for 16-bit RGB
  PNGs, is up to one level darker.) 16-bit PNGs are therefore decoded with
  ``imagecodecs`` so a 16-bit PNG and a 16-bit TIFF of the same pixels give
  the same array.
* Alpha is dropped only when every pixel is fully opaque; otherwise the file
  is a problem, because what lies under transparent pixels is arbitrary (often
  black) and would silently change what the classifier sees.
* Colour is taken as stored: no ICC colour management and no EXIF rotation
  (neither tifffile nor the old TensorFlow path applied them, and tissue
  classifiers are trained on the stored pixels). CMYK JPEGs are converted by
  Pillow, which undoes the inverted CMYK that Adobe applications write (the
  common kind); CMYK TIFFs by ``255 * (1 - c) * (1 - k)`` per channel.
* Multi-page / animated files: the first page / frame is used.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path, PurePath
from typing import BinaryIO, Sequence

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from pcam.errors import PcamError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".webp")

# Names that scans must skip: macOS resource forks and metadata ("._x.jpg",
# ".DS_Store", "__MACOSX/" in zips made by Finder), editor/notebook folders
# (".ipynb_checkpoints") and Windows thumbnail caches. Compared in lower case
# because Windows and macOS file systems are case-insensitive.
_HIDDEN_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})

# Classic TIFF ("II*\0", "MM\0*") and BigTIFF ("II+\0", "MM\0+") magic numbers:
# the first four bytes decide the decoder, whatever the extension says.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Pillow modes that convert("RGB") turns into colour without losing anything
# we keep (CMYK: Pillow has already undone Adobe's inversion when reading).
_PILLOW_TO_RGB = frozenset({"1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"})
# Modes with transparency: converted to RGBA so one alpha check covers them.
_PILLOW_TO_RGBA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PILLOW_16BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def is_image_name(name: str | PurePath) -> bool:
    """Whether a file name has one of the image suffixes, in any case.

    Args:
        name: A file name or path; only its suffix is looked at.

    Returns:
        True for ``x.tif``, ``X.TIFF``, ``y.JPG`` and the like. It does not
        exclude hidden files such as ``._x.jpg``; scans check
        :func:`is_hidden` too.
    """
    return PurePath(name).suffix.lower() in IMAGE_SUFFIXES


def is_hidden(name: str | PurePath) -> bool:
    """Whether a scan must ignore a file or folder of this name.

    Args:
        name: A file or folder name, or a path (its last component is used).

    Returns:
        True for names starting with "." (``.DS_Store``, ``._x.jpg``,
        ``.ipynb_checkpoints``), ``__MACOSX``, ``Thumbs.db`` and
        ``desktop.ini`` (any case).
    """
    base = PurePath(name).name
    return base.startswith(".") or base.lower() in _HIDDEN_NAMES


def decode_image(path: str | Path) -> tuple[np.ndarray | None, str]:
    """Decode an image file into RGB uint8 pixels.

    Args:
        path: The file. Its content decides the decoder, not its extension.

    Returns:
        ``(image, "")`` with ``image`` a writeable, C-contiguous uint8 array
        of shape (H, W, 3); or ``(None, problem)`` where ``problem`` completes
        the sentence "<path> ...", e.g. "cannot be decoded as PNG (truncated
        file)". Never raises for a bad file.
    """
    try:
        # An open file handle, not a path: tifffile.imread on a path also
        # resolves it and probes for multi-file series, ~1.6x slower on the
        # 220,000 96x96 tiles of an ingest.
        with open(path, "rb") as fh:
            return _decode(fh)
    except OSError as err:  # only open() can get here: _decode catches its own
        return None, _open_problem(err)


def decode_bytes(data: bytes, name: str = "upload") -> tuple[np.ndarray | None, str]:
    """Decode an image held in memory (e.g. a web upload) into RGB uint8 pixels.

    Goes through the same code as :func:`decode_image` (on a file-like
    object), so a file and its bytes give the same array or the same problem.

    Args:
        data: The file's bytes.
        name: What the caller calls the data; only for the caller's messages
            (the problem string completes "<name> ..." just like a path).

    Returns:
        ``(image, "")`` or ``(None, problem)`` as :func:`decode_image`.
    """
    del name  # the problem is phrased to follow the name; it is not repeated
    return _decode(io.BytesIO(bytes(data)))


def probe(path: str | Path) -> tuple[tuple[int, int] | None, str]:
    """Read an image's size from its header without decoding pixels.

    Meant for scanning thousands of files before any long work: Pillow opens
    lazily (header only) and tifffile reads only the first page's tags. A
    file that probes fine may still fail :func:`decode_image` (e.g. cut off
    after its header); a problem reported here (not an image, a float TIFF, a
    decompression bomb) would also be reported by :func:`decode_image`.

    Args:
        path: The file.

    Returns:
        ``((height, width), "")`` or ``(None, problem)``, the problem phrased
        as for :func:`decode_image`.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(0)
            if not head:
                return None, "is empty (0 bytes)"
            if head[:4] in _TIFF_MAGIC:
                return _probe_tiff(fh)
            return _probe_pillow(fh)
    except OSError as err:
        return None, _open_problem(err)


def to_tile(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an image to a square and resize it to ``size`` x ``size``.

    The square's side is ``min(H, W)``; an odd leftover pixel is cut from the
    bottom / right. Shrinking uses area averaging (Pillow's BOX filter: each
    output pixel is the mean of the input pixels it covers, so no aliasing
    and the mean colour is kept); enlarging uses bicubic interpolation
    (smoother than bilinear, clipped to 0..255 by Pillow). Deterministic.

    Args:
        image: RGB uint8 array of shape (H, W, 3).
        size: The side of the tile, in pixels (> 0).

    Returns:
        A uint8 (size, size, 3) array: ``image`` itself, untouched, when it
        already has that shape; otherwise a new array.

    Raises:
        ValueError: If ``image`` is not (H, W, 3) uint8 or ``size`` < 1
            (a caller's mistake, not a bad file).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"to_tile needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if size < 1:
        raise ValueError(f"to_tile needs size >= 1, got {size}")
    height, width = image.shape[:2]
    if height == width == size:
        return image
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resample = Image.Resampling.BOX if side > size else Image.Resampling.BICUBIC
    resized = Image.fromarray(np.ascontiguousarray(square)).resize((size, size), resample)
    return np.array(resized, dtype=np.uint8)


# --- decoding ---------------------------------------------------------------


def _decode(fh: BinaryIO) -> tuple[np.ndarray | None, str]:
    """Decode from an open binary file-like object (a file or BytesIO)."""
    head = fh.read(8)
    fh.seek(0)
    if not head:
        return None, "is empty (0 bytes)"
    if head[:4] in _TIFF_MAGIC:
        return _decode_tiff(fh)
    return _decode_pillow(fh, head)


def _decode_tiff(fh: BinaryIO) -> tuple[np.ndarray | None, str]:
    try:
        with tifffile.TiffFile(fh) as tif:
            page = tif.pages.first
            image = page.asarray()
            # Read the tags that say how to interpret the samples while the
            # file is open (later access could need the handle).
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
            photometric = page.photometric
            bits = page.bitspersample
            colormap = page.colormap if photometric == tifffile.PHOTOMETRIC.PALETTE else None
    except Exception as err:  # tifffile/imagecodecs raise many types for broken files
        return None, f"cannot be decoded as TIFF ({_reason(err)})"
    # Fast path: what the competition's tiles are (8-bit RGB, contiguous).
    if (image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and not planar
            and photometric == tifffile.PHOTOMETRIC.RGB):
        return image, ""
    if image.dtype.kind == "f":
        return None, (f"is a {image.dtype.itemsize * 8}-bit float TIFF; "
                      "convert it to 8- or 16-bit RGB")
    if planar and image.ndim == 3:
        # tifffile gives separate planes as (samples, H, W); we want (H, W, samples).
        image = np.moveaxis(image, 0, -1)
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
        if image.ndim != 2:
            return None, f"is a palette TIFF of shape {_shape(image)}; expected one index per pixel"
        # The colour map is (3, 2**bits), 16-bit by the standard; some writers
        # put 8-bit values in it, which libtiff also detects by max < 256.
        table = np.asarray(colormap).T
        table = table.astype(np.uint8) if table.max() < 256 else table.astype(np.uint16)
        return _to_rgb8(np.ascontiguousarray(table[image.astype(np.intp)]), "TIFF")
    if photometric == tifffile.PHOTOMETRIC.SEPARATED:
        return _cmyk_tiff(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype == np.uint8 and 1 <= bits < 8:
        # tifffile unpacks 1/2/4-bit samples to 0..2**bits-1; stretch to 0..255.
        image = (image.astype(np.uint16) * 255 // ((1 << bits) - 1)).astype(np.uint8)
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and image.dtype in (np.uint8, np.uint16):
        # 0 means white in these files: invert so the array means what it shows.
        image = np.iinfo(image.dtype).max - image
    return _to_rgb8(image, "TIFF")


def _cmyk_tiff(image: np.ndarray) -> tuple[np.ndarray | None, str]:
    if image.ndim != 3 or image.shape[2] < 4 or image.dtype != np.uint8:
        return None, (f"is a CMYK TIFF of {_shape(image)} {image.dtype}; "
                      "convert it to 8- or 16-bit RGB")
    if image.shape[2] > 4:
        return None, "is a CMYK TIFF with extra channels; convert it to 8- or 16-bit RGB"
    # No ICC profile is applied: the plain ink model, as Pillow's CMYK -> RGB.
    ink = image.astype(np.uint32)
    white = 255 - ink[..., 3:4]
    rgb = (255 - ink[..., :3]) * white
    return ((rgb + 127) // 255).astype(np.uint8), ""


def _decode_pillow(fh: BinaryIO, head: bytes) -> tuple[np.ndarray | None, str]:
    # Truncated files are an error because PIL.ImageFile.LOAD_TRUNCATED_IMAGES
    # is False (never set it: it turns a cut-off file into a half-grey image).
    fmt = "image"
    try:
        with warnings.catch_warnings():
            # A DecompressionBombWarning (image larger than Pillow's limit)
            # becomes an error, so it ends as a problem, not a log line.
            # (catch_warnings is process-global state: fine in the ingest's
            # worker processes; threads share the filter only briefly.)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as im:
                fmt = im.format or "image"
                if head.startswith(_PNG_MAGIC) and _png_bit_depth(fh) == 16:
                    return _decode_png16(fh)
                im.load()
                return _pillow_to_rgb8(im, fmt)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
        return None, _pillow_problem(err, f"cannot be decoded as {fmt}")


def _pillow_problem(err: Exception, otherwise: str) -> str:
    """What a Pillow exception says about a file, as a problem phrase."""
    if isinstance(err, UnidentifiedImageError):
        return "is not an image (not TIFF, PNG, JPEG, BMP or another format Pillow reads)"
    if isinstance(err, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return (f"is too large to decode safely ({_reason(err)}); "
                "reduce it or raise PIL.Image.MAX_IMAGE_PIXELS knowingly")
    return f"{otherwise} ({_reason(err)})"


def _pillow_to_rgb8(im: Image.Image, fmt: str) -> tuple[np.ndarray | None, str]:
    mode = im.mode
    if mode in _PILLOW_16BIT:
        return _to_rgb8(np.asarray(im).astype(np.uint16), fmt)
    if mode == "I":
        # 32-bit integer mode: what Pillow uses for some 16-bit files
        # (PGM/PPM); accept it when the values fit in 16 bits.
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            return None, (f"is a 32-bit integer {fmt} with values outside 0..65535; "
                          "convert it to 8- or 16-bit RGB")
        return _to_rgb8(values.astype(np.uint16), fmt)
    if mode == "F":
        return None, f"is a 32-bit float {fmt}; convert it to 8- or 16-bit RGB"
    if mode in _PILLOW_TO_RGBA or "transparency" in im.info:
        # Palette and grey images may carry a transparent colour (tRNS);
        # through RGBA, one alpha check decides for all of them.
        im = im.convert("RGBA")
    elif mode in _PILLOW_TO_RGB:
        if mode != "RGB":
            im = im.convert("RGB")
    else:
        return None, f"is a {fmt} in Pillow mode {mode!r}, which pcam cannot turn into RGB"
    return _to_rgb8(np.asarray(im), fmt)


def _png_bit_depth(fh: BinaryIO) -> int:
    """The bit depth from a PNG's IHDR (byte 24), leaving ``fh`` where it was."""
    where = fh.tell()
    try:
        fh.seek(24)
        depth = fh.read(1)
    finally:
        fh.seek(where)
    return depth[0] if depth else 0


def _decode_png16(fh: BinaryIO) -> tuple[np.ndarray | None, str]:
    # Pillow keeps only the high byte of 16-bit RGB(A) PNGs; imagecodecs gives
    # all 16 bits, so the scaling matches 16-bit TIFFs exactly.
    import imagecodecs  # only here: tifffile needs it for compressed TIFFs anyway

    fh.seek(0)
    try:
        image = imagecodecs.png_decode(fh.read())
    except Exception as err:  # imagecodecs raises its own error types
        return None, f"cannot be decoded as PNG ({_reason(err)})"
    return _to_rgb8(image, "PNG")


def _to_rgb8(image: np.ndarray, fmt: str) -> tuple[np.ndarray | None, str]:
    """(H, W), (H, W, 1|2|3|4) uint8 or uint16 samples as (H, W, 3) uint8."""
    if image.dtype not in (np.uint8, np.uint16):
        kind = {"f": "float", "i": "signed integer", "u": "unsigned integer"}.get(
            image.dtype.kind, str(image.dtype))
        return None, (f"is a {image.dtype.itemsize * 8}-bit {kind} {fmt}; "
                      "convert it to 8- or 16-bit RGB")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or 0 in image.shape:
        return None, (f"has shape {_shape(image)}; expected height x width with "
                      "1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels")
    channels = image.shape[2]
    if channels in (2, 4):
        top = np.iinfo(image.dtype).max
        alpha = image[..., -1]
        transparent = int(np.count_nonzero(alpha != top))
        if transparent:
            return None, (f"has transparent pixels ({transparent:,} with alpha < {top}); "
                          "flatten it onto a white background first")
        image = image[..., :-1]
    if image.dtype == np.uint16:
        # round(v / 257) in integers: (v + 128) // 257 (no ties are possible).
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if not (image.flags.c_contiguous and image.flags.writeable):
        image = np.array(image, order="C")
    return image, ""


# --- probing -----------------------------------------------------------------


def _probe_tiff(fh: BinaryIO) -> tuple[tuple[int, int] | None, str]:
    try:
        with tifffile.TiffFile(fh) as tif:
            page = tif.pages.first
            size = (int(page.imagelength), int(page.imagewidth))
            dtype = page.dtype  # from the tags; no pixels are read
    except Exception as err:  # tifffile raises many types for broken files
        return None, f"cannot be decoded as TIFF ({_reason(err)})"
    if dtype is not None and dtype.kind == "f":
        return None, f"is a {dtype.itemsize * 8}-bit float TIFF; convert it to 8- or 16-bit RGB"
    return size, ""


def _probe_pillow(fh: BinaryIO) -> tuple[tuple[int, int] | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as im:  # lazy: reads the header only
                width, height = im.size
                mode, fmt = im.mode, im.format or "image"
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
        return None, _pillow_problem(err, "cannot be read as an image")
    if mode == "F":
        return None, f"is a 32-bit float {fmt}; convert it to 8- or 16-bit RGB"
    return (height, width), ""


# --- messages ------------------------------------------------------------------


def _reason(err: BaseException) -> str:
    """A short reason from a decoder's exception, for the problem string."""
    text = " ".join(str(err).split())
    # Pillow says "truncated"; tifffile says "failed to read N bytes, got M"
    # for an uncompressed TIFF that was cut off.
    if ("truncat" in text.lower() or "failed to read" in text.lower()
            or isinstance(err, EOFError)):
        return "truncated file"
    return f"{type(err).__name__}: {text[:80]}" if text else type(err).__name__


def _open_problem(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "does not exist"
    if isinstance(err, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(err, PermissionError):
        return "cannot be read (permission denied)"
    return f"cannot be read ({err.strerror or type(err).__name__})"


def _shape(image: np.ndarray) -> str:
    return "x".join(map(str, image.shape))


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named, or found under folders named (recursively, sorted;
    hidden files and non-images skipped)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name)
                            and not any(is_hidden(part) for part in p.relative_to(path).parts))
        elif path.is_file():
            found.append(path)
        else:
            raise PcamError(f"--images {path}: no such file or folder")
    if not found:
        raise PcamError(f"--images {' '.join(map(str, paths))}: no image files there "
                        "(TIFF, PNG, JPEG or BMP)")
    return found


def window_starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Window starts along one axis: every ``stride`` pixels, and one ending on the edge."""
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return np.asarray(starts)


def cut_windows(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, tile: int) -> np.ndarray:
    """The (len(ys) * len(xs), tile, tile, 3) windows at the grid's positions,
    row by row (a gather from a strided view of ``image``; no Python loop)."""
    view = np.lib.stride_tricks.sliding_window_view(image, (tile, tile), axis=(0, 1))
    # view[y, x] is (3, tile, tile): channels first; put them last again.
    picked = view[ys[:, None], xs[None, :]]
    return np.ascontiguousarray(picked.reshape(-1, 3, tile, tile).transpose(0, 2, 3, 1))
