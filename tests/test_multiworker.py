"""Two worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy (TF_CONFIG), CPU only: a preempted run
(SIGTERM on one worker) stops both at one saved step, the resumed run finishes with identical weights on both
workers, only the chief writes outputs, and each worker reads its own shard of every step's batch."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf import distribute, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The real CLI (dcgan_tf.train's main), plus a dump of what the test checks: the final weights, and what the
# input pipeline gave this worker (its input context and its first two batches).
WORKER = """
import sys
import numpy as np
from absl import app
from dcgan_tf import input_pipeline, train

dump = sys.argv.pop(1)
seen = {}
make_dataset = input_pipeline.make_dataset


def recording_make_dataset(config, start_step=0, input_context=None, source=None):
    dataset = make_dataset(config, start_step, input_context=input_context, source=source)
    if input_context is not None:
        seen["context"] = [input_context.num_input_pipelines, input_context.input_pipeline_id,
                           input_context.num_replicas_in_sync]
        seen["batches"] = np.stack([batch.numpy() for batch in dataset.take(2)])
    return dataset


def train_and_dump(config):
    gan = run(config)
    variables = gan.generator.weights + gan.discriminator.weights
    variables += gan.d_optimizer.variables + gan.g_optimizer.variables
    np.savez(dump, step=int(gan.step.numpy()), weights=np.concatenate([np.ravel(v.numpy()) for v in variables]),
             **seen)
    return gan


input_pipeline.make_dataset = recording_make_dataset
run, train.train = train.train, train_and_dump
train.define_flags()
app.run(train.main, flags_parser=train.parse_flags)
"""
TINY_FLAGS = ["--strategy=multi_worker", "--dataset=synthetic", "--image_size=16", "--ngf=8", "--ndf=8", "--nz=16",
              "--batch_size=8", "--num_samples=4", "--log_every=2", "--checkpoint_every=2", "--verbose=0"]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(tmp_path, name, *flags):
    """Two workers of one cluster running the CLI; each dumps to tmp_path/name-<i>.npz, scratch in tmp<i>/."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TMPDIR=str(scratch), TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                             "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"{name}-{index}.npz"), *TINY_FLAGS, *flags],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def finish(processes, timeout=400):
    """Both workers' stderr after they exit; both must exit 0."""
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout)[1])
    finally:
        for process in processes:
            process.kill()
    for index, (process, stderr) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"worker {index} exited {process.returncode}:\n{stderr[-4000:]}"
    return outputs


def checkpoint_steps(model_dir):
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), os.path.join(model_dir, "checkpoints"), 100,
                                         checkpoint_name="ckpt")
    return [int(path.rsplit("-", 1)[1]) for path in manager.checkpoints]


def test_two_mirrored_runs_of_different_networks_in_one_process(tiny_config, tmp_path):
    # Each MirroredStrategy used to start its collective keys at the same number: the second network's
    # gradients then met the first one's cached collective ("Shape mismatch in the collective instance").
    for channels in (1, 3):
        config = tiny_config.replace(channels=channels, strategy="mirrored", train_steps=1,
                                     model_dir=str(tmp_path / f"run{channels}"))
        assert int(train.train(config).step.numpy()) == 1


def test_batchnorm_statistics_are_averaged_over_replicas_before_saving():
    # Keras 3 keeps one copy of BatchNorm's moving statistics per replica (aggregation NONE); each worker
    # would save its own. The averager makes every copy the mean (2 logical CPUs, tests/conftest.py).
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        layer = keras.layers.BatchNormalization()
        layer.build((None, 3))
    moving_mean = layer.non_trainable_variables[0]
    strategy.run(tf.function(lambda: moving_mean.assign(
        tf.fill([3], tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32) * 2.0))))
    copies = [c.numpy() for c in strategy.experimental_local_results(moving_mean.value)]
    assert copies[0].tolist() == [0, 0, 0] and copies[1].tolist() == [2, 2, 2]
    distribute.make_replica_averager(strategy, layer.non_trainable_variables)()
    copies = [c.numpy() for c in strategy.experimental_local_results(moving_mean.value)]
    assert copies[0].tolist() == copies[1].tolist() == [1, 1, 1]


@pytest.mark.slow
def test_two_workers_preempt_resume_and_agree(tmp_path):
    model_dir, export_dir = tmp_path / "run", tmp_path / "export"
    flags = [f"--model_dir={model_dir}", "--sample_every=2"]

    # 1. A long run; once the chief has saved step 2, worker 1 (not the chief) gets SIGTERM.
    processes = start_workers(tmp_path, "preempted", *flags, "--train_steps=100000")
    deadline = time.monotonic() + 400
    while not os.path.exists(model_dir / "checkpoints" / "checkpoint"):
        assert all(p.poll() is None for p in processes), [p.communicate()[1][-3000:] for p in processes]
        assert time.monotonic() < deadline, "no checkpoint from the two workers"
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)
    logs = finish(processes)
    stopped = int(re.search(r"Stopped at step (\d+) of 100000 \(SIGTERM\)", logs[1]).group(1))
    assert f"Stopped at step {stopped} of 100000 (preempted on another worker)" in logs[0]
    assert checkpoint_steps(model_dir)[-1] == stopped  # both stopped at the one step they agreed on and saved
    dumps = [np.load(tmp_path / f"preempted-{i}.npz") for i in range(2)]
    assert int(dumps[0]["step"]) == int(dumps[1]["step"]) == stopped
    np.testing.assert_array_equal(dumps[0]["weights"], dumps[1]["weights"])

    # 2. The same command (2 more steps) resumes on both workers from the saved step and exports on the chief.
    end = stopped + 2
    logs = finish(start_workers(tmp_path, "resumed", *flags, f"--train_steps={end}", f"--export_dir={export_dir}"))
    for log in logs:
        assert f"from step {stopped} to {end}" in log and f"Trained steps {stopped} -> {end}" in log
    dumps = [np.load(tmp_path / f"resumed-{i}.npz") for i in range(2)]
    assert int(dumps[0]["step"]) == int(dumps[1]["step"]) == end
    np.testing.assert_array_equal(dumps[0]["weights"], dumps[1]["weights"])
    assert not np.array_equal(dumps[0]["weights"][:1000], np.load(tmp_path / "preempted-0.npz")["weights"][:1000])

    # Sharding: 2 input pipelines, one per worker, each with its own half of every step's global batch of 8.
    assert dumps[0]["context"].tolist() == [2, 0, 2] and dumps[1]["context"].tolist() == [2, 1, 2]
    for step in range(2):
        mine, theirs = dumps[0]["batches"][step], dumps[1]["batches"][step]
        assert mine.shape == theirs.shape == (4, 16, 16, 3)
        assert not any(np.array_equal(a, b) for a in mine for b in theirs), f"an image seen twice in step {step}"

    # Only the chief wrote: one events file per run, its checkpoints, grids, config and export; the worker's
    # scratch folders are gone.
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "config.json", "samples", "train"]
    assert len(os.listdir(model_dir / "train")) == 2 and checkpoint_steps(model_dir)[-1] == end
    assert os.listdir(export_dir) == [str(end)]
    for index in range(2):
        assert not [name for name in os.listdir(tmp_path / f"tmp{index}") if name.startswith("dcgan-")]
