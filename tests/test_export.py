"""scripts/export.py: the exported artifact gives predict.py's numbers, without pcam.

The tiny 2-fold run (its temperature fitted) is exported; real held-out PCam
tiles are predicted by ``predict.py`` and by the artifact loaded in a fresh
Python that never imports pcam (TensorFlow's own loader, TFLite's interpreter).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import PCAM_REAL

# Run in a fresh interpreter: decode the tiles with Pillow, call the artifact,
# save the probabilities, and prove pcam was never imported.
LOADER = r"""
import sys, json
import numpy as np
from PIL import Image
import tensorflow as tf
fmt, path, out, *tiles = sys.argv[1:]
images = np.stack([np.array(Image.open(t).convert("RGB")) for t in tiles])
if fmt == "savedmodel":
    probs = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(images))["probabilities"].numpy()
else:
    interpreter = tf.lite.Interpreter(model_path=path)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    probs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
np.save(out, probs)
assert not any(m == "pcam" or m.startswith("pcam.") for m in sys.modules), "pcam was imported"
"""


@pytest.fixture(scope="module")
def tiles():
    if not PCAM_REAL.is_dir():
        pytest.skip(f"real PCam tiles not found at {PCAM_REAL}")
    return [p for label in ("0", "1") for p in sorted((PCAM_REAL / "valid" / label).iterdir())[:24]]


def export_main(*args) -> int:
    from pcam.commands.export import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code


def predicted(run, tiles, tta, out) -> np.ndarray:
    from pcam.commands.predict import predict
    from pcam.settings import PredictSettings

    predict(PredictSettings(run=str(run), tta=tta, images=tuple(map(str, tiles)), out=str(out)))
    table = pd.read_csv(out)
    return table[["normal", "tumour"]].to_numpy()


def loaded(fmt, path, tiles, tmp_path) -> np.ndarray:
    out = tmp_path / f"{fmt}.npy"
    done = subprocess.run([sys.executable, "-c", LOADER, fmt, str(path), str(out),
                           *map(str, tiles)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)


@pytest.mark.parametrize("fmt, tta, tolerance", [("savedmodel", 8, 1e-5), ("tflite", 1, 1e-4)])
def test_the_artifact_gives_predicts_numbers_without_pcam(tiny_run, tiles, tmp_path, fmt, tta,
                                                         tolerance):
    run = tiny_run.run_dir
    expected = predicted(run, tiles, tta, tmp_path / "predicted.csv")
    out = tmp_path / "export"
    assert export_main("--run", run, "--format", fmt, "--tta", tta, "--out", out) == 0
    artifact = out / ("model" if fmt == "savedmodel" else "model.tflite")
    got = loaded(fmt, artifact, tiles, tmp_path)
    assert got.shape == expected.shape == (len(tiles), 2)
    # predict.py's CSV holds 6 significant digits: the comparison's own floor.
    assert np.abs(got - expected).max() <= tolerance
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)

    record = json.loads((out / "model.json").read_text())
    info = json.loads((run / "fold_0" / "model.json").read_text())
    assert record["export"]["temperatures"] == [info["temperature"]] * 2
    assert record["export"]["input"]["shape"] == [None, 96, 96, 3]
    assert record["export"]["output"]["classes"] == ["normal", "tumour"]
    assert record["threshold"] == info["threshold"] and record["classes"] == info["classes"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "research and teaching, not diagnosis" in card and "temperature" in card
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_a_new_export_replaces_the_folder_whole_and_a_refused_one_leaves_it(tiny_run, tmp_path,
                                                                           capsys):
    run, out = tiny_run.run_dir, tmp_path / "export"
    assert export_main("--run", run, "--tta", 1, "--out", out) == 0
    assert (out / "model" / "saved_model.pb").is_file()
    assert export_main("--run", run, "--tta", 1, "--format", "tflite", "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "model.json",
                                                      "model.tflite"]
    capsys.readouterr()
    # A fold that does not exist: one line, the export as it was.
    assert export_main("--run", run, "--folds", "7", "--out", out) == 2
    assert "--folds 7" in capsys.readouterr().err
    assert (out / "model.tflite").is_file()
    # An output the system refuses: one line naming it, no traceback.
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert export_main("--run", run, "--tta", 1, "--out", blocker / "export") == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err
