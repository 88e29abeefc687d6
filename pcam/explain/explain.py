"""Explain predictions with Grad-CAM: tiles by id or by file, pictures a person can read.

``explain(ExplainSettings)`` takes a run's fold model (or a bare ``.keras``
file), reads the tiles (ids from the tile stores, or image files), computes
Grad-CAM (``pcam.models.gradcam``) and writes into its output folder::

    <name>.png         tile | heat map | overlay, with the probability (and the label when known)
    explanations.csv   name, source, label, prob, evidence_for, peak_row, peak_col, png
    index.html         every picture on one page (no scripts, opens offline)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pcam.errors import SHOW, PcamError, listed
from pcam.io import atomic_write_text, cannot_write
from pcam.report import figures, page
from pcam.runs import RunDir
from pcam.settings import DataSettings, ExplainSettings, RunSettings
from pcam.task import Task


@dataclass
class Tiles:
    """Tiles to explain, as the model takes them."""

    names: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)

    def add(self, name: str, source: str, label: int | None, image: np.ndarray) -> None:
        self.names.append(name)
        self.sources.append(source)
        self.labels.append(label)
        self.images.append(image)


@dataclass(frozen=True)
class Chosen:
    """The model that explains, and what the pictures say about it."""

    path: Path
    config: RunSettings | None
    out: Path
    description: str
    info: object = None  # the model's pcam.runs.ModelInfo, once loaded


def explain(settings: ExplainSettings) -> pd.DataFrame:
    """Write one picture per tile, ``explanations.csv`` and ``index.html``.

    Returns:
        The table written as ``explanations.csv``.
    """
    from dataclasses import replace

    from pcam.calibration import apply_temperature
    from pcam.data.images import list_images
    from pcam.models.gradcam import explainer, gradcam
    from pcam.models.saved import load_model_with_info
    from pcam.runs import resolve_target

    chosen = choose_model(settings)
    if not settings.ids and not settings.images:
        raise PcamError("nothing to explain: give --ids ID ... (tiles of the stores) or "
                        "--images FILE ... (images of any size)")
    model, info = load_model_with_info(chosen.path, remedy="is it a .keras file that Keras "
                                       "saved?" if chosen.config is None else None)
    chosen = replace(chosen, info=info)
    target = resolve_target(settings.target, info)
    side = model.input_shape[1]
    crop = info.centre_crop
    tiles = Tiles()
    if settings.ids:
        read_ids(settings, chosen.config, crop, tiles)
    if settings.images:  # files and folders alike, as predict.py takes them
        read_images(list_images(settings.images), info.tile_size, crop, tiles)
    wrong = [n for n, im in zip(tiles.names, tiles.images) if im.shape[:2] != (side, side)]
    if wrong:  # a store's tiles for a model of another size
        raise PcamError(f"the model takes {side}x{side} tiles; {listed(wrong)} are "
                        f"{'x'.join(map(str, tiles.images[0].shape[:2]))}: is this model "
                        "from a run on these tiles?")
    explain_with = explainer(model)
    heat, probs = gradcam(explain_with, np.stack(tiles.images), target)
    probs = apply_temperature(probs, info.temperature)  # as predict.py gives them
    return write(tiles, heat, probs, chosen, target, explain_with.layer,
                 explain_with.map_shape)


def choose_model(settings: ExplainSettings) -> Chosen:
    """The run's fold model (``--run``, ``--fold``) or a bare file (``--model``)."""
    from pcam.runs import finished_folds, load_run

    if bool(settings.run) == bool(settings.model):
        raise PcamError("give --run runs/NAME (a run's fold model) or --model FILE.keras, "
                        "one of the two")
    if settings.model:
        path = Path(settings.model)
        if not path.is_file():
            raise PcamError(f"--model {path}: no such file; pass a .keras model, such as "
                            "runs/NAME/fold_0/best.keras")
        return Chosen(path, None, Path(settings.out or path.parent / "explain"), path.name)
    run_dir, config = load_run(settings.run)
    n_folds = config.folds.folds
    done = finished_folds(run_dir, n_folds)
    if settings.fold != -1 and not 0 <= settings.fold < n_folds:
        raise PcamError(f"--fold {settings.fold}: run {run_dir} has folds 0 to {n_folds - 1}")
    if not done:
        raise PcamError(f"run {run_dir} has no finished fold yet: finish training first (the "
                        "training command resumes where it stopped)")
    if settings.fold != -1 and settings.fold not in done:
        raise PcamError(f"fold {settings.fold} of run {run_dir} is not finished (finished: "
                        f"{', '.join(map(str, done))}): choose one of those with --fold")
    k = done[0] if settings.fold == -1 else settings.fold
    out = Path(settings.out or run_dir / "explain" / f"fold_{k}")
    return Chosen(RunDir(run_dir).fold(k).model, config, out,
                  f"fold {k} of run {run_dir.resolve().name} ({config.model.backbone})")


