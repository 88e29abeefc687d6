"""Fault injection: kill -9 at a chosen moment, a full disk, a second process.

Each scenario is made deterministic: a subprocess is killed once the files
show the moment wanted (polled, never slept for), a tmpfs of a few MiB fills
up, a lock is held by a real second process. Each asserts what README
promises: no traceback, the finished work intact, and the re-run resumes or
is refused in one line.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from pcam.errors import PcamError

SCRIPTS = REPO / "scripts"


def train_args(layout, tmp_path, *extra):
    """scripts/train.py on the 300-tile layout: compact CNN, 2 folds, tiny epochs."""
    return ["--data-dir", str(layout), "--store-dir", str(tmp_path / "store"),
            "--runs-dir", str(tmp_path / "runs"), "--run", "r", "--folds", "2",
            "--backbone", "simple-cnn", "--weights", "none", "--batch-size", "32",
            "--no-report", *extra]


def run_train(args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(result):
    """The run ended with exit 2 and exactly one ``error:`` line, no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def wait_for(predicate, process, timeout=300.0, what="the moment to kill"):
    """Poll ``predicate`` until true; fail if ``process`` ended first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the process ended before {what}: {err[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# A training run in which the n-th call of a Keras save method writes half a
# file at the path it was given and then hangs, as a process does that is
# killed mid-write: the test kills it there. Which path that is, the final
# name or a temporary one, is what the fix changed.
HANG_ON_SAVE = """
import os, sys, time, keras
method, nth, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
original = getattr(keras.Model, method)
calls = []

def save(self, filepath, *args, **kwargs):
    calls.append(filepath)
    if len(calls) < nth:
        return original(self, filepath, *args, **kwargs)
    with open(filepath, "wb") as f:  # half a file, flushed to disk
        f.write(b"PK\\x03\\x04" + b"\\0" * 4096)
    open(marker, "w").write(str(filepath))
    time.sleep(600)

setattr(keras.Model, method, save)
from pcam.commands.train import main
main(sys.argv[4:])
"""


def killed_mid_save(layout, tmp_path, method, nth, *extra):
    """Start a run, kill -9 it while its ``nth`` ``method`` call is writing."""
    marker = tmp_path / "saving"
    process = subprocess.Popen(
        [sys.executable, "-c", HANG_ON_SAVE, method, str(nth), str(marker),
         *train_args(layout, tmp_path, *extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(marker.exists, process, what=f"{method} call {nth}")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return Path(marker.read_text())


# --- 1. checkpoints ----------------------------------------------------------------------

def test_kill_while_best_keras_is_written_keeps_the_fold_resumable(layout_cache, tmp_path):
    """Fold 0 finishes; fold 1 is killed while writing its first best.keras.
    Before the fix the half-written file was best.keras itself, and every
    re-run died on zipfile.BadZipFile."""
    extra = ("--epochs-frozen", "0", "--epochs-finetune", "1")
    written = killed_mid_save(layout_cache, tmp_path, "save", 2, *extra)
    run = tmp_path / "runs" / "r"
    assert written.parent == run / "fold_1" and written.name != "best.keras"
    assert not (run / "fold_1" / "best.keras").exists()
    fold_0 = (run / "fold_0" / "best.keras").read_bytes()
    result = run_train(train_args(layout_cache, tmp_path, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fold 0: finished earlier, skipped" in result.stdout
    assert (run / "fold_0" / "best.keras").read_bytes() == fold_0
    assert (run / "fold_1" / "metrics.json").is_file()
    assert (run / "cv.json").is_file()


def test_kill_while_the_backup_is_written_resumes_from_the_last_one(layout_cache, tmp_path):
    """Killed while writing epoch 2's backup: epoch 1's backup is intact and
    the phase resumes from it (before the fix: h5py OSError on every re-run)."""
    extra = ("--fold", "0", "--epochs-frozen", "0", "--epochs-finetune", "3")
    written = killed_mid_save(layout_cache, tmp_path, "save_weights", 2, *extra)
    backup = tmp_path / "runs" / "r" / "fold_0" / "backup_finetune"
    assert written.parent == backup and written.name != "latest.weights.h5"
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    result = run_train(train_args(layout_cache, tmp_path, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    history = pd.read_csv(tmp_path / "runs" / "r" / "fold_0" / "history_finetune.csv")
    # Epoch 1 (0-based) was logged, then killed in its backup: it is done again,
    # from epoch 0's backup, and nothing else is.
    assert list(history["epoch"]) == [0, 1, 1, 2]
    assert not list(backup.parent.glob(".*tmp-*"))


def test_unreadable_backup_is_set_aside_and_the_phase_restarts(layout_cache, tmp_path):
    extra = ("--fold", "0", "--epochs-frozen", "0", "--epochs-finetune", "2")
    killed_mid_save(layout_cache, tmp_path, "save_weights", 2, *extra)
    fold = tmp_path / "runs" / "r" / "fold_0"
    (fold / "backup_finetune" / "latest.weights.h5").write_bytes(b"")  # e.g. a full disk
    result = run_train(train_args(layout_cache, tmp_path, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: the backup")]
    assert len(warning) == 1 and "starts again from the fold's best model" in warning[0]
    aside = list(fold.glob("backup_finetune.unreadable-*"))
    assert len(aside) == 1 and (aside[0] / "latest.weights.h5").stat().st_size == 0
    assert (fold / "metrics.json").is_file()


def test_unreadable_best_model_is_one_line_naming_it(layout_cache, tmp_path):
    from test_training import tiny

    from pcam.train.training import run_cv

    settings = tiny(layout_cache, tmp_path, fold=0, report=False)
    run_cv(settings)
    fold = settings.run_dir / "fold_0"
    for name in ("metrics.json", "oof.csv", "finetune.done"):  # as a kill in phase 2 leaves it
        (fold / name).unlink()
    (fold / "best.keras").write_bytes(b"\0" * 100)
    with pytest.raises(PcamError, match=r"best\.keras cannot be read .* delete .*fold_0"):
        run_cv(settings)


# --- 2. one process per run and per store ------------------------------------------------

HOLD_LOCK = """
import sys, time
from pcam import locks
with locks.exclusive(sys.argv[1], "test"):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold_lock(folder):
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_process_on_a_fold_is_refused_and_a_killed_holder_blocks_nobody(
        layout_cache, tmp_path):
    """Two train.py on one fold: the second is refused, naming the first. Other
    folds of the run stay free (--fold K on several machines)."""
    run = tmp_path / "runs" / "r"
    holder = hold_lock(run / "fold_0")
    args = train_args(layout_cache, tmp_path, "--epochs-frozen", "0", "--epochs-finetune", "1")
    try:
        error = one_error_line(run_train([*args, "--fold", "0"]))
        assert f"fold 0 of run {run} is in use by process {holder.pid}" in error
        assert sorted(p.name for p in (run / "fold_0").iterdir()) == [".pcam.lock"]
        # No epoch has finished, but a fold is being trained: its settings hold.
        changed = one_error_line(run_train([*args, "--fold", "1", "--dropout", "0.3"]))
        assert "started with other settings (model.dropout)" in changed
        other = run_train([*args, "--fold", "1"])
        assert other.returncode == 0 and (run / "fold_1" / "metrics.json").is_file()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock; its file (with its pid) stays.
    assert (run / "fold_0" / ".pcam.lock").read_text().strip() == str(holder.pid)
    from pcam import locks
    with locks.exclusive(run / "fold_0", "fold 0"):
        assert (run / "fold_0" / ".pcam.lock").read_text().strip() == str(os.getpid())


