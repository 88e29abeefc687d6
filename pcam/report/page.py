"""The evaluation report as one HTML page.

Plain HTML with its style inline: no scripts, no fonts or styles from the
network, figures referenced by relative paths, so ``index.html`` opens from
the file system, offline, and the report folder can be zipped and mailed.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import NamedTuple

from pcam.config import dotted_items
from pcam.runs import LEGACY_CLASSES
from pcam.task import Task

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; font-size: 1.25rem;
       border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta { color: #666; font-size: .9rem; } .headline { font-size: 1.15rem; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .92rem; margin: .6rem 0; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
tr.pooled td { font-weight: 600; background: #fafafa; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; } .note { background: #fff8e1; padding: .5rem .8rem;
       border-left: 4px solid #f0b400; margin: .4rem 0; }
details { margin: .6rem 0; } summary { cursor: pointer; font-weight: 600; }
td.key { font-family: ui-monospace, monospace; text-align: left; }
td.value { text-align: left; font-family: ui-monospace, monospace; }
"""

# Metric columns of the two-class table: (key in the metrics, heading, format); the
# heading "positives" becomes the positive class's name.
COLUMNS = [("n", "tiles", "{:,}"), ("positives", "positives", "{:,}"),
           ("auc", "ROC AUC", "{:.4f}"),
           ("auc_ci", "95% CI (bootstrap)", "{}"), ("accuracy", "accuracy", "{:.4f}"),
           ("precision", "precision", "{:.4f}"), ("sensitivity", "sensitivity", "{:.4f}"),
           ("specificity", "specificity", "{:.4f}"), ("f1", "F1", "{:.4f}"),
           ("log_loss", "log loss", "{:.4f}")]
# The K-class table, per group.
MULTICLASS_COLUMNS = [("n", "tiles", "{:,}"), ("auc", "macro AUC (one vs rest)", "{:.4f}"),
                      ("auc_ci", "95% CI (bootstrap)", "{}"),
                      ("accuracy", "accuracy", "{:.4f}"),
                      ("balanced_accuracy", "balanced accuracy", "{:.4f}"),
                      ("macro_f1", "macro F1", "{:.4f}"), ("kappa", "Cohen's κ", "{:.4f}"),
                      ("log_loss", "log loss", "{:.4f}")]
# What the metrics table's numbers mean, by task kind.
METRICS_NOTE = {
    "binary": "AUC needs no threshold; accuracy, precision, sensitivity, specificity and F1 "
              "are at the threshold above.",
    "multiclass": "The predicted class is the most probable one (no threshold). Balanced "
                  "accuracy is the mean of the per-class sensitivities, and macro AUC the "
                  "mean of the per-class one-vs-rest AUCs (classes without tiles are left out "
                  "of both), so a large class does not hide a small one.",
}
# The per-class table of a report (two classes: at the threshold).
CLASS_COLUMNS = [("support", "tiles", "{:,}"), ("precision", "precision", "{:.3f}"),
                 ("sensitivity", "sensitivity (recall)", "{:.3f}"),
                 ("specificity", "specificity", "{:.3f}"), ("f1", "F1", "{:.3f}"),
                 ("auc", "AUC (one vs rest)", "{:.4f}")]


class Figure(NamedTuple):
    """A PNG in the report folder, with its heading and caption."""

    path: Path
    title: str
    caption: str


def html_page(record: dict, images: list[Figure]) -> str:
    """The report page: summary, metrics tables, figures, settings.

    Args:
        record: what ``pcam.report.evaluate`` writes as ``metrics.json``; its
            ``task`` ("binary", the default for older records, or
            "multiclass") decides the summary and the tables.
        images: the figures, in the order shown.
    """
    e = html.escape
    main = "pooled" if "pooled" in record["groups"] else "test"
    summary = _summary(record, main)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(record['title'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(record['title'])}</h1>",
        f'<p class="meta">written {e(record["written"])} by pcam (scripts/evaluate.py)</p>',
        *summary[:1],
        *[f'<p class="note">{e(note)}</p>' for note in record["notes"]],
        *summary[1:],
    ]
    for fig in images:
        parts += [f"<h2>{e(fig.title)}</h2>", "<figure>",
                  f'<img src="{e(fig.path.name)}" alt="{e(fig.title)}">',
                  f"<figcaption>{e(fig.caption)}</figcaption></figure>"]
    parts += ["<h2>Settings</h2>", _settings("Run settings (config.json)", record["run_config"]),
              _settings("Report settings", record["settings"]), "</body></html>"]
    return "\n".join(parts) + "\n"


