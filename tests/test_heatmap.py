"""Heat maps over images larger than a tile, with a known answer.

A mosaic of 8x8 real held-out PCam tiles (96 px, labels known) is mapped by
a simple-cnn run trained briefly on real PCam tiles: the map's mean over each
tile's centre (where a PCam label lives) must rank tumour above normal about
as well as the model does on the tiles themselves.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pcam.data.images import decode_image
from tests.conftest import REPO
from tests.pcam_tiles_run import trained_run, valid_tiles

SIDE = 8  # mosaic of SIDE x SIDE tiles


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def mosaic():
    paths, labels = valid_tiles(SIDE * SIDE // 2)
    tiles = np.stack([decode_image(p)[0] for p in paths])
    image = tiles.reshape(SIDE, SIDE, 96, 96, 3).transpose(0, 2, 1, 3, 4)
    return image.reshape(SIDE * 96, SIDE * 96, 3), tiles, labels


def test_mosaic_map_ranks_tumour_tiles_like_the_model(run, mosaic):
    from pcam.explain.heatmap import centre_means, heat_map
    from pcam.metrics import auc
    from pcam.predict.ensemble import load_ensemble, predict_tiles

    image, tiles, labels = mosaic
    ensemble = load_ensemble(run, [0])
    info = ensemble[0][1]
    model_auc = auc(labels, predict_tiles(ensemble, tiles, (0,))[:, 1])
    assert model_auc > 0.6, f"the trained model is too weak to test with (AUC {model_auc:.3f})"
    centres = [(96 * (i // SIDE) + 32, 96 * (i % SIDE) + 32, 32) for i in range(SIDE * SIDE)]
    for stride in (None, 24):  # default 32 (windows on the tiles) and one that is not
        heat = heat_map(ensemble, image, info, stride=stride, region=32)
        assert heat.pixels.shape == image.shape[:2]
        map_auc = auc(labels, centre_means(heat, centres))
        assert abs(map_auc - model_auc) <= 0.05, (stride, map_auc, model_auc)
    # The grid is the model's own answer on each window: at stride 32 the
    # window at a tile's corner is that tile.
    heat = heat_map(ensemble, image, info, region=32)
    on_tiles = heat.grid[::3, ::3].ravel()
    np.testing.assert_allclose(on_tiles, predict_tiles(ensemble, tiles, (0,))[:, 1], atol=1e-5)


def test_windows_are_batched_not_looped(run, mosaic):
    """Cutting is a gather from a strided view; each window equals the slice."""
    from pcam.explain.heatmap import cut_windows, window_starts

    image = mosaic[0][:300, :250]
    ys, xs = window_starts(300, 96, 32), window_starts(250, 96, 32)
    assert ys[-1] == 300 - 96 and xs[-1] == 250 - 96  # the last windows end on the edge
    windows = cut_windows(image, ys, xs, 96)
    k = 0
    for y in ys:
        for x in xs:
            np.testing.assert_array_equal(windows[k], image[y:y + 96, x:x + 96])
            k += 1


def test_script_writes_png_and_grid_csv(run, mosaic, tmp_path, capsys):
    from pcam.commands.heatmap import main

    big = tmp_path / "mosaic.png"
    Image.fromarray(mosaic[0][:384, :480]).save(big)
    small = tmp_path / "tile.png"
    Image.fromarray(mosaic[1][0][:64, :80]).save(small)  # under a tile
    out = tmp_path / "maps"
    with pytest.raises(SystemExit) as done:
        main(["--run", str(run), str(big), "--stride", "48", "--out", str(out)])
    assert done.value.code == 0
    grid = pd.read_csv(out / "mosaic-heatmap.csv")
    assert list(grid.columns) == ["y", "x", "predicted", "0", "1"]
    assert len(grid) == len(range(0, 384 - 96 + 1, 48)) * len(range(0, 480 - 96 + 1, 48))
    assert Image.open(out / "mosaic-heatmap.png").size[0] > 500
    capsys.readouterr()
    for bad in ([str(small)], [str(tmp_path / "none.png")], [str(big), "--stride", "200"]):
        with pytest.raises(SystemExit) as done:
            main(["--run", str(run), *bad, "--out", str(out)])
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


KATHER = REPO.parent / "shared" / "data" / "kather-8class"


@pytest.fixture(scope="module")
def kather_run(tmp_path_factory):
    """simple-cnn on the 8 Kather tissue classes at 48 px (24 of 30 images a class)."""
    from pcam.commands.train import main

    if not KATHER.is_dir():
        pytest.skip(f"{KATHER} not found: the Kather test runs only beside ../shared/data")
    work = tmp_path_factory.mktemp("kather")
    for folder in sorted(KATHER.iterdir()):
        (work / "data" / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:24]:
            (work / "data" / folder.name / f.name).symlink_to(f)
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in (
            "--data-dir", work / "data", "--store-dir", work / "store", "--runs-dir",
            work / "runs", "--run", "k", "--backbone", "simple-cnn", "--weights", "none",
            "--tile-size", 48, "--epochs-frozen", 0, "--epochs-finetune", 8, "--folds", 2,
            "--fold", 0, "--batch-size", 16, "--lr-finetune", 3e-3, "--no-report")])
    assert done.value.code == 0
    return work / "runs" / "k"


def test_kather_class_map_majority_agrees_with_the_tiles(kather_run):
    """A 4x4 mosaic of held-out Kather images (the 6 images a class not trained
    on), at their own 150 px (the run made them 48 px tiles, so its windows are
    150 px, each made a tile): the class map's majority over each image's cell
    is the model's answer on that image alone."""
    from pcam.explain.heatmap import heat_map
    from pcam.predict.ensemble import as_tiles, load_ensemble, predict_tiles

    ensemble = load_ensemble(kather_run, [0])
    info = ensemble[0][1]
    files = [sorted(folder.iterdir())[24 + k % 6] for k, folder in
             enumerate(sorted(KATHER.iterdir()) * 2)]
    sources = np.stack([decode_image(f)[0] for f in files])
    side = sources.shape[1]
    assert info.window == side == 150
    image = sources.reshape(4, 4, side, side, 3).transpose(0, 2, 1, 3, 4)
    image = image.reshape(4 * side, 4 * side, 3)
    heat = heat_map(ensemble, image, info, stride=side // 4)
    assert heat.pixels.shape == (4 * side, 4 * side, 8) and not heat.binary
    np.testing.assert_allclose(heat.pixels.sum(axis=-1), 1, atol=1e-4)
    own = predict_tiles(ensemble, as_tiles(list(sources), 48), (0,)).argmax(axis=1)
    cells = heat.class_map.reshape(4, side, 4, side).transpose(0, 2, 1, 3).reshape(16, -1)
    majority = np.array([np.bincount(c, minlength=8).argmax() for c in cells])
    agree = (majority == own).mean()
    assert len(set(own)) >= 3, "the model answers one class everywhere: too weak to test with"
    assert agree >= 0.8, (agree, majority, own)


def test_a_model_of_resized_images_maps_windows_at_their_scale(run, mosaic):
    """Images that were resized at ingest (e.g. 224 px made 128 px tiles) are mapped with
    windows of their own side, each made a tile: the mosaic at twice the size, with a
    model.json that says its tiles were made from 192 px images, gives the map of the
    mosaic itself (the same windows, the same answers)."""
    import dataclasses

    from pcam.explain.heatmap import heat_map
    from pcam.predict.ensemble import load_ensemble

    image = mosaic[0][:4 * 96, :4 * 96]  # 4 x 4 tiles: enough windows, quick
    ensemble = load_ensemble(run, [0])
    info = ensemble[0][1]
    assert info.window == 96
    plain = heat_map(ensemble, image, info, stride=32)
    large = np.asarray(Image.fromarray(image).resize((8 * 96, 8 * 96), Image.BICUBIC))
    scaled = heat_map(ensemble, large, dataclasses.replace(info, source_side=192), stride=64)
    assert scaled.tile == 192 and scaled.grid.shape == plain.grid.shape
    np.testing.assert_array_equal(scaled.ys, 2 * plain.ys)
    assert np.abs(scaled.grid - plain.grid).mean() < 0.03, np.abs(scaled.grid - plain.grid).max()
    assert scaled.pixels.shape == large.shape[:2]
