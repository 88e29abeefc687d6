"""Compare four backbones on oral-oscc with one command, within an hour on this machine.

    python benchmarks/compare.py [--work DIR] [--backbones A,B,...] [--epochs N]

Runs ``scripts/compare.py`` as a user would, on ../shared/data/oral-oscc
(949 JPEGs, Normal against OSCC) at 96 px tiles, ``--weights none`` (no
ImageNet weights reach this machine, so every backbone trains from scratch:
one phase of EPOCHS epochs at peak learning rate 2e-3 with cosine decay,
batch 32), fold 0 of 5 (``--folds 5 --fold 0``: 759 training and 190
validation images, the same for every backbone). Default backbones:
simple-cnn, resnet50v2, densenet121, coatnet-0 (the last one only where
pcam registers it). Prints the comparison's table (the pooled out-of-fold
figures of fold 0, the paired AUC differences from the best) and the total
wall time against the 60-minute budget. The comparison stays at
``DIR/runs/oral-oscc-backbones`` (its report: ``report/index.html``); run
again to resume.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, table

DATA = REPO.parent / "shared" / "data" / "oral-oscc"
BUDGET_MINUTES = 60
BACKBONES = "simple-cnn,resnet50v2,densenet121,coatnet-0"
NAME = "oral-oscc-backbones"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pcam-bench-compare"))
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per backbone")
    parser.add_argument("--max-tiles", type=int, default=0,
                        help="a stratified subset of the images (0: all; for a quick check)")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"benchmark needs {DATA} (beside the repository for tests and benchmarks "
                 "only); not found")
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"),
                    "--data-dir", str(DATA), "--store-dir", str(args.work / "store"),
                    "--runs-dir", str(args.work / "runs"), "--name", NAME,
                    "--backbones", args.backbones, "--positive", "OSCC", "--tile-size", "96",
                    "--weights", "none", "--folds", "5", "--fold", "0",
                    "--epochs-frozen", "0", "--epochs-finetune", str(args.epochs),
                    "--lr-finetune", "2e-3", "--batch-size", "32",
                    "--max-tiles", str(args.max_tiles)], check=True)
    minutes = (time.perf_counter() - start) / 60
    record = json.loads((args.work / "runs" / NAME / "report" / "comparison.json").read_text())
    rows = []
    for r in record["rows"]:
        delta = ("best" if r["distinguishable"] == "best" else
                 f"{r['delta_auc']:+.3f} ({r['delta_low']:+.3f} to {r['delta_high']:+.3f})"
                 + (", n.d." if r["distinguishable"] == "not distinguishable" else ""))
        rows.append((r["backbone"], f"{r['auc']:.3f} ({r['auc_low']:.3f}-{r['auc_high']:.3f})",
                     f"{r['balanced_accuracy']:.3f}", f"{r['sensitivity']:.3f}",
                     f"{r['specificity']:.3f}", f"{r['f1']:.3f}", f"{r['parameters']:,}",
                     f"{r['seconds_per_epoch']:.0f}", f"{r['tiles_per_second']:.0f}", delta))
    table(f"oral-oscc, fold 0 of 5 ({rows and record['rows'][0]['tiles']} validation images), "
          f"96 px, from scratch, {args.epochs} epoch(s)",
          rows, ("backbone", "AUC (95% CI)", "balanced acc.", "sensitivity OSCC", "specificity",
                 "F1", "parameters", "s/epoch", "tiles/s", "ΔAUC vs best (paired 95% CI)"))
    for line in record["conclusions"]:
        print(f"- {line}")
    print(f"\nwall time {minutes:.1f} min (budget {BUDGET_MINUTES} min: "
          f"{'met' if minutes <= BUDGET_MINUTES else 'NOT met'}), training, reports and "
          "speed measurement included (a resumed run counts only this session's work)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
