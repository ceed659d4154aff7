"""Choosing the tf.distribute strategy."""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from dcgan_tf.config import Config, ConfigError


def split_cpu(num_devices: int) -> None:
    """Split the CPU into `num_devices` logical devices (must run before TensorFlow touches a device)."""
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
    except RuntimeError as e:
        raise ConfigError(f"cpu_replicas={num_devices}: the CPU was already initialised with "
                          f"{len(current or [1])} device(s); set it before any TensorFlow work ({e})") from None


def make_strategy(config: Config) -> tf.distribute.Strategy:
    """The strategy named by config.strategy ('auto': mirrored over >1 GPUs or split CPUs, else default)."""
    split_cpu(config.cpu_replicas)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    name = config.strategy
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or config.cpu_replicas > 1 else "default"
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in cpus]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:  # multi_worker: TF_CONFIG names the cluster; fit() cannot drive it (PITFALLS 7)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    logging.info("Strategy %s with %d replica(s).", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def check_batch_split(config: Config, strategy: tf.distribute.Strategy) -> None:
    """The global batch must split evenly over the replicas."""
    n = strategy.num_replicas_in_sync
    if config.batch_size % n:
        raise ConfigError(f"batch_size={config.batch_size} does not split evenly over {n} replicas; use a "
                          f"multiple of {n} (e.g. --batch_size={max(n, config.batch_size // n * n)})")
