"""The pcam app: upload images, see a run's answer, its Grad-CAM and heat maps.

    pcam-app --run runs/NAME                    # or: pcam-app (runs found under runs/)
    pcam-app --run runs/NAME/fold_0/best.keras  # one model file (its model.json beside it)
    streamlit run pcam/app.py -- --run runs/NAME

Streamlit lays out what pcam's library computes: ``pcam.data.images.decode_bytes``
reads the uploads (the same decoder as every other command),
``pcam.predict.ensemble.predict_tiles`` gives the probabilities (fold ensemble x
test-time views, all uploads in one model call), ``pcam.models.gradcam`` the
evidence, ``pcam.explain.heatmap`` the maps of images larger than a tile. Nothing
here computes on pixels itself.

Streamlit runs this whole file again on every upload and every click, so
what is slow is computed once and kept: the models (and their traced
graphs) per run and fold choice (``st.cache_resource``); each upload's
decoded pixels, probabilities, Grad-CAM and heat map per (file bytes, run,
folds, test-time views, Grad-CAM class) (``st.cache_data``). Changing the
Grad-CAM class recomputes only the Grad-CAMs; opening the page again with
the same files recomputes nothing (``benchmarks/app.py``).
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import io
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pcam.errors import PcamError
from pcam.places import LATEST
from pcam.runs import RunDir

NOTE = "For research and teaching, not for diagnosis."
ENSEMBLE = "all finished folds (ensemble)"
PREDICTED = "predicted class"
# A tool, not a dev server: no "Deploy" button or developer menu, no telemetry.
SERVER_OPTIONS = ("--server.headless", "true", "--browser.gatherUsageStats", "false",
                  "--client.toolbarMode", "viewer")
TILE_WIDTH = 224  # px on the page for a tile-sized upload (a 96 px tile blown up to a column is a blur)
PANEL = 192  # px of each Grad-CAM picture: a 96 px tile at 2x, three side by side fit a phone
KEEP = 256  # uploads' results kept per cached step (a Grad-CAM PNG is ~0.1 MB)


# --- the launcher ----------------------------------------------------------------------

def main(argv=None) -> None:
    """``pcam-app [--run R] [--runs-dir D] [--port P]``: serve this page (``streamlit run``)."""
    from pcam.commands.cli import run

    run(launch, argv)


USAGE = """Open a trained run in your browser: upload H&E images (any size), see each
one's class probabilities, where the model looked (Grad-CAM), and a heat map of
images larger than a tile. For research and teaching, not for diagnosis.

    pcam-app --run runs/latest                 # the last run trained
    pcam-app                                   # choose among the runs under runs/
    pcam-app --run runs/NAME/fold_0/best.keras # one model file (model.json beside it)

