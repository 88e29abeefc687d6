"""The pcam app: upload images, see a run's answer, its Grad-CAM and heat maps.

    pcam-app --run runs/NAME                    # or: pcam-app (runs found under runs/)
    streamlit run pcam/app.py -- --run runs/NAME

Streamlit lays out what pcam's library computes: ``pcam.images.decode_bytes``
reads the uploads (the same decoder as every other command),
``pcam.inference.predict_tiles`` gives the probabilities (fold ensemble x
test-time views), ``pcam.gradcam`` the evidence, ``pcam.heatmap`` the maps of
images larger than a tile. Models are loaded once per run and fold choice
(``st.cache_resource``). Nothing here computes on pixels itself.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

from pcam.errors import PcamError

NOTE = "For research and teaching, not for diagnosis."
ENSEMBLE = "all finished folds (ensemble)"
# A tool, not a dev server: no "Deploy" button or developer menu, no telemetry.
SERVER_OPTIONS = ("--server.headless", "true", "--browser.gatherUsageStats", "false",
                  "--client.toolbarMode", "viewer")
TILE_WIDTH = 224  # px on the page for a tile-sized upload (a 96 px tile blown up to a column is a blur)


def main(argv=None) -> None:
    """``pcam-app [--run R] [--port P]``: start ``streamlit run`` on this file."""
    parser = argparse.ArgumentParser(prog="pcam-app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="", help="run folder to open (default: choose one "
                                                  "of those under --runs-dir)")
    parser.add_argument("--runs-dir", default="runs", help="folder searched for runs")
    parser.add_argument("--port", type=int, default=8501, help="port to serve on")
    args = parser.parse_args(argv)
    cmd = [sys.executable, "-m", "streamlit", "run", __file__, "--server.port", str(args.port),
           *SERVER_OPTIONS, "--", "--run", args.run, "--runs-dir", args.runs_dir]
    sys.exit(subprocess.call(cmd))


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
    found = [p for p in root.iterdir() if (p / "config.json").is_file()
             and any(p.glob("fold_*/metrics.json"))]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def png_bytes(fig) -> bytes:
    """A figure as PNG bytes (for the page and its download button), then closed."""
    import matplotlib.pyplot as plt

    from pcam.figures import DPI

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def page() -> None:  # pragma: no cover - run by streamlit (tested through AppTest and a browser)
    import numpy as np
    import streamlit as st

    st.set_page_config(page_title="pcam", page_icon="🔬", layout="wide")
    args = page_args(sys.argv[1:])
    st.title("pcam: tile classifier")
    st.caption(f"⚠️ {NOTE} Upload H&E images; a run trained by pcam answers.")

    runs = find_runs(args.runs_dir)
    with st.sidebar:
        st.header("Model")
        choices = list(dict.fromkeys([r for r in [args.run] if r] + runs))
        picked = st.selectbox("Run", choices, index=0) if choices else ""
        run = st.text_input("or a run folder, or a model file", value="",
                            placeholder="runs/NAME or .../best.keras").strip() or picked
        if not run:
            st.warning(f"No run found under {args.runs_dir}/: train one with scripts/train.py, "
                       "or give its folder here.")
            st.stop()
        try:
            folds_done = _finished(run)
        except PcamError as err:
            st.error(str(err))
            st.stop()
        if folds_done:
            fold_choice = st.selectbox("Folds", [ENSEMBLE] + [f"fold {k}" for k in folds_done])
            folds = (tuple(folds_done) if fold_choice == ENSEMBLE
                     else (int(fold_choice.split()[1]),))
        else:  # a model file: itself (its model.json beside it)
            folds = (-1,)
        tta = st.toggle("Test-time augmentation (8 views)", value=False)

    try:
        ensemble = _ensemble(run, folds)
    except PcamError as err:
        st.error(str(err))
        st.stop()
    info = ensemble[0][1]
    with st.sidebar:
        default = info.classes.index(info.positive) if info.binary else 0
        target = st.selectbox("Grad-CAM shows evidence for", info.classes, index=default)
        st.caption(f"{len(info.classes)} classes · {info.tile_size} px tiles · "
                   f"{info.backbone or 'model'}"
                   + (f" · threshold {info.threshold:.3f}" if info.binary else ""))

    uploads = st.file_uploader("Images (TIFF, PNG, JPEG; any size)", accept_multiple_files=True)
    if not uploads:
        st.info("Upload one or more images to see the model's answer.")
        return

    from pcam.images import decode_bytes
    from pcam.inference import TTA_VIEWS, as_tiles, predict_tiles, probability_table

    views = TTA_VIEWS[8 if tta else 1]
    names, images = [], []
    for upload in uploads:
        image, problem = decode_bytes(upload.getvalue(), upload.name)
        if problem:
            st.error(f"{upload.name} {problem}; skipped.")
        else:
            names.append(upload.name)
            images.append(image)
    if not images:
        return
    probs = predict_tiles(ensemble, as_tiles(images, info.tile_size), views,
                          _augment(info), 256)
    table = probability_table(names, probs, info.classes, info.threshold)
    st.subheader("Results")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"path": st.column_config.TextColumn("file", width="small"),
                                **{c: st.column_config.NumberColumn(format="%.6f")
                                   for c in info.classes}})
    st.download_button("Download the table (CSV)", table.to_csv(index=False, float_format="%.6g"),
                       file_name="pcam-predictions.csv", mime="text/csv")

    explain = _explainer(run, folds[0])
    for i, (name, image) in enumerate(zip(names, images)):
        row = table.iloc[i]
        st.divider()
        left, right = st.columns([1, 2], gap="large")
        with left:
            st.markdown(f"#### {name}")
            small = max(image.shape[:2]) <= TILE_WIDTH
            st.image(image, caption=f"{image.shape[1]}x{image.shape[0]} px",
                     width=TILE_WIDTH if small else "stretch")
            st.markdown(f"Predicted: **{row['predicted']}**"
                        + (f" (threshold {info.threshold:.3f})" if info.binary else ""))
            shown = info.positive if info.binary else row["predicted"]
            st.markdown(f"p({shown}) = `{row[shown]:.6f}`")
            for c in info.classes:
                st.progress(float(np.clip(row[c], 0, 1)), text=f"{c}: {row[c]:.4f}")
        with right:
            which = f"fold {folds[0]}" if folds[0] >= 0 else Path(run).name
            st.markdown(f"Grad-CAM for **{target}** ({which})")
            try:
                fig, peak = _gradcam_figure(explain, image, info, target, name)
            except PcamError as err:  # one image's problem; the others still show
                st.error(f"{name}: {err}")
                continue
            st.image(fig, width="stretch")
            if peak == 0:
                st.caption(f"The map is empty: this model found no evidence for {target} "
                           "anywhere in this image.")
            st.download_button("Grad-CAM (PNG)", fig, file_name=f"{Path(name).stem}-gradcam.png",
                               mime="image/png", key=f"cam-{i}")
            if min(image.shape[:2]) > info.tile_size:
                from pcam.heatmap import heat_map, heat_map_figure

                try:
                    heat = heat_map(ensemble, image, info, views=views)
                except PcamError as err:
                    st.error(f"{name}: {err}")
                    continue
                png = png_bytes(heat_map_figure(heat, image, name))
                st.markdown("Heat map over the whole image")
                st.image(png, width="stretch")
                st.download_button("Heat map (PNG)", png,
                                   file_name=f"{Path(name).stem}-heatmap.png",
                                   mime="image/png", key=f"map-{i}")


def _model_file(run: str) -> bool:
    return run.endswith(".keras")


def _finished(run: str) -> list[int]:
    """The run's finished folds; [] for a model file (``best.keras`` + its ``model.json``)."""
    from pcam.runs import load_run, resolve_folds

    if _model_file(run):
        if not Path(run).is_file():
            raise PcamError(f"{run}: no such model file")
        return []

    run_dir, config = load_run(run)
    return resolve_folds(run_dir, config)


