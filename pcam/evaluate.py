"""Evaluation: metrics at a chosen operating point, figures and an HTML report.

``evaluate(EvaluateSettings)`` reports on either

- a run (``--run``): its out-of-fold predictions per fold and pooled, and
  its training curves, into ``RUN/report/``; or
- a submission with an answer key (``--submission --answers``): the
  labelled test tiles, into ``NAME-report/`` beside the submission.

The threshold is chosen once, on the pooled out-of-fold predictions (Youden's
J, or a target sensitivity), and applied unchanged to every fold and to a
test set: choosing it on the data it is judged on would flatter it.

The report folder holds ``index.html`` (no scripts, no network: it opens
from the file system), the PNG figures it shows and ``metrics.json``.
"""
from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pcam import figures, metrics, report
from pcam.errors import PcamError
from pcam.inference import finished_folds, load_run, read_answers
from pcam.io import atomic_write_text, read_csv_log
from pcam.settings import EvaluateSettings, RunSettings, to_dict
from pcam.store import Store, open_store

POOLED = figures.POOLED


@dataclass
class Source:
    """What one report is about.

    Attributes:
        title: the report's heading.
        groups: predictions (``id``, ``label``, ``prob``) per group: each fold
            and ``pooled``, or ``test``.
        oof: the out-of-fold predictions the threshold is chosen on (None: a
            submission without its run: chosen on the test tiles, and said so).
        config: the run's settings, shown in the report.
        histories: per fold, the phases' training logs in order.
        store: where the gallery's tiles are (None: no galleries).
        notes: sentences the report shows under its summary.
        models: each fold's best model (a run's report), for Grad-CAM of
            the gallery tiles, each by the fold model that predicted it.
    """

    title: str
    groups: dict[str, pd.DataFrame]
    oof: pd.DataFrame | None
    config: RunSettings | None
    histories: dict[int, pd.DataFrame] = field(default_factory=dict)
    store: Store | None = None
    notes: list[str] = field(default_factory=list)
    models: dict[int, Path] = field(default_factory=dict)


def evaluate(settings: EvaluateSettings) -> dict:
    """Write the report that ``settings`` asks for; return its metrics."""
    if bool(settings.run) == bool(settings.submission):
        raise PcamError("give --run runs/NAME (out-of-fold report) or --submission CSV "
                        "--answers CSV (test report), one of the two")
    if settings.bootstrap < 1:
        raise PcamError(f"--bootstrap {settings.bootstrap}: give a number of resamples, e.g. 1000")
    metrics.choose_threshold([0, 1], [0, 1], settings.target_sensitivity)  # fail fast
    if settings.run:
        source, out = run_source(Path(settings.run)), Path(settings.run) / "report"
    else:
        source = submission_source(Path(settings.submission), settings.answers)
        out = Path(settings.submission).with_name(Path(settings.submission).stem + "-report")
    return write_report(source, Path(settings.out) if settings.out else out, settings)


# --- what a report is about --------------------------------------------------------

def run_source(run_dir: Path) -> Source:
    """A run's finished folds: OOF predictions, histories, the train store."""
    run_dir, config = load_run(run_dir)
    done = finished_folds(run_dir, config.folds.folds)
    if not done:
        raise PcamError(f"run {run_dir} has no finished fold (no fold_<k>/oof.csv yet): "
                        "finish training first; it resumes where it stopped")
    oof = {k: pd.read_csv(run_dir / f"fold_{k}" / "oof.csv", dtype={"id": str}) for k in done}
    groups = {f"fold {k}": frame for k, frame in oof.items()}
    groups[POOLED] = pd.concat(oof.values(), ignore_index=True)
    notes = []
    if len(done) < config.folds.folds:
        notes.append(f"{len(done)} of {config.folds.folds} folds are finished; the pooled "
                     "figures cover those.")
    store = _open_or_none(config.data.store_path / "train", notes)
    return Source(title=f"run {run_dir.resolve().name}: out-of-fold predictions",
                  groups=groups, oof=groups[POOLED], config=config,
                  histories={k: read_history(run_dir / f"fold_{k}", config) for k in done},
                  store=store, notes=notes,
                  models={k: run_dir / f"fold_{k}" / "best.keras" for k in done})


