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

import dataclasses
import json
import os
import tempfile
import time

import statistics

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from dcgan_tf import bench, checkpointing, cli, distribute, fast_path, input_pipeline, train
from dcgan_tf.config import Config
from dcgan_tf.gan import build_gan


@dataclasses.dataclass
class Options:
    """The benchmark's own settings; one --flag each, its help the comment."""

    folder: str = ""  # where to write (or find) the JPEGs; default: a temporary folder
    num_images: int = 6000  # JPEGs in the folder
    source_size: int = 96  # side of each JPEG (centre-cropped and resized to image_size)
    cache_limit_mb: int = 32  # in-memory limit for this run (the real one is 2048 MiB)
    steps: str = "1000,50000"  # comma-separated steps to resume at
    repeats: int = 2  # timed rounds, the settings interleaved (after one untimed warm-up)
    steps_per_window: int = 10  # sync_batchnorm: steps per timed window


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


def bench_sync_batchnorm(config: Config, repeats: int, steps_per_window: int) -> None:
    """One JSON line: ms per step with synchronised and per-replica BatchNorm over config.cpu_replicas replicas.

    `config` gives the model (image_size, ngf, ndf, batch_size; 3 channels) and the number of CPU replicas.
    """
    distribute.split_cpu(config.cpu_replicas)
    strategy = distribute.new_mirrored_strategy([d.name for d in tf.config.list_logical_devices("CPU")])
    shape = [config.batch_size, config.image_size, config.image_size, 3]
    real = tf.data.Dataset.from_tensors(tf.random.stateless_uniform(shape, [0, 1], -1.0, 1.0)).repeat()
    gans = {}
    for sync in (True, False):
        gans[sync] = train.build_in_scope(config.replace(sync_batchnorm=sync), strategy)
        gans[sync].fit(real, steps_per_epoch=2, epochs=1, verbose=0)  # tracing, first-call allocations
    seconds: dict[bool, list[float]] = {True: [], False: []}
    cpu_seconds: dict[bool, list[float]] = {True: [], False: []}  # this process's CPU time: robust to other load
    for _ in range(repeats):
        for sync in (True, False):
            start, cpu = time.perf_counter(), time.process_time()
            gans[sync].fit(real, steps_per_epoch=steps_per_window, epochs=1, verbose=0)
            seconds[sync].append((time.perf_counter() - start) / steps_per_window)
            cpu_seconds[sync].append((time.process_time() - cpu) / steps_per_window)
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


def bench_resume(opts: Options, image_size: int, batch_size: int) -> None:
    """Write the folder, then one JSON line per step: time to the first batch and to the first step."""
    folder = opts.folder or os.path.join(tempfile.gettempdir(), "dcgan-resume-bench")
    count = write_folder(folder, opts.num_images, opts.source_size)
    input_pipeline.CACHE_LIMIT_BYTES = opts.cache_limit_mb * 1024**2
    config = Config(dataset=f"folder:{folder}", image_size=image_size, channels=3, ngf=16, ndf=16,
                    batch_size=batch_size, verbose=0, log_every=10**9, sample_every=10**9,
                    checkpoint_every=10**9, num_samples=4)
    data_bytes = count * config.image_size**2 * 3
    steps = [int(s) for s in opts.steps.split(",")]
    times: dict[int, list[tuple[float, float]]] = {step: [] for step in steps}
    for round_ in range(opts.repeats + 1):  # round 0 warms up (first tracing, thread pools), untimed
        for step in steps if round_ else steps[:1]:
            with tempfile.TemporaryDirectory() as run_dir:
                run = config.replace(model_dir=run_dir)
                measured = (time_pipeline(run, step), time_resume(run, step))
            if round_:
                times[step].append(measured)
    for step in steps:
        print(json.dumps({
            "step": step, "examples_skipped": step * config.batch_size, "images": count,
            "decoded_mib": round(data_bytes / 1024**2, 1), "cache_limit_mib": opts.cache_limit_mb,
            "seconds_to_first_batch": [round(p, 3) for p, _ in times[step]],
            "seconds_to_first_step": [round(r, 3) for _, r in times[step]],
            "machine": bench.machine(),
        }), flush=True)


# ---------------------------------------------------------------------------------------------------------
# Command line: the model flags are Config fields (dcgan_tf/cli.py builds them), with this benchmark's defaults.

CONFIG_FLAGS = ("image_size", "batch_size", "ngf", "ndf", "cpu_replicas")
CONFIG_DEFAULTS = {"ngf": 32, "ndf": 32, "cpu_replicas": 2}
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The benchmark's flags: Config's model flags (ngf, ndf and cpu_replicas for sync_batchnorm), then Options'."""
    only_sync = {name: f"sync_batchnorm: {cli.field_help(Config)[name]}" for name in ("ngf", "ndf", "cpu_replicas")}
    cli.define_config_flags(CONFIG_FLAGS, defaults=CONFIG_DEFAULTS, helps=only_sync)
    cli.define_flags(Options)


def main(argv: list[str]) -> None:
    """`resume` or `sync_batchnorm`: one JSON line per measurement."""
    if argv[1:] not in (["resume"], ["sync_batchnorm"]):
        raise app.UsageError(f"usage: python -m dcgan_tf.scale_bench {{resume|sync_batchnorm}} [--flags]; "
                             f"got {argv[1:]}")
    config = cli.config_from_flags(FLAGS, CONFIG_FLAGS, base=Config(channels=3, train_steps=1))
    opts = cli.read_flags(Options, FLAGS)
    if argv[1] == "sync_batchnorm":
        bench_sync_batchnorm(config, opts.repeats, opts.steps_per_window)
    else:
        bench_resume(opts, config.image_size, config.batch_size)


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    define_flags()
    app.run(main)
