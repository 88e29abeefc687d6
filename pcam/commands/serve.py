"""A run's model as a REST API: FastAPI on uvicorn, concurrent requests batched.

    pcam-serve --run runs/NAME                       # http://127.0.0.1:8000/docs
    pcam-serve --run runs/NAME --tta 8 --port 9000
    pcam-serve --model runs/NAME/fold_0/best.keras --host 0.0.0.0

POST /predict takes image files (multipart) or one image as the body and
answers, per image, its class probabilities (calibrated, as predict.py
gives them), the predicted class at the run's threshold, its tiles and the
share of them per class; POST /heatmap maps an image larger than a tile;
GET /health, GET /model; /docs tries it in a browser. Needs the serve extra:
pip install 'pcam[serve]'.
"""

from pcam.commands.cli import add_settings, command, new_parser, settings_from_args
from pcam.commands.predict import parse_folds
from pcam.settings import ServeSettings


@command
def main(argv=None):
    parser = new_parser("pcam-serve", __doc__)
    add_settings(parser, ServeSettings, "server", skip=("folds",))
    parser.add_argument("--folds", type=parse_folds, default=ServeSettings().folds,
                        help="folds in the ensemble: all (every finished fold, the default) or "
                             "numbers such as 0,2")
    args = parser.parse_args(argv)
    settings = settings_from_args(ServeSettings, args)

    from pcam.serve.run import serve  # after parsing: --help answers without TensorFlow

    serve(settings)
