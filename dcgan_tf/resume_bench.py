"""How long a resumed run takes to its first step, at an early and a late step (docs/scale.md).

    python -m dcgan_tf.resume_bench --folder=/tmp/resume-bench --num_images=6000 --cache_limit_mb=32 \
        --steps=1000,50000

It writes `num_images` JPEGs into `--folder` (once; reused when they are there), lowers the in-memory limit of
dcgan_tf.input_pipeline to `--cache_limit_mb` so that this folder counts as "too big to keep decoded" (the real
limit is 2 GiB: the same code path as a large folder, with a folder that fits on a small disk), then for each
step k (interleaved over --repeats rounds, after an untimed warm-up) writes a run directory holding a
checkpoint at step k, and times `train.train` resuming it to step k+1
(model build, restore, input pipeline positioned at step k, one training step, the final checkpoint) and,
separately, the input pipeline alone (make_dataset(start_step=k) to its first batch). One JSON line per step.
Both measurements use the public APIs only, so the same script measures an older checkout too.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from dcgan_tf import checkpointing, input_pipeline, train
from dcgan_tf.config import Config
from dcgan_tf.models import build_gan

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
    gan = build_gan(config)
    gan.g_optimizer.iterations.assign(step)
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


def main(argv: list[str]) -> None:
    """Write the folder, then one JSON line per step: time to the first batch and to the first step."""
    del argv
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
            "load_1min": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
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
    flags.DEFINE_integer("repeats", 2, "timed rounds over the steps, interleaved (after one untimed warm-up)")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    define_flags()
    app.run(main)
