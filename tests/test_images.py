"""Tests for pcam.data.images: the one decoder for every image file pcam reads.

Real images come from ../shared/data (beside the repository); those tests
skip, naming the missing folder, when it is absent. Everything else is made
in tmp_path with Pillow, tifffile or imagecodecs, with known pixel values.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from pcam.data.images import (IMAGE_SUFFIXES, decode_bytes, decode_image, is_hidden, is_image_name,
                              probe, to_tile)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ORAL = DATA / "oral-oscc"
KATHER = DATA / "kather-8class"
PCAM_TRAIN = DATA / "pcam-real" / "train"


def need(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"real images not found at {folder}: this test runs only beside ../shared/data")
    return folder


def first_files(folder: Path, pattern: str, per_class: int) -> list[Path]:
    files = []
    for cls in sorted(p for p in need(folder).iterdir() if p.is_dir()):
        files += sorted(cls.glob(pattern))[:per_class]
    assert files, f"no {pattern} files under {folder}"
    return files


def rgb_ramp(height: int, width: int) -> np.ndarray:
    """A deterministic RGB image in which every channel and position differ."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 7) % 256, (y * 5) % 256, (x + y * 3) % 256], axis=-1).astype(np.uint8)


def ok(result) -> np.ndarray:
    image, problem = result
    assert problem == "" and image is not None, problem
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.flags.c_contiguous and image.flags.writeable
    return image


def bad(result) -> str:
    image, problem = result
    assert image is None and problem, "expected a problem, got an image"
    return problem


def save_pillow(path: Path, image: Image.Image, **kw) -> Path:
    image.save(path, **kw)
    return path


# --- names ---------------------------------------------------------------------


def test_image_names_any_case():
    assert IMAGE_SUFFIXES == (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".webp")
    for name in ["a.tif", "a.TIF", "b.Tiff", "c.png", "d.JPG", "e.jpeg", "f.BMP", "dir/g.JpEg",
                 "h.WebP"]:
        assert is_image_name(name), name
    for name in ["a.txt", "tif", "a.tif.zip", "a.gif", "a", ".tif_backup"]:
        assert not is_image_name(name), name


def test_hidden_names():
    for name in [".DS_Store", "._x.jpg", ".ipynb_checkpoints", "__MACOSX", "Thumbs.db",
                 "thumbs.db", "desktop.ini", "Desktop.ini", "some/dir/.hidden.png"]:
        assert is_hidden(name), name
    for name in ["x.jpg", "01_TUMOR", "MACOSX", "thumbs.db.jpg", "a.DS_Store"]:
        assert not is_hidden(name), name


# --- real images -----------------------------------------------------------------


def test_real_oral_jpegs_224():
    for path in first_files(ORAL, "*.jpg", per_class=3):
        image = ok(decode_image(path))
        assert image.shape == (224, 224, 3), path
        assert np.array_equal(image, np.asarray(Image.open(path).convert("RGB")))
        assert probe(path) == ((224, 224), "")
        tile = to_tile(image, 96)
        assert tile.shape == (96, 96, 3) and tile.dtype == np.uint8


def test_real_kather_tiffs_150():
    for path in first_files(KATHER, "*.tif", per_class=1):
        image = ok(decode_image(path))
        assert image.shape == (150, 150, 3), path
        # An independent decoder (Pillow's libtiff) must agree pixel for pixel.
        assert np.array_equal(image, np.asarray(Image.open(path).convert("RGB"))), path
        assert probe(path) == ((150, 150), "")


def test_real_pcam_tiles_as_competition_tiffs_decode_to_their_pixels(tmp_path):
    sources = first_files(PCAM_TRAIN, "*.jpg", per_class=3)
    for src in sources:
        rgb = ok(decode_image(src))
        assert rgb.shape == (96, 96, 3)
        tif = tmp_path / f"{src.stem}.tif"
        # The competition's layout: uncompressed 96x96 RGB TIFFs.
        tifffile.imwrite(tif, rgb, photometric="rgb")
        assert np.array_equal(ok(decode_image(tif)), rgb)
        assert np.array_equal(tifffile.imread(tif), rgb)