def read_ids(settings: ExplainSettings, config: RunSettings | None, crop: int,
             tiles: Tiles) -> None:
    """The tiles with ``settings.ids`` from the train store, else the test store."""
    from pcam.data.pipeline import read_tiles
    from pcam.data.store import open_store
    from pcam.predict.ensemble import data_settings

    if config is not None:
        data = data_settings(config, settings)
    else:
        data = DataSettings(**{k: v for k, v in (("data_dir", settings.data_dir),
                                                 ("store_dir", settings.store_dir)) if v})
    wanted = list(dict.fromkeys(str(i) for i in settings.ids))
    found: dict[str, tuple[str, int | None, np.ndarray]] = {}
    stores = []
    for split in ("train", "test"):
        try:
            store = open_store(data.store_path / split)
        except PcamError:
            continue
        stores.append(store)
        index = store.index().set_index("id")["label"]
        here = [i for i in wanted if i in index.index and i not in found]
        for tile_id, image in zip(here, read_tiles(store, here)):
            found[tile_id] = (str(store.path), int(index[tile_id]) if split == "train" else None,
                              _centre(image, crop))
    if not stores:
        raise PcamError(f"no tile store under {data.store_path} to look the ids up in: build "
                        f"it with python scripts/prepare.py --data-dir {data.data_dir}, or "
                        "pass --data-dir/--store-dir, or explain image files with --images")
    missing = [i for i in wanted if i not in found]
    if missing:
        raise PcamError(f"{len(missing)} id(s) not in the tile stores under {data.store_path}: "
                        f"{listed(missing)}; take ids from train_labels.csv or "
                        "sample_submission.csv")
    for tile_id in wanted:
        source, label, image = found[tile_id]
        tiles.add(tile_id, source, label, image)


def read_images(paths: list[Path], tile_size: int, crop: int, tiles: Tiles) -> None:
    """Decode image files into RGB uint8 tiles; report every unusable file at once.

    An image is made a tile the way the run's store made them (centre-cropped
    to a square, resized to ``tile_size``), then fed as validation fed
    tiles (a centre crop when the run trained on them).
    """
    from pcam.data.images import decode_image, to_tile

    problems = []
    for path in paths:
        image, problem = decode_image(path)
        if not problem:
            image = _centre(to_tile(image, tile_size), crop)
        if problem:
            problems.append(f"{path} {problem}")
        else:
            tiles.add(path.stem, str(path), None, image)
    if problems:
        raise PcamError(f"{len(problems)} image file(s) cannot be explained: "
                        + "; ".join(problems[:SHOW]) + (" ..." if len(problems) > SHOW else ""))


def write(tiles: Tiles, heat: np.ndarray, probs: np.ndarray, chosen: Chosen,
          target: int | None, layer: str, map_shape: tuple[int, int]) -> pd.DataFrame:
    """The pictures, ``explanations.csv`` and ``index.html`` into ``chosen.out``.

    Args:
        target: the class index whose evidence is shown, or None (each
            tile's predicted class).
    """
    from tqdm.auto import tqdm

    info = chosen.info
    classes = info.classes
    out = chosen.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cannot_write(out, err) from None
    how = f"Grad-CAM on {layer} ({map_shape[0]}x{map_shape[1]} feature map)"
    full = np.asarray(probs)  # (N, K) from gradcam for both tasks
    predictions = Task(tuple(classes)).predict(full, info.threshold)
    rows, shown = [], []
    files = _file_names(tiles.names)
    for i in tqdm(range(len(tiles.names)), unit="tile", desc="explain",
                  disable=len(tiles.names) < 10):
        name, label = tiles.names[i], tiles.labels[i]
        predicted = int(predictions[i])
        said = (f"p({classes[1]}) = {full[i, 1]:.3f}" if info.binary
                else f"{classes[predicted]} (p = {full[i, predicted]:.3f})")
        evidence_for = classes[predicted if target is None else target]
        found = heat[i].max() > 0
        peak = np.unravel_index(int(np.argmax(heat[i])), heat[i].shape) if found else (None, None)
        title = (f"{name}: {said}" + ("" if label is None else f", label {classes[label]}")
                 + f"; heat map: evidence for {evidence_for}" + ("" if found else " (none found)"))
        fig = figures.explanation(tiles.images[i], heat[i], title,
                                  f"{chosen.description}; {how}", label_region=info.label_region)
        path = figures.save(fig, out / files[i])
        rows.append({"name": name, "source": tiles.sources[i],
                     "label": None if label is None else classes[label],
                     "predicted": classes[predicted],
                     **{f"prob_{c}": float(full[i, k]) for k, c in enumerate(classes)},
                     "evidence_for": evidence_for, "peak_row": peak[0], "peak_col": peak[1],
                     "png": files[i]})
        shown.append(page.Figure(path, name, f"source: {tiles.sources[i]}"))
    columns = (["name", "source", "label", "predicted"] + [f"prob_{c}" for c in classes]
               + ["evidence_for", "peak_row", "peak_col", "png"])
    table = pd.DataFrame(rows, columns=columns).astype({"peak_row": "Int64", "peak_col": "Int64"})
    atomic_write_text(out / "explanations.csv", table.to_csv(index=False))
    region = (f" The outlined square is the centre {info.label_region}x{info.label_region} "
              "region that decides a label." if info.label_region else "")
    whose = "each tile's predicted class" if target is None else f"{classes[target]}"
    intro = (f"{len(rows)} tile(s) explained by {chosen.description}; {how}, evidence for "
             f"{whose}. Each heat map is scaled to its own strongest evidence (1).{region}")
    atomic_write_text(out / "index.html", page.gallery_page(
        f"Grad-CAM: {chosen.description}", intro, shown))
    print(f"explained {len(rows)} tile(s) with {chosen.description} ({how}): "
          f"{out / 'index.html'}", flush=True)
    return table


def _file_names(names: list[str]) -> list[str]:
    """A PNG name per tile: its name made safe for file systems, unique."""
    used: dict[str, int] = {}
    files = []
    for name in names:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "tile"
        used[safe] = used.get(safe, 0) + 1
        files.append(f"{safe}.png" if used[safe] == 1 else f"{safe}-{used[safe]}.png")
    return files


def _centre(image: np.ndarray, size: int) -> np.ndarray:
    """The tile as validation feeds it: the pipeline's deterministic ops (a
    centre crop of ``size``; none when 0)."""
    from pcam.data.augment import compose, eval_ops
    from pcam.settings import AugmentSettings

    op = compose(eval_ops(AugmentSettings(centre_crop=size)))
    return np.asarray(op(image[None], None))[0]