def _augment(info):
    from pcam.settings import AugmentSettings

    return AugmentSettings(centre_crop=info.centre_crop)


def _gradcam_figure(explain, image, info, target: str, name: str) -> tuple[bytes, float]:
    """The tile's Grad-CAM figure (``pcam.figures.explanation``) as PNG bytes,
    and the raw map's peak (0: no evidence anywhere)."""
    import numpy as np

    from pcam.augment import compose, eval_ops
    from pcam.figures import explanation
    from pcam.gradcam import gradcam
    from pcam.inference import as_tiles

    tile = as_tiles([image], info.tile_size)
    fed = np.asarray(compose(eval_ops(_augment(info)))(tile, None)) if info.centre_crop else tile
    index = info.classes.index(target)
    heat, probs = gradcam(explain, fed, index)
    p = float(probs[0]) if info.binary else float(probs[0][index])
    p_target = p if not info.binary or index == 1 else 1 - p
    figure = explanation(fed[0], heat[0], name, f"p({target}) = {p_target:.4f} (this fold)",
                         label_region=info.label_region)
    return png_bytes(figure), float(heat[0].max())


def _cached(kind):
    import streamlit as st

    return st.cache_resource(show_spinner=f"loading the {kind} ...", max_entries=4)


def _load_ensemble(run: str, folds: tuple) -> list:
    from pcam.inference import load_ensemble

    from pcam.runs import load_model_with_info

    if _model_file(run):
        return [load_model_with_info(Path(run))]
    return load_ensemble(Path(run), folds)


def _load_explainer(run: str, fold: int):
    from pcam.gradcam import explainer
    from pcam.runs import load_model_with_info

    path = Path(run) if _model_file(run) else Path(run) / f"fold_{fold}" / "best.keras"
    model, _ = load_model_with_info(path)
    return explainer(model)


if __name__ == "__main__":
    # Under `streamlit run` (and AppTest) this file is __main__: lay out the page.
    # Models stay loaded across reruns and sessions.
    _ensemble = _cached("models")(_load_ensemble)
    _explainer = _cached("Grad-CAM model")(_load_explainer)
    page()
