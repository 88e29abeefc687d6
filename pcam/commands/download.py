"""Download the competition's data through the Kaggle API and build its tile store.

    python scripts/download.py [--competition histopathologic-cancer-detection]
                               [--data-dir data] [--force] [--no-prepare] [--keep-zip]

The data goes to DATA_DIR/COMPETITION. Needs Kaggle credentials (an API token
from https://www.kaggle.com/settings/api) and the competition's rules accepted
in a browser. A run with everything in place does nothing; an interrupted
download resumes where it stopped.
"""
from pathlib import Path

from pcam import places
from pcam.commands.cli import add_settings, command, new_parser, settings_from_args
from pcam.data import competition
from pcam.settings import DataSettings


@command
def main(argv=None):
    parser = new_parser("download.py", __doc__)
    parser.add_argument("--competition", default=competition.NAME,
                        help=f"competition name, as in its address (default: {competition.NAME})")
    parser.add_argument("--data-dir", default="data",
                        help="the data goes to DATA_DIR/COMPETITION (default: data)")
    parser.add_argument("--force", action="store_true",
                        help="download and extract again even when the data is in place")
    parser.add_argument("--no-prepare", dest="prepare", action="store_false",
                        help="do not build the tile store after the download")
    parser.add_argument("--keep-zip", action="store_true",
                        help="keep the downloaded zip after extracting it (6.3 GB for the competition)")
    add_settings(parser, DataSettings, "tile store", skip=("data_dir",))
    args = parser.parse_args(argv)
    dest = Path(args.data_dir) / args.competition
    store = settings_from_args(DataSettings, args, data_dir=str(dest)) if args.prepare else None

    from pcam.kaggle.api import download  # after parsing: --help answers at once

    # In a Kaggle notebook the competition is already there, read-only.
    default = args.data_dir == "data" and args.competition == competition.NAME
    download(args.competition, args.data_dir, force=args.force, store=store,
             keep_zip=args.keep_zip, mounted=places.kaggle_competition() if default else None)
