"""A search over training settings with Optuna: each trial an ordinary run.

``tune(TuneSettings)`` runs the trials of a study at ``RUNS_DIR/NAME/``:

    RUNS_DIR/NAME/study.db        the Optuna storage (SQLite, unless --storage names another)
    RUNS_DIR/NAME/folds.csv       the study's folds, the first trial's, handed to every later one
    RUNS_DIR/NAME/trial_NNN/      trial NNN: an ordinary run (evaluate, predict, the app take it)
    RUNS_DIR/NAME/best.toml       the best trial's settings, for train.py --config

Each trial samples the search space (``Dimension``, a TOML file or
``DEFAULT_SPACE``) with Optuna's TPE sampler, applies the values to the
template settings and trains folds ``0..F-1`` (``--folds-per-trial``). A
Keras callback reports the validation metric after every epoch, and the
median pruner stops a trial whose metric is below the median of earlier
trials at the same epoch. Several processes, on one machine (the SQLite
file) or several (``--storage postgresql://...``), share one study: Optuna's
own distributed mode. Each trial runs through ``study.optimize``, which
keeps a heartbeat, so the trial of a killed process is marked failed; the
command run again continues the study until it has ``--trials`` finished
(completed or pruned) trials, however many processes took part.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from pcam.config import write_config
from pcam.errors import PcamError
from pcam.runs import FOLDS, RunDir, read_folds
from pcam.settings import RunSettings, TuneSettings, from_json
from pcam.task import MONITOR
from pcam.train.tune_space import Dimension, apply, read_space

# --- the study ---------------------------------------------------------------------------

def open_study(settings: TuneSettings, space: list[Dimension]):
    """The study in its storage (made if new), checked to be this search's:
    the same space, data and folds as when it was made."""
    import optuna

    # pcam prints each trial itself; Optuna's warnings would add a traceback for a
    # surplus trial, which is no failure of the user's.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    settings.study_dir.mkdir(parents=True, exist_ok=True)
    url = settings.storage or f"sqlite:///{(settings.study_dir / 'study.db').resolve()}"
    try:
        # The heartbeat marks the trial of a killed process failed (after the grace period).
        # SQLite: a process waits up to a minute for another's write (its default, 5 s,
        # can run out when several processes report epochs and heartbeats at once).
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30,
                                             grace_period=120)
    except Exception as err:  # SQLAlchemy's or a driver's: the URL cannot be opened
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PcamError(f"--storage {url}: cannot open it ({first})") from None
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
              if settings.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(
        storage=storage, study_name=settings.study, direction="maximize", load_if_exists=True,
        # TPE's default 10 random trials before it models anything would be a
        # whole study of 12; a third of the trials (3 to 10) explores first.
        sampler=optuna.samplers.TPESampler(
            seed=settings.sampler_seed, n_startup_trials=max(3, min(10, settings.trials // 3))),
        pruner=pruner)
    made_with = {"space": {d.name: d.describe() for d in space},
                 "data_dir": str(Path(settings.training.data.data_dir).resolve()),
                 "folds": [settings.training.folds.folds, settings.training.folds.seed],
                 "folds_per_trial": settings.folds_per_trial}
    before = {k: study.user_attrs[k] for k in made_with if k in study.user_attrs}
    if before and json.loads(json.dumps(made_with)) != before:
        differ = [k for k in made_with if json.loads(json.dumps(made_with[k])) != before.get(k)]
        raise PcamError(f"study {settings.study} was made with another {', '.join(differ)}; "
                        "continue it with the same --space, --data-dir and folds, or choose a "
                        "new --study")
    for key, value in made_with.items():
        study.set_user_attr(key, value)
    return study


def finished(study) -> int:
    """Trials that count towards ``--trials``: completed or pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                        TrialState.PRUNED)))


class Surplus(Exception):
    """A trial started while other processes were finishing the study's last
    trials: recorded as failed and marked, so that the study has exactly N."""


