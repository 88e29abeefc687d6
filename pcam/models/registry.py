"""Backbone registry, classification head and ``create_model``.

A model takes raw RGB tiles, 0..255 (uint8 or float), and carries everything
else inside itself: resizing to the backbone's input size, training-only
augmentation layers, the backbone's own preprocessing, the backbone and the
head. A saved ``.keras`` file therefore works on a raw tile with no side
knowledge (loading it needs ``import pcam.models.registry``, which registers the
custom layers: ``ChannelStandardize``, and CoAtNet's ``RelativeAttention2D``).

Layout of a model (layer names are fixed so that training and Grad-CAM code
can find the parts)::

    tile (T, T, 3) -> [augment layers] -> [resize to S] -> [preprocess]
        -> backbone -> head_pool -> head_dense -> head_bn -> head_dropout
        -> prediction (float32: one sigmoid unit for two classes, softmax over K for K > 2)
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import keras

from pcam.errors import PcamError
from pcam.models.cnn import (BN_MOMENTUM, SIMPLE_CNN_SIZE, ChannelStandardize, cpu_cnn,
                             scale_to_unit, simple_cnn)
from pcam.models.coatnet import COATNET0_BLOCKS, COATNET0_CHANNELS, SIZE_MULTIPLE, coatnet
from pcam.task import output_units

DEFAULT_BACKBONE = "resnet50"


# Backbones trained on PCam that ship inside the package (``--weights pcam``):
# cpu-cnn trained by the CPU recipe on 18,000 real PCam tiles (CC0), made by
# tools/make_pcam_backbone.py, whose record sits beside the file.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = {"cpu-cnn": WEIGHTS_DIR / "cpu-cnn-pcam.weights.h5"}


# ImageNet statistics as keras.applications' "caffe" and "torch" modes use them.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


TORCH_MEAN = tuple(255.0 * m for m in (0.485, 0.456, 0.406))


TORCH_STD = tuple(255.0 * s for s in (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Backbone:
    """One registered backbone.

    Attributes:
        name: registry name (``--backbone``).
        constructor: ``keras.applications``-style function taking
            ``include_top``, ``weights`` and ``input_shape``.
        preprocess_input: the reference preprocessing of 0..255 RGB (Keras's
            ``preprocess_input`` for the family); the model reproduces it with
            ``ChannelStandardize(mean, std, bgr)``, and a test checks they agree.
        last_conv_layer: the layer Grad-CAM reads: the activated output of the
            last convolution, which is also the backbone's output feature map.
        native_size: the input size the pretrained weights were trained at.
        mean, std, bgr: the ``ChannelStandardize`` arguments; None for mean
            means no preprocessing layer (the backbone preprocesses itself).
        min_size: smallest image size the constructor accepts.
        pretrained: whether ``weights="imagenet"`` loads anything.
        size_multiple: the image size must be a multiple of it (CoAtNet: 32).
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocess_input: Callable
    last_conv_layer: str
    native_size: int
    mean: tuple | None = None
    std: tuple = (1.0, 1.0, 1.0)
    bgr: bool = False
    min_size: int = 32
    pretrained: bool = True
    size_multiple: int = 1

    def preprocessing(self) -> keras.layers.Layer | None:
        """A new layer that does ``preprocess_input`` inside the model, or None."""
        if self.mean is None:
            return None
        return ChannelStandardize(self.mean, self.std, self.bgr, name="preprocess")


def convnext_tiny(include_top=False, weights=None, input_shape=(224, 224, 3)):
    """``keras.applications.ConvNeXtTiny`` whose output layer has a fixed name.

    Without a top, Keras ends ConvNeXt with a ``LayerNormalization`` it does
    not name, so it is called "layer_normalization" or "layer_normalization_7"
    depending on how many were made before in the process; Grad-CAM finds its
    layer by name, so it is renamed "convnext_tiny_top_layernorm" (the name
    travels in the ``.keras`` file). It rescales and normalizes its 0..255
    input itself (``include_preprocessing=True``).
    """
    model = keras.applications.ConvNeXtTiny(include_top=include_top, weights=weights,
                                            input_shape=input_shape)
    if not include_top:
        model.layers[-1].name = "convnext_tiny_top_layernorm"
    return model


