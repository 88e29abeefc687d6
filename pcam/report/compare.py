"""The report of a comparison of backbones: their runs side by side, on the same tiles.

``pcam.train.compare`` trains, for each backbone, a run at
``RUNS_DIR/NAME/<backbone>/``, every run on the comparison's folds
(``RUNS_DIR/NAME/folds.csv``: the folds the first run made, handed to every
later one); this module gathers them::

    RUNS_DIR/NAME/folds.csv            the folds every run trains on
    RUNS_DIR/NAME/<backbone>/          an ordinary run (evaluate, predict,
                                       explain and the app use it as any other)
    RUNS_DIR/NAME/report/index.html    the side-by-side report (offline)
    RUNS_DIR/NAME/report/comparison.csv, comparison.json   its table

Started again with the same command, finished backbones (and finished folds
of an unfinished one) are skipped. A ``folds.csv`` (id, label, fold) put in
the comparison's folder beforehand is used by every run: a split of one's
own. Backbones can be trained on different machines (``--backbones X`` on
each, the same ``--name`` on a shared folder)
and gathered with ``--report``.

``compare_report(compare_dir)`` is reporting: it reads runs and never
imports the training library. It judges every backbone on the same
out-of-fold tiles, and the difference of each from the best by a paired
bootstrap on those tiles, so that a reader does not crown a winner on noise.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pcam import metrics
from pcam.errors import PcamError
from pcam.io import atomic_write_json, atomic_write_text
from pcam.models.saved import load_fold_model
from pcam.report import figures, page
from pcam.runs import (FOLDS, RunDir, finished_folds, load_run, probabilities, read_folds,
                       read_history, read_oof, run_classes, same_folds)
from pcam.settings import RunSettings
from pcam.task import Task

REPORT = "report"
RENEW = "delete it and its runs, or choose a new --name"


@dataclasses.dataclass
class Entry:
    """One backbone's run, as the report reads it."""

    name: str
    run_dir: Path
    config: RunSettings
    folds: list[int]
    oof: pd.DataFrame


def compare_report(compare_dir: Path, *, bootstrap: int = 1000, speed_tiles: int = 256) -> dict:
    """Gather the runs under ``compare_dir`` and write ``report/index.html``,
    ``comparison.csv`` and ``comparison.json`` there.

    Every run is judged on the folds finished in all of them (the same
    out-of-fold tiles); a run with no finished fold is left out, and said so.

    Returns:
        The record written as ``comparison.json``.

    Raises:
        PcamError: no runs; runs of other classes or other folds; no fold
            finished in every run.
    """
    compare_dir = Path(compare_dir)
    entries, notes = gather(compare_dir)
    record = compare_runs(entries, bootstrap=bootstrap, speed_tiles=speed_tiles)
    record["notes"] = notes + record["notes"]
    record["comparison"] = str(compare_dir)
    out = compare_dir / REPORT
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PcamError(f"cannot write the report to {out}: {err.strerror}") from None
    images = _figures(entries, record, out)
    table = pd.DataFrame(record["rows"])
    atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    atomic_write_json(out / "comparison.json", record)
    atomic_write_text(out / "index.html", page.compare_page(record, images))
    for note in record["notes"]:
        print(f"note: {note}", flush=True)
    print(format_table(record), flush=True)
    for line in record["conclusions"]:
        print(f"- {line}", flush=True)
    print(f"report: {out / 'index.html'}", flush=True)
    return record


