"""A simple-cnn run trained briefly on real PCam tiles laid out as class folders.

Shared by the app and heat map tests. It is trained once per pytest session,
into the session's base temporary folder, whichever test module asks first
(fixtures in two modules would otherwise train it twice).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PCAM_REAL

PER_CLASS = 200  # enough for a model clearly better than chance in ~30 s on 2 cores


def class_folders(dest: Path, per_class: int = PER_CLASS) -> Path:
    """``dest/0`` and ``dest/1``: links to the first real train tiles of each label."""
    for label in ("0", "1"):
        (dest / label).mkdir(parents=True)
        for tile in sorted((PCAM_REAL / "train" / label).iterdir())[:per_class]:
            (dest / label / tile.name).symlink_to(tile)
    return dest


def trained_run(base: Path) -> Path:
    """The run folder (fold 0 of 2 trained: 3 epochs), made on first use under ``base``."""
    from pcam.commands.train import main

    if not PCAM_REAL.is_dir():
        pytest.skip(f"real PCam tiles not found at {PCAM_REAL}")
    work = base / "pcam-tiles-run"
    run = work / "runs" / "r"
    if (run / "fold_0" / "metrics.json").is_file():
        return run
    data = class_folders(work / "data")
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in (
            "--data-dir", data, "--positive", "1", "--store-dir", work / "store",
            "--runs-dir", work / "runs", "--run", "r", "--backbone", "simple-cnn",
            "--weights", "none", "--epochs-frozen", 0, "--epochs-finetune", 3, "--folds", 2,
            "--fold", 0, "--batch-size", 32, "--no-report")])
    assert done.value.code == 0
    return run


def valid_tiles(per_class: int, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """Held-out real tiles (pcam-real valid/), both labels, shuffled: paths and labels."""
    paths, labels = [], []
    for label in (0, 1):
        found = sorted((PCAM_REAL / "valid" / str(label)).iterdir())[:per_class]
        paths += found
        labels += [label] * len(found)
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[i] for i in order], np.asarray(labels)[order]
