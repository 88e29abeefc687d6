"""``scripts/slide.py``: a run's model over a folder of whole slides, resumable and shardable.

::

    OUT/NAME.tiles.csv  .geojson  .heatmap.png  .mask.png  [.overlay.tif]
    OUT/NAME.slide.json     written last: the slide is finished (its row of slides.csv)
    OUT/NAME.failed.json    why it could not be read (gone when a later try succeeds)
    OUT/slides.csv, OUT/index.html    every finished slide in OUT, gathered
    OUT/.work/NAME/         the slide's lock: one process per slide

A slide is finished when its ``slide.json`` is there and was written with
the same run and settings, so a folder killed at slide 120 resumes at slide
120, and a slide cut short is read again (its files are written under
temporary names, then renamed). ``--shard I/N`` takes every N-th slide of
the sorted list; jobs of an array share OUT, each slide locked by the job
reading it; the last to finish, or ``--report``, gathers the page.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from pcam import locks
from pcam.data.slides import list_slides, open_slide
from pcam.errors import PcamError
from pcam.explain.slides import (Timings, find_tissue, plan_tiles, predict_slide, slide_files,
                                 slide_scores, write_slide)
from pcam.io import atomic_write_json, atomic_write_text, check_writable, remove_stale_temporaries
from pcam.runs import ModelInfo, RunDir, info_path, load_run, resolve_folds
from pcam.settings import SlideSettings

WORK = ".work"


def read_slides(settings: SlideSettings) -> dict:
    """Read every slide of ``settings.slides`` (this shard's part) not yet finished
    with these settings, then gather the folder's page.

    Returns:
        ``read`` (slides read now), ``skipped`` (finished before), ``failed``
        ((slide, error) of this call), ``rows`` (every finished slide in OUT).

    Raises:
        PcamError: no run, no slides, an unknown run scale, or OUT not writable.
    """
    out = Path(settings.out)
    if settings.report:
        return {"read": [], "skipped": [], "failed": [], "rows": gather(out)}
    if not settings.run:
        raise PcamError("no --run given: name the run whose model reads the slides, "
                        "e.g. --run runs/NAME")
    if not settings.slides:
        raise PcamError("name the slides: scripts/slide.py --run RUN SLIDE_OR_FOLDER ...")
    run_dir, config = load_run(settings.run)
    folds = resolve_folds(run_dir, config, settings.folds)
    info = ModelInfo.from_json(info_path(RunDir(run_dir).fold(folds[0]).model))
    run_mpp = settings.run_mpp or info.mpp
    if not run_mpp:
        raise PcamError(f"run {run_dir} does not say the microns per pixel of the images it "
                        "learnt from: pass --run-mpp (PCam tiles: 0.972), or train with --mpp")
    everything = list_slides(settings.slides, exclude=out)
    if not everything:
        raise PcamError(f"no slides found in {', '.join(settings.slides)} (looked for "
                        "SVS, NDPI, MRXS, SCN, TIFF)")
    stems = _stems(everything)
    part, parts = settings.shard_part
    mine = everything[part::parts]
    check_writable(out / "slides.csv")
    remove_stale_temporaries(out)
    key = {"run": str(run_dir.resolve()), "folds": folds, "tta": settings.tta,
           "min_tissue": settings.min_tissue, "tissue_threshold": settings.tissue_threshold,
           "slide_mpp": settings.slide_mpp, "run_mpp": run_mpp}
    shard = f" (shard {part}/{parts}: {len(mine)} of {len(everything)})" if parts > 1 else ""
    print(f"{len(mine)} slide(s){shard} -> {out}; run {run_dir.name}, fold(s) "
          f"{', '.join(map(str, folds))}, tiles of {info.window * run_mpp:.0f} um", flush=True)
    ensemble, read, skipped, failed = [], [], [], []
    for number, path in enumerate(mine, 1):
        stem = stems[str(path)]
        files = slide_files(out, stem)
        if _finished(files["done"], key):
            skipped.append(str(path))
            continue
        if locks.busy(out / WORK / stem):
            print(f"[{number}/{len(mine)}] {path.name}: another process is reading it; "
                  "left to it", flush=True)
            continue
        try:
            with locks.exclusive(out / WORK / stem, f"slide {path.name}"):
                if not ensemble:  # loaded once, when a slide first needs it
                    from pcam.predict.ensemble import load_ensemble

                    ensemble = load_ensemble(run_dir, folds)
                record = read_one(path, stem, files, ensemble, settings, run_mpp,
                                  f"[{number}/{len(mine)}] {path.name}")
                record["key"] = key
                atomic_write_json(files["done"], record)
                files["done"].with_name(f"{stem}.failed.json").unlink(missing_ok=True)
        except PcamError as err:
            failed.append((str(path), str(err)))
            print(f"[{number}/{len(mine)}] {path.name}: FAILED: {err}", flush=True)
            atomic_write_json(out / f"{stem}.failed.json", {"slide": str(path), "error": str(err)})
            continue
        read.append(str(path))
        print(f"[{number}/{len(mine)}] {path.name}: {record['tiles']:,} tiles in "
              f"{record['seconds']['total']:.1f} s -> {files['heatmap']}", flush=True)
    rows = gather(out)
    return {"read": read, "skipped": skipped, "failed": failed, "rows": rows}


def read_one(path: Path, stem: str, files: dict, ensemble, settings: SlideSettings,
             run_mpp: float, desc: str) -> dict:
    """One slide, read and written; its record (the row of slides.csv and timings)."""
    from pcam.predict.tta import TTA_VIEWS

    info = ensemble[0][1]
    began = time.perf_counter()
    slide = open_slide(path, settings.slide_mpp)
    try:
        if not slide.mpp:
            raise PcamError(f"{path}: its metadata does not say its microns per pixel: pass "
                            "--slide-mpp (e.g. 0.25 for a 40x scan, 0.5 for 20x)")
        timings = Timings()
        tile_um = info.window * run_mpp
        thumb, mask, thumb_ds, threshold = find_tissue(slide, tile_um, settings.tissue_threshold)
        plan = plan_tiles(slide, run_mpp, info.window, mask, thumb_ds, settings.min_tissue)
        timings.tissue = time.perf_counter() - began
        probs = predict_slide(ensemble, slide, plan, TTA_VIEWS[settings.tta],
                              settings.batch_size, desc, timings)
    finally:
        slide.close()
    started = time.perf_counter()
    title = (f"{path.name}: {len(probs):,} tiles of {tile_um:.0f} um read at level "
             f"{plan.level} ({plan.mpp * plan.downsample:.3g} um/px)")
    write_slide(files, thumb, thumb_ds, mask, plan, probs, info.classes, info.threshold, title,
                settings.overlay_tiff)
    timings.writing = time.perf_counter() - started
    tissue_mm2 = float(mask.sum()) * (thumb_ds * slide.mpp / 1000) ** 2
    row = {"slide": stem, "path": str(path),
           **slide_scores(probs, plan, info.classes, info.threshold, tissue_mm2),
           "width": slide.dimensions[0], "height": slide.dimensions[1], "mpp": slide.mpp,
           "tissue_threshold": round(threshold, 4), "reader": slide.reader,
           "heatmap": files["heatmap"].name, "geojson": files["geojson"].name}
    total = time.perf_counter() - began
    row["seconds"] = {"total": round(total, 3), "tissue": round(timings.tissue, 3),
                      "reading": round(timings.reading, 3), "waiting": round(timings.waiting, 3),
                      "model": round(timings.model, 3), "writing": round(timings.writing, 3)}
    return row


def gather(out: Path) -> list[dict]:
    """Every finished slide in OUT as ``slides.csv`` and ``index.html``; the rows."""
    out = Path(out)
    if not out.is_dir():
        raise PcamError(f"--out {out}: no such folder; nothing to gather")
    rows, classes = [], ()
    for done in sorted(out.glob("*.slide.json")):
        record = json.loads(done.read_text())
        record.pop("seconds", None)
        record.pop("key", None)
        rows.append(record)
    failed = [json.loads(p.read_text()) for p in sorted(out.glob("*.failed.json"))]
    for f in failed:
        f["slide"] = Path(f["slide"]).name
    if rows:
        classes = ("", "") if "top1_mean" in rows[0] else tuple(
            k for k in rows[0] if k.endswith("_mm2") and k != "tissue_mm2")
    from pcam.report.slides import score_column, slides_page

    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(score_column(classes), ascending=False, kind="stable")
    atomic_write_text(out / "slides.csv", table.to_csv(index=False))
    atomic_write_text(out / "index.html", slides_page(rows, failed, classes,
                                                      f"Slides in {out.resolve().name}"))
    return rows


def _finished(done: Path, key: dict) -> bool:
    if not done.is_file():
        return False
    try:
        return json.loads(done.read_text()).get("key") == json.loads(json.dumps(key))
    except ValueError:
        return False


def _stems(slides: list[Path]) -> dict[str, str]:
    """A file name stem per slide, unique in the list (a repeated name gets
    ``-2``, ``-3`` in sorted order, the same in every shard)."""
    stems, seen = {}, {}
    for path in slides:
        base = path.stem
        seen[base] = seen.get(base, 0) + 1
        stems[str(path)] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return stems
