"""Grad-CAM: where in a tile a model found the evidence for its answer.

Selvaraju et al. 2017. For each tile, the gradient of the class score with
respect to the last convolution's feature map A (the registry's
``last_conv_layer``, which is the backbone's output) is averaged over the
map's positions to weigh each channel; the heat map is ReLU(sum_k w_k A_k),
the places whose features raise the score.

The score is the target class's logit, before the sigmoid or softmax: the
probability's gradient is the logit's times p(1 - p), which at p = 0.999 is
a thousand times smaller and turns the maps of the most confident tiles into
float noise. A two-class model has one unit: evidence for class 1 is its
logit, for class 0 the negated logit.

A map has the feature map's resolution (simple-cnn on 96 px tiles: 12x12,
a cell per 8 px; ResNet50: 3x3 at 96 px, 7x7 at 224 px). It is resized to
the tile (bilinear, pixel centres aligned) and divided by its maximum, so 1
marks each tile's strongest evidence; a map of zeros means the model found
no evidence for that class anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from pcam.errors import PcamError
from pcam.models.registry import backbone_of


@dataclass(frozen=True)
class Explainer:
    """A model split where Grad-CAM needs it.

    Attributes:
        features: same weights as the model; tile -> (feature map, input of
            the output unit).
        output: the output layer: one sigmoid unit (two classes) or a softmax
            ``Dense`` over K units.
        layer: name of the layer whose feature map is weighed.
        graphs: the compiled Grad-CAM step per (image shape, dtype), made
            on first use (``gradcam``).
    """

    features: keras.Model
    output: keras.layers.Dense
    layer: str
    graphs: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def map_shape(self) -> tuple[int, int]:
        return tuple(self.features.output_shape[0][1:3])


def explainer(model: keras.Model) -> Explainer:
    """Split a tile classifier into feature map and head.

    A pcam model (``pcam.models.registry.create_model``) is a chain of layers around a
    nested ``backbone``, whose own ``output`` belongs to its inner graph: the
    chain's layers are called again on a new input, with the backbone split
    at the registry's ``last_conv_layer``, whose output is the feature map.
    Any other Keras model (a ``.keras`` file from elsewhere) uses its last
    layer with a 4-D output, the Grad-CAM paper's choice.

    Raises:
        PcamError: the model does not end in one sigmoid unit or a softmax
            ``Dense`` layer, or has no layer with a feature map.
    """
    output = model.layers[-1]
    activation = getattr(getattr(output, "activation", None), "__name__", "")
    units = getattr(output, "units", 0)
    if not (isinstance(output, keras.layers.Dense)
            and ((units == 1 and activation == "sigmoid") or (units > 1 and activation == "softmax"))):
        raise PcamError(f"model {model.name!r} does not end in one sigmoid unit or a softmax "
                        f"layer (its last layer is a {type(output).__name__}): Grad-CAM here "
                        "explains tile classifiers such as pcam's")
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    spec = backbone_of(model)
    if spec is not None and any(layer.name == "backbone" for layer in layers):
        inputs = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype, name="tile")
        x = inputs
        for layer in layers[:-1]:
            if layer.name == "backbone":
                # The registry names the layer to weigh; the backbone is split there
                # (for every registered backbone it is the backbone's own output).
                conv = layer.get_layer(spec.last_conv_layer).output
                features, x = keras.Model(layer.inputs, [conv, layer.outputs[0]])(x)
            else:
                x = layer(x)
        return Explainer(keras.Model(inputs, [features, x]), output, spec.last_conv_layer)
    maps = [layer for layer in layers if len(layer.output.shape) == 4]
    if not maps:
        raise PcamError(f"model {model.name!r} has no layer with a feature map (a 4-D "
                        "output) for Grad-CAM to weigh")
    return Explainer(keras.Model(model.inputs, [maps[-1].output, output.input]), output,
                     maps[-1].name)


def gradcam(explain: Explainer, tiles, target=None, batch_size: int = 32,
            compiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heat maps and class probabilities for a stack of tiles.

    Args:
        explain: from ``explainer(model)``.
        tiles: (N, H, W, 3) RGB 0..255, the model's input size.
        target: whose evidence to show: a class index for every tile, an
            array of one index per tile, or None for each tile's predicted
            class (two classes: at probability 0.5).
        batch_size: tiles per step.
        compiled: run the step as a graph function, traced once per image
            shape and dtype and kept in ``explain`` (False: eagerly, op by op;
            the same numbers, several times slower for one tile).

    Returns:
        ``(heat, probs)``: (N, H, W) float32 maps in 0..1, and the (N, K)
        class probabilities (a one-unit model's p as 1 - p and p).
    """
    tiles = np.asarray(tiles)
    units = explain.output.units
    n_classes = 2 if units == 1 else units
    # -1: each tile's predicted class, decided inside the step.
    targets = np.broadcast_to(np.asarray(-1 if target is None else target, np.int64),
                              (len(tiles),))
    if target is not None and len(targets) and not (0 <= targets.min() and
                                                    targets.max() < n_classes):
        raise PcamError(f"Grad-CAM target {target}: the model has classes 0 to {n_classes - 1}")
    step = _compiled(explain, tiles.shape[1:], tiles.dtype) if compiled else (
        lambda images, wanted: _batch(explain, images, wanted))
    heat, probs = [], []
    for start in range(0, len(tiles), batch_size):
        h, p = step(tf.convert_to_tensor(tiles[start:start + batch_size]),
                    tf.constant(targets[start:start + batch_size]))
        heat.append(h.numpy())
        probs.append(p.numpy())
    if not heat:
        return (np.zeros((0, *tiles.shape[1:3]), np.float32),
                np.zeros((0, n_classes), np.float32))
    return np.concatenate(heat), np.concatenate(probs)


