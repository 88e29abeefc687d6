"""What the CPU recipe reaches on class-folder datasets, on images each model never saw.

    python benchmarks/folders_quality.py [--work DIR] [--only NAME] [--pretrained FILE | --pretrain]
    python benchmarks/folders_quality.py --hold-out 0.2 [...]   # also score the fold ensemble on unseen images

Trains, through ``scripts/train.py`` like a user, 5-fold cross-validation of
the CPU recipe below on ../shared/data/oral-oscc (binary) and
../shared/data/ebhi-6class (6 imbalanced classes), and scores the pooled
out-of-fold predictions: every image is predicted by the one fold model
that did not train on it. The runs stay at ``DIR/runs/oral-oscc`` and
``DIR/runs/ebhi-6class`` so that others can score them on images we have not
seen (``scripts/predict.py --run DIR/runs/NAME --answers THEIR_FOLDERS/``).

The CPU recipe (``--recipe cpu``, what ``scripts/train.py --data-dir D`` picks
on a machine without a GPU; pcam.recipes), transfer within histology: there
are no ImageNet weights here and none are needed. Each fold starts from the
``cpu-cnn`` backbone trained on 18,000 real PCam tiles that ships in the
package (``--weights pcam``; tools/make_pcam_backbone.py made it, with
real_pcam.py's CPU recipe; ``--pretrain`` trains one here instead, at
``WORK/runs/pcam-cpu``, as the figures below were made) with a new head for
the dataset's classes, at tiles of at most 128 px (images resized at ingest;
the convolutions do not care that PCam's tiles were 96 px): one phase of 60
epochs, everything trainable, peak learning rate 1e-3 with cosine decay and
no early stopping (the best epoch is kept), batch 16, the 8 dihedral views,
balanced class weights, no colour jitter; out-of-fold predictions averaged
over the 8 views. Floors (issue 12): a logistic regression on colour
statistics and a plain 4-block CNN at 96 px, 20 epochs, no colour
augmentation, as measured by the maintainers.

Measured (this recipe, all three targets met; 2-core CPU, quiet but for
the pretraining's first 18 epochs, which shared it with the test suite):

    pretraining on PCam  fold-0 validation AUC 0.9689            34.2 min, once (26.0 quiet)
    oral-oscc     AUC 0.9657 (0.954-0.976)          target 0.96   19.7 min
    ebhi-6class   balanced accuracy 0.8508          target 0.85   35.5 min
                  macro AUC 0.9828 (0.979-0.986)    target 0.97

The balanced accuracy clears its target by 0.001 and its folds spread from
0.786 to 0.882, so a fresh draw of images may well land below 0.85. The
weakest sensitivities: Normal 0.79 (61 images) and High-grade_IN 0.80
(149), against 0.85-0.94 for the other four.
Counted with the one-off pretraining each dataset's run exceeds 45 minutes
(quiet: 46 and 62); counted as a download of weights would be, both fit.

Others scoring these runs on new images score the fold ensemble, not one
fold's model. ``--hold-out 0.2`` measures that: a seeded 20% of each class
held out, the recipe trained on the other 80% (at ``WORK/held-out/``), and
its 5 fold models x 8 views predicting the held-out images
(``scripts/predict.py --answers``):

    oral-oscc     OOF (80%) AUC 0.950            held out, 190 images: AUC 0.974 (0.955-0.990)
    ebhi-6class   OOF (80%) balanced acc. 0.836  held out, 356 images: 0.918
                  OOF (80%) macro AUC 0.981                            0.993 (0.989-0.996)

With a fifth less data the OOF figures fall below the targets; the ensemble
on unseen images clears them by 0.014, 0.068 and 0.023. The held-out sets
are small (ebhi: 12 Normal and 9 Serrated_adenoma images), and neither
split knows patients (these copies carry no patient ids): one patient's
images may sit on both sides, as they may between folds.

Ablation on oral-oscc, the same 5 folds (validation AUC of folds 0-4; cpu-cnn,
128 px, no colour jitter throughout):

    random init, batch 32, 30 epochs, lr 2e-3   pooled OOF 0.897 (0.876-0.916)
    random init, batch 16, 60 epochs, lr 2e-3   folds 0.921 0.934 0.892 0.914 0.955 (mean 0.923)
    PCam init,   batch 16, 30 epochs, lr 1e-3   fold 0 0.951
    PCam init,   batch 16, 60 epochs, lr 1e-3   folds 0.951 0.959 0.968 0.970 0.982 (mean 0.966),
                                                pooled OOF 0.966 (this recipe)

From random weights the first recipe underfit (training AUC 0.88 at epoch
19 of 30: 759 images at batch 32 make 23 steps an epoch); 4x the steps
gained about 0.03, and starting from PCam's backbone 0.04 more, on every fold.
On ebhi-6class the random-init recipe (batch 32, 30 epochs) reached balanced
accuracy 0.774 and macro AUC 0.955.

Earlier, on oral-oscc fold 0 only (simple-cnn, random init, early
stopping): 96 px + colour and stain jitter 0.817 (its 5-fold pooled OOF:
0.834); 96 px, no colour jitter 0.886; 96 px, 60 epochs 0.886; 128 px
throughout 0.910. Colour jitter, which helps PCam on slides it never saw,
hurts here, where every fold holds images like the training ones.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, kaggle_layout, table
from real_pcam import CPU_RECIPE

DATA = REPO.parent / "shared" / "data"
PRETRAIN_EPOCHS = 30  # real_pcam.py's recipe: AUC 0.942 on PCam's held-out slides
TARGETS = {  # metric: (target, colour-statistics floor, plain-CNN floor)
    "oral-oscc": {"auc": (0.96, 0.77, 0.92)},
    "ebhi-6class": {"balanced_accuracy": (0.85, 0.65, 0.80), "auc": (0.97, 0.88, 0.96)},
}


def recipe_text() -> str:
    """The CPU recipe's options for class folders, as pcam.recipes sets them."""
    from pcam.recipes import CPU_FOLDERS

    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in CPU_FOLDERS.items())


