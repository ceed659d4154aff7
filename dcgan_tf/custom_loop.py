"""The training loop for MultiWorkerMirroredStrategy, which Keras 3 `fit()` cannot drive (it fails converting
a PerReplica value: keras#20585, tensorflow#72388).

It is `fit()` reduced to what a DCGAN run needs, with nothing of the step copied: each call runs the model's
own `train_step` under `strategy.run` on this worker's shard of the data
(`input_pipeline.make_dataset(input_context=...)`), averages the logs over all replicas, and calls the same
Keras callbacks `fit()` gets from `train.make_callbacks` (TensorBoard scalars, sample grids, checkpoints,
divergence guard, summary, progress bar). Preemption goes through
`tf.distribute.experimental.PreemptionCheckpointHandler`: when any worker gets SIGTERM (or SIGINT) the workers
agree on one step, all save a checkpoint there (the non-chief ones to their temporary folders, since saving is
collective) and leave the loop together.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Iterator

import keras
import tensorflow as tf
from absl import logging

from dcgan_tf import callbacks as callbacks_lib
from dcgan_tf import input_pipeline
from dcgan_tf.config import Config
from dcgan_tf.gan import DCGAN


class Preempted(Exception):
    """Raised by the preemption handler's exit function, after its checkpoint, to leave the loop."""


def distributed_dataset(config: Config, strategy: tf.distribute.Strategy, start_step: int,
                        source: input_pipeline.Source) -> tf.distribute.DistributedDataset:
    """Each worker's own shard of the data from `start_step` on, in per-replica batches."""
    return strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.make_dataset(config, start_step, input_context=context, source=source))


def make_step_function(gan: DCGAN, strategy: tf.distribute.Strategy) -> Callable[[Iterator], dict]:
    """One distributed step: `gan.train_step` on every replica, logs averaged over all replicas."""
    replica_step = gan.train_step
    if gan.jit_compile:  # as fit() does: XLA-compile the per-replica step, not the cross-replica wrapper
        replica_step = tf.function(replica_step, jit_compile=True, reduce_retracing=True)

    @tf.function
    def step(iterator: Iterator) -> dict[str, tf.Tensor]:
        outputs = strategy.run(replica_step, args=(next(iterator),))
        # Each replica's trackers hold its local mean over the same number of examples: their mean is global.
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in outputs.items()}

    return step


def make_preemption_handler(strategy: tf.distribute.Strategy, saver: callbacks_lib.CheckpointSaver,
                            stop: callbacks_lib.StopSignal,
                            work_dir: str) -> tf.distribute.experimental.PreemptionCheckpointHandler:
    """TF's handler, watching our StopSignal, saving through CheckpointSaver and exiting by raising Preempted.

    Checkpoints, and restoring them (skipping unreadable ones), stay with checkpointing.py: the handler gets an
    empty placeholder checkpoint in `work_dir` for its own bookkeeping and our `save_fn`.
    """

    def leave() -> None:
        raise Preempted()

    config = tf.distribute.experimental.TerminationConfig(
        termination_watcher_fn=lambda: stop.received is not None,  # polled every second by a handler thread
        exit_fn=leave,
        save_fn=saver.save_now,
    )
    return tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, tf.train.Checkpoint(), os.path.join(work_dir, "preemption"), config)


def close_handler(handler: tf.distribute.experimental.PreemptionCheckpointHandler) -> None:
    """Stop the handler's watcher threads now (its own cleanup, which otherwise waits for garbage collection)."""
    handler.__del__()


def find_saver(callbacks: list[keras.callbacks.Callback]) -> callbacks_lib.CheckpointSaver:
    """The CheckpointSaver among the run's callbacks."""
    return next(cb for cb in callbacks if isinstance(cb, callbacks_lib.CheckpointSaver))


def train_loop(config: Config, gan: DCGAN, strategy: tf.distribute.Strategy, source: input_pipeline.Source,
               start: int, end: int, callbacks: list[keras.callbacks.Callback],
               stop: callbacks_lib.StopSignal) -> bool:
    """Train from step `start` to `end` under `strategy`; True if preemption stopped it early (checkpoint saved)."""
    iterator = iter(distributed_dataset(config, strategy, start, source))
    step = make_step_function(gan, strategy)
    callback_list = keras.callbacks.CallbackList(callbacks, add_progbar=config.verbose != 0, model=gan,
                                                 verbose=config.verbose, epochs=1, steps=end - start)
    work_dir = tempfile.mkdtemp(prefix="dcgan-preemption-")
    handler = make_preemption_handler(strategy, find_saver(callbacks), stop, work_dir)
    preempted = False
    logs: dict = {}
    try:
        gan.stop_training = False
        gan.reset_metrics()
        callback_list.on_train_begin()
        callback_list.on_epoch_begin(0)
        for batch in range(end - start):
            callback_list.on_train_batch_begin(batch)
            logs = handler.run(step, iterator)
            callback_list.on_train_batch_end(batch, logs)
            if gan.stop_training:
                break
    except Preempted:
        preempted = True
        logging.warning("Preempted (SIGTERM/SIGINT on this or another worker): all workers saved step %d.",
                        int(gan.step.numpy()))
    finally:
        close_handler(handler)
        shutil.rmtree(work_dir, ignore_errors=True)
    callback_list.on_epoch_end(0, logs)
    callback_list.on_train_end(logs)
    return preempted
