"""What a training run is checked against before TensorFlow loads.

TensorFlow takes 10-50 s to import on a busy 2-core machine; a missing
folder, an unusable image, folds that cannot be made or a crop larger than
the tiles should be told in a second, not after that. ``check_run`` does
every check that needs only the file system and scikit-learn, and returns
the scanned source for training to use (it is not scanned twice).

Also here, for the same reason: the small-data warning (a fold that makes
too few optimisation steps an epoch learns nothing, silently).
"""
from __future__ import annotations

import math

import pandas as pd

from pcam.data.sources import Source, read_source
from pcam.errors import PcamError
from pcam.settings import RunSettings

# Fewer optimisation steps an epoch than this, and a from-scratch model
# hardly moves: 30 tiles at batch 128 made one step an epoch, and every
# prediction came out 1/K (issue 24).
MIN_STEPS = 20


def check_run(settings: RunSettings) -> Source:
    """Scan the source and check what can be checked before any long work.

    Returns:
        The scanned source.

    Raises:
        PcamError: the first problem found, in one line.
    """
    check_fold(settings)
    source = read_source(settings.data)
    from pcam.data.folds import assign_folds, subset  # scikit-learn: 0.5-2 s, after the scan

    # Folds that cannot be made (a class or a group count below --folds, a
    # pattern that matches nothing) are found before minutes of ingest.
    listing = pd.DataFrame({"id": source.train.ids, "label": source.train.labels})
    assign_folds(subset(listing, settings.folds.max_tiles, settings.folds.seed),
                 settings.folds, source.classes)
    check_crop(settings, source.tile_size)
    return source


def check_fold(settings: RunSettings) -> None:
    k_all = settings.folds.folds
    if settings.fold != -1 and not 0 <= settings.fold < k_all:
        raise PcamError(f"--fold {settings.fold}: folds are numbered 0 to {k_all - 1}")


def check_crop(settings: RunSettings, tile_size: int) -> None:
    crop = settings.augment.centre_crop
    if crop > tile_size:
        raise PcamError(f"--centre-crop {crop} is larger than the tiles ({tile_size}x"
                        f"{tile_size}); give at most {tile_size}, or 0 for the whole tile")


def small_data_warning(train_tiles: int, batch_size: int) -> str | None:
    """A warning when a fold makes fewer than ``MIN_STEPS`` steps an epoch, saying
    what to change; None when it makes enough."""
    steps = max(1, train_tiles // batch_size)
    if steps >= MIN_STEPS:
        return None
    suggested = max(4, 2 ** int(math.log2(max(1, train_tiles // MIN_STEPS))))
    return (f"warning: {train_tiles:,} training tiles at --batch-size {batch_size} make "
            f"{steps} optimisation step(s) an epoch; fewer than {MIN_STEPS} rarely learns "
            f"anything (predictions stay near 1/K). Pass --batch-size {suggested}, or more "
            "epochs, or start from a trained backbone (--backbone cpu-cnn --weights pcam)")
