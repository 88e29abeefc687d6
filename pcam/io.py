"""Atomic file writes: write under a temporary name, then rename.

A reader (or a re-run after a crash) sees either the old file or the whole
new one, never half of it. Temporary names are ``.NAME.tmp-PID`` (Keras
checkpoints add their extension after it, see ``pcam.train.checkpoints``), so
that a clean-up can recognise pcam's own leftovers, and whose they were.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path

import pandas as pd

from pcam.errors import PcamError

# .NAME.tmp-PID, optionally followed by an extension (.keras, .weights.h5).
TEMPORARY = re.compile(r"^\..+\.tmp-(?P<pid>\d+)(\.[A-Za-z0-9.]+)?$")


def temporary_name(path: Path, pid: int | None = None) -> Path:
    """The temporary name beside ``path`` that this process writes first."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def temporary_pid(name: str) -> int | None:
    """The pid in a pcam temporary file name, or None when ``name`` is not one."""
    match = TEMPORARY.match(name)
    return int(match["pid"]) if match else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete pcam's temporary files in ``folder`` left by processes that are gone.

    Only names of the ``.NAME.tmp-PID`` pattern whose process no longer
    exists: never other hidden files, never a live writer's file.

    Returns:
        The paths deleted.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            pid = temporary_pid(entry.name)
            if pid is not None and pid != os.getpid() and not pid_alive(pid) \
                    and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def check_writable(out: Path, option: str = "--out") -> None:
    """Refuse early an output whose folder cannot be made: before minutes of
    work, not after (a read-only disk, a file where the folder should be)."""
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cannot_write(out, err, option) from None


def cannot_write(out: Path, err: OSError, option: str = "--out"):
    """The one-line error for an output the system refused to write."""
    return PcamError(f"cannot write {out}: {err.strerror}; choose another {option}")


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it into place on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        # Only when it is there: unlinking a missing name in a read-only folder
        # raises, and would hide the error that got us here.
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, record) -> None:
    """``record`` as indented JSON, atomically, with NaN as null (JSON has no
    NaN) and numpy scalars as numbers: the reports' metrics files."""
    atomic_write_text(path, json.dumps(_plain(record), indent=2) + "\n")


def _plain(value):
    """``value`` with NaN as null and numpy scalars as numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def read_csv_log(path: Path) -> pd.DataFrame:
    """A Keras ``CSVLogger`` file as a table, whatever appended to it.

    Two writers (or a log resumed by an older pcam) can repeat the header
    mid-file, and a killed writer can leave a half line: repeated headers
    are dropped, short lines skipped and every column read as numbers
    (what cannot be read becomes NaN).
    """
    path = Path(path)
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame()
    table = pd.read_csv(path, dtype=str, on_bad_lines="skip")
    if table.empty:
        return table
    header = list(table.columns)
    table = table[~(table == header).all(axis=1)]
    return table.apply(pd.to_numeric, errors="coerce").reset_index(drop=True)