def test_the_run_lock_is_waited_for(tmp_path):
    from pcam import locks
    holder = hold_lock(tmp_path)
    threading.Timer(1.0, holder.kill).start()  # it dies holding the lock
    started = time.monotonic()
    with locks.exclusive(tmp_path, "run", wait=True):
        assert time.monotonic() - started >= 0.9
    holder.wait()


def test_a_second_prepare_on_a_store_is_refused(layout_cache, tmp_path):
    holder = hold_lock(tmp_path / "store" / "train")
    try:
        result = subprocess.run([sys.executable, str(SCRIPTS / "prepare.py"), "--data-dir",
                                 str(layout_cache), "--store-dir", str(tmp_path / "store")],
                                capture_output=True, text=True, timeout=300)
        assert f"in use by process {holder.pid}" in one_error_line(result)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_history_with_a_repeated_header_is_read(tmp_path):
    from pcam.train.training import best_auc

    log = "epoch,auc,loss,val_auc,val_loss\n0,0.7,0.6,0.71,0.62\n"
    (tmp_path / "history_finetune.csv").write_text(log + log + "1,0.8,0.5,0.7")  # + a half line
    assert best_auc(tmp_path) == pytest.approx(0.71)
    # evaluate.py's reading of the same log (it failed: 'val_auc' is not a valid format string)
    from pcam.runs import read_history
    history = read_history(tmp_path)
    assert list(history["epoch"]) == [0, 1] and history["val_auc"].iloc[0] == pytest.approx(0.71)


# --- 8. Ctrl-C during a parallel ingest --------------------------------------------------

@pytest.fixture(scope="module")
def big_layout(tmp_path_factory):
    """4,000 real train tiles: an ingest long enough (a few seconds) to interrupt."""
    from conftest import make_layout
    return make_layout(tmp_path_factory.mktemp("big") / "comp", train=4000, test=10)


def test_ctrl_c_during_a_parallel_ingest_exits_at_once_and_keeps_finished_shards(
        big_layout, tmp_path):
    store = tmp_path / "store"
    args = [sys.executable, str(SCRIPTS / "prepare.py"), "--data-dir", str(big_layout),
            "--store-dir", str(store), "--shard-tiles", "50", "--workers", "2"]
    # Its own process group, as a terminal's foreground job: Ctrl-C reaches the
    # parent and both workers at once. SIGINT handled by default even when the
    # tests run in a background job (which starts with SIGINT ignored).
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: len(list((store / "train").glob("shard-*.tfrecord"))) >= 2, process,
             what="two finished shards")
    os.killpg(process.pid, signal.SIGINT)
    started = time.monotonic()
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("Ctrl-C did not end the ingest within 20 s")
    assert time.monotonic() - started < 10
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "finished work is kept" in err
    with pytest.raises(ProcessLookupError):  # no worker left behind
        os.killpg(process.pid, 0)
    done = len(list((store / "train").glob("shard-*.tfrecord")))
    assert done >= 2 and not (store / "train" / "manifest.json").exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming, {done} of 80 shards already done" in again.stdout
    assert not list((store / "train").glob(".*tmp-*"))  # the killed workers' halves are gone


