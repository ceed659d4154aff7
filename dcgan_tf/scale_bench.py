"""Measurements for running at scale (docs/scale.md): resume cost, and the cost of synchronised BatchNorm.

    python -m dcgan_tf.scale_bench resume --folder=/tmp/resume-bench --num_images=6000 --cache_limit_mb=32 \
        --steps=1000,50000
    python -m dcgan_tf.scale_bench sync_batchnorm --cpu_replicas=2 --image_size=64 --ngf=32 --ndf=32 --batch_size=64

`resume` writes `num_images` JPEGs into `--folder` (once; reused when they are there), lowers the in-memory limit of
dcgan_tf.input_pipeline to `--cache_limit_mb` so that this folder counts as "too big to keep decoded" (the real
limit is 2 GiB: the same code path as a large folder, with a folder that fits on a small disk), then for each
step k (interleaved over --repeats rounds, after an untimed warm-up) writes a run directory holding a
checkpoint at step k, and times `train.train` resuming it to step k+1
(model build, restore, input pipeline positioned at step k, one training step, the final checkpoint) and,
separately, the input pipeline alone (make_dataset(start_step=k) to its first batch). One JSON line per step.
Both measurements use the public APIs only, so the same script measures an older checkout too.

`sync_batchnorm` times fit() steps of the same model under a MirroredStrategy over --cpu_replicas logical CPU
devices with and without --sync_batchnorm, alternating, on one fixed random batch (the step alone).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import statistics

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from dcgan_tf import bench, checkpointing, distribute, fast_path, input_pipeline, train
from dcgan_tf.config import Config
from dcgan_tf.gan import build_gan

FLAGS = flags.FLAGS


def write_folder(folder: str, num_images: int, size: int) -> int:
    """`num_images` random size x size JPEGs in `folder` (kept if already there); how many there are."""
    os.makedirs(folder, exist_ok=True)
    have = len([n for n in os.listdir(folder) if n.endswith(".jpg")])
    rng = np.random.default_rng(0)
    for i in range(have, num_images):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        tf.io.write_file(os.path.join(folder, f"{i:07d}.jpg"), tf.io.encode_jpeg(image))
    return max(have, num_images)


def checkpoint_at(config: Config, step: int) -> None:
    """A run directory for `config` whose latest checkpoint is at `step` (fresh weights)."""
    gan = build_gan(fast_path.resolve(config))  # the optimizers train.train will resume (float16: loss-scaled)
    gan.step.assign(step)
    checkpointing.save_config(config)
    checkpointing.save_checkpoint(checkpointing.make_manager(gan, config.model_dir, 1), step)


def time_pipeline(config: Config, step: int) -> float:
    """Seconds from opening the data to the first batch of a pipeline starting at `step`."""
    start = time.perf_counter()
    next(iter(input_pipeline.make_dataset(config, start_step=step)))
    return time.perf_counter() - start


def time_resume(config: Config, step: int) -> float:
    """Seconds for train.train to resume a checkpoint at `step` and finish step+1."""
    checkpoint_at(config, step)
    start = time.perf_counter()
    train.train(config.replace(train_steps=step + 1))
    return time.perf_counter() - start


def bench_sync_batchnorm() -> None:
    """One JSON line: ms per step with synchronised and per-replica BatchNorm over --cpu_replicas CPU replicas."""
    distribute.split_cpu(FLAGS.cpu_replicas)
    strategy = distribute.new_mirrored_strategy([d.name for d in tf.config.list_logical_devices("CPU")])
    config = Config(image_size=FLAGS.image_size, channels=3, ngf=FLAGS.ngf, ndf=FLAGS.ndf,
                    batch_size=FLAGS.batch_size, train_steps=1)
    shape = [config.batch_size, config.image_size, config.image_size, 3]
    real = tf.data.Dataset.from_tensors(tf.random.stateless_uniform(shape, [0, 1], -1.0, 1.0)).repeat()
    gans = {}
    for sync in (True, False):
        gans[sync] = train.build_in_scope(config.replace(sync_batchnorm=sync), strategy)
        gans[sync].fit(real, steps_per_epoch=2, epochs=1, verbose=0)  # tracing, first-call allocations
    seconds: dict[bool, list[float]] = {True: [], False: []}
    cpu_seconds: dict[bool, list[float]] = {True: [], False: []}  # this process's CPU time: robust to other load
    for _ in range(FLAGS.repeats):
        for sync in (True, False):
            start, cpu = time.perf_counter(), time.process_time()
            gans[sync].fit(real, steps_per_epoch=FLAGS.steps_per_window, epochs=1, verbose=0)
            seconds[sync].append((time.perf_counter() - start) / FLAGS.steps_per_window)
            cpu_seconds[sync].append((time.process_time() - cpu) / FLAGS.steps_per_window)
    ms = {sync: round(1e3 * statistics.median(s), 1) for sync, s in seconds.items()}
    cpu_ms = {sync: round(1e3 * statistics.median(s), 1) for sync, s in cpu_seconds.items()}
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync, "image_size": config.image_size, "ngf": config.ngf,
        "ndf": config.ndf, "batch_size": config.batch_size, "ms_per_step_sync": ms[True],
        "ms_per_step_unsynced": ms[False], "sync_over_unsynced": round(ms[True] / ms[False], 3),
        "cpu_ms_per_step_sync": cpu_ms[True], "cpu_ms_per_step_unsynced": cpu_ms[False],
        "cpu_sync_over_unsynced": round(cpu_ms[True] / cpu_ms[False], 3),
        "windows_ms_sync": [round(1e3 * s, 1) for s in seconds[True]],
        "windows_ms_unsynced": [round(1e3 * s, 1) for s in seconds[False]],
        "machine": bench.machine(),
    }), flush=True)


def main(argv: list[str]) -> None:
    """`resume` or `sync_batchnorm`: one JSON line per measurement."""
    if argv[1:] == ["sync_batchnorm"]:
        bench_sync_batchnorm()
        return
    if argv[1:] != ["resume"]:
        raise app.UsageError(f"usage: python -m dcgan_tf.scale_bench {{resume|sync_batchnorm}} [--flags]; "
                             f"got {argv[1:]}")
    bench_resume()


def bench_resume() -> None:
    """Write the folder, then one JSON line per step: time to the first batch and to the first step."""
    folder = FLAGS.folder or os.path.join(tempfile.gettempdir(), "dcgan-resume-bench")
    count = write_folder(folder, FLAGS.num_images, FLAGS.source_size)
    input_pipeline.CACHE_LIMIT_BYTES = FLAGS.cache_limit_mb * 1024**2
    config = Config(dataset=f"folder:{folder}", image_size=FLAGS.image_size, channels=3, ngf=16, ndf=16,
                    batch_size=FLAGS.batch_size, verbose=0, log_every=10**9, sample_every=10**9,
                    checkpoint_every=10**9, num_samples=4)
    data_bytes = count * config.image_size**2 * 3
    steps = [int(s) for s in FLAGS.steps.split(",")]
    times: dict[int, list[tuple[float, float]]] = {step: [] for step in steps}
    for round_ in range(FLAGS.repeats + 1):  # round 0 warms up (first tracing, thread pools), untimed
        for step in steps if round_ else steps[:1]:
            with tempfile.TemporaryDirectory() as run_dir:
                run = config.replace(model_dir=run_dir)
                measured = (time_pipeline(run, step), time_resume(run, step))
            if round_:
                times[step].append(measured)
    for step in steps:
        print(json.dumps({
            "step": step, "examples_skipped": step * config.batch_size, "images": count,
            "decoded_mib": round(data_bytes / 1024**2, 1), "cache_limit_mib": FLAGS.cache_limit_mb,
            "seconds_to_first_batch": [round(p, 3) for p, _ in times[step]],
            "seconds_to_first_step": [round(r, 3) for _, r in times[step]],
            "machine": bench.machine(),
        }), flush=True)


def define_flags() -> None:
    """The benchmark's flags."""
    flags.DEFINE_string("folder", "", "where to write (or find) the JPEGs; default: a temporary folder")
    flags.DEFINE_integer("num_images", 6000, "JPEGs in the folder")
    flags.DEFINE_integer("source_size", 96, "side of each JPEG (centre-cropped and resized to image_size)")
    flags.DEFINE_integer("image_size", 64, "training image size")
    flags.DEFINE_integer("batch_size", 128, "global batch (the paper's 128)")
    flags.DEFINE_integer("cache_limit_mb", 32, "in-memory limit for this run (the real one is 2048 MiB)")
    flags.DEFINE_string("steps", "1000,50000", "comma-separated steps to resume at")
    flags.DEFINE_integer("repeats", 2, "timed rounds, the settings interleaved (after one untimed warm-up)")
    flags.DEFINE_integer("ngf", 32, "sync_batchnorm: generator width")
    flags.DEFINE_integer("ndf", 32, "sync_batchnorm: discriminator width")
    flags.DEFINE_integer("cpu_replicas", 2, "sync_batchnorm: logical CPU devices (replicas)")
    flags.DEFINE_integer("steps_per_window", 10, "sync_batchnorm: steps per timed window")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    define_flags()
    app.run(main)
