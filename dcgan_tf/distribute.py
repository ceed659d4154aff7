"""Choosing the tf.distribute strategy, and what each worker of a multi-worker run writes where."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Callable, Iterator

import tensorflow as tf
from absl import logging

from dcgan_tf import startup
from dcgan_tf.config import Config, ConfigError, normalise_jit

TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\' (index 1 on host2)')


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
    if config.strategy == "multi_worker":
        strategy = make_multi_worker_strategy()
    else:
        split_cpu(config.cpu_replicas)
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        name = config.strategy
        if name == "auto":
            name = "mirrored" if len(gpus) > 1 or config.cpu_replicas > 1 else "default"
        if name == "default":
            strategy = tf.distribute.get_strategy()
        else:
            strategy = new_mirrored_strategy([d.name for d in gpus] or [d.name for d in cpus])
    logging.info("%s", startup.describe_strategy(strategy))
    return strategy


def new_mirrored_strategy(devices: list[str]) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy whose collective-op keys cannot clash with an earlier one in this process.

    Every instance starts its collective keys at the class's base (0) and the runtime caches collectives by key,
    so a second run in the same process training another network failed with "Shape mismatch in the collective
    instance". TensorFlow's own tests (strategy_combinations.py) move the base per instance the same way.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    strategy = tf.distribute.MirroredStrategy(devices)
    tf.distribute.MirroredStrategy._collective_key_base += 100_000  # and one built directly later cannot reuse ours
    return strategy


def make_multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (Keras 3's fit() cannot drive it: keras#20585).

    It must be the process's first TensorFlow work: it configures collective ops, which is impossible once the
    runtime has started (even listing devices starts it). It waits until every worker in TF_CONFIG is up.
    """
    check_tf_config(read_tf_config())
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        raise ConfigError(f"--strategy=multi_worker must be set up before any other TensorFlow work in the process "
                          f"({e}); start training with python -m dcgan_tf.train, or call train() before "
                          "running any TensorFlow op") from None


def check_batch_split(config: Config, strategy: tf.distribute.Strategy) -> None:
    """The global batch must split evenly over the replicas."""
    n = strategy.num_replicas_in_sync
    if config.batch_size % n:
        raise ConfigError(f"batch_size={config.batch_size} does not split evenly over {n} replicas; use a "
                          f"multiple of {n} (e.g. --batch_size={max(n, config.batch_size // n * n)})")


def check_jit_compile(config: Config, strategy: tf.distribute.Strategy) -> None:
    """--jit_compile under a MirroredStrategy over several CPU devices fails in XLA (it cannot read one CPU
    device's variables from another): say so first."""
    # Only an explicit request: `auto` already stays off under a mirrored strategy over CPUs (fast_path.choose_jit).
    if normalise_jit(config.jit_compile) != "true" or strategy.num_replicas_in_sync == 1:
        return
    devices = getattr(strategy.extended, "worker_devices", ())
    if isinstance(strategy, tf.distribute.MirroredStrategy) and all("CPU" in d.upper() for d in devices):
        raise ConfigError(
            f"--jit_compile does not work with --strategy=mirrored over {len(devices)} CPU devices (XLA cannot read "
            "one CPU device's variables from another: \"Trying to access resource ... on CPU:1 from CPU:0\"); drop "
            "--jit_compile, or train on one device (--cpu_replicas=0 --strategy=default)")


def read_tf_config() -> dict | None:
    """The TF_CONFIG environment variable parsed, None when unset, ConfigError when it is not JSON."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e}); set it like {TF_CONFIG_EXAMPLE}") from None


def check_tf_config(tf_config: dict | None) -> None:
    """Reject a TF_CONFIG that MultiWorkerMirroredStrategy would misread, before it starts waiting for peers."""
    if tf_config is None:
        logging.warning("--strategy=multi_worker without TF_CONFIG: training as a single worker. Set %s on "
                        "every machine to train on several.", TF_CONFIG_EXAMPLE)
        return
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not any(isinstance(cluster.get(j), list) and cluster.get(j)
                                                for j in ("worker", "chief")):
        raise ConfigError(f"TF_CONFIG needs a \"cluster\" with a list of \"worker\" addresses; set it like "
                          f"{TF_CONFIG_EXAMPLE}")
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int):
        raise ConfigError(f"TF_CONFIG needs a \"task\" naming this machine's job and index in the cluster "
                          f"(got {task!r}); set it like {TF_CONFIG_EXAMPLE}")
    if not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ConfigError(f"TF_CONFIG task index {task['index']} is outside the {len(cluster[task['type']])} "
                          f"{task['type']} address(es) of the cluster; indices count from 0")


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for MultiWorkerMirroredStrategy, which Keras 3 fit() cannot drive (keras#20585, tensorflow#72388)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def needs_custom_loop(strategy: tf.distribute.Strategy) -> bool:
    """Whether training must use custom_loop instead of Keras fit()."""
    return is_multi_worker(strategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always, except on the non-chief workers of a cluster)."""
    return bool(strategy.extended.should_checkpoint)


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in the cluster (0 outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id or 0) if resolver is not None and resolver.task_id is not None else 0


@contextlib.contextmanager
def worker_outputs(config: Config, strategy: tf.distribute.Strategy) -> Iterator[Config]:
    """The config this worker writes with: the run's own on the chief; elsewhere a temporary model_dir, no export.

    Saving a checkpoint is collective under MultiWorkerMirroredStrategy, so every worker writes one; the
    non-chief ones write theirs (and their TensorBoard events and grids) to a temporary folder deleted at the end.
    """
    if is_chief(strategy):
        yield config
        return
    scratch = tempfile.mkdtemp(prefix=f"dcgan-worker{task_id(strategy)}-")
    logging.info("Not the chief: writing this worker's copies of the outputs to %s (deleted at the end).", scratch)
    try:
        yield config.replace(model_dir=scratch, export_dir="")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_workers_agree(strategy: tf.distribute.Strategy, step: int) -> None:
    """Every worker must have restored the same step, which needs a model_dir they all read (shared storage)."""
    if not is_multi_worker(strategy):
        return

    @tf.function
    def gather_steps():
        per_replica = strategy.run(lambda: tf.constant([step], tf.int64))
        return strategy.gather(per_replica, axis=0)

    steps = sorted({int(s) for s in gather_steps().numpy()})
    if len(steps) > 1:
        raise ConfigError(f"the workers restored different steps {steps}: each must read the same --model_dir "
                          "(put it on a filesystem every machine mounts, e.g. NFS)")


def make_replica_averager(strategy: tf.distribute.Strategy, variables: list) -> Callable[[], None]:
    """A function setting every replica's copy of `variables` to their mean over all replicas (and workers).

    Keras 3 creates BatchNorm's moving mean/variance with aggregation NONE, so with --sync_batchnorm=false each
    replica updates its own copy from its own slice of the batch: the copies drift apart, and each worker of
    a multi-worker run would save different ones. Averaging them before a checkpoint (on every worker, as
    saving is collective) makes the saved statistics use the whole global batch and all workers identical.
    """
    floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
    if strategy.num_replicas_in_sync == 1 or not floats:
        return lambda: None

    @tf.function
    def average() -> None:
        copies = strategy.run(lambda: [tf.identity(v.value) for v in floats])  # each replica's own copy
        for variable, local in zip(floats, copies):
            variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None))  # sets every copy

    return average


def wait_for_workers(strategy: tf.distribute.Strategy) -> None:
    """Block until every worker gets here, so none exits while the chief still works (e.g. exports)."""
    if not is_multi_worker(strategy):
        return

    @tf.function
    def barrier():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1)), axis=None)

    barrier()
