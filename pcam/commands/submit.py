"""Check a submission against sample_submission.csv, then submit it to Kaggle.

    python scripts/submit.py submissions/NAME.csv -m "5 folds x 8 TTA"
                             [--competition histopathologic-cancer-detection]
                             [--data-dir data/histopathologic-cancer-detection]

Nothing is uploaded unless the file has every test id once, the header
id,label and finite probabilities in [0, 1]. The equivalent
`kaggle competitions submit ...` command is printed too. Needs Kaggle
credentials and the competition's rules accepted, as scripts/download.py does.
"""

from pcam.commands.cli import command, new_parser
from pcam.data import competition
from pcam.settings import DataSettings


@command
def main(argv=None):
    parser = new_parser("submit.py", __doc__)
    parser.add_argument("submission", help="the submission CSV (id,label)")
    parser.add_argument("-m", "--message", required=True,
                        help="the submission's description on Kaggle")
    parser.add_argument("--competition", default=competition.NAME,
                        help=f"competition name, as in its address (default: {competition.NAME})")
    parser.add_argument("--data-dir", default=DataSettings().data_dir,
                        help="competition folder holding sample_submission.csv, to check the "
                             f"file against (default: {DataSettings().data_dir})")
    args = parser.parse_args(argv)

    from pcam.kaggle.submission import submit_file

    submit_file(args.submission, args.message, args.competition, args.data_dir)
