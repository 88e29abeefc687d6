"""The report's figures, one function each, returned as matplotlib Figures.

Every function takes plain data (arrays, data frames, class names) and
draws one figure; ``save(fig, path)`` writes it as a PNG atomically and
closes it. matplotlib's Agg backend draws without a display, so reports
build on servers and in CI.

Class names come from the run (PCam: "normal", "tumour"; class folders:
their folder names, e.g. "Serrated_adenoma" or "03_COMPLEX"); figures for K
classes size their fonts and wrap or rotate the names so that eight long
names stay readable.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from pcam.io import atomic_path
from pcam.metrics import auc
from pcam.task import Task, as_matrix

DPI = 110  # a 6.4-inch-wide figure is 704 px: sharp in a browser, ~50 KB
POOLED = "pooled"  # the group name of all predictions together


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it; return ``path``."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def short_name(name: str, width: int = 14) -> str:
    """A class name fit for a tick label: wrapped onto lines of about
    ``width`` characters after its underscores, hyphens or spaces; never cut
    or respelled (the page's tables use the same names, and "High-grade_IN"
    and "Low-grade_IN" differ only in their start)."""
    parts = re.findall(r"[^_\-\s]+[_\-\s]*", str(name)) or [str(name)]
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + len(part.rstrip()) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(line.rstrip() for line in lines)


def short_id(tile_id: str, width: int = 16) -> str:
    """An id fit for a caption: PCam's hashes by their start, file names by
    their start and end (where the differing part usually is)."""
    tile_id = str(tile_id)
    if len(tile_id) <= width:
        return tile_id
    half = (width - 1) // 2
    return f"{tile_id[:half]}…{tile_id[-half:]}"


def _font(k: int) -> float:
    """Font size of the cells and ticks of a K-class figure."""
    return 12.0 if k <= 3 else 10.0 if k <= 5 else 8.5 if k <= 8 else 7.0


# --- any number of classes -------------------------------------------------------------

def confusion(counts, classes: Sequence[str], title: str) -> Figure:
    """Confusion matrix as counts and with rows normalised to 1, side by side.

    Args:
        counts: K x K counts, rows the true class, columns the predicted one.
        classes: the K class names in label order.
        title: the figure's heading (which predictions, at what threshold).

    The diagonal of the normalised panel is each class's sensitivity; both
    panels are coloured by that rate, so a small class's errors show as
    strongly as a large one's.
    """
    counts = np.asarray(counts, np.float64)
    k = len(classes)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    font = _font(k)
    side = max(4.2, 0.62 * k + 1.6)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.2, side + 0.4),
                             gridspec_kw={"wspace": 0.12 if k > 2 else 0.35})
    names = [short_name(c, 16) for c in classes]
    for ax, values, kind, fmt in ((axes[0], counts, "counts", "{:,.0f}"),
                                  (axes[1], rates, "row-normalised (fraction of true class)",
                                   "{:.0%}" if k > 4 else "{:.1%}")):
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(values):
            # Empty cells in grey, so the eye goes to the errors that happened.
            colour = ("white" if rates[i, j] > 0.6 else "black") if counts[i, j] else "#b0b0b0"
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=font, color=colour)
        ax.set_xticks(range(k), names, fontsize=font,
                      rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center",
                      rotation_mode="anchor")
        ax.set_yticks(range(k), names if ax is axes[0] else [] if k > 2 else names,
                      fontsize=font)
        ax.set_xlabel("predicted class", fontsize=font + 1)
        ax.set_title(kind, fontsize=font + 2)
    axes[0].set_ylabel("true class", fontsize=font + 1)
    fig.suptitle(title, fontsize=font + 3)
    return fig


def roc_ovr(labels, probs, classes: Sequence[str], title: str) -> Figure:
    """One-vs-rest ROC curve of every class, its AUC in the legend.

    Args:
        labels: (N,) class indices.
        probs: (N, K) probabilities.
        classes: the K class names.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    k = len(classes)
    colours = plt.get_cmap("tab10" if k <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.2, 6.2))
    for c, name in enumerate(classes):
        positive = labels == c
        if positive.all() or not positive.any():
            ax.plot([], [], color=colours(c), label=f"{name} (absent: no AUC)")
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        ax.plot(fpr, tpr, lw=1.6, color=colours(c),
                label=f"{name} (AUC {auc(positive, probs[:, c]):.3f}, n={positive.sum():,})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate (other classes called this one)",
           ylabel="true positive rate (sensitivity)", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8 if k <= 8 else 7, title="one vs rest",
              title_fontsize=8)
    return fig


