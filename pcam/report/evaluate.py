"""Evaluation: metrics, figures and an HTML report, for two classes or K.

``evaluate(EvaluateSettings)`` reports on either

- a run (``--run``): its out-of-fold predictions per fold and pooled, and
  its training curves, into ``RUN/report/``; or
- a submission with an answer key (``--submission --answers``, two-class
  runs): the labelled test tiles, into ``NAME-report/`` beside the submission.

``report_predictions`` writes the same report for any labelled predictions
(a class-folder test set predicted by ``pcam.predict``).

Two classes: the threshold is chosen once, on the pooled out-of-fold
predictions (Youden's J, or a target sensitivity), and applied unchanged to
every fold and to a test set: choosing it on the data it is judged on would
flatter it. K > 2 classes: the predicted class is the most probable one (no
threshold), and the report leads with the macro one-vs-rest AUC, balanced
accuracy, macro F1 and Cohen's kappa, and has a per-class table.

The report folder holds ``index.html`` (no scripts, no network: it opens
from the file system), the PNG figures it shows and ``metrics.json``.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pcam import calibration, locks, metrics
from pcam.data.store import Store
from pcam.errors import PcamError
from pcam.io import atomic_write_json, atomic_write_text, check_writable
from pcam.places import resolve_run
from pcam.report import figures, page
from pcam.report.galleries import figure, mistake_galleries
from pcam.report.source import (POOLED, TEST, Source, check_labels, label_region, run_source,
                                submission_source)
from pcam.runs import prob_columns, probabilities
from pcam.settings import EvaluateSettings, to_dict
from pcam.task import Task


def evaluate(settings: EvaluateSettings) -> dict:
    """Write the report that ``settings`` asks for; return its metrics."""
    if bool(settings.run) == bool(settings.submission):
        raise PcamError("give --run runs/NAME (out-of-fold report) or --submission CSV "
                        "--answers CSV (test report), one of the two")
    _check(settings)
    if settings.run:
        run_dir = resolve_run(settings.run)  # runs/latest: the run it names
        source, out = run_source(run_dir), run_dir / "report"
    else:
        source = submission_source(Path(settings.submission), settings.answers)
        out = Path(settings.submission).with_name(Path(settings.submission).stem + "-report")
    return write_report(source, Path(settings.out) if settings.out else out, settings)


def report_predictions(frame: pd.DataFrame, classes: Sequence[str], out: Path, title: str,
                       settings: EvaluateSettings, threshold: float | None = None,
                       store: Store | None = None) -> dict:
    """The report of labelled predictions (a class-folder test set), into ``out``.

    Args:
        frame: one row per image: ``id`` and/or ``path`` (the image file, for
            the galleries when there is no ``store``; ids that name existing
            files serve as paths), ``label`` (class index)
            and the probability columns of ``pcam.runs.prob_columns(classes)``.
        classes: class names in label order.
        out: the report folder.
        title: the report's heading.
        settings: ``bootstrap``, ``gallery`` and, for two classes without a
            ``threshold``, ``target_sensitivity``.
        threshold: two classes: the run's threshold (chosen on its
            out-of-fold predictions); None: chosen on these predictions, and
            the report says that flatters them. Unused for K > 2.
        store: the tile store holding the images by ``id``, for galleries.

    Returns:
        The report's record (what ``metrics.json`` holds).
    """
    _check(settings)
    classes = tuple(classes)
    frame = frame.reset_index(drop=True)
    missing = [c for c in ["label", *prob_columns(classes)] if c not in frame]
    if missing or not ({"id", "path"} & set(frame)):
        raise PcamError(f"predictions to report lack column(s) "
                        f"{', '.join(missing) or 'id or path'}; expected id or path, label, "
                        f"{', '.join(prob_columns(classes))}")
    if "id" not in frame:
        frame = frame.assign(id=[Path(p).name for p in frame["path"]])
    elif "path" not in frame and store is None and len(frame) and all(
            Path(str(i)).is_file() for i in frame["id"]):
        frame = frame.assign(path=frame["id"].astype(str))  # ids that are the image files
    frame = frame.assign(id=frame["id"].astype(str))
    check_labels(frame, classes, "the predictions")
    notes = []
    if len(classes) == 2 and threshold is None:
        notes.append("No threshold was given from the run's out-of-fold predictions, so it "
                     "was chosen on these test tiles themselves: the metrics at the threshold "
                     "are optimistic.")
    source = Source(title=title, groups={TEST: frame}, oof=None, config=None, classes=classes,
                    store=store, notes=notes, label_region=label_region(store, classes),
                    threshold=threshold)
    return write_report(source, Path(out), settings)


def report_labelled(record: dict, settings: EvaluateSettings | None = None) -> dict:
    """The report of labelled predictions that ``pcam.commands.predict.predict``
    wrote (its record's ``labelled`` entry names the CSV, the report folder and its
    title), read back from the CSV: the predictions reported are the file's."""
    scored, classes = record["labelled"], tuple(record["classes"])
    table = pd.read_csv(scored["csv"], dtype={"path": str, "label": str})
    frame = pd.DataFrame({"id": table["path"], "label": [classes.index(c) for c in table["label"]]})
    probs = table[list(classes)].to_numpy()  # one column per class, as the CSV has them
    frame[prob_columns(classes)] = probs[:, 1:] if len(classes) == 2 else probs
    return report_predictions(frame, classes, Path(scored["report"]), scored["title"],
                              settings or EvaluateSettings(), threshold=record["threshold"])


