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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pcam import locks, metrics
from pcam.data.store import Store, open_store
from pcam.errors import PcamError
from pcam.io import atomic_write_json, atomic_write_text
from pcam.kaggle.submission import read_answers
from pcam.models.saved import load_fold_model
from pcam.places import default_store, resolve_run
from pcam.predict.ensemble import Member, ensemble_oof
from pcam.report import figures, page
from pcam.runs import (LEGACY_CLASSES, finished_folds, load_run, prob_columns, probabilities,
                       read_history, read_oof, run_classes)
from pcam.settings import EvaluateSettings, RunSettings, to_dict

POOLED = figures.POOLED
TEST = "test"


@dataclass
class Source:
    """What one report is about.

    Attributes:
        title: the report's heading.
        groups: predictions (``id``, ``label``, the ``prob_columns`` of
            ``classes``; a ``fold`` column for a run; optionally ``path``)
            per group: each fold and ``pooled``, or ``test``.
        oof: the out-of-fold predictions a two-class threshold is chosen on
            (None: chosen on the test tiles, and said so, unless ``threshold``).
        config: the run's settings, shown in the report.
        classes: class names in label order.
        histories: per fold, the phases' training logs in order.
        store: where the gallery's tiles are (None: from a ``path`` column,
            or no galleries).
        notes: sentences the report shows under its summary.
        models: each fold's best model (a run's report), for Grad-CAM of
            the gallery tiles, each by the fold model that predicted it.
        label_region: side of the centre square that decides a label,
            outlined on gallery tiles (PCam: 32; class folders: 0, none).
        threshold: a two-class threshold decided elsewhere (the run's), used
            instead of choosing one.
    """

    title: str
    groups: dict[str, pd.DataFrame]
    oof: pd.DataFrame | None
    config: RunSettings | None
    classes: tuple[str, ...] = LEGACY_CLASSES
    histories: dict[int, pd.DataFrame] = field(default_factory=dict)
    store: Store | None = None
    notes: list[str] = field(default_factory=list)
    models: dict[int, Path] = field(default_factory=dict)
    label_region: int = 0
    threshold: float | None = None

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2


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
    _check_labels(frame, classes, "the predictions")
    notes = []
    if len(classes) == 2 and threshold is None:
        notes.append("No threshold was given from the run's out-of-fold predictions, so it "
                     "was chosen on these test tiles themselves: the metrics at the threshold "
                     "are optimistic.")
    source = Source(title=title, groups={TEST: frame}, oof=None, config=None, classes=classes,
                    store=store, notes=notes, label_region=_label_region(store, classes),
                    threshold=threshold)
    return write_report(source, Path(out), settings)


def report_labelled(record: dict, settings: EvaluateSettings | None = None) -> dict:
    """The report of labelled predictions that ``pcam.commands.predict.predict``
    wrote (its record's ``labelled`` entry names the CSV, the report folder and its
    title), read back from the CSV: the predictions reported are the file's."""
    scored, classes = record["labelled"], tuple(record["classes"])
    table = pd.read_csv(scored["csv"], dtype={"path": str, "label": str})
    frame = pd.DataFrame({"id": table["path"], "label": [classes.index(c) for c in table["label"]]})
    frame[prob_columns(classes)] = table[list(classes)].to_numpy()
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


# --- what a report is about --------------------------------------------------------

def run_source(run_dir: Path) -> Source:
    """A run's finished folds: OOF predictions, histories, the train store."""
    run_dir, config = load_run(run_dir)
    classes = run_classes(config)
    done = finished_folds(run_dir, config.folds.folds)
    if not done:
        raise PcamError(f"run {run_dir} has no finished fold (no fold_<k>/metrics.json yet): "
                        "finish training first; it resumes where it stopped")
    oof = {}
    for k in done:
        oof[k] = read_oof(run_dir, [k])
        _check_labels(oof[k], classes, str(run_dir / f"fold_{k}" / "oof.csv"))
    groups = {f"fold {k}": frame for k, frame in oof.items()}
    groups[POOLED] = pd.concat(oof.values(), ignore_index=True)
    notes = []
    if len(done) < config.folds.folds:
        notes.append(f"{len(done)} of {config.folds.folds} folds are finished; the pooled "
                     "figures cover those.")
    store = _open_or_none(config.data.store_path / "train", notes)
    return Source(title=f"run {run_dir.resolve().name}: out-of-fold predictions",
                  groups=groups, oof=groups[POOLED], config=config, classes=classes,
                  histories={k: read_history(run_dir / f"fold_{k}") for k in done},
                  store=store, notes=notes,
                  models={k: run_dir / f"fold_{k}" / "best.keras" for k in done},
                  label_region=_label_region(store, classes))


