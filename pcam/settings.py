"""Settings as frozen dataclasses whose defaults are the recommended recipe.

Every field carries its command-line help in ``metadata["help"]``, so the
scripts build their argparse groups from these classes (``pcam.cli``) and
the library only ever receives settings objects, never a Namespace. The
resolved settings are written beside everything a run produces
(``to_json``) and read back with ``from_json``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


def _opt(default, help, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class DataSettings:
    """Where the competition's files are and how they become a tile store."""

    data_dir: str = _opt(
        "data/histopathologic-cancer-detection",
        "competition folder with train/, test/, train_labels.csv, sample_submission.csv")
    store_dir: str = _opt(
        "", "where the tile store lives (default: DATA_DIR/store)")
    skip_bad: bool = _opt(
        False, "leave unreadable or malformed tiles out (their list is written "
               "beside the store) instead of stopping")
    workers: int = _opt(0, "processes that decode tiles (0: one per core)")
    shard_tiles: int = _opt(
        4096, "tiles per TFRecord shard (4096 tiles = 113 MB; 54 shards for the "
              "competition's train set, enough to split over many workers)")

    @property
    def store_path(self) -> Path:
        return Path(self.store_dir) if self.store_dir else Path(self.data_dir) / "store"


@dataclass(frozen=True)
class FoldSettings:
    """How train tiles are split into folds and how classes are balanced."""

    folds: int = _opt(5, "number of cross-validation folds (at least 2)")
    groups: str = _opt(
        "", "CSV mapping id -> slide (e.g. patch_id_wsi.csv); keeps one slide's "
            "tiles in one fold (StratifiedGroupKFold)")
    balance: str = _opt(
        "weights", "class balance: weights (loss weights from label counts) or "
                   "resample (draw classes equally)", choices=("weights", "resample"))
    max_tiles: int = _opt(0, "use a stratified subset of this many train tiles (0: all)")
    seed: int = _opt(0, "seed for folds, shuffling and augmentation")


@dataclass(frozen=True)
class AugmentSettings:
    """Training-time augmentation. Defaults: the 8 dihedral views on the CPU.

    Colour and stain jitter are cheaper as layers inside the model (they then
    run on the accelerator); ``benchmarks/pipeline.py`` shows both costs.
    """

    dihedral: bool = _opt(True, "random flips and 90-degree rotations (PCam labels do not "
                                "depend on orientation)")
    brightness: float = _opt(0.0, "max brightness shift, fraction of 255 (e.g. 0.1)")
    contrast: float = _opt(0.0, "max contrast change, fraction (e.g. 0.2)")
    saturation: float = _opt(0.0, "max saturation change, fraction (e.g. 0.2)")
    hue: float = _opt(0.0, "max hue shift, fraction of the colour wheel (e.g. 0.04)")
    stain: float = _opt(0.0, "H&E stain jitter strength (e.g. 0.05)")
    zoom: float = _opt(0.0, "max random zoom-in, fraction of the tile (e.g. 0.15)")
    centre_crop: int = _opt(0, "keep only the centre NxN pixels (0: whole tile; the label "
                               "is about the centre 32x32)")


@dataclass(frozen=True)
class InputSettings:
    """How batches are fed."""

    batch_size: int = _opt(128, "tiles per batch (per replica when several devices)")
    cache: str = _opt("auto", "keep the store in RAM: auto (when it fits), yes, no",
                      choices=("auto", "yes", "no"))
    shuffle_buffer: int = _opt(16384, "tiles in the shuffle buffer (16384 tiles = 450 MB)")


def to_dict(settings) -> dict:
    """Settings (possibly nested) as plain JSON-ready data."""
    return dataclasses.asdict(settings)


def from_dict(cls, data: dict):
    """Rebuild settings of type ``cls`` from ``to_dict`` output.

    Unknown keys are refused so that a stale config is noticed, not ignored.
    """
    from pcam.errors import PcamError

    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PcamError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
    kwargs = {}
    for key, value in data.items():
        ftype = names[key].default_factory if dataclasses.is_dataclass(
            names[key].default_factory) else None
        kwargs[key] = from_dict(ftype, value) if ftype else value
    return cls(**kwargs)


def to_json(settings, path: Path) -> None:
    """Write settings as indented JSON, atomically."""
    from pcam.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(to_dict(settings), indent=2) + "\n")


def from_json(cls, path: Path):
    return from_dict(cls, json.loads(Path(path).read_text()))