Then open the address it prints (http://localhost:8501). The first page takes
up to a minute while TensorFlow and the models load ("loading the models ...");
later uploads answer in about a second. Ctrl-C stops it."""


def launch(argv=None) -> int:
    """Check ``--run``, then run the Streamlit server until it stops; its exit status."""
    parser = argparse.ArgumentParser(prog="pcam-app", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="", help="run folder, or a model file (best.keras "
                        "with its model.json beside it), to open (default: choose one of "
                        "those under --runs-dir)")
    parser.add_argument("--runs-dir", default="runs", help="folder searched for runs")
    parser.add_argument("--port", type=int, default=8501, help="port to serve on")
    parser.add_argument("--address", default="", help="address to serve on (default: "
                        "Streamlit's, every interface; 127.0.0.1: this machine only)")
    args = parser.parse_args(argv)
    if args.run:
        finished(args.run)  # a wrong --run is told here, in one line, not on a page later
    cmd = [sys.executable, "-m", "streamlit", "run", __file__, "--server.port", str(args.port),
           *(("--server.address", args.address) if args.address else ()),
           *SERVER_OPTIONS, "--", "--run", args.run, "--runs-dir", args.runs_dir]
    server = subprocess.Popen(cmd)
    # This process only launches: a SIGTERM to it (a service manager, a test)
    # stops the server too instead of leaving it serving, orphaned.
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        return server.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the server too (one process group)
        return server.wait()


def page_args(argv) -> argparse.Namespace:
    """The options after ``--`` of ``streamlit run pcam/app.py -- ...`` (unknown ones ignored)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run", default="")
    parser.add_argument("--runs-dir", default="runs")
    return parser.parse_known_args(argv)[0]


def find_runs(runs_dir: str | Path) -> list[str]:
    """Run folders under ``runs_dir`` with at least one finished fold, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if RunDir(p).config.is_file()
             and any(p.glob("fold_*/metrics.json")) and p.name != LATEST]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def finished(run: str) -> list[int]:
    """The run's finished folds; [] for a model file (``best.keras`` + its ``model.json``).

    Raises:
        PcamError: no run folder or model file at ``run``, or a run without
            a finished fold.
    """
    from pcam.runs import load_run, resolve_folds

    if is_model_file(run):
        if not Path(run).is_file():
            raise PcamError(f"{run}: no such model file")
        return []
    run_dir, config = load_run(run)
    return resolve_folds(run_dir, config)


def is_model_file(run: str) -> bool:
    return str(run).endswith(".keras")


# --- what the page shows, computed (no Streamlit) -----------------------------------

@dataclass(frozen=True)
class Loaded:
    """A run's models for one fold choice, loaded once (``st.cache_resource``).

    Attributes:
        ensemble: ``(model, ModelInfo)`` per fold (``pcam.predict.ensemble.load_ensemble``).
        explain: Grad-CAM of the first of them (``pcam.models.gradcam.explainer``).
    """

    ensemble: list
    explain: object

    @property
    def info(self):
        return self.ensemble[0][1]


def load(run: str, folds: tuple) -> Loaded:
    """The models of ``folds`` of ``run`` (``(-1,)``: ``run`` is a model file)."""
    from pcam.models.gradcam import explainer
    from pcam.models.saved import load_model_with_info
    from pcam.predict.ensemble import load_ensemble

    ensemble = ([load_model_with_info(Path(run))] if is_model_file(run)
                else load_ensemble(Path(run), folds))
    # Grad-CAM splits the first model's own layers: no second copy of its weights.
    return Loaded(ensemble, explainer(ensemble[0][0]))


def probabilities(loaded: Loaded, images: list, views: tuple):
    """Every image's answer (``pcam.predict.images.ImageAnswers``): an image two tiles wide
    and high or more as the tiles that cover it, as predict.py answers it; all the
    tiles in one model call per fold."""
    from pcam.predict.ensemble import predict_tiles
    from pcam.predict.images import answer_images, images_as_tiles

    info = loaded.info
    tiles, owner = images_as_tiles(images, info.tile_size, info.window)
    return answer_images(predict_tiles(loaded.ensemble, tiles, views, augment(info), 256),
                         owner, len(images), info.threshold)


def explained(loaded: Loaded, image, target: str) -> tuple[bytes, float, float]:
    """One image's Grad-CAM pictures (``pcam.report.figures.explanation_panels``) as
    PNG bytes, the first model's probability of ``target`` and the raw
    map's peak (0: no evidence anywhere)."""
    import numpy as np

    from pcam.calibration import apply_temperature
    from pcam.data.augment import compose, eval_ops
    from pcam.models.gradcam import gradcam
    from pcam.predict.ensemble import as_tiles
    from pcam.report.figures import explanation_panels

    info = loaded.info
    tile = as_tiles([image], info.tile_size)
    fed = np.asarray(compose(eval_ops(augment(info)))(tile, None)) if info.centre_crop else tile
    # K classes: each image's own predicted class by default, as explain.py does.
    index = None if target == PREDICTED else info.classes.index(target)
    heat, probs = gradcam(loaded.explain, fed, index)
    probs = apply_temperature(probs, info.temperature)  # as the answer's probabilities are
    p_target = float(np.max(probs[0]) if index is None else probs[0][index])
    picture = explanation_panels(fed[0], heat[0], info.label_region, side=PANEL)
    return png(picture), p_target, float(heat[0].max())


def heat_map_png(loaded: Loaded, image, views: tuple, name: str) -> bytes:
    """The heat map over an image larger than a tile, as a PNG (``pcam.explain.heatmap``)."""
    from pcam.explain.heatmap import heat_map, heat_map_figure

    heat = heat_map(loaded.ensemble, image, loaded.info, views=views)
    return figure_png(heat_map_figure(heat, image, name))


def png(picture) -> bytes:
    """An RGB uint8 array as PNG bytes, compressed lightly: on tissue, zlib's
    level 1 makes a file 1% larger than its default level 6, 3x faster
    (0.03 s against 0.1 s for a 608x192 px Grad-CAM picture on a busy CPU)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (for the page and its download button), then closed."""
    import matplotlib.pyplot as plt

    from pcam.report.figures import DPI

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def augment(info):
    """The evaluation-time settings the models were trained with (their centre crop)."""
    from pcam.settings import AugmentSettings

    return AugmentSettings(centre_crop=info.centre_crop)


def digest(data: bytes) -> str:
    """The key an upload's results are kept under: its bytes, not its name."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --- the page (Streamlit) --------------------------------------------------------------
# Under `streamlit run` the cached forms of the steps above are made at the
# bottom of this file; their parameters starting with "_" are not hashed
# (the digest beside them stands for them).

def page() -> None:  # pragma: no cover - run by streamlit (tested through AppTest and a browser)
    """The whole page: sidebar, uploads, the table, one block per image."""
    import streamlit as st

    import pcam
    from pcam import quiet

    st.set_page_config(page_title="pcam", page_icon="🔬", layout="wide")
    args = page_args(sys.argv[1:])
    st.title("pcam: tile classifier")
    st.caption(f"⚠️ {NOTE} Upload H&E images; a run trained by pcam answers.")
    # The first page of a session imports TensorFlow: 10-50 s on a small CPU,
    # which looked like a hung page; say what is happening while it does.
    quiet.install(pcam.USER_TF_LOG_LEVEL)  # the server's terminal: no C++ start-up log
    with st.spinner("starting TensorFlow (up to a minute the first time) ..."):
        from pcam.predict.images import probability_table, with_areas
        from pcam.predict.tta import TTA_VIEWS

    run, folds, tta = choose_run(args)
    try:
        loaded = _load(run, folds)
    except PcamError as err:
        st.error(str(err))
        st.stop()
    info = loaded.info
    target = choose_target(info)

    uploads = st.file_uploader("Images (TIFF, PNG, JPEG; any size)", accept_multiple_files=True)
    if not uploads:
        st.info("Upload one or more images to see the model's answer.")
        return
    names, images, keys = read_uploads(uploads)
    if not images:
        return
    views = TTA_VIEWS[8 if tta else 1]
    # Everything is computed before anything below is drawn: the browser redraws
    # as elements arrive, and on a small CPU its drawing and the models slow
    # each other down (benchmarks/app.py).
    answers = _probabilities(run, folds, views, tuple(keys), _images=images)
    cams = [attempt(_explained, run, folds, target, key, _image=image)
            for key, image in zip(keys, images)]
    maps = [attempt(_heat_map, run, folds, views, key, name, _image=image)
            if min(image.shape[:2]) > info.window else None  # larger than a training image
            for key, name, image in zip(keys, names, images)]

    table = with_areas(probability_table(names, answers.probs, info.classes, info.threshold),
                       answers, info.classes)
    show_table(table, info)
    which = f"fold {folds[0]}" if folds[0] >= 0 else Path(run).name
    for i, name in enumerate(names):
        show_upload(i, name, images[i], table.iloc[i], cams[i], maps[i], info, target, which)


def attempt(step, *args, **kwargs) -> tuple:
    """``(step(...), "")``, or ``(None, the PcamError's message)``: one
    image's problem is told beside it, and the others still show."""
    try:
        return step(*args, **kwargs), ""
    except PcamError as err:
        return None, str(err)


def choose_run(args) -> tuple[str, tuple, bool]:  # pragma: no cover - streamlit
    """The sidebar's run (or model file), folds and test-time views; stops the page
    with its reason when there is no usable run."""
    import streamlit as st

    with st.sidebar:
        st.header("Model")
        choices = list(dict.fromkeys([r for r in [args.run] if r] + find_runs(args.runs_dir)))
        picked = st.selectbox("Run", choices, index=0) if choices else ""
        run = st.text_input("or a run folder, or a model file", value="",
                            placeholder="runs/NAME or .../best.keras").strip() or picked
        if not run:
            st.warning(f"No run found under {args.runs_dir}/: train one with scripts/train.py, "
                       "or give its folder here.")
            st.stop()
        try:
            folds_done = finished(run)
        except PcamError as err:
            st.error(str(err))
            st.stop()
        if folds_done:
            fold_choice = st.selectbox("Folds", [ENSEMBLE] + [f"fold {k}" for k in folds_done])
            folds = (tuple(folds_done) if fold_choice == ENSEMBLE
                     else (int(fold_choice.split()[1]),))
        else:  # a model file: itself (its model.json beside it)
            folds = (-1,)
        # On by default, as predict.py: the threshold was chosen on 8-view OOF predictions.
        tta = st.toggle("Test-time augmentation (8 views)", value=True)
    return run, folds, tta


def choose_target(info) -> str:  # pragma: no cover - streamlit
    """The sidebar's Grad-CAM class, and what the models are."""
    import streamlit as st

    with st.sidebar:
        # As explain.py: the positive class of two, else each image's predicted class.
        options = list(info.classes) if info.binary else [PREDICTED, *info.classes]
        default = info.classes.index(info.positive) if info.binary else 0
        target = st.selectbox("Grad-CAM shows evidence for", options, index=default)
        st.caption(f"{len(info.classes)} classes · {info.tile_size} px tiles · "
                   f"{info.backbone or 'model'}"
                   + (f" · threshold {info.threshold:.3f}" if info.binary else ""))
    return target


def read_uploads(uploads) -> tuple[list, list, list]:  # pragma: no cover - streamlit
    """Names, decoded pixels and digests of the uploads that are images; an
    error line for each of the others."""
    import streamlit as st

    names, images, keys = [], [], []
    for upload in uploads:
        data = upload.getvalue()
        key = digest(data)
        image, problem = _decode(key, _data=data)
        if problem:
            st.error(f"{upload.name} {problem}; skipped.")
        else:
            names.append(upload.name)
            images.append(image)
            keys.append(key)
    return names, images, keys


def show_table(table, info) -> None:  # pragma: no cover - streamlit
    """Every upload's probabilities, and the table as a CSV to download."""
    import streamlit as st

    st.subheader("Results")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"path": st.column_config.TextColumn("file", width="small"),
                                **{c: st.column_config.NumberColumn(format="%.6f")
                                   for c in info.classes}})
    st.download_button("Download the table (CSV)", table.to_csv(index=False, float_format="%.6g"),
                       file_name="pcam-predictions.csv", mime="text/csv")


