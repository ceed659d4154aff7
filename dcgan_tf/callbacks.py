"""Keras callbacks: TensorBoard scalars, fixed-z sample grids, checkpoints, a closing summary line.

Each one counts global steps (the model's step counter at the start of fit plus the batch index), so logs,
grids and checkpoints line up across resumed runs.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dcgan_tf import images as images_lib


class StepCallback(keras.callbacks.Callback):
    """Base: tracks the global step and calls `on_step(step, logs)` every `every` steps."""

    def __init__(self, every: int):
        super().__init__()
        self.every = every
        self.start_step = 0
        self.step = 0

    def on_train_begin(self, logs=None):
        self.start_step = self.step = int(self.model.step.numpy())

    def on_train_batch_end(self, batch, logs=None):
        self.step = self.start_step + batch + 1
        if self.step % self.every == 0:
            self.on_step(self.step, logs or {})

    def on_step(self, step: int, logs: dict) -> None:
        """Periodic work at `step`."""


class ScalarLogger(StepCallback):
    """Writes d_loss, g_loss, d_real, d_fake and images_per_sec; the trackers then restart their window."""

    def __init__(self, writer: tf.summary.SummaryWriter, every: int, global_batch: int):
        super().__init__(every)
        self.writer = writer
        self.global_batch = global_batch
        self.window_start = 0.0
        self.window_step = 0
        self.reset_pending = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.window_start, self.window_step = time.perf_counter(), self.step

    def on_step(self, step: int, logs: dict) -> None:
        now = time.perf_counter()
        rate = (step - self.window_step) * self.global_batch / max(now - self.window_start, 1e-9)
        with self.writer.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(name, float(value))
            tf.summary.scalar("images_per_sec", rate)
        self.writer.flush()
        self.reset_pending = True
        self.window_start, self.window_step = now, step

    def on_train_batch_begin(self, batch, logs=None):
        if self.reset_pending:  # so each logged value is the mean over its own window (not at the last step,
            for metric in self.model.metrics:  # whose values the progress bar still shows)
                metric.reset_state()
            self.reset_pending = False


class SampleGrid(StepCallback):
    """Renders G(fixed z) in inference mode as a TensorBoard image and model_dir/samples/step_N.png."""

    def __init__(self, writer: tf.summary.SummaryWriter, every: int, fixed_z: tf.Tensor, sample_dir: str):
        super().__init__(every)
        self.writer = writer
        self.fixed_z = fixed_z
        self.sample_dir = sample_dir
        self.last_written = -1

    def on_step(self, step: int, logs: dict) -> None:
        grid = images_lib.make_grid(images_lib.to_uint8(self.model.generator(self.fixed_z, training=False)))
        with self.writer.as_default(step=step):
            tf.summary.image("samples", grid[np.newaxis])
        self.writer.flush()
        images_lib.write_png(os.path.join(self.sample_dir, f"step_{step:08d}.png"), grid)
        self.last_written = step

    def on_train_end(self, logs=None):
        if self.step != self.last_written and self.step > self.start_step:
            self.on_step(self.step, {})


class CheckpointSaver(StepCallback):
    """Saves a checkpoint every `every` steps and at the end of training."""

    def __init__(self, manager: tf.train.CheckpointManager, every: int):
        super().__init__(every)
        self.manager = manager
        self.last_saved = -1

    def on_step(self, step: int, logs: dict) -> None:
        self.manager.save(checkpoint_number=step)
        self.last_saved = step

    def on_train_end(self, logs=None):
        if self.step != self.last_saved and self.step > self.start_step:
            self.on_step(self.step, {})


class Summary(StepCallback):
    """Logs one closing line: steps trained, wall time, images/sec."""

    def __init__(self, global_batch: int):
        super().__init__(every=2**62)
        self.global_batch = global_batch
        self.began = 0.0
        self.result: dict[str, float] = {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.began = time.perf_counter()

    def on_train_end(self, logs=None):
        seconds = time.perf_counter() - self.began
        steps = self.step - self.start_step
        self.result = {"start_step": self.start_step, "end_step": self.step, "seconds": seconds,
                       "images_per_sec": steps * self.global_batch / max(seconds, 1e-9)}
        logging.info("Trained steps %d -> %d in %.1f s (%.1f images/sec).", self.start_step, self.step,
                     seconds, self.result["images_per_sec"])
