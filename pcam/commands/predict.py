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
from pathlib import Path

from pcam.commands.cli import (add_config, add_settings, command, config_defaults, new_parser,
                               print_config, settings_from_args)
from pcam.errors import PcamError
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
    add_config(parser, PredictSettings)
    # --run extends a list: the file's runs are used only when none is given.
    runs = tuple(config_defaults(parser, argv, PredictSettings).get("run", ()))
    parser.set_defaults(run=[])
    args = parser.parse_args(argv)
    if not (args.run or runs):
        parser.error("--run is required: the run folder to predict with, such as runs/NAME")
    settings = settings_from_args(PredictSettings, args, run=tuple(args.run) or runs,
                                  images=tuple(args.images))
    if args.print_config:
        return print_config(settings)

    predict(settings)


def predict(settings: PredictSettings) -> dict:
    """Predict with one or more runs' folds x TTA views: loose images
    (``settings.images``, or a labelled class-folder ``answers`` folder) into
    a CSV of class probabilities; class-folder runs' test/ folder likewise;
    Kaggle runs' test set into a checked submission (``predict_submission``).

    Several runs are one ensemble (``combine_runs``): their classes must be
    the same, in the same order; for their test set, their data must be of
    the same kind and hold the same test tiles.

    Labelled images (``--answers``, a labelled test/ folder) are scored, and
    their report written beside the CSV (``pcam.report.evaluate.report_labelled``).

    Returns:
        The record written beside the output CSV.
    """
    # Here, after parsing: --help answers without TensorFlow.
    from pcam.kaggle.submission import predict_submission
    from pcam.predict.ensemble import load_members
    from pcam.predict.images import predict_folder_test, predict_images

    members = load_members(settings)
    answers_dir = bool(settings.answers) and Path(settings.answers).is_dir()
    if settings.images or answers_dir:
        return _reported(predict_images(settings))
    for m in members[1:]:
        if m.config.data.source != members[0].config.data.source:
            raise PcamError(f"runs {members[0].run_dir} ({members[0].config.data.source}) and "
                            f"{m.run_dir} ({m.config.data.source}) have different kinds of "
                            "test set; ensemble them on images with --images PATH...")
    if members[0].config.data.source == "folders":
        return _reported(predict_folder_test(settings))
    return predict_submission(settings)


def _reported(record: dict) -> dict:
    if record.get("labelled"):
        from pcam.report.evaluate import report_labelled

        record["report"] = report_labelled(record)
    return record
