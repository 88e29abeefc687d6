"""Settings refuse values no run can use, in one line naming the option."""
import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import REPO

from pcam.errors import PcamError
from pcam.settings import (AugmentSettings, DataSettings, DeviceSettings, EvaluateSettings,
                           ExplainSettings, FoldSettings, InputSettings, ModelSettings,
                           PredictSettings, RunSettings, TrainSettings, from_dict, from_json,
                           to_dict)

REFUSED = [
    (TrainSettings, dict(epochs_frozen=-1), "--epochs-frozen -1: must be a whole number, at least 0"),
    (TrainSettings, dict(epochs_finetune=-2), "--epochs-finetune -2"),
    (TrainSettings, dict(epochs_frozen=0, epochs_finetune=0), "nothing to train"),
    (TrainSettings, dict(lr_frozen=0.0), "--lr-frozen 0.0: must be a number above 0"),
    (TrainSettings, dict(lr_finetune=-1.0), "--lr-finetune -1.0"),
    (TrainSettings, dict(label_smoothing=2.0), "--label-smoothing 2.0: must be a number from 0"),
    (TrainSettings, dict(label_smoothing=1.0), "--label-smoothing 1.0"),
    (TrainSettings, dict(schedule="linear"), "--schedule 'linear': choose one of cosine, plateau"),
    (InputSettings, dict(batch_size=0), "--batch-size 0: must be a whole number, at least 1"),
    (InputSettings, dict(shuffle_buffer=0), "--shuffle-buffer 0"),
    (InputSettings, dict(cache="maybe"), "--cache 'maybe': choose one of auto, yes, no"),
    (ModelSettings, dict(dropout=1.5), "--dropout 1.5"),
    (ModelSettings, dict(dropout=1.0), "--dropout 1.0"),
    (ModelSettings, dict(dense_units=0), "--dense-units 0"),
    (DeviceSettings, dict(steps_per_execution=0), "--steps-per-execution 0"),
    (DeviceSettings, dict(precision="float8"), "--precision 'float8'"),
    (AugmentSettings, dict(centre_crop=-1), "--centre-crop -1: must be a whole number, at least 0"),
    (AugmentSettings, dict(zoom=-0.1), "--zoom -0.1"),
    (FoldSettings, dict(seed=-1), "--seed -1"),
    (FoldSettings, dict(balance="oversample"), "--balance 'oversample': choose one of weights, "
                                               "resample"),
    (DataSettings, dict(shard_tiles=0), "--shard-tiles 0"),
    (DataSettings, dict(shard_tiles=-5), "--shard-tiles -5"),
    (DataSettings, dict(workers=-1), "--workers -1"),
    (PredictSettings, dict(batch_size=-1), "--batch-size -1"),
    (PredictSettings, dict(tta=3), "--tta 3: choose one of 1, 2, 4, 8"),
    (PredictSettings, dict(average="median"), "--average 'median'"),
    (PredictSettings, dict(folds=(0, -1)), "--folds"),
    (EvaluateSettings, dict(bootstrap=-1), "--bootstrap -1"),
    (RunSettings, dict(fold=-2), "--fold -2"),
]


@pytest.mark.parametrize("cls, values, message", REFUSED,
                         ids=[f"{c.__name__}-{'-'.join(v)}" for c, v, _ in REFUSED])
def test_nonsense_is_refused_naming_the_option(cls, values, message):
    with pytest.raises(PcamError, match=message):
        cls(**values)


def test_every_default_and_every_choice_is_accepted():
    for cls in (DataSettings, FoldSettings, AugmentSettings, InputSettings, ModelSettings,
                TrainSettings, DeviceSettings, RunSettings, PredictSettings, EvaluateSettings,
                ExplainSettings):
        cls()
        for f in dataclasses.fields(cls):
            for choice in f.metadata.get("choices", ()):
                cls(**{f.name: choice})


def test_a_saved_config_is_checked_too(tmp_path):
    data = to_dict(RunSettings())
    data["train"]["lr_finetune"] = -1
    with pytest.raises(PcamError, match="--lr-finetune -1"):
        from_dict(RunSettings, data)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(PcamError, match="--lr-finetune -1"):
        from_json(RunSettings, tmp_path / "config.json")


@pytest.mark.parametrize("script, args, message", [
    ("train.py", ["--epochs-frozen", "0", "--epochs-finetune", "0"], "nothing to train"),
    ("train.py", ["--label-smoothing", "2"], "--label-smoothing 2.0"),
    ("prepare.py", ["--shard-tiles", "-5"], "--shard-tiles -5"),
    ("predict.py", ["--run", "runs/x", "--batch-size", "-1"], "--batch-size -1"),
])
def test_scripts_refuse_in_one_line_before_writing(tmp_path, script, args, message):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--data-dir",
                             str(tmp_path / "data"), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
