"""Keras callbacks: TensorBoard scalars, fixed-z sample grids, checkpoints, a closing summary line, and the
fault-tolerance pieces: a divergence guard and a graceful stop on SIGTERM/SIGINT.

Each one counts global steps (the model's step counter at the start of fit plus the batch index), so logs,
grids and checkpoints line up across resumed runs. They drive `fit()` and the custom multi-worker loop alike.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hparams_api

from dcgan_tf import checkpointing
from dcgan_tf import images as images_lib

DIVERGENCE_FIXES = ("Lower --learning_rate, use --mixed_precision=none if it is float16, check the input images "
                    "for NaN/inf, then re-run the same command to resume from the last good checkpoint")


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or weights; the message names the step and the last good checkpoint."""


class StepCallback(keras.callbacks.Callback):
    """Base: tracks the global step and calls `on_step(step, logs)` every `every` steps (never if `every` is None)."""

    def __init__(self, every: int | None = None):
        super().__init__()
        self.every = every
        self.start_step = 0
        self.step = 0

    def on_train_begin(self, logs=None):
        self.start_step = self.step = int(self.model.step.numpy())

    def global_step(self, batch: int) -> int:
        """The global step that batch `batch` of this fit() trains (1-based: the step once it is done)."""
        return self.start_step + batch + 1

    def on_train_batch_end(self, batch, logs=None):
        self.step = self.global_step(batch)
        if self.every and self.step % self.every == 0:
            self.on_step(self.step, logs or {})

    def on_step(self, step: int, logs: dict) -> None:
        """Periodic work at `step`."""


class LogWindow(StepCallback):
    """Every `every` steps and at the last one: the window since the previous log step, handed to each sink.

    The one owner of the logging window: its start (step, time), the last logs, and the model's metrics, which
    restart with each window so that every sink sees each value as the mean over its own window (reset at the
    next step's start, not at the last step, whose values the progress bar still shows).
    """

    def __init__(self, every: int, global_batch: int, sinks: list):
        super().__init__(every)
        self.global_batch = global_batch
        self.sinks = sinks
        self.window_start = 0.0
        self.window_step = 0
        self.last_logs: dict = {}
        self.reset_pending = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.window_start, self.window_step = time.perf_counter(), self.step
        self.last_logs = {}

    def on_train_batch_begin(self, batch, logs=None):
        if self.reset_pending:
            for metric in self.model.metrics:
                metric.reset_state()
            self.reset_pending = False

    def on_train_batch_end(self, batch, logs=None):
        self.last_logs = dict(logs or {})
        super().on_train_batch_end(batch, logs)

    def on_train_end(self, logs=None):
        """Close the partial window: a run shorter than `every`, or stopped by a signal, still gets its values."""
        if self.step > self.window_step and self.last_logs:
            self.on_step(self.step, self.last_logs)

    def on_step(self, step: int, logs: dict) -> None:
        now = time.perf_counter()
        steps_per_sec = (step - self.window_step) / max(now - self.window_start, 1e-9)
        window = Window(step, dict(logs), steps_per_sec, steps_per_sec * self.global_batch)
        for sink in self.sinks:
            sink.write(window)
        self.reset_pending = True
        self.window_start, self.window_step = now, step


@dataclasses.dataclass(frozen=True)
class Window:
    """One closed logging window: its last step, the metrics' means over it, and its speed."""

    step: int
    logs: dict
    steps_per_sec: float
    images_per_sec: float


class ScalarLogger:
    """LogWindow sink: d_loss, g_loss, d_real, d_fake and images_per_sec as TensorBoard scalars."""

    def __init__(self, writer: tf.summary.SummaryWriter):
        self.writer = writer

    def write(self, window: Window) -> None:
        """Write the window's scalars at its last step."""
        with self.writer.as_default(step=window.step):
            for name, value in window.logs.items():
                tf.summary.scalar(name, float(value))
            tf.summary.scalar("images_per_sec", window.images_per_sec)
        self.writer.flush()


def format_duration(seconds: float) -> str:
    """3725.2 -> '1:02:05'."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLog:
    """LogWindow sink: one plain absl log line per window, for logs that are not a terminal.

    The Keras progress bar redraws one line with control codes: in a file it is one unreadable line, and
    `verbose=2` prints only at the end of the single epoch a run is.
    """

    def __init__(self, end_step: int):
        self.end_step = end_step

    def write(self, window: Window) -> None:
        """Log the window's values, speed and the time left to end_step."""
        eta = (self.end_step - window.step) / max(window.steps_per_sec, 1e-9)
        logging.info("%s", format_progress(window.step, self.end_step, window.logs, window.images_per_sec, eta))


