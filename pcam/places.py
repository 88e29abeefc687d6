"""Where pcam puts what it makes when the user does not say: never among their images.

A user's image folder is not ours to write. It may be read-only (Kaggle
notebooks mount the competition under ``/kaggle/input``; lab NAS shares),
and a ``store/`` inside a class-folder dataset is taken for a class by the
next scan and by the user's other tools (Keras' ``image_dataset_from_directory``).
So a tile store goes, by default, to ``stores/<folder>-<hash>/`` in the
working folder, beside ``runs/``, ``submissions/`` and ``predictions/``,
keyed by the source folder's absolute path (the store's own fingerprint
then says whether the files changed). A store that an earlier pcam wrote
inside the data folder is recognised by its manifest, used where it is,
and never scanned as a class.

Runs: a run's default name is the data folder's and a hash of what is
trained (the same command again resumes it); ``runs/latest`` names the last
run trained, so that the next command can say ``--run latest``; a run in a
folder that cannot be written (a Kaggle input) resumes in a copy.

Nothing here imports TensorFlow or any other pcam module but ``errors``.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from pcam.errors import PcamError
from pcam.io import pid_alive, temporary_name, temporary_pid

STORES = Path("stores")
LEGACY_STORE = "store"  # DATA_DIR/store/, where pcam 0.1 put every store
LATEST = "latest"
# Kaggle notebooks: the competition is mounted read-only here, and only
# /kaggle/working (20 GB) is writable; the notebook's working folder is it.
KAGGLE_INPUT = Path("/kaggle/input")
COMPETITION = "histopathologic-cancer-detection"


def default_store(data_dir: str | Path, tile_size: int = 0, max_tile_size: int = 0) -> Path:
    """The store folder of the source ``data_dir`` when ``--store-dir`` is not given:
    an earlier pcam's ``DATA_DIR/store`` when one is there, else
    ``stores/<name>-<hash of the absolute path>`` in the working folder, with
    ``-<N>px`` or ``-max<N>px`` when a tile size or cap is asked for: the GPU
    and CPU recipes' stores of one folder (224 and 128 px) then live side by
    side instead of rebuilding each other."""
    legacy = Path(data_dir) / LEGACY_STORE
    if is_store(legacy):
        return legacy
    absolute = Path(os.path.abspath(data_dir))
    key = hashlib.sha1(str(absolute).encode()).hexdigest()[:8]
    name = _slug(absolute.name) or "data"
    size = f"-{tile_size}px" if tile_size else f"-max{max_tile_size}px" if max_tile_size else ""
    return STORES / f"{name}-{key}{size}"


def is_store(folder: Path) -> bool:
    """Whether ``folder`` is a pcam tile store (or a folder of them: ``train/``,
    ``test/``), recognised by a manifest with shards: never a folder of images."""
    folder = Path(folder)
    return any(_is_manifest(folder / part / "manifest.json") for part in ("", "train", "test"))


def _is_manifest(path: Path) -> bool:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and "shards" in found and "fingerprint" in found


def kaggle_competition(input_root: Path | None = None) -> Path | None:
    """The competition's folder as a Kaggle notebook mounts it
    (``/kaggle/input/histopathologic-cancer-detection``), or None elsewhere.

    Args:
        input_root: where inputs are mounted (None: ``KAGGLE_INPUT``).
    """
    candidate = Path(input_root or KAGGLE_INPUT) / COMPETITION
    return candidate if (candidate / "train_labels.csv").is_file() else None


def default_run_name(data_dir: str | Path = "", recipe: dict | None = None) -> str:
    """A run's name when ``--run`` is not given.

    With ``recipe`` (the run's settings as ``pcam.settings.to_dict`` gives
    them): the data folder's name and a hash of what is trained, e.g.
    ``oral-oscc-3f9a2c1d``, so that the same command run again resumes the
    same run (a timestamp started a new one each time) and changed settings
    start another. Where things are, devices and reporting are left out of the
    hash, as a resumed run may change them. Without it: the name and the time.
    """
    name = _slug(Path(os.path.abspath(data_dir)).name) if data_dir else ""
    if recipe is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{name}-{stamp}" if name else stamp
    trained = {k: v for k, v in recipe.items()
               if k not in ("run", "runs_dir", "fold", "report", "recipe", "device")}
    trained["data"] = {k: v for k, v in trained.get("data", {}).items()
                       if k not in ("store_dir", "workers", "shard_tiles", "skip_bad")}
    trained["data"]["data_dir"] = os.path.abspath(data_dir) if data_dir else ""
    key = hashlib.sha1(json.dumps(trained, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name or 'run'}-{key}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")


def mark_latest(run_dir: Path) -> None:
    """Make ``RUNS_DIR/latest`` name ``run_dir`` (a symbolic link, replaced atomically)."""
    run_dir = Path(run_dir)
    link = run_dir.parent / LATEST
    if run_dir.name == LATEST:
        return
    tmp = link.with_name(f".{LATEST}.tmp-{os.getpid()}")
    try:
        if os.path.lexists(tmp):
            tmp.unlink()
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        if link.exists() and not link.is_symlink():
            tmp.unlink()  # a real folder called latest is the user's: leave it
            return
        os.replace(tmp, link)
    except OSError:
        # A file system without symbolic links (some network shares): the
        # last run is then named by the command's last line only.
        if os.path.lexists(tmp):
            tmp.unlink()


def writable_run(run_dir: Path, runs_dir: Path) -> Path:
    """``run_dir``, or, when it is a finished or started run in a folder that cannot be
    written (a Kaggle notebook's input from an earlier session), a copy of it at
    ``runs_dir/NAME`` to resume there (made once; an existing copy is used).

    Raises:
        PcamError: the copy's place is taken by another run, or is ``run_dir`` itself.
    """
    run_dir, runs_dir = Path(run_dir), Path(runs_dir)
    if not (run_dir / "config.json").is_file() or _writable(run_dir):
        return run_dir
    copy = runs_dir / run_dir.name
    if copy.resolve() == run_dir.resolve():
        return run_dir  # nowhere else to go: training says it cannot write there
    if (copy / "config.json").is_file():
        print(f"run {run_dir} cannot be written; resuming its copy {copy}", flush=True)
        return copy
    if copy.exists():
        raise PcamError(f"run {run_dir} cannot be written, and {copy}, where it would be "
                        "copied to resume, is taken; pass --runs-dir with another folder")
    for stale in runs_dir.glob(f".{copy.name}.tmp-*"):  # copies of processes killed midway
        pid = temporary_pid(stale.name)
        if pid is not None and not pid_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = temporary_name(copy)
    shutil.copytree(run_dir, tmp, ignore=shutil.ignore_patterns(".pcam.lock"))
    os.replace(tmp, copy)
    print(f"run {run_dir} cannot be written (an input of an earlier session?): copied to "
          f"{copy}, resumed there", flush=True)
    return copy


def _writable(folder: Path) -> bool:
    """Whether a file can be made in ``folder`` (``os.access`` says yes to root on a
    read-only mount, so try)."""
    probe = folder / f".pcam-probe-{os.getpid()}"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


def resolve_run(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    """``run`` as a run folder: ``latest`` (or ``RUNS_DIR/latest``) is followed to
    the run it names; anything else is returned as given.

    Raises:
        PcamError: ``latest`` asked for and no run trained yet.
    """
    path = Path(runs_dir) / LATEST if str(run) == LATEST else Path(run)
    if path.name != LATEST or not path.is_symlink() and str(run) != LATEST:
        return path
    if not path.exists():
        raise PcamError(f"--run {run}: no run has been trained here yet ({path} is missing); "
                        "train one with python scripts/train.py --demo, or --data-dir "
                        "YOUR_FOLDERS")
    return path.parent / os.readlink(path)
