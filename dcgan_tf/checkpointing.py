"""Checkpoints of a whole run: both networks, both optimizers and the step (which is also the RNG state).

tf.train.CheckpointManager writes each checkpoint's shards to a temporary name, renames them into place and
only then rewrites its `checkpoint` index (an atomic rename), so a reader never picks up a half-written one.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from dcgan_tf import config as config_lib
from dcgan_tf.config import Config
from dcgan_tf.gan import DCGAN

CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected."""


def make_checkpoint(gan: DCGAN) -> tf.train.Checkpoint:
    """A tf.train.Checkpoint over everything that must survive a restart."""
    return tf.train.Checkpoint(
        generator=gan.generator,
        discriminator=gan.discriminator,
        d_optimizer=gan.d_optimizer,
        g_optimizer=gan.g_optimizer,  # its `iterations` is the step counter and seeds z
    )


def make_manager(gan: DCGAN, model_dir: str, keep: int) -> tf.train.CheckpointManager:
    """A manager keeping the last `keep` checkpoints under model_dir/checkpoints."""
    return tf.train.CheckpointManager(
        make_checkpoint(gan), os.path.join(model_dir, CHECKPOINT_SUBDIR), max_to_keep=keep, checkpoint_name="ckpt"
    )


def restore_latest(manager: tf.train.CheckpointManager) -> str | None:
    """Restore the newest readable checkpoint (skipping unreadable ones with a warning); its path or None."""
    for path in reversed(manager.checkpoints):
        try:
            manager.checkpoint.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            logging.warning("Skipping unreadable checkpoint %s (%s: %s); trying the previous one.",
                            path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            continue
        logging.info("Restored %s.", path)
        return path
    if manager.checkpoints:
        raise CheckpointError(f"none of the checkpoints in {manager.directory} could be read: "
                              f"{manager.checkpoints}. Move them away to start over.")
    return None


def config_path(model_dir: str) -> str:
    """Where a run's resolved config lives."""
    return os.path.join(model_dir, CONFIG_FILE)


def read_run_config(model_dir: str) -> Config | None:
    """The config saved in model_dir, or None for a new run."""
    path = config_path(model_dir)
    return Config.from_json_file(path) if os.path.exists(path) else None


def load_run(model_dir: str) -> tuple[Config, DCGAN]:
    """Rebuild a trained run's DCGAN from model_dir (config.json + latest checkpoint), outside any strategy."""
    from dcgan_tf.models import build_gan

    config = read_run_config(model_dir)
    if config is None:
        raise CheckpointError(f"{model_dir} has no {CONFIG_FILE}: it is not a dcgan_tf run directory "
                              "(train one with python -m dcgan_tf.train --model_dir=...)")
    config = config.replace(model_dir=model_dir, strategy="default", cpu_replicas=0, sync_batchnorm=False,
                            mixed_precision="none", jit_compile=False)
    gan = build_gan(config)
    if restore_latest(make_manager(gan, model_dir, config.keep_checkpoints)) is None:
        raise CheckpointError(f"{model_dir} has no checkpoint yet under {CHECKPOINT_SUBDIR}/")
    return config, gan


def save_config(config: Config) -> None:
    """Write the resolved config next to the run's results."""
    os.makedirs(config.model_dir, exist_ok=True)
    config_lib.save(config, config_path(config.model_dir))