def coatnet_backbone(name: str, *, blocks=COATNET0_BLOCKS, channels=COATNET0_CHANNELS,
                     **architecture) -> Backbone:
    """A registry entry for a CoAtNet of the given shape (``pcam.models.coatnet.coatnet``'s
    arguments); CoAtNet-0 by default. Tests register narrow ones, e.g.
    ``register_backbone(coatnet_backbone("coatnet-narrow", blocks=(1, 1, 1, 1, 1),
    channels=(8, 8, 16, 16, 32)))``; a model saved from one loads in any process
    that imports pcam (the layers are in the file; the registry is needed only
    for Grad-CAM's layer name and ``backbone_of``).

    Preprocessing: the ImageNet mean and std ("torch" mode), which brings
    H&E tiles near zero mean and unit variance as a network trained from
    scratch wants them (timm's CoAtNets use the same statistics).

    Grad-CAM reads ``top_norm``, the normalized output of the last
    transformer block: the most semantic feature map that is still spatial,
    and the one the head pools, so its gradients come through the head alone,
    as for every other backbone (Grad-CAM needs a spatial map: attention
    tokens are kept as an H x W x C map throughout for this). It is S/32:
    3x3 on 96 px tiles, as coarse as ResNet50's. S3's output would be 6x6 at
    96 px, but its gradients would come through S4's two attention blocks,
    in which every position mixes with every other, so a position's weight
    would no longer say where the evidence lies. For finer maps, train at
    ``--image-size 192`` or 224 (6x6, 7x7).
    """
    return Backbone(name, partial(coatnet, blocks=tuple(blocks), channels=tuple(channels),
                                  name=name.replace("-", "_"), **architecture),
                    partial(keras.applications.imagenet_utils.preprocess_input, mode="torch"),
                    "top_norm", 224, mean=TORCH_MEAN, std=TORCH_STD, min_size=SIZE_MULTIPLE,
                    pretrained=False, size_multiple=SIZE_MULTIPLE)


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Add ``backbone`` to the registry; a name already taken is refused (a
    second entry would silently replace the first for every saved run)."""
    if backbone.name in BACKBONES:
        raise ValueError(f"backbone {backbone.name!r} is already registered")
    BACKBONES[backbone.name] = backbone
    return backbone


for _backbone in (
    Backbone("resnet50", keras.applications.ResNet50,
             keras.applications.resnet50.preprocess_input,
             "conv5_block3_out", 224, mean=CAFFE_MEAN_BGR, bgr=True),
    Backbone("resnet50v2", keras.applications.ResNet50V2,
             keras.applications.resnet_v2.preprocess_input,
             "post_relu", 224, mean=(127.5,) * 3, std=(127.5,) * 3),
    Backbone("densenet121", keras.applications.DenseNet121,
             keras.applications.densenet.preprocess_input,
             "relu", 224, mean=TORCH_MEAN, std=TORCH_STD),
    # EfficientNetV2 rescales and normalizes inside itself (include_preprocessing=True);
    # its preprocess_input is the identity, so no layer of ours.
    Backbone("efficientnetv2b0", keras.applications.EfficientNetV2B0,
             keras.applications.efficientnet_v2.preprocess_input,
             "top_activation", 224),
    Backbone("efficientnetv2s", keras.applications.EfficientNetV2S,
             keras.applications.efficientnet_v2.preprocess_input,
             "top_activation", 384),
    # ConvNeXt also preprocesses itself (a Normalization layer first).
    Backbone("convnext-tiny", convnext_tiny, keras.applications.convnext.preprocess_input,
             "convnext_tiny_top_layernorm", 224),
    Backbone("simple-cnn", simple_cnn, scale_to_unit, "block4_relu", SIMPLE_CNN_SIZE,
             mean=(0.0,) * 3, std=(255.0,) * 3, min_size=8, pretrained=False),
    Backbone("cpu-cnn", cpu_cnn, scale_to_unit, "block7_relu", SIMPLE_CNN_SIZE,
             mean=(0.0,) * 3, std=(255.0,) * 3, min_size=16, pretrained=False),
    # No ImageNet weights for CoAtNet in Keras: trained from scratch.
    coatnet_backbone("coatnet-0"),
):
    register_backbone(_backbone)


# What pcam itself registers (tests and users may add more).
BUILT_IN = tuple(BACKBONES)


def get_backbone(name: str) -> Backbone:
    """The registry entry for ``name``; an unknown name is a PcamError listing the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise PcamError(f"unknown backbone {name!r}; choose one of: "
                        f"{', '.join(BACKBONES)}") from None