def format_progress(step: int, end_step: int, logs: dict, images_per_sec: float, eta_seconds: float) -> str:
    """'step 120/1200 (10%) d_loss 1.2345 g_loss 0.9876 D(x) 0.612 D(G(z)) 0.321 | 850.2 images/s | ETA 0:01:12'."""
    names = (("d_loss", "d_loss", 4), ("g_loss", "g_loss", 4), ("d_real", "D(x)", 3), ("d_fake", "D(G(z))", 3))
    values = " ".join(f"{label} {float(logs[key]):.{digits}f}" for key, label, digits in names if key in logs)
    return (f"step {step}/{end_step} ({100 * step // max(end_step, 1)}%) {values} | {images_per_sec:.1f} images/s"
            f" | ETA {format_duration(eta_seconds)}")


def progress_bar_verbose(verbose: int, stdout_is_terminal: bool) -> int:
    """Keras's `verbose` for fit(): its bar (1) only on a terminal when --verbose=1; 0 otherwise."""
    return 1 if verbose == 1 and stdout_is_terminal else 0


def wants_progress_log(verbose: int, stdout_is_terminal: bool) -> bool:
    """Plain log lines: --verbose=2 always, --verbose=1 when stdout is not a terminal (file, pipe, scheduler)."""
    return verbose == 2 or (verbose == 1 and not stdout_is_terminal)


class SampleGrid(StepCallback):
    """Renders G(fixed z) in inference mode as a TensorBoard image and model_dir/samples/step_N.png.

    With G's EMA in use (--g_ema=true) it renders the EMA too, as step_N_ema.png and the image "samples_ema";
    step_N.png and "samples" are always the raw G.
    """

    def __init__(self, writer: tf.summary.SummaryWriter, every: int, fixed_z: tf.Tensor, sample_dir: str):
        super().__init__(every)
        self.writer = writer
        self.fixed_z = fixed_z
        self.sample_dir = sample_dir
        self.last_written = -1

    def on_step(self, step: int, logs: dict) -> None:
        generators = [("", self.model.generator)]
        if self.model.use_ema:
            generators.append(("_ema", self.model.generator_ema))
        for suffix, generator in generators:
            grid = images_lib.make_grid(images_lib.to_uint8(generator(self.fixed_z, training=False)))
            with self.writer.as_default(step=step):
                tf.summary.image(f"samples{suffix}", grid[np.newaxis])
            images_lib.write_png(os.path.join(self.sample_dir, f"step_{step:08d}{suffix}.png"), grid)
        self.writer.flush()
        self.last_written = step

    def on_train_end(self, logs=None):
        if self.step != self.last_written and self.step > self.start_step:
            self.on_step(self.step, {})


# The HParams table's metric columns: the last value of each of these scalars in the run's train/ folder.
HPARAMS_METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "images_per_sec", "fid")


def hparams_value(value):
    """A config value as the HParams plugin accepts it (bool, int, float or str; None -> '')."""
    return "" if value is None else value


class RunSummary(keras.callbacks.Callback):
    """At the start of training: the config as TensorBoard HParams, and G's and D's layers as text.

    All go to the scalars' own folder (model_dir/train), which makes it the HParams "session" whose metrics are
    its last d_loss, g_loss, D(x), D(G(z)), images/s and FID: `tensorboard --logdir runs/` then shows one row
    per run. (An HParams summary in model_dir itself would lose its metrics when --logdir is the run itself:
    TensorBoard looks them up as "./train".)
    """

    def __init__(self, config_values: dict, writer: tf.summary.SummaryWriter, trial_id: str):
        super().__init__()
        self.config_values = config_values
        self.writer = writer
        self.trial_id = trial_id

    def on_train_begin(self, logs=None):
        step = int(self.model.step.numpy())
        with self.writer.as_default(step=step):
            write_hparams(self.config_values, self.trial_id)
            tf.summary.text("generator", layer_table(self.model.generator))
            tf.summary.text("discriminator", layer_table(self.model.discriminator))
        self.writer.flush()


def flatten_config(config_values: dict) -> dict:
    """Config values one level deep: a dict field (e.g. `resolved`) becomes columns `resolved.KEY`."""
    flat = {}
    for name, value in config_values.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": inner for key, inner in value.items()})
        else:
            flat[name] = value
    return flat


def write_hparams(config_values: dict, trial_id: str) -> None:
    """Write the HParams experiment (its columns) and this run's values to the default summary writer."""
    values = {name: hparams_value(value) for name, value in sorted(flatten_config(config_values).items())}
    hparams_api.hparams_config(hparams=[hparams_api.HParam(name) for name in values],
                               metrics=[hparams_api.Metric(name, display_name=name) for name in HPARAMS_METRICS])
    hparams_api.hparams(values, trial_id=trial_id)


def layer_table(model: keras.Model) -> str:
    """A Markdown table of a network's layers: name, type, output shape and parameter count, with totals."""
    rows = ["| layer | type | output shape | parameters |", "|---|---|---|---:|"]
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        shape = tuple(shape.shape) if shape is not None and hasattr(shape, "shape") else ""
        rows.append(f"| {layer.name} | {type(layer).__name__} | {shape} | {layer.count_params():,} |")
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    rows.append(f"| **total** | | | {total:,} ({trainable:,} trainable) |")
    return "\n".join(rows)


