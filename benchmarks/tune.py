"""What the pruner saves, measured: one study with it and one without, same seed and space.

    python benchmarks/tune.py --work DIR [--trials 24] [--epochs 20] [--data ../shared/data/oral-oscc]

Runs ``scripts/tune.py`` as a user does, twice, on the same class folders
(oral-oscc by default, at 96 px, the compact CNN from scratch, fold 0 of 5,
pcam's default histology space, sampler seed 0): ``pruned`` with the median
pruner and ``--confirm 3`` (the best trial's settings and the defaults on
folds 1-3, which no trial saw), ``unpruned`` with ``--pruner none``. Then
prints, from each study's ``report/trials.csv``, the epochs trained in all,
the best value and the wall time, the pruned study's share of the unpruned
one's epochs (target <= 60%), the difference of their best values (target
within 0.01) and the confirmation (best against default, mean ± sd over the
3 folds). Both studies resume: the same command again finishes them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from common import REPO, table

DATA = REPO.parent / "shared" / "data" / "oral-oscc"


def study(name: str, work: Path, data: Path, trials: int, epochs: int, *extra) -> float:
    """Run (or finish) one study; its wall seconds in this process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "scripts" / "tune.py"), "--data-dir", str(data),
                    "--study", name, "--trials", str(trials), "--runs-dir", str(work / "runs"),
                    "--store-dir", str(work / "stores"), "--recipe", "cpu",
                    "--max-tile-size", "96", "--backbone", "simple-cnn", "--weights", "none",
                    "--epochs-frozen", "0", "--epochs-finetune", str(epochs),
                    "--patience", str(epochs), "--folds", "5", "--sampler-seed", "0", *extra],
                   check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--confirm", type=int, default=3)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"benchmark needs class folders at {args.data} (oral-oscc sits beside the "
                 "repository for tests and benchmarks only); not found")
    seconds = {
        "pruned": study("pruned", args.work, args.data, args.trials, args.epochs,
                        "--confirm", str(args.confirm)),
        "unpruned": study("unpruned", args.work, args.data, args.trials, args.epochs,
                          "--pruner", "none"),
    }
    found = {name: pd.read_csv(args.work / "runs" / name / "report" / "trials.csv")
             for name in seconds}
    epochs = {name: int(t["epochs"].sum()) for name, t in found.items()}
    best = {name: float(t.loc[t["state"] == "complete", "value"].max()) for name, t in found.items()}
    rows = [(name, len(t), int((t["state"] == "pruned").sum()), epochs[name], f"{best[name]:.4f}",
             f"{seconds[name] / 60:.1f}") for name, t in found.items()]
    table(f"{args.trials} trials, fold 0, {args.epochs} epochs at most, oral-oscc 96 px, "
          "simple-cnn from scratch", rows,
          ("study", "trials", "pruned", "epochs", "best", "minutes (this process)"))
    share = epochs["pruned"] / max(1, epochs["unpruned"])
    gap = best["unpruned"] - best["pruned"]
    print(f"\npruned/unpruned epochs: {share:.2f} (target <= 0.60: "
          f"{'met' if share <= 0.6 else 'NOT met'}); best values differ by {gap:+.4f} "
          f"(target within 0.01: {'met' if abs(gap) <= 0.01 else 'NOT met'})")
    confirmed = args.work / "runs" / "pruned" / "confirm.json"
    if confirmed.is_file():
        c = json.loads(confirmed.read_text())
        b, d = pd.Series(c["best"]), pd.Series(c["default"])
        print(f"confirmed on folds {c['folds']}: best {b.mean():.4f} ± {b.std():.4f}, default "
              f"{d.mean():.4f} ± {d.std():.4f}: {c['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
