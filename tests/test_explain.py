"""scripts/explain.py on a run with a known answer (real tiles whose only signal is
a green mark, conftest.marked_run): the pictures, the table and the page it
promises, tiles by id and by file, a bare model, and each bad input."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import REPO, TOP_RIGHT, inside
from PIL import Image

from pcam.commands.explain import main as explain_main
from pcam.data.store import prepare


def run_explain(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "explain.py"), *map(str, args)],
                          capture_output=True, text=True)


def explain(*args):
    """The command in this process (no TensorFlow start-up per call); its exit status."""
    with pytest.raises(SystemExit) as done:
        explain_main([str(a) for a in args])
    return done.value.code


@pytest.fixture(scope="module")
def run(marked_run):
    """The marked run (fold 0 finished), with its test store built: ids may
    come from either store."""
    settings = marked_run[0]
    prepare(settings.data, splits=("test",), quiet=True)
    return settings


def test_ids_give_a_picture_each_a_table_and_a_page(run, capsys):
    oof = pd.read_csv(run.run_dir / "fold_0" / "oof.csv", dtype={"id": str})
    chosen = pd.concat([oof[oof["label"] == 1].head(3), oof[oof["label"] == 0].head(1)])
    test_id = pd.read_csv(f"{run.data.data_dir}/sample_submission.csv", dtype=str)["id"][0]
    assert explain("--run", run.run_dir, "--ids", *chosen["id"], test_id) == 0
    out = run.run_dir / "explain" / "fold_0"
    assert "explained 5 tile(s) with fold 0" in capsys.readouterr().out

    table = pd.read_csv(out / "explanations.csv", dtype={"name": str})
    assert table["name"].tolist() == chosen["id"].tolist() + [test_id]
    # Grad-CAM's probabilities are the fold model's: the same as its out-of-fold predictions.
    np.testing.assert_allclose(table["prob_tumour"][:4], chosen["prob"], atol=1e-5)
    np.testing.assert_allclose(table["prob_normal"] + table["prob_tumour"], 1, atol=1e-6)
    assert table["label"][:4].tolist() == chosen["label"].map({0: "normal", 1: "tumour"}).tolist()
    assert pd.isna(table["label"][4])                  # a test tile has no label
    assert set(table["evidence_for"]) == {"tumour"}
    for row in table.head(3).itertuples():            # the marked tiles: on the mark
        assert inside(row.peak_row, row.peak_col, TOP_RIGHT), row
    for png in table["png"]:
        with Image.open(out / png) as image:
            assert image.width > 800 and image.height > 300
            assert np.asarray(image.convert("L")).std() > 20  # a picture, not a blank
    html = (out / "index.html").read_text()
    referenced = re.findall(r'<img src="([^"]+)"', html)
    assert sorted(referenced) == sorted(table["png"])
    assert all((out / name).is_file() for name in referenced)
    assert "http" not in html                         # opens offline


def test_image_files_give_the_same_answer_as_the_ids(run, tmp_path):
    oof = pd.read_csv(run.run_dir / "fold_0" / "oof.csv", dtype={"id": str})
    tile_id, prob = oof["id"][0], oof["prob"][0]
    tile = tifffile.imread(f"{run.data.data_dir}/train/{tile_id}.tif")
    Image.fromarray(tile).save(tmp_path / "as.png")
    Image.fromarray(tile).convert("RGBA").save(tmp_path / "with-alpha.png")
    out = tmp_path / "out"
    assert explain("--run", run.run_dir, "--fold", 0, "--images",
                   f"{run.data.data_dir}/train/{tile_id}.tif", tmp_path / "as.png",
                   tmp_path / "with-alpha.png", "--target", "predicted", "--out", out) == 0
    table = pd.read_csv(out / "explanations.csv")
    np.testing.assert_allclose(table["prob_tumour"], [prob] * 3, atol=1e-5)
    expected = "tumour" if prob >= 0.5 else "normal"
    assert set(table["evidence_for"]) == {expected}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(table["png"])


def test_images_of_another_size_or_grey_are_made_tiles_as_the_store_makes_them(run, tmp_path):
    """A 192x240 image is centre-cropped and resized to the run's 96 px; a grey
    one is made RGB. Both are explained, not refused."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (192, 240, 3), np.uint8)) \
        .save(tmp_path / "big.png")
    Image.fromarray(np.full((96, 96), 180, np.uint8)).save(tmp_path / "grey.png")
    out = tmp_path / "out"
    assert explain("--run", run.run_dir, "--images", tmp_path / "big.png", tmp_path / "grey.png",
                   "--out", out) == 0
    table = pd.read_csv(out / "explanations.csv")
    assert table["name"].tolist() == ["big", "grey"]
    assert table["evidence_for"].tolist() == ["tumour", "tumour"]  # the positive class


def test_a_bare_model_file_explains_next_to_itself(run, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes((run.run_dir / "fold_0" / "best.keras").read_bytes())
    image = sorted((Path(run.data.data_dir) / "test").glob("*.tif"))[0]
    assert explain("--model", model, "--images", image) == 0
    assert (tmp_path / "explain" / f"{image.stem}.png").is_file()
    # Ids need a store: --store-dir (or --data-dir) says where it is.
    tile_id = pd.read_csv(Path(run.data.data_dir) / "train_labels.csv", dtype=str)["id"][5]
    assert explain("--model", model, "--ids", tile_id, "--store-dir", run.data.store_dir) == 0
    assert (tmp_path / "explain" / f"{tile_id}.png").is_file()


@pytest.mark.parametrize("case, args, message", [
    ("unknown id", ["--ids", "not-a-tile-id"], "not-a-tile-id"),
    ("missing file", ["--images", "{tmp}/nowhere.tif"], "nowhere.tif: no such file or folder"),
    ("not an image", ["--images", "{tmp}/text.png"], "text.png is not an image"),
    ("transparent", ["--images", "{tmp}/clear.png"], "clear.png has transparent pixels"),
    ("unknown class", ["--ids", "x", "--target", "stroma"], "--target stroma: not a class"),
    ("no tiles", [], "nothing to explain"),
    ("fold out of range", ["--fold", "7", "--ids", "x"], "--fold 7: run"),
    ("fold not finished", ["--fold", "1", "--ids", "x"], "fold 1 of run"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run, tmp_path, capsys, case, args,
                                                        message):
    Image.fromarray(np.zeros((96, 96, 4), np.uint8), "RGBA").save(tmp_path / "clear.png")
    (tmp_path / "text.png").write_text("not an image\n")
    out = tmp_path / "out"
    assert explain("--run", run.run_dir, "--out", out,
                   *[a.format(tmp=tmp_path) for a in args]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error:") and message in error[0], error
    assert not out.exists()


def test_the_script_says_run_or_model_in_one_line(run, tmp_path):
    """The real script, in its own process: a one-line error, no traceback."""
    result = run_explain("--images", "x.tif")
    assert result.returncode == 2 and "--run runs/NAME" in result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: give --run runs/NAME (a run's fold model) or --model FILE.keras, one of the two"]


def test_run_and_model_together_are_refused(run, tmp_path, capsys):
    assert explain("--run", run.run_dir, "--model", tmp_path / "m.keras", "--ids", "x") == 2
    assert "one of the two" in capsys.readouterr().err
