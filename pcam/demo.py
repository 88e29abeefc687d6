"""The main job on a bundled sample of real PCam tiles: no account, no download.

``pcam/sample/pcam-demo.zip`` holds 1,200 train and 300 test real PCam tiles
(CC0) in the competition's layout (JPEG-compressed TIFFs, 7 MB; see
tools/make_demo_sample.py). The demo unpacks it with the same code a Kaggle
download goes through, then runs the same steps a competitor runs.
"""
from __future__ import annotations

from pathlib import Path

from pcam.settings import (DataSettings, FoldSettings, InputSettings, ModelSettings,
                           RunSettings, TrainSettings)

SAMPLE = Path(__file__).resolve().parent / "sample"
ZIP = SAMPLE / "pcam-demo.zip"
ANSWERS = SAMPLE / "pcam-demo.answers.csv"


def unpack(data_root: Path = Path("data")) -> Path:
    """The sample in ``data_root/pcam-demo`` (unpacked once, checked like a download)."""
    from pcam import kaggle_api

    dest = Path(data_root) / "pcam-demo"
    if not (dest / "sample_submission.csv").is_file():
        kaggle_api.extract(ZIP, dest, downloaded=False)
        print(f"demo sample unpacked in {dest}", flush=True)
    return dest


def run(data_root: Path = Path("data")) -> None:
    """Unpack → check → ingest → 2-fold training (and its report) → predict with
    TTA → submissions/demo.csv → its report against the sample's answers."""
    from pcam.evaluate import evaluate
    from pcam.inference import predict
    from pcam.settings import EvaluateSettings, PredictSettings
    from pcam.training import run_cv

    train_settings = settings(unpack(data_root))
    run_cv(train_settings)
    out = Path("submissions") / "demo.csv"
    predict(PredictSettings(run=str(train_settings.run_dir), out=str(out), answers=str(ANSWERS)))
    evaluate(EvaluateSettings(submission=str(out), answers=str(ANSWERS)))
    print("\ndemo finished:\n"
          f"  run (models, histories, out-of-fold predictions, cv.json): {train_settings.run_dir}\n"
          f"  report:     {train_settings.run_dir / 'report' / 'index.html'} (out-of-fold)\n"
          f"  submission: {out} (settings beside it: {out.with_suffix('.json')})\n"
          f"  its report: {out.with_name('demo-report') / 'index.html'} (on the sample's "
          "held-out answers)\n"
          f"  tile stores: {Path(train_settings.data.data_dir) / 'store'}", flush=True)


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