def default_image_size(name: str, tile_size: int, weights: str | Path | None) -> int:
    """The side the backbone sees when ``--image-size`` is 0: the recipe's choice.

    A backbone starting from ImageNet weights sees small tiles upsampled 2x,
    up to its native size: 96 px PCam tiles become 192, 150 px tiles 224,
    224 px images stay 224. Why: ImageNet filters were learnt on objects
    224 px images frame; at 96 px a nucleus spans a few pixels, below what the
    first stride-2 layers resolve. In the best public ablation on this
    competition (ivanpanshin, private leaderboard) ResNet50 went from 0.950 at
    96 px to 0.966 upsampled to 196, the largest single gain of that study;
    192 is the nearest size the 5 stride-2 stages divide (6x6 final map). It
    costs (192/96)^2 = 4x the compute per tile, which is why it is only the
    default where ImageNet weights are used (a GPU recipe): a backbone from
    random weights (``simple-cnn``, ``--weights none``) sees the tiles as
    they are fed.

    Args:
        name: a ``BACKBONES`` key.
        tile_size: side of the tiles the model is fed (tile size or centre crop).
        weights: the ``--weights`` value.
    """
    spec = get_backbone(name)
    if not (spec.pretrained and weights == "imagenet"):
        return tile_size
    return max(tile_size, min(2 * tile_size, spec.native_size))


def create_model(name: str = DEFAULT_BACKBONE, *, num_classes: int = 2, image_size: int = 0,
                 tile_size: int | None = None, weights: str | Path | None = "imagenet",
                 dense_units: int = 256, dropout: float = 0.5,
                 augment: Sequence[keras.layers.Layer] = ()) -> keras.Model:
    """A tile classifier: raw RGB tile in, class probabilities out.

    Args:
        name: a ``BACKBONES`` key.
        num_classes: 2 gives one sigmoid unit, the probability of class 1
            (so PCam models and their files stay as they were); K > 2 gives
            a softmax over K units.
        image_size: side the backbone sees; tiles are resized inside the model
            when it differs from ``tile_size`` (top PCam solutions used 224);
            0: the backbone's own (``Backbone.native_size``).
        tile_size: side of the tiles the model is fed (the store's tile size,
            or the centre crop when the pipeline crops); None: ``image_size``.
        weights: "imagenet", "none" (or None) for random initialization, the
            path of a backbone weights file (``.weights.h5`` from
            ``backbone.save_weights``, or a keras-applications ``*_notop.h5``),
            or of a pcam model of the same backbone (``.keras``, a run's
            ``best.keras``), whose backbone is copied.
            ``simple-cnn`` and ``coatnet-0`` have no pretrained weights
            (``Backbone.pretrained``): "imagenet" means random initialization
            for them, so that the default works with every backbone.
        dense_units: width of the head's hidden Dense layer.
        dropout: dropout rate before the output unit.
        augment: Keras layers applied to the raw tile (0..255) before resizing;
            they must act only when ``training=True``. Applied before resizing
            because colour and stain ops cost 5.4x less on 96x96 than on 224x224.

    Returns:
        A ``keras.Model`` (uncompiled) with input (tile_size, tile_size, 3)
        float32 (uint8 is cast on entry) and output (batch, 1) or (batch, K)
        float32. The backbone is the sub-model ``model.get_layer("backbone")``,
        trainable (``pcam.models.freeze``).

    Raises:
        PcamError: unknown name, image size too small for the backbone or
            not a multiple of its ``size_multiple``, unreadable weights file or
            model of another backbone, or ImageNet weights that cannot be fetched.
    """
    spec = get_backbone(name)
    image_size = image_size or spec.native_size
    tile_size = tile_size or image_size
    if num_classes < 2:
        raise PcamError(f"a classifier needs at least 2 classes, got {num_classes}")
    _check_image_size(spec, image_size)
    backbone = _build_backbone(spec, image_size, weights)

    inputs = keras.Input((tile_size, tile_size, 3), dtype="float32", name="tile")
    x = inputs
    for layer in augment:
        x = layer(x)
    if image_size != tile_size:
        x = keras.layers.Resizing(image_size, image_size, name="resize")(x)
    preprocessing = spec.preprocessing()
    if preprocessing is not None:
        x = preprocessing(x)
    outputs = _head(backbone(x), output_units(num_classes), dense_units, dropout)
    return keras.Model(inputs, outputs, name=model_name(name))


def _check_image_size(spec: Backbone, image_size: int) -> None:
    if image_size < spec.min_size:
        raise PcamError(f"image size {image_size} is too small for {spec.name} "
                        f"(at least {spec.min_size})")
    if image_size % spec.size_multiple:
        below = image_size // spec.size_multiple * spec.size_multiple
        raise PcamError(f"image size {image_size} does not suit {spec.name}: it must be a "
                        f"multiple of {spec.size_multiple} (e.g. {max(below, spec.min_size)} "
                        f"or {below + spec.size_multiple}); set --image-size")


