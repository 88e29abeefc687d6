"""The bundled demo sample: real tiles in the competition's layout, no ../shared needed."""
import subprocess
import sys
import zipfile

import pandas as pd
from conftest import REPO

from pcam.commands import demo
from pcam.settings import DataSettings


def test_sample_is_small_and_in_the_competition_layout():
    assert demo.ZIP.stat().st_size < 10 * 2**20
    names = zipfile.ZipFile(demo.ZIP).namelist()
    assert {"train_labels.csv", "sample_submission.csv"} <= set(names)
    assert sum(n.startswith("train/") and n.endswith(".tif") for n in names) == 1200
    assert sum(n.startswith("test/") and n.endswith(".tif") for n in names) == 300


def test_prepare_demo_unpacks_checks_and_ingests(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare.py"), "--demo"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    data = tmp_path / "data" / "pcam-demo"
    store = DataSettings(data_dir=str(data)).store_path
    assert not (data / "store").exists() and store.parts[0] == "stores"  # not among the images
    train = pd.read_csv(store / "train" / "index.csv")
    test = pd.read_csv(store / "test" / "index.csv", dtype={"id": str})
    assert len(train) == 1200 and train["label"].mean() == 0.5
    answers = pd.read_csv(demo.ANSWERS, dtype={"id": str})
    assert list(test["id"]) == list(answers["id"])
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare.py"), "--demo"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "up to date" in again.stdout
