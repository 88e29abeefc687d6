"""Strategy, precision and determinism: the same command on a CPU, several
GPUs, several machines or a TPU."""
from __future__ import annotations

import os

import keras
import tensorflow as tf

from pcam.errors import PcamError
from pcam.settings import DeviceSettings


def make_strategy(name: str) -> tf.distribute.Strategy:
    """A tf.distribute strategy by name (see ``DeviceSettings.strategy``)."""
    if name == "auto":
        tpu = _tpu_resolver(required=False)
        if tpu is not None:
            return _tpu_strategy(tpu)
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "mirrored":
        # Without GPUs, mirror over the logical CPU devices (tests split one CPU in two).
        gpus = tf.config.list_logical_devices("GPU")
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise PcamError("--strategy multiworker needs TF_CONFIG describing the cluster "
                            "(see README: several machines)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(_tpu_resolver(required=True))
    raise PcamError(f"unknown strategy {name!r}")


def _tpu_resolver(required: bool):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, tf.errors.OpError, RuntimeError) as err:
        if required:
            raise PcamError(f"--strategy tpu: no TPU found ({str(err).splitlines()[0]})") from None
        return None


def _tpu_strategy(resolver):
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one process that writes the run: the first data worker
    (the chief when the cluster names one, else worker 0)."""
    return worker(strategy)[0] == 0


def worker(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(index, count) of this process among the workers that read data."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    count = sum(len(spec.get(kind, [])) for kind in ("chief", "worker"))
    index = resolver.task_id + (1 if resolver.task_type == "worker" and "chief" in spec else 0)
    return index, count


def configure(device: DeviceSettings, seed: int) -> None:
    """Global precision policy, seeds and op determinism, before any model is built."""
    keras.mixed_precision.set_global_policy(device.precision)
    keras.utils.set_random_seed(seed)
    if device.deterministic:
        tf.config.experimental.enable_op_determinism()
