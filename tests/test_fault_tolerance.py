"""Preemption and crashes: SIGTERM saves and exits 0, SIGKILL loses at most checkpoint_every steps, damaged
checkpoints are skipped, NaN stops training without touching the last good checkpoint, the custom loop = fit."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf import callbacks, checkpointing, distribute, input_pipeline, train
from dcgan_tf.gan import build_gan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ["--dataset=synthetic", "--image_size=16", "--ngf=8", "--ndf=8", "--nz=16", "--batch_size=8",
              "--num_samples=4", "--log_every=1000", "--verbose=0"]


def checkpoint_steps(model_dir):
    """Steps of the checkpoints the index lists, oldest first."""
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), os.path.join(model_dir, "checkpoints"), 100,
                                         checkpoint_name="ckpt")
    return [int(path.rsplit("-", 1)[1]) for path in manager.checkpoints]


def leftovers(model_dir):
    """Files an interrupted write would leave: temporaries that were never renamed into place."""
    found = []
    for root, dirs, files in os.walk(model_dir):
        found += [os.path.join(root, n) for n in dirs + files if re.search(r"_temp|\.tmp|tempstate", n)]
    return found


def start_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, "-m", "dcgan_tf.train", *TINY_FLAGS, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, process, timeout=300):
    """Wait until `path` exists (training got that far) while the process is alive."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            raise AssertionError(f"training exited early ({process.returncode}): {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


def last_grid_step(model_dir):
    """The newest sample grid's step (one grid per step here: how far training got)."""
    return max(int(name[5:13]) for name in os.listdir(os.path.join(model_dir, "samples"))
               if re.fullmatch(r"step_\d{8}\.png", name))


@pytest.mark.slow
def test_sigkill_loses_at_most_checkpoint_every_steps_and_sigterm_none(tmp_path):
    model_dir, every = str(tmp_path / "run"), 3
    # A grid every step marks progress (and gives the kill more writes to interrupt).
    command = [f"--model_dir={model_dir}", "--train_steps=100000", "--sample_every=1", f"--checkpoint_every={every}"]
    process = start_cli(*command)
    wait_for(os.path.join(model_dir, "samples", "step_00000007.png"), process)
    process.kill()
    process.communicate(timeout=60)
    killed_after = last_grid_step(model_dir)

    # The same command again resumes from the newest checkpoint...
    process = start_cli(*command)
    wait_for(os.path.join(model_dir, "samples", f"step_{killed_after + 2:08d}.png"), process)
    # ... and SIGTERM stops it after the current step, saved there, with exit status 0.
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    resumed = int(re.search(r"from step (\d+) to 100000", stderr).group(1))
    lost = killed_after - resumed
    print(f"SIGKILL after step {killed_after}: resumed from step {resumed}, {lost} step(s) lost "
          f"(checkpoint_every={every})")
    assert 0 <= lost <= every and resumed % every == 0
    stopped = int(re.search(r"SIGTERM received: stopping after step (\d+)", stderr).group(1))
    assert f"Stopped at step {stopped} of 100000 (SIGTERM)" in stderr and "Re-run the same command" in stderr
    assert f"Trained steps {resumed} -> {stopped}" in stderr and checkpoint_steps(model_dir)[-1] == stopped
    print(f"SIGTERM after step {stopped}: checkpoint at step {stopped}, 0 steps lost")
    assert not leftovers(model_dir), leftovers(model_dir)


def test_truncated_newest_checkpoint_and_leftovers_are_skipped(tiny_config, caplog):
    train.train(tiny_config)  # checkpoints at steps 2 and 4
    ckpt_dir = os.path.join(tiny_config.model_dir, "checkpoints")
    data = os.path.join(ckpt_dir, "ckpt-4.data-00000-of-00001")
    with open(data, "rb") as f:
        content = f.read()
    with open(data, "wb") as f:  # a crashed disk kept only half of the newest checkpoint
        f.write(content[:len(content) // 2])
    # What a save killed half-way leaves: shards not yet merged, an unlisted checkpoint, the index's temporary.
    os.makedirs(os.path.join(ckpt_dir, "ckpt-6_temp"))
    open(os.path.join(ckpt_dir, "ckpt-6_temp", "part-00000-of-00001.data-00000-of-00001.tempstate1"), "w").close()
    open(os.path.join(ckpt_dir, "ckpt-6.index"), "w").close()
    open(os.path.join(ckpt_dir, "checkpoint.tmp0123abcd"), "w").close()
    open(os.path.join(tiny_config.model_dir, "config.json.tmp-12345"), "w").close()
    caplog.set_level("INFO", logger="absl")
    gan = train.train(tiny_config.replace(train_steps=5))
    assert "Skipping unreadable checkpoint" in caplog.text and "ckpt-4" in caplog.text
    assert "Training " + tiny_config.model_dir + " from step 2 to 5" in caplog.text
    assert int(gan.step.numpy()) == 5 and checkpoint_steps(tiny_config.model_dir) == [2, 4, 5]
    assert not leftovers(tiny_config.model_dir)


def with_nan_batch(make_dataset, at_index):
    """make_dataset whose batch number `at_index` (0-based, counted from step 0) is all NaN."""

    def patched(config, start_step=0, **kwargs):
        dataset = make_dataset(config, start_step, **kwargs)
        return dataset.enumerate(start_step).map(
            lambda i, batch: tf.where(i == at_index, tf.fill(tf.shape(batch), float("nan")), batch))

    return patched


def test_nan_batch_stops_at_its_step_and_keeps_the_last_good_checkpoint(tiny_config, monkeypatch):
    monkeypatch.setattr(input_pipeline, "make_dataset", with_nan_batch(input_pipeline.make_dataset, 5))
    config = tiny_config.replace(train_steps=10)
    with pytest.raises(callbacks.DivergenceError,
                       match=r"diverged at step 6: d_loss=nan.*ckpt-4 is intact and stays the latest.*--learning_rate"):
        train.train(config)
    assert checkpoint_steps(config.model_dir) == [2, 4]
    _, gan = checkpointing.load_run(config.model_dir)
    assert int(gan.step.numpy()) == 4
    assert all(np.isfinite(v.numpy()).all() for v in gan.generator.weights + gan.discriminator.weights)
    assert sorted(os.listdir(os.path.join(config.model_dir, "samples"))) == [
        "step_00000002.png", "step_00000002_ema.png", "step_00000004.png", "step_00000004_ema.png"]  # raw G, EMA


def test_non_finite_weights_are_never_checkpointed(tiny_config, tmp_path):
    gan = build_gan(tiny_config)
    manager = checkpointing.make_manager(gan, str(tmp_path), 5)
    saver = callbacks.CheckpointSaver(manager, every=1)
    saver.set_model(gan)
    saver.on_step(1, {})
    gan.generator.weights[0].assign(tf.fill(gan.generator.weights[0].shape, float("inf")))
    with pytest.raises(callbacks.DivergenceError,
                       match=r"by step 2: 1 weight tensor.*ckpt-1 is intact and stays the latest"):
        saver.on_step(2, {})
    assert manager.latest_checkpoint.endswith("ckpt-1") and len(manager.checkpoints) == 1


@pytest.fixture
def sigint_handler():
    """Set SIGINT's handler for a test, whatever the process inherited, and put the inherited one back after.

    A shell starts background jobs (`pytest &`, nohup, many schedulers) with SIGINT ignored, so a test of Ctrl-C
    behaviour sets the handler it relies on instead of assuming Python's default.
    """
    inherited = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, inherited)


def test_stop_signal_asks_once_then_acts_and_restores_handlers(sigint_handler):
    sigint_handler(signal.default_int_handler)  # Python's own: Ctrl-C raises KeyboardInterrupt
    before = signal.getsignal(signal.SIGINT)
    with callbacks.StopSignal() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C gets the usual behaviour at once
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_stop_signal_in_a_background_job_keeps_sigint_ignored_after_the_first(sigint_handler):
    sigint_handler(signal.SIG_IGN)  # as `cmd &` starts a job: the second SIGINT gets that behaviour, ignored
    with callbacks.StopSignal() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.received == "SIGINT"
        signal.raise_signal(signal.SIGINT)  # ignored, as it was before training: no KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def all_weights(gan):
    return [v.numpy() for v in gan.generator.weights + gan.discriminator.weights
            + gan.d_optimizer.variables + gan.g_optimizer.variables]


def test_custom_loop_trains_like_fit_with_the_same_outputs(tiny_config, tmp_path, monkeypatch):
    # fit() on one device vs the custom loop over 2 replicas (tests/conftest.py) on per-replica input
    # batches: with BatchNorm over the global batch both are the same computation.
    config = tiny_config.replace(sync_batchnorm=True)
    by_fit = train.train(config.replace(model_dir=str(tmp_path / "fit"), strategy="default"))
    monkeypatch.setattr(distribute, "needs_custom_loop", lambda strategy: True)
    by_loop = train.train(config.replace(model_dir=str(tmp_path / "loop"), strategy="mirrored"))
    assert int(by_loop.step.numpy()) == 4
    for a, b in zip(all_weights(by_fit), all_weights(by_loop)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for name in ("fit", "loop"):
        run = tmp_path / name
        assert checkpoint_steps(str(run)) == [2, 4]
        assert sorted(os.listdir(run / "samples")) == ["step_00000002.png", "step_00000002_ema.png",
                                                       "step_00000004.png", "step_00000004_ema.png"]
        assert len(os.listdir(run / "train")) == 1
