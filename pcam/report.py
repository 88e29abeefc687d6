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

# Metric columns of the table: (key in the metrics, heading, format)
COLUMNS = [("n", "tiles", "{:,}"), ("positives", "tumour", "{:,}"), ("auc", "ROC AUC", "{:.4f}"),
           ("auc_ci", "95% CI (bootstrap)", "{}"), ("accuracy", "accuracy", "{:.4f}"),
           ("precision", "precision", "{:.4f}"), ("sensitivity", "sensitivity", "{:.4f}"),
           ("specificity", "specificity", "{:.4f}"), ("f1", "F1", "{:.4f}"),
           ("log_loss", "log loss", "{:.4f}")]


class Figure(NamedTuple):
    """A PNG in the report folder, with its heading and caption."""

    path: Path
    title: str
    caption: str


def html_page(record: dict, images: list[Figure]) -> str:
    """The report page: summary, metrics table, figures, settings."""
    e = html.escape
    t = record["threshold"]
    main = "pooled" if "pooled" in record["groups"] else "test"
    m = record["groups"][main]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(record['title'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(record['title'])}</h1>",
        f'<p class="meta">written {e(record["written"])} by pcam (scripts/evaluate.py)</p>',
        f'<p class="headline">ROC AUC <b>{_fmt(m["auc"], "{:.4f}")}</b> '
        f"(95% CI {_ci(m)}) over {m['n']:,} tiles. At threshold <b>{t['value']:.3f}</b> "
        f"({e(t['rule'])}, chosen on the {e(t['chosen_on'])}): sensitivity "
        f"{_fmt(m['sensitivity'], '{:.3f}')}, specificity {_fmt(m['specificity'], '{:.3f}')}, "
        f"F1 {_fmt(m['f1'], '{:.3f}')}.</p>",
        *[f'<p class="note">{e(note)}</p>' for note in record["notes"]],
        "<h2>Metrics</h2>", _table(record["groups"]), _fold_spread(record),
        "<p class=\"meta\">AUC needs no threshold; accuracy, precision, sensitivity, "
        "specificity and F1 are at the threshold above. The metrics are also in "
        '<a href="metrics.json">metrics.json</a>.</p>',
    ]
    for fig in images:
        parts += [f"<h2>{e(fig.title)}</h2>", "<figure>",
                  f'<img src="{e(fig.path.name)}" alt="{e(fig.title)}">',
                  f"<figcaption>{e(fig.caption)}</figcaption></figure>"]
    parts += ["<h2>Settings</h2>", _settings("Run settings (config.json)", record["run_config"]),
              _settings("Report settings", record["settings"]), "</body></html>"]
    return "\n".join(parts) + "\n"


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


def _table(groups: dict) -> str:
    head = "".join(f"<th>{heading}</th>" for _, heading, _ in COLUMNS)
    rows = []
    for name, m in groups.items():
        cells = "".join(f"<td>{_ci(m) if key == 'auc_ci' else _fmt(m[key], fmt)}</td>"
                        for key, _, fmt in COLUMNS)
        cls = ' class="pooled"' if name in ("pooled", "test") else ""
        rows.append(f"<tr{cls}><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _fold_spread(record: dict) -> str:
    if record.get("fold_auc_std") is None:
        return ""
    return (f"<p>Fold AUC: mean {record['fold_auc_mean']:.4f} ± {record['fold_auc_std']:.4f} "
            "(standard deviation over folds).</p>")


def _settings(title: str, values: dict | None) -> str:
    if not values:
        return f"<p class=\"meta\">{html.escape(title)}: not available.</p>"
    rows = "".join(f'<tr><td class="key">{html.escape(k)}</td>'
                   f'<td class="value">{html.escape(str(v))}</td></tr>'
                   for k, v in _flatten(values))
    return f"<details open><summary>{html.escape(title)}</summary><table>{rows}</table></details>"


def _flatten(values: dict, prefix: str = ""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def _ci(m: dict) -> str:
    return f"{_fmt(m['auc_low'], '{:.4f}')}–{_fmt(m['auc_high'], '{:.4f}')}"
