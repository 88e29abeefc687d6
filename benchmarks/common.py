"""What the benchmarks share: the real tiles beside the repo, and a table printer.

Benchmarks compare against a baseline measured in the same run and print
ratios: absolute seconds on a shared 2-core machine are noise.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PCAM_REAL = REPO.parent / "shared" / "data" / "pcam-real"


def require_real_tiles() -> Path:
    if not PCAM_REAL.is_dir():
        sys.exit(f"benchmark needs the real PCam tiles at {PCAM_REAL} (they sit beside the "
                 "repository for tests and benchmarks only); not found")
    return PCAM_REAL


def kaggle_layout(work: Path, train: int = 0, test: int = 0) -> Path:
    """The real tiles in the competition's layout under ``work`` (made once, then reused)."""
    dest = work / f"layout-{train or 'all'}-{test or 'all'}"
    if not (dest / "sample_submission.csv").is_file():
        print(f"laying out real tiles in {dest} ...", flush=True)
        subprocess.run([sys.executable, str(require_real_tiles() / "make_kaggle_layout.py"),
                        str(dest), "--train", str(train), "--test", str(test)], check=True)
    return dest


def replicate_layout(src: Path, dest: Path, copies: int) -> Path:
    """A larger layout whose tiles are hard links to ``src``'s under new ids (for
    memory and scale checks; decoding and storage are exactly as for real tiles)."""
    import pandas as pd

    if (dest / "sample_submission.csv").is_file():
        return dest
    (dest / "train").mkdir(parents=True, exist_ok=True)
    labels = pd.read_csv(src / "train_labels.csv", dtype={"id": str})
    rows = []
    for r in range(copies):
        for tile_id, label in labels.itertuples(index=False):
            new = f"{tile_id}{r:02d}"
            os.link(src / "train" / f"{tile_id}.tif", dest / "train" / f"{new}.tif")
            rows.append((new, label))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(dest / "train_labels.csv", index=False)
    if not (dest / "test").exists():
        os.symlink((src / "test").resolve(), dest / "test")
    (dest / "sample_submission.csv").write_text((src / "sample_submission.csv").read_text())
    return dest


def replicate_test_layout(src: Path, dest: Path, n_tiles: int) -> Path:
    """A layout whose test split has ``n_tiles`` tiles: hard links to ``src``'s test
    tiles, taken in turn under new ids (57,458, the competition's test set, from
    the sample's 3,000); train/ and train_labels.csv are ``src``'s."""
    import pandas as pd

    if (dest / "sample_submission.csv").is_file():
        return dest
    (dest / "test").mkdir(parents=True, exist_ok=True)
    ids = pd.read_csv(src / "sample_submission.csv", dtype={"id": str})["id"]
    new_ids = []
    for i in range(n_tiles):
        tile_id = ids[i % len(ids)]
        new = f"{tile_id}{i // len(ids):02d}"
        if not (dest / "test" / f"{new}.tif").exists():  # kept from an interrupted run
            os.link(src / "test" / f"{tile_id}.tif", dest / "test" / f"{new}.tif")
        new_ids.append(new)
    if not (dest / "train").exists():
        os.symlink((src / "train").resolve(), dest / "train")
    (dest / "train_labels.csv").write_text((src / "train_labels.csv").read_text())
    # Written last: its presence means the layout is complete.
    pd.DataFrame({"id": new_ids, "label": 0}).to_csv(dest / "sample_submission.csv", index=False)
    return dest


def table(title: str, rows: list[tuple], headers: tuple) -> None:
    """Print a small Markdown table (paste-able into an issue note)."""
    cells = [headers] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}\n")
    for i, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()