def _compiled(explain: Explainer, image_shape, dtype):
    """The Grad-CAM step as a graph function for (N, *image_shape) batches of
    ``dtype``, traced once and kept in ``explain.graphs``.

    Eagerly, each tile pays the Python dispatch of every layer twice (forward
    and gradient): ~0.1 s for one simple-cnn tile on a CPU, against a few ms
    for the traced graph.
    """
    key = (tuple(int(d) for d in image_shape), tf.as_dtype(dtype).name)
    if key not in explain.graphs:
        # No tensor-dependent Python control flow in the step: nothing to convert.
        @tf.autograph.experimental.do_not_convert
        def step(images, wanted):
            return _batch(explain, images, wanted)

        explain.graphs[key] = tf.function(
            step, input_signature=[tf.TensorSpec((None, *key[0]), tf.as_dtype(dtype)),
                             tf.TensorSpec((None,), tf.int64)])
    return explain.graphs[key]


def _batch(explain: Explainer, images, targets):
    """Heat maps and probabilities of one batch; ``targets`` -1: the predicted class."""
    kernel = tf.cast(explain.output.kernel, tf.float32)
    bias = tf.cast(explain.output.bias, tf.float32)
    with tf.GradientTape() as tape:
        features, head = explain.features(images, training=False)
        logits = tf.matmul(tf.cast(head, tf.float32), kernel) + bias           # (N, units)
        if logits.shape[-1] == 1:
            logit = logits[:, 0]
            wanted = tf.where(targets < 0, tf.cast(logit >= 0, tf.int64), targets)
            # Class 1's evidence is the logit; class 0's is its negation.
            score_per_tile = tf.where(tf.equal(wanted, 1), logit, -logit)
            p = tf.sigmoid(logit)
            probs = tf.stack([1 - p, p], axis=1)  # (N, K) for both tasks (pcam.task)
        else:
            wanted = tf.where(targets < 0, tf.argmax(logits, axis=-1), targets)
            score_per_tile = tf.gather(logits, wanted, batch_dims=1)
            probs = tf.nn.softmax(logits)
        # Tiles do not interact at inference (BatchNorm uses its moving
        # statistics), so one gradient of the sum gives each tile its own.
        score = tf.reduce_sum(score_per_tile)
    grads = tf.cast(tape.gradient(score, features), tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)          # (N, 1, 1, C)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))
    cam = tf.image.resize(cam[..., None], tf.shape(images)[1:3], method="bilinear")[..., 0]
    cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
    return cam, probs
