"""Tests for pcam.models.registry: registry, preprocessing, save/load, freezing, weights.

Backbones are built with weights=None and small inputs (32x32, the smallest
the Keras applications accept) so that the whole file runs in about a minute
on 2 CPU cores; no test needs the network.
"""
from __future__ import annotations

import urllib.error
import urllib.request

import keras
import numpy as np
import pytest

from pcam.errors import PcamError
from pcam.models import freeze, registry

TILE = 96  # the PCam tile size these tests feed
SMALL = 32  # image size for the ImageNet backbones in tests


# Tolerance for one float32 computation summed in two orders (eager against
# compiled, oneDNN's blocked reductions): about 170 float32 ulps at 0.5.
FLOAT32_ORDER = 1e-5


def _tiles(n=2, size=TILE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _small_model(name, **kwargs):
    size = TILE if name == "simple-cnn" else SMALL
    return registry.create_model(name, image_size=size, tile_size=TILE, weights="none", **kwargs)


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(PcamError) as error:
        registry.create_model("resnet51", weights="none")
    message = str(error.value)
    assert "resnet51" in message and "\n" not in message
    for name in registry.BACKBONES:
        assert name in message


def test_registry_holds_the_promised_backbones():
    assert registry.DEFAULT_BACKBONE == "resnet50"
    assert {"resnet50", "resnet50v2", "densenet121", "efficientnetv2b0", "efficientnetv2s",
            "convnext-tiny", "simple-cnn", "cpu-cnn", "coatnet-0"} <= set(registry.BACKBONES)


def test_backbone_help_names_every_built_in_backbone():
    # The help is written by hand: --help answers without importing TensorFlow.
    from dataclasses import fields

    from pcam.settings import ModelSettings

    helps = {f.name: f.metadata["help"] for f in fields(ModelSettings)}
    assert [n for n in registry.BUILT_IN if n not in helps["backbone"]] == []
    scratch = [n for n in registry.BUILT_IN if not registry.BACKBONES[n].pretrained]
    assert [n for n in scratch if n not in helps["weights"]] == []


def test_cpu_cnn_is_simple_cnn_with_a_second_convolution_per_stage():
    simple = registry.create_model("simple-cnn", weights="none")
    deep = registry.create_model("cpu-cnn", weights="none")
    assert simple.get_layer("backbone").output.shape[1:] == (12, 12, 256)
    assert deep.get_layer("backbone").output.shape[1:] == (6, 6, 256)  # 96 px / 16
    assert len(freeze.backbone_blocks(deep.get_layer("backbone"))) == 7
    assert (simple.count_params(), deep.count_params()) == (456_929, 1_232_865)



@pytest.mark.parametrize("name", list(registry.BACKBONES))
def test_preprocessing_layer_matches_keras_preprocess_input(name):
    spec = registry.BACKBONES[name]
    tiles = _tiles(4).astype(np.float32)
    expected = np.asarray(spec.preprocess_input(tiles.copy()))  # caffe mode edits in place
    layer = spec.preprocessing()
    got = tiles if layer is None else np.asarray(layer(tiles))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


# EfficientNetV2S is made of EfficientNetV2B0's layer classes, 513 layers
# instead of 270: its round trip costs ~20 s of CPU (the most of any test here)
# and would test Keras, not pcam, again. Its build, output and Grad-CAM layer
# are tested in test_gradcam.py.
SAVE_LOAD = [name for name in registry.BACKBONES if name != "efficientnetv2s"]


@pytest.mark.parametrize("name", SAVE_LOAD)
def test_model_saves_and_loads_with_identical_predictions(name, tmp_path):
    model = _small_model(name)
    tiles = _tiles(2)
    before = model.predict(tiles, verbose=0)
    assert before.shape == (2, 1) and before.dtype == np.float32

    backbone = model.get_layer("backbone")
    last_conv = backbone.get_layer(registry.BACKBONES[name].last_conv_layer)
    assert len(last_conv.output.shape) == 4  # a feature map Grad-CAM can weigh
    assert last_conv.output is backbone.outputs[0]

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(tiles, verbose=0), before, rtol=1e-6, atol=1e-6)
    assert loaded.get_layer("backbone").get_layer(last_conv.name)


@pytest.fixture(scope="module")
def resnet():
    """ResNet50 at 32x32 on 96x96 tiles: resize + caffe preprocessing + backbone."""
    return _small_model("resnet50")


def test_uint8_tile_gives_the_same_output_as_float_tile(resnet):
    tiles = _tiles(2, seed=1)
    as_uint8 = resnet.predict(tiles, verbose=0)
    as_float = resnet.predict(tiles.astype(np.float32), verbose=0)
    # Two compiled functions (one per input dtype): oneDNN may sum in another
    # order, which changes float32 results in their last bits, never more.
    np.testing.assert_allclose(as_uint8, as_float, rtol=FLOAT32_ORDER, atol=FLOAT32_ORDER)


