"""Train a k-fold, two-phase classifier on the competition's tiles or on class folders.

    python scripts/train.py --folds 5                 # ResNet50, ImageNet weights, all folds
    python scripts/train.py --fold 2 --run NAME       # one fold of a run (spread folds over machines)
    python scripts/train.py --backbone cpu-cnn --weights none --epochs-frozen 0 \
        --epochs-finetune 30 --lr-finetune 2e-3 --batch-size 128 --patience 30   # CPU recipe
    python scripts/train.py --demo          # the main job on the bundled sample of real tiles
    python scripts/train.py --demo tissue   # the same on 8 tissue types in class folders
    python scripts/train.py --data-dir my_folders/ --positive malignant   # DIR/<class>/<image>

Phase 1 trains the head on a frozen backbone; phase 2 fine-tunes the backbone
(all of it, or the top --unfreeze layers) at a lower, decaying learning rate.
Everything goes to RUNS_DIR/RUN: config.json, folds.csv, fold_<k>/best.keras,
histories, out-of-fold predictions, cv.json. Run the same command again to
resume: finished folds are skipped and an unfinished one continues from its
last epoch.
"""
import argparse

from pcam.cli import add_settings, command, settings_from_args
from pcam.settings import RunSettings


@command
def main(argv=None):
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", nargs="?", const="pcam", choices=("pcam", "tissue"),
                        help="the main job on a bundled sample, no account needed (its own "
                             "settings; the other options are ignored): pcam (the default) "
                             "1,500 real PCam tiles, Kaggle layout; tissue: 240 tiles of 8 "
                             "colorectal tissue types (Kather et al. 2016), class folders")
    add_settings(parser, RunSettings, "run")
    args = parser.parse_args(argv)

    # Settings check themselves: nonsense is refused before TensorFlow loads.
    settings = None if args.demo else settings_from_args(RunSettings, args)

    from pcam import demo
    from pcam.training import run_cv  # after parsing: --help answers without TensorFlow

    if args.demo:
        demo.run(args.demo)
    else:
        run_cv(settings)