def report_run(run_dir: Path) -> dict:
    """A run's report, as training once ended with: under the run's lock (a
    process training another fold of it waits its turn, pcam.locks)."""
    with locks.exclusive(run_dir, f"run {run_dir}", wait=True):
        return evaluate(EvaluateSettings(run=str(run_dir)))


def _check(settings: EvaluateSettings) -> None:
    if settings.bootstrap < 1:
        raise PcamError(f"--bootstrap {settings.bootstrap}: give a number of resamples, e.g. 1000")
    metrics.choose_threshold([0, 1], [0, 1], settings.target_sensitivity)  # fail fast


# --- the report ----------------------------------------------------------------------

def write_report(source: Source, out: Path, settings: EvaluateSettings) -> dict:
    """Metrics, figures, ``metrics.json`` and ``index.html`` into ``out``."""
    check_writable(out / "index.html")
    earlier = _earlier_report(out)
    record, images = _report(source, out, settings)
    atomic_write_json(out / "metrics.json", record)
    atomic_write_text(out / "index.html", page.html_page(record, images))
    for note in source.notes:  # e.g. an answer key covering part of the submission
        print(f"note: {note}", flush=True)
    print(f"report: {out / 'index.html'}"
          + (f" (replaces the earlier report, written {earlier})" if earlier else ""), flush=True)
    return record


def _earlier_report(out: Path) -> str | None:
    """When the report in ``out`` that this one replaces was written, if there is one."""
    if not (out / "index.html").is_file():
        return None
    try:
        return json.loads((out / "metrics.json").read_text())["written"]
    except (OSError, ValueError, KeyError, TypeError):
        return "at an unknown time"


def _record(source: Source, results: dict, settings: EvaluateSettings, **extra) -> dict:
    folds = [m for name, m in results.items() if name.startswith("fold ")]
    fold_aucs = [m["auc"] for m in folds]
    balanced = [m["balanced_accuracy"] for m in folds]
    return {
        "title": source.title,
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "classes": list(source.classes),
        "task": Task(source.classes).kind,
        **extra,
        "groups": results,
        "fold_auc_mean": float(np.mean(fold_aucs)) if fold_aucs else None,
        "fold_auc_std": float(np.std(fold_aucs, ddof=1)) if len(fold_aucs) > 1 else None,
        "fold_balanced_accuracy_mean": float(np.mean(balanced)) if balanced else None,
        "fold_balanced_accuracy_std": float(np.std(balanced, ddof=1)) if len(balanced) > 1
        else None,
        "notes": source.notes,
        "settings": to_dict(settings),
        "run_config": to_dict(source.config) if source.config else None,
    }


def _main(results: dict) -> str:
    return POOLED if POOLED in results else TEST


def _report(source: Source, out: Path, settings: EvaluateSettings):
    """The record and the figures of a report, for two classes or K.

    What the number of classes changes is the decision (two: a threshold on
    p(positive), ``_threshold``; K: the most probable class), the headline
    (``_headline``) and two figures (``_curves``); the rest is the same code.
    """
    task = Task(source.classes)
    threshold = _threshold(source, settings) if task.binary else None
    cut = threshold["value"] if threshold else None
    results = {name: metrics.evaluate(frame["label"], probabilities(frame, task.classes),
                                      task.classes, cut, resamples=settings.bootstrap)
               for name, frame in source.groups.items()}
    main = _main(results)
    m = results[main]
    if task.binary:
        positive = task.classes[1]
        extra = {"positive": positive, "threshold": threshold,
                 "prediction": f"{positive} when p({positive}) ≥ {cut:.3f}"}
    else:
        extra = {"prediction": "the most probable class (no threshold)"}
    record = _record(source, results, settings, **extra)
    print(f"{main}: {_headline(task, m, threshold)}", flush=True)
    shown = [
        figure(figures.confusion(m["confusion"], task.classes,
                                  f"{main}: confusion matrix"
                                  + (f" at threshold {cut:.3f}" if task.binary else
                                     " (predicted: most probable class)")),
               out / "confusion.png", "Confusion matrix",
               f"{main} predictions (predicted: {extra['prediction']}), as counts and as "
               "fractions of each true class (the diagonal: each class's sensitivity)."),
        *_curves(task, source, m, main, out),
        *_training(source, out),
    ]
    if source.calibration:
        record["calibration"], picture = _calibration(source, out)
        shown.append(picture)
    if settings.gallery:
        shown += mistake_galleries(source, source.groups[main], out, settings.gallery, cut)
    return record, shown