def submission_source(path: Path, answers: str) -> Source:
    """A submission joined with its answer key; the run it came from, if found
    through the submission's record (``NAME.json``), gives the threshold and
    the class names. Submissions hold one probability per tile: two classes."""
    if not answers:
        raise PcamError("--submission needs --answers CSV (id,label of its tiles) to be scored")
    if not path.is_file():
        raise PcamError(f"{path}: no such submission; write one with scripts/predict.py")
    key = read_answers(Path(answers))
    try:
        submitted = pd.read_csv(path, dtype={"id": str})
        frame = submitted.rename(columns={"label": "prob"}).merge(key, on="id")[
            ["id", "label", "prob"]]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError, UnicodeDecodeError):
        raise PcamError(f"{path}: not a submission (expected a CSV with columns id,label)") \
            from None
    if frame.empty:
        raise PcamError(f"--answers {answers}: none of its ids is in {path}; is it the answer "
                        "key of this test set?")
    notes = [] if len(frame) == len(submitted) else [
        f"Only {len(frame):,} of the submission's {len(submitted):,} tiles have an answer; "
        "the report covers those."]
    record = path.with_suffix(".json")
    run = json.loads(record.read_text()) if record.is_file() else {}
    config, oof, store, classes = None, None, None, LEGACY_CLASSES
    # An ensemble's record lists its runs; one run's also names it as "run".
    runs = [r["run"] for r in run.get("runs", [])] or ([run["run"]] if run.get("run") else [])
    missing = [r for r in runs if not (Path(r) / "config.json").is_file()]
    why = (f"its run {missing[0]} is not there" if missing else
           "no NAME.json beside the submission names its runs")
    if runs and not missing:
        members = [Member(*load_run(Path(r)), ()) for r in runs]
        config = members[0].config
        classes = run_classes(config)
        if len(classes) != 2:
            raise PcamError(f"{path}: its run {members[0].run_dir} has {len(classes)} classes; "
                            "a submission holds one probability per tile, so it is scored for "
                            "two-class runs only (report a labelled K-class test set with "
                            "scripts/predict.py)")
        oof, why = ensemble_oof(members, run.get("average", "mean"))
    if oof is None:
        notes.append(f"No out-of-fold predictions of the submission's runs ({why}), so the "
                     "threshold was chosen on these test tiles themselves: the metrics at the "
                     "threshold are optimistic.")
    data = run.get("data", {})
    if data:
        store_path = Path(data.get("store_dir") or default_store(
            data["data_dir"], data.get("tile_size", 0), data.get("max_tile_size", 0))) / "test"
        store = _open_or_none(store_path, notes)
    return Source(title=f"submission {path.name} against {Path(answers).name}",
                  groups={TEST: frame}, oof=oof, config=config, classes=classes, store=store,
                  notes=notes, label_region=_label_region(store, classes))


def _check_labels(frame: pd.DataFrame, classes: Sequence[str], what: str) -> None:
    missing = [c for c in ["label", *prob_columns(classes)] if c not in frame]
    if missing:
        raise PcamError(f"{what} lacks column(s) {', '.join(missing)} for the classes "
                        f"{', '.join(classes)}; was it written by another version of pcam?")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    if labels.isna().any() or not labels.between(0, len(classes) - 1).all():
        raise PcamError(f"{what}: labels must be class indices 0 to {len(classes) - 1} "
                        f"({', '.join(classes)})")


def _label_region(store: Store | None, classes: Sequence[str]) -> int:
    """Side of the centre square that decides a label: the store's word, else
    PCam's 32 for stores and runs from before stores said it (they were PCam's)."""
    if store is not None and "label_region" in store.manifest:
        return int(store.manifest["label_region"] or 0)
    return figures.PCAM_REGION if tuple(classes) == LEGACY_CLASSES and store is not None else 0


def _open_or_none(path: Path, notes: list[str]) -> Store | None:
    try:
        return open_store(path)
    except PcamError:
        notes.append(f"No tile store at {path}, so the report has no tile galleries "
                     "(build it with scripts/prepare.py and evaluate again).")
        return None


# --- the report ----------------------------------------------------------------------

