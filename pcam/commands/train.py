"""Train a k-fold classifier on class folders or the competition's tiles, with a
recipe that fits the machine.

    python scripts/train.py --demo                     # the whole job on bundled PCam tiles
    python scripts/train.py --demo tissue              # the same on 8 tissue types, class folders
    python scripts/train.py --data-dir my_folders/     # DIR/<class>/<image>: any classes
    python scripts/train.py --data-dir my_folders/ --positive malignant   # two classes
    python scripts/train.py --folds 5                  # the competition (scripts/download.py)
    python scripts/train.py --fold 2 --run NAME        # one fold of a run (one per machine)

--recipe auto (the default) picks the GPU recipe (ResNet50 from ImageNet
weights) when a GPU or TPU is found, else the CPU recipe: cpu-cnn from the
PCam-trained backbone shipped with pcam for class folders (128 px, 60 epochs,
batch 16; oral OSCC AUC 0.966 on a 2-core CPU), from scratch for the
competition. Options given on the command line always win.

Everything goes to RUNS_DIR/RUN (RUNS_DIR/latest names it): config.json,
folds.csv, fold_<k>/best.keras, histories, out-of-fold predictions, cv.json,
report/index.html, and config.toml: `--config runs/NAME/config.toml --run NEW`
trains the same recipe again. Run the same command again to resume: finished
folds are skipped and an unfinished one continues from its last epoch.
"""
from dataclasses import replace

from pcam.commands.cli import (add_config, add_settings, command, config_defaults,
                               machine_defaults, new_parser, print_config, settings_from_args)
from pcam.settings import RunSettings, to_dict


@command
def main(argv=None):
    parser = new_parser("train.py", __doc__)
    parser.add_argument("--demo", nargs="?", const="pcam", choices=("pcam", "tissue"),
                        help="the main job on a bundled sample, no account needed (its own "
                             "settings; the other options are ignored): pcam (the default) "
                             "1,500 real PCam tiles, Kaggle layout; tissue: 240 tiles of 8 "
                             "colorectal tissue types (Kather et al. 2016), class folders")
    add_settings(parser, RunSettings, "run")
    add_config(parser, RunSettings)
    from_file = config_defaults(parser, argv, RunSettings)
    recipe = machine_defaults(parser, argv)
    parser.set_defaults(**from_file)  # the file wins over the recipe, the command line over both
    args = parser.parse_args(argv)
    if args.demo:
        from pcam.commands import demo

        return demo.run(args.demo)

    # Checks that need no TensorFlow come first: a mistake is told in a second.
    from pcam import places, recipes
    from pcam.train import preflight

    settings = settings_from_args(RunSettings, args, recipe=recipe.name)
    if not settings.run:  # the same command again resumes the same run
        settings = replace(settings, run=places.default_run_name(
            settings.data.data_dir, to_dict(settings)))
    if args.print_config:
        return print_config(settings)
    source = preflight.check_run(settings)
    print(recipes.describe(recipe, settings.model.backbone, settings.model.weights,
                           settings.train.epochs_frozen + settings.train.epochs_finetune,
                           source.kind, len(source.train.ids)), flush=True)

    from pcam.train.training import run_cv

    summary = run_cv(settings, source=source)
    if summary is not None:
        from pcam.commands.guide import after_training
        from pcam.report.evaluate import report_run

        # The run trained (RUNS_DIR/latest): a read-only run resumes in a copy.
        run = places.resolve_run(places.LATEST, settings.runs_dir)
        if settings.report:
            report_run(run)
        print(after_training(run, source.kind), flush=True)