def _summary(record: dict, main: str) -> list[str]:
    """Headline, metrics table and per-class table of a report, two classes or K
    (a two-class record written before ``per_class`` has no per-class table)."""
    e = html.escape
    m = record["groups"][main]
    task = _task(record)
    parts = [_headline(record, m, task), "<h2>Metrics</h2>",
             _table(record["groups"], _columns(record, task)), _fold_spread(record),
             f'<p class="meta">{METRICS_NOTE[task.kind]} The metrics are also in '
             '<a href="metrics.json">metrics.json</a>.</p>']
    if m.get("per_class"):
        parts += [f"<h2>Per class ({e(main)})</h2>", _class_table(m["per_class"]),
                  "<p class=\"meta\">Precision: of the tiles called this class, the fraction "
                  "that are; sensitivity: of the tiles of this class, the fraction called it; "
                  "specificity: of the other tiles, the fraction not called it.</p>"]
    return parts


def _headline(record: dict, m: dict, task: Task) -> str:
    """The report's first paragraph: the AUC and the metrics of its decision."""
    e = html.escape
    classes = task.classes
    if task.binary:
        t = record["threshold"]
        positive = record.get("positive") or classes[1]
        return (f'<p class="headline">ROC AUC <b>{_fmt(m["auc"], "{:.4f}")}</b> '
                f"(95% CI {_ci(m)}) over {m['n']:,} tiles, {e(positive)} against "
                f"{e(classes[0])}. At threshold <b>{t['value']:.3f}</b> on p({e(positive)}) "
                f"({e(t['rule'])}, chosen on the {e(t['chosen_on'])}): sensitivity "
                f"{_fmt(m['sensitivity'], '{:.3f}')}, specificity "
                f"{_fmt(m['specificity'], '{:.3f}')}, F1 {_fmt(m['f1'], '{:.3f}')}.</p>")
    return (f'<p class="headline">Macro one-vs-rest ROC AUC <b>{_fmt(m["auc"], "{:.4f}")}</b> '
            f"(95% CI {_ci(m)}) over {m['n']:,} tiles of {len(classes)} classes. Predicting "
            f"the most probable class: balanced accuracy "
            f"<b>{_fmt(m['balanced_accuracy'], '{:.3f}')}</b> (chance {1 / len(classes):.3f}), "
            f"accuracy {_fmt(m['accuracy'], '{:.3f}')}, macro F1 "
            f"{_fmt(m['macro_f1'], '{:.3f}')}, Cohen's κ {_fmt(m['kappa'], '{:.3f}')}.</p>")


def _columns(record: dict, task: Task) -> list:
    """The metrics table's columns; two classes name the positive class's column."""
    if not task.binary:
        return MULTICLASS_COLUMNS
    positive = html.escape(record.get("positive") or task.classes[1])
    return [(key, positive if key == "positives" else heading, fmt)
            for key, heading, fmt in COLUMNS]