def _head(features, units: int, dense_units: int, dropout: float):
    """The classification head on the backbone's feature map (its layer names are fixed)."""
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="head_bn")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 so that the probability (and the loss) stays float32 under mixed precision.
    return keras.layers.Dense(units, activation="sigmoid" if units == 1 else "softmax",
                              dtype="float32", name="prediction")(x)


def model_name(backbone: str) -> str:
    """The name ``create_model`` gives a model of ``backbone`` (kept in its .keras file)."""
    return "pcam_" + backbone.replace("-", "_")


def backbone_of(model: keras.Model) -> Backbone | None:
    """The registry entry a pcam model was built with (from its name), or None."""
    return next((b for b in BACKBONES.values() if model_name(b.name) == model.name), None)


def shipped_weights(backbone: str) -> Path:
    """The PCam-trained weights of ``backbone`` shipped in the package (``--weights pcam``).

    Raises:
        PcamError: pcam ships none for this backbone.
    """
    if backbone not in SHIPPED:
        raise PcamError(f"--weights pcam: pcam ships a PCam-trained backbone for "
                        f"{', '.join(SHIPPED)} only, not {backbone}; pass --weights imagenet, "
                        "none or a file")
    return SHIPPED[backbone]


def _build_backbone(spec: Backbone, image_size: int, weights) -> keras.Model:
    shape = (image_size, image_size, 3)
    imagenet = weights == "imagenet" and spec.pretrained
    if weights == "pcam":
        weights = shipped_weights(spec.name)
    path = None if weights in (None, "none", "imagenet") else Path(weights)
    if path is not None and not path.is_file():
        raise PcamError(f"backbone weights file not found: {path}")
    try:
        backbone = spec.constructor(include_top=False, weights="imagenet" if imagenet else None,
                                    input_shape=shape)
    except Exception as error:
        # keras.utils.get_file reports a failed download as a bare Exception
        # ("URL fetch failure on URL: ..."), and a connection lost mid-transfer
        # surfaces as an OSError. Anything else is a bug and keeps its traceback.
        if not imagenet or (type(error) is not Exception and not isinstance(error, OSError)):
            raise
        reason = _one_line(error)
        raise PcamError(f"could not fetch the ImageNet weights for {spec.name} ({reason}); "
                        "pass --weights none, or --weights PATH with a local weights "
                        "file") from error
    backbone.name = "backbone"  # EfficientNetV2 uses its name argument as a table key
    if path is not None and path.suffix == ".keras":
        _copy_backbone(spec, backbone, path)
    elif path is not None:
        try:
            backbone.load_weights(path)
        except (ValueError, OSError, KeyError) as error:
            # Keras lists every layer that did not match: hundreds for a ResNet.
            reason = _one_line(error, limit=240)
            raise PcamError(f"could not load backbone weights for {spec.name} from "
                            f"{path} (is it a weights file of this backbone?): {reason}") from error
    return backbone


def _copy_backbone(spec: Backbone, backbone: keras.Model, path: Path) -> None:
    """Start ``backbone`` from the backbone of a pcam model file (a run's ``best.keras``).

    Transfer within histology: a ``cpu-cnn`` trained on PCam's 20,000 tiles
    and fine-tuned on oral-oscc (759 images a fold) reached a validation AUC
    of 0.966 averaged over 5 folds, against 0.923 from random weights with
    the same 60 epochs (benchmarks/folders_quality.py).
    Convolution weights do not depend on the input size, so a model trained
    on 96 px tiles starts one fed 128 px tiles.
    """
    import pcam.data.augment  # noqa: F401 -- registers the custom layers the file may hold

    try:
        source = keras.models.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise PcamError(f"could not read {path} as a pcam model ({_one_line(error, 200)}); "
                        "pass a run's fold_K/best.keras") from None
    trained = backbone_of(source)
    if trained is None:
        raise PcamError(f"{path} is not a pcam model (its name is {source.name!r}); "
                        "pass a run's fold_K/best.keras")
    if trained.name != spec.name:
        raise PcamError(f"{path} holds a {trained.name} backbone, not {spec.name}: pass "
                        f"--backbone {trained.name}, or a model of {spec.name}")
    try:
        backbone.set_weights(source.get_layer("backbone").get_weights())
    except ValueError as error:  # e.g. weights that depend on the input size
        raise PcamError(f"could not start {spec.name} from {path}: "
                        f"{_one_line(error, 240)}") from None


def _one_line(error: BaseException, limit: int = 400) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
