"""A cohort of slides as one page: each slide's heat map and numbers, most suspicious first.

``index.html`` beside the slides' files: inline style, a ten-line inline
script that sorts the table by a clicked column (nothing from the network,
so it opens offline), heat maps referenced by relative path.
"""
from __future__ import annotations

import html
from typing import Sequence

from pcam.report.page import STYLE

# Column headings of slides.csv's numbers on the page, in order, and their format.
HEADINGS = {"tissue_mm2": ("tissue mm²", "{:.2f}"), "tiles": ("tiles", "{:,}"),
            "positive_fraction": ("positive area", "{:.1%}"), "max": ("max p", "{:.3f}"),
            "top1_mean": ("top 1% mean p", "{:.3f}")}

SORT_SCRIPT = """
document.querySelectorAll("th[data-k]").forEach(function (th, col) {
  th.style.cursor = "pointer";
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.dir !== "up"; th.dataset.dir = up ? "up" : "down";
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v, nx = +x, ny = +y;
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return up ? c : -c; });
    rows.forEach(function (r) { body.appendChild(r); }); }); });
"""


def score_column(classes: Sequence[str]) -> str:
    """The column the page sorts by: a two-class cohort by the mean of each
    slide's top 1% tile probabilities (robust to one stray tile), else by tissue."""
    return "top1_mean" if len(classes) == 2 else "tissue_mm2"


def slides_page(rows: Sequence[dict], failed: Sequence[dict], classes: Sequence[str],
                title: str) -> str:
    """The page of ``rows`` (slides.csv's records, each with ``slide`` and
    ``heatmap``, a path relative to the page) and ``failed`` (``slide``, ``error``)."""
    score = score_column(classes)
    columns = [k for k in HEADINGS if any(k in r for r in rows)]
    columns += [k for k in (rows[0] if rows else {}) if k.endswith("_mm2") and k not in columns]
    rows = sorted(rows, key=lambda r: -float(r.get(score, 0)))
    names = {"slide": "slide", "heatmap": "heat map", **{k: v[0] for k, v in HEADINGS.items()}}
    head = "".join(f'<th data-k="{k}">{html.escape(names.get(k, k[:-4] + " mm²"))}</th>'
                   for k in ["slide", *columns, "heatmap"])
    body = []
    for r in rows:
        cells = [f'<td data-v="{html.escape(str(r["slide"]))}">{html.escape(str(r["slide"]))}</td>']
        for k in columns:
            fmt = HEADINGS.get(k, ("", "{:.2f}"))[1]
            value = r.get(k, "")
            shown = fmt.format(value) if isinstance(value, (int, float)) else html.escape(str(value))
            cells.append(f'<td data-v="{value}">{shown}</td>')
        image = html.escape(str(r["heatmap"]))
        cells.append(f'<td data-v=""><a href="{image}"><img src="{image}" loading="lazy" '
                     'style="max-width:26rem"></a></td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    problems = "".join(f"<li><b>{html.escape(str(f['slide']))}</b>: {html.escape(str(f['error']))}"
                       "</li>" for f in failed)
    what = ("sorted by the mean of each slide's top 1% tile probabilities"
            if score == "top1_mean" else "sorted by tissue area")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE} td img {{ display:block; }}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='meta'>{len(rows)} slide(s), {what}; "
            "click a heading to sort by it. Open each slide's .geojson in QuPath "
            "(File › Import objects) to see its tiles over the slide.</p>"
            + (f"<div class='note'>{len(failed)} slide(s) could not be read:<ul>{problems}"
               "</ul></div>" if failed else "")
            + f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<script>{SORT_SCRIPT}</script></body></html>")
