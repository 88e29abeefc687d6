"""Whole slides through a run's model: tissue found, tiles at the run's scale, maps QuPath opens.

    python scripts/slide.py --run runs/NAME slides/            # every slide in the folder
    python scripts/slide.py --run runs/NAME a.svs b.ndpi --out maps/ --tta 8
    python scripts/slide.py --run runs/NAME slides/ --shard 3/10   # job 3 of an array of 10
    python scripts/slide.py --out maps/ --report                  # gather the jobs' page

Tiles are read at the run's microns per pixel (its model.json, from train.py
--mpp; PCam runs 0.972) from each slide's own (its metadata, or --slide-mpp),
where a thumbnail shows tissue. Per slide, in --out: NAME.tiles.csv (level-0
x, y, size, tissue, one probability per class), NAME.geojson (File > Import
objects in QuPath), NAME.heatmap.png, NAME.mask.png; for the folder,
slides.csv and index.html (most suspicious first). Run it again to resume:
finished slides are skipped, a slide cut short is read again.
Needs the slides extra: pip install 'pcam[slides]'.
"""

from pcam.commands.cli import add_settings, command, new_parser, settings_from_args
from pcam.commands.predict import parse_folds
from pcam.settings import SlideSettings


@command
def main(argv=None):
    parser = new_parser("slide.py", __doc__)
    add_settings(parser, SlideSettings, "slides", skip=("folds", "slides"))
    parser.add_argument("slides", nargs="*", metavar="SLIDE_OR_FOLDER",
                        help="slide files, or folders searched for them")
    parser.add_argument("--folds", type=parse_folds, default=SlideSettings().folds,
                        help="folds to ensemble: all (every finished fold, the default) or "
                             "numbers such as 0,2")
    args = parser.parse_args(argv)
    settings = settings_from_args(SlideSettings, args, slides=tuple(args.slides))

    from pcam.explain.cohort import read_slides  # after parsing: --help answers without TensorFlow

    result = read_slides(settings)
    done = len(result["rows"])
    if settings.report:
        print(f"{done} finished slide(s) gathered into {settings.out}/slides.csv and "
              f"{settings.out}/index.html", flush=True)
        return
    print(f"{len(result['read'])} slide(s) read now, {len(result['skipped'])} finished before, "
          f"{len(result['failed'])} failed; {done} in {settings.out}/slides.csv and "
          f"{settings.out}/index.html", flush=True)
    for path, error in result["failed"]:  # the error names the file, mostly
        print(f"  failed: {error if path in error else f'{path}: {error}'}", flush=True)
    if result["failed"]:
        raise SystemExit(1)
