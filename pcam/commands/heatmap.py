"""Heat maps over images larger than a tile: where in each image a run finds each class.

    python scripts/heatmap.py --run runs/NAME slide_region.png more.tif
    python scripts/heatmap.py --run latest --images big_images/
    python scripts/heatmap.py --run runs/NAME big.png --stride 16 --tta 8 --out maps/

Each image is cut into overlapping tiles of the run's size (every --stride
pixels, default a third of a tile), predicted in batches, and the answers
averaged per pixel. Two classes: the probability of the positive class over
the image; K classes: the most likely class per region, with a legend. Per
image, OUT/NAME-heatmap.png (image | map) and OUT/NAME-heatmap.csv (one row
per window: y, x, predicted, one probability per class).
"""

from pcam.commands.cli import add_settings, command, new_parser, settings_from_args
from pcam.commands.predict import parse_folds
from pcam.settings import HeatmapSettings


@command
def main(argv=None):
    parser = new_parser("heatmap.py", __doc__)
    add_settings(parser, HeatmapSettings, "heat map", skip=("folds", "images"))
    # Files and folders, named after --images as predict.py and explain.py take
    # them, or listed alone as before.
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="image files or folders of images larger than the run's tile")
    parser.add_argument("--images", nargs="+", default=[], metavar="PATH",
                        help="the same, as predict.py and explain.py take them")
    parser.add_argument("--folds", type=parse_folds, default=HeatmapSettings().folds,
                        help="folds to ensemble: all (every finished fold, the default) or "
                             "numbers such as 0,2")
    args = parser.parse_args(argv)
    settings = settings_from_args(HeatmapSettings, args,
                                  images=tuple(args.paths) + tuple(args.images))

    from pcam.explain.heatmap import map_images  # after parsing: --help answers without TensorFlow

    map_images(settings)
