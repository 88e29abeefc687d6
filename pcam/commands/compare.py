"""Compare backbones on the same folds: one ordinary run each, one side-by-side report.

    python scripts/compare.py --data-dir D --backbones resnet50v2,densenet121,simple-cnn
    python scripts/compare.py --data-dir D --backbones resnet50v2 --name NAME   # one machine's share
    python scripts/compare.py --name NAME --report     # gather the runs of NAME into its report

Each backbone trains as scripts/train.py would (every train option applies to
all of them) into RUNS_DIR/NAME/<backbone>/, all on the same folds
(RUNS_DIR/NAME/folds.csv); a backbone without ImageNet weights, or any with
--weights none, is trained from scratch (its frozen-phase epochs go to the
second phase). RUNS_DIR/NAME/report/ gets index.html, comparison.csv and
comparison.json: per backbone the pooled out-of-fold AUC with its bootstrap
interval, accuracy, balanced accuracy, sensitivity and specificity (or recall
per class), F1, parameters, training time per epoch and prediction speed;
the paired difference from the best backbone; ROC curves, recall bars and
validation curves. Run the same command again to resume: finished backbones
and folds are skipped.
"""

from pcam.commands.cli import (add_config, add_settings, command, config_defaults, new_parser,
                               print_config, settings_from_args)
from pcam.settings import CompareSettings


@command
def main(argv=None):
    parser = new_parser("compare.py", __doc__)
    # The runs are named after their backbones and each writes its own report;
    # --backbones replaces --backbone.
    add_settings(parser, CompareSettings, "compare", skip=("run", "report", "backbone"))
    parser.add_argument("--report", dest="report_only", action="store_true",
                        help="the same as --report-only")
    add_config(parser, CompareSettings)
    config_defaults(parser, argv, CompareSettings)
    args = parser.parse_args(argv)

    # Settings check themselves: nonsense is refused before TensorFlow loads.
    settings = settings_from_args(CompareSettings, args)
    if args.print_config:
        return print_config(settings)

    # After parsing: --help answers without TensorFlow.
    from pcam.report.compare import compare_report
    from pcam.report.evaluate import report_run
    from pcam.train.compare import named, train_backbones

    settings = named(settings)
    if not settings.report_only:
        for run in train_backbones(settings):  # each run's own report, as train.py writes it
            if settings.training.report:
                report_run(run)
    compare_report(settings.compare_dir, bootstrap=settings.bootstrap,
                   speed_tiles=settings.speed_tiles)
