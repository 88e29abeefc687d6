"""Check the competition's files and build the tile stores (train and test).

    python scripts/prepare.py [--data-dir D] [--skip-bad]
    python scripts/prepare.py --demo       # the bundled sample of real tiles, into data/pcam-demo

Training and prediction build the stores themselves the first time they need
them; run this to do that step on its own (for example before a long job).
A store that is up to date is reused in well under a second.
"""

from pcam.commands.cli import (add_settings, command, machine_defaults, new_parser,
                               settings_from_args)
from pcam.recipes import RECIPES
from pcam.settings import DataSettings


@command
def main(argv=None):
    parser = new_parser("prepare.py", __doc__)
    parser.add_argument("--demo", action="store_true",
                        help="unpack the bundled sample of real PCam tiles and use it as DATA_DIR")
    parser.add_argument("--recipe", default="auto", choices=RECIPES,
                        help="build the store train.py's recipe will use (the CPU recipe "
                             "caps class-folder images at 128 px): auto, gpu or cpu, as "
                             "train.py chooses it (default: auto)")
    add_settings(parser, DataSettings, "data")
    # The same store train.py will ask for (a Kaggle notebook's mounted
    # competition, the recipe's tile size): else each rebuilt it in turn.
    if not parser.parse_known_args(argv)[0].demo:  # the demo's folder is its own
        machine_defaults(parser, argv)
    args = parser.parse_args(argv)

    from pcam.commands import demo
    from pcam.data.store import prepare  # imported after parsing: --help answers without TensorFlow

    overrides = {"data_dir": str(demo.unpack())} if args.demo else {}
    prepare(settings_from_args(DataSettings, args, **overrides))
