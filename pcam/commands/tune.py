"""Search over training settings with Optuna: each trial an ordinary run, on the same folds.

    python scripts/tune.py --data-dir D --study NAME --trials 24
    python scripts/tune.py --data-dir D --study NAME --trials 24 --space space.toml
    python scripts/tune.py --study NAME --storage postgresql://user@host/db ...  # many machines
    python scripts/train.py --config runs/NAME/best.toml    # the best settings, every fold

Every training option (or --config FILE) is the template of the trials; the
search space replaces the fields it names (default: learning rate, batch
size, dropout, label smoothing, colour and stain jitter; a TOML file with a
table per field, e.g. [lr_finetune] low = 1e-4, high = 1e-2, log = true, or
[batch_size] choices = [16, 32]). Each trial trains folds 0..F-1
(--folds-per-trial) at RUNS_DIR/NAME/trial_NNN/; Optuna's TPE sampler chooses
the values, and the median pruner stops a trial whose validation metric
falls below the median of earlier trials at the same epoch. The study lives
in RUNS_DIR/NAME/study.db (or --storage): run the same command again, or on
another machine, to continue it until it has --trials finished trials.
RUNS_DIR/NAME/report/index.html shows the trials and the best settings.
Requires Optuna: pip install -e ".[tune]".
"""
from dataclasses import replace

from pcam.commands.cli import (add_config, add_settings, command, config_defaults,
                               machine_defaults, new_parser, print_config, settings_from_args)
from pcam.errors import PcamError
from pcam.settings import TuneSettings


@command
def main(argv=None):
    parser = new_parser("tune.py", __doc__)
    add_settings(parser, TuneSettings, "search", skip=("run", "fold", "report"))
    add_config(parser, TuneSettings)
    from_file = config_defaults(parser, argv, TuneSettings)
    recipe = machine_defaults(parser, argv)
    parser.set_defaults(**from_file)  # the file wins over the recipe, the command line over both
    args = parser.parse_args(argv)

    # Checks that need no TensorFlow first: settings, the space, Optuna itself.
    settings = settings_from_args(TuneSettings, args)
    settings = replace(settings, training=replace(settings.training, recipe=recipe.name))
    if args.print_config:
        return print_config(settings)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise PcamError("tune.py needs Optuna: pip install -e \".[tune]\" (or pip install "
                        "optuna)") from None
    from pcam.train import preflight
    from pcam.train.tune import open_study
    from pcam.train.tune_space import read_space

    space = read_space(settings.space or None, settings.training)
    preflight.check_run(settings.training)  # data, folds: before TensorFlow loads
    study = open_study(settings, space)  # the storage, and a study made for this search

    from pcam.report.tune import tune_report
    from pcam.train.tune import tune

    tune(settings, study)
    tune_report(settings.study_dir, settings.storage, settings.study)
