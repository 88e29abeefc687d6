#!/usr/bin/env python3
"""Make the PCam-trained cpu-cnn backbone shipped in the package (maintainers only).

    python tools/make_pcam_backbone.py [--work /tmp/pcam-backbone] [--run DIR]

Trains the CPU recipe of benchmarks/real_pcam.py through scripts/train.py on
the 20,000 real PCam train tiles of ../shared/data/pcam-real (fold 0 of 10:
18,000 tiles learn, 2,000 choose the best epoch; cpu-cnn from random weights,
30 epochs of cosine decay from 2e-3, batch 128, flips, rotations, colour and
stain jitter), or takes a finished run of that recipe (``--run``). Then:

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
    parser.add_argument("--run", type=Path, help="a finished run of the recipe to take "
                                                  "instead of training one")
    args = parser.parse_args()
    if not PCAM_REAL.is_dir():
        print(f"{PCAM_REAL} not found (the real PCam tiles beside the repository)",
              file=sys.stderr)
        return 1
    layout = args.work / "layout"
    if not (layout / "sample_submission.csv").is_file():
        subprocess.run([sys.executable, str(PCAM_REAL / "make_kaggle_layout.py"), str(layout)],
                       check=True)
    run = args.run
    command = f"a finished run of this recipe, {args.run} (e.g. by benchmarks/real_pcam.py)"
    if run is None:
        run = args.work / "runs" / "pcam-cpu"
        train = [sys.executable, str(REPO / "scripts" / "train.py"), "--data-dir", str(layout),
                 "--store-dir", str(args.work / "store"), "--runs-dir", str(run.parent),
                 "--run", run.name, *RECIPE]
        command = " ".join(["python scripts/train.py", *train[2:]])
        subprocess.run(train, check=True)

    import pandas as pd

    from pcam import __version__
    from pcam.inference import predict
    from pcam.io import atomic_write_text, temporary_name
    from pcam.metrics import auc
    from pcam.models import SHIPPED
    from pcam.runs import load_fold_model
    from pcam.settings import PredictSettings

    answers = str(layout) + ".answers.csv"
    scored = {tta: predict(PredictSettings(run=str(run), tta=tta, answers=answers,
                                           out=str(args.work / f"valid-tta{tta}.csv")))
              ["answers"]["auc"] for tta in (1, 8)}
    oof = pd.read_csv(run / "fold_0" / "oof.csv")
    out = SHIPPED["cpu-cnn"]
    out.parent.mkdir(exist_ok=True)
    backbone = load_fold_model(run / "fold_0" / "best.keras").get_layer("backbone")
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
        "auc_own_slides_fold0_validation": round(float(auc(oof["label"], oof["prob"])), 4),
        "auc_other_slides_3000_valid_tiles": {"tta1": round(scored[1], 4),
                                              "tta8": round(scored[8], 4)},
        "licence": "PCam is CC0 1.0; these weights are shipped under pcam's MIT licence",
        "pcam_version": __version__,
        "made": datetime.date.today().isoformat(),
    }
    atomic_write_text(out.with_name("cpu-cnn-pcam.json"), json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