def pretrain(work: Path) -> tuple[Path, float]:
    """Train (or resume, or find finished) real_pcam.py's CPU recipe on the
    20,000 real PCam train tiles; its fold-0 model file and wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"),
                    "--data-dir", str(kaggle_layout(work)), "--runs-dir", str(work / "runs"),
                    "--run", "pcam-cpu", *CPU_RECIPE,
                    "--epochs-finetune", str(PRETRAIN_EPOCHS)], check=True)
    return work / "runs" / "pcam-cpu" / "fold_0" / "best.keras", time.perf_counter() - start


def train(name: str, data: Path, work: Path, pretrained: Path | None) -> tuple[dict, float]:
    """Train (or resume) the run of ``name`` on the class folders ``data`` as a user
    does, ``scripts/train.py --data-dir DATA`` (the CPU recipe, forced here so that
    a machine with a GPU measures it too), from the shipped PCam backbone or
    ``pretrained``; its pooled OOF metrics and wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"),
                    "--data-dir", str(data), "--store-dir", str(work / "stores" / name),
                    "--runs-dir", str(work / "runs"), "--run", name, "--recipe", "cpu",
                    *(["--weights", str(pretrained)] if pretrained else [])], check=True)
    seconds = time.perf_counter() - start
    report = json.loads((work / "runs" / name / "report" / "metrics.json").read_text())
    # A run resumed over several sessions: this process's wall time is only the
    # last part; its epochs' own times (every fold, both phases) are the whole.
    return report["groups"]["pooled"], max(seconds, epoch_seconds(work / "runs" / name))


def epoch_seconds(run_dir: Path) -> float:
    """The seconds of every epoch a run trained, from its folds' histories."""
    from pcam.runs import read_history

    return float(sum(read_history(fold)["epoch_seconds"].sum()
                     for fold in sorted(run_dir.glob("fold_*")) if fold.is_dir()
                     and not read_history(fold).empty))


