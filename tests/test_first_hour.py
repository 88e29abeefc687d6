"""A new user's first hour (issue 24), walked as a user walks it.

Every command that reads a class-folder dataset runs twice on the same
folder, with no flag beyond ``--data-dir``/``--run`` (the second run is where
state bugs live: pcam once wrote its store into the images and took it for a
class next time), and again on a read-only copy. Around that: where stores
go by default, the recipe chosen for the machine, mistakes told before
TensorFlow loads, the small-data warning, outputs that never overwrite each
other, and a Kaggle notebook's read-only competition folder.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pcam import places, recipes
from pcam.commands.cli import machine_defaults, new_parser, settings_from_args
from pcam.settings import DataSettings, RunSettings
from tests.conftest import REPO, make_layout

DATA = REPO.parent / "shared" / "data"
SCRIPTS = REPO / "scripts"


def need(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not found: these tests run only beside ../shared/data")
    return path


def oral_subset(dest: Path, per_class: int) -> Path:
    """The first ``per_class`` real oral-oscc images of each class (224 px JPEG)."""
    source = need("oral-oscc")
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (dest / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:per_class]:
            shutil.copy(f, dest / folder.name / f.name)
    return dest


def listing(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its content's digest."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def user(cwd: Path, script: str, *args, timeout=900) -> subprocess.CompletedProcess:
    """``python scripts/SCRIPT ARGS`` in ``cwd``, as a user types it."""
    return subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    # TensorFlow's start-up log (and its cuInit "error" on a machine without a
    # GPU) is silenced: a new user reads it as a failure.
    assert "cuInit" not in result.stderr and "absl::InitializeLog" not in result.stderr
    return result.stdout


# --- where the store goes ---------------------------------------------------------------

def test_the_default_store_is_outside_the_images_one_per_folder(tmp_path):
    a, b = tmp_path / "a" / "images", tmp_path / "b" / "images"
    store_a, store_b = DataSettings(data_dir=str(a)).store_path, DataSettings(data_dir=str(b)).store_path
    assert store_a.parent == store_b.parent == places.STORES  # in the working folder
    assert store_a != store_b and store_a.name.startswith("images-")
    assert DataSettings(data_dir=str(a), store_dir="mine").store_path == Path("mine")


def test_a_store_an_earlier_pcam_wrote_among_the_classes_is_used_and_not_a_class(tmp_path):
    from pcam.data.sources import read_source

    data = oral_subset(tmp_path / "data", 3)
    legacy = data / "store" / "train"
    legacy.mkdir(parents=True)
    (legacy / "manifest.json").write_text(json.dumps({"shards": [], "fingerprint": "x"}))
    settings = DataSettings(data_dir=str(data))
    source = read_source(settings)
    assert source.classes == ("Normal", "OSCC")
    assert settings.store_path == data / "store"  # used where it is


# --- the recipe ---------------------------------------------------------------------------

def test_the_recipe_fits_the_machine_and_the_source():
    assert recipes.choose("auto", "folders", accelerator=True).name == "gpu"
    cpu = recipes.choose("auto", "folders", accelerator=False)
    assert cpu.name == "cpu" and cpu.defaults["weights"] == "pcam" and "no GPU" in cpu.why
    # On the competition's tiles the shipped backbone (trained on PCam) would
    # make out-of-fold figures optimistic: from scratch there.
    assert recipes.choose("cpu", "kaggle").defaults["weights"] == "none"
    assert recipes.choose("gpu", "folders", accelerator=False).defaults == {}


def test_the_cpu_recipes_size_cap_resizes_large_and_mixed_images_never_small_ones():
    from collections import Counter

    from pcam.data.sources import _tile_size

    assert _tile_size(Counter({(224, 224): 9}), 0, 128)[0] == 128
    assert _tile_size(Counter({(96, 96): 9}), 0, 128) == (96, "96x96")  # not upsampled
    assert _tile_size(Counter({(50, 30): 1, (40, 40): 1}), 0, 128)[0] == 128
    assert _tile_size(Counter({(224, 224): 9}), 64, 128)[0] == 64  # --tile-size wins


def parsed(argv) -> RunSettings:
    parser = new_parser("train.py", "")
    from pcam.commands.cli import add_settings
    add_settings(parser, RunSettings, "run")
    recipe = machine_defaults(parser, argv)
    return settings_from_args(RunSettings, parser.parse_args(argv), recipe=recipe.name)


def test_options_given_beat_the_recipe_and_every_value_is_a_settings_field(tmp_path):
    data = tmp_path / "folders"
    settings = parsed(["--data-dir", str(data), "--recipe", "cpu", "--batch-size", "8"])
    assert settings.recipe == "cpu" and settings.inputs.batch_size == 8
    assert (settings.model.backbone, settings.model.weights) == ("cpu-cnn", "pcam")
    assert settings.data.max_tile_size == 128 and settings.augment.stain == 0
    assert parsed(["--data-dir", str(data), "--recipe", "gpu"]).model.backbone == "resnet50"
    fields = {f for cls in (RunSettings,) for f in _field_names(cls)}
    assert set(recipes.CPU_FOLDERS) <= fields and set(recipes.CPU_KAGGLE) <= fields


def _field_names(cls):
    import dataclasses

    from pcam.settings import section
    for f in dataclasses.fields(cls):
        yield from (_field_names(section(f)) if section(f) else [f.name])


def test_the_shipped_backbone_is_in_the_package_with_its_record():
    from pcam.models.registry import SHIPPED

    path = SHIPPED["cpu-cnn"]
    assert path.is_file(), "run tools/make_pcam_backbone.py"
    record = json.loads(path.with_name("cpu-cnn-pcam.json").read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["auc_other_slides_3000_valid_tiles"]["tta8"] >= 0.9
    assert "CC0" in record["licence"]


def test_small_data_is_warned_with_what_to_change():
    from pcam.train.preflight import small_data_warning

    warning = small_data_warning(30, 128)
    assert "1 optimisation step(s)" in warning and "--batch-size" in warning
    assert small_data_warning(20 * 16, 16) is None


# --- a large image is a set of tiles -----------------------------------------------------

def test_a_large_image_is_answered_as_the_tiles_that_cover_it():
    import numpy as np

    from pcam.data.images import to_tile
    from pcam.predict.images import answer_images, image_tiles, images_as_tiles

    rng = np.random.default_rng(0)
    mosaic = rng.integers(0, 256, (3 * 32, 2 * 32, 3), dtype=np.uint8)
    tiles = image_tiles(mosaic, 32)
    assert tiles.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(tiles[3], mosaic[32:64, 32:64])  # row 1, column 1
    small = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)  # under 2 tiles: one tile
    stacked, owner = images_as_tiles([small, mosaic], 32)
    assert len(stacked) == 7 and list(owner) == [0] + [1] * 6
    # Trained on 48 px images made 32 px tiles: 96 px holds 2x2 of them, at that scale.
    square = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    scaled = image_tiles(square, 32, window=48)
    assert scaled.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(scaled[3], to_tile(square[48:, 48:], 32))
    assert image_tiles(square[:90], 32, window=48).shape == (1, 32, 32, 3)
    # Two classes: the highest tile, and the share of tiles over the threshold.
    two = answer_images(np.array([0.2, 0.1, 0.9, 0.3, 0.1, 0.1, 0.6]), owner, 2, 0.5)
    np.testing.assert_allclose(two.probs, [[0.8, 0.2], [0.1, 0.9]])
    np.testing.assert_allclose(two.areas[:, 1], [0, 2 / 6])
    assert list(two.tiles) == [1, 6]
    # K classes: the mean, and the share of tiles whose argmax each class is.
    k = np.eye(3)[[2, 0, 0, 1, 1, 1, 2]] * 0.8 + 0.2 / 3
    three = answer_images(k, owner, 2, 0.5)
    np.testing.assert_allclose(three.areas[1], [2 / 6, 3 / 6, 1 / 6])
    np.testing.assert_allclose(three.probs[1], k[1:].mean(axis=0))


# --- fast feedback ------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--data-dir", "no-such-folder"], "python scripts/train.py --demo"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--data-dir", "FOLDERS", "--folds", "50"], "fewer than the folds"),
])
def test_mistakes_are_told_before_tensorflow_loads(tmp_path, args, expected):
    data = oral_subset(tmp_path / "folders", 3)
    args = [str(data) if a == "FOLDERS" else a for a in args]
    code = ("import sys\nfrom pcam.commands.train import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as done:\n"
            "    print('exit', done.code, 'tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "exit 2 False", (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert result.stderr.count("\n") == 1


# --- every command, twice, on the same folders; then on a read-only copy -----------------

def big_image(data: Path, out: Path) -> Path:
    """A 2x2 mosaic of the dataset's first images: larger than a tile."""
    files = sorted(data.rglob("*.jpg"))[:4]
    tiles = [Image.open(f).convert("RGB").resize((224, 224)) for f in files]
    mosaic = Image.new("RGB", (448, 448))
    for i, tile in enumerate(tiles):
        mosaic.paste(tile, (224 * (i % 2), 224 * (i // 2)))
    mosaic.save(out)
    return out


def walk(work: Path, data: Path, run: str = "", times: int = 2) -> None:
    """Every command of the first hour, ``times`` times, as README gives them; with
    ``run``, training resumes that run (finished: every fold is skipped) on ``data``."""
    image = sorted(data.rglob("*.jpg"))[0]
    mosaic = big_image(data, work / "mosaic.png")
    for attempt in range(1, times + 1):
        out = ok(user(work, "prepare.py", "--data-dir", data))
        assert ("up to date" in out) == (attempt == 2), out
        out = ok(user(work, "train.py", "--data-dir", data, *(["--run", run] if run else [])))
        assert "recipe: cpu" in out and "PCam-trained backbone" in out
        assert ("finished earlier, skipped" in out) == (attempt == 2 or bool(run)), out
        if not run and attempt == 1:  # 16 images: the small-data warning
            assert "optimisation step(s) an epoch" in out
        assert "next:" in out and "--run runs/latest" in out
        out = ok(user(work, "predict.py", "--run", "latest", "--images", data))
        images_csv = work / "predictions" / f"{(work / 'runs' / 'latest').resolve().name}-data.csv"
        assert images_csv.is_file(), out
        out = ok(user(work, "predict.py", "--run", "latest", "--answers", data))
        assert images_csv.is_file() and len(list((work / "predictions").glob("*.csv"))) >= 2
        ok(user(work, "explain.py", "--run", "latest", "--images", image, data / "Normal"))
        ok(user(work, "heatmap.py", "--run", "latest", "--images", mosaic))
        ok(user(work, "predict.py", "--run", "latest", "--images", mosaic))
        trained = (work / "runs" / "latest").resolve().name
        answer = pd.read_csv(work / "predictions" / f"{trained}-mosaic.csv")
        # 448 px: four of the 224 px images the model learnt from, each made a tile.
        assert answer["tiles"].tolist() == [4]
        ok(user(work, "evaluate.py", "--run", "latest", "--bootstrap", "20"))
        assert (work / "runs" / "latest" / "report" / "index.html").is_file()
    assert not (data / "store").exists() and not (work / "latest").exists()


def test_every_command_twice_on_class_folders_and_on_a_read_only_copy(tmp_path, small_disk):
    data = oral_subset(tmp_path / "data", 8)
    before = listing(data)
    work = tmp_path / "work"
    work.mkdir()
    walk(work, data)
    assert listing(data) == before  # nothing written among the images

    # The same images, read-only: every command again, once (twice is the first
    # walk's part; this one asks whether anything writes into the images). Training
    # names the run just trained (its folds are the same images: all skipped), which
    # keeps this test to one training.
    disk = small_disk(64)
    shutil.copytree(data, disk / "data")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    assert _read_only(disk / "data")
    walk(work, disk / "data", run=(work / "runs" / "latest").resolve().name, times=1)


def _read_only(path: Path) -> bool:
    try:
        (path / ".probe").write_text("x")
    except OSError:
        return True
    return False


# --- a Kaggle notebook ----------------------------------------------------------------------

def test_a_kaggle_notebooks_read_only_competition_is_found_and_never_written(
        tmp_path, small_disk, monkeypatch):
    """/kaggle/input/histopathologic-cancer-detection, read-only; the notebook
    works in /kaggle/working. Laid out under tmp_path (the path passed in)."""
    disk = small_disk(64)
    competition = make_layout(disk / places.COMPETITION, train=120, test=40)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    monkeypatch.setattr(places, "KAGGLE_INPUT", disk)
    assert places.kaggle_competition() == competition

    from pcam.commands import download, predict, train
    assert _exit(download.main, []) == 0
    assert _exit(train.main, ["--folds", "2", "--backbone", "simple-cnn", "--epochs-finetune",
                              "1", "--batch-size", "32", "--oof-tta", "1"]) == 0
    assert _exit(predict.main, ["--run", "latest", "--tta", "1"]) == 0
    run = (working / "runs" / "latest").resolve()
    assert run.name.startswith(places.COMPETITION)
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["data_dir"] == str(competition)
    assert Path(config["data"]["store_dir"]).is_relative_to(working)
    assert (working / "submissions" / f"{run.name}.csv").is_file()


def test_a_read_only_run_resumes_in_a_copy(tmp_path, small_disk):
    """A run attached read-only (a Kaggle input from an earlier notebook session)."""
    disk = small_disk(8)
    run = disk / "earlier" / "r"
    (run / "fold_0").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "fold_0" / "metrics.json").write_text("{}")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    runs = tmp_path / "runs"
    killed = runs / ".r.tmp-999999999"  # a copy whose process was killed midway
    (killed / "fold_0").mkdir(parents=True)
    copy = places.writable_run(run, runs)
    assert copy == runs / "r" and listing(copy) == listing(run)
    assert not killed.exists()
    (copy / "fold_1").mkdir()  # resumed there; asked again, the copy is kept
    assert places.writable_run(run, runs) == copy and (copy / "fold_1").is_dir()
    assert places.writable_run(copy, runs) == copy


def _exit(main, argv) -> int:
    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code or 0
