"""Predict the test set with a run's fold models and write a checked submission.

    python scripts/predict.py --run runs/NAME                   # every finished fold x 8 TTA views
    python scripts/predict.py --run runs/NAME --tta 4 --folds 0,2 --average rank
    python scripts/predict.py --run runs/NAME --answers answers.csv   # also print the local AUC
    python scripts/predict.py --run runs/NAME --images slide_tiles/ x.png   # any images -> CSV
    python scripts/predict.py --run runs/NAME --answers labelled_test/     # class folders -> report
    python scripts/predict.py --run runs/A --run runs/B --average rank   # an ensemble of runs

Each fold's best model predicts every test tile under the chosen dihedral
views (one model call per batch holds all of the batch's views); views are
averaged, then folds, then runs (several --run: each run counts equally,
whatever its number of folds). The submission (id,label in sample_submission.csv's
order) is checked against sample_submission.csv before it is written, and the
resolved settings go beside it: submissions/NAME.csv and submissions/NAME.json.
Submit it with scripts/submit.py, or the kaggle command it prints.
"""
import argparse

from pcam.cli import add_settings, command, new_parser, settings_from_args
from pcam.settings import PredictSettings


def parse_folds(text: str) -> tuple[int, ...]:
    """``all`` -> () (every finished fold); ``0,2`` -> (0, 2)."""
    if text.strip().lower() == "all":
        return ()
    try:
        folds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected 'all' or fold numbers such as 0,2") \
            from None
    if any(k < 0 for k in folds):
        raise argparse.ArgumentTypeError(f"'{text}': fold numbers start at 0")
    return folds


@command
def main(argv=None):
    parser = new_parser("predict.py", __doc__)
    add_settings(parser, PredictSettings, "prediction", skip=("run", "folds", "images"))
    # Repeated (--run A --run B) or listed (--run A B), as --images lists its paths;
    # no commas: a folder name may hold one.
    parser.add_argument("--run", action="extend", nargs="+", default=[], metavar="RUN",
                        help=PredictSettings.__dataclass_fields__["run"].metadata["help"])
    parser.add_argument("--images", nargs="+", default=(), metavar="PATH",
                        help=PredictSettings.__dataclass_fields__["images"].metadata["help"])
    parser.add_argument("--folds", type=parse_folds, default=PredictSettings().folds,
                        metavar="all|0,2",
                        help="folds to ensemble: all (every finished fold, the default) or "
                             "a comma-separated list")
    args = parser.parse_args(argv)
    if not args.run:
        parser.error("--run is required: the run folder to predict with, such as runs/NAME")
    settings = settings_from_args(PredictSettings, args, run=tuple(args.run),
                                  images=tuple(args.images))

    from pcam.inference import predict  # after parsing: --help answers without TensorFlow

    predict(settings)
