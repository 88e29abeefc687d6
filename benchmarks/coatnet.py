"""CoAtNet-0 against ResNet50: parameters and training steps per second at 96 and 224 px.

    python benchmarks/coatnet.py [--sizes 96,224] [--steps 4] [--batch-size 32]

Both backbones from random weights (``weights=None``: CoAtNet has no ImageNet
weights), the full pcam model (resize inside the model to the size, the
backbone's preprocessing, head), trained with Adam on one batch of real PCam
tiles (96 px, resized by the model) kept in memory, so that only the model is
timed. Each model's first epoch (tracing, compiling) is not timed. All in
one process; the ratio to ResNet50 at the same size is the figure to read.

Measured 2026-12-02 on the shared 2-core CPU (load average 7 to 11: the
absolute rates are noise, the ratios are not), defaults: CoAtNet-0 23.44M
backbone parameters at 96 px, 23.49M at 224 (ResNet50 23.59M); training
0.35x ResNet50's steps/s at 96 px (0.160 against 0.452) and 0.36x at 224
(0.012 against 0.033). Similar FLOPs (4.2 G against 4.1 G at 224 in the
paper), but GELU, depthwise convolutions and LayerNorm are slow on CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from common import require_real_tiles, table
from train_step import steps_per_second

BACKBONES = ("resnet50", "coatnet-0")


def real_batch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real train tiles, half of each label, and their labels."""
    from pcam.data.images import decode_image

    root = require_real_tiles() / "train"
    tiles, labels = [], []
    for label in (0, 1):
        for path in sorted((root / str(label)).iterdir())[:n // 2]:
            tiles.append(decode_image(path)[0])
            labels.append(label)
    return np.stack(tiles), np.asarray(labels, np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="96,224", help="image sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import keras
    import tensorflow as tf

    from pcam.models.registry import create_model

    images, labels = real_batch(args.batch_size)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    rows = []
    for size in sizes:
        rates = {}
        for name in BACKBONES:
            keras.utils.set_random_seed(0)
            model = create_model(name, image_size=size, tile_size=images.shape[1], weights="none")
            model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
            rates[name] = steps_per_second(model, data, args.steps)
            params = model.get_layer("backbone").count_params()
            rows.append((name, size, f"{params / 1e6:.2f}M", f"{rates[name]:.3f}",
                         f"{rates[name] * args.batch_size:.1f}",
                         f"{rates[name] / rates[BACKBONES[0]]:.2f}"))
            print(f"{name} at {size} px: {rates[name]:.3f} steps/s", flush=True)
            del model
            keras.backend.clear_session()
    table(f"Training from random weights, batch {args.batch_size} of real 96 px tiles resized "
          f"in the model, {args.steps} timed steps after one untimed epoch", rows,
          ("backbone", "size", "backbone params", "steps/s", "tiles/s", "x resnet50"))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