def gather(compare_dir: Path) -> tuple[list[Entry], list[str]]:
    """The comparison's runs, each with its out-of-fold predictions on the
    folds finished in every run, checked to be on the same tiles and classes."""
    if not compare_dir.is_dir():
        raise PcamError(f"{compare_dir}: no comparison here; train one with "
                        "python scripts/compare.py --backbones A,B --name NAME")
    # Not RUNS_DIR/NAME/latest: a link to the last backbone trained (pcam.places).
    run_dirs = sorted(p.parent for p in compare_dir.glob("*/config.json")
                      if not p.parent.is_symlink())
    if not run_dirs:
        raise PcamError(f"{compare_dir}: no runs in it (no <backbone>/config.json); train them "
                        "with python scripts/compare.py --backbones A,B --name "
                        f"{compare_dir.name}")
    notes, found = [], []
    for run_dir in run_dirs:
        run_dir, config = load_run(run_dir)
        done = finished_folds(run_dir, config.folds.folds)
        if done:
            found.append((run_dir, config, done))
        else:
            notes.append(f"{run_dir.name}: no finished fold yet, left out.")
    if not found:
        raise PcamError(f"{compare_dir}: none of its runs has a finished fold yet; finish "
                        "training first (the same command resumes)")
    _check_alike(found, compare_dir)
    common = sorted(set.intersection(*(set(done) for _, _, done in found)))
    if not common:
        listing = "; ".join(f"{d.name}: {', '.join(map(str, done))}" for d, _, done in found)
        raise PcamError(f"no fold is finished in every run of {compare_dir} (finished folds: "
                        f"{listing}); train the same folds of every backbone")
    entries = []
    for run_dir, config, done in found:
        if len(done) > len(common):
            notes.append(f"{run_dir.name}: folds {', '.join(map(str, done))} are finished; "
                         f"compared on {', '.join(map(str, common))}, finished in every run.")
        entries.append(Entry(run_dir.name, run_dir, config, common, read_oof(run_dir, common)))
    ids = set(entries[0].oof["id"])
    for entry in entries[1:]:
        if set(entry.oof["id"]) != ids or len(entry.oof) != len(ids):
            raise PcamError(f"{entry.run_dir} and {entries[0].run_dir} have out-of-fold "
                            "predictions for different tiles, though their folds agree; "
                            "train that run again (delete its folder)")
    if len(common) < entries[0].config.folds.folds:
        notes.append(f"Folds {', '.join(map(str, common))} of "
                     f"{entries[0].config.folds.folds}: the figures cover their "
                     "out-of-fold tiles only.")
    return entries, notes


def _check_alike(found: list[tuple], compare_dir: Path) -> None:
    """Refuse runs of other classes, or trained on other folds, than the comparison's."""
    classes = run_classes(found[0][1])
    shared = compare_dir / FOLDS
    reference = read_folds(shared if shared.is_file() else found[0][0] / FOLDS, RENEW)
    for run_dir, config, _ in found:
        if run_classes(config) != classes:
            raise PcamError(f"{run_dir} has classes {', '.join(run_classes(config))}, "
                            f"{found[0][0]} has {', '.join(classes)}: runs of a comparison "
                            "must be trained on the same data")
        if not same_folds(read_folds(run_dir / FOLDS, RENEW), reference):
            raise PcamError(f"{run_dir / FOLDS} differs from the comparison's folds"
                            f"{' (' + str(shared) + ')' if shared.is_file() else ''}: it was "
                            "trained on other folds or other data; train it again in this "
                            "comparison (delete its folder) or move it out")


def compare_runs(entries: list[Entry], *, bootstrap: int = 1000, speed_tiles: int = 256) -> dict:
    """The comparison's record: one row per run, the paired differences
    from the best, and the conclusions; no files written."""
    config = entries[0].config
    classes = run_classes(config)
    binary = len(classes) == 2
    rows = []
    for entry in entries:
        labels = entry.oof["label"].to_numpy()
        row, recall = _quality(entry.name, labels, probabilities(entry.oof, classes), classes,
                               bootstrap)
        history = [read_history(RunDir(entry.run_dir).fold(k).path) for k in entry.folds]
        row.update(_costs(entry, history, speed_tiles))
        row.update({"tiles": int(len(labels)), "folds": ",".join(map(str, entry.folds)),
                    "epochs": int(sum(len(h) for h in history))})
        row["_recall"] = recall
        rows.append(row)
    best = _best(rows, "auc")[0]
    _paired_deltas(rows, entries, best, classes, bootstrap)
    recalls = {row["backbone"]: row.pop("_recall") for row in rows}
    record = {
        "title": f"comparison {Path(entries[0].run_dir).parent.name}: "
                 f"{', '.join(e.name for e in entries)}",
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "task": Task(classes).kind,
        "classes": list(classes),
        "positive": classes[1] if binary else "",
        "best": best,
        "bootstrap": bootstrap,
        "speed_tiles": speed_tiles,
        "rows": rows,
        "recall": recalls,
        "notes": [],
    }
    record["conclusions"] = conclusions(record)
    return record


