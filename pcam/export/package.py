"""``scripts/export.py``: a run's fold ensemble x TTA x temperature as one artifact in a folder.

::

    OUT/model/             SavedModel (signature serving_default: images -> probabilities)
    OUT/model.tflite       TFLite (the same function, converted from the SavedModel)
    OUT/model.json         the run's model.json + the export: format, folds, views, the
                           temperature and the input and output contract
    OUT/MODEL_CARD.md      data, recipe, out-of-fold metrics, calibration, intended use

The folder is written under a temporary name beside OUT and renamed when
complete: an export that fails (a converter that cannot convert an op, a
full disk) leaves the earlier OUT as it was and no half-written one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from pcam import __version__
from pcam.errors import PcamError
from pcam.io import atomic_write_text, cannot_write
from pcam.runs import RunDir, load_run, resolve_folds, run_classes

FILES = {"savedmodel": "model", "tflite": "model.tflite"}


def export_run(settings) -> dict:
    """Export ``settings.run`` (an ``ExportSettings``); the export's record (model.json).

    Raises:
        PcamError: a bad run, or a format that cannot be written (one line: why
            and which format works instead).
    """
    import tensorflow as tf

    from pcam.export.graph import ensemble_function
    from pcam.predict.ensemble import load_ensemble
    from pcam.predict.tta import TTA_VIEWS

    run_dir, config = load_run(settings.run)
    folds = resolve_folds(run_dir, config, settings.folds)
    out = Path(settings.out or Path("exports") / f"{run_dir.resolve().name}-{settings.format}")
    ensemble = load_ensemble(run_dir, folds)
    info = ensemble[0][1]
    views = TTA_VIEWS[settings.tta]
    temperatures = [i.temperature if settings.calibration == "temperature" else 1.0
                    for _, i in ensemble]
    predict = ensemble_function([m for m, _ in ensemble], temperatures, views, info.centre_crop)
    side = info.tile_size
    spec = tf.TensorSpec([None, side, side, 3], tf.uint8, name="images")
    record = {**dataclasses.asdict(info), "export": {
        "format": settings.format, "file": FILES[settings.format], "run": str(run_dir.resolve()),
        "folds": list(folds), "tta_views": list(views), "temperatures": temperatures,
        "calibration": settings.calibration, "pcam_version": __version__,
        "input": {"name": "images", "dtype": "uint8", "shape": [None, side, side, 3],
                  "meaning": f"RGB tiles of {side}x{side} px, 0-255, at the run's scale"
                             + (f" ({info.mpp} um/px)" if info.mpp else "")},
        "output": {"name": "probabilities", "dtype": "float32",
                   "shape": [None, len(info.classes)], "classes": list(info.classes),
                   "meaning": "class probabilities (rows sum to 1), calibrated"
                              if any(t != 1.0 for t in temperatures) else
                              "class probabilities (rows sum to 1)"}}}
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        _write(settings.format, partial, [m for m, _ in ensemble], predict, spec)
        atomic_write_text(partial / "model.json", json.dumps(record, indent=2) + "\n")
        atomic_write_text(partial / "MODEL_CARD.md", model_card(run_dir, config, folds, record))
        _replace(partial, out)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise cannot_write(out, err) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"exported run {run_dir.name}, fold(s) {', '.join(map(str, folds))}, TTA x{len(views)}"
          f", as {settings.format}: {out / FILES[settings.format]} (+ model.json, MODEL_CARD.md)",
          flush=True)
    return record


def _write(fmt: str, folder: Path, models, predict, spec) -> None:
    """The artifact of ``fmt`` in ``folder``."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    for model in models:
        archive.track(model)
    archive.add_endpoint("serve", lambda images: {"probabilities": predict(images)}, [spec])
    saved = folder / FILES["savedmodel"]
    # Keras's export prints its signature on stdout; pcam's lines say what was made.
    archive.write_out(str(saved), verbose=False)
    if fmt == "tflite":
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        try:
            flat = converter.convert()
        except Exception as err:  # the converter's own errors name the op it cannot convert
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else repr(err)
            raise PcamError(f"TFLite cannot convert this run's model ({first}); export it "
                            "with --format savedmodel instead") from None
        (folder / FILES["tflite"]).write_bytes(flat)
        shutil.rmtree(saved)