# --- bit depth, channels, modes -------------------------------------------------------

# 16-bit values and round(v / 257): 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1,
# 25828/257 = 100.498 -> 100, 25829 -> 101 (the high byte would give 100, 100).
V16 = np.array([0, 128, 129, 25828, 25829, 257 * 200, 65534, 65535], dtype=np.uint16)
V8 = np.array([0, 0, 1, 100, 101, 200, 255, 255], dtype=np.uint8)


def test_16bit_rgb_tiff_scaled(tmp_path):
    rgb16 = np.stack([V16, V16[::-1], np.full_like(V16, 257 * 7)], axis=-1)[None]  # (1, 8, 3)
    tifffile.imwrite(tmp_path / "a.tif", rgb16, photometric="rgb")
    image = ok(decode_image(tmp_path / "a.tif"))
    assert image.shape == (1, 8, 3)
    assert np.array_equal(image[0, :, 0], V8)
    assert np.array_equal(image[0, :, 1], V8[::-1])
    assert np.all(image[..., 2] == 7)


def test_16bit_grey_png_scaled(tmp_path):
    path = save_pillow(tmp_path / "g.png", Image.fromarray(np.tile(V16, (2, 1))))
    assert Image.open(path).mode == "I;16"
    image = ok(decode_image(path))
    assert image.shape == (2, 8, 3)
    assert np.array_equal(image[1, :, 0], V8)
    assert np.array_equal(image[..., 0], image[..., 2])


def test_16bit_rgb_png_scaled_like_tiff(tmp_path):
    rgb16 = np.stack([V16, V16[::-1], V16], axis=-1)[None]
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(rgb16))
    tifffile.imwrite(tmp_path / "c.tif", rgb16, photometric="rgb")
    image = ok(decode_image(tmp_path / "c.png"))
    assert np.array_equal(image[0, :, 0], V8)  # not Pillow's high byte
    assert np.array_equal(image, ok(decode_image(tmp_path / "c.tif")))


def test_16bit_rgba_png_opaque_and_transparent(tmp_path):
    rgba = np.zeros((3, 4, 4), np.uint16)
    rgba[..., :3] = 257 * 50
    rgba[..., 3] = 65535
    (tmp_path / "o.png").write_bytes(imagecodecs.png_encode(rgba))
    assert np.all(ok(decode_image(tmp_path / "o.png")) == 50)
    rgba[0, 0, 3] = 65534
    (tmp_path / "t.png").write_bytes(imagecodecs.png_encode(rgba))
    assert "transparent pixels (1 with alpha < 65535)" in bad(decode_image(tmp_path / "t.png"))


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_grey_repeated_to_rgb(tmp_path, fmt):
    grey = rgb_ramp(5, 7)[..., 0]
    path = tmp_path / f"g.{fmt}"
    if fmt == "png":
        save_pillow(path, Image.fromarray(grey, "L"))
    else:
        tifffile.imwrite(path, grey, photometric="minisblack")
    image = ok(decode_image(path))
    assert image.shape == (5, 7, 3)
    for c in range(3):
        assert np.array_equal(image[..., c], grey)


def test_grey_tiff_with_trailing_channel_axis(tmp_path):
    grey = rgb_ramp(4, 6)[..., 1:2]  # (H, W, 1)
    tifffile.imwrite(tmp_path / "g1.tif", grey, photometric="minisblack")
    assert np.array_equal(ok(decode_image(tmp_path / "g1.tif")), np.repeat(grey, 3, axis=2))


def test_miniswhite_tiff_inverted(tmp_path):
    grey = rgb_ramp(4, 6)[..., 0]
    tifffile.imwrite(tmp_path / "w.tif", grey, photometric="miniswhite")
    assert np.array_equal(ok(decode_image(tmp_path / "w.tif"))[..., 0], 255 - grey)


