"""Compare backbones (pcam.report.compare, scripts/compare.py) on tiny real slices.

Two backbones, ``simple-cnn`` and a narrow CoAtNet registered here
(``NARROW``), on
binary oral-oscc JPEGs and on 8-class Kather TIFFs, at 32 px, 2 folds, one
epoch: every file of the report, its table against each run's own
``report/metrics.json``, the shared folds, resume, ``--report`` alone, a
wrong backbone; and the paired bootstrap against a direct computation.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pcam import metrics
from pcam.models.registry import BACKBONES, coatnet_backbone, register_backbone
from tests.test_folders import cli, need, subset

NARROW = "coatnet-narrow"  # the second backbone of the comparison: a CoAtNet built for tests

if NARROW not in BACKBONES:
    # CoAtNet's stages at their narrowest (one block each, 8 to 32 channels):
    # the same layers as coatnet-0, trained in seconds on 32 px tiles.
    register_backbone(coatnet_backbone(NARROW, blocks=(1, 1, 1, 1, 1),
                                       channels=(8, 8, 16, 16, 32)))


def compare_args(data, tmp, backbones, *extra):
    return ["--data-dir", data, "--store-dir", tmp / "store", "--runs-dir", tmp / "runs",
            "--name", "cmp", "--backbones", backbones, "--tile-size", 32, "--weights", "none",
            "--epochs-frozen", 0, "--epochs-finetune", 1, "--folds", 2, "--batch-size", 16,
            "--speed-tiles", 32, *extra]


@pytest.fixture(scope="module")
def oral(tmp_path_factory):
    """oral-oscc, 12 images a class: simple-cnn alone first (a comparison
    stopped after its first backbone), then both backbones."""
    from pcam.commands.compare import main

    tmp = tmp_path_factory.mktemp("compare-oral")
    data = subset(need("oral-oscc"), tmp / "data", 12)
    # Folds laid down beforehand (every other image of a class, by name), which
    # the seeded split would not make: every run must train on these.
    rows = [(f"{c}/{f.name}", label, i % 2)
            for label, c in enumerate(("Normal", "OSCC"))
            for i, f in enumerate(sorted((data / c).iterdir()))]
    (tmp / "runs" / "cmp").mkdir(parents=True)
    pd.DataFrame(rows, columns=["id", "label", "fold"]).to_csv(tmp / "runs" / "cmp" / "folds.csv",
                                                               index=False)
    code, _, _ = cli(main, *compare_args(data, tmp, "simple-cnn"))
    assert code == 0
    first = tmp / "runs" / "cmp" / "simple-cnn" / "fold_0" / "best.keras"
    stamp = first.stat().st_mtime_ns
    return tmp, data, stamp


def test_binary_comparison_resumes_and_reports_every_backbone(oral, capsys):
    from pcam.commands.compare import main

    tmp, data, stamp = oral
    capsys.readouterr()
    code, out, _ = cli(main, *compare_args(data, tmp, f"simple-cnn,{NARROW}"), capsys=capsys)
    assert code == 0
    cmp = tmp / "runs" / "cmp"
    # Resumed: the finished backbone was skipped, not trained again.
    assert "simple-cnn: finished earlier, skipped" in out
    assert (cmp / "simple-cnn" / "fold_0" / "best.keras").stat().st_mtime_ns == stamp
    _check_report(cmp, ["simple-cnn", NARROW], binary=True)
    shared = pd.read_csv(cmp / "folds.csv")
    assert (shared["fold"] == [i % 2 for i in range(12)] * 2).all()  # the folds laid down
    html = (cmp / "report" / "index.html").read_text()
    assert "Highest sensitivity (recall) for OSCC" in html  # the positive class, by name
    assert "Most balanced" in html


def test_report_alone_gathers_the_runs(oral, capsys):
    from pcam.commands.compare import main

    tmp, _, _ = oral
    cmp = tmp / "runs" / "cmp"
    (cmp / "report" / "index.html").unlink(missing_ok=True)
    code, out, _ = cli(main, "--runs-dir", tmp / "runs", "--name", "cmp", "--report",
                       "--bootstrap", 200, "--speed-tiles", 0, capsys=capsys)
    assert code == 0 and (cmp / "report" / "index.html").is_file()
    table = pd.read_csv(cmp / "report" / "comparison.csv")
    assert table["tiles_per_second"].isna().all()  # --speed-tiles 0: not measured


def test_multiclass_comparison_reports_recall_per_class(tmp_path):
    """Fold 0 of 2 only (as the benchmark does): the runs are unfinished, so
    they have no report of their own; the table matches each fold's metrics.json."""
    from pcam.commands.compare import main

    data = subset(need("kather-8class"), tmp_path / "data", 4)
    code, _, _ = cli(main, *compare_args(data, tmp_path, f"simple-cnn,{NARROW}", "--fold", 0))
    assert code == 0
    record = _check_report(tmp_path / "runs" / "cmp", ["simple-cnn", NARROW], binary=False,
                           own_report=False)
    assert len(record["classes"]) == 8
    assert "Highest recall per class: 01_TUMOR:" in " ".join(record["conclusions"])
    assert any("Folds 0 of 2" in note for note in record["notes"])
    assert "<h2>Recall (sensitivity) per class</h2>" in (
        tmp_path / "runs" / "cmp" / "report" / "index.html").read_text()


