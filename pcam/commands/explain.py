"""Show where a model finds its evidence in an image: Grad-CAM pictures of tiles by id or file.

    python scripts/explain.py --run runs/NAME --ids ID [ID ...]          # tiles of the stores
    python scripts/explain.py --run runs/NAME --fold 2 --images a.tif b.png
    python scripts/explain.py --model runs/NAME/fold_0/best.keras --images tile.tif
    python scripts/explain.py --run runs/NAME --ids ID --target predicted

For each tile, one PNG: the tile | its Grad-CAM heat map | the map over the
tile, titled with the predicted class and its probability (and the label,
for train tiles). Grad-CAM weighs the last convolution's feature map (the
backbone registry's last_conv_layer) by the gradient of the target class's
logit (--target; by default the positive class of a two-class model, the
predicted class of a K-class one); the map is
scaled to each tile's strongest evidence. Also explanations.csv (probability
and the heat map's peak per tile) and index.html with every picture.
Written to RUN/explain/fold_K/ (or explain/ beside --model; see --out).
"""

from pcam.commands.cli import add_settings, command, new_parser, settings_from_args
from pcam.settings import ExplainSettings


@command
def main(argv=None):
    parser = new_parser("explain.py", __doc__)
    add_settings(parser, ExplainSettings, "explanation", skip=("ids", "images"))
    tiles = parser.add_argument_group("tiles", "what to explain (one or both)")
    tiles.add_argument("--ids", nargs="+", default=(), metavar="ID",
                       help="tile ids, looked up in the tile stores (train, then test)")
    tiles.add_argument("--images", nargs="+", default=(), metavar="PATH",
                       help="tile image files: TIFF, PNG or JPEG, the size the model takes")
    args = parser.parse_args(argv)
    settings = settings_from_args(ExplainSettings, args, ids=tuple(args.ids),
                                  images=tuple(args.images))

    from pcam.explain.explain import explain  # after parsing: --help answers without TensorFlow

    explain(settings)
