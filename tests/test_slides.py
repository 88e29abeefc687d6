"""Whole slides (scripts/slide.py) on synthetic pyramidal TIFFs of real PCam tiles.

The known answer (``tests.slide_maker``): tissue in a disc, tumour tiles in a
triangle. The model is the shipped PCam backbone with a head trained for two
epochs on 400 real train tiles (~25 s), told ``--mpp 0.972``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import PCAM_REAL, REPO
from tests.pcam_tiles_run import class_folders
from tests.slide_maker import CELL, PCAM_MPP, make_mosaic, write_tiff

pytest.importorskip("openslide", reason="the slides extra: pip install 'pcam[slides]'")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from pcam.commands.train import main

    if not PCAM_REAL.is_dir():
        pytest.skip(f"real PCam tiles not found at {PCAM_REAL}")
    work = tmp_path_factory.mktemp("slide-run")
    data = class_folders(work / "data")
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in (
            "--data-dir", data, "--positive", "1", "--mpp", PCAM_MPP, "--store-dir",
            work / "store", "--runs-dir", work / "runs", "--run", "r", "--backbone", "cpu-cnn",
            "--weights", "pcam", "--epochs-frozen", 2, "--epochs-finetune", 0, "--folds", 2,
            "--fold", 0, "--batch-size", 32, "--no-report")])
    assert done.value.code == 0
    return work / "runs" / "r"


@pytest.fixture(scope="module")
def mosaic():
    return make_mosaic(24)


def slide_main(*args) -> int:
    from pcam.commands.slide import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code


def test_known_answer_through_the_command(run, mosaic, tmp_path, capsys):
    from shapely.geometry import box, shape
    from shapely.ops import unary_union

    from pcam.metrics import auc
    from pcam.predict.ensemble import load_ensemble, predict_tiles

    (tmp_path / "slides").mkdir()
    write_tiff(tmp_path / "slides" / "cohort-a.tif", mosaic.image, PCAM_MPP)
    out = tmp_path / "out"
    assert slide_main("--run", run, tmp_path / "slides", "--out", out) == 0
    tiles = pd.read_csv(out / "cohort-a.tiles.csv")
    rows, cols = (tiles["y"] // CELL).to_numpy(), (tiles["x"] // CELL).to_numpy()
    assert (tiles["size"] == CELL).all() and (tiles["x"] % CELL == 0).all()
    kept = np.zeros_like(mosaic.tissue)
    kept[rows, cols] = True
    covered = kept[mosaic.tissue].mean()
    background = kept[~mosaic.tissue].mean()
    print(f"tissue tiles kept {covered:.3f}, background tiles kept {background:.3f}")
    assert covered >= 0.95 and background <= 0.05

    # The slide's tiles rank tumour as the model ranks the same tiles fed directly.
    truth = mosaic.tumour[rows, cols].astype(int)
    order = np.flatnonzero(mosaic.tissue.ravel())  # tissue cells, row-major = mosaic.tiles
    direct = predict_tiles(load_ensemble(run, [0]), mosaic.tiles, (0,))[:, 1]
    by_cell = dict(zip(order.tolist(), direct))
    fed = np.array([by_cell[r * mosaic.tissue.shape[1] + c] for r, c in zip(rows, cols)])
    slide_auc, direct_auc = auc(truth, tiles["1"]), auc(truth, fed)
    print(f"AUC on the slide {slide_auc:.4f}, fed directly {direct_auc:.4f}")
    assert direct_auc > 0.85, "the test model is too weak to test with"
    assert abs(slide_auc - direct_auc) <= 0.03

    # slides.csv: the positive area fraction near the truth; the page lists the slide.
    table = pd.read_csv(out / "slides.csv")
    assert table["slide"].tolist() == ["cohort-a"]
    fraction = float(table["positive_fraction"].iloc[0])
    print(f"positive area fraction {fraction:.3f}, truth {mosaic.positive_fraction:.3f}")
    assert abs(fraction - mosaic.positive_fraction) <= 0.1
    assert table["tiles"].iloc[0] == len(tiles)
    page = (out / "index.html").read_text()
    assert "cohort-a" in page and 'src="cohort-a.heatmap.png"' in page

    # GeoJSON: a tile object per tile with its probabilities, and the positive
    # region overlapping the tumour triangle.
    features = json.loads((out / "cohort-a.geojson").read_text())["features"]
    objects = [f for f in features if f["properties"]["objectType"] == "tile"]
    assert len(objects) == len(tiles)
    assert set(objects[0]["properties"]["measurements"]) == {"p(0)", "p(1)", "tissue"}
    region = [f for f in features if f["properties"]["objectType"] == "annotation"]
    assert len(region) == 1
    drawn = shape(region[0]["geometry"])
    truth_region = unary_union([box(c * CELL, r * CELL, (c + 1) * CELL, (r + 1) * CELL)
                                for r, c in zip(*np.nonzero(mosaic.tumour))])
    iou = drawn.intersection(truth_region).area / drawn.union(truth_region).area
    print(f"positive region IoU with the tumour tiles {iou:.3f}")
    assert iou >= 0.4
    for name in ("cohort-a.heatmap.png", "cohort-a.mask.png", "cohort-a.slide.json"):
        assert (out / name).stat().st_size > 0


def test_two_scales_give_the_same_tiles(run, mosaic, tmp_path):
    """The same tissue written at 0.972 and at 0.486 um/px (every pixel doubled;
    its level 1 is the first slide's level 0) is read as the same tiles."""
    slides = tmp_path / "slides"
    slides.mkdir()
    image = mosaic.image[:12 * CELL, :12 * CELL]
    write_tiff(slides / "coarse.tif", image, PCAM_MPP, compression="zlib")
    write_tiff(slides / "fine.tif", image.repeat(2, axis=0).repeat(2, axis=1), PCAM_MPP / 2,
               compression="zlib")
    out = tmp_path / "out"
    assert slide_main("--run", run, slides, "--out", out) == 0
    coarse, fine = pd.read_csv(out / "coarse.tiles.csv"), pd.read_csv(out / "fine.tiles.csv")
    assert json.loads((out / "fine.slide.json").read_text())["level"] == 1
    assert (fine["size"] == 2 * CELL).all()
    fine[["x", "y"]] //= 2
    both = coarse.merge(fine, on=["x", "y"], suffixes=("", "_fine"))
    assert len(both) >= 0.97 * max(len(coarse), len(fine))  # the masks differ by a pixel or two
    np.testing.assert_allclose(both["1"], both["1_fine"], atol=1e-5)


def test_readers_agree_on_regions(mosaic, tmp_path):
    """SVS-like pages (OpenSlide), SubIFD pyramids and striped TIFFs (tifffile)
    give the same pixels; the resolution tags give the microns per pixel."""
    import tifffile

    from pcam.data.slides import open_slide

    image = mosaic.image[:1000, :1300]
    pages = write_tiff(tmp_path / "pages.tif", image, 0.5, compression="zlib")
    subifds = write_tiff(tmp_path / "subifds.tif", image, 0.5, compression="zlib", subifds=True)
    striped = tmp_path / "striped.tif"
    tifffile.imwrite(striped, image, photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")
    expected = {pages: ("openslide", 3), subifds: ("tifffile", 3), striped: ("tifffile", 1)}
    for path, (reader, levels) in expected.items():
        slide = open_slide(path)
        assert (slide.reader, len(slide.levels)) == (reader, levels), path
        assert slide.mpp == pytest.approx(0.5) and slide.dimensions == (1300, 1000)
        np.testing.assert_array_equal(slide.read(0, 1200, 900, 150, 150)[:100, :100],
                                      image[900:1000, 1200:1300])
        assert (slide.read(0, 1200, 900, 150, 150)[100:] == 255).all()  # past the edge: glass
        if levels > 1:  # level 1 is every other pixel, its region at level-0 coordinates
            np.testing.assert_array_equal(slide.read(1, 200, 100, 60, 40),
                                          image[100:180:2, 200:320:2])
        slide.close()
    assert open_slide(striped, mpp=0.25).mpp == 0.25  # --slide-mpp wins over the file


def test_cohort_with_broken_slides_resumes_and_reports(run, mosaic, tmp_path, capsys):
    """Three good slides, a truncated one, a text file named .svs, a blank one,
    one without resolution and one smaller than a tile: one line each, the
    others finished; a second run reads only what failed."""
    import tifffile

    slides = tmp_path / "slides"
    slides.mkdir()
    for k, name in enumerate(("a", "b", "c")):
        write_tiff(slides / f"{name}.tif", make_mosaic(10, offset=100 * k).image, PCAM_MPP)
    whole = write_tiff(tmp_path / "whole.tif", mosaic.image, PCAM_MPP).read_bytes()
    (slides / "truncated.tif").write_bytes(whole[:len(whole) // 3])
    (slides / "notes.svs").write_text("not a slide")
    write_tiff(slides / "blank.tif", np.full((800, 800, 3), 243, np.uint8), PCAM_MPP)
    tifffile.imwrite(slides / "no-mpp.tif", mosaic.image[900:1400, 900:1400], photometric="rgb",
                     tile=(256, 256))
    write_tiff(slides / "tiny.tif", mosaic.image[:60, :60], PCAM_MPP, levels=1, tile=16)
    out = tmp_path / "out"
    assert slide_main("--run", run, slides, "--out", out) == 1
    said = capsys.readouterr().out
    problems = {"truncated": "truncated", "notes": "not a slide pcam can read",
                "blank": "no tissue found", "no-mpp": "--slide-mpp", "tiny": "smaller than one tile"}
    for name, why in problems.items():
        line = next(x for x in said.splitlines() if x.startswith("  failed:") and name in x)
        assert why in line, line
        assert (out / f"{name}.failed.json").is_file()
    assert "Traceback" not in said
    table = pd.read_csv(out / "slides.csv")
    assert sorted(table["slide"]) == ["a", "b", "c"]
    page = (out / "index.html").read_text()
    assert "5 slide(s) could not be read" in page
    # Again: only the failed are tried; then the one without resolution, told its scale.
    assert slide_main("--run", run, slides, "--out", out) == 1
    assert "0 slide(s) read now, 3 finished before, 5 failed" in capsys.readouterr().out
    assert slide_main("--run", run, slides / "no-mpp.tif", "--out", out,
                      "--slide-mpp", PCAM_MPP) == 0
    assert not (out / "no-mpp.failed.json").exists()
    assert sorted(pd.read_csv(out / "slides.csv")["slide"]) == ["a", "b", "c", "no-mpp"]
    # Other settings read the finished slides again.
    assert slide_main("--run", run, slides / "a.tif", "--out", out, "--min-tissue", 0.8) == 0
    assert "1 slide(s) read now, 0 finished before" in capsys.readouterr().out


def test_read_only_slides_output_inside_and_overlay(run, tmp_path, capsys):
    """--out inside the slides' folder: its overlay TIFFs are never taken for
    slides; a read-only folder of slides is read, nothing written into it."""
    from pcam.data.slides import open_slide

    slides = tmp_path / "slides"
    slides.mkdir()
    write_tiff(slides / "a.tif", make_mosaic(10).image, PCAM_MPP)
    out = slides / "maps"
    assert slide_main("--run", run, slides, "--out", out, "--overlay-tiff") == 0
    overlay = open_slide(out / "a.overlay.tif")
    assert overlay.mpp == pytest.approx(CELL * PCAM_MPP)  # one pixel per tile, at scale
    assert slide_main("--run", run, slides, "--out", out, "--overlay-tiff") == 0
    assert "1 slide(s) -> " in capsys.readouterr().out  # not 2: the overlay is ours
    # A read-only folder of slides (as root, where the OS lets anyone write, this
    # still shows that nothing is written beside the slides).
    before = sorted(p.name for p in slides.iterdir())
    os.chmod(slides, 0o555)
    try:
        assert slide_main("--run", run, slides, "--out", tmp_path / "elsewhere") == 0
    finally:
        os.chmod(slides, 0o755)
    assert sorted(p.name for p in slides.iterdir()) == before


def test_run_without_scale_is_refused_until_told(run, tmp_path, capsys):
    """A run trained without --mpp: one line naming --run-mpp; with it, the slide is read."""
    older = tmp_path / "older"
    shutil.copytree(run, older)
    info = older / "fold_0" / "model.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "mpp": 0.0}))
    slides = tmp_path / "slides"
    slides.mkdir()
    write_tiff(slides / "a.tif", make_mosaic(8).image, PCAM_MPP)
    assert slide_main("--run", older, slides, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "--run-mpp" in err and "Traceback" not in err
    assert slide_main("--run", older, slides, "--out", tmp_path / "out",
                      "--run-mpp", PCAM_MPP) == 0


def test_shards_split_the_cohort_and_report_gathers(run, tmp_path, capsys):
    slides = tmp_path / "slides"
    slides.mkdir()
    for k in range(3):
        write_tiff(slides / f"s{k}.tif", make_mosaic(8, offset=50 * k).image, PCAM_MPP)
    out = tmp_path / "out"
    assert slide_main("--run", run, slides, "--out", out, "--shard", "0/2") == 0
    assert "(shard 0/2: 2 of 3)" in capsys.readouterr().out
    assert sorted(pd.read_csv(out / "slides.csv")["slide"]) == ["s0", "s2"]
    assert slide_main("--run", run, slides, "--out", out, "--shard", "1/2") == 0
    capsys.readouterr()
    (out / "slides.csv").unlink()
    assert slide_main("--out", out, "--report") == 0
    assert sorted(pd.read_csv(out / "slides.csv")["slide"]) == ["s0", "s1", "s2"]
    assert slide_main("--run", run, slides, "--out", out, "--shard", "2/2") == 2
    assert "--shard '2/2'" in capsys.readouterr().err


def test_killed_folder_resumes_where_it_stopped(run, tmp_path):
    """A kill -9 while a folder is being read: the rerun skips the finished slides,
    reads the rest, and leaves no temporary file."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for k in range(4):
        write_tiff(slides / f"s{k}.tif", make_mosaic(16, offset=20 * k).image, PCAM_MPP)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "scripts" / "slide.py"), "--run", str(run), str(slides),
           "--out", str(out), "--tta", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (out / "s0.slide.json").exists() and proc.poll() is None:
        assert time.time() < deadline, "the first slide never finished"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in out.glob("*.slide.json"))
    assert 1 <= len(finished) < 4, finished
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{4 - len(finished)} slide(s) read now, {len(finished)} finished before" in again.stdout
    assert sorted(pd.read_csv(out / "slides.csv")["slide"]) == ["s0", "s1", "s2", "s3"]
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".work"]


def test_k_class_scores_geojson_and_figure(tmp_path):
    """Three classes: an area per class, tile objects named by their most likely
    class, no positive region; the figure has a legend."""
    from pcam.explain.slides import TilePlan, geojson, slide_figure, slide_scores

    plan = TilePlan(level=0, side=100, downsample=1.0, grid=(2, 3), rows=np.array([0, 0, 1]),
                    cols=np.array([0, 2, 1]), tissue=np.array([1.0, 0.6, 0.9]), mpp=0.5)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    classes = ("stroma", "tumour", "debris")
    scores = slide_scores(probs, plan, classes, 0.5, tissue_mm2=0.01)
    assert scores["tiles"] == 3 and scores["tile_um"] == 50.0
    assert {k: scores[f"{k}_mm2"] for k in classes} == {"stroma": 0.0025, "tumour": 0.0025,
                                                        "debris": 0.0025}
    features = geojson(plan, probs, classes, 0.5)["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == [
        "stroma", "debris", "tumour"]
    assert features[1]["geometry"]["coordinates"][0][0] == [200, 0]
    fig = slide_figure(np.full((20, 30, 3), 240, np.uint8), 10.0, plan, probs, classes, "k")
    assert fig.axes[1].get_legend() is not None