def write_report(source: Source, out: Path, settings: EvaluateSettings) -> dict:
    """Metrics, figures, ``metrics.json`` and ``index.html`` into ``out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PcamError(f"cannot write the report to {out}: {err.strerror}; choose another "
                        "--out") from None
    earlier = _earlier_report(out)
    if source.binary:
        record, images = _binary_report(source, out, settings)
    else:
        record, images = _multiclass_report(source, out, settings)
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
    fold_aucs = [m["auc"] for name, m in results.items() if name.startswith("fold ")]
    return {
        "title": source.title,
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "classes": list(source.classes),
        "task": "binary" if source.binary else "multiclass",
        **extra,
        "groups": results,
        "fold_auc_mean": float(np.mean(fold_aucs)) if fold_aucs else None,
        "fold_auc_std": float(np.std(fold_aucs, ddof=1)) if len(fold_aucs) > 1 else None,
        "notes": source.notes,
        "settings": to_dict(settings),
        "run_config": to_dict(source.config) if source.config else None,
    }


def _main(results: dict) -> str:
    return POOLED if POOLED in results else TEST


def _binary_report(source: Source, out: Path, settings: EvaluateSettings):
    positive = source.classes[1]
    if source.threshold is not None:
        threshold = float(source.threshold)
        rule, where = "the model's own", "run's pooled out-of-fold predictions"
    else:
        chosen_on = source.oof if source.oof is not None else source.groups[TEST]
        threshold = metrics.choose_threshold(chosen_on["label"], chosen_on["prob"],
                                             settings.target_sensitivity)
        rule = (f"the highest with sensitivity ≥ {settings.target_sensitivity:g}"
                if settings.target_sensitivity else "maximising Youden's J")
        where = ("pooled out-of-fold predictions" if source.oof is not None
                 else "these test tiles")
    results = {name: metrics.evaluate(frame["label"], frame["prob"], threshold,
                                      resamples=settings.bootstrap)
               for name, frame in source.groups.items()}
    main = _main(results)
    record = _record(source, results, settings, positive=positive,
                     threshold={"value": threshold, "rule": rule, "chosen_on": where})
    m = results[main]
    print(f"{main}: AUC {m['auc']:.4f} (95% CI {m['auc_low']:.4f}-{m['auc_high']:.4f}); at "
          f"threshold {threshold:.3f} ({rule}): sensitivity to {positive} "
          f"{m['sensitivity']:.3f}, specificity {m['specificity']:.3f}, F1 {m['f1']:.3f}",
          flush=True)
    counts = [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]
    shown = [
        _figure(figures.confusion(counts, source.classes,
                                  f"{main}: confusion matrix at threshold {threshold:.3f}"),
                out / "confusion.png", "Confusion matrix",
                f"{main} predictions at the chosen threshold (predicted {positive} when "
                f"p({positive}) ≥ {threshold:.3f}), as counts and as fractions of each true "
                "class."),
        _figure(figures.roc_pr(source.groups, source.classes), out / "roc_pr.png",
                "ROC and precision-recall curves",
                "Each fold's out-of-fold predictions, and all of them pooled (black)."
                if main == POOLED else "The labelled test tiles."),
        _figure(figures.calibration(source.groups, source.classes), out / "calibration.png",
                "Calibration",
                f"How often tiles given a probability p really are {positive}; below it, "
                "how the predictions spread."),
        *_training(source, out),
    ]
    if settings.gallery:
        shown += _binary_galleries(source, source.groups[main], threshold, out,
                                   settings.gallery)
    return record, shown


def _multiclass_report(source: Source, out: Path, settings: EvaluateSettings):
    classes = source.classes
    results = {name: metrics.evaluate_multiclass(frame["label"], probabilities(frame, classes),
                                                 classes, resamples=settings.bootstrap)
               for name, frame in source.groups.items()}
    main = _main(results)
    balanced = [m["balanced_accuracy"] for name, m in results.items()
                if name.startswith("fold ")]
    record = _record(
        source, results, settings, prediction="the most probable class (no threshold)",
        fold_balanced_accuracy_mean=float(np.mean(balanced)) if balanced else None,
        fold_balanced_accuracy_std=float(np.std(balanced, ddof=1)) if len(balanced) > 1
        else None)
    m = results[main]
    print(f"{main}: macro AUC {m['auc']:.4f} (95% CI {m['auc_low']:.4f}-{m['auc_high']:.4f}), "
          f"accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
          f"macro F1 {m['macro_f1']:.3f}, kappa {m['kappa']:.3f}", flush=True)
    frame = source.groups[main]
    shown = [
        _figure(figures.confusion(m["confusion"], classes,
                                  f"{main}: confusion matrix (predicted: most probable class)"),
                out / "confusion.png", "Confusion matrix",
                f"{main} predictions, the most probable class of each tile, as counts and as "
                "fractions of each true class (the diagonal: each class's sensitivity)."),
        _figure(figures.roc_ovr(frame["label"], probabilities(frame, classes), classes,
                                f"{main}: one-vs-rest ROC curves"),
                out / "roc_ovr.png", "One-vs-rest ROC curves",
                "Each class against all others, from its own probability column; their "
                "mean AUC is the macro AUC above."),
        _figure(figures.class_sensitivity(m["per_class"], f"{main}: sensitivity per class"),
                out / "sensitivity.png", "Sensitivity per class",
                "The fraction of each true class predicted as that class, with its number "
                "of tiles; their mean (dashed) is the balanced accuracy."),
        *_training(source, out),
    ]
    if settings.gallery:
        shown += _multiclass_galleries(source, frame, out, settings.gallery)
    return record, shown


def _figure(fig, path: Path, title: str, caption: str) -> page.Figure:
    return page.Figure(figures.save(fig, path), title, caption)


def _training(source: Source, out: Path) -> list[page.Figure]:
    shown = []
    for k, history in source.histories.items():
        if history.empty:
            continue
        what = ("Loss, macro one-vs-rest AUC and balanced accuracy per epoch. "
                if not source.binary else "")
        shown.append(_figure(
            figures.training_curves(history, f"fold {k}", source.classes),
            out / f"training_fold_{k}.png", f"Training curves, fold {k}",
            what + ("Both phases in one figure; the dashed line marks where fine-tuning starts."
                    if history["phase"].nunique() > 1 else
                    f"One phase ({history['phase'].iloc[0]}); the star marks the saved "
                    "model.")))
    return shown


# --- galleries -------------------------------------------------------------------------

def confident_mistakes(labels, probs, per_class: int) -> np.ndarray:
    """Row indices of the most confident mistakes of K-class predictions: up
    to ``per_class`` per true class, grouped by class in label order, each
    group from the highest probability given to a wrong class down."""
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    chosen = []
    for c in range(probs.shape[1]):
        wrong = np.flatnonzero((labels == c) & (predicted != c))
        chosen.append(wrong[np.argsort(-confidence[wrong], kind="stable")][:per_class])
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


def _can_show_tiles(source: Source, frame: pd.DataFrame) -> bool:
    return source.store is not None or "path" in frame


def _read_tiles(source: Source, rows: pd.DataFrame) -> np.ndarray:
    """The gallery's tiles: from the tile store by id, else from image files."""
    if source.store is not None:
        from pcam.data.pipeline import read_tiles  # imports TensorFlow: only for galleries

        return read_tiles(source.store, rows["id"])
    return read_images(rows["path"])