def submission_source(path: Path, answers: str) -> Source:
    """A submission joined with its answer key; the run it came from, if found
    through the submission's record (``NAME.json``), gives the threshold."""
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
    config, oof, store = None, None, None
    if run.get("run") and (Path(run["run"]) / "config.json").is_file():
        run_dir, config = load_run(Path(run["run"]))
        done = finished_folds(run_dir, config.folds.folds)
        oof = pd.concat([pd.read_csv(run_dir / f"fold_{k}" / "oof.csv") for k in done]) \
            if done else None
    if oof is None:
        notes.append("The run's out-of-fold predictions were not found (no NAME.json beside "
                     "the submission naming a run), so the threshold was chosen on these test "
                     "tiles themselves: the metrics at the threshold are optimistic.")
    data = run.get("data", {})
    if data:
        store_path = Path(data.get("store_dir") or Path(data["data_dir"]) / "store") / "test"
        store = _open_or_none(store_path, notes)
    return Source(title=f"submission {path.name} against {Path(answers).name}",
                  groups={"test": frame}, oof=oof, config=config, store=store, notes=notes)


def read_history(fold_dir: Path, config: RunSettings) -> pd.DataFrame:
    """The fold's phases' CSV logs, in training order, with a ``phase`` column."""
    from pcam.training import phases  # training imports TensorFlow: only when needed

    # read_csv_log: a log appended to by two processes repeats its header.
    logs = [read_csv_log(fold_dir / f"history_{p.name}.csv").assign(phase=p.name)
            for p in phases(config.train)]
    logs = [log for log in logs if "epoch" in log.columns]
    if not logs:
        return pd.DataFrame()
    # A phase killed between its CSV row and its backup logs that epoch again
    # when it resumes; the later row is the one training continued from.
    logs = [log.drop_duplicates("epoch", keep="last") for log in logs]
    return pd.concat(logs, ignore_index=True)


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
    chosen_on = source.oof if source.oof is not None else source.groups["test"]
    threshold = metrics.choose_threshold(chosen_on["label"], chosen_on["prob"],
                                         settings.target_sensitivity)
    rule = (f"the highest with sensitivity ≥ {settings.target_sensitivity:g}"
            if settings.target_sensitivity else "maximising Youden's J")
    where = "pooled out-of-fold predictions" if source.oof is not None else "these test tiles"
    results = {name: metrics.evaluate(frame["label"], frame["prob"], threshold,
                                      resamples=settings.bootstrap)
               for name, frame in source.groups.items()}
    main = POOLED if POOLED in results else "test"
    fold_aucs = [m["auc"] for name, m in results.items() if name.startswith("fold ")]
    images = _figures(source, results, main, threshold, out, settings.gallery)
    record = {
        "title": source.title,
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "threshold": {"value": threshold, "rule": rule, "chosen_on": where},
        "groups": results,
        "fold_auc_mean": float(np.mean(fold_aucs)) if fold_aucs else None,
        "fold_auc_std": float(np.std(fold_aucs, ddof=1)) if len(fold_aucs) > 1 else None,
        "notes": source.notes,
        "settings": to_dict(settings),
        "run_config": to_dict(source.config) if source.config else None,
    }
    atomic_write_text(out / "metrics.json", json.dumps(_plain(record), indent=2) + "\n")
    atomic_write_text(out / "index.html", report.html_page(record, images))
    m = results[main]
    print(f"{main}: AUC {m['auc']:.4f} (95% CI {m['auc_low']:.4f}-{m['auc_high']:.4f}); at "
          f"threshold {threshold:.3f} ({rule}): sensitivity {m['sensitivity']:.3f}, "
          f"specificity {m['specificity']:.3f}, F1 {m['f1']:.3f}", flush=True)
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