def class_sensitivity(per_class: list[dict], title: str) -> Figure:
    """Per-class sensitivity (recall) as bars, each with its support; the
    mean of the bars is the balanced accuracy, drawn as a dashed line.

    Args:
        per_class: ``task_metrics(...)["per_class"]`` (K classes).
    """
    k = len(per_class)
    names = [short_name(m["class"], 16) for m in per_class]
    recall = np.array([m["sensitivity"] for m in per_class], np.float64)
    support = [m["support"] for m in per_class]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.95 * k + 2), 4.6))
    bars = ax.bar(range(k), np.nan_to_num(recall), color="tab:blue", alpha=0.85)
    for bar, value, n in zip(bars, recall, support):
        text = "no tiles" if n == 0 else f"{value:.0%}\nn={n:,}"
        # A white box: the balanced-accuracy line may pass behind the text.
        ax.text(bar.get_x() + bar.get_width() / 2, min(np.nan_to_num(value), 1) + 0.02, text,
                ha="center", va="bottom", fontsize=8.5, zorder=3,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    if (~np.isnan(recall)).any():
        mean = float(np.nanmean(recall))
        ax.axhline(mean, ls="--", color="crimson", lw=1.2,
                   label=f"balanced accuracy {mean:.3f}")
        ax.legend(fontsize=8, loc="upper right")  # above the bars: ylim leaves room
    ax.set_xticks(range(k), names, fontsize=_font(k) + 0.5,
                  rotation=30 if k > 4 else 0, ha="right" if k > 4 else "center",
                  rotation_mode="anchor")
    ax.set(ylabel="sensitivity (recall)", ylim=(0, 1.22))
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig


def mistakes(tiles: np.ndarray, rows: pd.DataFrame, classes: Sequence[str], title: str,
             columns: int = 6, heat: np.ndarray | None = None,
             label_region: int = 0) -> Figure:
    """The most confident mistakes, one line of tiles per true class.

    Args:
        tiles: (N, H, W, 3) uint8, one per row of ``rows``.
        rows: ``label`` (true class index), ``predicted`` (class index) and
            ``confidence`` (its probability), grouped by ``label`` and
            sorted within a class from the most confident mistake.
        classes: the class names.
        columns: tiles per line at most.
        heat: Grad-CAM maps in 0..1 (N, H, W), each drawn over its tile.
        label_region: side of the centre square that decides a label (0: none drawn).
    """
    k = len(classes)
    labels = rows["label"].to_numpy()
    # No wider than the longest line: empty columns would shrink the tiles.
    columns = max(1, min(columns, int(np.bincount(labels, minlength=k).max(initial=0))))
    fig, axes = plt.subplots(k, columns, figsize=(1.75 * columns + 1.6, 2.0 * k),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for c, name in enumerate(classes):
        axes[c, 0].set_ylabel(short_name(name, 14), fontsize=9, rotation=0, ha="right",
                              va="center", labelpad=8)
        at = np.flatnonzero(labels == c)[:columns]
        if not len(at):
            axes[c, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=9,
                            color="dimgrey", transform=axes[c, 0].transAxes)
        for ax, i in zip(axes[c], at):
            ax.imshow(tiles[i])
            if heat is not None:
                ax.imshow(heat[i], cmap="jet", vmin=0, vmax=1, alpha=0.45)
            centre_square(ax, tiles[i].shape[0], label_region)
            row = rows.iloc[i]
            ax.set_title(f"→ {short_name(classes[int(row['predicted'])], 16)}\n"
                         f"p = {row['confidence']:.2f}", fontsize=7.5)
    fig.suptitle(f"{title}\n(rows: true class; above each tile: the class it was called "
                 "and its probability)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # 0.6 in for the title
    return fig


def training_curves(history: pd.DataFrame, title: str, classes: Sequence[str] = ()) -> Figure:
    """Loss and AUC per epoch, training and validation, every phase in one
    figure with a dashed line where a phase ends; for K > 2 classes the AUC
    is the macro one-vs-rest AUC, and balanced accuracy gets a third panel
    when the log has it.

    Args:
        history: the phases' CSV logs concatenated in training order, with a
            ``phase`` column (``pcam.runs.read_history``).
        classes: the run's class names (empty or two: a binary run).
    """
    multiclass = len(classes) > 2
    panels = [("loss", "loss", "cross-entropy" if multiclass else "binary cross-entropy"),
              ("auc", "macro AUC (one vs rest)" if multiclass else "AUC",
               "macro AUC" if multiclass else "AUC")]
    if multiclass and "balanced_accuracy" in history:
        panels.append(("balanced_accuracy", "balanced accuracy", "balanced accuracy"))
    history = history.reset_index(drop=True)
    epoch = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    phases = history["phase"].to_numpy()
    for ax, (metric, heading, ylabel) in zip(axes, panels):
        for prefix, label in (("", "training"), ("val_", "validation")):
            if prefix + metric in history:
                ax.plot(epoch, history[prefix + metric], marker="o", ms=3, label=label)
        ax.set(xlabel="epoch (counted over both phases)" if len(set(phases)) > 1 else "epoch",
               ylabel=ylabel)
        ax.set_title(heading, pad=16)  # room for the phase names
        ax.grid(alpha=0.3)
        for end in np.flatnonzero(phases[1:] != phases[:-1]):
            ax.axvline(end + 1.5, ls="--", color="grey")
        for name, rows in history.groupby("phase", sort=False):
            ax.text(epoch[rows.index].mean(), 1.005, f"phase: {name}",
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8,
                    color="dimgrey")
        if metric == "auc" and "val_auc" in history and history["val_auc"].notna().any():
            best = int(history["val_auc"].idxmax())  # the epoch best.keras holds
            ax.plot(epoch[best], history["val_auc"][best], marker="*", ms=14, color="crimson",
                    ls="none", label="best (saved model)", zorder=3)
        ax.legend(fontsize=8, loc="best")
        ax.set_xticks(epoch if len(epoch) <= 20 else ax.get_xticks())
        ax.set_xlim(0.5, len(epoch) + 0.5)
    fig.suptitle(title, y=1.07, fontsize=12)  # above the panels' titles and phase names
    return fig


def gallery(tiles: np.ndarray, captions: Sequence[str], title: str, columns: int = 6,
            heat: np.ndarray | None = None, label_region: int = 0) -> Figure:
    """Tiles with a caption each (id, true class, probability).

    Args:
        tiles: (N, H, W, 3) uint8.
        captions: one short text per tile, shown above it (three lines of
            about 24 characters fit).
        heat: Grad-CAM maps in 0..1 (N, H, W), each drawn over its tile.
        label_region: side of the centre square that decides a label,
            outlined on each tile (PCam: 32; 0: none).
    """
    n = max(len(captions), 1)
    lines = -(-n // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(2.1 * columns, 2.7 * lines),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (ax, tile, caption) in enumerate(zip(axes.ravel(), tiles, captions)):
        ax.imshow(tile)
        if heat is not None:
            ax.imshow(heat[i], cmap="jet", vmin=0, vmax=1, alpha=0.45)
        centre_square(ax, tile.shape[0], label_region)
        ax.set_title(caption, fontsize=8)
    if not len(captions):
        axes[0, 0].text(0, 0.5, "none", fontsize=12)
    fig.suptitle(title)
    return fig


def centre_square(ax, size: int, region: int = 0) -> None:
    """Outline the centre ``region`` x ``region`` pixels of a size x size
    tile (the part that decides its label; 0: nothing drawn): white on a
    dark edge, visible on pale and on dark tissue."""
    if region and size >= region:
        ax.add_patch(plt.Rectangle(
            (size / 2 - region / 2 - 0.5, size / 2 - region / 2 - 0.5), region, region,
            fill=False, ec="white", lw=0.8,
            path_effects=[patheffects.withStroke(linewidth=2.2, foreground="black")]))


# --- two classes -------------------------------------------------------------------------

def roc_pr(groups: dict[str, pd.DataFrame], classes: Sequence[str]) -> Figure:
    """ROC and precision-recall curves of every group (folds, then pooled) of
    a two-class task; ``prob`` is the probability of ``classes[1]``."""
    positive = classes[1]
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    for name, frame in groups.items():
        style = dict(lw=2.2, color="black") if name == POOLED else dict(lw=1, alpha=0.7)
        fpr, tpr, _ = roc_curve(frame["label"], frame["prob"])
        precision, recall, _ = precision_recall_curve(frame["label"], frame["prob"])
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {auc(frame['label'], frame['prob']):.3f})",
                    **style)
        pr_ax.plot(recall, precision, label=name, **style)
    roc_ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    roc_ax.set(xlabel=f"false positive rate ({classes[0]} called {positive})",
               ylabel=f"true positive rate (sensitivity to {positive})", title="ROC curve",
               xlim=(0, 1), ylim=(0, 1.01))
    prevalence = pd.concat(groups.values())["label"].mean() if groups else 0
    pr_ax.axhline(prevalence, ls=":", color="grey", lw=1, label=f"chance ({prevalence:.2f})")
    pr_ax.set(xlabel=f"recall (sensitivity to {positive})", ylabel="precision",
              title=f"Precision-recall curve ({positive})", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
    return fig


def calibration(groups: dict[str, pd.DataFrame], classes: Sequence[str],
                bins: int = 10) -> Figure:
    """Reliability curve (observed fraction of ``classes[1]`` per bin of
    predicted probability) over a histogram of the predictions."""
    positive = classes[1]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfectly calibrated")
    for name, frame in groups.items():
        observed, predicted = calibration_curve(frame["label"], frame["prob"], n_bins=bins)
        ax.plot(predicted, observed, marker="o", ms=4, label=name,
                **(dict(lw=2.2, color="black") if name == POOLED else dict(lw=1, alpha=0.7)))
    ax.set(ylabel=f"observed fraction {positive}", title="Calibration", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")  # ten points a curve: "best" is cheap here
    every = pd.concat(groups.values())
    hist.hist([every.loc[every["label"] == c, "prob"] for c in (0, 1)], bins=20, range=(0, 1),
              stacked=True, label=[f"true {classes[0]}", f"true {positive}"],
              color=["tab:blue", "tab:red"])
    hist.set(xlabel=f"predicted probability of {positive}", ylabel="tiles", xlim=(0, 1))
    hist.legend(fontsize=8)
    return fig


def reliability(labels, before, after, temperature: float) -> Figure:
    """Reliability diagram: accuracy against confidence (the most probable class's
    probability) in 15 bins, before and after the temperature, with ECE."""
    from pcam.calibration import reliability as bins_of

    fig, ax = plt.subplots(figsize=(6, 5.2))
    for probs, name, style in ((before, "before", dict(color="tab:red", ls="--")),
                               (after, f"after (T = {temperature:.2f})",
                                dict(color="black", lw=2))):
        bins = bins_of(labels, probs)
        shown = bins["count"] > 0
        ax.plot(bins["confidence"][shown], bins["accuracy"][shown], marker="o", ms=4,
                label=f"{name}: ECE {bins['ece']:.3f}", **style)
    low = bins["edges"][0]
    ax.plot([low, 1], [low, 1], ls=":", color="grey", label="perfectly calibrated")
    ax.set(xlabel="confidence (probability of the predicted class)",
           ylabel="accuracy (fraction predicted right)", xlim=(low, 1), ylim=(0, 1.01),
           title="Reliability, pooled out-of-fold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def explanation(tile: np.ndarray, heat: np.ndarray, title: str, subtitle: str,
                path: Path | None = None, label_region: int = 0):
    """One tile's Grad-CAM: the tile, the heat map (with its scale) and the
    map over the tile; the centre square that decides a label outlined on
    the pictures of the tile (``label_region`` px; 0: none).

    Returns:
        The Figure; or, when ``path`` is given (the older calling style of
        ``pcam.explain.explain``), the path it was saved to.
    """
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
        centre_square(ax, size, label_region)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=9.5)
    return save(fig, path) if path is not None else fig


# --- several backbones on the same tiles (pcam.report.compare) ---------------------------------

def roc_comparison(curves: dict[str, tuple], classes: Sequence[str],
                   aucs: dict[str, float]) -> Figure:
    """The ROC curve of every backbone in one plot.

    Args:
        curves: per backbone, (labels, (N, K) probabilities).
        classes: the class names.
        aucs: per backbone, the AUC (macro for K) written in the legend.

    K classes: each backbone's macro-average one-vs-rest curve (the true
    positive rates of the classes present averaged at each false positive
    rate), one line per backbone rather than K.
    """
    binary = len(classes) == 2
    grid = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(7.2, 6.2))
    for name, (labels, probs) in curves.items():
        labels = np.asarray(labels)
        if binary:
            fpr, tpr, _ = roc_curve(labels, as_matrix(probs)[:, 1])
        else:
            rates = [np.interp(grid, *roc_curve(labels == c, probs[:, c])[:2])
                     for c in range(len(classes)) if 0 < (labels == c).sum() < len(labels)]
            fpr, tpr = grid, np.mean(rates, axis=0) if rates else np.full_like(grid, np.nan)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} ({Task(tuple(classes)).metric} "
                                        f"{aucs.get(name, float('nan')):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    if binary:
        ax.set(xlabel=f"false positive rate ({classes[0]} called {classes[1]})",
               ylabel=f"true positive rate (sensitivity to {classes[1]})")
    else:
        ax.set(xlabel="false positive rate (macro average, one vs rest)",
               ylabel="true positive rate (macro average)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC curves of the backbones, same out-of-fold tiles")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def recall_bars(recall: dict[str, Sequence[float]], classes: Sequence[str]) -> Figure:
    """Recall (sensitivity) of every class, bars grouped by class, one bar per backbone.

    Args:
        recall: per backbone, the recall of each class in label order.
        classes: the class names.
    """
    k, m = len(classes), max(len(recall), 1)
    width = 0.8 / m
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * k * m + 2.5), 4.6))
    colours = plt.get_cmap("tab10")
    for i, (name, values) in enumerate(recall.items()):
        values = np.nan_to_num(np.asarray(values, np.float64))
        x = np.arange(k) - 0.4 + width * (i + 0.5)
        bars = ax.bar(x, values, width, color=colours(i % 10), label=name)
        if k * m <= 24:  # a value on each bar while they stay wide enough to read it
            for bar, v in zip(bars, values):
                ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center",
                        va="bottom", fontsize=7, rotation=90 if m > 3 else 0)
    ax.set_xticks(range(k), [short_name(c, 16) for c in classes], fontsize=_font(k) + 0.5,
                  rotation=30 if k > 4 else 0, ha="right" if k > 4 else "center",
                  rotation_mode="anchor")
    ax.set(ylabel="recall (sensitivity)", ylim=(0, 1.18))
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title("Recall per class")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=min(m, 4))
    return fig


