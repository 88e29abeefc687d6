"""The report of a settings search (``pcam.train.tune``): trials, best settings, figures.

``tune_report(study_dir, storage, name)`` reads the study from its Optuna
storage and writes ``STUDY/report/``: ``index.html`` (offline, like the other
reports), ``trials.csv`` (a trial per row: state, value, settings, epochs,
seconds, run) and Optuna's matplotlib figures as PNG: the optimisation
history, the validation metric per epoch of every trial (where the pruner
stopped them), the importance of each setting and a slice plot. Reporting
reads the storage and the runs; it never trains.
"""
from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

import pandas as pd

from pcam.io import atomic_path, atomic_write_text
from pcam.report import page
from pcam.report.figures import save


def load(study_dir: Path, storage: str, name: str):
    """The study, from ``storage`` (default: the SQLite file in ``study_dir``)."""
    import optuna

    url = storage or f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"
    return optuna.load_study(study_name=name, storage=url)


def trials_table(study) -> pd.DataFrame:
    """A row per trial (surplus ones left out): number, state, value, the
    searched settings, epochs trained, seconds, run folder."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     **t.params, "epochs": t.user_attrs.get("epochs"),
                     "seconds": t.user_attrs.get("seconds"), "run": t.user_attrs.get("run")})
    return pd.DataFrame(rows)


def tune_report(study_dir: Path, storage: str, name: str) -> Path:
    """Write the study's report; return its ``index.html``."""
    study = load(study_dir, storage, name)
    out = Path(study_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = trials_table(study)
    with atomic_path(out / "trials.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    shown = _figures(study, out)
    atomic_write_text(out / "index.html", _page(study, table, shown, Path(study_dir)))
    print(f"report: {out / 'index.html'}", flush=True)
    return out / "index.html"


def _figures(study, out: Path) -> list[page.Figure]:
    """Optuna's figures that the study has enough trials for, as PNGs."""
    from optuna.visualization import matplotlib as plots

    wanted = [
        ("history.png", "Optimisation history", plots.plot_optimization_history,
         "Each completed trial's value (mean validation metric of its folds) and the best so far."),
        ("epochs.png", "Validation metric per epoch", plots.plot_intermediate_values,
         "Every trial's validation metric after each epoch; a line that ends early is a trial "
         "the pruner stopped."),
        ("importance.png", "Importance of each setting", plots.plot_param_importances,
         "How much of the value's variation over completed trials each setting explains "
         "(fANOVA); with few trials, a rough guide."),
        ("slice.png", "Value against each setting", plots.plot_slice,
         "Each completed trial's value against each searched setting."),
    ]
    shown = []
    for name, title, plot, caption in wanted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" warnings
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # too few completed trials for this figure
        first = ax.flat[0] if hasattr(ax, "flat") else ax
        if name == "epochs.png":  # Optuna's "step" is an epoch here, over phases and folds
            first.set(xlabel="epoch", ylabel="validation metric", title="")
        elif name == "history.png":
            first.set(ylabel="value: mean validation metric of the trial's folds", title="")
        fig = first.figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), 5)
        shown.append(page.Figure(save(fig, out / name), title, caption))
    return shown


def _page(study, table: pd.DataFrame, figures: list[page.Figure], study_dir: Path) -> str:
    e = html.escape
    complete = table[table["state"] == "complete"] if len(table) else table
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>study {e(study.study_name)}</title><style>{page.STYLE}</style></head><body>",
             f"<h1>Settings search: {e(study.study_name)}</h1>",
             f'<p class="meta">{len(table)} trials: '
             + ", ".join(f"{n} {s}" for s, n in table["state"].value_counts().items())
             + " (pcam scripts/tune.py, Optuna TPE)</p>" if len(table) else "<p>No trials.</p>"]
    if len(complete):
        best = complete.loc[complete["value"].idxmax()]
        settings = ", ".join(f"{k} = {best[k]:.4g}" if isinstance(best[k], float) else
                             f"{k} = {best[k]}" for k in study.best_trial.params)
        parts += [f'<p class="headline">Best: trial {int(best["trial"])}, validation '
                  f"<b>{best['value']:.4f}</b> ({e(settings)}).</p>",
                  "<p>Train it on every fold: <code>python scripts/train.py --config "
                  f"{e(str(study_dir / 'best.toml'))}</code>. One fold's value is noisy: "
                  "compare the best with the default settings on the other folds before "
                  "taking it.</p>"]
    parts += _confirmation(study_dir / "confirm.json")
    for fig in figures:
        parts += [f"<h2>{e(fig.title)}</h2>", "<figure>",
                  f'<img src="{e(fig.path.name)}" alt="{e(fig.title)}">',
                  f"<figcaption>{e(fig.caption)}</figcaption></figure>"]
    if len(table):
        parts += ["<h2>Trials</h2>", table.drop(columns=["run"]).to_html(
            index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0),
            '<p class="meta">Also in <a href="trials.csv">trials.csv</a>; each trial is a run '
            "at trial_NNN/ (evaluate.py, predict.py and the app take it).</p>"]
    return "\n".join(parts + ["</body></html>"]) + "\n"


def _confirmation(path: Path) -> list[str]:
    """The confirmation's section (``pcam.train.tune.confirm``), if it ran."""
    if not path.is_file():
        return []
    c = json.loads(path.read_text())
    rows = "".join(f"<tr><td>fold {k}</td><td>{b:.4f}</td><td>{d:.4f}</td><td>{b - d:+.4f}</td>"
                   "</tr>" for k, b, d in zip(c["folds"], c["best"], c["default"]))
    interval = ("" if c.get("delta_low") is None else  # one fold: no interval (null)
                f" (95% t interval {c['delta_low']:+.4f} to {c['delta_high']:+.4f})")
    return ["<h2>Confirmation on folds no trial saw</h2>",
            f"<p>Trial {c['best_trial']}'s settings against the default ones, each trained on "
            f"fold(s) {', '.join(map(str, c['folds']))}: mean difference "
            f"{c['delta_mean']:+.4f}{interval}. <b>{html.escape(c['verdict'].capitalize())}."
            "</b></p>",
            "<table><tr><th></th><th>best</th><th>default</th><th>difference</th></tr>"
            f"{rows}</table>"]