def gallery_page(title: str, intro: str, images: list[Figure]) -> str:
    """A page of figures under a heading and an introduction (Grad-CAM pictures)."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{e(title)}</h1>", f'<p class="meta">{e(intro)}</p>']
    for fig in images:
        parts += ["<figure>", f'<img src="{e(fig.path.name)}" alt="{e(fig.title)}">',
                  f"<figcaption>{e(fig.caption)}</figcaption></figure>"]
    return "\n".join(parts + ["</body></html>"]) + "\n"


def _table(groups: dict, columns: list) -> str:
    head = "".join(f"<th>{heading}</th>" for _, heading, _ in columns)
    rows = []
    for name, m in groups.items():
        cells = "".join(f"<td>{_ci(m) if key == 'auc_ci' else _fmt(m[key], fmt)}</td>"
                        for key, _, fmt in columns)
        cls = ' class="pooled"' if name in ("pooled", "test") else ""
        rows.append(f"<tr{cls}><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _class_table(per_class: list[dict]) -> str:
    head = "".join(f"<th>{heading}</th>" for _, heading, _ in CLASS_COLUMNS)
    rows = "".join(f"<tr><td>{html.escape(str(c['class']))}</td>"
                   + "".join(f"<td>{_fmt(c[key], fmt)}</td>" for key, _, fmt in CLASS_COLUMNS)
                   + "</tr>" for c in per_class)
    return f'<table class="classes"><tr><th>class</th>{head}</tr>{rows}</table>'


def _fold_spread(record: dict) -> str:
    if record.get("fold_auc_std") is None:
        return ""
    what = f"Fold {_task(record).metric}"
    text = f"{what}: mean {record['fold_auc_mean']:.4f} ± {record['fold_auc_std']:.4f}"
    if record.get("fold_balanced_accuracy_std") is not None:
        text += (f"; balanced accuracy: mean {record['fold_balanced_accuracy_mean']:.4f} ± "
                 f"{record['fold_balanced_accuracy_std']:.4f}")
    return f"<p>{text} (standard deviation over folds).</p>"


def _settings(title: str, values: dict | None) -> str:
    if not values:
        return f"<p class=\"meta\">{html.escape(title)}: not available.</p>"
    rows = "".join(f'<tr><td class="key">{html.escape(k)}</td>'
                   f'<td class="value">{html.escape(str(v))}</td></tr>'
                   for k, v in dotted_items(values))
    return f"<details open><summary>{html.escape(title)}</summary><table>{rows}</table></details>"


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def _ci(m: dict) -> str:
    return f"{_fmt(m['auc_low'], '{:.4f}')}–{_fmt(m['auc_high'], '{:.4f}')}"


RUNS_NOTE = ("<p>Each backbone is an ordinary run in the comparison's folder (its own report: "
             "&lt;backbone&gt;/report/index.html; scripts/evaluate.py, predict.py and "
             "explain.py take it as --run).</p>")


def compare_page(record: dict, images: list[Figure]) -> str:
    """The comparison page (``pcam.report.compare``): conclusions, the side-by-side
    table with the paired differences from the best backbone, figures.

    Args:
        record: what ``pcam.report.compare`` writes as ``comparison.json``.
        images: the figures, in the order shown.
    """
    e = html.escape
    binary = record["task"] == "binary"
    columns = _compare_columns(record)
    head = "".join(f"<th>{heading}</th>" for _, heading, _ in columns)
    rows = [_compare_row(r, columns, best=r["backbone"] == record["best"])
            for r in record["rows"]]
    first = record["rows"][0]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(record['title'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(record['title'])}</h1>",
        f'<p class="meta">written {e(record["written"])} by pcam (scripts/compare.py); '
        f"{first['tiles']:,} out-of-fold tiles (folds {e(first['folds'])}), the same for every "
        "backbone</p>",
        *[f'<p class="note">{e(note)}</p>' for note in record["notes"]],
        "<h2>Conclusions</h2>", "<ul>",
        *[f"<li>{e(line)}</li>" for line in record["conclusions"]], "</ul>",
        "<h2>Backbones side by side</h2>",
        f"<table><tr><th>backbone</th>{head}</tr>{''.join(rows)}</table>",
        '<p class="meta">' + e(
            f"Each backbone's pooled out-of-fold predictions on the same tiles; the best "
            f"{_task(record).metric} in bold. 95% CI: percentile bootstrap over "
            f"tiles ({record['bootstrap']:,} resamples). Δ vs best: this backbone's AUC minus "
            "the best's, with a paired bootstrap interval (the same resampled tiles for both "
            "models); when it includes 0 the difference is not distinguishable from noise. "
            + ("Accuracy, sensitivity, specificity and F1 at each run's threshold (Youden's J "
               "on its pooled out-of-fold predictions, as its own report and model.json). "
               if binary else
               "Predicted class: the most probable; balanced accuracy is the mean recall. ")
            + "Training s / epoch: the mean wall time of an epoch (training steps and "
            "validation) over the compared folds and both phases, on the machine that trained "
            "it. Prediction tiles / s: "
            + (f"the first compared fold's model predicting {record['speed_tiles']:,} tiles of "
               "its input size in batches of its training batch size, after one warm-up "
               "batch, no test-time augmentation, on the machine that wrote this report. "
               if record["speed_tiles"] else "not measured (--speed-tiles 0). ")
            + "The table is also in ")
        + '<a href="comparison.csv">comparison.csv</a> and '
          '<a href="comparison.json">comparison.json</a>.</p>',
    ]
    if not binary:
        parts += ["<h2>Recall (sensitivity) per class</h2>", _recall_table(record),
                  '<p class="meta">The fraction of each true class called that class; the '
                  "highest of each class in bold. Their mean is the balanced accuracy.</p>"]
    for fig in images:
        parts += [f"<h2>{e(fig.title)}</h2>", "<figure>",
                  f'<img src="{e(fig.path.name)}" alt="{e(fig.title)}">',
                  f"<figcaption>{e(fig.caption)}</figcaption></figure>"]
    parts += ["<h2>Runs</h2>", RUNS_NOTE, "</body></html>"]
    return "\n".join(parts) + "\n"


def _compare_columns(record: dict) -> list[tuple[str, str, str]]:
    """The comparison table's columns: (record key, heading, format)."""
    binary = record["task"] == "binary"
    classes = record["classes"]
    auc_name = "ROC AUC" if binary else "macro AUC (one vs rest)"
    columns = [("auc", auc_name, "{:.4f}"), ("auc_ci", "95% CI (bootstrap)", "{}"),
               ("accuracy", "accuracy", "{:.3f}"),
               ("balanced_accuracy", "balanced accuracy", "{:.3f}")]
    if binary:
        columns += [("sensitivity", f"sensitivity ({html.escape(classes[1])})", "{:.3f}"),
                    ("specificity", "specificity", "{:.3f}"), ("f1", "F1", "{:.3f}"),
                    ("threshold", "threshold", "{:.3f}")]
    else:  # recall per class: a table of its own below, classes down the side
        columns += [("f1", "macro F1", "{:.3f}")]
    return columns + [("parameters", "parameters", "{:,}"),
                      ("seconds_per_epoch", "training s / epoch", "{:.1f}"),
                      ("tiles_per_second", "prediction tiles / s", "{:,.0f}"),
                      ("delta", f"Δ {_task(record).metric} vs best, paired 95% CI",
                       "{}")]


