"""Fold assignment and class balance.

Folds are made once per run and saved as ``folds.csv`` (id, label, fold) in
the run directory; a resumed run reads them back, so every fold of a run is
trained and evaluated on the same split even if the seed handling changes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from pcam.errors import PcamError
from pcam.io import atomic_write_text
from pcam.runs import read_folds
from pcam.settings import FoldSettings


def subset(index: pd.DataFrame, max_tiles: int, seed: int) -> pd.DataFrame:
    """A stratified subset of ``max_tiles`` rows (all rows when 0 or more than there are)."""
    if not max_tiles or max_tiles >= len(index):
        return index
    if max_tiles < 2 * index["label"].nunique():
        raise PcamError(f"--max-tiles {max_tiles} is too small: need at least 2 tiles per class")
    keep, _ = train_test_split(index.index, train_size=max_tiles, stratify=index["label"],
                               random_state=seed)
    return index.loc[np.sort(keep)]


GROUP_COLUMNS = ("wsi", "slide", "patient", "group")


def read_groups(path: Path, ids) -> np.ndarray:
    """Group (slide) of each id from a CSV with an id column and a group column:
    the first of ``GROUP_COLUMNS`` present, else the first column after id
    (the public PCam slide map ``patch_id_wsi_full.csv`` has ``id,wsi``)."""
    path = Path(path)
    if not path.is_file():
        raise PcamError(f"{path}: groups file not found (expected a CSV mapping id -> slide)")
    table = pd.read_csv(path, dtype=str)
    if "id" not in table.columns or len(table.columns) < 2:
        raise PcamError(f"{path}: needs an 'id' column and a group column (e.g. id,wsi)")
    # A named slide column wins over position: a CSV saved from pandas with its
    # index carries an unnamed first column of row numbers.
    others = [c for c in table.columns if c != "id"]
    named = [c for c in others if c.lower() in GROUP_COLUMNS]
    group_col = (named or others)[0]
    groups = table.drop_duplicates("id").set_index("id")[group_col].reindex(list(ids))
    missing = groups.index[groups.isna()]
    if len(missing):
        raise PcamError(f"{path}: {len(missing)} id(s) have no group, e.g. {', '.join(missing[:5])}")
    return groups.to_numpy()


def assign_folds(index: pd.DataFrame, settings: FoldSettings, classes=()) -> pd.DataFrame:
    """``index`` (id, label) with a ``fold`` column: seeded StratifiedKFold, or
    StratifiedGroupKFold when ``settings.groups`` names a slide map or
    ``settings.group_pattern`` finds the patient or slide in each file name
    (tiles of one slide are correlated; splitting them across folds inflates
    validation AUC). ``classes`` names the labels in messages."""
    k = settings.folds
    if k < 2:
        raise PcamError(f"--folds {k}: need at least 2 folds (one to train on, one to validate)")
    counts = index["label"].value_counts()

    def name(label):
        return classes[label] if label < len(classes) else f"label {label}"

    if len(index) and counts.min() < k:
        raise PcamError(f"--folds {k}: class {name(counts.idxmin())} has only {counts.min()} "
                        f"image(s), fewer than the folds; use fewer folds or more images")
    folds = np.zeros(len(index), np.int64)
    labels = index["label"].to_numpy()
    groups = None
    if settings.groups and settings.group_pattern:
        raise PcamError("give --groups CSV or --group-pattern REGEX, not both")
    if settings.groups:
        groups = read_groups(settings.groups, index["id"])
    elif settings.group_pattern:
        from pcam.data.sources import groups_from_pattern

        groups = np.asarray(groups_from_pattern(index["id"], settings.group_pattern))
    if groups is not None:
        per_class = pd.Series(groups).groupby(labels).nunique()
        if per_class.min() < k:
            raise PcamError(f"--folds {k}: class {name(per_class.idxmin())} has images from only "
                            f"{per_class.min()} group(s) (patients or slides), fewer than the "
                            "folds; use fewer folds")
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=settings.seed)
        splits = splitter.split(index, labels, groups)
    else:
        splits = StratifiedKFold(k, shuffle=True, random_state=settings.seed).split(index, labels)
    for fold, (_, val) in enumerate(splits):
        folds[val] = fold
    return index.assign(fold=folds)


def check_folds(folds: pd.DataFrame, index: pd.DataFrame, k: int, source: str,
                remedy: str, folds_remedy: str) -> pd.DataFrame:
    """``folds`` (id, label, fold), refused unless they split tiles of ``index``,
    with its labels, into folds 0 to ``k`` - 1.

    Args:
        source: what the folds are, to name them in messages.
        remedy: what to do when they were made for other data.
        folds_remedy: what to do when they are not ``k`` folds.
    """
    labels = index.drop_duplicates("id").set_index("id")["label"]
    unknown = folds.loc[~folds["id"].isin(labels.index), "id"]
    if len(unknown):
        raise PcamError(f"{source}: {len(unknown)} tile(s) not in the store (e.g. "
                        f"{unknown.iloc[0]}); the data changed: {remedy}")
    changed = folds.loc[labels[folds["id"]].to_numpy() != folds["label"].to_numpy(), "id"]
    if len(changed):
        raise PcamError(f"{source}: {len(changed)} tile(s) labelled otherwise than in the store "
                        f"(e.g. {changed.iloc[0]}); the data changed: {remedy}")
    found = sorted(int(f) for f in folds["fold"].unique())
    if found != list(range(k)):
        raise PcamError(f"{source}: {len(found)} folds ({', '.join(map(str, found))}) but "
                        f"--folds is {k}; {folds_remedy}")
    return folds[["id", "label", "fold"]].reset_index(drop=True)


def load_or_assign(path: Path, index: pd.DataFrame, settings: FoldSettings,
                   classes=()) -> pd.DataFrame:
    """Folds saved at ``path`` if there (a resumed run), else new ones saved there."""
    path = Path(path)
    if path.is_file():
        saved = read_folds(path)
        return check_folds(saved, index, settings.folds, str(path), "start a new --run",
                           "use the run's setting or a new --run")
    folds = assign_folds(subset(index, settings.max_tiles, settings.seed), settings, classes)
    atomic_write_text(path, folds.to_csv(index=False))
    return folds


def class_weights(labels) -> dict[int, float]:
    """Balanced loss weights n / (n_classes * n_c): each class adds equally to the loss."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    return {int(c): len(labels) / (len(classes) * n) for c, n in zip(classes, counts)}
