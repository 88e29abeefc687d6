"""Augmentation as small named ops composed in a list.

Every op has the signature ``op(images, seed) -> images``: ``images`` is a
batch (N, H, W, 3) of uint8 or float32 RGB in 0..255, ``seed`` a shape-[2]
integer tensor. Ops draw per-tile randomness with stateless random ops, so a
pipeline seeded once gives the same batches on every run, and each op works
the same eagerly, inside ``tf.data.Dataset.map`` and inside a Keras layer.

Ops work on whole batches (one call per batch, not per tile), and the
pipeline compiles their composition with XLA: on this 2-core machine the
random dihedral op runs at ~1.5k tiles/s as plain TF kernels (uint8
``tf.where`` and ``tf.reverse`` are slow paths) and at ~70k tiles/s fused by
XLA. An op that XLA cannot compile says so with ``op.xla = False``
(``zoom``: CropAndResize has no XLA kernel), and the chain then runs unfused.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from pcam.settings import AugmentSettings

# Optical densities of haematoxylin, eosin and DAB (Ruifrok & Johnston 2001,
# the matrix scikit-image uses for rgb2hed); rows are stains, columns RGB.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


def _per_tile(seed, images, low, high):
    """One uniform draw per tile, shaped to broadcast over (N, H, W, C)."""
    n = tf.shape(images)[0]
    return tf.random.stateless_uniform([n, 1, 1, 1], seed, low, high)


def _named(op, name, xla=True):
    op.__name__, op.xla = name, xla
    return op


def _coin(seed, images):
    return _per_tile(seed, images, 0.0, 1.0) < 0.5


def dihedral():
    """Random element of the dihedral group D4 per tile: the 8 flips and 90-degree
    rotations, uniformly (three independent coin flips: left-right, up-down,
    transpose; their 8 combinations are the 8 group elements)."""
    def op(images, seed):
        seeds = tf.random.experimental.stateless_split(seed, 3)
        images = tf.where(_coin(seeds[0], images), tf.reverse(images, [2]), images)
        images = tf.where(_coin(seeds[1], images), tf.reverse(images, [1]), images)
        return tf.where(_coin(seeds[2], images), tf.transpose(images, [0, 2, 1, 3]), images)
    return _named(op, "dihedral")


def dihedral_view(images, k: int):
    """The k-th (0..7) fixed dihedral view of a batch, for test-time augmentation.

    k's bits select transpose (4), up-down (2) and left-right (1) flips, so
    views 0..7 are the 8 distinct elements of D4 and view 0 is the identity.
    """
    if k & 1:
        images = tf.reverse(images, [2])
    if k & 2:
        images = tf.reverse(images, [1])
    if k & 4:
        images = tf.transpose(images, [0, 2, 1, 3])
    return images


def colour_jitter(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
    """Brightness, contrast, saturation and hue jitter; each a max relative change.

    Returns float32 in 0..255.
    """
    def op(images, seed):
        seeds = tf.random.experimental.stateless_split(seed, 4)
        x = tf.cast(images, tf.float32)
        if brightness:
            x += 255.0 * _per_tile(seeds[0], x, -brightness, brightness)
        if contrast:
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * _per_tile(seeds[1], x, 1 - contrast, 1 + contrast) + mean
        if saturation:
            grey = tf.reduce_mean(x, axis=3, keepdims=True)
            x = (x - grey) * _per_tile(seeds[2], x, 1 - saturation, 1 + saturation) + grey
        if hue:
            hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 255.0) / 255.0)
            shift = _per_tile(seeds[3], x, -hue, hue)[..., 0]
            h = tf.math.floormod(hsv[..., 0] + shift, 1.0)
            x = 255.0 * tf.image.hsv_to_rgb(tf.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1))
        return tf.clip_by_value(x, 0.0, 255.0)
    return _named(op, "colour_jitter")


def stain_jitter(strength=0.05):
    """H&E stain jitter (Tellez et al. 2018): in optical-density space each
    stain's concentration is scaled by U(1-s, 1+s) and shifted by U(-s, s).

    Returns float32 in 0..255.
    """
    def op(images, seed):
        seeds = tf.random.experimental.stateless_split(seed, 2)
        x = tf.cast(images, tf.float32)
        density = -tf.math.log((x + 1.0) / 256.0)              # optical density, >= 0
        stains = tf.einsum("nhwc,cs->nhws", density, HED_FROM_RGB)
        n = tf.shape(x)[0]
        scale = tf.random.stateless_uniform([n, 1, 1, 3], seeds[0], 1 - strength, 1 + strength)
        shift = tf.random.stateless_uniform([n, 1, 1, 3], seeds[1], -strength, strength)
        density = tf.einsum("nhws,sc->nhwc", stains * scale + shift, RGB_FROM_HED)
        return tf.clip_by_value(256.0 * tf.exp(-density) - 1.0, 0.0, 255.0)
    return _named(op, "stain_jitter")


def zoom(max_zoom=0.15):
    """Random zoom-in: crop a square of side U(1-max_zoom, 1) of the tile at a
    random place and resize it back. For max_zoom <= 1/3 every crop still holds
    the centre 32x32 of a 96x96 tile, where PCam's label lives."""
    def op(images, seed):
        seeds = tf.random.experimental.stateless_split(seed, 3)
        n = tf.shape(images)[0]
        side = tf.random.stateless_uniform([n], seeds[0], 1.0 - max_zoom, 1.0)
        top = tf.random.stateless_uniform([n], seeds[1]) * (1.0 - side)
        left = tf.random.stateless_uniform([n], seeds[2]) * (1.0 - side)
        boxes = tf.stack([top, left, top + side, left + side], axis=1)
        size = tf.shape(images)[1:3]
        return tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, tf.range(n), size)
    return _named(op, "zoom")


