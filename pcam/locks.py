"""One process per run folder and per tile store: an exclusive ``flock``.

Two ``train.py --run X`` at once would both train fold 0 and write the same
files; two ``prepare.py`` on one store would delete each other's temporary
shards. Each takes an exclusive lock on a file in the folder (``.pcam.lock``,
holding its pid for the message) and a second process is refused with a
PcamError naming the holder.

``flock`` locks belong to the open file, so the kernel releases them when
the holder dies, however it dies: a lock file left behind by a killed
process never blocks anyone, and is never deleted (deleting it would let
two processes lock two different files of the same name).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from pcam.errors import PcamError

LOCK_NAME = ".pcam.lock"

# Locks this process holds: path -> [fd, depth], so that a function holding a
# folder's lock can call another that takes it too (a second flock on a new
# descriptor of the same file would conflict with our own).
_HELD: dict[str, list] = {}


@contextlib.contextmanager
def exclusive(folder: Path, what: str, wait: bool = False):
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block.

    Args:
        folder: the run, fold or store folder.
        what: how the message names it, e.g. ``"run runs/X"``.
        wait: wait for a holder to let go instead of refusing (for locks
            held only briefly).

    Raises:
        PcamError: another live process holds it (unless ``wait``), or the
            folder cannot be written.
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise PcamError(f"cannot write {path}: {err.strerror}; choose a folder you can "
                        "write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        if not wait:
            os.close(fd)
            raise PcamError(f"{what} is in use by process {holder} (lock {path}); wait for "
                            "it to finish or stop it") from None
        print(f"{what} is in use by process {holder}; waiting for it", flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)


def busy(folder: Path) -> bool:
    """Whether another process holds the lock of ``folder`` now."""
    path = Path(folder) / LOCK_NAME
    if str(Path(folder).resolve()) in _HELD or not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also lets go of the shared lock just taken
    return False


def close_inherited() -> None:
    """Close the lock descriptors a forked child inherited (call it first in
    the child): otherwise the lock would outlive its holder in the child."""
    for fd, _ in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()
