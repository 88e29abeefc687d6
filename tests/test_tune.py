"""scripts/tune.py: a real Optuna study of real (tiny) trainings, shared, resumed, refused."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
ORAL = REPO.parent / "shared" / "data" / "oral-oscc"

# Each trial: simple-cnn on 48 oral images at 32 px, 3 epochs, fold 0 of 3 (~10 s).
TEMPLATE = ["--max-tile-size", 32, "--backbone", "simple-cnn", "--weights", "none",
            "--epochs-frozen", 0, "--epochs-finetune", 3, "--folds", 3, "--batch-size", 8,
            "--oof-tta", 1]


def tune(cwd: Path, *args, wait=True):
    cmd = [sys.executable, str(REPO / "scripts" / "tune.py"), *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """24 images of each class of oral-oscc."""
    if not ORAL.is_dir():
        pytest.skip(f"oral-oscc images not found at {ORAL}: run beside ../shared/data")
    root = tmp_path_factory.mktemp("oral") / "d"
    for c in ("Normal", "OSCC"):
        (root / c).mkdir(parents=True)
        for f in sorted((ORAL / c).iterdir())[:24]:
            shutil.copy(f, root / c / f.name)
    return root


def trials(study_dir: Path) -> list[tuple]:
    """(number, state) of every trial in the study's SQLite storage, read with sqlite3."""
    with sqlite3.connect(study_dir / "study.db") as db:
        return db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def test_a_search_finds_the_learning_rate_that_trains_and_resumes(data, tmp_path):
    # Learning rates from 1e-4 to 1: here 1e-3 trains, 1e-1 (100x too high) ruins it.
    space = tmp_path / "space.toml"
    space.write_text("[lr_finetune]\nlow = 1e-4\nhigh = 1.0\nlog = true\n")
    args = ["--data-dir", data, "--study", "lr", "--space", space, *TEMPLATE]
    result = tune(tmp_path, *args, "--trials", 8)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "runs/lr/report/trials.csv")
    assert len(table) == 8 and set(table["state"]) <= {"complete", "pruned"}
    done = table[table["state"] == "complete"]
    best = done.loc[done["value"].idxmax()]
    assert best["lr_finetune"] < 0.05 and best["value"] >= 0.9, table
    ruined = table[table["lr_finetune"] > 0.1]
    assert len(ruined) and (ruined["value"].fillna(0) <= 0.75).all(), table  # not vacuous
    # Every trial is an ordinary run on the study's folds.
    for run in table["run"]:
        assert (tmp_path / run / "fold_0" / "metrics.json").is_file() or \
            (tmp_path / run / "fold_0").is_dir()
        assert (tmp_path / run / "folds.csv").read_text() == \
            (tmp_path / "runs/lr/folds.csv").read_text()
    assert {"history.png", "epochs.png", "index.html"} <= {
        p.name for p in (tmp_path / "runs/lr/report").iterdir()}
    assert "python scripts/train.py --config" in result.stdout

    # The best settings are a file train.py takes.
    printed = subprocess.run(
        [sys.executable, str(REPO / "scripts/train.py"), "--config", "runs/lr/best.toml",
         "--print-config"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    config = tomllib.loads(printed.stdout)
    assert config["train"]["lr_finetune"] == pytest.approx(best["lr_finetune"], rel=1e-5)
    assert config["run"] == "lr-best" and config["fold"] == -1

    # The same command with more trials continues the study: trial 8 only; then
    # the best and the default settings are trained on fold 1, which no trial saw.
    result = tune(tmp_path, *args, "--trials", 9, "--confirm", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 of 9 trials finished" in result.stdout and "--- trial 8 " in result.stdout
    assert [n for n, _ in trials(tmp_path / "runs/lr")] == list(range(9))
    confirmed = json.loads((tmp_path / "runs/lr/confirm.json").read_text())
    assert confirmed["folds"] == [1] and "one fold cannot tell" in confirmed["verdict"]
    for name in ("best", "default"):
        metrics = json.loads((tmp_path / f"runs/lr/confirm-{name}/fold_1/metrics.json")
                             .read_text())
        assert confirmed[name] == [metrics["auc"]]
    assert "one fold cannot tell" in (tmp_path / "runs/lr/report/index.html").read_text().lower()

    # A study continued with another space is refused, in one line, before training.
    space.write_text("[dropout]\nlow = 0.0\nhigh = 0.5\n")
    result = tune(tmp_path, *args, "--trials", 10)
    assert result.returncode == 2 and "made with another space" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs/lr/trial_009").exists()


def test_two_processes_share_one_study_and_finish_its_trials_once(data, tmp_path):
    args = ["--data-dir", data, "--study", "shared", "--trials", 4, "--pruner", "none",
            *TEMPLATE]
    first = tune(tmp_path, *args, wait=False)
    time.sleep(3)  # the first makes the study; the second joins it
    second = tune(tmp_path, *args, wait=False)
    outs = [p.communicate(timeout=1200) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[1][-2000:] for o in outs]
    rows = trials(tmp_path / "runs/shared")
    assert sum(state == "COMPLETE" for _, state in rows) == 4  # exactly N between them
    ran = [line for out, _ in outs for line in out.splitlines() if line.startswith("--- trial")]
    assert len(ran) == 4 and len(set(ran)) == 4  # no trial twice
    assert all(o[0].count("--- trial") >= 1 for o in outs), "both processes took trials"
    runs = sorted(p.name for p in (tmp_path / "runs/shared").glob("trial_*"))
    assert len(runs) == 4 and all((tmp_path / "runs/shared" / r / "fold_0/metrics.json").is_file()
                                  for r in runs)


@pytest.mark.parametrize("space, says", [
    ("[lr_finetun]\nlow = 1e-4\nhigh = 1e-2\n", "'lr_finetun' is not a setting a search can set"),
    ("[data_dir]\nchoices = ['a', 'b']\n", "'data_dir' is not a setting a search can set"),
    ("[lr_finetune]\nlow = 1e-2\nhigh = 1e-4\n", "needs low < high"),
    ("[lr_finetune]\nlow = 0.0\nhigh = 1e-2\nlog = true\n", "both above 0"),
    ("[dropout]\nlow = 0.0\nhigh = 1.5\n", "[dropout] 1.5 is refused (--dropout 1.5"),
    ("[batch_size]\nvalues = [8, 16]\n", "needs low and high"),
    ("", "names no settings field"),
])
def test_a_wrong_space_is_refused_in_one_line_before_training(data, tmp_path, space, says):
    path = tmp_path / "space.toml"
    path.write_text(space)
    start = time.perf_counter()
    result = tune(tmp_path, "--data-dir", data, "--study", "s", "--space", path, *TEMPLATE)
    assert result.returncode == 2, result
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and says in line, line
    assert time.perf_counter() - start < 60 and "tensorflow" not in result.stderr.lower()
    assert not (tmp_path / "runs").exists()


def test_other_refusals_are_one_line_before_training(data, tmp_path):
    def refused(*args):
        result = tune(tmp_path, *args)
        assert result.returncode == 2, result
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr

    assert "--study" in refused("--data-dir", data, *TEMPLATE)
    assert "cannot open it" in refused("--data-dir", data, "--study", "s", *TEMPLATE,
                                       "--storage", "nosuchdb://nowhere/x")
    assert "together at most --folds (3)" in refused(
        "--data-dir", data, "--study", "s", *TEMPLATE, "--folds-per-trial", 2, "--confirm", 2)
    tiny = tmp_path / "tiny"
    for c in ("Normal", "OSCC"):
        (tiny / c).mkdir(parents=True)
        shutil.copy(next((data / c).iterdir()), tiny / c)
    assert "--folds" in refused("--data-dir", tiny, "--study", "s", *TEMPLATE)
    assert not list((tmp_path / "runs").glob("*/trial_*"))