def tune(settings: TuneSettings, study=None) -> dict:
    """Run the study's trials until it has ``settings.trials`` finished ones (or
    the timeout); write ``best.toml``. Returns a summary of the study.

    Args:
        study: the study ``open_study`` opened (the command opens it before
            TensorFlow loads, to refuse a wrong storage or study at once).
    """
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # each trial's new model retraces: not news here
    space = read_space(settings.space or None, settings.training)
    study = study or open_study(settings, space)
    start = time.monotonic()
    print(f"study {settings.study} at {settings.study_dir}: {finished(study)} of "
          f"{settings.trials} trials finished; searching {', '.join(d.name for d in space)}",
          flush=True)
    taken = []

    def objective(trial):
        try:
            return run_trial(trial, settings, space)
        except Surplus:
            taken.append(trial.number)
            raise

    while finished(study) < settings.trials:
        if settings.timeout and time.monotonic() - start > settings.timeout * 60:
            print(f"--timeout {settings.timeout:g} min reached", flush=True)
            break
        study.optimize(objective, n_trials=1, catch=(Surplus,))
        if taken:  # stop, rather than start surplus trials until the others end
            print("the study's last trials are running in other processes (a killed "
                  "process's trial counts until Optuna marks it failed, 2 minutes after its "
                  "last heartbeat): this process stops; run it again to fill any that fail",
                  flush=True)
            break
    summary = write_best(study, settings)
    if settings.confirm and summary.get("best_trial") is not None:
        summary["confirmation"] = confirm(study, settings)
    return summary


def run_trial(trial, settings: TuneSettings, space: list[Dimension]) -> float:
    """Train one trial's folds; its value is their mean validation metric."""
    import optuna
    from optuna.trial import TrialState

    from pcam.train.compare import adopt_or_check_folds
    from pcam.train.training import run_cv

    ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)) if t.number < trial.number]
    if len(ahead) >= settings.trials:
        trial.set_user_attr("surplus", True)
        raise Surplus(f"trial {trial.number}: the study's {settings.trials} trials are taken")
    params = {d.name: d.suggest(trial) for d in space}
    run = dataclasses.replace(apply(settings.training, params), run=f"trial_{trial.number:03d}",
                              runs_dir=str(settings.study_dir))
    trial.set_user_attr("run", str(run.run_dir))
    shown = ", ".join(f"{k} {_short(v)}" for k, v in params.items())
    print(f"--- trial {trial.number} ({shown}): run {run.run_dir}", flush=True)
    started, report = time.monotonic(), reporter(trial)
    shared = settings.study_dir / FOLDS
    try:
        for k in range(settings.folds_per_trial):
            folds = read_folds(shared, "delete the study's folder") if shared.is_file() else None
            run_cv(dataclasses.replace(run, fold=k), folds=folds, callbacks=[report])
            adopt_or_check_folds(run.run_dir, shared)
            report.next_fold()
    except optuna.TrialPruned:
        trial.set_user_attr("epochs", report.epochs)
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        print(f"trial {trial.number}: pruned after {report.epochs} epoch(s) (validation "
              f"{report.last:.4f}, below the median of earlier trials)", flush=True)
        raise
    trial.set_user_attr("epochs", report.epochs)
    trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
    values = [json.loads(RunDir(run.run_dir).fold(k).metrics.read_text())["auc"]
              for k in range(settings.folds_per_trial)]
    value = float(np.mean(values))
    print(f"trial {trial.number}: {value:.4f}", flush=True)
    return value


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def reporter(trial):
    """A Keras callback that reports the validation metric to the trial after
    every epoch (a step per epoch, counted over phases and folds) and ends a
    trial the pruner stops; ``next_fold()`` between folds."""
    import keras
    import optuna

    class Reporter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.last, self.fold_epochs, self.offset = 0, math.nan, 0, 0

        def next_fold(self) -> None:
            self.offset += self.fold_epochs
            self.fold_epochs = 0

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(MONITOR)
            self.epochs += 1
            self.fold_epochs += 1
            if value is None or not math.isfinite(value):
                return
            self.last = float(value)
            trial.report(self.last, self.offset + self.fold_epochs)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {self.epochs}: {self.last:.4f}")

    return Reporter()


