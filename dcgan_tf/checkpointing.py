"""Checkpoints of a whole run: both networks, G's EMA, both optimizers and the step (which is also the RNG state).

tf.train.CheckpointManager writes each checkpoint's shards to a temporary name, renames them into place and
only then rewrites its `checkpoint` index (an atomic rename), so a reader never picks up a half-written one.
What an interrupted save leaves behind (a `ckpt-N_temp/` folder, `ckpt-N.*` files the index never listed) is
removed by `remove_interrupted_writes` when the run starts again; a checkpoint that is listed but unreadable
(e.g. truncated by a crashed disk) is skipped by `restore_latest` in favour of the previous one.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil

import tensorflow as tf
from absl import logging

from dcgan_tf import config as config_lib
from dcgan_tf.config import Config
from dcgan_tf.gan import DCGAN

CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected, or one that could not be written."""


# Parts that checkpoints written before they existed lack; restoring such a checkpoint fills them in
# (`_fill_missing`) instead of refusing it.
LATER_PARTS = ("step", "generator_ema")


def make_checkpoint(gan: DCGAN) -> tf.train.Checkpoint:
    """A tf.train.Checkpoint over everything that must survive a restart."""
    parts = dict(
        generator=gan.generator,
        discriminator=gan.discriminator,
        d_optimizer=gan.d_optimizer,  # a LossScaleOptimizer under float16, as the run trained
        g_optimizer=gan.g_optimizer,
        step=gan.step_counter,  # the step, which also seeds z
    )
    if gan.generator_ema is not None:
        parts["generator_ema"] = gan.generator_ema
    return tf.train.Checkpoint(**parts)


def saved_parts(path: str) -> set[str]:
    """Names of the top-level objects (generator, step, ...) that the checkpoint at `path` holds."""
    return {name.split("/", 1)[0] for name, _ in tf.train.list_variables(path)}


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restore `path` into `checkpoint`, every object matched; a checkpoint older than the step counter or G's
    EMA restores what it has, and the missing parts are derived (see `_fill_missing`)."""
    present = saved_parts(path)
    missing = [name for name in LATER_PARTS if hasattr(checkpoint, name) and name not in present]
    target = checkpoint
    if missing:
        target = tf.train.Checkpoint(**{name: getattr(checkpoint, name) for name in _part_names(checkpoint)
                                        if name not in missing})
    target.restore(path).assert_existing_objects_matched()
    _fill_missing(checkpoint, missing, path)


def _part_names(checkpoint: tf.train.Checkpoint) -> list[str]:
    """The names make_checkpoint gave the checkpoint's parts."""
    names = ("generator", "discriminator", "d_optimizer", "g_optimizer") + LATER_PARTS
    return [name for name in names if hasattr(checkpoint, name)]


def _fill_missing(checkpoint: tf.train.Checkpoint, missing: list[str], path: str) -> None:
    """Derive what an old checkpoint lacks: the step from G's optimizer (what counted steps before), the EMA from G."""
    if "step" in missing:
        # Before the model counted its steps, G's optimizer did; under float16 it missed loss-scale-skipped ones.
        checkpoint.step.assign(tf.cast(checkpoint.g_optimizer.iterations, tf.int64))
        logging.warning("%s predates the model's step counter: taking step %d from G's optimizer (a float16 run "
                        "may have counted fewer steps than it trained).", path, int(checkpoint.step.numpy()))
    if "generator_ema" in missing:
        from dcgan_tf.gan import copy_weights

        copy_weights(checkpoint.generator, checkpoint.generator_ema)
        logging.warning("%s has no EMA of G (trained before it existed): the EMA starts from G's weights now.",
                        path)


def make_manager(gan: DCGAN, model_dir: str, keep: int) -> tf.train.CheckpointManager:
    """A manager keeping the last `keep` checkpoints under model_dir/checkpoints."""
    return tf.train.CheckpointManager(
        make_checkpoint(gan), os.path.join(model_dir, CHECKPOINT_SUBDIR), max_to_keep=keep, checkpoint_name="ckpt"
    )


def restore_latest(manager: tf.train.CheckpointManager) -> str | None:
    """Restore the newest readable checkpoint (skipping unreadable ones with a warning); its path or None."""
    for path in reversed(manager.checkpoints):
        try:
            restore_checkpoint(manager.checkpoint, path)
        # A truncated .data file raises IndexError ("Read less bytes than requested"), a corrupted one OpError.
        except (tf.errors.OpError, AssertionError, ValueError, IndexError) as e:
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