def show_upload(i: int, name: str, image, row, cam: tuple, heat: tuple | None, info,
                target: str, which: str) -> None:  # pragma: no cover - streamlit
    """One upload's block: its answer on the left; its Grad-CAM (and heat map) on the right."""
    import streamlit as st

    st.divider()
    left, right = st.columns([1, 2], gap="large")
    with left:
        show_answer(name, image, row, info)
    with right:
        show_gradcam(i, name, cam, target, which, info.label_region)
    if heat is not None:  # the page's whole width: in a column it was too small to read
        show_heat_map(i, name, heat)


def show_answer(name: str, image, row, info) -> None:  # pragma: no cover - streamlit
    """One upload's name, picture, predicted class and a bar per class."""
    import numpy as np
    import streamlit as st

    st.markdown(f"#### {name}")
    small = max(image.shape[:2]) <= TILE_WIDTH
    st.image(image, caption=f"{image.shape[1]}x{image.shape[0]} px",
             width=TILE_WIDTH if small else "stretch")
    st.markdown(f"Predicted: **{row['predicted']}**"
                + (f" (threshold {info.threshold:.3f})" if info.binary else ""))
    shown = info.positive if info.binary else row["predicted"]
    st.markdown(f"p({shown}) = `{row[shown]:.6f}`")
    if row["tiles"] > 1:  # answered as the tiles that cover it
        areas = sorted(((row[f"area_{c}"], c) for c in info.classes), reverse=True)
        st.markdown(f"**{row['tiles']} tiles** of {info.window} px"
                    + (f": {info.positive} in {row[f'area_{info.positive}']:.0%} of them; "
                       f"p({info.positive}) above is the highest tile's" if info.binary
                       else ": " + ", ".join(f"{c} {a:.0%}" for a, c in areas if a > 0)
                       + "; the probabilities are the tiles' mean"))
    for c in info.classes:
        st.progress(float(np.clip(row[c], 0, 1)), text=f"{c}: {row[c]:.4f}")