def centre_crop(size: int):
    """Keep the centre size x size pixels (deterministic; seed unused)."""
    def op(images, seed=None):
        height = tf.shape(images)[1]
        start = (height - size) // 2
        return images[:, start:start + size, start:start + size, :]
    return _named(op, f"centre_crop_{size}")


def compose(ops):
    """One op that applies ``ops`` in order, each with its own derived seed."""
    ops = list(ops)

    def op(images, seed):
        if not ops:
            return images
        seeds = ([None] * len(ops) if seed is None  # deterministic ops only
                 else tf.random.experimental.stateless_split(seed, len(ops)))
        for i, each in enumerate(ops):
            images = each(images, seeds[i])
        return images
    return _named(op, "+".join(o.__name__ for o in ops) or "identity",
                  xla=all(o.xla for o in ops))


def train_ops(settings: AugmentSettings) -> list:
    """The CPU-side training ops that ``settings`` asks for, in a sensible order:
    geometry on uint8 first (cheap), then colour and stain in float."""
    ops = []
    if settings.centre_crop:
        ops.append(centre_crop(settings.centre_crop))
    if settings.dihedral:
        ops.append(dihedral())
    if settings.zoom:
        ops.append(zoom(settings.zoom))
    if settings.brightness or settings.contrast or settings.saturation or settings.hue:
        ops.append(colour_jitter(settings.brightness, settings.contrast, settings.saturation, settings.hue))
    if settings.stain:
        ops.append(stain_jitter(settings.stain))
    return ops


def eval_ops(settings: AugmentSettings) -> list:
    """The deterministic ops that evaluation and prediction must share with training."""
    return [centre_crop(settings.centre_crop)] if settings.centre_crop else []


@keras.saving.register_keras_serializable(package="pcam")
class RandomColourStain(keras.layers.Layer):
    """Colour and H&E stain jitter as a layer, so it runs inside the model on the
    accelerator during training and is the identity at inference."""

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, stain=0.0,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        self.params = dict(brightness=brightness, contrast=contrast, saturation=saturation,
                           hue=hue, stain=stain)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        ops = [colour_jitter(brightness, contrast, saturation, hue)]
        if stain:
            ops.append(stain_jitter(stain))
        self._op = compose(ops)

    def call(self, images, training=False):
        if not training:
            return images
        seed = tf.cast(self.seed_generator.next(), tf.int32)
        return tf.cast(self._op(images, seed), images.dtype)

    def get_config(self):
        return {**super().get_config(), **self.params, "seed": self.seed}


COLOUR_FIELDS = ("brightness", "contrast", "saturation", "hue", "stain")


def on_model(settings: AugmentSettings, accelerator: bool) -> tuple[AugmentSettings, list]:
    """Where colour and stain jitter run: ``(what the input pipeline does,
    layers for the model)``.

    On an accelerator they run inside the model (``RandomColourStain``): on a
    CPU pipeline they cost ~225 us a tile (``benchmarks/pipeline.py``), which
    would starve a GPU; inside the model they are a few elementwise ops on the
    device. On a CPU-only machine the model and the pipeline share the same
    cores, so they stay in the pipeline, where tf.data overlaps them with the
    training step.
    """
    jitter = {name: getattr(settings, name) for name in COLOUR_FIELDS}
    if not accelerator or not any(jitter.values()):
        return settings, []
    pipeline = dataclasses.replace(settings, **{name: 0.0 for name in COLOUR_FIELDS})
    return pipeline, [RandomColourStain(**jitter, name="colour_stain")]
