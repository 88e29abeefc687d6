"""Calibration before and after the temperature, on runs' pooled out-of-fold predictions.

    python benchmarks/calibration.py RUN [RUN ...]

For each run folder (its finished folds' oof.csv): the temperature fitted as
training fits it when a run's last fold finishes (``pcam.calibration``), and
ECE (15 bins), Brier score and log-loss before and after, with the AUC (two
classes: unchanged by construction; K classes: macro one-vs-rest). The
baseline is the run's own probabilities. A run trained by an older pcam has
no temperature in its model.json; this shows what one would do for it.
Out-of-fold predictions are what the temperature is fitted on, so "after" is
in-sample for T (one parameter: a few hundred tiles pin it down); a held-out
test set is the out-of-sample check (scripts/predict.py --answers).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()

    from pcam.calibration import apply_temperature, calibration_metrics, fit_temperature
    from pcam.metrics import task_metrics
    from pcam.runs import finished_folds, load_run, probabilities, read_oof, run_classes

    rows = []
    for run in args.runs:
        run_dir, config = load_run(run)
        classes = run_classes(config)
        done = finished_folds(run_dir, config.folds.folds)
        oof = read_oof(run_dir, done)
        probs = probabilities(oof, classes)
        temperature = fit_temperature(oof["label"], probs)
        fixed = apply_temperature(probs, temperature)
        before = calibration_metrics(oof["label"], probs)
        after = calibration_metrics(oof["label"], fixed)
        aucs = [task_metrics(oof["label"], p, classes)["auc"] for p in (probs, fixed)]
        rows.append((run_dir.name, f"{len(classes)}", f"{len(oof):,} ({len(done)} folds)",
                     f"{temperature:.3f}",
                     *(f"{before[k]:.4f} -> {after[k]:.4f}" for k in ("ece", "brier", "log_loss")),
                     f"{aucs[0]:.4f} -> {aucs[1]:.4f}"))
    table("Temperature scaling on pooled out-of-fold predictions", rows,
          ("run", "classes", "tiles", "T", "ECE", "Brier", "log-loss", "AUC"))


if __name__ == "__main__":
    main()
