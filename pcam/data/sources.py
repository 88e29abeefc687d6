"""Where a dataset's facts are read, once: its classes, tile size and files.

Two layouts are recognised under ``--data-dir``:

* **Kaggle** (``pcam.data.competition``): ``train/*.tif`` + ``train_labels.csv``,
  ``test/*.tif`` + ``sample_submission.csv``. Classes ``normal``/``tumour``,
  96x96 tiles, a label about the centre 32x32.
* **Class folders**: ``ROOT/<class>/<image>``, or ``ROOT/train/<class>/...``
  with an optional ``ROOT/test/`` (class folders, labelled, or loose
  images, unlabelled). TIFF, PNG, JPEG or BMP of any size; the class names
  are the folder names, sorted (Keras' convention) unless ``--classes``
  orders them.

Everything downstream (store manifest, run config, model.json, reports)
takes these facts from the ``Source`` made here. Every image that cannot be
used is found while scanning (headers only, no pixels decoded), before any
long work.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from pcam import places
from pcam.data import competition, images
from pcam.data.competition import Split
from pcam.errors import SHOW, PcamError
from pcam.settings import DataSettings


@dataclass(frozen=True)
class Source:
    """A dataset as found on disk.

    Attributes:
        kind: "kaggle" or "folders".
        classes: class names; label i is ``classes[i]``. With two classes,
            ``classes[1]`` is the positive one.
        tile_size: side of the square tiles the store holds.
        label_region: side of the centre square that decides a label (PCam:
            32), 0 when the whole image does.
        train: the labelled images to train on.
        test: the images to predict (labelled or not), or None.
        resize: whether images of another size are cropped and resized to
            the tile size (class folders), or refused (Kaggle's tiles must be 96x96).
        bad: (path, problem) of images left out by the scan (``--skip-bad``).
        summary: one line saying what was found.
        source_side: the shorter side of the images most of the tiles were
            made from (their scale: an image twice that size holds several
            tiles' worth of tissue); 0 when unknown.
        mpp: microns per pixel of those images (PCam: 0.972; class folders:
            what ``--mpp`` says); 0 when unknown.
    """

    kind: str
    classes: tuple[str, ...]
    tile_size: int
    label_region: int
    train: Split
    test: Split | None
    resize: bool
    bad: tuple = ()
    summary: str = ""
    source_side: int = 0
    mpp: float = 0.0

    @property
    def positive(self) -> str:
        return self.classes[1] if len(self.classes) == 2 else ""


def read_source(data: DataSettings) -> Source:
    """Recognise and scan ``data.data_dir``: a Kaggle layout or class folders.

    Raises:
        PcamError: the folder is missing or neither layout, or (without
            ``skip_bad``) some image cannot be used: every one is named.
    """
    root = Path(data.data_dir)
    if not root.is_dir():
        what = "a file, not a folder" if root.exists() else "no such folder"
        raise PcamError(f"--data-dir {root}: {what}; give the folder that holds your images "
                        "(one folder per class, or the competition's), or try the bundled "
                        "demo (python scripts/train.py --demo), or download the competition "
                        "(python scripts/download.py)")
    kind = data.source if data.source != "auto" else detect(root)
    return _kaggle(root, data) if kind == "kaggle" else _folders(root, data)


def detect(root: Path) -> str:
    """"kaggle" when ``root`` holds the competition's CSVs, else "folders"."""
    csvs = (competition.TRAIN_CSV, competition.TEST_CSV)
    return "kaggle" if any((root / name).is_file() for name in csvs) else "folders"


def _kaggle(root: Path, data: DataSettings) -> Source:
    classes = competition.CLASSES
    if data.classes and tuple(data.classes) != classes:
        raise PcamError(f"--classes {','.join(data.classes)}: the Kaggle layout's classes are "
                        f"{','.join(classes)} (from train_labels.csv's 0/1)")
    if data.positive and data.positive != classes[1]:
        raise PcamError(f"--positive {data.positive}: in the Kaggle layout the positive class "
                        f"is {classes[1]} (label 1)")
    size = competition.TILE_SHAPE[0]
    if data.tile_size and data.tile_size != size:
        raise PcamError(f"--tile-size {data.tile_size}: the competition's tiles are {size}x{size}; "
                        "leave --tile-size out (resize inside the model with --image-size)")
    train, test = competition.read_competition(root)
    counts = Counter(train.labels)
    summary = (f"Kaggle layout: {len(train.ids):,} train tiles ({classes[0]} {counts[0]:,}, "
               f"{classes[1]} {counts[1]:,}), {len(test.ids):,} test tiles, {size}x{size} TIFF")
    return Source("kaggle", classes, size, competition.LABEL_REGION, train, test,
                  resize=False, summary=summary, source_side=size, mpp=data.mpp or competition.MPP)


# --- class folders ------------------------------------------------------------------

def subfolders(path: Path) -> list[str]:
    """Names of the folders in ``path`` that are not hidden and not a pcam tile
    store (an earlier pcam wrote ``DATA_DIR/store/``), sorted: the class names."""
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not images.is_hidden(e.name)
                      and not places.is_store(Path(e.path)))


def images_under(folder: Path) -> tuple[list[str], list[str]]:
    """Image files under ``folder`` (recursively, sorted, relative paths) and the
    other files found there (not images: left out, and said so)."""
    found, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not images.is_hidden(d))
        for name in sorted(filenames):
            if images.is_hidden(name):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), folder)
            (found if images.is_image_name(name) else others).append(rel.replace(os.sep, "/"))
    return found, others