# --- 7. a full disk ----------------------------------------------------------------------

# Another process fills the disk after the store's space was checked, leaving
# ``keep`` bytes: the ingest then meets a real "No space left on device".
FILL_THEN_INGEST = """
import os, sys
import pcam.data.store as store
filler, keep = sys.argv[1], int(sys.argv[2])
original = store._ingest

def ingest(split, source, out, *args):
    stat = os.statvfs(out)
    with open(filler, "wb") as f:
        f.write(bytes(max(0, stat.f_bavail * stat.f_frsize - keep)))
    return original(split, source, out, *args)

store._ingest = ingest
from pcam.commands.prepare import main
main(sys.argv[3:])
"""


def test_full_disk_while_ingesting_is_one_line_and_resumes(layout_cache, small_disk, tmp_path):
    disk = small_disk(2)  # the 300 tiles need 8 MB: refused before any work
    args = ["--data-dir", str(layout_cache), "--store-dir", str(disk / "store"),
            "--shard-tiles", "50", "--workers", "2"]
    prepare = [sys.executable, str(SCRIPTS / "prepare.py"), *args]
    error = one_error_line(subprocess.run(prepare, capture_output=True, text=True, timeout=300))
    assert "needs about 8 MB" in error and "--store-dir" in error
    assert not list((disk / "store" / "train").glob("*.tfrecord"))
    small_disk(40)
    filler = disk / "filler"
    result = subprocess.run([sys.executable, "-c", FILL_THEN_INGEST, str(filler),
                             str(2 * 10**6), *args], capture_output=True, text=True, timeout=300)
    error = one_error_line(result)
    assert "No space left on device" in error and "--store-dir" in error
    done = sorted(p.name for p in (disk / "store" / "train").glob("shard-*.tfrecord"))
    filler.unlink()
    again = subprocess.run(prepare, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    if done:
        assert f"resuming, {len(done)} of 6 shards" in again.stdout
    assert not list((disk / "store" / "train").glob(".*tmp-*"))


def test_full_disk_while_training_is_one_line_keeps_best_and_resumes(layout_cache, tmp_path,
                                                                      small_disk):
    """9 MB: the first best.keras (5.6 MB) fits, its backup does not. Before the
    fix: a traceback, then a segfault (exit 139) as h5py closed the file at exit."""
    disk = small_disk(9)
    args = ["--data-dir", str(layout_cache), "--store-dir", str(tmp_path / "store"),
            "--runs-dir", str(disk / "runs"), "--run", "r", "--folds", "2", "--fold", "0",
            "--backbone", "simple-cnn", "--weights", "none", "--batch-size", "32",
            "--epochs-frozen", "0", "--epochs-finetune", "2", "--no-report"]
    error = one_error_line(run_train(args))
    assert "No space left on device" in error and "latest.weights.h5" in error
    fold = disk / "runs" / "r" / "fold_0"
    from pcam.models.saved import load_fold_model
    load_fold_model(fold / "best.keras")  # whole
    assert not list(fold.rglob(".*tmp-*"))
    small_disk(40)
    again = run_train(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (fold / "metrics.json").is_file()


def test_read_only_run_folder_rerun_and_evaluate_are_one_line(layout_cache, tmp_path, small_disk):
    disk = small_disk(40)
    args = ["--data-dir", str(layout_cache), "--store-dir", str(tmp_path / "store"),
            "--runs-dir", str(disk / "runs"), "--run", "r", "--folds", "2",
            "--backbone", "simple-cnn", "--weights", "none", "--batch-size", "32",
            "--epochs-frozen", "0", "--epochs-finetune", "1", "--no-report"]
    assert run_train(args).returncode == 0
    before = {p: p.read_bytes() for p in (disk / "runs").rglob("*") if p.is_file()}
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    error = one_error_line(run_train(args))
    assert str(disk / "runs" / "r") in error
    evaluated = subprocess.run([sys.executable, str(SCRIPTS / "evaluate.py"), "--run",
                                str(disk / "runs" / "r"), "--bootstrap", "10"],
                               capture_output=True, text=True, timeout=300)
    assert "Read-only file system" in one_error_line(evaluated)
    assert {p: p.read_bytes() for p in (disk / "runs").rglob("*") if p.is_file()} == before


def test_os_error_line_names_the_file():
    from pcam.commands.cli import os_error_line
    err = PermissionError(13, "Permission denied", "data/train_labels.csv")
    assert os_error_line(err).startswith("data/train_labels.csv: Permission denied; ")