def read_images(paths) -> np.ndarray:
    """RGB uint8 images from files (TIFF, PNG, JPEG, ...), for a gallery of a
    test set outside any store; made square tiles of the first one's size
    (centre crop and resize, as a store makes them) when they differ."""
    from pcam.data.images import decode_image, to_tile

    images = []
    for path in paths:
        image, problem = decode_image(path)
        if image is None:
            raise PcamError(f"{path} {problem}: the report's gallery cannot show it; pass "
                            "--gallery 0 to leave galleries out")
        if images and image.shape != images[0].shape:
            image = to_tile(image, images[0].shape[0])
        elif not images and image.shape[0] != image.shape[1]:
            image = to_tile(image, min(image.shape[:2]))
        images.append(image)
    return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)


def _region_note(source: Source) -> str:
    if not source.label_region:
        return ""
    r = source.label_region
    return f" The outlined square is the centre {r}×{r} region that decides a label."


def _multiclass_galleries(source: Source, frame: pd.DataFrame, out: Path,
                          n: int) -> list[page.Figure]:
    """The most confident mistakes of each true class; for a run, again with
    Grad-CAM of the (wrong) predicted class by the fold model that predicted it."""
    if not _can_show_tiles(source, frame):
        return []
    probs = probabilities(frame, source.classes)
    at = confident_mistakes(frame["label"], probs, n)
    rows = frame.iloc[at].reset_index(drop=True).assign(
        predicted=probs[at].argmax(axis=1), confidence=probs[at].max(axis=1))
    if rows.empty:
        return []
    tiles = _read_tiles(source, rows)
    title = f"The most confident mistakes, up to {n} per true class"
    shown = [_figure(figures.mistakes(tiles, rows, source.classes, title, columns=n,
                                      label_region=source.label_region),
                     out / "mistakes.png", "Most confident mistakes",
                     "For each true class (a line), the tiles given the highest probability of "
                     "a wrong class, with that class and its probability." + _region_note(source))]
    if source.models and "fold" in rows:
        heat = _gradcam_by_fold(tiles, rows, source, rows["predicted"].to_numpy())
        shown.append(_figure(
            figures.mistakes(tiles, rows, source.classes, f"{title}: Grad-CAM", columns=n,
                             heat=heat, label_region=source.label_region),
            out / "mistakes_gradcam.png", "Most confident mistakes: what the model saw",
            "Grad-CAM of each tile for the class it was wrongly called, by the fold model "
            "that predicted it (red: the strongest evidence in each tile; none: no tint)."))
    return shown


