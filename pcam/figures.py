"""The report's figures, one function each, written as PNG files.

Every function takes plain data (arrays, data frames) and a path, draws one
figure and writes it atomically. matplotlib's Agg backend draws without a
display, so reports build on servers and in CI.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
from matplotlib import patheffects  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from pcam.io import atomic_path  # noqa: E402
from pcam.metrics import auc  # noqa: E402

DPI = 110  # a 6.4-inch-wide figure is 704 px: sharp in a browser, ~50 KB
POOLED = "pooled"  # the group name of all predictions together


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion(m: dict, title: str, path: Path) -> Path:
    """Confusion matrix at the chosen threshold: counts, and rows normalised
    to 1 (so the diagonal reads as specificity and sensitivity)."""
    counts = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]], float)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, values, kind, fmt in ((axes[0], counts, "counts", "{:,.0f}"),
                                  (axes[1], rows, "row-normalised", "{:.1%}")):
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)  # colour by rate in both panels
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=13,
                    color="white" if rows[i, j] > 0.6 else "black")
        ax.set_xticks([0, 1], ["predicted 0\n(no tumour)", "predicted 1\n(tumour)"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
        ax.set_title(kind)
    fig.suptitle(f"{title}: confusion matrix at threshold {m['threshold']:.3f}")
    return save(fig, path)


def roc_pr(groups: dict[str, pd.DataFrame], path: Path) -> Path:
    """ROC and precision-recall curves of every group (folds, then pooled)."""
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    for name, frame in groups.items():
        pooled = name == POOLED
        style = dict(lw=2.2, color="black") if pooled else dict(lw=1, alpha=0.7)
        fpr, tpr, _ = roc_curve(frame["label"], frame["prob"])
        precision, recall, _ = precision_recall_curve(frame["label"], frame["prob"])
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {auc(frame['label'], frame['prob']):.3f})",
                    **style)
        pr_ax.plot(recall, precision, label=name, **style)
    roc_ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    roc_ax.set(xlabel="false positive rate (1 - specificity)",
               ylabel="true positive rate (sensitivity)", title="ROC curve",
               xlim=(0, 1), ylim=(0, 1.01))
    prevalence = pd.concat(groups.values())["label"].mean() if groups else 0
    pr_ax.axhline(prevalence, ls=":", color="grey", lw=1, label=f"chance ({prevalence:.2f})")
    pr_ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall curve",
              xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
    return save(fig, path)


def training_curves(history: pd.DataFrame, title: str, path: Path) -> Path:
    """Loss and AUC per epoch, training and validation, every phase in one
    figure with a dashed line where a phase ends.

    Args:
        history: the phases' CSV logs concatenated in training order, with a
            ``phase`` column.
    """
    epoch = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "auc")):
        for prefix, label in (("", "training"), ("val_", "validation")):
            if prefix + metric in history:
                ax.plot(epoch, history[prefix + metric], marker="o", ms=3, label=label)
        ax.set(xlabel="epoch (counted over both phases)" if history["phase"].nunique() > 1
               else "epoch",
               ylabel="AUC" if metric == "auc" else "binary cross-entropy")
        ax.set_title("AUC" if metric == "auc" else "loss", pad=16)  # room for phase names
        ax.grid(alpha=0.3)
        phase_ends = np.flatnonzero(history["phase"].to_numpy()[1:]
                                    != history["phase"].to_numpy()[:-1])
        for end in phase_ends:
            ax.axvline(end + 1.5, ls="--", color="grey")
        for name, rows in history.groupby("phase", sort=False):
            middle = epoch[rows.index].mean()
            ax.text(middle, 1.005, f"phase: {name}", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color="dimgrey")
        if metric == "auc" and history["val_auc"].notna().any():  # the epoch best.keras holds
            best = int(history["val_auc"].idxmax())
            ax.plot(epoch[best], history["val_auc"][best], marker="*", ms=14, color="crimson",
                    ls="none", label="best (saved model)", zorder=3)
        ax.legend(fontsize=8, loc="best")
        ax.set_xticks(epoch if len(epoch) <= 20 else ax.get_xticks())
        ax.set_xlim(0.5, len(epoch) + 0.5)
    fig.suptitle(title, y=1.02)
    return save(fig, path)


def calibration(groups: dict[str, pd.DataFrame], path: Path, bins: int = 10) -> Path:
    """Reliability curve (observed tumour rate per bin of predicted
    probability) over a histogram of the predictions."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfectly calibrated")
    for name, frame in groups.items():
        observed, predicted = calibration_curve(frame["label"], frame["prob"], n_bins=bins)
        pooled = name == POOLED
        ax.plot(predicted, observed, marker="o", ms=4, label=name,
                **(dict(lw=2.2, color="black") if pooled else dict(lw=1, alpha=0.7)))
    ax.set(ylabel="observed fraction with tumour", title="Calibration", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")  # ten points a curve: "best" is cheap here
    every = pd.concat(groups.values())
    hist.hist([every.loc[every["label"] == c, "prob"] for c in (0, 1)], bins=20, range=(0, 1),
              stacked=True, label=["true 0", "true 1"], color=["tab:blue", "tab:red"])
    hist.set(xlabel="predicted probability of tumour", ylabel="tiles", xlim=(0, 1))
    hist.legend(fontsize=8)
    return save(fig, path)


def gallery(tiles: np.ndarray, rows: pd.DataFrame, title: str, path: Path,
            columns: int = 6, heat: np.ndarray | None = None) -> Path:
    """Tiles with their id, true label and predicted probability; the
    centre 32x32 square (the region PCam's label is about) outlined. With
    ``heat`` (Grad-CAM maps in 0..1, one per tile), each map over its tile."""
    n = max(len(rows), 1)
    lines = -(-n // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(2.1 * columns, 2.5 * lines),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (ax, tile, row) in enumerate(zip(axes.ravel(), tiles, rows.itertuples())):
        ax.imshow(tile)
        if heat is not None:
            ax.imshow(heat[i], cmap="jet", vmin=0, vmax=1, alpha=0.45)
        centre_square(ax, tile.shape[0])
        ax.set_title(f"{row.id[:12]}…\nlabel {row.label}, p = {row.prob:.3f}", fontsize=8)
    if not len(rows):
        axes[0, 0].text(0, 0.5, "none", fontsize=12)
    fig.suptitle(title)
    return save(fig, path)


def centre_square(ax, size: int) -> None:
    """Outline the centre 32x32 pixels of a size x size tile: white on a dark
    edge, visible on pale and on dark tissue."""
    if size >= 32:
        ax.add_patch(plt.Rectangle(
            (size / 2 - 16.5, size / 2 - 16.5), 32, 32, fill=False, ec="white", lw=0.8,
            path_effects=[patheffects.withStroke(linewidth=2.2, foreground="black")]))


def explanation(tile: np.ndarray, heat: np.ndarray, title: str, subtitle: str,
                path: Path) -> Path:
    """One tile's Grad-CAM: the tile, the heat map (with its scale) and the
    map over the tile; the centre 32x32 square outlined on the pictures of
    the tile (the region that decides a PCam label)."""
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.9),
                             gridspec_kw={"width_ratios": [1, 1.22, 1], "wspace": 0.3})
    size = tile.shape[0]
    axes[0].imshow(tile)
    axes[0].set_title("tile")
    shown = axes[1].imshow(heat, cmap="jet", vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM heat map")
    bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04, ticks=[0, 0.5, 1])
    bar.ax.set_yticklabels(["0 none", "0.5", "1 strongest"], fontsize=8)
    axes[2].imshow(tile)
    axes[2].imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=0.45)
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in (axes[0], axes[2]):
        centre_square(ax, size)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=9.5)
    return save(fig, path)