def show_gradcam(i: int, name: str, cam: tuple, target: str, which: str,
                 region: int) -> None:  # pragma: no cover - streamlit
    """One upload's Grad-CAM pictures (``explained``), what they show, and a download."""
    import streamlit as st

    value, problem = cam
    if problem:
        st.error(f"{name}: {problem}")
        return
    picture, p_target, peak = value
    st.markdown(f"Grad-CAM for **{target}** ({which}; its probability of {target}: "
                f"{p_target:.4f})")
    st.image(picture, width="content")
    st.caption("tile · heat map, blue 0 (no evidence) to red 1 (the strongest) · overlay"
               + (f"; white square: the centre {region} px, which decides the label"
                  if region else ""))
    if peak == 0:
        st.caption(f"The map is empty: this model found no evidence for {target} "
                   "anywhere in this image.")
    st.download_button("Grad-CAM (PNG)", picture, file_name=f"{Path(name).stem}-gradcam.png",
                       mime="image/png", key=f"cam-{i}")


def show_heat_map(i: int, name: str, heat: tuple) -> None:  # pragma: no cover - streamlit
    """The heat map over an upload larger than a tile (``heat_map_png``), and its download."""
    import streamlit as st

    picture, problem = heat
    if problem:
        st.error(f"{name}: {problem}")
        return
    st.markdown("Heat map over the whole image")
    st.image(picture, width="stretch")
    st.download_button("Heat map (PNG)", picture, file_name=f"{Path(name).stem}-heatmap.png",
                       mime="image/png", key=f"map-{i}")


