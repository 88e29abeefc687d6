"""What the number of classes decides, in one place: ``Task``.

Two classes: one sigmoid unit (the probability of class 1, the positive
class), binary cross-entropy, labels as floats 0/1, ROC AUC. K > 2 classes:
softmax over K units, categorical cross-entropy on one-hot labels, macro
one-vs-rest ROC AUC (Keras' ``AUC(multi_label=True)`` averages the K
per-class AUCs unweighted), accuracy and balanced accuracy. Either way the
monitored metric is ``val_auc``, so checkpoints and early stopping need not
know which; its name for people is ``Task.metric``.

Inside the library probabilities are (N, K) for both: a sigmoid's p becomes
the two columns 1 - p and p where a model's output is read
(``pcam.predict.tta``). Outside, in files (CSV columns, the Kaggle ``label``
column, thresholds), two classes keep their one probability column, ``prob``,
as PCam runs always had: ``Task.file_columns`` and ``Task.from_columns``
cross that border.

Nothing here imports TensorFlow at module level: reports read a ``Task`` and
start quickly; the Keras parts are imported by the methods that build them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MONITOR = "val_auc"


@dataclass(frozen=True)
class Task:
    """A classification task: its class names in label order (label i is ``classes[i]``)."""

    classes: tuple[str, ...]

    def __post_init__(self):
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {len(self.classes)}")
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def kind(self) -> str:
        """How records name it: "binary" or "multiclass"."""
        return "binary" if self.binary else "multiclass"

    @property
    def units(self) -> int:
        """Units of the output layer: 1 (sigmoid) for two classes, K (softmax) for more."""
        return output_units(len(self.classes))

    @property
    def activation(self) -> str:
        return "sigmoid" if self.binary else "softmax"

    @property
    def metric(self) -> str:
        """The name of the monitored metric (``val_auc``) for people."""
        return "AUC" if self.binary else "macro AUC"

    @property
    def prob_columns(self) -> list[str]:
        """Probability columns of an OOF table: ``prob`` (of class 1) for two
        classes, as PCam runs always had; ``prob_<class>`` per class for more."""
        return ["prob"] if self.binary else [f"prob_{c}" for c in self.classes]

    def file_columns(self, probs) -> np.ndarray:
        """(N, K) probabilities as the files' ``prob_columns``: (N, 1) of class 1
        for two classes, (N, K) for more."""
        probs = as_matrix(probs)
        return probs[:, 1:] if self.binary else probs

    def from_columns(self, frame) -> np.ndarray:
        """(N, K) probabilities from a table with the ``prob_columns``."""
        values = frame[self.prob_columns].to_numpy(np.float64)
        return as_matrix(values[:, 0] if self.binary else values)

    def predict(self, probs, threshold: float = 0.5) -> np.ndarray:
        """The predicted class of each row of (N, K) probabilities: for two
        classes class 1 when its probability reaches ``threshold`` (chosen on
        out-of-fold predictions), for more the most probable class."""
        probs = as_matrix(probs)
        if self.binary:
            return (probs[:, 1] >= threshold).astype(np.int64)
        return probs.argmax(axis=1)

    def encode(self, labels):
        """Label indices as the loss wants them (``encode_labels``)."""
        return encode_labels(labels, len(self.classes))

    def loss(self, label_smoothing: float = 0.0):
        return loss(len(self.classes), label_smoothing)

    def keras_metrics(self) -> list:
        return metrics(len(self.classes))


def as_matrix(probs) -> np.ndarray:
    """Probabilities as (N, K): (N,) of class 1 (a two-class file's ``prob``)
    becomes the two columns 1 - p and p; (N, K) is kept."""
    probs = np.asarray(probs, np.float64)
    return np.stack([1 - probs, probs], axis=1) if probs.ndim == 1 else probs


def output_units(num_classes: int) -> int:
    """Units of the output layer: 1 (sigmoid) for two classes, K (softmax) for more."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def encode_labels(labels, num_classes: int):
    """Label indices (any numeric dtype) as the loss wants them: float32 0/1
    for two classes, float32 one-hot rows for K > 2."""
    import tensorflow as tf

    if num_classes == 2:
        return tf.cast(labels, tf.float32)
    return tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)


def loss(num_classes: int, label_smoothing: float = 0.0):
    import keras

    if num_classes == 2:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def metrics(num_classes: int) -> list:
    """The metrics logged every epoch; ``auc`` is the one monitored."""
    import keras

    from pcam.keras_metrics import BalancedAccuracy

    if num_classes == 2:
        return [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]
    return [keras.metrics.AUC(name="auc", multi_label=True, num_labels=num_classes),
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            BalancedAccuracy(num_classes, name="balanced_accuracy")]