def _figures(source: Source, results: dict, main: str, threshold: float, out: Path,
             gallery: int) -> list[report.Figure]:
    """Draw every figure the sources allow, in the order the report shows them."""
    shown = [
        report.Figure(figures.confusion(results[main], main, out / "confusion.png"),
                      "Confusion matrix",
                      f"{main} predictions at the chosen threshold, as counts and as "
                      "fractions of each true class."),
        report.Figure(figures.roc_pr(source.groups, out / "roc_pr.png"),
                      "ROC and precision-recall curves",
                      "Each fold's out-of-fold predictions, and all of them pooled (black)."
                      if main == POOLED else "The labelled test tiles."),
        report.Figure(figures.calibration(source.groups, out / "calibration.png"),
                      "Calibration",
                      "How often tiles given a probability p really hold tumour; below it, "
                      "how the predictions spread."),
    ]
    for k, history in source.histories.items():
        if not history.empty:
            shown.append(report.Figure(
                figures.training_curves(history, f"fold {k}", out / f"training_fold_{k}.png"),
                f"Training curves, fold {k}",
                "Both phases in one figure; the dashed line marks where fine-tuning starts."
                if history["phase"].nunique() > 1 else
                f"One phase ({history['phase'].iloc[0]}); the star marks the saved model."))
    if source.store is not None and gallery:
        shown += _galleries(source, source.groups[main], threshold, out, gallery)
    return shown


def _galleries(source: Source, frame: pd.DataFrame, threshold: float, out: Path,
               n: int) -> list[report.Figure]:
    """The most confident mistakes: false positives with the highest
    probabilities, false negatives with the lowest; for a run, each again
    with Grad-CAM from the fold model that predicted it."""
    from pcam.pipeline import read_tiles  # imports TensorFlow: only for galleries

    wrong_pos = frame[(frame["label"] == 0) & (frame["prob"] >= threshold)].nlargest(n, "prob")
    wrong_neg = frame[(frame["label"] == 1) & (frame["prob"] < threshold)].nsmallest(n, "prob")
    shown = []
    for rows, name, what in ((wrong_pos, "false_positives", "False positives"),
                             (wrong_neg, "false_negatives", "False negatives")):
        tiles = read_tiles(source.store, rows["id"])
        title = f"{what}: the {len(rows)} most confident (threshold {threshold:.3f})"
        shown.append(report.Figure(figures.gallery(tiles, rows, title, out / f"{name}.png"),
                                   what, "The outlined square is the centre 32×32 region "
                                   "that decides a PCam label."))
        if source.models and len(rows) and "fold" in rows:
            heat = _gradcam_by_fold(tiles, rows, source)
            shown.append(report.Figure(
                figures.gallery(tiles, rows, f"{title}: Grad-CAM", out / f"{name}_gradcam.png",
                                heat=heat),
                f"{what}: where the model saw tumour",
                "Grad-CAM of each tile by the fold model that predicted it (evidence for "
                "tumour, red the strongest in each tile; none: no tint). A false positive "
                "shows what looked like tumour; a false negative, what tumour evidence the "
                "model still found. python scripts/explain.py --run RUN --ids ID draws one "
                "tile larger."))
    return shown


def _gradcam_by_fold(tiles: np.ndarray, rows: pd.DataFrame, source: Source) -> np.ndarray:
    """Grad-CAM maps (0..1, the tiles' size) of tumour evidence, each tile by
    its own fold's model. A model that takes centre crops is shown the crop,
    as in validation; outside it the map is 0 (the model saw nothing there)."""
    from pcam.augment import compose, eval_ops
    from pcam.gradcam import explainer, gradcam
    from pcam.inference import load_fold_model

    as_fed = np.asarray(compose(eval_ops(source.config.augment))(tiles, None))
    start = (tiles.shape[1] - as_fed.shape[1]) // 2
    heat = np.zeros(tiles.shape[:3], np.float32)
    folds = rows["fold"].to_numpy()
    for k in np.unique(folds):
        at = np.flatnonzero(folds == k)
        maps, _ = gradcam(explainer(load_fold_model(source.models[int(k)])), as_fed[at])
        heat[at, start:start + maps.shape[1], start:start + maps.shape[2]] = maps
    return heat


def _plain(value):
    """``value`` with NaN as null (JSON has no NaN) and numpy scalars as numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value
