"""Settings as TOML files: --config, --print-config and a run's config.toml."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcam.config import read_config, to_toml
from pcam.errors import PcamError
from pcam.settings import (AugmentSettings, CompareSettings, DataSettings, ModelSettings,
                           PredictSettings, RunSettings, TrainSettings, from_json, to_dict)

REPO = Path(__file__).resolve().parents[1]


def script(cwd: Path, name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def folders(root: Path) -> Path:
    """Two class folders of three real-sized (64 px) images each."""
    rng = np.random.default_rng(0)
    for name in ("benign", "malignant"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(
                root / name / f"{i}.png")
    return root


def resolved(text: str, cls=RunSettings):
    """Settings from --print-config's output, read back as --config would."""
    path = Path("printed.toml")
    path.write_text(text)
    from pcam.config import nest_settings

    return nest_settings(read_config(path, cls), cls)


def test_settings_survive_a_round_trip_through_toml(tmp_path):
    odd = RunSettings(
        run='name with "quotes" and \\ back', runs_dir="rüns/ünïcode",
        data=DataSettings(data_dir="d", classes=("benign", "malignant"), positive="malignant"),
        augment=AugmentSettings(hue=0.0, stain=0.125),
        model=ModelSettings(backbone="simple-cnn", weights="none", dropout=0.25),
        train=TrainSettings(lr_finetune=1e-5, epochs_finetune=3, label_smoothing=0.1))
    cases = [(RunSettings, odd), (RunSettings, RunSettings()),
             (PredictSettings, PredictSettings(run=("runs/a", "runs/b"), folds=(0, 2), tta=2)),
             (CompareSettings, CompareSettings(backbones=("simple-cnn", "cpu-cnn"), name="n",
                                               training=odd))]
    from pcam.config import nest_settings

    for cls, settings in cases:
        path = tmp_path / f"{cls.__name__}.toml"
        path.write_text(to_toml(settings))
        assert nest_settings(read_config(path, cls), cls) == settings, cls


@pytest.mark.parametrize("text, says", [
    ("[train]\nlr_fine = 0.1\n", "unknown key 'train.lr_fine'"),
    ("[data]\nlr_finetune = 0.1\n", "unknown key 'data.lr_finetune'"),
    ("[train]\nepochs_finetune = 'ten'\n", "train.epochs_finetune = 'ten': must be a whole number"),
    ("[train]\nepochs_finetune = -3\n", "train.epochs_finetune: --epochs-finetune -3"),
    ("[model]\ndropout = 1.5\n", "model.dropout: --dropout 1.5"),
    ("[inputs]\ncache = 'always'\n", "choose one of"),
    ("[train\nepochs = 1\n", "not valid TOML"),
])
def test_a_wrong_file_is_one_line_naming_the_file_and_the_key(tmp_path, text, says):
    config = tmp_path / "mine.toml"
    config.write_text(text)
    start = time.perf_counter()
    result = script(tmp_path, "train.py", "--config", config, "--data-dir", folders(tmp_path / "d"))
    seconds = time.perf_counter() - start
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert str(config) in lines[0] and says in lines[0], lines[0]
    assert "tensorflow" not in result.stderr.lower()
    assert seconds < 60  # before TensorFlow loads (a few seconds on a quiet machine)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_an_unknown_key_lists_the_valid_ones(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("epochs = 3\n")
    with pytest.raises(PcamError, match="takes .*epochs_finetune.*lr_finetune"):
        read_config(config, RunSettings)
    with pytest.raises(PcamError, match="no such file"):
        read_config(tmp_path / "missing.toml", RunSettings)


def test_the_command_line_wins_over_the_file_and_the_file_over_the_recipe(tmp_path):
    data = folders(tmp_path / "d")
    config = tmp_path / "c.toml"
    # The CPU recipe (this machine) sets batch 16 and 60 epochs for class folders.
    config.write_text("[inputs]\nbatch_size = 24\n[train]\nepochs_finetune = 7\n"
                      "lr_finetune = 2e-3\n[model]\nbackbone = 'simple-cnn'\n")
    result = script(tmp_path, "train.py", "--config", config, "--data-dir", data,
                    "--recipe", "cpu", "--epochs-finetune", 5, "--print-config")
    assert result.returncode == 0, result.stderr
    settings = resolved(result.stdout)
    assert settings.inputs.batch_size == 24 and settings.train.lr_finetune == 2e-3
    assert settings.train.epochs_finetune == 5  # the command line's
    assert settings.model.backbone == "simple-cnn"
    assert settings.model.weights == "pcam"  # the CPU recipe's, which the file leaves alone
    assert settings.data.data_dir == str(data)
    assert not (tmp_path / "runs").exists()  # --print-config trains nothing

    # The file may name the data folder, and the recipe then fits that data.
    config.write_text(f"[data]\ndata_dir = {str(data)!r}\n")
    result = script(tmp_path, "train.py", "--config", config, "--recipe", "cpu",
                    "--print-config")
    assert result.returncode == 0, result.stderr
    settings = resolved(result.stdout)
    assert settings.data.data_dir == str(data) and settings.model.backbone == "cpu-cnn"


def test_predict_and_compare_take_a_file_too(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text("run = ['runs/a']\ntta = 2\n")
    result = script(tmp_path, "predict.py", "--config", config, "--print-config")
    assert result.returncode == 0, result.stderr
    settings = resolved(result.stdout, PredictSettings)
    assert settings.run == ("runs/a",) and settings.tta == 2
    result = script(tmp_path, "predict.py", "--config", config, "--run", "runs/b",
                    "--print-config")
    assert resolved(result.stdout, PredictSettings).run == ("runs/b",)  # not a and b

    config = tmp_path / "c.toml"
    config.write_text("backbones = ['simple-cnn', 'cpu-cnn']\nname = 'cmp'\n"
                      "[train]\nepochs_finetune = 2\n")
    result = script(tmp_path, "compare.py", "--config", config, "--print-config")
    assert result.returncode == 0, result.stderr
    settings = resolved(result.stdout, CompareSettings)
    assert settings.backbones == ("simple-cnn", "cpu-cnn")
    assert settings.training.train.epochs_finetune == 2
    config.write_text("name = 'cmp'\n")  # no backbones: refused by the settings, in one line
    result = script(tmp_path, "compare.py", "--config", config)
    assert result.returncode == 2 and "--backbones" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_run_leaves_a_file_that_repeats_it(tiny_run, tmp_path):
    run_dir = tiny_run.run_dir
    saved = from_json(RunSettings, run_dir / "config.json")
    written = run_dir / "config.toml"
    assert written.is_file()
    from pcam.config import nest_settings

    assert nest_settings(read_config(written, RunSettings), RunSettings) == saved
    result = script(tmp_path, "train.py", "--config", written, "--run", "again",
                    "--print-config")
    assert result.returncode == 0, result.stderr
    again = resolved(result.stdout)
    # The same recipe; "auto" is saved as the one it chose on this machine.
    assert again.recipe in ("cpu", "gpu")
    assert to_dict(again) == {**to_dict(saved), "run": "again", "recipe": again.recipe}
