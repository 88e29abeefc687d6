"""The competition's facts, and reading and checking its files.

Layout of a competition folder (what Kaggle ships, and what
``make_kaggle_layout.py`` writes)::

    train/<id>.tif            96x96 RGB uint8 tiles
    test/<id>.tif
    train_labels.csv          id,label   (label 1 = tumour in the centre 32x32)
    sample_submission.csv     id,label   (test ids, in submission order)

Checks here are cheap (CSV contents, file listings) so they run before any
long work. Tiles are decoded, and checked, by the ingest (``pcam.data.store``),
which does that work once anyway.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pcam.errors import PcamError, listed

NAME = "histopathologic-cancer-detection"
N_TRAIN = 220_025
N_TEST = 57_458
TILE_SHAPE = (96, 96, 3)
CLASSES = ("normal", "tumour")  # label 0 and label 1
LABEL_REGION = 32  # the centre square, in pixels, that decides a tile's label
# Microns per pixel: Camelyon16 slides scanned at 0.243 um/px (40x), cut at 10x
# (Veeling et al. 2018), so 4 x 0.243.
MPP = 0.972
TRAIN_CSV = "train_labels.csv"
TEST_CSV = "sample_submission.csv"


@dataclass(frozen=True)
class Split:
    """One split's images: ids in their canonical order, and label indices (-1: unlabelled).

    An image's file is ``tile_dir / (id + suffix)``: Kaggle's ids name
    ``<id>.tif`` files; a class folder's ids are paths relative to its root
    (``malignant/img001.png``) with no suffix to add.
    """

    name: str
    tile_dir: Path
    ids: tuple[str, ...]
    labels: tuple[int, ...]
    suffix: str = ".tif"

    def path(self, tile_id: str) -> Path:
        return self.tile_dir / f"{tile_id}{self.suffix}"

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and min(self.labels) >= 0


def read_ids_csv(path: Path, *, labelled: bool) -> tuple[pd.DataFrame | None, list[str]]:
    """Read an ``id,label`` CSV; return the table and every problem found.

    The table is None when the file cannot be read as ``id,label`` at all.
    """
    if not path.is_file():
        return None, [f"{path}: missing"]
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return None, [f"{path}: empty file (expected a header 'id,label')"]
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        return None, [f"{path}: not a readable CSV ({str(err).strip()})"]
    if list(table.columns) != ["id", "label"]:
        header = ",".join(map(str, table.columns))
        return None, [f"{path}: header is '{header}', expected 'id,label'"]
    problems = []
    if table.empty:
        problems.append(f"{path}: no rows under the header")
    dup = table["id"][table["id"].duplicated(keep=False)]
    if len(dup):
        rows = [f"row {i + 2} '{v}'" for i, v in dup.items()]
        problems.append(f"{path}: {dup.nunique()} id(s) appear more than once: {listed(rows)}")
    empty = table.index[table["id"].str.strip() == ""]
    if len(empty):
        problems.append(f"{path}: {len(empty)} empty id(s) at {listed(f'row {i + 2}' for i in empty)}")
    if labelled:
        bad = table[~table["label"].isin(["0", "1"])]
        if len(bad):
            rows = [f"row {i + 2} label '{v}'" for i, v in bad["label"].items()]
            problems.append(f"{path}: {len(bad)} label(s) not 0 or 1: {listed(rows)}")
    return table, problems


def list_tiles(tile_dir: Path) -> set[str]:
    """Ids of the ``*.tif`` files in ``tile_dir`` (empty when it is missing)."""
    if not tile_dir.is_dir():
        return set()
    with os.scandir(tile_dir) as entries:
        return {e.name[:-4] for e in entries if e.name.endswith(".tif")}


def _match(table: pd.DataFrame, tile_dir: Path, csv: Path) -> list[str]:
    problems = []
    if not tile_dir.is_dir():
        return [f"{tile_dir}/: missing (expected one .tif per id of {csv.name})"]
    on_disk = list_tiles(tile_dir)
    ids = set(table["id"])
    no_tile = sorted(ids - on_disk)
    no_id = sorted(on_disk - ids)
    if no_tile:
        problems.append(f"{csv}: {len(no_tile)} id(s) have no tile in {tile_dir}/: {listed(no_tile)}")
    if no_id:
        problems.append(f"{tile_dir}/: {len(no_id)} tile(s) have no id in {csv.name}: "
                        f"{listed(t + '.tif' for t in no_id)}")
    return problems


def read_competition(data_dir: Path) -> tuple[Split, Split]:
    """Read and cross-check the competition's CSVs and tile listings.

    Every problem is collected and raised together in one ``PcamError``
    (counts and the first few names each), so a user fixes them in one go.

    Returns:
        The train split (ids in ``train_labels.csv`` order, labels 0/1) and
        the test split (ids in ``sample_submission.csv`` order, labels -1).
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise PcamError(f"{data_dir} is a file, not a folder: pass --data-dir the competition "
                        "folder (the one holding train/, test/ and train_labels.csv)")
    if not data_dir.is_dir():
        raise PcamError(f"{data_dir}: no such folder; download the data first "
                        f"(python scripts/download.py) or pass --data-dir")
    train_csv, test_csv = data_dir / TRAIN_CSV, data_dir / TEST_CSV
    train, problems = read_ids_csv(train_csv, labelled=True)
    test, test_problems = read_ids_csv(test_csv, labelled=False)
    problems += test_problems
    if train is not None:
        problems += _match(train, data_dir / "train", train_csv)
    if test is not None:
        problems += _match(test, data_dir / "test", test_csv)
    if problems:
        raise PcamError(f"{data_dir} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return (Split("train", data_dir / "train", tuple(train["id"]), tuple(train["label"].astype(int))),
            Split("test", data_dir / "test", tuple(test["id"]), (-1,) * len(test)))


def check_listing(data_dir: Path) -> tuple[int, int]:
    """Check the folder's CSVs against its tiles, without decoding; return (n_train, n_test)."""
    train, test = read_competition(data_dir)
    return len(train.ids), len(test.ids)
