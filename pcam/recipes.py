"""Recipes: the training defaults that fit the machine and the data.

The settings' own defaults are the GPU recipe (ResNet50 from ImageNet
weights, 2 + 10 epochs, upsampled tiles): on a 2-core CPU one fold of it on
the competition would take days, and offline its ImageNet weights cannot be
fetched. ``--recipe auto`` (the default) picks the GPU recipe when the
machine has an accelerator and the CPU recipe when it has not; ``gpu`` and
``cpu`` force one. A recipe only changes defaults: an option the user gives
always wins (the command sets the recipe's values as the parser's defaults).

The CPU recipes, measured on a 2-core CPU (README, "What the recipes reach"):

* class folders: ``cpu-cnn`` started from the PCam-trained backbone shipped
  in the package (``--weights pcam``), 128 px tiles, one phase of 60 epochs
  at 1e-3, batch 16, no colour jitter: oral-oscc pooled OOF AUC 0.966
  (0.923 from random weights), benchmarks/folders_quality.py.
* the competition's layout: ``cpu-cnn`` from random weights, 30 epochs at
  2e-3, batch 128, no early stopping: AUC 0.942 on PCam slides it never saw
  (benchmarks/real_pcam.py). The shipped backbone is not used here: it was
  trained on PCam tiles, so out-of-fold figures on the competition's own
  tiles would be optimistic.

Nothing here imports TensorFlow: the recipe is chosen before it loads.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

RECIPES = ("auto", "gpu", "cpu")

# Options (argparse dest names: the settings fields) -> the recipe's value.
_NO_COLOUR_JITTER = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0,
                     "stain": 0.0}
CPU_FOLDERS = {"backbone": "cpu-cnn", "weights": "pcam", "max_tile_size": 128,
               "epochs_frozen": 0, "epochs_finetune": 60, "patience": 60,
               "lr_finetune": 1e-3, "batch_size": 16,
               # On oral-oscc fold 0 colour jitter cost 0.07 AUC (0.817 against
               # 0.886): a dataset's folds share the scanner and stain of training.
               **_NO_COLOUR_JITTER}
CPU_KAGGLE = {"backbone": "cpu-cnn", "weights": "none", "epochs_frozen": 0,
              "epochs_finetune": 30, "patience": 30, "lr_finetune": 2e-3}

# Seconds per image and epoch (training, then validation and the OOF views),
# measured on the 2-core CPU of the benchmarks: oral-oscc at 128 px, 949
# images, 60 epochs in 3.9 min a fold; PCam at 96 px, 20,000 tiles, ~50 s an
# epoch. The GPU recipe's are not measured here (README gives estimates).
SECONDS_PER_IMAGE = {("cpu", "folders"): 0.0041, ("cpu", "kaggle"): 0.0025}


@dataclass(frozen=True)
class Recipe:
    """A recipe chosen for this machine and source.

    Attributes:
        name: "gpu" or "cpu".
        defaults: option name -> value, over the settings' own defaults.
        why: a few words on why it was chosen.
    """

    name: str
    defaults: dict
    why: str


def has_accelerator() -> bool:
    """Whether this machine has a GPU or TPU, seen without loading TensorFlow:
    NVIDIA's device files, a TPU VM's accelerator devices, or a TPU named by
    the platform (Colab, Kaggle)."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/accel[0-9]*")
                or os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"))


def choose(recipe: str, kind: str, accelerator: bool | None = None) -> Recipe:
    """The recipe to train with.

    Args:
        recipe: "auto", "gpu" or "cpu" (``--recipe``).
        kind: what the source holds, "kaggle" or "folders" (``pcam.data.sources.detect``).
        accelerator: whether there is a GPU or TPU (None: look).
    """
    if recipe == "auto":
        accelerator = has_accelerator() if accelerator is None else accelerator
        recipe = "gpu" if accelerator else "cpu"
        why = "a GPU or TPU found" if accelerator else "no GPU or TPU found"
    else:
        why = f"--recipe {recipe}"
    if recipe == "gpu":
        return Recipe("gpu", {}, why)
    return Recipe("cpu", CPU_FOLDERS if kind == "folders" else CPU_KAGGLE, why)


def describe(recipe: Recipe, backbone: str, weights: str, epochs: int, kind: str,
             images: int) -> str:
    """The first line of training: which recipe, why, and how long an epoch takes."""
    start = {"pcam": "the PCam-trained backbone shipped with pcam", "none": "random weights",
             "imagenet": "ImageNet weights"}.get(weights, Path(weights).name)
    line = (f"recipe: {recipe.name} ({recipe.why}): {backbone} from {start}, "
            f"{epochs} epoch(s) a fold")
    rate = SECONDS_PER_IMAGE.get((recipe.name, kind))
    if rate and images:
        line += (f"; about {_duration(rate * images)} an epoch on a 2-core CPU "
                 f"({images:,} images), less with more cores")
    if recipe.name == "cpu":
        line += "; --recipe gpu for the GPU recipe"
    return line


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