def _binary_galleries(source: Source, frame: pd.DataFrame, threshold: float, out: Path,
                      n: int) -> list[page.Figure]:
    """The most confident mistakes: false positives with the highest
    probabilities, false negatives with the lowest; for a run, each again
    with Grad-CAM (evidence for the positive class) from the fold model
    that predicted it."""
    if not _can_show_tiles(source, frame):
        return []
    negative, positive = source.classes
    wrong_pos = frame[(frame["label"] == 0) & (frame["prob"] >= threshold)].nlargest(n, "prob")
    wrong_neg = frame[(frame["label"] == 1) & (frame["prob"] < threshold)].nsmallest(n, "prob")
    shown = []
    for rows, name, what in ((wrong_pos, "false_positives",
                              f"False positives ({negative} called {positive})"),
                             (wrong_neg, "false_negatives",
                              f"False negatives ({positive} called {negative})")):
        tiles = _read_tiles(source, rows)
        captions = [f"{figures.short_id(row.id)}\ntrue: {source.classes[int(row.label)]}\n"
                    f"p({positive}) = {row.prob:.3f}" for row in rows.itertuples()]
        title = f"{what}: the {len(rows)} most confident (threshold {threshold:.3f})"
        shown.append(_figure(figures.gallery(tiles, captions, title,
                                             label_region=source.label_region),
                             out / f"{name}.png", what,
                             f"Each tile's true class and p({positive})." + _region_note(source)))
        if source.models and len(rows) and "fold" in rows:
            heat = _gradcam_by_fold(tiles, rows, source, 1)
            shown.append(_figure(
                figures.gallery(tiles, captions, f"{title}: Grad-CAM", heat=heat,
                                label_region=source.label_region),
                out / f"{name}_gradcam.png", f"{what}: where the model saw {positive}",
                f"Grad-CAM of each tile by the fold model that predicted it (evidence for "
                f"{positive}, red the strongest in each tile; none: no tint). A false positive "
                f"shows what looked like {positive}; a false negative, what {positive} "
                "evidence the model still found. python scripts/explain.py --run RUN --ids ID "
                "draws one tile larger."))
    return shown


def _gradcam_by_fold(tiles: np.ndarray, rows: pd.DataFrame, source: Source,
                     target) -> np.ndarray:
    """Grad-CAM maps (0..1, the tiles' size), each tile by its own fold's model.

    Args:
        target: the class whose evidence is shown: an index for every tile,
            or an array with one per row.

    A model that takes centre crops is shown the crop, as in validation;
    outside it the map is 0 (the model saw nothing there).
    """
    from pcam.data.augment import compose, eval_ops
    from pcam.models.gradcam import explainer, gradcam

    as_fed = np.asarray(compose(eval_ops(source.config.augment))(tiles, None))
    start = (tiles.shape[1] - as_fed.shape[1]) // 2
    heat = np.zeros(tiles.shape[:3], np.float32)
    folds = rows["fold"].to_numpy()
    targets = np.broadcast_to(np.asarray(target), (len(rows),))
    for k in np.unique(folds):
        at = np.flatnonzero(folds == k)
        wanted = targets[at]
        maps, _ = gradcam(explainer(load_fold_model(source.models[int(k)])), as_fed[at],
                          target=int(wanted[0]) if np.ndim(target) == 0 else wanted.copy())
        heat[at, start:start + maps.shape[1], start:start + maps.shape[2]] = maps
    return heat