def _replace(partial: Path, out: Path) -> None:
    """``partial`` becomes ``out``; an earlier ``out`` is removed only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def model_card(run_dir: Path, config, folds, record: dict) -> str:
    """MODEL_CARD.md: what the model is, what it learnt from, how well, and what for."""
    classes = run_classes(config)
    cv_path = RunDir(run_dir).cv
    cv = json.loads(cv_path.read_text()) if cv_path.is_file() else {}
    manifest = Path(config.data.store_path) / "train" / "manifest.json"
    counts = json.loads(manifest.read_text()).get("class_counts", {}) if manifest.is_file() else {}
    export = record["export"]
    lines = [f"# {run_dir.resolve().name}: a {len(classes)}-class tile classifier (pcam)", "",
             "**Intended use: research and teaching, not diagnosis.** It has not been "
             "validated on patients; its answers are about tiles like those it learnt from.", "",
             "## Input and output", "",
             f"- Input `images`: uint8 RGB tiles, shape (N, {record['tile_size']}, "
             f"{record['tile_size']}, 3), 0-255"
             + (f", at {record['mpp']} µm per pixel" if record.get("mpp") else "") + ".",
             f"- Output `probabilities`: float32 (N, {len(classes)}), columns "
             + ", ".join(f"`{c}`" for c in classes) + "; rows sum to 1.",
             f"- Inside: {len(export['folds'])} fold model(s) x {len(export['tta_views'])} "
             "dihedral view(s), each model's probabilities at the run's temperature, then "
             "their mean." + (f" Two classes: `{classes[1]}` when its probability is at "
                               f"least {record['threshold']:.3f} (chosen on out-of-fold "
                               "predictions)." if len(classes) == 2 else ""), "",
             "## Data", "",
             f"- Classes: {', '.join(classes)}"
             + (f" (train tiles: {', '.join(f'{c} {n:,}' for c, n in counts.items())})"
                if counts else "") + ".",
             f"- Source: {config.data.data_dir} ({config.data.source}).", "",
             "## Recipe", "",
             f"- Backbone {config.model.backbone} (weights: {config.model.weights}), "
             f"image size {config.model.image_size}, {config.folds.folds}-fold "
             f"cross-validation, seed {config.folds.seed}.",
             f"- {config.train.epochs_frozen} frozen + {config.train.epochs_finetune} "
             f"fine-tuning epochs, batch {config.inputs.batch_size}.", ""]
    if cv:
        oof = cv.get("oof", {})
        lines += ["## Out-of-fold performance", "",
                  f"- AUC per fold: mean {cv.get('auc_mean', float('nan')):.4f} ± "
                  f"{cv.get('auc_std', float('nan')):.4f}; pooled {oof.get('auc', float('nan')):.4f}"
                  f" over {oof.get('n', 0):,} tiles."]
        cal = cv.get("calibration")
        if cal:
            b, a = cal["before"], cal["after"]
            lines += [f"- Calibration: temperature {cal['temperature']:.3f}; ECE "
                      f"{b['ece']:.4f} -> {a['ece']:.4f}, Brier {b['brier']:.4f} -> "
                      f"{a['brier']:.4f}, log-loss {b['log_loss']:.4f} -> {a['log_loss']:.4f}."]
        lines.append("")
    lines += ["## Made by", "",
              f"pcam {record['export']['pcam_version']} (`scripts/export.py --format "
              f"{export['format']}`), from run `{export['run']}`.", ""]
    return "\n".join(lines)
