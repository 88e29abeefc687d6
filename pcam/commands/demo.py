"""The main job on bundled samples of real images: no account, no download.

* ``pcam`` (``--demo``): ``pcam/sample/pcam-demo.zip`` holds 1,200 train and
  300 test real PCam tiles (CC0) in the competition's layout (JPEG-compressed
  TIFFs, 7 MB; see tools/make_demo_sample.py). The demo unpacks it with the
  same code a Kaggle download goes through, then runs the same steps a
  competitor runs.
* ``tissue`` (``--demo tissue``): ``pcam/sample/kather-tissue.zip`` holds the
  240 colorectal tissue tiles of Kather et al. 2016 (8 classes x 30, 150 px,
  CC BY 4.0; lossless WebP, 6.4 MB; see tools/make_tissue_sample.py) as class
  folders: the class-folder path, ending with the multi-class report.
"""
from __future__ import annotations

from pathlib import Path

from pcam.commands.guide import after_training
from pcam.settings import (DataSettings, FoldSettings, InputSettings, ModelSettings, RunSettings,
                           TrainSettings)

SAMPLE = Path(__file__).resolve().parents[1] / "sample"
ZIP = SAMPLE / "pcam-demo.zip"
ANSWERS = SAMPLE / "pcam-demo.answers.csv"
TISSUE_ZIP = SAMPLE / "kather-tissue.zip"
DEMOS = ("pcam", "tissue")


def unpack(data_root: Path = Path("data")) -> Path:
    """The sample in ``data_root/pcam-demo`` (unpacked once, checked like a download)."""
    from pcam.kaggle import api

    dest = Path(data_root) / "pcam-demo"
    if not (dest / "sample_submission.csv").is_file():
        api.extract(ZIP, dest, downloaded=False)
        print(f"demo sample unpacked in {dest}", flush=True)
    return dest


def run(name: str = "pcam", data_root: Path = Path("data")) -> None:
    """Run the demo called ``name`` (``DEMOS``)."""
    if name == "tissue":
        return run_tissue(data_root)
    return run_pcam(data_root)


def run_pcam(data_root: Path = Path("data")) -> None:
    """Unpack → check → ingest → 2-fold training (and its report) → predict with
    TTA → submissions/demo.csv → its report against the sample's answers."""
    from pcam.commands.predict import predict
    from pcam.report.evaluate import evaluate, report_run
    from pcam.settings import EvaluateSettings, PredictSettings
    from pcam.train.training import run_cv

    train_settings = settings(unpack(data_root))
    run_cv(train_settings)
    report_run(train_settings.run_dir)
    out = Path("submissions") / "demo.csv"
    predict(PredictSettings(run=str(train_settings.run_dir), out=str(out), answers=str(ANSWERS)))
    evaluate(EvaluateSettings(submission=str(out), answers=str(ANSWERS)))
    print("\ndemo finished:\n"
          f"  run (models, histories, out-of-fold predictions, cv.json): {train_settings.run_dir}\n"
          f"  report:     {train_settings.run_dir / 'report' / 'index.html'} (out-of-fold)\n"
          f"  submission: {out} (settings beside it: {out.with_suffix('.json')})\n"
          f"  its report: {out.with_name('demo-report') / 'index.html'} (on the sample's "
          "held-out answers)\n"
          f"  tile stores: {train_settings.data.store_path}", flush=True)
    print(after_training(train_settings.run_dir, "kaggle", own_data=True), flush=True)


def settings(data_dir: Path) -> RunSettings:
    """The CPU recipe, sized for the sample: the compact CNN, 2 folds.

    A backbone from random weights has nothing to protect, so there is no
    frozen phase: one phase trains everything at a decaying learning rate.
    """
    return RunSettings(
        run="demo",
        data=DataSettings(data_dir=str(data_dir)),
        folds=FoldSettings(folds=2),
        inputs=InputSettings(batch_size=64),
        model=ModelSettings(backbone="simple-cnn", weights="none"),
        train=TrainSettings(epochs_frozen=0, epochs_finetune=6, lr_finetune=2e-3))


def unpack_tissue(data_root: Path = Path("data")) -> Path:
    """The tissue sample as class folders in ``data_root/kather-tissue`` (unpacked once)."""
    import os
    import shutil
    import zipfile

    dest = Path(data_root) / "kather-tissue"
    if not dest.is_dir():
        # Into a temporary folder, then renamed: an interrupted unpack never
        # leaves a dest that looks complete.
        tmp = dest.with_name(f".{dest.name}.extracting")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(TISSUE_ZIP) as archive:  # our own file: no hostile member names
            archive.extractall(tmp)
        os.replace(tmp, dest)
        print(f"tissue sample unpacked in {dest}", flush=True)
    return dest


def run_tissue(data_root: Path = Path("data")) -> None:
    """Unpack → scan → ingest → 2-fold training grouped by slide (and its
    multi-class report) → class probabilities of every tile as a CSV."""
    from pcam.commands.predict import predict
    from pcam.report.evaluate import report_run
    from pcam.settings import PredictSettings
    from pcam.train.training import run_cv

    data = unpack_tissue(data_root)
    train_settings = tissue_settings(data)
    run_cv(train_settings)
    report_run(train_settings.run_dir)
    out = Path("predictions") / "demo-tissue.csv"
    predict(PredictSettings(run=str(train_settings.run_dir), images=(str(data),), out=str(out),
                            tta=4))
    print("\ntissue demo finished:\n"
          f"  run (models, histories, out-of-fold predictions, cv.json): {train_settings.run_dir}\n"
          f"  report:      {train_settings.run_dir / 'report' / 'index.html'} (out-of-fold, "
          "8 classes)\n"
          f"  predictions: {out} (every tile, by all the folds: the tiles trained on, so "
          "a check that the models load and agree, not a score: the report's out-of-fold "
          "figures are the score)", flush=True)
    print(after_training(train_settings.run_dir, "folders", own_data=True), flush=True)


def tissue_settings(data_dir: Path) -> RunSettings:
    """The compact CNN on the 150 px tissue tiles, 2 folds kept apart by slide (08_EMPTY
    comes from 2 slides only)
    (the slide is in each file name: CRC-Prim-HE-NN), with the default colour
    and stain jitter: the slides differ in stain, and a model should not learn
    them by colour."""
    return RunSettings(
        run="demo-tissue",
        data=DataSettings(data_dir=str(data_dir)),
        folds=FoldSettings(folds=2, group_pattern=r"CRC-Prim-HE-(\d+)"),
        inputs=InputSettings(batch_size=32),
        model=ModelSettings(backbone="simple-cnn", weights="none"),
        train=TrainSettings(epochs_frozen=0, epochs_finetune=30, lr_finetune=2e-3))