def split_folders(source: Path, dest: Path, fraction: float, seed: int = 12) -> Path:
    """``source``'s class folders split into ``dest/train`` and ``dest/test``:
    a seeded ``fraction`` of each class's images (sorted, then shuffled) held
    out. Hard links where the file system allows, else copies; made once."""
    if dest.is_dir():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    rng = random.Random(seed)
    for folder in sorted(d for d in source.iterdir() if d.is_dir() and d.name[0] != "."):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.name[0] != ".")
        rng.shuffle(files)
        held = round(len(files) * fraction)
        for i, file in enumerate(files):
            target = partial / ("test" if i < held else "train") / folder.name / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(file, target)
            except OSError:
                shutil.copy2(file, target)
    partial.rename(dest)
    return dest


def score_held_out(name: str, work: Path, test: Path) -> dict:
    """The fold ensemble of run ``name`` (TTA x8) on the held-out class folders ``test``."""
    out = work / "predictions" / f"{name}.csv"
    subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"),
                    "--run", str(work / "runs" / name), "--answers", str(test),
                    "--out", str(out)], check=True)
    report = out.with_name(out.stem + "-report") / "metrics.json"
    return json.loads(report.read_text())["groups"]["test"]


def _value(group: dict, metric: str) -> str:
    """A metric of a report's group with its bootstrap interval when it has one (AUC)."""
    ci = f" ({group['auc_low']:.3f}-{group['auc_high']:.3f})" if metric == "auc" else ""
    return f"{group[metric]:.4f}{ci}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pcam-bench-quality"))
    parser.add_argument("--only", choices=sorted(TARGETS))
    parser.add_argument("--pretrained", type=Path,
                        help="a cpu-cnn model file to start from (e.g. real_pcam.py's "
                             "runs/real-pcam-cpu/fold_0/best.keras) instead of the PCam "
                             "backbone shipped in the package")
    parser.add_argument("--pretrain", action="store_true",
                        help="train the PCam model first, at WORK/runs/pcam-cpu (26 min on "
                             "a quiet 2-core CPU), and start from it, as before the "
                             "backbone shipped")
    parser.add_argument("--hold-out", type=float, default=0.0, metavar="FRACTION",
                        help="also hold out this fraction of each class (seeded), train on "
                             "the rest at WORK/held-out/ and score the runs' fold ensemble "
                             "on the held-out images, as others will score the full runs")
    args = parser.parse_args()
    if not 0 <= args.hold_out < 1:
        parser.error(f"--hold-out {args.hold_out}: give a fraction in [0, 1), e.g. 0.2")
    names = [args.only] if args.only else list(TARGETS)
    for name in names:
        if not (DATA / name).is_dir():
            sys.exit(f"benchmark needs {DATA / name} (beside the repository for tests and "
                     "benchmarks only); not found")
    pretrained, pretrain_s = ((args.pretrained, 0.0) if not args.pretrain
                              else pretrain(args.work))
    work = args.work / "held-out" if args.hold_out else args.work
    rows = []
    for name in names:
        folders, held = DATA / name, None
        if args.hold_out:
            split = split_folders(DATA / name, work / "folders" / name, args.hold_out)
            folders = split / "train"
        pooled, seconds = train(name, folders, work, pretrained)
        if args.hold_out:
            held = score_held_out(name, work, split / "test")
        for metric, (target, colour, plain) in TARGETS[name].items():
            rows.append((name, "macro AUC" if metric == "auc" and name != "oral-oscc"
                         else metric.replace("_", " "), _value(pooled, metric),
                         *([_value(held, metric)] if held else []), f">= {target}",
                         "met" if (held or pooled)[metric] >= target else "NOT met",
                         colour, plain, f"{seconds / 60:.1f}"))
    what = (f"trained on {1 - args.hold_out:.0%} of each class, 5-fold; the fold ensemble on the "
            f"held-out {args.hold_out:.0%}" if args.hold_out else "5-fold pooled out-of-fold")
    start = f" --weights {pretrained}" if pretrained else " (the shipped PCam backbone)"
    table(f"{what}, CPU recipe: {recipe_text()}{start}", rows,
          ("dataset", "metric", "pcam OOF (95% CI)",
           *(["held-out ensemble"] if args.hold_out else []), "target", "", "colour stats",
           "plain CNN", "minutes"))
    print("\npretraining on PCam (once, shared by both datasets): "
          + (f"{pretrain_s / 60:.1f} min" if args.pretrain else "none (shipped)"
             if not pretrained else f"given ({pretrained})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
