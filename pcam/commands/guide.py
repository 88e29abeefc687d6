"""What to run next: the lines a command ends with, so that no step is a dead end.

Each function returns text; the commands print it. The run is named as
``runs/latest`` when it is the last one trained (``pcam.places``), so the
lines can be copied as they are.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from pcam import places


def run_name(run_dir: Path) -> str:
    """How to name ``run_dir`` on a command line: ``RUNS_DIR/latest`` when that
    link points at it, else its path."""
    run_dir = Path(run_dir)
    latest = run_dir.parent / places.LATEST
    if latest.is_symlink() and os.readlink(latest) == run_dir.name:
        return shlex.quote(str(latest))
    return shlex.quote(str(run_dir))


def after_training(run_dir: Path, kind: str, own_data: bool = False) -> str:
    """The next steps after a finished run of ``kind`` ("kaggle" or "folders");
    with ``own_data`` (after a demo), training on one's own images too."""
    run = run_name(run_dir)
    steps = [(f"python scripts/predict.py --run {run}", "the submission") if kind == "kaggle"
             else (f"python scripts/predict.py --run {run} --images NEW_IMAGES/",
                   "class probabilities of new images, files or folders"),
             (f"pcam-app --run {run}", "upload images, see answers and heat maps"),
             (f"python scripts/explain.py --run {run} --images IMAGE", "where the model looked")]
    if own_data:
        steps.append(("python scripts/train.py --data-dir YOUR_FOLDERS/",
                      "your own images: one folder per class"))
    width = max(len(command) for command, _ in steps) + 2
    return "\n".join(["next:"] + [f"  {command.ljust(width)}# {why}" for command, why in steps])
