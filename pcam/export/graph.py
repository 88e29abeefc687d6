"""A run's prediction as one TensorFlow function: what ``predict.py`` computes, in-graph.

::

    uint8 (N, S, S, 3) ─▶ [centre crop] ─▶ V dihedral views stacked ─▶ each fold's
    model ─▶ mean over views ─▶ (N, K) ─▶ at the run's temperature ─▶ mean over folds

The per-model part is ``pcam.predict.tta``'s own graph body, and the
temperature is ``pcam.calibration.apply_temperature`` written in TensorFlow,
so the exported numbers are predict.py's (``tests/test_export.py``: within
1e-5). Arrays in, a function out: nothing here writes files.
"""
from __future__ import annotations

from typing import Sequence

from pcam.calibration import EPS


def temperature_op(probs, temperature: float):
    """``apply_temperature`` in TensorFlow: softmax(log p / T) of (N, K) float32."""
    import tensorflow as tf

    if temperature == 1.0:
        return probs
    return tf.nn.softmax(tf.math.log(tf.clip_by_value(probs, EPS, 1.0)) / temperature, axis=-1)


def ensemble_function(models: Sequence, temperatures: Sequence[float], views: Sequence[int],
                      centre_crop: int = 0):
    """The Python body of the exported function: uint8 tiles -> (N, K) probabilities.

    Args:
        models: the folds' Keras models (each tile's answer is their mean).
        temperatures: each model's temperature (1.0: as it is).
        views: dihedral views averaged per model (``pcam.predict.tta.TTA_VIEWS``).
        centre_crop: the run's centre crop (0: none), applied as prediction does.
    """
    import tensorflow as tf

    from pcam.data.augment import centre_crop as crop_op
    from pcam.predict.tta import tta_graph

    crop = crop_op(centre_crop) if centre_crop else None
    bodies = [tta_graph(lambda m=m: m, tuple(views), m.output_shape[-1]) for m in models]

    @tf.autograph.experimental.do_not_convert
    def predict(images):
        fed = crop(images) if crop else images
        per_model = [temperature_op(body(fed), t) for body, t in zip(bodies, temperatures)]
        return tf.add_n(per_model) / len(per_model)

    return predict
