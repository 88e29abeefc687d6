"""A fold's saved model, loaded with the facts it needs beside it (``model.json``).

Here, not in ``pcam.runs``: loading registers pcam's Keras layers, which live
in this package and in ``pcam.data.augment``; the run folder's names and
records stay in ``pcam.runs``, below both.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from pcam.errors import PcamError
from pcam.runs import LEGACY_CLASSES, LEGACY_REGION, ModelInfo, info_path


def load_fold_model(path: Path, remedy: str | None = None):
    """A saved model, ready to predict (no optimizer state is loaded).

    The model carries its preprocessing, resizing and precision policy, so
    any backbone, image size or precision loads the same way; its output
    layer is float32 even under mixed precision.

    Args:
        remedy: what the error message tells the user to do when the file is
            missing or unreadable (default: train that fold again).
    """
    import keras

    # Registers the custom layers a model file may hold (the colour/stain
    # layer; pcam's preprocessing and CoAtNet's attention).
    import pcam.data.augment
    import pcam.models.registry  # noqa: F401

    remedy = remedy or (f"train that fold again (delete {path.parent} and run the training "
                        "command)")
    if not path.is_file():
        raise PcamError(f"{path}: missing, though its fold finished; {remedy}")
    try:
        return keras.models.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as err:
        reason = " ".join(str(err).split())[:200]
        raise PcamError(f"cannot load {path} ({reason}); {remedy}") from None


def load_model_with_info(path: Path, remedy: str | None = None):
    """A saved model and its ``ModelInfo``: from ``model.json`` beside it, or,
    for a model saved before model.json existed, PCam's facts and the
    model's own input size. The two are checked against each other."""
    path = Path(path)
    model = load_fold_model(path, remedy)
    outputs = model.output_shape[-1]
    if info_path(path).is_file():
        info = ModelInfo.from_json(info_path(path))
    elif outputs == 1:
        side = model.input_shape[1] or 0
        info = ModelInfo(LEGACY_CLASSES, LEGACY_CLASSES[1], side, label_region=LEGACY_REGION)
    else:
        raise PcamError(f"{path} has {outputs} outputs and no model.json beside it naming "
                        "its classes; copy the model.json of its run's fold folder beside it")
    expected = 1 if info.binary else len(info.classes)
    if outputs != expected:
        raise PcamError(f"{path} gives {outputs} output(s) per image, but its model.json names "
                        f"{len(info.classes)} classes ({', '.join(info.classes)}); are they "
                        "from the same run?")
    return model, info
