"""CoAtNet (pcam.models.coatnet) and the backbones added with it (convnext-tiny, efficientnetv2s).

A narrow CoAtNet (one block per stage, 8 to 32 channels) stands in for
CoAtNet-0 where a test trains or saves; the full CoAtNet-0 is only built
(its parameter count, its sizes). The registry-wide tests in test_models.py
and test_gradcam.py also save, load and explain coatnet-0, convnext-tiny and
efficientnetv2s at 32 px.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import PCAM_REAL, REPO

from pcam.data.images import decode_image
from pcam.errors import PcamError
from pcam.models import freeze, registry
from pcam.models.coatnet import coatnet, relative_position_index
from pcam.models.gradcam import explainer, gradcam
from pcam.settings import ModelSettings, RunSettings
from pcam.train.training import weights_note

NARROW = "coatnet-narrow-test"
NARROW_SHAPE = {"blocks": (1, 1, 1, 1, 1), "channels": (8, 8, 16, 16, 32)}


@pytest.fixture(scope="module")
def narrow():
    """The narrow CoAtNet's registry entry (registered once per process)."""
    if NARROW not in registry.BACKBONES:
        registry.register_backbone(registry.coatnet_backbone(NARROW, **NARROW_SHAPE))
    return registry.BACKBONES[NARROW]


@pytest.fixture(scope="module")
def real_tiles():
    """48 real PCam tiles (valid/, 24 per label, shuffled) and their labels."""
    if not PCAM_REAL.is_dir():
        pytest.skip(f"real PCam tiles not found at {PCAM_REAL}")
    from tests.pcam_tiles_run import valid_tiles

    paths, labels = valid_tiles(per_class=24)
    return np.stack([decode_image(p)[0] for p in paths]), labels.astype(np.float32)


@pytest.fixture(scope="module")
def trained(narrow, real_tiles):
    """A narrow CoAtNet classifier at 96 px (S4: 3x3) after 6 Adam steps on real tiles."""
    keras.utils.set_random_seed(0)
    model = registry.create_model(NARROW, image_size=96, tile_size=96, weights="none",
                                dense_units=16)
    tiles, labels = real_tiles
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    model.fit(tiles, labels, batch_size=16, epochs=2, verbose=0)
    return model


def test_relative_position_index_numbers_every_offset_once():
    index = relative_position_index(3, 2)
    assert index.shape == (6, 6)
    # 5 x 3 offsets; (0, 0) on the diagonal, in the middle of the table.
    assert set(index.ravel()) == set(range(15)) and (np.diag(index) == 7).all()
    # Query (0, 0), key (2, 1): offset (-2, -1) -> row 0; the reverse -> the last row.
    assert index[0, 5] == 0 and index[5, 0] == 14


def test_narrow_coatnet_shapes_and_blocks(narrow):
    backbone = coatnet(input_shape=(64, 64, 3), **NARROW_SHAPE)
    out = backbone(np.zeros((2, 64, 64, 3), np.float32))
    assert out.shape == (2, 2, 2, 32)  # 64 / 32
    blocks = freeze.backbone_blocks(backbone)
    assert [b[0].name for b in blocks] == ["stem_conv1", "block1a_preact_bn",
                                           "block2a_preact_bn", "block3a_attn_norm",
                                           "block4a_attn_norm"]
    assert blocks[-1][-1].name == "top_norm"


def test_coatnet0_size_and_parameters():
    """CoAtNet-0 at 96 and 224 px: 23.49M parameters at 224 (24.26M with a
    1000-class head, the paper says 25M); the two sizes differ only in the
    relative position bias tables, (2H-1)^2 rows per head."""
    at = {size: coatnet(input_shape=(size, size, 3)) for size in (96, 224)}
    assert at[96].output.shape == (None, 3, 3, 768)
    assert at[224].output.shape == (None, 7, 7, 768)
    # S3: 5 blocks of 12 heads on 6x6 / 14x14; S4: 2 blocks of 24 heads on 3x3 / 7x7.
    tables = {96: 5 * 12 * 11 ** 2 + 2 * 24 * 5 ** 2, 224: 5 * 12 * 27 ** 2 + 2 * 24 * 13 ** 2}
    assert at[224].count_params() - at[96].count_params() == tables[224] - tables[96]
    assert at[224].count_params() == 23_485_068
    with_head = at[224].count_params() + 768 * 1000 + 1000
    assert abs(with_head - 25e6) / 25e6 < 0.05
    assert len(freeze.backbone_blocks(at[96])) == 13  # stem + 2 + 3 + 5 + 2


