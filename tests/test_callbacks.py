"""The callbacks' step bookkeeping, driven by hand: the logging window and its sinks, the profiler's steps."""

import keras
import pytest
import tensorflow as tf
from absl import logging

from dcgan_tf import callbacks as callbacks_lib


class FakeModel:
    """What the callbacks read of a DCGAN: its step counter and its metrics."""

    def __init__(self, step: int = 0):
        self.step = tf.Variable(step, dtype=tf.int64)
        self.metrics = [keras.metrics.Mean(name="d_loss")]


class Collect:
    """A LogWindow sink that keeps what it is given."""

    def __init__(self):
        self.windows: list[callbacks_lib.Window] = []

    def write(self, window: callbacks_lib.Window) -> None:
        self.windows.append(window)


def drive(callback: keras.callbacks.Callback, model: FakeModel, values: list[float]) -> None:
    """fit()'s calls for one epoch of len(values) steps, the metric seeing one value per step."""
    callback.set_model(model)
    callback.on_train_begin()
    for batch, value in enumerate(values):
        callback.on_train_batch_begin(batch)
        model.metrics[0].update_state(value)
        callback.on_train_batch_end(batch, {"d_loss": model.metrics[0].result()})
    callback.on_train_end()


def test_every_sink_gets_each_windows_own_mean_and_the_partial_last_window():
    sink = Collect()
    drive(callbacks_lib.LogWindow(every=2, global_batch=8, sinks=[sink]), FakeModel(step=10), [1, 3, 5, 7, 9])
    # Steps 11-12, 13-14, then the partial window of step 15: the means of their own values only.
    assert [(w.step, float(w.logs["d_loss"])) for w in sink.windows] == [(12, 2.0), (14, 6.0), (15, 9.0)]
    assert all(w.images_per_sec == pytest.approx(8 * w.steps_per_sec) for w in sink.windows)


def test_progress_lines_are_window_means_without_the_scalar_logger(monkeypatch):
    lines = []
    monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
    drive(callbacks_lib.LogWindow(every=2, global_batch=8, sinks=[callbacks_lib.ProgressLog(end_step=4)]),
          FakeModel(), [1, 3, 5, 7])
    assert [line.split(" | ")[0] for line in lines] == ["step 2/4 (50%) d_loss 2.0000", "step 4/4 (100%) d_loss 6.0000"]


def test_summary_has_no_periodic_work_and_counts_the_steps_trained():
    summary = callbacks_lib.Summary(global_batch=8)
    summary.on_step = lambda step, logs: pytest.fail("Summary has no periodic work")
    drive(summary, FakeModel(step=3), [1.0] * 5)
    assert (summary.result["start_step"], summary.result["end_step"]) == (3, 8)


def test_profiler_captures_the_global_steps_asked_for_in_a_resumed_run(monkeypatch):
    events = []
    model = FakeModel(step=10)
    monkeypatch.setattr(tf.profiler.experimental, "start",
                        lambda log_dir: events.append(("start", int(model.step.numpy()))))
    monkeypatch.setattr(tf.profiler.experimental, "stop", lambda: events.append(("stop", int(model.step.numpy()))))
    profiler = callbacks_lib.Profiler("unused", first=12, last=13)
    profiler.set_model(model)
    profiler.on_train_begin()
    for batch in range(5):  # global steps 11..15; the counter says how many are done when the profiler acts
        profiler.on_train_batch_begin(batch)
        model.step.assign_add(1)
        profiler.on_train_batch_end(batch)
    profiler.on_train_end()
    assert events == [("start", 11), ("stop", 13)]  # before step 12 runs, after step 13 is done