def _params(layers):
    return sum(layer.count_params() for layer in layers)


def test_set_backbone_trainable_counts_and_keeps_batchnorm_frozen(resnet):
    backbone = resnet.get_layer("backbone")
    # The head's trainable scalars: Dense 2048x256+256, BatchNorm gamma+beta, Dense 256+1.
    head = 2048 * 256 + 256 + 2 * 256 + 256 + 1
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    batchnorms = [layer for layer in backbone.layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batchnorms) == 53

    # Pairs, not a dict: as dict keys 0 and False (1 and True) are one key.
    expected = [
        (False, head),
        (0, head),
        # Top 3 blocks = stage conv5 (conv5_block1..3); ResNet50 has only
        # convolutions and BatchNorms with weights.
        (3, head + _params(c for c in convs if c.name.startswith("conv5_"))),
        (True, head + _params(convs)),
        (17, head + _params(convs)),  # stem + 16 residual blocks = all
    ]
    for trainable, count in expected:
        freeze.set_backbone_trainable(resnet, trainable)
        assert freeze.count_trainable_weights(resnet) == count, trainable
        assert not any(bn.trainable for bn in batchnorms)
        assert resnet.get_layer("head_bn").trainable
    assert len(freeze.backbone_blocks(backbone)) == 17

    with pytest.raises(PcamError, match="17 blocks"):
        freeze.set_backbone_trainable(resnet, 18)
    freeze.set_backbone_trainable(resnet, False)


def _fit_one_step(model, tiles, labels):
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    model.fit(tiles, labels, batch_size=len(tiles), epochs=1, verbose=0)


def test_fine_tuning_leaves_batchnorm_statistics_alone():
    model = registry.create_model("simple-cnn", image_size=32, tile_size=TILE, weights="none")
    backbone = model.get_layer("backbone")
    tiles, labels = _tiles(8, seed=2), np.array([0, 1] * 4, np.float32)

    freeze.set_backbone_trainable(model, True)
    bn_before = [w.numpy().copy() for w in backbone.get_layer("block1_bn").weights]
    conv_before = backbone.get_layer("block1_conv").kernel.numpy().copy()
    _fit_one_step(model, tiles, labels)
    for before, after in zip(bn_before, backbone.get_layer("block1_bn").weights):
        np.testing.assert_array_equal(before, after.numpy())  # gamma, beta, mean, variance
    assert not np.array_equal(conv_before, backbone.get_layer("block1_conv").kernel.numpy())

    # From random weights BatchNorm must learn: freeze_batchnorm=False lets it.
    freeze.set_backbone_trainable(model, True, freeze_batchnorm=False)
    mean_before = backbone.get_layer("block1_bn").moving_mean.numpy().copy()
    _fit_one_step(model, tiles, labels)
    assert not np.array_equal(mean_before, backbone.get_layer("block1_bn").moving_mean.numpy())


class _Offline(urllib.request.BaseHandler):
    """Fails every HTTP(S) request at once, as on a machine without network."""

    handler_order = 100  # ahead of the real HTTP(S) handlers (500)

    def http_open(self, request):
        raise urllib.error.URLError("no network (test)")

    https_open = http_open


@pytest.fixture
def offline():
    # keras.utils.get_file downloads with urllib.request.urlretrieve, which
    # uses the installed opener; None restores the default one.
    urllib.request.install_opener(urllib.request.build_opener(_Offline))
    yield
    urllib.request.install_opener(None)


def test_imagenet_weights_without_network_is_a_one_line_error(offline):
    try:
        registry.create_model("resnet50", image_size=SMALL, weights="imagenet")
    except PcamError as error:
        message = str(error)
    else:
        pytest.skip("ResNet50 ImageNet weights are cached in this Keras home")
    assert "\n" not in message
    assert "ImageNet weights" in message and "resnet50" in message
    assert "--weights none" in message and "--weights PATH" in message


