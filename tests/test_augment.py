"""Each augmentation op, eagerly and inside tf.data.map, on real tiles."""
import numpy as np
import pytest
import tensorflow as tf
from conftest import MISSING, PCAM_REAL

from pcam.data import augment
from pcam.settings import AugmentSettings


@pytest.fixture(scope="module")
def tiles():
    """16 real tiles (uint8, 96x96x3) from the shared sample."""
    if not PCAM_REAL.is_dir():
        pytest.skip(MISSING)
    paths = sorted((PCAM_REAL / "valid" / "1").glob("*.jpg"))[:16]
    return tf.stack([tf.io.decode_jpeg(tf.io.read_file(str(p))) for p in paths])


OPS = {
    "dihedral": augment.dihedral(),
    "colour_jitter": augment.colour_jitter(0.1, 0.2, 0.2, 0.04),
    "stain_jitter": augment.stain_jitter(0.05),
    "zoom": augment.zoom(0.15),
    "centre_crop": augment.centre_crop(48),
    "compose": augment.compose([augment.dihedral(), augment.stain_jitter(0.05)]),
}
SEED = tf.constant([7, 11], tf.int64)


def in_dataset(op, images, seed=SEED):
    ds = tf.data.Dataset.from_tensors((images, seed)).map(lambda x, s: op(x, s))
    return next(iter(ds))


@pytest.mark.parametrize("name", OPS)
def test_op_runs_eagerly_and_in_tf_data_alike(tiles, name):
    op = OPS[name]
    eager = op(tiles, SEED)
    mapped = in_dataset(op, tiles)
    np.testing.assert_allclose(np.asarray(eager, np.float32), np.asarray(mapped, np.float32),
                               atol=1e-3)
    size = 48 if name == "centre_crop" else 96
    assert eager.shape == (16, size, size, 3)
    values = np.asarray(eager, np.float32)
    assert values.min() >= 0 and values.max() <= 255
    if name != "centre_crop":  # the only deterministic op
        assert not np.allclose(values, np.asarray(op(tiles, SEED + 1), np.float32))


def views_of(images):
    """The 8 dihedral views of each tile, as bytes, to compare sets."""
    return [{augment.dihedral_view(images[i:i + 1], k).numpy().tobytes() for k in range(8)}
            for i in range(images.shape[0])]


def test_dihedral_views_are_the_8_distinct_group_elements(tiles):
    for views in views_of(tiles):
        assert len(views) == 8
    np.testing.assert_array_equal(augment.dihedral_view(tiles, 0), tiles)


def test_random_dihedral_gives_group_elements_and_all_of_them(tiles):
    allowed = views_of(tiles)
    seen = set()
    for s in range(40):
        out = augment.dihedral()(tiles, tf.constant([s, 1], tf.int64)).numpy()
        for i in range(len(out)):
            assert out[i:i + 1].tobytes() in allowed[i]
            seen.add(sorted(allowed[i]).index(out[i:i + 1].tobytes()))
    assert seen == set(range(8))


def test_dihedral_compiled_with_xla_matches_the_group(tiles):
    op = tf.function(augment.dihedral(), jit_compile=True)
    out = op(tiles, SEED).numpy()
    allowed = views_of(tiles)
    assert all(out[i:i + 1].tobytes() in allowed[i] for i in range(len(out)))


def test_zero_strength_jitter_is_identity(tiles):
    x = np.asarray(tiles, np.float32)
    np.testing.assert_allclose(augment.colour_jitter()(tiles, SEED), x, atol=1e-3)
    np.testing.assert_allclose(augment.stain_jitter(0.0)(tiles, SEED), x, atol=0.05)


def test_stain_jitter_changes_colour_not_structure(tiles):
    out = np.asarray(augment.stain_jitter(0.05)(tiles, SEED), np.float32)
    x = np.asarray(tiles, np.float32)
    assert 0.5 < np.abs(out - x).mean() < 25
    corr = np.corrcoef(out.mean(-1).ravel(), x.mean(-1).ravel())[0, 1]
    assert corr > 0.9


def test_zoom_keeps_the_centre_region():
    # White centre 32x32 on black: for zoom <= 1/3 every crop holds the centre
    # region, so the output's centre pixel stays white whatever the draw.
    tile = np.zeros((64, 96, 96, 3), np.uint8)
    tile[:, 32:64, 32:64] = 255
    out = np.asarray(augment.zoom(0.3)(tf.constant(tile), SEED), np.float32)
    assert out.shape == tile.shape
    assert (out[:, 47:49, 47:49] > 250).all()
    assert not np.allclose(out, tile)


def test_train_ops_follow_the_settings():
    names = [op.__name__ for op in augment.train_ops(AugmentSettings())]
    assert names == ["dihedral", "colour_jitter", "stain_jitter"]   # the defaults
    plain = AugmentSettings(brightness=0, contrast=0, saturation=0, hue=0, stain=0)
    assert [op.__name__ for op in augment.train_ops(plain)] == ["dihedral"]
    names = [op.__name__ for op in augment.train_ops(AugmentSettings(
        stain=0.05, hue=0.04, zoom=0.1, centre_crop=64))]
    assert names == ["centre_crop_64", "dihedral", "zoom", "colour_jitter", "stain_jitter"]
    assert [op.__name__ for op in augment.eval_ops(AugmentSettings(centre_crop=64))] == \
        ["centre_crop_64"]


def test_colour_stain_layer_is_identity_at_inference_and_saves(tiles, tmp_path):
    import keras

    layer = augment.RandomColourStain(brightness=0.1, stain=0.05, seed=3)
    x = tf.cast(tiles, tf.float32)
    np.testing.assert_array_equal(layer(x, training=False), x)
    assert not np.allclose(layer(x, training=True), x)
    model = keras.Sequential([keras.Input((96, 96, 3)), layer])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.layers[0].get_config()["stain"] == 0.05


def test_colour_jitter_moves_into_the_model_only_on_an_accelerator():
    import tensorflow as tf

    from pcam.models.registry import create_model
    from pcam.settings import AugmentSettings
    from pcam.train import distribute

    asked = AugmentSettings(brightness=0.1, stain=0.05)
    assert augment.on_model(asked, accelerator=False) == (asked, [])
    plain = AugmentSettings(brightness=0, contrast=0, saturation=0, hue=0, stain=0)
    assert augment.on_model(plain, accelerator=True) == (plain, [])
    pipeline, layers = augment.on_model(asked, accelerator=True)
    assert pipeline.brightness == pipeline.stain == 0 and pipeline.dihedral
    assert [type(layer) for layer in layers] == [augment.RandomColourStain]
    model = create_model("simple-cnn", image_size=32, weights="none", augment=layers)
    tiles = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.float32)
    inference = model(tiles, training=False).numpy()
    np.testing.assert_allclose(model(tiles, training=False).numpy(), inference, atol=1e-6)
    jittered = model.get_layer("colour_stain")(tiles, training=True).numpy()
    assert np.abs(jittered - tiles).mean() > 0.5   # it jitters when training ...
    assert not distribute.has_accelerator(tf.distribute.get_strategy())  # ... and CPUs keep it
