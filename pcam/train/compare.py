"""Train a comparison of backbones: one ordinary run per backbone, on the same folds.

``train_backbones(CompareSettings)`` trains, for each backbone, a run at
``RUNS_DIR/NAME/<backbone>/`` through ``run_cv``, every run on the
comparison's folds (``RUNS_DIR/NAME/folds.csv``: the folds the first run
made, handed to every later one). Started again with the same command,
finished backbones (and finished folds of an unfinished one) are skipped. A
``folds.csv`` (id, label, fold) put in the comparison's folder beforehand is
used by every run: a split of one's own. Backbones can be trained on
different machines (``--backbones X`` on each, the same ``--name`` on a
shared folder) and gathered with ``--report``.

Training writes runs and nothing else: the command reports each run
(``pcam.report.evaluate.report_run``) and then the comparison
(``pcam.report.compare.compare_report``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

from pcam.errors import PcamError
from pcam.io import atomic_write_text
from pcam.runs import FOLDS, RunDir, finished_folds, load_run, read_folds, same_folds
from pcam.settings import CompareSettings, RunSettings, changed_on_resume, to_dict

RENEW = "delete it and its runs, or choose a new --name"


def named(settings: CompareSettings) -> CompareSettings:
    """``settings`` with a name for the comparison (a new one when none is given)."""
    from pcam.places import default_run_name

    return settings if settings.name else dataclasses.replace(settings, name=default_run_name())


def train_backbones(settings: CompareSettings) -> Iterator[Path]:
    """Train every backbone's run of the (named) comparison that is not finished.

    Yields:
        The folder of each run trained now, once its folds are trained.
    """
    from pcam.models.registry import get_backbone  # the registry: a wrong name lists the valid ones
    from pcam.train.training import run_cv

    specs = [get_backbone(name) for name in settings.backbones]
    weights = settings.training.model.weights
    if weights not in ("imagenet", "none") and len(specs) > 1:
        raise PcamError(f"--weights {weights}: a weights file belongs to one backbone; compare "
                        "with --weights imagenet (from scratch where a backbone has none) or "
                        "--weights none")
    compare_dir = settings.compare_dir
    print(f"comparison {compare_dir}: {', '.join(settings.backbones)}", flush=True)
    for spec in specs:
        run = backbone_settings(settings.training, spec.name, spec.pretrained, compare_dir)
        todo = (range(run.folds.folds) if run.fold == -1 else [run.fold])
        done = finished_folds(run.run_dir, run.folds.folds)
        if RunDir(run.run_dir).config.is_file() and set(todo) <= set(done):
            _check_same_training(run)
            print(f"{spec.name}: finished earlier, skipped", flush=True)
            continue
        shared = compare_dir / FOLDS
        folds = read_folds(shared, RENEW) if shared.is_file() else None
        print(f"--- {spec.name}: run {run.run_dir}", flush=True)
        if run_cv(run, folds=folds) is not None:
            yield run.run_dir
        adopt_or_check_folds(run.run_dir, shared)


def backbone_settings(template: RunSettings, backbone: str, pretrained: bool,
                      compare_dir: Path) -> RunSettings:
    """The run of one backbone: the template with the backbone replaced, named
    after it, in the comparison's folder.

    A backbone that starts from random weights (``--weights imagenet`` for
    one that has none, e.g. simple-cnn, or ``--weights none``) is trained from scratch: a
    frozen phase would train only the head on a random backbone, so its
    epochs go to the second phase, in which everything learns. The
    learning rates stay the template's.
    """
    weights = template.model.weights
    scratch = weights == "none" or (weights == "imagenet" and not pretrained)
    model = dataclasses.replace(template.model, backbone=backbone,
                                weights="none" if scratch else template.model.weights)
    train = template.train
    if scratch and train.epochs_frozen:
        train = dataclasses.replace(train, epochs_frozen=0,
                                    epochs_finetune=train.epochs_frozen + train.epochs_finetune)
    return dataclasses.replace(template, run=backbone, runs_dir=str(compare_dir), model=model,
                               train=train)


def _check_same_training(run: RunSettings) -> None:
    """Refuse to skip a finished run that was trained with other settings than
    the command's: its results would be reported as the command's."""
    _, saved = load_run(run.run_dir)
    then = to_dict(saved)
    if not run.model.image_size:  # 0: resolved to the tiles' size when it was trained
        run = dataclasses.replace(run, model=dataclasses.replace(
            run.model, image_size=saved.model.image_size))
    changed = changed_on_resume(run, then)
    if changed:
        raise PcamError(f"run {run.run_dir} was trained with other settings "
                        f"({', '.join(changed)}); compare with the same settings or choose a "
                        "new --name")


def adopt_or_check_folds(run_dir: Path, shared: Path) -> None:
    """Make the first run's folds the comparison's; check a later run's against them."""
    own = run_dir / FOLDS
    if not own.is_file():
        return
    if not shared.is_file():
        atomic_write_text(shared, own.read_text())
        return
    if not same_folds(read_folds(own, RENEW), read_folds(shared, RENEW)):
        raise PcamError(f"{own} differs from the comparison's {shared}: this run was started "
                        "with other folds; delete its folder and run the comparison again")