def _quality(name: str, labels, probs, classes, bootstrap: int) -> tuple[dict, list]:
    """A run's row of quality figures on its OOF predictions, and its recall per class."""
    task = Task(tuple(classes))
    # Two classes: Youden's J on the pooled OOF predictions, how the run's own
    # report and its model.json choose the threshold.
    threshold = metrics.choose_threshold(labels, probs) if task.binary else None
    m = metrics.evaluate(labels, probs, classes, threshold, resamples=bootstrap)
    recall = [c["sensitivity"] for c in m["per_class"]]
    row = {"backbone": name, "auc": m["auc"], "auc_low": m["auc_low"],
           "auc_high": m["auc_high"], "accuracy": m["accuracy"],
           "balanced_accuracy": m["balanced_accuracy"]}
    if task.binary:
        return ({**row, "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                 "f1": m["f1"], "threshold": threshold}, recall)
    return {**row, **{f"recall_{c}": r for c, r in zip(classes, recall)},
            "f1": m["macro_f1"]}, recall


def _paired_deltas(rows: list[dict], entries: list[Entry], best: str, classes,
                   bootstrap: int) -> None:
    """Each row's AUC difference from the best run's, by a paired bootstrap on the same tiles."""
    reference = _aligned(entries, best)
    for row, entry in zip(rows, entries):
        if row["backbone"] == best:
            row.update(delta_auc=0.0, delta_low=0.0, delta_high=0.0, distinguishable="best")
            continue
        probs = probabilities(entry.oof.set_index("id").loc[reference["id"]], classes)
        delta, low, high = metrics.paired_bootstrap_auc(reference["label"].to_numpy(), probs,
                                  probabilities(reference, classes), resamples=bootstrap)
        row.update(delta_auc=delta, delta_low=low, delta_high=high,
                   distinguishable="yes" if metrics.distinguishable(low, high)
                   else "not distinguishable")


def _costs(entry: Entry, history: list[pd.DataFrame], speed_tiles: int) -> dict:
    """Parameters of the run's model, seconds per training epoch (mean over
    every epoch of the compared folds, both phases), predicted tiles/s."""
    seconds = [h["epoch_seconds"].to_numpy(np.float64) for h in history
               if "epoch_seconds" in h]
    per_epoch = float(np.nanmean(np.concatenate(seconds))) if seconds else float("nan")
    model = load_fold_model(RunDir(entry.run_dir).fold(entry.folds[0]).model)
    return {"parameters": int(model.count_params()), "seconds_per_epoch": per_epoch,
            "tiles_per_second": _speed(model, entry.config, speed_tiles)}


def _speed(model, config: RunSettings, n: int) -> float:
    """Tiles per second of ``model.predict`` on ``n`` tiles of its input size
    (random uint8, seed 0: speed does not depend on what the tiles show), in
    batches of the run's training batch size, after one warm-up batch (which
    builds the prediction function); NaN when ``n`` is 0."""
    if not n:
        return float("nan")
    side = int(model.input_shape[1])
    tiles = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    batch = min(config.inputs.batch_size, n)
    model.predict(tiles[:batch].astype(np.float32), batch_size=batch, verbose=0)
    start = time.perf_counter()
    model.predict(tiles.astype(np.float32), batch_size=batch, verbose=0)
    return n / (time.perf_counter() - start)


def _aligned(entries: list[Entry], name: str) -> pd.DataFrame:
    return next(e.oof for e in entries if e.name == name).reset_index(drop=True)


def _best(rows: list[dict], key: str) -> list[str]:
    """The backbone(s) with the highest ``key`` (all of them when tied)."""
    values = np.array([row[key] for row in rows], np.float64)
    if np.isnan(values).all():
        return [rows[0]["backbone"]]
    top = np.nanmax(values)
    return [row["backbone"] for row, v in zip(rows, values) if v == top]


def conclusions(record: dict) -> list[str]:
    """The report's conclusions in words, from its numbers: the highest AUC
    and which differences from it the data cannot tell from noise, the
    highest recall of the positive class (two classes) or of each class,
    and the best balance."""
    rows = record["rows"]
    lines = []
    best = record["best"]
    auc_name = Task(tuple(record["classes"])).metric
    top = next(r for r in rows if r["backbone"] == best)
    lines.append(f"Highest {auc_name}: {best} ({_num(top['auc'], 4)}, 95% CI "
                 f"{_num(top['auc_low'], 4)}–{_num(top['auc_high'], 4)}).")
    same = [r["backbone"] for r in rows if r["distinguishable"] == "not distinguishable"]
    apart = [r["backbone"] for r in rows if r["distinguishable"] == "yes"]
    if same:
        lines.append(f"Not distinguishable from {best} on these tiles (the paired 95% interval "
                     f"of the {auc_name} difference includes 0): {', '.join(same)}; the data "
                     "do not crown a winner among them.")
    if apart:
        lines.append(f"Lower {auc_name} than {best} beyond noise (the paired interval excludes "
                     f"0): {', '.join(apart)}.")
    if record["task"] == "binary":
        positive = record["positive"]
        names = _best(rows, "sensitivity")
        value = next(r["sensitivity"] for r in rows if r["backbone"] == names[0])
        lines.append(f"Highest sensitivity (recall) for {positive}: {' and '.join(names)} "
                     f"({_num(value, 3)} at its threshold).")
    else:
        per_class = []
        for c in record["classes"]:
            names = _best(rows, f"recall_{c}")
            value = next(r[f"recall_{c}"] for r in rows if r["backbone"] == names[0])
            per_class.append(f"{c}: {' and '.join(names)} ({_num(value, 3)})")
        lines.append("Highest recall per class: " + "; ".join(per_class) + ".")
    names = _best(rows, "balanced_accuracy")
    value = next(r["balanced_accuracy"] for r in rows if r["backbone"] == names[0])
    what = ("the mean of sensitivity and specificity" if record["task"] == "binary"
            else "the mean recall over classes")
    lines.append(f"Most balanced (highest balanced accuracy, {what}): {' and '.join(names)} "
                 f"({_num(value, 3)}).")
    return lines


def format_table(record: dict) -> str:
    """The comparison as a text table (what the command prints)."""
    binary = record["task"] == "binary"
    auc_name = "AUC" if binary else "mAUC"  # K classes: the macro one-vs-rest AUC
    head = (f"{'backbone':<16} {auc_name:>6} {'95% CI':>13} {'acc':>6} {'bal.acc':>7} "
            + (f"{'sens':>6} {'spec':>6} " if binary else "")
            + f"{'F1':>6} {'params':>11} {'s/epoch':>8} {'tiles/s':>8}  "
            f"Δ{auc_name} vs best [paired 95% CI]")
    lines = [head, "-" * len(head)]
    for r in record["rows"]:
        delta = ("best" if r["distinguishable"] == "best" else
                 f"{r['delta_auc']:+.4f} [{r['delta_low']:+.4f}, {r['delta_high']:+.4f}]"
                 + (" n.d." if r["distinguishable"] == "not distinguishable" else ""))
        lines.append(
            f"{r['backbone']:<16} {_num(r['auc'], 4):>6} "
            f"{_num(r['auc_low'], 3) + '–' + _num(r['auc_high'], 3):>13} "
            f"{_num(r['accuracy'], 3):>6} {_num(r['balanced_accuracy'], 3):>7} "
            + (f"{_num(r['sensitivity'], 3):>6} {_num(r['specificity'], 3):>6} " if binary
               else "")
            + f"{_num(r['f1'], 3):>6} {r['parameters']:>11,} {_num(r['seconds_per_epoch'], 1):>8} "
            f"{_num(r['tiles_per_second'], 0):>8}  {delta}")
    return "\n".join(lines)


def _num(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _figures(entries: list[Entry], record: dict, out: Path) -> list[page.Figure]:
    classes = record["classes"]
    curves = {e.name: (e.oof["label"].to_numpy(), probabilities(e.oof, classes))
              for e in entries}
    aucs = {r["backbone"]: r["auc"] for r in record["rows"]}
    histories = {e.name: [read_history(RunDir(e.run_dir).fold(k).path) for k in e.folds]
                 for e in entries}
    binary = record["task"] == "binary"
    shown = [
        page.Figure(figures.save(figures.roc_comparison(curves, classes, aucs),
                                   out / "roc.png"),
                      "ROC curves",
                      "Every backbone's pooled out-of-fold predictions on the same tiles"
                      + (f" (sensitivity to {classes[1]} against the false positive rate)."
                         if binary else "; K classes: the macro average of the one-vs-rest "
                         "curves (true positive rate averaged over classes at each false "
                         "positive rate).")),
        page.Figure(figures.save(figures.recall_bars(record["recall"], classes),
                                   out / "recall.png"),
                      "Recall (sensitivity) per class",
                      "The fraction of each true class each backbone called that class"
                      + (f" at its threshold (for {classes[0]} this is the specificity)."
                         if binary else " (the most probable class)."
                         )),
        page.Figure(figures.save(figures.validation_curves(
            histories, Task(classes).metric), out / "validation.png"),
                      "Validation curves",
                      f"Validation {Task(classes).metric} per epoch "
                      "(counted over both phases), the mean over the compared folds; a "
                      "backbone trained from scratch has no frozen phase."),
    ]
    return shown