def test_simple_cnn_with_imagenet_weights_starts_from_random_weights(offline):
    model = registry.create_model("simple-cnn", weights="imagenet")
    assert model.predict(_tiles(1), verbose=0).shape == (1, 1)


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # the mismatched file
def test_backbone_weights_from_a_local_file(tmp_path):
    source = registry.create_model("simple-cnn", image_size=32, weights="none")
    path = tmp_path / "simple.weights.h5"
    source.get_layer("backbone").save_weights(path)
    model = registry.create_model("simple-cnn", image_size=32, weights=str(path))
    for expected, got in zip(source.get_layer("backbone").weights,
                             model.get_layer("backbone").weights):
        np.testing.assert_array_equal(expected.numpy(), got.numpy())

    with pytest.raises(PcamError, match="not found"):
        registry.create_model("simple-cnn", weights=str(tmp_path / "missing.weights.h5"))
    other = tmp_path / "resnet.weights.h5"
    _small_model("resnet50").get_layer("backbone").save_weights(other)
    with pytest.raises(PcamError, match="could not load backbone weights"):
        registry.create_model("simple-cnn", weights=str(other))


def test_backbone_from_a_pcam_model_of_another_tile_size(tmp_path):
    """--weights RUN/fold_K/best.keras: transfer, e.g. from PCam's 96 px tiles
    to 128 px images; the backbone is copied, the head starts afresh."""
    source = registry.create_model("cpu-cnn", image_size=32, weights="none", num_classes=2)
    trained = tmp_path / "best.keras"
    source.save(trained)
    model = registry.create_model("cpu-cnn", image_size=48, weights=str(trained), num_classes=6)
    assert model.output_shape == (None, 6)
    pairs = list(zip(source.get_layer("backbone").weights, model.get_layer("backbone").weights))
    assert len(pairs) == len(source.get_layer("backbone").weights) > 20  # BN statistics too
    for expected, got in pairs:
        np.testing.assert_array_equal(expected.numpy(), got.numpy())
    fresh = registry.create_model("cpu-cnn", image_size=48, weights="none")
    assert not np.array_equal(fresh.get_layer("backbone").weights[0].numpy(),
                              model.get_layer("backbone").weights[0].numpy())

    with pytest.raises(PcamError, match="holds a cpu-cnn backbone, not simple-cnn: pass "
                                        "--backbone cpu-cnn"):
        registry.create_model("simple-cnn", weights=str(trained))
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Dense(1)], name="mine")
    plain.save(tmp_path / "mine.keras")
    with pytest.raises(PcamError, match="not a pcam model"):
        registry.create_model("cpu-cnn", weights=str(tmp_path / "mine.keras"))
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(PcamError, match="could not read .*broken.keras as a pcam model"):
        registry.create_model("cpu-cnn", weights=str(tmp_path / "broken.keras"))


@pytest.mark.parametrize("name, tile, weights, expected", [
    ("resnet50", 96, "imagenet", 192),    # PCam tiles, ImageNet weights: upsampled 2x
    ("resnet50", 150, "imagenet", 224),   # capped at the native size
    ("resnet50", 224, "imagenet", 224),
    ("resnet50", 96, "none", 96),         # from random weights: as fed
    ("resnet50", 96, "/some/weights.h5", 96),
    ("simple-cnn", 96, "imagenet", 96),   # no ImageNet weights to match
])
def test_default_image_size_follows_the_recipe(name, tile, weights, expected):
    assert registry.default_image_size(name, tile, weights) == expected


def test_too_small_image_size_is_refused():
    with pytest.raises(PcamError, match="at least 32"):
        registry.create_model("resnet50", image_size=24, weights="none")


def test_augment_layers_act_only_in_training(tmp_path):
    model = registry.create_model("simple-cnn", weights="none",
                                augment=[keras.layers.RandomBrightness(0.5, value_range=(0, 255),
                                                                    seed=1)])
    tiles = _tiles(2).astype(np.float32)
    inference = model(tiles, training=False).numpy()
    # Eager against compiled: the same maths summed in another order (oneDNN);
    # exact equality failed 2 runs in 3.
    np.testing.assert_allclose(model.predict(tiles, verbose=0), inference, rtol=FLOAT32_ORDER,
                               atol=FLOAT32_ORDER)
    model.save(tmp_path / "augmented.keras")
    loaded = keras.models.load_model(tmp_path / "augmented.keras")
    np.testing.assert_allclose(loaded.predict(tiles, verbose=0), inference, atol=1e-6)
    # Last: a training-mode call also moves the BatchNorm statistics.
    assert not np.allclose(model(tiles, training=True).numpy(), inference)


def test_output_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = registry.create_model("simple-cnn", image_size=48, tile_size=TILE, weights="none")
        probabilities = model.predict(_tiles(2), verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("backbone").get_layer("block1_conv").compute_dtype == "float16"
    assert model.output.dtype == "float32" and probabilities.dtype == np.float32
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_a_backbone_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        registry.register_backbone(registry.BACKBONES["simple-cnn"])
    model = registry.create_model("simple-cnn", image_size=32, weights="none")
    assert registry.backbone_of(model) is registry.BACKBONES["simple-cnn"]