class Profiler(StepCallback):
    """Captures a TensorBoard profile (tf.profiler) of global steps first..last into log_dir/plugins/profile."""

    def __init__(self, log_dir: str, first: int, last: int):
        super().__init__()
        self.log_dir = log_dir
        self.first, self.last = first, last
        self.running = False
        self.done = False

    def on_train_batch_begin(self, batch, logs=None):
        step = self.global_step(batch)
        if not self.running and not self.done and self.first <= step <= self.last:
            logging.info("Profiling steps %d to %d into %s.", step, self.last, self.log_dir)
            tf.profiler.experimental.start(self.log_dir)
            self.running = True

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.running and self.step >= self.last:
            self.finish()

    def on_train_end(self, logs=None):
        if self.running:
            self.finish()

    def finish(self) -> None:
        """Stop the profiler and write the trace."""
        tf.profiler.experimental.stop()
        self.running, self.done = False, True
        logging.info("Profile written to %s/plugins/profile (view it with the tensorboard-plugin-profile "
                     "package installed).", self.log_dir)


class CheckpointSaver(StepCallback):
    """Saves a checkpoint every `every` steps and at the end of training, never one with non-finite weights.

    `before_save` runs first on every worker (e.g. distribute.make_replica_averager for BatchNorm statistics).
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int, before_save=None):
        super().__init__(every)
        self.manager = manager
        self.before_save = before_save
        self.last_saved = -1

    def on_step(self, step: int, logs: dict) -> None:
        if self.before_save is not None:
            self.before_save()
        bad = non_finite_variables(self.model)
        if bad:
            raise DivergenceError(
                f"training diverged by step {step}: {len(bad)} weight tensor(s) are not finite ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}). Not saving them: {checkpointing.describe_latest(self.manager)}. "
                f"{DIVERGENCE_FIXES}.")
        checkpointing.save_checkpoint(self.manager, step)
        self.last_saved = step

    def save_now(self) -> None:
        """Save at the current step unless that step is already saved (used when stopping early)."""
        if self.step != self.last_saved and self.step > self.start_step:
            self.on_step(self.step, {})

    def on_train_end(self, logs=None):
        self.save_now()


def non_finite_variables(gan: keras.Model) -> list[str]:
    """Names of the checkpointed float variables (networks and optimizers) holding a NaN or an infinity."""
    variables = gan.generator.weights + gan.discriminator.weights
    variables += gan.generator_ema.weights if gan.generator_ema is not None else []
    variables += gan.d_optimizer.variables + gan.g_optimizer.variables
    floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]  # Keras 3: dtype is a str
    finite = tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in floats]).numpy()
    return [v.path if hasattr(v, "path") else v.name for v, ok in zip(floats, finite) if not ok]


class DivergenceGuard(StepCallback):
    """Stops training with DivergenceError at the first step whose logged loss is NaN or infinite.

    It must come first in the callback list so that nothing (grids, checkpoints) is written for that step.
    """

    def __init__(self, manager: tf.train.CheckpointManager, names: tuple[str, ...] = ("d_loss", "g_loss")):
        super().__init__(every=1)
        self.manager = manager
        self.names = names

    def on_step(self, step: int, logs: dict) -> None:
        values = {name: float(logs[name]) for name in self.names if name in logs}
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        if bad:
            shown = ", ".join(f"{name}={value}" for name, value in bad.items())
            raise DivergenceError(f"training diverged at step {step}: {shown}. Stopped without saving: "
                                  f"{checkpointing.describe_latest(self.manager)}. {DIVERGENCE_FIXES}.")


class StopSignal:
    """Context manager: the first SIGTERM or SIGINT asks training to stop after the current step.

    Clusters send SIGTERM before preempting a job. The handler only records the signal (the step in flight
    finishes, then a checkpoint is saved); a second signal of the same kind gets the previous behaviour at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Not in the main thread: SIGTERM/SIGINT will not stop training gracefully.")
            return self
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum: int, frame) -> None:
        """Signal handler: remember the first signal; on a repeat restore the old handler and re-deliver."""
        if self.received is None:
            self.received = signal.Signals(signum).name
            return
        signal.signal(signum, self.previous.get(signum) or signal.SIG_DFL)
        signal.raise_signal(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()


class GracefulStop(StepCallback):
    """Ends fit() after the step during which a StopSignal arrived; CheckpointSaver then saves that step."""

    def __init__(self, stop: StopSignal):
        super().__init__(every=1)
        self.stop = stop
        self.stopped_at: int | None = None

    def on_step(self, step: int, logs: dict) -> None:
        if self.stop.received and self.stopped_at is None:
            logging.warning("%s received: stopping after step %d and saving a checkpoint.", self.stop.received, step)
            self.model.stop_training = True
            self.stopped_at = step


class Summary(StepCallback):
    """Logs one closing line: steps trained, wall time, images/sec."""

    def __init__(self, global_batch: int):
        super().__init__()  # no periodic work: it tracks the steps and speaks at the end
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
