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


def after_training(run_dir: Path, kind: str, data_dir: str = "") -> str:
    """The next steps after a finished run of ``kind`` ("kaggle" or "folders")."""
    run = run_name(run_dir)
    lines = ["next:"]
    if kind == "kaggle":
        lines.append(f"  python scripts/predict.py --run {run}            # the submission")
    else:
        lines.append(f"  python scripts/predict.py --run {run} --images NEW_IMAGES/   "
                     "# class probabilities of images, files or folders")
    lines += [f"  pcam-app --run {run}                               # upload images, "
              "see answers and heat maps",
              f"  python scripts/explain.py --run {run} --images IMAGE   # Grad-CAM"]
    if data_dir and kind == "folders":
        lines.append("  python scripts/train.py --data-dir YOUR_FOLDERS/    "
                     "# your own images: one folder per class")
    return "\n".join(lines)
