"""Grad-CAM: a known answer on a trained model, and every backbone of the registry."""
import keras
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import BOTTOM_LEFT, TOP_RIGHT, inside, mark

from pcam.errors import PcamError
from pcam.metrics import auc
from pcam.models import freeze, registry
from pcam.models.gradcam import explainer, gradcam


def test_gradcam_peak_lies_on_the_only_signal_and_follows_it(marked_run):
    from pcam.models.saved import load_fold_model

    settings, layout, originals = marked_run
    fold = settings.run_dir / "fold_0"
    oof = pd.read_csv(fold / "oof.csv", dtype={"id": str})
    learnt = auc(oof["label"], oof["prob"])
    assert learnt > 0.95, f"the model did not learn the mark (validation AUC {learnt:.3f})"
    explain = explainer(load_fold_model(fold / "best.keras"))
    marked = oof.loc[oof["label"] == 1, "id"].tolist()[:40]

    tiles = np.stack([tifffile.imread(layout / "train" / f"{i}.tif") for i in marked])
    heat, _ = gradcam(explain, tiles, target=1)
    assert heat.shape == (len(marked), 96, 96) and heat.min() >= 0 and heat.max() <= 1
    assert on_the_mark(heat, TOP_RIGHT) >= 0.9

    # The same real tiles with the mark moved: still found (they outrank the
    # unmarked originals), and the peak moves with it.
    plain = np.stack([originals[i] for i in marked])
    heat, moved_probs = gradcam(explain, np.stack([mark(t, BOTTOM_LEFT) for t in plain]), target=1)
    _, plain_probs = gradcam(explain, plain, target=1)
    assert auc([1] * len(marked) + [0] * len(marked),
               np.concatenate([moved_probs, plain_probs])[:, 1]) > 0.95
    assert on_the_mark(heat, BOTTOM_LEFT) >= 0.9


def on_the_mark(heat: np.ndarray, corner) -> float:
    """Fraction of heat maps whose peak lies inside the mark at ``corner``."""
    peaks = [np.unravel_index(np.argmax(h), h.shape) for h in heat]
    return float(np.mean([inside(r, c, corner) for r, c in peaks]))


@pytest.fixture(scope="module")
def small_models():
    """Every registered backbone at its smallest input size, random weights."""
    return {name: registry.create_model(name, image_size=max(32, spec.min_size), tile_size=96, weights="none",
                                      dense_units=16)
            for name, spec in registry.BACKBONES.items()}


# The blocks of --unfreeze per backbone (freeze.backbone_blocks), stem included.
BLOCKS = {"resnet50": 17, "resnet50v2": 17, "densenet121": 59, "efficientnetv2b0": 22,
          "efficientnetv2s": 41, "convnext-tiny": 19, "simple-cnn": 4, "coatnet-0": 13}


@pytest.mark.parametrize("name", list(registry.BACKBONES))
def test_every_backbone_explains_with_its_last_conv_layer(small_models, name):
    model = small_models[name]
    if name in BLOCKS:  # here because this test builds every backbone once
        assert len(freeze.backbone_blocks(model.get_layer("backbone"))) == BLOCKS[name]
    tiles = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3)).astype(np.uint8)
    explain = explainer(model)
    assert explain.layer == registry.BACKBONES[name].last_conv_layer
    heat, probs = gradcam(explain, tiles, target=None, batch_size=2)
    assert heat.shape == (3, 96, 96) and np.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1
    np.testing.assert_allclose(probs[:, 1], model.predict(tiles, verbose=0).ravel(), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)  # (N, K) for two classes too


def test_a_keras_cnn_from_elsewhere_is_explained_by_its_last_feature_map():
    model = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(8, 3, strides=2, activation="relu",
                                                  name="conv_a"),
                              keras.layers.Conv2D(8, 3, strides=2, activation="relu",
                                                  name="conv_b"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    explain = explainer(model)
    assert explain.layer == "conv_b" and explain.map_shape == (23, 23)
    tiles = np.random.default_rng(1).integers(0, 256, (2, 96, 96, 3)).astype(np.uint8)
    heat, probs = gradcam(explain, tiles, target=1)
    assert heat.shape == (2, 96, 96)
    np.testing.assert_allclose(probs[:, 1], model.predict(tiles, verbose=0).ravel(), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)  # (N, K) for two classes too


def test_a_model_that_is_not_a_classifier_is_refused():
    model = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="relu")])
    with pytest.raises(PcamError, match="one sigmoid unit or a softmax"):
        explainer(model)
    flat = keras.Sequential([keras.Input((12,)), keras.layers.Dense(1, activation="sigmoid")])
    with pytest.raises(PcamError, match="feature map"):
        explainer(flat)


def test_a_k_class_model_explains_the_class_asked_for():
    """Softmax over 4 classes: the probabilities are the model's, a target
    per tile is honoured, and out-of-range targets are refused."""
    model = registry.create_model("simple-cnn", num_classes=4, image_size=32, weights="none",
                                dense_units=8)
    tiles = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    explain = explainer(model)
    heat, probs = gradcam(explain, tiles, target=np.array([0, 1, 2, 3, 0]))
    assert heat.shape == (5, 32, 32) and probs.shape == (5, 4)
    np.testing.assert_allclose(probs, model.predict(tiles, verbose=0), atol=1e-5)
    assert heat.min() >= 0 and heat.max() <= 1
    one, _ = gradcam(explain, tiles[:1], target=1)
    other, _ = gradcam(explain, tiles[:1], target=2)
    assert not np.allclose(one, other)  # another class, other evidence
    with pytest.raises(PcamError, match="classes 0 to 3"):
        gradcam(explain, tiles, target=4)


@pytest.mark.parametrize("classes", [2, 4])
def test_the_traced_step_equals_the_eager_one_and_is_traced_once(classes):
    """The app explains one upload at a time: the traced step gives the eager
    numbers, for the predicted class and for a class asked for, and is traced
    once for every batch size."""
    keras.utils.set_random_seed(3)
    model = registry.create_model("simple-cnn", num_classes=classes, image_size=32,
                                weights="none", dense_units=8)
    tiles = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    explain = explainer(model)
    for target in (None, 1, np.array([0, 1, 1, 0, 1])):
        eager = gradcam(explain, tiles, target, batch_size=2, compiled=False)
        traced = gradcam(explain, tiles, target, batch_size=2)
        assert eager[0].max() > 0  # maps with something in them to compare
        np.testing.assert_allclose(traced[0], eager[0], atol=1e-5)
        np.testing.assert_allclose(traced[1], eager[1], atol=1e-5)
    for n in (1, 3):
        gradcam(explain, tiles[:n], 1)
    assert list(explain.graphs) == [((32, 32, 3), "uint8")]
    assert explain.graphs[((32, 32, 3), "uint8")].experimental_get_tracing_count() == 1