def test_bilevel_png(tmp_path):
    bits = (rgb_ramp(8, 8)[..., 0] > 20)
    save_pillow(tmp_path / "b.png", Image.fromarray(bits).convert("1"))
    image = ok(decode_image(tmp_path / "b.png"))
    assert set(np.unique(image)) <= {0, 255}
    assert np.array_equal(image[..., 0] == 255, bits)


def test_palette_png(tmp_path):
    rgb = rgb_ramp(6, 9)
    im = Image.fromarray(rgb).quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    save_pillow(tmp_path / "p.png", im)
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(ok(decode_image(tmp_path / "p.png")), np.asarray(im.convert("RGB")))


def test_palette_png_with_transparency(tmp_path):
    im = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    # A transparent index that no pixel uses: every pixel is opaque.
    save_pillow(tmp_path / "unused.png", im, transparency=3)
    image = ok(decode_image(tmp_path / "unused.png"))
    assert image[0, 0].tolist() == [255, 0, 0] and image[1, 1].tolist() == [0, 0, 255]
    save_pillow(tmp_path / "used.png", im, transparency=2)
    assert "transparent pixels (1 with alpha < 255)" in bad(decode_image(tmp_path / "used.png"))


def test_cmyk_jpeg_close_to_source_colours(tmp_path):
    colours = [(200, 40, 60), (30, 160, 90), (90, 60, 200), (240, 230, 220)]
    rgb = np.zeros((32, 128, 3), np.uint8)
    for i, colour in enumerate(colours):
        rgb[:, i * 32:(i + 1) * 32] = colour
    save_pillow(tmp_path / "c.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    image = ok(decode_image(tmp_path / "c.jpg"))
    for i, colour in enumerate(colours):
        got = image[8:24, i * 32 + 8:i * 32 + 24].reshape(-1, 3).mean(axis=0)
        assert np.abs(got - colour).max() <= 6, (colour, got)


def test_cmyk_tiff(tmp_path):
    cmyk = np.zeros((2, 2, 4), np.uint8)
    cmyk[0, 0] = (0, 0, 0, 0)        # white
    cmyk[0, 1] = (0, 0, 0, 255)      # black
    cmyk[1, 0] = (255, 0, 0, 0)      # cyan
    cmyk[1, 1] = (0, 128, 255, 0)    # orange-ish
    tifffile.imwrite(tmp_path / "k.tif", cmyk, photometric="separated")
    image = ok(decode_image(tmp_path / "k.tif"))
    assert image[0, 0].tolist() == [255, 255, 255]
    assert image[0, 1].tolist() == [0, 0, 0]
    assert image[1, 0].tolist() == [0, 255, 255]
    assert image[1, 1].tolist() == [255, 127, 0]


def test_rgba_png_opaque_and_transparent(tmp_path):
    rgb = rgb_ramp(10, 12)
    rgba = np.dstack([rgb, np.full((10, 12), 255, np.uint8)])
    save_pillow(tmp_path / "o.png", Image.fromarray(rgba, "RGBA"))
    assert np.array_equal(ok(decode_image(tmp_path / "o.png")), rgb)
    rgba[3, 4, 3] = 254
    save_pillow(tmp_path / "t.png", Image.fromarray(rgba, "RGBA"))
    problem = bad(decode_image(tmp_path / "t.png"))
    assert "transparent" in problem and "(1 with alpha < 255)" in problem
    assert "white background" in problem


def test_transparent_count_uses_thousands_separator(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 3] = 255
    rgba.reshape(-1, 4)[:1234, 3] = 0  # the first 1,234 pixels fully transparent
    save_pillow(tmp_path / "many.png", Image.fromarray(rgba, "RGBA"))
    assert "(1,234 with alpha < 255)" in bad(decode_image(tmp_path / "many.png"))


def test_grey_alpha_and_rgba_tiffs(tmp_path):
    grey = rgb_ramp(3, 5)[..., 2]
    la = np.dstack([grey, np.full_like(grey, 255)])
    tifffile.imwrite(tmp_path / "la.tif", la, photometric="minisblack", extrasamples=["unassalpha"])
    assert np.array_equal(ok(decode_image(tmp_path / "la.tif"))[..., 1], grey)
    rgba = np.dstack([rgb_ramp(3, 5), np.full((3, 5), 255, np.uint8)])
    rgba[0, 0, 3] = 0
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert "transparent pixels (1 with alpha < 255)" in bad(decode_image(tmp_path / "rgba.tif"))


def test_planar_tiff(tmp_path):
    rgb = rgb_ramp(7, 9)
    # Separate planes are written, and read by tifffile, as (3, H, W).
    tifffile.imwrite(tmp_path / "p.tif", np.ascontiguousarray(rgb.transpose(2, 0, 1)),
                     photometric="rgb", planarconfig="separate")
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        assert tif.pages.first.asarray().shape == (3, 7, 9)
    assert np.array_equal(ok(decode_image(tmp_path / "p.tif")), rgb)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "packbits", "jpeg"])
