"""What the number of classes decides, in one place.

Two classes: one sigmoid unit (the probability of class 1, the positive
class), binary cross-entropy, labels as floats 0/1, ROC AUC. K > 2 classes:
softmax over K units, categorical cross-entropy on one-hot labels, macro
one-vs-rest ROC AUC (Keras' ``AUC(multi_label=True)`` averages the K
per-class AUCs unweighted), accuracy and balanced accuracy. Either way the
monitored metric is ``val_auc``, so checkpoints and early stopping need not
know which.
"""
from __future__ import annotations

import keras
import tensorflow as tf

MONITOR = "val_auc"


def output_units(num_classes: int) -> int:
    """Units of the output layer: 1 (sigmoid) for two classes, K (softmax) for more."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def encode_labels(labels, num_classes: int):
    """Label indices (any numeric dtype) as the loss wants them: float32 0/1
    for two classes, float32 one-hot rows for K > 2."""
    if num_classes == 2:
        return tf.cast(labels, tf.float32)
    return tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)


def loss(num_classes: int, label_smoothing: float = 0.0) -> keras.losses.Loss:
    if num_classes == 2:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def metrics(num_classes: int) -> list:
    """The metrics logged every epoch; ``auc`` is the one monitored."""
    if num_classes == 2:
        return [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]
    return [keras.metrics.AUC(name="auc", multi_label=True, num_labels=num_classes),
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            BalancedAccuracy(num_classes, name="balanced_accuracy")]


@keras.saving.register_keras_serializable(package="pcam")
class BalancedAccuracy(keras.metrics.Metric):
    """Mean over classes of the fraction of that class predicted right (the
    mean recall): on EBHI, where one class is 36% of the images and another
    2.6%, plain accuracy rewards ignoring the small classes; this does not.

    Classes absent from what was seen so far are left out of the mean.
    """

    def __init__(self, num_classes: int, name: str = "balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.hits = self.add_variable((num_classes,), initializer="zeros", name="hits")
        self.seen = self.add_variable((num_classes,), initializer="zeros", name="seen")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true = tf.argmax(y_true, axis=-1)
        right = tf.cast(tf.equal(true, tf.argmax(y_pred, axis=-1)), "float32")
        self.hits.assign_add(tf.math.unsorted_segment_sum(right, true, self.num_classes))
        self.seen.assign_add(tf.math.unsorted_segment_sum(tf.ones_like(right), true,
                                                          self.num_classes))

    def result(self):
        present = self.seen > 0
        recall = tf.math.divide_no_nan(self.hits, self.seen)
        return tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, recall, 0.0)),
                                     tf.reduce_sum(tf.cast(present, "float32")))

    def reset_state(self):
        self.hits.assign(tf.zeros_like(self.hits))
        self.seen.assign(tf.zeros_like(self.seen))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
