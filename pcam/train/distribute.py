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
        fix_keras_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(_tpu_resolver(required=True))
    raise PcamError(f"unknown strategy {name!r}")


def fix_keras_multi_worker() -> None:
    """Let Keras 3's ``Model.fit`` run under ``MultiWorkerMirroredStrategy``.

    Two reductions in Keras' TensorFlow trainer fail for a multi-worker
    strategy (keras-team/keras#20585, open; Keras 3.15). Each is replaced here
    for that strategy only; every other strategy takes Keras' own path:

    1. Before training, ``fit`` reduces the first distributed batch,
       ``strategy.reduce("MEAN", (x, y))``, only to have a batch of the right
       shapes to build the model with. A tuple of per-replica values cannot
       be reduced across workers ("Attempt to convert a value (PerReplica ...)
       with an unsupported type"). The local replica's batch has those shapes.
    2. Every step reduces its logs with ``strategy.reduce("MEAN", v, axis=0)``,
       and logs are scalars ("Invalid reduction dimension 0 for input with 0
       dimensions"). The first replica's logs are kept instead. They only
       feed the progress bar: the logs that callbacks and histories see are
       read from the metrics at the end of each epoch, summed over every
       worker (a test checks both workers log the same AUC on different data).

    ``tests/test_training.py`` trains a fold with two worker processes.
    """
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_pcam_multi_worker_fix", False):
        return
    keras_reduce = trainer.reduce_per_replica
    multi_worker = trainer._collective_all_reduce_multi_worker

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction != "auto" or not multi_worker(strategy):
            return keras_reduce(values, strategy, reduction)
        return tf.nest.map_structure(lambda v: _local(strategy, v), values)

    keras_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is None or self._distribute_strategy is None \
                or not multi_worker(self._distribute_strategy):
            return keras_build(self, iterator, data_batch)
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: _local(self.distribute_strategy, v), next(batches))
            break
        return keras_build(self, None, data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer._pcam_multi_worker_fix = True


def _local(strategy, value):
    """The first local replica's part of a distributed value (a tensor as it is)."""
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


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


def has_accelerator(strategy: tf.distribute.Strategy) -> bool:
    """Whether the strategy's replicas run on GPUs or TPUs (not the CPU)."""
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy (no scope): whatever TensorFlow places on
        devices = [d.name for d in tf.config.list_logical_devices()
                   if d.device_type in ("GPU", "TPU")]
    return any(tf.DeviceSpec.from_string(d).device_type in ("GPU", "TPU") for d in devices)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return worker(strategy)[1] > 1


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
