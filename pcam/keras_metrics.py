"""A Keras metric pcam logs that Keras lacks: balanced accuracy.

Its own module, below ``pcam.task``, because defining a Keras class imports
Keras, and ``pcam.task`` is read by reports that must start without it.
"""
from __future__ import annotations

import keras
import tensorflow as tf


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
