"""pcam's class-folder input pipeline against what our users' projects do today.

    python benchmarks/folders.py [--work /tmp/pcam-bench-folders] [--epochs 3]

On ../shared/data/oral-oscc (949 real 224x224 JPEGs, two class folders), at
224 px, batch 32, random flips and 90-degree rotations, each side in its own
process (so each peak memory is its own):

* **Keras** (the baseline): ``keras.utils.image_dataset_from_directory``
  (decodes every JPEG every epoch) + ``RandomFlip("horizontal_and_vertical")``
  and a random 90-degree rotation as Keras layers, mapped over the batches,
  prefetched.
* **pcam**: the class-folder source scanned, ingested once into the tile
  store (parallel decode), then ``pcam.data.pipeline.train_dataset`` (the store in
  RAM, a full shuffle per epoch, the dihedral augmentation compiled with XLA).

Targets (issue 12): from the second epoch on, pcam delivers >= 5x the
images/s; pcam's ingest plus its first epoch take <= 1.5x one Keras epoch.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, table

DATA = REPO.parent / "shared" / "data" / "oral-oscc"
SIZE, BATCH = 224, 32


def epochs_of(ds, epochs: int) -> list[float]:
    """Seconds per full pass over ``ds``."""
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _batch in ds:
            pass
        times.append(time.perf_counter() - start)
    return times


def keras_side(epochs: int) -> dict:
    import keras
    import tensorflow as tf

    class RandomRot90(keras.layers.Layer):
        """A random multiple of 90 degrees per batch (Keras has no such layer;
        users reach for RandomRotation, which interpolates and costs more)."""

        def call(self, images, training=True):
            return tf.image.rot90(images, tf.random.uniform([], 0, 4, tf.int32))

    start = time.perf_counter()
    ds = keras.utils.image_dataset_from_directory(DATA, image_size=(SIZE, SIZE), batch_size=BATCH,
                                                  shuffle=True, seed=0, verbose=False)
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal_and_vertical"), RandomRot90()])
    ds = ds.map(lambda x, y: (augment(x, training=True), y),
                num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    setup = time.perf_counter() - start
    return {"setup": setup, "epochs": epochs_of(ds, epochs)}


def pcam_side(epochs: int, work: Path) -> dict:
    import numpy as np

    from pcam.data.pipeline import train_dataset
    from pcam.data.store import prepare
    from pcam.settings import AugmentSettings, DataSettings, InputSettings

    shutil.rmtree(work / "store", ignore_errors=True)
    start = time.perf_counter()
    store = prepare(DataSettings(data_dir=str(DATA), store_dir=str(work / "store")),
                    splits=("train",), quiet=True)["train"]
    ingest = time.perf_counter() - start
    ds = train_dataset(store, np.arange(store.n_tiles), InputSettings(batch_size=BATCH),
                       AugmentSettings(dihedral=True))
    setup = time.perf_counter() - start - ingest
    return {"ingest": ingest, "setup": setup, "epochs": epochs_of(ds, epochs)}


def child(side: str, epochs: int, work: Path) -> None:
    import tensorflow  # noqa: F401 -- imported before the clocks: measure data, not imports

    result = keras_side(epochs) if side == "keras" else pcam_side(epochs, work)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pcam-bench-folders"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--side", choices=("keras", "pcam"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args.side, args.epochs, args.work)
        return 0
    if not DATA.is_dir():
        sys.exit(f"benchmark needs the oral-oscc class folders at {DATA} (beside the repository "
                 "for tests and benchmarks only); not found")
    args.work.mkdir(parents=True, exist_ok=True)
    n = sum(1 for p in DATA.rglob("*") if p.is_file())
    results = {}
    for side in ("keras", "pcam"):
        done = subprocess.run([sys.executable, __file__, "--side", side, "--epochs",
                               str(args.epochs), "--work", str(args.work)],
                              capture_output=True, text=True, check=True)
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
        results[side] = json.loads(line[len("RESULT "):])
    k, p = results["keras"], results["pcam"]
    k_later = n * (len(k["epochs"]) - 1) / sum(k["epochs"][1:])
    p_later = n * (len(p["epochs"]) - 1) / sum(p["epochs"][1:])
    first = p["ingest"] + p["setup"] + p["epochs"][0]
    rows = [
        ("Keras image_dataset_from_directory + layers: epoch 1", f"{n / k['epochs'][0]:,.0f}",
         f"{k['epochs'][0]:.1f}", "1.00", f"{k['peak_rss_gib']:.2f}"),
        ("Keras: later epochs", f"{k_later:,.0f}", f"{sum(k['epochs'][1:]) / (len(k['epochs']) - 1):.1f}",
         "1.00", ""),
        ("pcam: ingest into the store (once)", f"{n / p['ingest']:,.0f}", f"{p['ingest']:.1f}",
         "", ""),
        ("pcam: ingest + load + epoch 1", f"{n / first:,.0f}", f"{first:.1f}",
         f"{first / k['epochs'][0]:.2f}x the time (target <= 1.5)", f"{p['peak_rss_gib']:.2f}"),
        ("pcam: later epochs", f"{p_later:,.0f}", f"{sum(p['epochs'][1:]) / (len(p['epochs']) - 1):.2f}",
         f"{p_later / k_later:.1f}x the images/s (target >= 5)", ""),
    ]
    table(f"oral-oscc, {n} JPEGs at {SIZE} px, batch {BATCH}, flips + 90-degree rotations",
          rows, ("pipeline", "images/s", "seconds", "vs Keras", "peak RSS GiB"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
