"""Where training runs: the tf.distribute strategy a config asks for (one device, the
GPUs or logical CPUs of this machine, or a multi-worker cluster from TF_CONFIG), and
whether XLA compiles the step.

Example:
    >>> make_strategy({"strategy": "none", "logical_cpus": 0}).num_replicas_in_sync
    1
"""

from __future__ import annotations

import os

from keras_hashing.errors import ConfigError
from keras_hashing.models.devices import accelerator_visible


def make_strategy(cfg: dict):
    """The tf.distribute strategy of ``cfg["strategy"]`` (after splitting the CPU into
    ``cfg["logical_cpus"]`` devices, which must happen before TensorFlow starts).

    auto: MirroredStrategy when more than one GPU (or logical CPU) is visible, else the
    default; mirrored: over the GPUs, or the logical CPUs when there are none;
    multiworker: MultiWorkerMirroredStrategy over the TF_CONFIG cluster, trained by
    ``custom_loop.fit_in_custom_loop``.
    """
    import tensorflow as tf

    kind = cfg["strategy"]
    if kind == "multiworker":
        check_tf_config()
        # The cluster comes from TF_CONFIG (without it: one local worker). Keras' fit
        # does not run under this strategy; training.fit uses custom_loop instead.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cfg["logical_cpus"]:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cfg["logical_cpus"])
        except RuntimeError:  # already initialised in this process: keep what it has
            pass
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    devices = [d.name for d in gpus] or ([d.name for d in cpus] if len(cpus) > 1 else None)
    if kind == "mirrored" or (kind == "auto" and devices and len(devices) > 1):
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def check_tf_config() -> None:
    """Raise ConfigError unless TF_CONFIG (if set) describes a cluster and this task."""
    import json

    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return
    try:
        tf_config = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e})") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not (isinstance(cluster, dict) and all(
            isinstance(v, list) and all(isinstance(a, str) for a in v)
            for v in cluster.values())):
        raise ConfigError('TF_CONFIG needs "cluster": {"worker": ["host:port", ...]}')
    if not (isinstance(task, dict) and task.get("type") in cluster and
            isinstance(task.get("index"), int) and not isinstance(task["index"], bool) and
            0 <= task["index"] < len(cluster[task["type"]])):
        raise ConfigError('TF_CONFIG needs "task": {"type": "worker", "index": I} naming one '
                          "of its cluster's tasks")


def jit_compile_default():
    """XLA off on CPU, Keras' "auto" where a GPU is visible (``models.devices``)."""
    return "auto" if accelerator_visible() else False
