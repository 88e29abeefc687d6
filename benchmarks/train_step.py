"""Is the input pipeline ever the bottleneck? Training steps per second fed by
the real pipeline, against the same model fed one constant in-memory batch.

    python benchmarks/train_step.py [--work /tmp/pcam-bench] [--backbone simple-cnn] [--steps 60]

Both runs use the same model, batch size and number of steps, in one process;
the first epoch of each (tracing, loading the store into RAM) is not timed.
Target (issue 3): real pipeline >= 0.95 x constant batch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import kaggle_layout, table


class StepTimer:
    """Seconds of the last epoch, from Keras' own callback hooks."""

    def __init__(self):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                timer.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.seconds = time.perf_counter() - timer.start

        self.callback = Callback()


def steps_per_second(model, dataset, steps: int) -> float:
    timer = StepTimer()
    model.fit(dataset, steps_per_epoch=steps, epochs=2, verbose=0, callbacks=[timer.callback])
    return steps / timer.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pcam-bench"))
    parser.add_argument("--backbone", default="simple-cnn")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    layout = kaggle_layout(args.work)

    import keras
    import tensorflow as tf

    from pcam.data.pipeline import train_dataset
    from pcam.data.store import prepare
    from pcam.models.registry import create_model
    from pcam.settings import DataSettings, InputSettings

    store = prepare(DataSettings(data_dir=str(layout)), splits=("train",), quiet=True)["train"]
    inputs = InputSettings(batch_size=args.batch_size)
    real = train_dataset(store, np.arange(store.n_tiles), inputs, seed=0).repeat()
    images, labels = next(iter(real))
    constant = tf.data.Dataset.from_tensors((images, labels)).repeat()

    rows = []
    results = {}
    for name, data in (("one constant batch in memory (baseline)", constant),
                       ("real pipeline: store in RAM, shuffle, dihedral", real)):
        keras.utils.set_random_seed(0)
        model = create_model(args.backbone, image_size=args.image_size, tile_size=96, weights="none")
        model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy",
                      metrics=[keras.metrics.AUC(name="auc")])
        results[name] = steps_per_second(model, data, args.steps)
    base = results["one constant batch in memory (baseline)"]
    for name, rate in results.items():
        rows.append((name, f"{rate:.2f}", f"{rate * args.batch_size:,.0f}", f"{rate / base:.3f}"))
    table(f"Training steps/s: {args.backbone} at {args.image_size}px, batch {args.batch_size}, "
          f"{args.steps} timed steps", rows, ("fed by", "steps/s", "tiles/s", "x baseline"))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
