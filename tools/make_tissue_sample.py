#!/usr/bin/env python3
"""Make the bundled tissue demo sample, pcam/sample/kather-tissue.zip (maintainers only).

    python tools/make_tissue_sample.py

Packs the 240 Kather et al. 2016 colorectal tissue tiles of
../shared/data/kather-8class (8 classes x 30, 150x150, CC BY 4.0) as
``<class>/<name>.webp``. Lossless WebP: the pixels are exactly the source
TIFFs' (checked below) in 4.4 MB instead of 16 MB of PackBits TIFFs (PNG:
8.9 MB, deflate TIFF: 8.8 MB).
"""
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "kather-8class"
OUT = REPO / "pcam" / "sample" / "kather-tissue.zip"


def main() -> int:
    if not SOURCE.is_dir():
        print(f"{SOURCE} not found (the maintainers' copy of the Kather tiles)", file=sys.stderr)
        return 1
    files = sorted(SOURCE.glob("*/*.tif"))
    with zipfile.ZipFile(OUT, "w", zipfile.ZIP_STORED) as zf:  # WebP is compressed already
        for path in files:
            pixels = tifffile.imread(path)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "WEBP", lossless=True, quality=100, method=6)
            again = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
            assert np.array_equal(again, pixels), path
            zf.writestr(f"{path.parent.name}/{path.stem}.webp", buffer.getvalue())
    print(f"{OUT}: {len(files)} tiles, {OUT.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
