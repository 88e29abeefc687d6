"""Heat map of a large image: windows batched through the model vs a per-tile loop.

    python benchmarks/heatmap.py [--side 2048] [--stride 32] [--loop-windows 300]

One image of SIDE x SIDE pixels, a mosaic of real PCam tiles, is mapped with
windows of 96 px every STRIDE px (2,048 px at stride 32: 62 x 62 = 3,844
windows) by the compact CNN (simple-cnn, random weights: speed does not
depend on them), in the same process:
  1. ``pcam.explain.heatmap.heat_map``: windows cut from a strided view and sent
     through ``predict_tiles`` 256 at a time, then averaged per pixel;
  2. the loop it replaces: each window cut and sent through the model alone
     (``model(window[None])``, the cheapest per-tile call Keras offers, no
     ``predict()`` overhead), over the first LOOP_WINDOWS windows; its
     tiles/s is what the whole image would take.
Both are warmed up (graph traced) before the clock starts. Target (issue 14):
batched >= 10x the loop's tiles/s.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from common import require_real_tiles, table


def mosaic(side: int) -> np.ndarray:
    """A SIDE x SIDE image tiled from real 96 px PCam tiles (both labels)."""
    from pcam.data.images import decode_image

    real = require_real_tiles()
    n = -(-side // 96)
    files = sorted((real / "train" / "0").iterdir())[:n * n // 2]
    files += sorted((real / "train" / "1").iterdir())[:n * n - len(files)]
    tiles = np.stack([decode_image(f)[0] for f in files])
    image = tiles.reshape(n, n, 96, 96, 3).transpose(0, 2, 1, 3, 4).reshape(n * 96, n * 96, 3)
    return np.ascontiguousarray(image[:side, :side])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--loop-windows", type=int, default=300)
    args = parser.parse_args()

    from pcam.explain.heatmap import cut_windows, heat_map, window_starts
    from pcam.models.registry import create_model
    from pcam.runs import ModelInfo

    image = mosaic(args.side)
    model = create_model("simple-cnn", weights=None)
    info = ModelInfo(("normal", "tumour"), "tumour", 96, label_region=32, backbone="simple-cnn",
                     image_size=96)
    ensemble = [(model, info)]
    heat_map(ensemble, image[:384, :384], info, args.stride)  # trace the graph
    start = time.perf_counter()
    heat = heat_map(ensemble, image, info, args.stride)
    batched_s = time.perf_counter() - start
    windows = heat.grid.size

    ys = window_starts(args.side, 96, args.stride)
    xs = window_starts(args.side, 96, args.stride)
    model(image[None, :96, :96], training=False)  # warm
    start = time.perf_counter()
    done = 0
    for y in ys:
        for x in xs:
            window = cut_windows(image, np.array([y]), np.array([x]), 96)
            np.asarray(model(window, training=False))
            done += 1
            if done == args.loop_windows:
                break
        if done == args.loop_windows:
            break
    loop_s = time.perf_counter() - start

    batched_rate, loop_rate = windows / batched_s, done / loop_s
    table(f"heat map of a {args.side}x{args.side} image, 96 px windows every {args.stride} px "
          f"({len(ys)}x{len(xs)} = {windows:,} windows), simple-cnn on this CPU",
          [("batched (pcam.explain.heatmap.heat_map)", f"{windows:,}", f"{batched_s:.2f}",
            f"{batched_rate:,.0f}", "1.0x"),
           ("per-tile loop (model(window[None]))", f"{done:,}", f"{loop_s:.2f}",
            f"{loop_rate:,.0f}", f"{loop_rate / batched_rate:.2f}x"),
           ("per-tile loop, whole image (from its rate)", f"{windows:,}",
            f"{windows / loop_rate:.1f}", f"{loop_rate:,.0f}", "")],
          ("method", "windows", "seconds", "tiles/s", "speed vs batched"))
    print(f"\nbatched is {batched_rate / loop_rate:.1f}x the per-tile loop "
          f"(target >= 10x): {'met' if batched_rate / loop_rate >= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
