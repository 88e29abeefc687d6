"""Whole slides: scripts/slide.py against a per-tile read_region loop; memory at two sizes.

    python benchmarks/slides.py [--work DIR] [--sides 10000,20000] [--loop-tiles 1000]

A synthetic slide of SIDE x SIDE pixels at 0.972 um/px (JPEG tiles, 3
levels, what OpenSlide reads as a generic pyramidal TIFF): real PCam tiles
(``pcam-real/valid``, reused) in a disc of tissue on white glass. The model:
the shipped PCam backbone with a head trained two epochs on 400 real tiles
(made once under WORK). For each size, in child processes (peak memory is
each child's own maximum resident set):

  1. ``scripts/slide.py`` as a user runs it: tissue, 2,048 px blocks read by a
     background thread, tiles batched through ``predict_tiles``, every output
     written; its wall time split as the slide's ``slide.json`` records it;
  2. the loop it replaces, TIAToolbox-style per-patch reading: for each of the
     first LOOP_TILES tiles of the same plan, ``read_region`` of that one
     tile, resized, through the same model alone (``predict_tiles`` of one
     tile, the graph traced beforehand); its tiles/s is what the slide would take.

Targets (issue 28): slide.py >= 5x the loop's tiles/s; peak memory at the two
sizes (4x the pixels) within 200 MB of each other.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import require_real_tiles, table

REPO = Path(__file__).resolve().parents[1]
MPP = 0.972
CELL = 96


def make_run(work: Path) -> Path:
    """The benchmark's model, trained once (cpu-cnn from the shipped PCam backbone)."""
    run = work / "runs" / "r"
    if (run / "fold_0" / "metrics.json").is_file():
        return run
    real = require_real_tiles()
    data = work / "data"
    for label in ("0", "1"):
        (data / label).mkdir(parents=True, exist_ok=True)
        for tile in sorted((real / "train" / label).iterdir())[:200]:
            link = data / label / tile.name
            if not link.exists():
                link.symlink_to(tile)
    subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--data-dir", str(data),
                    "--positive", "1", "--mpp", str(MPP), "--store-dir", str(work / "store"),
                    "--runs-dir", str(work / "runs"), "--run", "r", "--backbone", "cpu-cnn",
                    "--weights", "pcam", "--epochs-frozen", "2", "--epochs-finetune", "0",
                    "--folds", "2", "--fold", "0", "--batch-size", "32", "--no-report"],
                   check=True, stdout=subprocess.DEVNULL)
    return run


