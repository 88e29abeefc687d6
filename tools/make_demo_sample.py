#!/usr/bin/env python3
"""Make the bundled demo sample, pcam/sample/pcam-demo.zip (maintainers only).

    python tools/make_demo_sample.py [--train 1200] [--test 300] [--seed 0]

Takes real PCam tiles from ../shared/data/pcam-real (CC0) and packs them in
the competition's layout: train/<id>.tif, test/<id>.tif, train_labels.csv,
sample_submission.csv; the test answers go beside the zip as
pcam-demo.answers.csv. The tiles are JPEG-compressed TIFFs at quality 75:
the source tiles are JPEGs at about that quality, so re-encoding changes a
pixel by 0.55 grey levels on average, and a tile takes ~4.6 KB instead of
27.6 KB uncompressed (1,500 tiles: ~7 MB, under the 10 MB we allow the repo).
"""
import argparse
import io
import random
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "pcam-real"
OUT = REPO / "pcam" / "sample"


def pick(split: str, n: int, rng: random.Random) -> pd.DataFrame:
    """N tiles of a split, half of each class."""
    labels = pd.read_csv(SOURCE / f"{split}_labels.csv", dtype={"id": str})
    parts = [labels[labels["label"] == c].sort_values("id") for c in (0, 1)]
    rows = [row for part in parts for row in rng.sample(list(part.itertuples(index=False)), n // 2)]
    return pd.DataFrame(sorted(rows), columns=["id", "label"])


def tiff_bytes(jpg: Path) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.asarray(Image.open(jpg).convert("RGB")), photometric="rgb",
                     compression="jpeg", compressionargs={"level": 75})
    return buffer.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not SOURCE.is_dir():
        sys.exit(f"needs the real PCam tiles at {SOURCE}")
    rng = random.Random(args.seed)
    train, test = pick("train", args.train, rng), pick("valid", args.test, rng)
    zip_path = OUT / "pcam-demo.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder, split, table in (("train", "train", train), ("test", "valid", test)):
            for tile_id, label in table.itertuples(index=False):
                archive.writestr(f"{folder}/{tile_id}.tif",
                                 tiff_bytes(SOURCE / split / str(label) / f"{tile_id}.jpg"))
        archive.writestr("train_labels.csv", train.to_csv(index=False))
        archive.writestr("sample_submission.csv", test.assign(label=0).to_csv(index=False))
    test.to_csv(OUT / "pcam-demo.answers.csv", index=False)
    print(f"{zip_path}: {len(train)} train + {len(test)} test tiles, "
          f"{zip_path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