def test_compressed_tiffs(tmp_path, compression):
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (180, 90, 120)
    rgb[:, 24:] = (60, 140, 210)
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", compression=compression)
    assert tifffile.TiffFile(path).pages.first.compression.name.lower().startswith(
        {"zlib": "adobe_deflate", "lzw": "lzw", "packbits": "packbits", "jpeg": "jpeg"}[compression])
    image = ok(decode_image(path))
    if compression == "jpeg":  # lossy (and chroma-subsampled at the edge): close inside
        assert np.abs(image[:, :16].astype(int) - rgb[:, :16]).max() <= 4
        assert np.abs(image[:, 32:].astype(int) - rgb[:, 32:]).max() <= 4
    else:
        assert np.array_equal(image, rgb)


def test_float_tiff_is_a_problem(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.random.default_rng(0).random((4, 4, 3), np.float32),
                     photometric="rgb")
    problem = bad(decode_image(tmp_path / "f.tif"))
    assert problem == "is a 32-bit float TIFF; convert it to 8- or 16-bit RGB"
    assert probe(tmp_path / "f.tif") == (None, problem)


def test_other_dtypes_and_shapes_are_problems(tmp_path):
    tifffile.imwrite(tmp_path / "i.tif", np.zeros((4, 4), np.int16))
    assert "16-bit signed integer TIFF" in bad(decode_image(tmp_path / "i.tif"))
    tifffile.imwrite(tmp_path / "u32.tif", np.zeros((4, 4), np.uint32))
    assert "32-bit unsigned integer TIFF" in bad(decode_image(tmp_path / "u32.tif"))
    tifffile.imwrite(tmp_path / "c5.tif", np.zeros((4, 4, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    assert "expected height x width" in bad(decode_image(tmp_path / "c5.tif"))
    save_pillow(tmp_path / "f.tiff.png", Image.new("F", (3, 3)), format="TIFF")
    assert "32-bit float" in bad(decode_image(tmp_path / "f.tiff.png"))


# --- formats, content over extension, broken files ----------------------------------------


def test_bmp_and_upper_case_extensions(tmp_path):
    rgb = rgb_ramp(9, 11)
    paths = [save_pillow(tmp_path / "a.bmp", Image.fromarray(rgb)),
             save_pillow(tmp_path / "B.BMP", Image.fromarray(rgb)),
             save_pillow(tmp_path / "C.PNG", Image.fromarray(rgb))]
    tifffile.imwrite(tmp_path / "D.TIF", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "E.TIFF", rgb, photometric="rgb")
    paths += [tmp_path / "D.TIF", tmp_path / "E.TIFF"]
    for path in paths:
        assert is_image_name(path.name)
        assert np.array_equal(ok(decode_image(path)), rgb), path
    save_pillow(tmp_path / "F.JPG", Image.fromarray(rgb), quality=95)
    assert ok(decode_image(tmp_path / "F.JPG")).shape == (9, 11, 3)


def test_content_decides_not_extension(tmp_path):
    rgb = rgb_ramp(16, 16)
    save_pillow(tmp_path / "jpeg.png", Image.fromarray(rgb), format="JPEG", quality=95)
    assert np.abs(ok(decode_image(tmp_path / "jpeg.png")).astype(int) - rgb).max() <= 16
    tifffile.imwrite(tmp_path / "tiff.jpg", rgb, photometric="rgb")
    assert np.array_equal(ok(decode_image(tmp_path / "tiff.jpg")), rgb)
    (tmp_path / "x.png").write_text("this is not a picture\n")
    assert bad(decode_image(tmp_path / "x.png")).startswith("is not an image")


def test_truncated_png_jpeg_tiff(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = {}
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        full[fmt] = buf.getvalue()
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, photometric="rgb")
    full["TIFF"] = buf.getvalue()
    for fmt, data in full.items():
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(data[:len(data) // 2])
        problem = bad(decode_image(path))
        assert problem.startswith(f"cannot be decoded as {fmt}"), problem
    assert bad(decode_image(tmp_path / "cut.png")) == "cannot be decoded as PNG (truncated file)"
    assert bad(decode_image(tmp_path / "cut.jpeg")) == "cannot be decoded as JPEG (truncated file)"
    assert bad(decode_image(tmp_path / "cut.tiff")) == "cannot be decoded as TIFF (truncated file)"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_empty_missing_and_folder(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert bad(decode_image(tmp_path / "empty.png")) == "is empty (0 bytes)"
    assert bad(decode_image(tmp_path / "nope.tif")) == "does not exist"
    assert bad(decode_image(tmp_path)).startswith("is a folder")
    assert probe(tmp_path / "nope.tif") == (None, "does not exist")
    assert bad(decode_bytes(b"")) == "is empty (0 bytes)"


def test_decompression_bomb_is_a_problem(tmp_path, monkeypatch):
    save_pillow(tmp_path / "big.png", Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # warning above 4000, error above 8000
    assert "too large to decode safely" in bad(decode_image(tmp_path / "big.png"))
    assert "too large to decode safely" in probe(tmp_path / "big.png")[1]
    save_pillow(tmp_path / "warn.png", Image.new("RGB", (50, 100)))  # 5000: only a warning
    assert "too large to decode safely" in bad(decode_image(tmp_path / "warn.png"))


# --- decode_bytes, probe ------------------------------------------------------------------


def crafted_files(tmp_path: Path) -> dict[str, Path]:
    rgb = rgb_ramp(20, 30)
    files = {
        "png": save_pillow(tmp_path / "a.png", Image.fromarray(rgb)),
        "jpeg": save_pillow(tmp_path / "a.jpg", Image.fromarray(rgb), quality=90),
        "bmp": save_pillow(tmp_path / "a.bmp", Image.fromarray(rgb)),
        "grey16png": save_pillow(tmp_path / "g16.png",
                                 Image.fromarray(rgb[..., 0].astype(np.uint16) * 250)),
    }
    for name, kw in {"tif": {}, "lzw.tif": {"compression": "lzw"},
                     "jpeg.tif": {"compression": "jpeg"}}.items():
        tifffile.imwrite(tmp_path / f"a.{name}", rgb, photometric="rgb", **kw)
        files[name] = tmp_path / f"a.{name}"
    return files


def test_decode_bytes_equals_decode_image(tmp_path):
    files = crafted_files(tmp_path)
    (tmp_path / "x.png").write_text("not an image")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    for path in [*files.values(), tmp_path / "x.png", tmp_path / "cut.png"]:
        from_file, from_bytes = decode_image(path), decode_bytes(path.read_bytes(), path.name)
        assert from_file[1] == from_bytes[1], path
        if from_file[0] is None:
            assert from_bytes[0] is None
        else:
            assert np.array_equal(from_file[0], from_bytes[0]), path


def test_probe_sizes_without_swapping(tmp_path):
    for name, path in crafted_files(tmp_path).items():
        assert probe(path) == ((20, 30), ""), name
        assert ok(decode_image(path)).shape == (20, 30, 3)


def test_probe_garbage_and_text(tmp_path):
    (tmp_path / "x.png").write_text("hello")
    assert probe(tmp_path / "x.png")[0] is None
    assert probe(tmp_path / "x.png")[1].startswith("is not an image")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    size, problem = probe(tmp_path / "bad.tif")
    assert size is None and problem.startswith("cannot be decoded as TIFF")


def test_probe_reads_no_pixels(tmp_path):
    # The header of a PNG whose pixel data is cut away still probes: proof
    # that probe does not decode; decode_image reports the cut.
    data = (save_pillow(tmp_path / "a.png", Image.fromarray(rgb_ramp(40, 50)))).read_bytes()
    (tmp_path / "head.png").write_bytes(data[:60])
    assert probe(tmp_path / "head.png") == ((40, 50), "")
    assert bad(decode_image(tmp_path / "head.png")).startswith("cannot be decoded as PNG")


def test_images_module_does_not_import_tensorflow():
    import subprocess

    code = "import sys, pcam.data.images; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- to_tile -------------------------------------------------------------------------------


def test_to_tile_shrink_keeps_mean_colour():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    tile = to_tile(image, 96)
    assert tile.shape == (96, 96, 3) and tile.dtype == np.uint8
    assert np.abs(tile.mean(axis=(0, 1)) - image.mean(axis=(0, 1))).max() <= 1.0
    # Area averaging smooths noise; nearest-neighbour would keep its spread.
    assert tile.std() < image.std() * 0.8
    assert np.array_equal(tile, to_tile(image.copy(), 96))  # deterministic


def test_to_tile_centre_crop_drops_margins():
    image = np.zeros((150, 200, 3), np.uint8)
    image[:, :] = (200, 30, 30)          # red margins, 25 px each side
    image[:, 25:175] = (30, 200, 30)     # green centre square 150x150
    tile = to_tile(image, 96)
    assert tile.shape == (96, 96, 3)
    assert np.all(tile == (30, 200, 30)), "a margin leaked into the tile"
    tall = np.ascontiguousarray(image.transpose(1, 0, 2))  # 200x150, margins top/bottom
    assert np.all(to_tile(tall, 96) == (30, 200, 30))
    # Crop only, no resize, when the short side already is the size.
    assert np.array_equal(to_tile(image, 150), image[:, 25:175])


def test_to_tile_identity_when_size_matches():
    image = rgb_ramp(96, 96)
    before = image.copy()
    assert to_tile(image, 96) is image
    assert np.array_equal(image, before)


def test_to_tile_enlarges():
    image = rgb_ramp(64, 64)
    tile = to_tile(image, 96)
    assert tile.shape == (96, 96, 3) and tile.dtype == np.uint8
    flat = np.full((64, 64, 3), 77, np.uint8)
    assert np.all(to_tile(flat, 96) == 77)
    # Bicubic keeps a smooth ramp monotone along its axis.
    ramp = np.repeat(np.repeat(np.linspace(0, 250, 64).astype(np.uint8)[None, :, None], 64, 0), 3, 2)
    row = to_tile(ramp, 96)[48, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0) and row[0] <= 5 and row[-1] >= 245


def test_to_tile_rejects_wrong_input():
    with pytest.raises(ValueError):
        to_tile(np.zeros((10, 10), np.uint8), 8)
    with pytest.raises(ValueError):
        to_tile(np.zeros((10, 10, 3), np.float32), 8)
    with pytest.raises(ValueError):
        to_tile(np.zeros((10, 10, 3), np.uint8), 0)
