"""A run's model out of pcam: one artifact, uint8 tiles in, calibrated probabilities out.

    python scripts/export.py --run runs/NAME                      # SavedModel, TTA x8
    python scripts/export.py --run runs/NAME --format tflite --tta 1 --out phone/

The fold ensemble, the test-time views, the centre crop and the run's
temperature are inside the artifact: a user calls it on RGB uint8 tiles of
the run's size (N, S, S, 3) and gets (N, K) class probabilities, the numbers
scripts/predict.py gives for the same run, folds and TTA, with neither pcam
nor Keras installed (TensorFlow for a SavedModel, a TFLite runtime for
tflite). Beside it: model.json (classes, tile size, microns per pixel,
threshold, temperature, the input and output contract) and MODEL_CARD.md.
"""

from pcam.commands.cli import add_settings, command, new_parser, settings_from_args
from pcam.commands.predict import parse_folds
from pcam.settings import ExportSettings


@command
def main(argv=None):
    parser = new_parser("export.py", __doc__)
    add_settings(parser, ExportSettings, "export", skip=("folds",))
    parser.add_argument("--folds", type=parse_folds, default=ExportSettings().folds,
                        help="folds in the ensemble: all (every finished fold, the default) or "
                             "numbers such as 0,2")
    args = parser.parse_args(argv)
    settings = settings_from_args(ExportSettings, args)

    from pcam.export.package import export_run  # after parsing: --help answers without TensorFlow

    export_run(settings)