def load_run(model_dir: str, g_ema: bool | None = None) -> tuple[Config, DCGAN]:
    """Rebuild a trained run's DCGAN from model_dir (config.json + latest checkpoint), outside any strategy.

    The networks are float32 whatever the run's precision, but the optimizers are those the run trained with
    (a LossScaleOptimizer under float16), so every value of the checkpoint finds its variable. `g_ema` picks
    the generator of the outputs (`gan.output_generator`): None = the run's own choice.
    """
    from dcgan_tf.models import build_gan

    config = read_run_config(model_dir)
    if config is None:
        raise CheckpointError(f"{model_dir} has no {CONFIG_FILE}: it is not a dcgan_tf run directory "
                              "(train one with python -m dcgan_tf.train --model_dir=...)")
    config = config.replace(model_dir=model_dir, strategy="default", cpu_replicas=0, sync_batchnorm=False,
                            jit_compile=False)
    if g_ema is not None:
        if g_ema and config.g_ema_decay <= 0:
            raise CheckpointError(f"{model_dir} was trained without an EMA of G (--g_ema_decay=0): use "
                                  "--g_ema=false for its raw G")
        config = config.replace(g_ema=g_ema)
    # Outside training the global Keras policy is float32, so build_gan makes float32 networks; it reads
    # config.mixed_precision only to wrap the optimizers as training did.
    gan = build_gan(config)
    path = restore_latest(make_manager(gan, model_dir, config.keep_checkpoints))
    if path is None:
        raise CheckpointError(f"{model_dir} has no checkpoint yet under {CHECKPOINT_SUBDIR}/")
    if gan.use_ema and "generator_ema" not in saved_parts(path):
        logging.warning("%s has no EMA of G (trained before it existed): using its raw G.", model_dir)
        gan.use_ema = False
        config = config.replace(g_ema=False)
    logging.info("Loaded %s at step %d; outputs use its %s generator.", model_dir, int(gan.step.numpy()),
                 "EMA" if gan.use_ema else "raw")
    return config, gan


def save_config(config: Config) -> None:
    """Write the resolved config next to the run's results."""
    os.makedirs(config.model_dir, exist_ok=True)
    config_lib.save(config, config_path(config.model_dir))


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> str:
    """Save checkpoint `step`; a failed write (e.g. a full disk) becomes a CheckpointError naming the fix."""
    try:
        return manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as e:
        # TF maps ENOSPC to ResourceExhaustedError "...; No space left on device" and leaves ckpt-N_temp/.
        remove_interrupted_writes(manager)
        raise CheckpointError(f"could not write the checkpoint of step {step} to {manager.directory} "
                              f"({describe(e)}); {describe_latest(manager)}. Free disk space (or use a "
                              "--model_dir on another disk) and re-run the same command to resume.") from e


def is_disk_full(error: BaseException) -> bool:
    """Whether a write failed for lack of space (Python's OSError or TensorFlow's ResourceExhaustedError)."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, tf.errors.ResourceExhaustedError) and "No space left on device" in str(error)


def disk_full_error(manager: tf.train.CheckpointManager, error: BaseException) -> CheckpointError:
    """The error for a full disk met while writing events or sample grids (checkpoints have their own)."""
    return CheckpointError(f"the disk is full ({describe(error)}); {describe_latest(manager)}. Free disk "
                           "space (or use a --model_dir on another disk) and re-run the same command to resume.")


def describe(error: BaseException) -> str:
    """`Type: message` on one line, without TensorFlow's {{function_node ...}} prefix."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error)).strip()
    return f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}"


def describe_latest(manager: tf.train.CheckpointManager) -> str:
    """What a re-run would resume from, in words (for error messages)."""
    latest = manager.latest_checkpoint
    if latest is None:
        return f"{manager.directory} has no checkpoint yet"
    return f"checkpoint {latest} is intact and stays the latest"


def _listed_prefixes(manager: tf.train.CheckpointManager) -> set[str]:
    """Basenames (ckpt-N) of the checkpoints the manager's index lists."""
    return {os.path.basename(path) for path in manager.checkpoints}


def is_interrupted_write(name: str, listed: set[str]) -> bool:
    """Whether a file name in the checkpoint folder is a leftover of a save that never completed."""
    if re.match(r"^checkpoint\.tmp[0-9a-f]+$", name):  # the index's own atomic-write temporary
        return True
    match = re.match(r"^(ckpt-\d+)(_temp.*|\.index.*|\.data-.*)$", name)
    if match is None:
        return False
    # ckpt-N_temp/ holds shards before the merge; *.tempstateNNN are TF's temporaries of one file;
    # complete ckpt-N.* files that the index never listed were written just before a crash.
    return match.group(2).startswith("_temp") or "tempstate" in name or match.group(1) not in listed


def remove_interrupted_writes(manager: tf.train.CheckpointManager) -> list[str]:
    """Delete what interrupted saves left in the checkpoint folder (never a listed checkpoint); the paths removed."""
    listed = _listed_prefixes(manager)
    removed = []
    for path in sorted(glob.glob(os.path.join(manager.directory, "*"))):
        if not is_interrupted_write(os.path.basename(path), listed):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
        removed.append(path)
    if removed:
        logging.warning("Removed %d leftover(s) of an interrupted checkpoint write: %s", len(removed), removed)
    return removed


def remove_stale_temp_files(model_dir: str) -> list[str]:
    """Delete `*.tmp-PID` files (config.json, sample PNGs) that a killed run left before renaming them."""
    removed = []
    for pattern in (f"{CONFIG_FILE}.tmp-*", os.path.join("samples", "*.tmp-*")):
        for path in glob.glob(os.path.join(model_dir, pattern)):
            os.remove(path)
            removed.append(path)
    if removed:
        logging.warning("Removed %d half-written file(s) of an interrupted run: %s", len(removed), removed)
    return removed