def _calibration(source: Source, out: Path) -> tuple[dict, page.Figure]:
    """A calibrated run's temperature, ECE, Brier and log-loss before and after it
    (pooled out-of-fold), and the reliability diagram of both."""
    classes, temperature = source.classes, source.calibration["temperature"]
    before = source.calibration["before"]
    labels = before["label"].to_numpy()
    raw, fixed = probabilities(before, classes), probabilities(source.groups[POOLED], classes)
    record = {"temperature": temperature,
              "before": calibration.calibration_metrics(labels, raw),
              "after": calibration.calibration_metrics(labels, fixed)}
    b, a = record["before"], record["after"]
    print(f"calibration: temperature {temperature:.3f}; ECE {b['ece']:.4f} -> {a['ece']:.4f}, "
          f"Brier {b['brier']:.4f} -> {a['brier']:.4f}, log-loss {b['log_loss']:.4f} -> "
          f"{a['log_loss']:.4f}", flush=True)
    return record, figure(
        figures.reliability(labels, raw, fixed, temperature), out / "reliability.png",
        "Calibration: before and after the temperature",
        f"The run's logits are divided by T = {temperature:.3f}, fitted on these pooled "
        f"out-of-fold predictions; every probability pcam gives for this run is at it. "
        f"ECE (15 bins) {b['ece']:.4f} → {a['ece']:.4f}, Brier {b['brier']:.4f} → "
        f"{a['brier']:.4f}, log-loss {b['log_loss']:.4f} → {a['log_loss']:.4f}; the "
        "ranking (AUC) and the most probable class are unchanged.")


def _threshold(source: Source, settings: EvaluateSettings) -> dict:
    """A two-class report's threshold: the run's own, else chosen on the pooled
    out-of-fold predictions (or, without them, on the test tiles, and said so)."""
    if source.threshold is not None:
        return {"value": float(source.threshold), "rule": "the model's own",
                "chosen_on": "run's pooled out-of-fold predictions"}
    chosen_on = source.oof if source.oof is not None else source.groups[TEST]
    value = metrics.choose_threshold(chosen_on["label"], chosen_on["prob"],
                                     settings.target_sensitivity)
    rule = (f"the highest with sensitivity ≥ {settings.target_sensitivity:g}"
            if settings.target_sensitivity else "maximising Youden's J")
    where = "pooled out-of-fold predictions" if source.oof is not None else "these test tiles"
    return {"value": value, "rule": rule, "chosen_on": where}


def _headline(task: Task, m: dict, threshold: dict | None) -> str:
    """The report's main figures in one line, as printed."""
    head = f"{task.metric} {m['auc']:.4f} (95% CI {m['auc_low']:.4f}-{m['auc_high']:.4f})"
    if task.binary:
        return (f"{head}; at threshold {threshold['value']:.3f} ({threshold['rule']}): "
                f"sensitivity to {task.classes[1]} {m['sensitivity']:.3f}, specificity "
                f"{m['specificity']:.3f}, F1 {m['f1']:.3f}")
    return (f"{head}, accuracy {m['accuracy']:.3f}, balanced accuracy "
            f"{m['balanced_accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}, "
            f"kappa {m['kappa']:.3f}")


def _curves(task: Task, source: Source, m: dict, main: str, out: Path) -> list[page.Figure]:
    """The task's two figures of the probabilities: two classes, ROC and
    precision-recall curves and calibration (of p(positive)), every group;
    K, one-vs-rest ROC curves and each class's sensitivity, of ``main``."""
    if task.binary:
        return [
            figure(figures.roc_pr(source.groups, task.classes), out / "roc_pr.png",
                   "ROC and precision-recall curves",
                   "Each fold's out-of-fold predictions, and all of them pooled (black)."
                   if main == POOLED else "The labelled test tiles."),
            figure(figures.calibration(source.groups, task.classes), out / "calibration.png",
                   "Calibration",
                   f"How often tiles given a probability p really are {task.classes[1]}; "
                   "below it, how the predictions spread."),
        ]
    frame = source.groups[main]
    return [
        figure(figures.roc_ovr(frame["label"], probabilities(frame, task.classes),
                               task.classes, f"{main}: one-vs-rest ROC curves"),
               out / "roc_ovr.png", "One-vs-rest ROC curves",
               "Each class against all others, from its own probability column; their "
               "mean AUC is the macro AUC above."),
        figure(figures.class_sensitivity(m["per_class"], f"{main}: sensitivity per class"),
               out / "sensitivity.png", "Sensitivity per class",
               "The fraction of each true class predicted as that class, with its number "
               "of tiles; their mean (dashed) is the balanced accuracy."),
    ]


def _training(source: Source, out: Path) -> list[page.Figure]:
    shown = []
    for k, history in source.histories.items():
        if history.empty:
            continue
        what = ("Loss, macro one-vs-rest AUC and balanced accuracy per epoch. "
                if not source.task.binary else "")
        shown.append(figure(
            figures.training_curves(history, f"fold {k}", source.classes),
            out / f"training_fold_{k}.png", f"Training curves, fold {k}",
            what + ("Both phases in one figure; the dashed line marks where fine-tuning starts."
                    if history["phase"].nunique() > 1 else
                    f"One phase ({history['phase'].iloc[0]}); the star marks the saved "
                    "model.")))
    return shown
