"""pcam's own backbones for CPUs (``simple-cnn``, ``cpu-cnn``) and the preprocessing layer of all.

``ChannelStandardize`` is registered with Keras as ``pcam>ChannelStandardize``:
that name, not this module's, is what saved models record, so it may move.
"""
from __future__ import annotations

import keras
import numpy as np

# simple-cnn's design size: 3 stride-2 convolutions take 96 px to a 12x12 map
# whose cells each see ~31 px. Any size works; this is its registry native size.
SIMPLE_CNN_SIZE = 96


@keras.saving.register_keras_serializable(package="pcam")
class ChannelStandardize(keras.layers.Layer):
    """``(x - mean) / std`` per channel, optionally after RGB -> BGR.

    One layer covers the preprocessing modes of ``keras.applications``:
    "caffe" (BGR, minus the ImageNet mean), "tf" (to -1..1) and "torch" (to
    0..1, then the ImageNet mean and std). It is a layer with ``get_config``,
    not a ``Lambda``, because Lambda layers do not load from ``.keras`` files
    without ``safe_mode=False``.

    Args:
        mean: three per-channel means, in the output channel order.
        std: three per-channel divisors, in the output channel order.
        bgr: reverse the channel order (RGB -> BGR) before standardizing.
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), bgr=False, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.bgr = bool(bgr)

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        if self.bgr:
            x = keras.ops.flip(x, axis=-1)
        mean = keras.ops.convert_to_tensor(self.mean, self.compute_dtype)
        std = keras.ops.convert_to_tensor(self.std, self.compute_dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "bgr": self.bgr}


def scale_to_unit(images):
    """``simple-cnn``'s preprocessing: 0..255 -> 0..1."""
    return np.asarray(images, np.float32) / 255.0


# Moving statistics of the BatchNorm layers we create (simple-cnn, the head).
# Keras' 0.99 forgets its initial mean 0 / variance 1 only after ~460 steps
# (0.99**460 = 1%); a short run (the demo: 6 epochs of 9 steps) then
# validates with those initial statistics and predicts one class. 0.9 gets
# there in 44 steps and is what long runs barely notice.
BN_MOMENTUM = 0.9


def simple_cnn(include_top=False, weights=None, input_shape=(SIMPLE_CNN_SIZE, SIMPLE_CNN_SIZE, 3)):
    """A compact CNN for CPUs: 4 blocks of 3x3 conv -> BatchNorm -> ReLU, 32 to 256 filters.

    The first three convolutions have stride 2 (96 -> 48 -> 24 -> 12), the
    fourth stride 1, so the output is a (S/8, S/8, 256) feature map (12x12
    for 96x96 tiles) in which each position sees 31x31 pixels, about PCam's
    32x32 label region. Strided convolutions instead of conv + 2x2 max-pool
    because on this project's 2-core CPU a training step then costs 8.4 ms of
    CPU per tile instead of 31.8 ms (BatchNorm and pooling on the full
    96x96x32 map dominate). Trained on the 20,000 real PCam train tiles
    (random flips and rotations, Adam 2e-3 with cosine decay, batch 128) it
    reached AUC 0.887 on the 3,000 valid tiles after 4 epochs and 0.897 after
    8 (BatchNorm momentum then 0.99), at about 150 s per epoch; a
    7-convolution variant at 1.8x the cost did no better (0.839 against 0.854
    after 3 epochs). 389,856 parameters (456,929 with the default head). Its
    input is 0..1 (``scale_to_unit``); same signature as the
    ``keras.applications`` constructors.

    Args:
        include_top: must be False (the head is added by ``create_model``).
        weights: must be None: there are no pretrained weights.
        input_shape: (S, S, 3), S at least 8.
    """
    return _plain_cnn(SIMPLE_CNN_BLOCKS, "simple_cnn", include_top, weights, input_shape)


def cpu_cnn(include_top=False, weights=None, input_shape=(SIMPLE_CNN_SIZE, SIMPLE_CNN_SIZE, 3)):
    """The CPU recipe's CNN: ``simple-cnn`` made deeper, 7 blocks of 3x3 conv -> BN -> ReLU.

    Pairs of convolutions at 24x24 (64 filters), 12x12 (128) and, new, 6x6
    (256) for 96 px tiles: each downsampling convolution (stride 2) is
    followed by one at stride 1, as in VGG's stages, so the output is a
    (S/16, S/16, 256) map whose cells each see ~100 px, the whole tile and
    its context. 1,232,865 parameters with the default head (2.7x
    simple-cnn's), 1.7x its training step on this CPU (3.3 against 1.9 ms
    per tile at batch 128), where a simple-cnn epoch of the 18,000 real PCam
    train tiles takes ~36 s: the 45-minute CPU budget pays for ~30 epochs of
    it. No extra convolution at 48x48: its BatchNorm and ReLU on a 48x48x32
    map cost as much as a convolution at 6x6 and see only 7 px more.

    Args:
        include_top: must be False (the head is added by ``create_model``).
        weights: must be None: there are no pretrained weights.
        input_shape: (S, S, 3), S at least 16.
    """
    return _plain_cnn(CPU_CNN_BLOCKS, "cpu_cnn", include_top, weights, input_shape)


# (filters, stride) of each block of the two plain CNNs
SIMPLE_CNN_BLOCKS = ((32, 2), (64, 2), (128, 2), (256, 1))


CPU_CNN_BLOCKS = ((32, 2), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1))


def _plain_cnn(blocks, name, include_top, weights, input_shape) -> keras.Model:
    """Blocks of 3x3 conv (no bias) -> BatchNorm -> ReLU, named ``block{i}_*``."""
    if include_top or weights is not None:
        raise ValueError(f"{name.replace('_', '-')} has no top and no pretrained weights")
    inputs = keras.Input(input_shape)
    x = inputs
    for i, (filters, strides) in enumerate(blocks, start=1):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    return keras.Model(inputs, x, name=name)
