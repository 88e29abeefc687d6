"""A run folder written by an earlier pcam (tests/fixtures/, commit 4079070) still
resumes, predicts, evaluates and opens in the app, whatever moved in the package."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import PCAM_REAL, REPO

EARLIER = REPO / "tests" / "fixtures" / "run-made-by-4079070"
PER_CLASS = 24  # the fixture's images: the first 24 of each label (its README)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the earlier run (``runs/legacy``) and its images (``data``), in one folder."""
    if not PCAM_REAL.is_dir():
        pytest.skip(f"real PCam tiles not found at {PCAM_REAL}")
    work = tmp_path_factory.mktemp("earlier")
    for label in ("0", "1"):
        (work / "data" / label).mkdir(parents=True)
        for tile in sorted((PCAM_REAL / "train" / label).iterdir())[:PER_CLASS]:
            shutil.copy(tile, work / "data" / label / tile.name)
    shutil.copytree(EARLIER, work / "runs" / "legacy", ignore=shutil.ignore_patterns("README.md"))
    return work, work / "runs" / "legacy"


def _exit(main, argv) -> int:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    return done.value.code or 0


def test_the_fixture_holds_the_images_it_names(earlier):
    work, run = earlier
    folds = pd.read_csv(run / "folds.csv")
    found = sorted(str(p.relative_to(work / "data")) for p in (work / "data").rglob("*.*"))
    assert sorted(folds["id"]) == found


def test_it_resumes_every_fold_finished(earlier, monkeypatch, capsys):
    from pcam.commands import train

    work, run = earlier
    monkeypatch.chdir(work)
    # Its command (the fixture's README), with a store of our own.
    assert _exit(train.main, [
        "--data-dir", "data", "--positive", "1", "--backbone", "simple-cnn", "--weights", "none",
        "--folds", 2, "--epochs-frozen", 0, "--epochs-finetune", 1, "--batch-size", 16,
        "--tile-size", 32, "--oof-tta", 1, "--run", "legacy", "--recipe", "cpu",
        "--store-dir", work / "store", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 2, out
    # Nothing of the earlier run was rewritten.
    assert (run / "fold_0" / "best.keras").read_bytes() == \
        (EARLIER / "fold_0" / "best.keras").read_bytes()


def test_it_evaluates_to_the_figures_it_recorded(earlier, monkeypatch):
    from pcam.commands import evaluate

    work, run = earlier
    monkeypatch.chdir(work)
    assert _exit(evaluate.main, ["--run", run, "--bootstrap", "20"]) == 0
    report = json.loads((run / "report" / "metrics.json").read_text())
    recorded = json.loads((run / "cv.json").read_text())
    assert report["groups"]["pooled"]["auc"] == pytest.approx(recorded["oof"]["auc"], abs=1e-6)
    assert (run / "report" / "index.html").is_file()


def test_it_predicts_its_own_out_of_fold_answers_again(earlier, monkeypatch):
    """Each fold's model, loaded today, gives the probabilities it gave then."""
    from pcam.commands import predict

    work, run = earlier
    monkeypatch.chdir(work)
    for k in (0, 1):
        out = work / f"fold{k}.csv"
        # The models' own probabilities: a run resumed here gets a temperature.
        assert _exit(predict.main, ["--run", run, "--folds", k, "--tta", 1, "--calibration",
                                    "none", "--images", work / "data", "--out", out]) == 0
        got = pd.read_csv(out)
        then = pd.read_csv(run / f"fold_{k}" / "oof.csv")
        names = {Path(i).name: p for i, p in zip(then["id"], then["prob"])}
        mine = got[[Path(s).name in names for s in got["path"]]]
        assert len(mine) == len(then) == len(got) // 2
        np.testing.assert_allclose(mine["1"], [names[Path(s).name] for s in mine["path"]],
                                   atol=2e-3)


def test_it_opens_in_the_app(earlier):
    from PIL import Image

    from pcam import app

    work, run = earlier
    assert app.finished(str(run)) == [0, 1]
    loaded = app.load(str(run), (0, 1))
    assert loaded.info.classes == ("0", "1") and loaded.info.tile_size == 32
    images = [np.asarray(Image.open(p).convert("RGB"))
              for p in sorted((work / "data" / "1").iterdir())[:3]]
    answers = app.probabilities(loaded, images, (0,))
    assert answers.probs.shape[0] == 3 and np.all((answers.probs >= 0) & (answers.probs <= 1))
