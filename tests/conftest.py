"""Fixtures that lay out real PCam tiles in the competition's layout.

The tiles come from ../shared/data/pcam-real (beside the repository, for
tests and benchmarks only). Without it the tests that need tiles are skipped
with a message that says so.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PCAM_REAL = REPO.parent / "shared" / "data" / "pcam-real"
MISSING = (f"real PCam tiles not found at {PCAM_REAL}: the tests that need tiles "
           "run only beside ../shared/data/pcam-real")


def make_layout(dest: Path, train: int, test: int, seed: int = 0, zip_path: Path | None = None):
    """Run the shared make_kaggle_layout.py: real tiles as uncompressed TIFFs."""
    if not PCAM_REAL.is_dir():
        pytest.skip(MISSING)
    cmd = [sys.executable, str(PCAM_REAL / "make_kaggle_layout.py"), str(dest),
           "--train", str(train), "--test", str(test), "--seed", str(seed)]
    if zip_path:
        cmd += ["--zip", str(zip_path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return dest


@pytest.fixture(scope="session", autouse=True)
def _session_in_tmp(tmp_path_factory):
    """Module and session fixtures, too, run outside the repository."""
    os.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Each test runs in a folder of its own, as a user runs pcam in theirs: the
    default outputs (stores/, runs/, predictions/) never land in the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def layout_cache(tmp_path_factory):
    """300 train + 100 test real tiles, laid out once per session; copy before changing."""
    return make_layout(tmp_path_factory.mktemp("kaggle") / "comp", train=300, test=100)


@pytest.fixture
def layout(layout_cache, tmp_path):
    """A private copy of the 300/100-tile layout that a test may damage."""
    dest = tmp_path / "comp"
    shutil.copytree(layout_cache, dest)
    shutil.copy(str(layout_cache) + ".answers.csv", str(dest) + ".answers.csv")
    return dest


@pytest.fixture(scope="session")
def tiny_run(layout_cache, tmp_path_factory):
    """A finished 2-fold run of the compact CNN (1 epoch per phase) on the
    300-tile layout, with its report; shared by the tests that read runs."""
    from pcam.settings import (DataSettings, FoldSettings, InputSettings, ModelSettings,
                               RunSettings, TrainSettings)
    from pcam.report.evaluate import report_run
    from pcam.train.training import run_cv

    tmp = tmp_path_factory.mktemp("tiny-run")
    settings = RunSettings(
        run="tiny", runs_dir=str(tmp / "runs"),
        data=DataSettings(data_dir=str(layout_cache), store_dir=str(tmp / "store")),
        folds=FoldSettings(folds=2, seed=0), inputs=InputSettings(batch_size=32),
        model=ModelSettings(backbone="simple-cnn", weights="none"),
        train=TrainSettings(epochs_frozen=1, epochs_finetune=1))
    run_cv(settings)
    report_run(settings.run_dir)  # as scripts/train.py does once training returns
    return settings


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at tmp_path/disk; ``small_disk(size)`` (re)sizes it: a full
    disk, or (remounted read-only) a read-only one, which root's permission bits
    cannot make."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = []

    def size(megabytes):
        options = f"size={megabytes}m" + (",remount" if mounted else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"a full or read-only disk needs a tmpfs, and mounting one is not permitted here "
                        f"({result.stderr.strip() or result.returncode})")
        mounted.append(True)
        return disk

    yield size
    if mounted:
        subprocess.run(["umount", str(disk)], check=False)


# --- a model with a known answer, for Grad-CAM ----------------------------------------

# Top right, away from the centre (a model looking at the centre, where PCam's
# label lives, cannot pass by habit): rows 8..31, columns 60..83.
TOP_RIGHT = (8, 60)
BOTTOM_LEFT = (64, 12)
MARK = 24
GREEN = (20, 210, 40)  # no H&E stain is green: the mark is the only signal


def mark(tile, corner=TOP_RIGHT):
    """A copy of the tile with the green square at ``corner`` (row, column)."""
    marked = tile.copy()
    row, col = corner
    marked[row:row + MARK, col:col + MARK] = GREEN
    return marked


def inside(peak_row, peak_col, corner) -> bool:
    """Whether a pixel lies in the mark at ``corner``."""
    row, col = corner
    return row <= peak_row < row + MARK and col <= peak_col < col + MARK


@pytest.fixture(scope="session")
def marked_run(layout_cache, tmp_path_factory):
    """Fold 0 of a run of the compact CNN trained on real tiles whose only
    signal is the mark: every other tile is marked top right and labelled 1,
    the rest labelled 0 (their own tumour labels are dropped). Training flips
    and rotates tiles, so the model must find the mark wherever it is.

    Returns:
        (settings, layout folder, {id: the tile before it was marked}).
    """
    import numpy as np
    import pandas as pd
    import tifffile

    from pcam.settings import (DataSettings, FoldSettings, InputSettings, ModelSettings,
                               RunSettings, TrainSettings)
    from pcam.train.training import run_cv

    tmp = tmp_path_factory.mktemp("marked")
    layout = tmp / "comp"
    shutil.copytree(layout_cache, layout)
    labels = pd.read_csv(layout / "train_labels.csv", dtype={"id": str})
    labels["label"] = np.arange(len(labels)) % 2
    originals = {}
    for tile_id, label in labels.itertuples(index=False):
        if label:
            path = layout / "train" / f"{tile_id}.tif"
            originals[tile_id] = tifffile.imread(path)
            tifffile.imwrite(path, mark(originals[tile_id]), photometric="rgb")
    labels.to_csv(layout / "train_labels.csv", index=False)
    settings = RunSettings(
        run="marked", runs_dir=str(tmp / "runs"), fold=0, report=False,
        data=DataSettings(data_dir=str(layout), store_dir=str(tmp / "store")),
        folds=FoldSettings(folds=2, seed=0), inputs=InputSettings(batch_size=32),
        model=ModelSettings(backbone="simple-cnn", weights="none"),
        # One view in oof.csv: the tests compare it with the single-view probability
        # Grad-CAM gives, and the mark sits in one corner, which flips would move.
        train=TrainSettings(epochs_frozen=0, epochs_finetune=6, lr_finetune=2e-3, oof_tta=1))
    run_cv(settings)
    return settings, layout, originals