def _check_report(cmp, backbones, binary, own_report=True):
    """Every file; the table equal to each run's own report (the same 1,000 bootstrap
    resamples of the same tiles) or, for a run with fold 0 only, to that fold's
    metrics.json and a bootstrap of its oof.csv; the same folds."""
    for name in ("index.html", "comparison.csv", "comparison.json", "roc.png", "recall.png",
                 "validation.png"):
        assert (cmp / "report" / name).stat().st_size > 0, name
    record = json.loads((cmp / "report" / "comparison.json").read_text())
    table = pd.read_csv(cmp / "report" / "comparison.csv")
    assert list(table["backbone"]) == sorted(backbones)
    shared = pd.read_csv(cmp / "folds.csv", dtype={"id": str})
    for row in record["rows"]:
        run = cmp / row["backbone"]
        if own_report:
            own = json.loads((run / "report" / "metrics.json").read_text())["groups"]["pooled"]
        else:
            assert not (run / "report").exists()
            own = json.loads((run / "fold_0" / "metrics.json").read_text())
            oof = pd.read_csv(run / "fold_0" / "oof.csv")
            own["auc_low"], own["auc_high"] = metrics.bootstrap_auc(
                oof["label"], oof[[f"prob_{c}" for c in record["classes"]]].to_numpy())
        keys = ["auc", "auc_low", "auc_high", "accuracy"]
        keys += ["sensitivity", "specificity", "f1"] if binary else ["balanced_accuracy"]
        for key in keys:
            assert row[key] == pytest.approx(own[key], abs=1e-12), (row["backbone"], key)
        if binary:
            assert row["balanced_accuracy"] == pytest.approx(
                (own["sensitivity"] + own["specificity"]) / 2)
        else:
            assert row["f1"] == pytest.approx(own["macro_f1"])
            for c in own["per_class"]:
                assert row[f"recall_{c['class']}"] == pytest.approx(c["sensitivity"])
        folds = shared if own_report else shared[shared["fold"] == 0]
        assert row["tiles"] == own["n"] == len(folds)
        assert row["parameters"] > 0 and row["seconds_per_epoch"] > 0
        pd.testing.assert_frame_equal(pd.read_csv(run / "folds.csv", dtype={"id": str}), shared)
        config = json.loads((run / "config.json").read_text())
        assert config["model"]["backbone"] == row["backbone"]
    narrow = next(r for r in record["rows"] if r["backbone"] == NARROW)
    simple = next(r for r in record["rows"] if r["backbone"] == "simple-cnn")
    assert narrow["parameters"] < simple["parameters"]
    best = record["best"]
    assert best == max(record["rows"], key=lambda r: r["auc"])["backbone"]
    for row in record["rows"]:
        if row["backbone"] == best:
            assert row["distinguishable"] == "best"
        else:
            assert row["delta_auc"] == pytest.approx(row["auc"] - record["rows"][[
                r["backbone"] for r in record["rows"]].index(best)]["auc"])
            assert row["distinguishable"] == ("yes" if row["delta_low"] > 0 or row["delta_high"] < 0
                                              else "not distinguishable")
    return record


def test_an_unknown_backbone_lists_the_valid_ones(tmp_path, capsys):
    from pcam.commands.compare import main

    code, _, err = cli(main, "--data-dir", tmp_path, "--runs-dir", tmp_path / "runs",
                       "--backbones", "simple-cnn,resnet5O", capsys=capsys)
    assert code == 2
    assert "unknown backbone 'resnet5O'" in err and "resnet50v2" in err and "simple-cnn" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


# --- the paired difference ------------------------------------------------------------

def test_paired_bootstrap_of_identical_predictions_is_exactly_zero():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    probs = rng.random(200)
    assert metrics.paired_bootstrap_auc(labels, probs, probs, resamples=100) == (0.0, 0.0, 0.0)
    three = rng.random((200, 3))
    assert metrics.paired_bootstrap_auc(rng.integers(0, 3, 200), three, three,
                                              resamples=100) == (0.0, 0.0, 0.0)
    assert not metrics.distinguishable(0.0, 0.0)