def _folders(root: Path, data: DataSettings) -> Source:
    train_root = root / "train" if (root / "train").is_dir() and subfolders(root / "train") \
        else root
    present = subfolders(train_root)
    classes = _choose_classes(train_root, present, data)
    per_class, others, empty = {}, [], []
    for c in classes:
        files, not_images = images_under(train_root / c)
        per_class[c] = [f"{c}/{f}" for f in files]
        others += [f"{c}/{f}" for f in not_images]
        if not files:
            empty.append(c)
    if empty:
        raise PcamError(f"{train_root}: class folder(s) {', '.join(empty)} hold no images "
                        f"({', '.join(images.IMAGE_SUFFIXES)}); add images or leave them out "
                        "with --classes")
    ids = [i for c in classes for i in per_class[c]]
    labels = [k for k, c in enumerate(classes) for _ in per_class[c]]
    train = Split("train", train_root, tuple(ids), tuple(labels), suffix="")
    test = _test_split(root, train_root, classes)

    splits = [s for s in (train, test) if s is not None]
    sizes, bad, formats = _probe_all(splits)
    if bad and not data.skip_bad:
        raise PcamError(f"{len(bad)} image(s) cannot be used: "
                        + "; ".join(f"{p} {why}" for p, why in bad[:SHOW])
                        + (" ..." if len(bad) > SHOW else "")
                        + ". Replace or remove them, or pass --skip-bad to leave them out")
    if bad:
        left_out = {str(p) for p, _ in bad}
        splits = [_without(s, left_out) for s in splits]
        train, test = splits[0], (splits[1] if len(splits) > 1 else None)
    tile_size, size_note = _tile_size(sizes, data.tile_size, data.max_tile_size)
    counts = Counter(train.labels)
    for k, c in enumerate(classes):
        if not counts[k]:
            raise PcamError(f"class {c}: every image in {train_root / c} was left out as "
                            "unusable; a class needs images to train on")
    summary = (f"class folders: {len(classes)} classes ("
               + ", ".join(f"{c} {counts[k]:,}" for k, c in enumerate(classes)) + "), "
               + size_note + ", " + "/".join(sorted(formats))
               + (f"; positive class: {classes[1]}" if len(classes) == 2 else "")
               + (f"; test: {len(test.ids):,} images" + ("" if test.labelled else " (unlabelled)")
                  if test is not None else "")
               + (f"; {len(bad)} unusable image(s) left out" if bad else "")
               + (f"; {len(others)} non-image file(s) ignored (e.g. {others[0]})" if others else ""))
    (common, _), = sizes.most_common(1) if sizes else [((tile_size, tile_size), 0)]
    return Source("folders", classes, tile_size, 0, train, test, resize=True,
                  bad=tuple(bad), summary=summary, source_side=min(common), mpp=data.mpp)


def _choose_classes(train_root: Path, present: list[str], data: DataSettings) -> tuple[str, ...]:
    if data.classes:
        missing = [c for c in data.classes if c not in present]
        if missing:
            raise PcamError(f"--classes names {', '.join(missing)}, not a folder in {train_root} "
                            f"(its class folders: {', '.join(present) or 'none'})")
        if len(set(data.classes)) < len(data.classes):
            raise PcamError(f"--classes {','.join(data.classes)}: a class is named twice")
        classes = list(data.classes)
    else:
        classes = present
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise PcamError(f"{train_root}: need at least two class folders (ROOT/<class>/<image>), "
                        f"found {found}")
    if data.positive:
        if len(classes) != 2:
            raise PcamError(f"--positive {data.positive}: a positive class is chosen between two "
                            f"classes; this dataset has {len(classes)}")
        if data.positive not in classes:
            raise PcamError(f"--positive {data.positive} is not a class; choose "
                            f"{' or '.join(classes)}")
        # The positive class is class 1: its probability is the one a
        # two-class model outputs and the one a ROC curve is drawn for.
        classes = [c for c in classes if c != data.positive] + [data.positive]
    return tuple(classes)