def test_a_size_the_stages_cannot_halve_is_refused():
    with pytest.raises(PcamError) as error:
        registry.create_model("coatnet-0", image_size=100, weights="none")
    message = str(error.value)
    assert "\n" not in message and "100" in message and "multiple of 32" in message
    assert "96 or 128" in message
    with pytest.raises(ValueError, match="multiple of 32"):
        coatnet(input_shape=(48, 48, 3))


def test_coatnet_has_no_imagenet_weights_and_says_so():
    assert not registry.BACKBONES["coatnet-0"].pretrained
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(ModelSettings)}
    # Named, not read from the registry: other test modules register narrow
    # backbones of their own when they are collected.
    for name in ("coatnet-0", "simple-cnn"):
        assert not registry.BACKBONES[name].pretrained
        assert name in helps["weights"] and name in helps["backbone"]
    assert "imagenet means none" in helps["weights"]
    run = RunSettings(run="r", model=ModelSettings(backbone="coatnet-0"))
    assert weights_note(run) == ("note: coatnet-0 has no ImageNet weights in Keras: it starts "
                                 "from random weights (as --weights none); phase 1 (2 epochs) "
                                 "would train the head on a frozen random backbone: "
                                 "--epochs-frozen 0 skips it")
    assert weights_note(dataclasses.replace(run, model=ModelSettings(backbone="coatnet-0",
                                                                     weights="none"))) is None
    assert weights_note(RunSettings(run="r")) is None  # resnet50 has its weights
    # The default still works: "imagenet" is random initialization for it.
    registry.create_model("coatnet-0", image_size=32, weights="imagenet")


def test_saved_model_loads_in_a_fresh_process_with_identical_outputs(trained, real_tiles,
                                                                     tmp_path):
    tiles = real_tiles[0][:8]
    path = tmp_path / "narrow.keras"
    trained.save(path)
    np.save(tmp_path / "tiles.npy", tiles)
    # Only keras and pcam.models.registry (which registers pcam's layers, as every pcam
    # loader imports it): nothing of this process's registry or graph.
    code = ("import sys, keras, numpy as np, pcam.models.registry\n"
            "model = keras.models.load_model(sys.argv[1])\n"
            "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n")
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "tiles.npy"),
                    str(tmp_path / "out.npy")], check=True, cwd=REPO, capture_output=True)
    loaded = np.load(tmp_path / "out.npy")
    expected = trained.predict(tiles, verbose=0)
    assert loaded.shape == (8, 1) and np.ptp(expected) > 0
    np.testing.assert_allclose(loaded, expected, rtol=0, atol=1e-6)


def test_gradcam_on_a_trained_coatnet_is_not_trivial(trained, real_tiles):
    tiles = real_tiles[0][:12]
    explain = explainer(trained)
    assert explain.layer == "top_norm" and explain.map_shape == (3, 3)
    heat, probs = gradcam(explain, tiles, target=1, batch_size=6)
    assert heat.shape == (12, 96, 96) and np.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1
    # Not constant within a tile, and not the same map for every tile. A map of
    # zeros is an answer (no evidence for class 1 in that tile: 1 of 12 here).
    spread = heat.reshape(12, -1).std(axis=1)
    assert (spread > 0.02).sum() >= 9, spread
    assert np.abs(heat - heat.mean(axis=0)).mean() > 0.05
    np.testing.assert_allclose(probs[:, 1], trained.predict(tiles, verbose=0).ravel(), atol=1e-5)


def test_unknown_backbone_lists_the_new_ones():
    with pytest.raises(PcamError) as error:
        registry.create_model("coatnet-1", weights="none")
    for name in ("coatnet-0", "convnext-tiny", "efficientnetv2s"):
        assert name in str(error.value)