def test_paired_bootstrap_matches_a_direct_computation():
    """The same seeded draws of tile indices, each resample scored by sklearn."""
    rng = np.random.default_rng(2)
    n = 60
    labels = rng.integers(0, 2, n)
    a = np.clip(labels * 0.3 + rng.random(n), 0, None)
    b = np.round(rng.random(n), 1)  # ties, which the fast path counts one half
    delta, low, high = metrics.paired_bootstrap_auc(labels, a, b, resamples=100, seed=7)
    draws = np.random.default_rng(7)
    direct = []
    for _ in range(100):
        i = draws.integers(0, n, n)
        direct.append(roc_auc_score(labels[i], a[i]) - roc_auc_score(labels[i], b[i])
                      if len(np.unique(labels[i])) == 2 else np.nan)
    assert delta == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    assert (low, high) == pytest.approx(tuple(np.nanpercentile(direct, [2.5, 97.5])))

    k = 4
    labels = rng.integers(0, k, n)
    pa, pb = rng.dirichlet(np.ones(k), n), rng.dirichlet(np.ones(k), n)
    pa[np.arange(n), labels] += 0.4
    delta, low, high = metrics.paired_bootstrap_auc(labels, pa, pb, resamples=50, seed=3)

    def macro(y, p):
        return np.mean([roc_auc_score(y == c, p[:, c]) for c in range(k)
                        if 0 < (y == c).sum() < len(y)])

    draws = np.random.default_rng(3)
    direct = []
    for _ in range(50):
        i = draws.integers(0, n, n)
        direct.append(macro(labels[i], pa[i]) - macro(labels[i], pb[i]))
    assert delta == pytest.approx(macro(labels, pa) - macro(labels, pb))
    assert (low, high) == pytest.approx(tuple(np.nanpercentile(direct, [2.5, 97.5])))


def test_a_clearly_better_model_is_distinguishable_and_a_coin_flip_is_not():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    good = labels + rng.normal(0, 0.5, 400)
    noise = rng.random(400)
    delta, low, high = metrics.paired_bootstrap_auc(labels, good, noise, resamples=300)
    assert delta > 0.3 and low > 0 and metrics.distinguishable(low, high)
    other = good + rng.normal(0, 0.01, 400)  # the same model, nudged
    delta, low, high = metrics.paired_bootstrap_auc(labels, good, other, resamples=300)
    assert low <= 0 <= high and not metrics.distinguishable(low, high)


def test_paired_predictions_of_other_shapes_are_refused():
    with pytest.raises(Exception, match="one row per tile"):
        metrics.paired_bootstrap_auc([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])


def test_the_report_side_does_not_import_training():
    """Reporting never imports training: a machine that only gathers runs
    (``--report``) loads neither the training library nor, until a model is
    loaded, TensorFlow."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys, pcam.report.compare, pcam.commands.compare; "
            "print(sorted(m for m in ('pcam.train.training', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("values, message", [
    (dict(), "--backbones: name at least one backbone"),
    (dict(backbones=("simple-cnn", "simple-cnn")), "a backbone is named twice"),
    (dict(report_only=True), "give its --name"),
    (dict(backbones=("simple-cnn",), bootstrap=0), "--bootstrap 0"),
])
def test_compare_settings_refuse_what_no_comparison_can_use(values, message):
    from pcam.errors import PcamError
    from pcam.settings import CompareSettings

    with pytest.raises(PcamError, match=message):
        CompareSettings(**values)


def test_a_killed_comparison_resumes(tmp_path, capsys):
    """scripts/compare.py killed (SIGKILL) while its second backbone trains: run
    again, the finished backbone is skipped untouched and the second completes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pcam.commands.compare import main
    from tests.test_folders import REPO

    data = subset(need("oral-oscc"), tmp_path / "data", 8)
    args = [str(a) for a in compare_args(data, tmp_path, "simple-cnn,coatnet-0", "--fold", 0,
                                         "--bootstrap", 200)]
    cmp = tmp_path / "runs" / "cmp"
    first = cmp / "simple-cnn" / "fold_0" / "metrics.json"
    second = cmp / "coatnet-0" / "config.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, str(REPO / "scripts" / "compare.py"), *args],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (first.is_file() and second.is_file()) and child.poll() is None:
            assert time.monotonic() < deadline, "the comparison never reached its 2nd backbone"
            time.sleep(0.2)
        assert child.poll() is None, "the comparison ended before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
    assert not (cmp / "coatnet-0" / "fold_0" / "metrics.json").is_file()
    assert not (cmp / "report" / "index.html").is_file()
    stamp = (cmp / "simple-cnn" / "fold_0" / "best.keras").stat().st_mtime_ns

    code, out, _ = cli(main, *args, capsys=capsys)
    assert code == 0
    assert "simple-cnn: finished earlier, skipped" in out
    assert (cmp / "simple-cnn" / "fold_0" / "best.keras").stat().st_mtime_ns == stamp
    table = pd.read_csv(cmp / "report" / "comparison.csv")
    assert sorted(table["backbone"]) == ["coatnet-0", "simple-cnn"]
