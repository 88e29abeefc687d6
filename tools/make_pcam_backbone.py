#!/usr/bin/env python3
"""Make the PCam-trained cpu-cnn backbone shipped in the package (maintainers only).

    python tools/make_pcam_backbone.py [--work /tmp/pcam-backbone] [--model FILE]

Trains the CPU recipe of benchmarks/real_pcam.py through scripts/train.py on
the 20,000 real PCam train tiles of ../shared/data/pcam-real (fold 0 of 10:
18,000 tiles learn, 2,000 choose the best epoch; cpu-cnn from random weights,
30 epochs of cosine decay from 2e-3, batch 128, flips, rotations, colour and
stain jitter), or takes a model file of that recipe (``--model``). Then:

1. scores the fold model on PCam's 3,000 valid tiles, which come from other
   slides, at 1 and 8 test-time views (scripts/predict.py's code);
2. saves its backbone's weights (the 7 convolution blocks, no head) as
   ``pcam/weights/cpu-cnn-pcam.weights.h5``, written under a temporary name
   and renamed;
3. records beside it ``cpu-cnn-pcam.json``: the command, the data, both AUCs,
   the file's SHA-256, the pcam version, and the licence.

PCam (Veeling et al. 2018) is CC0: the weights derived from it may ship
with the package (MIT). ``--weights pcam`` then starts cpu-cnn from it, and
the CPU recipe for class folders does so by default (pcam.recipes).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PCAM_REAL = REPO.parent / "shared" / "data" / "pcam-real"
RECIPE = ["--backbone", "cpu-cnn", "--weights", "none", "--folds", "10", "--fold", "0",
          "--epochs-frozen", "0", "--epochs-finetune", "30", "--lr-finetune", "2e-3",
          "--batch-size", "128", "--patience", "30", "--no-report"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pcam-backbone"))
    parser.add_argument("--model", type=Path, help="a cpu-cnn model file of this recipe "
                        "(a run's fold_0/best.keras) to take instead of training one")
    args = parser.parse_args()
    if not PCAM_REAL.is_dir():
        print(f"{PCAM_REAL} not found (the real PCam tiles beside the repository)",
              file=sys.stderr)
        return 1
    layout = args.work / "layout"
    if not (layout / "sample_submission.csv").is_file():
        subprocess.run([sys.executable, str(PCAM_REAL / "make_kaggle_layout.py"), str(layout)],
                       check=True)
    model_file = args.model
    command = f"a model file of this recipe, {args.model}"
    if model_file is None:
        run = args.work / "runs" / "pcam-cpu"
        train = [sys.executable, str(REPO / "scripts" / "train.py"), "--data-dir", str(layout),
                 "--store-dir", str(args.work / "store"), "--runs-dir", str(run.parent),
                 "--run", run.name, *RECIPE]
        command = " ".join(["python scripts/train.py", *train[2:]])
        subprocess.run(train, check=True)
        model_file = run / "fold_0" / "best.keras"
    record = ship(model_file, layout, command)
    print(json.dumps(record, indent=2))
    return 0


def ship(model_file: Path, layout: Path, command: str) -> dict:
    """Score ``model_file`` on the valid tiles, write its backbone and the record."""
    import numpy as np
    import pandas as pd
    import tifffile

    from pcam import __version__
    from pcam.io import atomic_write_text, temporary_name
    from pcam.metrics import auc
    from pcam.models.registry import SHIPPED
    from pcam.models.saved import load_fold_model
    from pcam.predict.ensemble import predict_tiles
    from pcam.predict.tta import TTA_VIEWS
    from pcam.runs import read_history

    answers = pd.read_csv(str(layout) + ".answers.csv", dtype={"id": str})
    tiles = np.stack([tifffile.imread(layout / "test" / f"{i}.tif") for i in answers["id"]])
    model = load_fold_model(model_file)
    scored = {tta: float(auc(answers["label"], predict_tiles([(model, None)], tiles,
                                                             TTA_VIEWS[tta])[:, 1]))
              for tta in (1, 8)}
    history = read_history(model_file.parent)
    out = SHIPPED["cpu-cnn"]
    out.parent.mkdir(exist_ok=True)
    backbone = model.get_layer("backbone")
    # A temporary name, then a rename; Keras insists on the extension.
    tmp = temporary_name(out).with_name(temporary_name(out).name + ".weights.h5")
    backbone.save_weights(tmp)
    tmp.replace(out)
    record = {
        "file": out.name, "backbone": "cpu-cnn",
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "parameters": int(sum(w.size for w in backbone.get_weights())),
        "trained_on": "PCam (Veeling et al. 2018): 18,000 of the 20,000 real train tiles of "
                      "../shared/data/pcam-real (fold 0 of 10; 2,000 chose the best epoch), "
                      "96x96 px at about 0.97 um/px",
        "command": command,
        "epochs_trained": int(len(history)),
        "auc_own_slides_best_validation_epoch": round(float(history["val_auc"].max()), 4),
        "auc_other_slides_3000_valid_tiles": {"tta1": round(scored[1], 4),
                                              "tta8": round(scored[8], 4)},
        "licence": "PCam is CC0 1.0; these weights are shipped under pcam's MIT licence",
        "pcam_version": __version__,
        "made": datetime.date.today().isoformat(),
    }
    atomic_write_text(out.with_name("cpu-cnn-pcam.json"), json.dumps(record, indent=2) + "\n")
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")
    return record


if __name__ == "__main__":
    sys.exit(main())
