"""Evaluate a run (or a scored submission) and write a report a person can read.

    python scripts/evaluate.py --run runs/NAME                        # out-of-fold report
    python scripts/evaluate.py --run runs/NAME --target-sensitivity 0.95
    python scripts/evaluate.py --submission submissions/NAME.csv --answers answers.csv

From the out-of-fold predictions, per fold and pooled: ROC AUC with a 95%
bootstrap interval, and accuracy, precision, sensitivity, specificity and F1
at one threshold chosen on the pooled OOF predictions (Youden's J, or the
highest threshold reaching --target-sensitivity). Figures: confusion matrix,
ROC and precision-recall curves, calibration, training curves per fold, and
galleries of the most confident false positives and negatives.

Writes RUN/report/index.html (opens offline, from the file system), its PNGs
and metrics.json. Training writes this report by itself when a run finishes.
"""

from pcam.commands.cli import add_settings, command, new_parser, settings_from_args
from pcam.settings import EvaluateSettings


@command
def main(argv=None):
    parser = new_parser("evaluate.py", __doc__)
    add_settings(parser, EvaluateSettings, "evaluation")
    args = parser.parse_args(argv)

    from pcam.report.evaluate import evaluate  # after parsing: --help answers without TensorFlow

    evaluate(settings_from_args(EvaluateSettings, args))