def write_best(study, settings: TuneSettings) -> dict:
    """``best.toml`` (the best trial's settings as a whole run, for train.py
    --config) and the study's summary."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary = {"study": settings.study, "finished": finished(study), "complete": len(complete)}
    if not complete:
        print("no trial completed yet: no best settings", flush=True)
        return summary
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = study.best_trial
    run_dir = Path(best.user_attrs["run"])
    saved = (from_json(RunSettings, RunDir(run_dir).config) if RunDir(run_dir).config.is_file()
             else apply(settings.training, best.params))
    whole = dataclasses.replace(saved, run=f"{settings.study}-best", fold=-1,
                                runs_dir=settings.training.runs_dir)
    path = settings.study_dir / "best.toml"
    write_config(whole, path)
    shown = ", ".join(f"{k} {_short(v)}" for k, v in best.params.items())
    print(f"best: trial {best.number}, {best.value:.4f} ({shown}); train it on every fold: "
          f"python scripts/train.py --config {path}", flush=True)
    return {**summary, "best_trial": best.number, "best_value": best.value,
            "best_params": best.params, "best_toml": str(path)}


def confirm(study, settings: TuneSettings) -> dict:
    """The best trial's settings and the template's (the defaults), each trained
    on the ``settings.confirm`` folds after the trials' (which no trial saw),
    on the study's folds; written to ``confirm.json``.

    One fold's best is a noisy winner: the best beats the default only when
    the paired differences' 95% t interval over these folds lies above 0.
    """
    from scipy.stats import t as student

    from pcam.io import atomic_write_json
    from pcam.train.training import run_cv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = study.best_trial
    ks = list(range(settings.folds_per_trial, settings.folds_per_trial + settings.confirm))
    shared = settings.study_dir / FOLDS
    runs = {"best": apply(settings.training, best.params), "default": settings.training}
    scores = {}
    for name, template in runs.items():
        run = dataclasses.replace(template, run=f"confirm-{name}",
                                  runs_dir=str(settings.study_dir))
        print(f"--- confirming the {name} settings on fold(s) {', '.join(map(str, ks))}: "
              f"run {run.run_dir}", flush=True)
        for k in ks:
            run_cv(dataclasses.replace(run, fold=k), folds=read_folds(shared, "delete the "
                                                                      "study's folder"))
        scores[name] = [json.loads(RunDir(run.run_dir).fold(k).metrics.read_text())["auc"]
                        for k in ks]
    delta = np.subtract(scores["best"], scores["default"])
    n = len(delta)
    sd = float(np.std(delta, ddof=1)) if n > 1 else math.nan
    half = float(student.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
    low, high = float(delta.mean()) - half, float(delta.mean()) + half
    verdict = ("the best beats the default beyond the fold-to-fold spread" if low > 0 else
               "the default beats the best beyond the spread" if high < 0 else
               "the folds cannot tell the best from the default" if n > 1 else
               "one fold cannot tell the best from the default (--confirm 3 or more)")
    result = {"folds": ks, "best_trial": best.number, "best_params": best.params,
              "best": scores["best"], "default": scores["default"],
              "delta_mean": float(delta.mean()), "delta_sd": sd, "delta_low": low,
              "delta_high": high, "verdict": verdict}
    atomic_write_json(settings.study_dir / "confirm.json", result)
    print(f"confirmed on {n} fold(s): best {np.mean(scores['best']):.4f}, default "
          f"{np.mean(scores['default']):.4f}, difference {delta.mean():+.4f} (95% CI "
          f"{low:+.4f} to {high:+.4f}): {verdict}", flush=True)
    return result

