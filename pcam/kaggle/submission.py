"""The competition's submission: ``id,label`` in sample_submission's order, checked.

::

    a Kaggle run's fold models x TTA on the test store
    ─▶ id,label in sample_submission's order ─▶ checked ─▶ submissions/NAME.csv + NAME.json
"""
from __future__ import annotations

import dataclasses
import math
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pcam import metrics
from pcam.data import competition as comp
from pcam.errors import PcamError, listed
from pcam.io import atomic_path, atomic_write_json, cannot_write, check_writable
from pcam.predict.ensemble import (data_settings, ensemble_line, ensemble_name, images_per_call,
                                   iso_time, load_members, model_files, predict_test_sets,
                                   runs_record)
from pcam.predict.tta import TTA_VIEWS, VIEW_NAMES, combine_runs
from pcam.settings import DataSettings, PredictSettings, to_dict

# --- the submission ----------------------------------------------------------------

def read_sample_submission(path: Path) -> pd.DataFrame:
    """The competition's sample_submission.csv (its ids, in submission order)."""
    table, problems = comp.read_ids_csv(Path(path), labelled=False)
    if problems:
        raise PcamError("; ".join(problems))
    return table


def _read_submission(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise PcamError(f"{path}: no such file; write a submission first "
                        f"(python scripts/predict.py --run runs/NAME)")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise PcamError(f"{path}: empty file (expected a header 'id,label' and one row per "
                        f"test tile)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise PcamError(f"{path}: not a readable CSV ({' '.join(str(err).split())})") from None


def validate_submission(submission: str | Path | pd.DataFrame, sample_submission: str | Path,
                        name: str | None = None) -> pd.DataFrame:
    """Check a submission against the competition's sample_submission.csv.

    Checked: the header is exactly ``id,label``; every id of the sample is
    there once and no other id (so the row count matches: 57,458 for the
    competition); every label is a finite probability in [0, 1]. The row
    order is not checked: Kaggle matches rows by id (``predict`` writes
    sample_submission's order anyway). Every problem found is reported
    together, each with its count and first few rows or ids.

    Args:
        submission: a CSV path, or a table with columns id and label.
        sample_submission: path of the competition's sample_submission.csv.
        name: how to call the submission in messages (default: its path).

    Returns:
        The submission as a table: id (str), label (float64).

    Raises:
        PcamError: one message naming every problem.
    """
    if isinstance(submission, pd.DataFrame):
        table, shown = submission, name or "the submission"
    else:
        table, shown = _read_submission(Path(submission)), name or str(submission)
    if list(table.columns) != ["id", "label"]:
        header = ",".join(map(str, table.columns))
        if not isinstance(submission, pd.DataFrame):  # as written, not as pandas names it
            with open(submission, encoding="utf-8", errors="replace") as fh:
                header = fh.readline().rstrip("\r\n")
        raise PcamError(f"{shown}: header is '{header}', expected exactly 'id,label'")
    sample = read_sample_submission(Path(sample_submission))
    ids = table["id"].astype(str)
    row = pd.Series(np.arange(len(table)) + 2, index=table.index)  # CSV line, after the header
    problems = _id_problems(ids, row, sample, Path(sample_submission).name)
    labels, label_problems = _labels(table, ids, row)
    problems += label_problems
    if problems:
        raise PcamError(f"{shown} is not a valid submission: " + "; ".join(problems))
    return pd.DataFrame({"id": ids.to_numpy(), "label": labels.to_numpy()})


def _id_problems(ids: pd.Series, row: pd.Series, sample: pd.DataFrame, sample_name: str) -> list:
    """Duplicate, missing and unknown ids, and a row count that is not the sample's."""
    problems = []
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        lines = dup.groupby(dup, sort=False).apply(
            lambda g: f"'{g.iloc[0]}' (rows {', '.join(map(str, row[g.index]))})")
        problems.append(f"{dup.nunique()} id(s) appear more than once: {listed(lines)}")
    wanted, have = set(sample["id"]), set(ids)
    missing = [i for i in sample["id"] if i not in have]
    extra = [i for i in ids.drop_duplicates() if i not in wanted]
    if missing:
        problems.append(f"{len(missing)} id(s) of {sample_name} are missing: {listed(missing)}")
    if extra:
        problems.append(f"{len(extra)} id(s) are not in {sample_name}: {listed(extra)}")
    if len(ids) != len(sample):
        problems.append(f"{len(ids):,} rows, {sample_name} has {len(sample):,}")
    return problems


def _labels(table: pd.DataFrame, ids: pd.Series, row: pd.Series) -> tuple[pd.Series, list]:
    """The labels as float64, and those that are not finite probabilities in [0, 1]."""
    raw = table["label"]
    labels = pd.to_numeric(raw, errors="coerce").astype(np.float64)
    text = raw.astype(str).str.strip()
    nan = labels.isna() & text.str.lower().isin(["", "nan", "na", "n/a", "null", "none"])
    word = labels.isna() & ~nan
    inf = np.isinf(labels)
    outside = labels.notna() & ~inf & ((labels < 0) | (labels > 1))
    problems = []
    for mask, what in ((nan, "are NaN or empty"), (word, "are not numbers"),
                       (inf, "are infinite"), (outside, "are outside [0, 1]")):
        if mask.any():
            where = [f"row {row[i]} ({ids[i]}: '{text[i]}')" for i in table.index[mask]]
            problems.append(f"{int(mask.sum())} label(s) {what}: {listed(where)}")
    return labels, problems


def write_submission(frame: pd.DataFrame, out: Path, sample_submission: Path,
                     record: dict | None = None) -> pd.DataFrame:
    """Check ``frame`` (id, label), then write it to ``out`` atomically, and the
    ``record`` of how it was made beside it as ``out`` with suffix .json.

    Nothing is written when the check fails. The written file is read back
    and checked again before it takes its name, so what Kaggle reads is
    what was checked.
    """
    out = Path(out)
    frame = validate_submission(frame, sample_submission, name=f"the submission for {out}")
    try:
        with atomic_path(out) as tmp:
            # 9 significant digits: every float32 probability, and every rank of
            # 57,458 tiles, survives the round trip through text.
            frame.to_csv(tmp, index=False, float_format="%.9g")
            validate_submission(tmp, sample_submission, name=str(out))
        if record is not None:
            atomic_write_json(out.with_suffix(".json"), record)
    except OSError as err:
        raise cannot_write(out, err) from None
    return frame


def read_answers(path: Path) -> pd.DataFrame:
    """An answer key: id,label with labels 0/1 (as make_kaggle_layout.py writes it)."""
    table, problems = comp.read_ids_csv(Path(path), labelled=True)
    if problems:
        raise PcamError("--answers: " + "; ".join(problems))
    return table.assign(label=table["label"].astype(int))


def score(submission: pd.DataFrame, answers: pd.DataFrame) -> tuple[float, int]:
    """AUC of the submission on the tiles the answer key covers, and how many those are."""
    both = submission.merge(answers, on="id", suffixes=("", "_true"))
    if both.empty:
        raise PcamError("--answers: none of its ids is in the submission; is it the answer "
                        "key of this test set?")
    return metrics.auc(both["label_true"], both["label"]), len(both)


def predict_submission(settings: PredictSettings) -> dict:
    """Predict the test set with the runs' folds x TTA views and write the submission.

    Steps: the runs and their finished folds; each run's test tile store
    (built or reused, in sample_submission's order); for each fold, its best
    model over the store with TTA; the folds combined, then the runs
    (``combine_runs``); the submission checked and written with its record
    (``NAME.json``); with ``answers``, the AUC printed.

    Returns:
        The record written beside the submission (settings, runs and their
        folds, views, every model file, time, the runs' configs, and the AUC
        when scored).
    """
    start = time.perf_counter()
    members = load_members(settings)
    views = TTA_VIEWS[settings.tta]
    data = data_settings(members[0].config, settings)
    out = Path(settings.out or Path("submissions") / f"{ensemble_name(members)}.csv")
    answers = read_answers(Path(settings.answers)) if settings.answers else None  # fail fast
    check_writable(out)  # fail fast, too: before minutes of prediction, not after
    if len(members) == 1:  # the resolved settings, as one run's record always had them
        settings = dataclasses.replace(settings, folds=members[0].folds,
                                       batch_size=images_per_call(settings, members[0]),
                                       data_dir=data.data_dir, store_dir=data.store_dir)
    settings = dataclasses.replace(settings, out=str(out))

    sample = Path(data.data_dir) / comp.TEST_CSV
    print(ensemble_line(members, views, settings.average), flush=True)
    per_run, index, bad = predict_test_sets(members, settings, views,
                                             "images to predict; pass --images")
    # The competition's label column is the probability of class 1 (tumour).
    frame = pd.DataFrame({"id": index["id"].to_numpy(),
                          "label": combine_runs(per_run, settings.average)[:, 1]})
    record = {
        **runs_record(members, settings), "tta": settings.tta,
        "views": [VIEW_NAMES[k] for k in views], "average": settings.average,
        "batch_images": images_per_call(settings, members[0]), "tiles": len(frame),
        "model_files": model_files(members),
        "sample_submission": str(sample), "written": iso_time(time.time()),
        "seconds": round(time.perf_counter() - start, 1),
        "settings": to_dict(settings), "data": to_dict(data),
    }
    scored = None
    if answers is not None:
        scored = score(frame, answers)
        record["answers"] = {"path": settings.answers, "auc": _json_float(scored[0]),
                             "tiles": scored[1]}
    try:
        write_submission(frame, out, sample, record)
    except PcamError as err:
        if bad:  # the likely cause: tiles left out of the store with --skip-bad
            path, n = bad[0]
            raise PcamError(f"{err} (the test store left out {n} unreadable tile(s), "
                            f"listed in {path / 'bad_tiles.csv'}: a submission needs "
                            f"every test tile)") from None
        raise
    _say_written(out, len(frame), sample, scored, settings.answers)
    return record


def _say_written(out: Path, rows: int, sample: Path, scored, answers: str) -> None:
    print(f"submission: {out} ({rows:,} rows, checked against {sample})", flush=True)
    print(f"settings:   {out.with_suffix('.json')}", flush=True)
    if scored is not None:
        auc, n = scored
        print(f"AUC on {answers}: {auc:.4f} ({n:,} of {rows:,} tiles)", flush=True)
    if rows == comp.N_TEST:
        print(f"submit it: python scripts/submit.py {shlex.quote(str(out))} -m \"...\"",
              flush=True)
    else:  # a sample (the demo's) or a test set of one's own: Kaggle would refuse it
        print(f"not the competition's test set ({rows:,} of {comp.N_TEST:,} tiles): "
              "nothing to submit to Kaggle", flush=True)


def _json_float(value: float):
    return None if math.isnan(value) else value


def submit_file(csv_path: str | Path, message: str, competition: str = comp.NAME,
                data_dir: str | Path = DataSettings().data_dir) -> str:
    """Check a submission against the competition's sample_submission.csv, then
    upload it (``pcam.kaggle.api.submit``). Nothing is uploaded when the check fails.

    Returns:
        Kaggle's answer ("Successfully submitted to ...").
    """
    from pcam.kaggle.api import submit, submit_command

    csv_path = Path(csv_path)
    sample = Path(data_dir) / comp.TEST_CSV
    if not sample.is_file():
        raise PcamError(f"cannot check {csv_path}: {sample} not found; pass --data-dir with "
                        f"the competition folder (the one holding {comp.TEST_CSV})")
    frame = validate_submission(csv_path, sample)
    print(f"{csv_path}: valid ({len(frame):,} rows, every id of {sample} once)", flush=True)
    print(f"the same with the kaggle client: {submit_command(csv_path, message, competition)}",
          flush=True)
    answer = submit(csv_path, message, competition)
    print(answer, flush=True)
    return answer