def _compare_row(row: dict, columns: list, best: bool) -> str:
    cells = []
    for key, _, fmt in columns:
        if key == "auc_ci":
            cells.append(f"<td>{_ci(row)}</td>")
        elif key == "delta":
            cells.append(f"<td>{html.escape(_delta(row))}</td>")
        else:
            cells.append(f"<td>{_fmt(row.get(key), fmt)}</td>")
    cls = ' class="pooled"' if best else ""
    return f"<tr{cls}><td>{html.escape(row['backbone'])}</td>{''.join(cells)}</tr>"


def _delta(row: dict) -> str:
    if row["distinguishable"] == "best":
        return "best"
    text = (f"{_fmt(row['delta_auc'], '{:+.4f}')} ({_fmt(row['delta_low'], '{:+.4f}')} to "
            f"{_fmt(row['delta_high'], '{:+.4f}')})")
    return text + (": not distinguishable" if row["distinguishable"] == "not distinguishable"
                   else "")


def _recall_table(record: dict) -> str:
    """Classes down the side, backbones across, the highest recall of a class in bold."""
    e = html.escape
    names = [r["backbone"] for r in record["rows"]]
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    rows = []
    for c in record["classes"]:
        values = [r.get(f"recall_{c}") for r in record["rows"]]
        known = [v for v in values if v is not None and not math.isnan(v)]
        top = max(known) if known else None
        cells = "".join(f"<td><b>{_fmt(v, '{:.3f}')}</b></td>" if v == top and top is not None
                        else f"<td>{_fmt(v, '{:.3f}')}</td>" for v in values)
        rows.append(f"<tr><td>{e(c)}</td>{cells}</tr>")
    return f'<table class="classes"><tr><th>class</th>{head}</tr>{"".join(rows)}</table>'


def _task(record: dict) -> Task:
    """The task of a report's or a comparison's record (its classes)."""
    return Task(tuple(record.get("classes") or LEGACY_CLASSES))  # metrics.json before classes