def validation_curves(histories: dict[str, list[pd.DataFrame]], metric: str = "AUC"
                      ) -> Figure:
    """Validation AUC per epoch of every backbone overlaid: the mean over its
    folds at each epoch (counted over both phases; a fold stopped early
    leaves the mean of the later epochs to the others).

    Args:
        histories: per backbone, each fold's ``pcam.runs.read_history``.
        metric: what its ``val_auc`` is, for the labels ("macro AUC" for K classes).
    """
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    longest = 1
    for name, logs in histories.items():
        series = [log["val_auc"].to_numpy(np.float64) for log in logs
                  if not log.empty and "val_auc" in log]
        if not series:
            ax.plot([], [], label=f"{name} (no history)")
            continue
        length = max(len(s) for s in series)
        longest = max(longest, length)
        padded = np.full((len(series), length), np.nan)
        for i, s in enumerate(series):
            padded[i, :len(s)] = s
        ax.plot(np.arange(1, length + 1), np.nanmean(padded, axis=0), marker="o", ms=3,
                label=name)
    ax.set(xlabel="epoch (counted over both phases)", ylabel=f"validation {metric}",
           xlim=(0.5, longest + 0.5))
    if longest <= 20:
        ax.set_xticks(range(1, longest + 1))
    ax.set_title(f"Validation {metric} per epoch (mean over folds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def explanation_panels(tile: np.ndarray, heat: np.ndarray, label_region: int = 0,
                       side: int = 192, gap: int = 8) -> np.ndarray:
    """``explanation``'s three pictures drawn straight into one RGB uint8
    array, for a page that shows each upload's Grad-CAM at once: the tile,
    the heat map in jet with its colour scale beside it (bottom 0: no
    evidence, top 1: the strongest), and the map over the tile; the centre
    ``label_region`` px square outlined, white on black, on the tile and
    the overlay.

    The same pictures as ``explanation`` without text (the page writes its
    own), in ~5 ms instead of the ~0.15 s of a matplotlib figure and its PNG.

    Args:
        tile: (S, S, 3) uint8, the model's input.
        heat: (S, S) in 0..1 (``pcam.models.gradcam.gradcam``).
        side: pixels of each picture (S is scaled to it).
        gap: white pixels between the pictures.

    Returns:
        (side, 3 * side + colour bar + gaps, 3) uint8.
    """
    from PIL import Image, ImageDraw

    jet = matplotlib.colormaps["jet"]
    size = tile.shape[0]
    scale = side / size
    big_tile = np.asarray(Image.fromarray(np.asarray(tile, np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC), np.float32)
    big_heat = np.asarray(Image.fromarray(np.asarray(heat, np.float32), mode="F").resize(
        (side, side), Image.Resampling.BILINEAR))
    colour = jet(np.clip(big_heat, 0, 1))[..., :3] * 255
    alpha = 0.45  # as explanation's overlay
    overlay = (1 - alpha) * big_tile + alpha * colour
    bar = np.repeat(jet(np.linspace(1, 0, side))[:, None, :3] * 255, max(6, side // 16), axis=1)
    white = np.full((side, gap, 3), 255.0)
    strip = np.concatenate([big_tile, white, colour, white[:, :gap // 2], bar, white, overlay],
                           axis=1).round().clip(0, 255).astype(np.uint8)
    if label_region and size >= label_region:
        picture = Image.fromarray(strip)
        draw = ImageDraw.Draw(picture)
        lo = (size - label_region) / 2 * scale
        hi = lo + label_region * scale - 1
        for left in (0, strip.shape[1] - side):  # the tile and the overlay
            draw.rectangle((left + lo - 1, lo - 1, left + hi + 1, hi + 1), outline=(0, 0, 0),
                           width=3)
            draw.rectangle((left + lo, lo, left + hi, hi), outline=(255, 255, 255), width=1)
        strip = np.asarray(picture)
    return strip