def _test_split(root: Path, train_root: Path, classes) -> Split | None:
    """ROOT/test/ beside ROOT/train/: class folders (labelled) or loose images."""
    test_root = root / "test"
    if train_root == root or not test_root.is_dir():
        return None
    sub = subfolders(test_root)
    if sub:
        unknown = [c for c in sub if c not in classes]
        if unknown:
            raise PcamError(f"{test_root}: class folder(s) {', '.join(unknown)} are not among "
                            f"the training classes ({', '.join(classes)})")
        pairs = [(f"{c}/{f}", classes.index(c)) for c in sub
                 for f in images_under(test_root / c)[0]]
    else:
        pairs = [(f, -1) for f in images_under(test_root)[0]]
    if not pairs:
        return None
    return Split("test", test_root, tuple(p for p, _ in pairs), tuple(y for _, y in pairs),
                 suffix="")


def _probe_all(splits) -> tuple[Counter, list, set]:
    """Sizes (height, width) -> count over all images, the unusable ones, and formats seen."""
    sizes, bad, formats = Counter(), [], set()
    for split in splits:
        for tile_id in split.ids:
            path = split.path(tile_id)
            size, problem = images.probe(path)
            if problem:
                bad.append((path, problem))
            else:
                sizes[size] += 1
                formats.add(_format(path.suffix))
    return sizes, bad, formats


def _format(suffix: str) -> str:
    suffix = suffix.lower()
    return {".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(
        suffix, suffix.lstrip(".").upper())


def _without(split: Split, left_out: set[str]) -> Split:
    keep = [(i, y) for i, y in zip(split.ids, split.labels) if str(split.path(i)) not in left_out]
    return replace(split, ids=tuple(i for i, _ in keep), labels=tuple(y for _, y in keep))


def _tile_size(sizes: Counter, wanted: int, cap: int = 0) -> tuple[int, str]:
    """The store's tile size and a few words on how images become tiles.

    ``wanted`` (``--tile-size``) wins; else the images' own size when they
    share one square size, down to ``cap`` (``--max-tile-size``) when larger;
    else ``cap`` when given."""
    shown = ", ".join(f"{w}x{h} ({n:,})" for (h, w), n in sizes.most_common(SHOW)) + (
        f", ... ({len(sizes)} sizes)" if len(sizes) > SHOW else "")
    if not wanted:
        if len(sizes) == 1:
            (h, w), = sizes
            if h == w and not (cap and h > cap):
                return h, f"{w}x{h}"
        if cap:
            return _tile_size(sizes, cap)
        raise PcamError(f"the images are not all one square size ({shown}); pass --tile-size N "
                        "(or --max-tile-size N): each image is then centre-cropped to a square "
                        "and resized to NxN")
    if wanted < 8:
        raise PcamError(f"--tile-size {wanted}: give a side of at least 8 pixels")
    cropped = sum(n for (h, w), n in sizes.items() if h != w)
    resized = sum(n for (h, w), n in sizes.items() if min(h, w) != wanted)
    note = f"tiles {wanted}x{wanted}"
    if cropped or resized:
        note += (f" ({cropped:,} image(s) centre-cropped to a square, {resized:,} resized; "
                 f"sizes found: {shown})")
    return wanted, note


# --- groups ------------------------------------------------------------------------------

def groups_from_pattern(ids, pattern: str) -> list[str]:
    """The group (patient, slide) of each id: the first group of ``pattern``
    found in its file name (``re.search``).

    Raises:
        PcamError: a bad pattern, a pattern without a group, or file names it
            does not match (some named).
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise PcamError(f"--group-pattern {pattern!r} is not a regular expression ({err})") \
            from None
    if regex.groups < 1:
        raise PcamError(f"--group-pattern {pattern!r} has no (group): put the part that names "
                        r"the patient or slide in parentheses, e.g. 'CRC-Prim-HE-(\d+)'")
    groups, unmatched = [], []
    for tile_id in ids:
        found = regex.search(Path(str(tile_id)).name)
        if found is None or found.group(1) is None:
            unmatched.append(tile_id)
        else:
            groups.append(found.group(1))
    if unmatched:
        what = "no file name" if len(unmatched) == len(ids) else f"{len(unmatched)} file name(s)"
        raise PcamError(f"--group-pattern {pattern!r} matches {what}, e.g. "
                        f"{', '.join(map(str, unmatched[:3]))}; every image needs a group")
    return groups