def make_slide(path: Path, side: int) -> Path:
    """A SIDE x SIDE synthetic slide (made once)."""
    import tifffile

    from pcam.data.images import decode_image

    if path.is_file():
        return path
    real = require_real_tiles()
    pool = np.stack([decode_image(f)[0] for label in ("0", "1")
                     for f in sorted((real / "valid" / label).iterdir())[:500]])
    rng = np.random.default_rng(0)
    image = np.full((side, side, 3), 243, np.uint8)
    cells = side // CELL
    centre = (np.arange(cells) + 0.5) * CELL
    cy, cx = np.meshgrid(centre, centre, indexing="ij")
    disc = (cx - side / 2) ** 2 + (cy - side / 2) ** 2 <= (0.42 * side) ** 2
    for r, c in zip(*np.nonzero(disc)):
        image[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = pool[rng.integers(len(pool))]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with tifffile.TiffWriter(partial, bigtiff=True) as tif:
        for k in range(3):
            scale = 2 ** k
            tif.write(np.ascontiguousarray(image[::scale, ::scale]), tile=(256, 256),
                      compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                      subfiletype=1 if k else 0, resolutionunit="CENTIMETER",
                      resolution=(1e4 / (MPP * scale), 1e4 / (MPP * scale)))
    partial.rename(path)
    return path


def child(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; its wall seconds, peak resident MB and stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, out


def loop(slide_path: str, run: str, n: int) -> None:
    """The per-tile baseline, in its own process: prints tiles/s as JSON."""
    from pcam.data.images import to_tile
    from pcam.data.slides import open_slide
    from pcam.explain.slides import find_tissue, plan_tiles
    from pcam.predict.ensemble import load_ensemble, predict_tiles

    ensemble = load_ensemble(Path(run), [0])
    info = ensemble[0][1]
    slide = open_slide(slide_path)
    _, mask, ds, _ = find_tissue(slide, info.window * info.mpp)
    plan = plan_tiles(slide, info.mpp, info.window, mask, ds, 0.5)
    predict_tiles(ensemble, np.zeros((1, 96, 96, 3), np.uint8), (0,))  # trace the graph
    count = min(n, len(plan.rows))
    start = time.perf_counter()
    for x, y in zip(plan.xs[:count], plan.ys[:count]):
        tile = to_tile(slide.read(plan.level, x, y, plan.side, plan.side), info.tile_size)
        predict_tiles(ensemble, tile[None], (0,))
    seconds = time.perf_counter() - start
    print(json.dumps({"tiles": count, "tiles_per_s": count / seconds}))


def model_only(run: str) -> None:
    """The ceiling, in its own process: the model alone on 2,048 tiles in memory,
    batched as slide.py sends them and one at a time as the loop does."""
    from pcam.predict.ensemble import load_ensemble, predict_tiles

    ensemble = load_ensemble(Path(run), [0])
    tiles = np.random.default_rng(0).integers(0, 256, (2048, 96, 96, 3), np.uint8)
    predict_tiles(ensemble, tiles[:256], (0,))
    predict_tiles(ensemble, tiles[:1], (0,))
    start = time.perf_counter()
    predict_tiles(ensemble, tiles, (0,))
    batched = len(tiles) / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(300):
        predict_tiles(ensemble, tiles[i:i + 1], (0,))
    single = 300 / (time.perf_counter() - start)
    print(json.dumps({"batched": batched, "single": single}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-slides"))
    parser.add_argument("--sides", default="10000,20000")
    parser.add_argument("--loop-tiles", type=int, default=1000)
    parser.add_argument("--loop", nargs=3, help=argparse.SUPPRESS)  # the baseline's child
    parser.add_argument("--make", nargs=2, help=argparse.SUPPRESS)  # a slide, in a child
    parser.add_argument("--model-only", nargs=1, help=argparse.SUPPRESS)  # the ceiling's child
    args = parser.parse_args()
    if args.loop:
        return loop(args.loop[0], args.loop[1], int(args.loop[2]))
    if args.make:
        return make_slide(Path(args.make[0]), int(args.make[1])) and None
    if args.model_only:
        return model_only(args.model_only[0])

    run = make_run(args.work)
    rows, memory = [], []
    for side in (int(s) for s in args.sides.split(",")):
        folder = args.work / f"slides-{side}"
        # Made in a child: a forked child's peak memory counts its parent's pages
        # from before its exec, and the slide's pixels are 1.2 GB at 20,000².
        slide = folder / f"mosaic-{side}.tif"
        child([sys.executable, __file__, "--make", str(slide), str(side)])
        out = args.work / f"out-{side}"
        shutil.rmtree(out, ignore_errors=True)
        wall, peak, _ = child([sys.executable, str(REPO / "scripts" / "slide.py"), "--run",
                               str(run), str(folder), "--out", str(out)])
        record = json.loads((out / f"{slide.stem}.slide.json").read_text())
        s = record["seconds"]
        _, loop_peak, said = child([sys.executable, __file__, "--loop", str(slide), str(run),
                                    str(args.loop_tiles)])
        base = json.loads(said.strip().splitlines()[-1])
        fast = record["tiles"] / s["total"]
        rows.append((f"{side:,}²", f"{record['tiles']:,}", f"{fast:.0f}",
                     f"{base['tiles_per_s']:.1f} ({base['tiles']:,} tiles)",
                     f"{fast / base['tiles_per_s']:.1f}x", f"{wall:.0f}",
                     f"{s['tissue']:.1f} / {s['reading']:.1f} ({s['waiting']:.1f} not hidden) / "
                     f"{s['model']:.1f} / {s['writing']:.1f}"))
        memory.append((f"{side:,}²", f"{peak:,.0f}", f"{loop_peak:,.0f}"))
    _, _, said = child([sys.executable, __file__, "--model-only", str(run)])
    ceiling = json.loads(said.strip().splitlines()[-1])
    rows.append(("model alone (tiles in memory)", "2,048", f"{ceiling['batched']:.0f}",
                 f"{ceiling['single']:.1f} (300 tiles)",
                 f"{ceiling['batched'] / ceiling['single']:.1f}x", "", "the ceiling on this machine"))
    table("Whole slide: scripts/slide.py vs a per-tile read_region loop (same model, same tiles)",
          rows, ("slide", "tiles", "slide.py tiles/s", "loop tiles/s", "speed-up",
                 "slide.py wall s", "s: tissue / reading (not hidden) / model / writing"))
    table("Peak resident memory (MB) of each child process", memory,
          ("slide", "slide.py", "per-tile loop"))
    if len(memory) > 1:
        peaks = [float(m[1].replace(",", "")) for m in memory]
        print(f"\nslide.py peak memory spread over sizes: {max(peaks) - min(peaks):.0f} MB "
              "(target: within 200 MB)")


if __name__ == "__main__":
    main()