def _cached_steps():  # pragma: no cover - streamlit
    """The page's steps as Streamlit keeps them, for ``page``'s module globals."""
    import streamlit as st

    from pcam.data.images import decode_bytes

    @st.cache_resource(show_spinner="loading the models ...", max_entries=4)
    def load_models(run: str, folds: tuple) -> Loaded:
        loaded = load(run, folds)
        # Streamlit runs a full garbage collection after every rerun; with
        # TensorFlow and the models in memory (~430,000 objects) it holds the
        # interpreter 0.22-0.5 s, and the browser's requests for the page's
        # pictures wait behind it (an upload's result showed at 0.85-1.0 s
        # instead of ~0.3 s). Frozen objects are left out of collections;
        # these live as long as the server anyway.
        gc.freeze()
        return loaded

    @st.cache_data(show_spinner=False, max_entries=KEEP)
    def decode(key: str, _data: bytes):
        return decode_bytes(_data)

    @st.cache_data(show_spinner=False, max_entries=KEEP)
    def probs(run: str, folds: tuple, views: tuple, keys: tuple, _images: list):
        return probabilities(load_models(run, folds), _images, views)

    @st.cache_data(show_spinner=False, max_entries=KEEP)
    def gradcam(run: str, folds: tuple, target: str, key: str, _image):
        return explained(load_models(run, folds), _image, target)

    @st.cache_data(show_spinner="drawing the heat map ...", max_entries=KEEP // 4)
    def heat(run: str, folds: tuple, views: tuple, key: str, name: str, _image):
        return heat_map_png(load_models(run, folds), _image, views, name)

    return load_models, decode, probs, gradcam, heat


if __name__ == "__main__":
    # Under `streamlit run` (and AppTest) this file is __main__: lay out the page.
    # What is cached stays across reruns and browser sessions.
    _load, _decode, _probabilities, _explained, _heat_map = _cached_steps()
    page()
