"""Checkpoints of a whole run: both networks, G's EMA, both optimizers and the step (which is also the RNG state).

tf.train.CheckpointManager writes each checkpoint's shards to a temporary name, merges them into `ckpt-N.*`
and only then rewrites its `checkpoint` index (an atomic rename). A run that starts again first repairs what a
crash or a damaged disk left (`recover`): an index that is missing, unreadable or lists no readable checkpoint
is rebuilt from the `ckpt-N` files that can be read, a complete checkpoint written just before a crash (after
its data, before the index) is added to the index, and only provable leftovers of an interrupted save are
deleted (temporaries, and the files of a save newer than every readable checkpoint that cannot be read). A
readable checkpoint is never deleted. A checkpoint that is listed but unreadable (e.g. truncated by a crashed
disk) is skipped by `restore_latest` in favour of the previous one.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import time

import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow.python.checkpoint import checkpoint_management  # CheckpointState: the index's proto

from dcgan_tf import config as config_lib
from dcgan_tf.config import Config
from dcgan_tf.files import atomic_write
from dcgan_tf.gan import DCGAN

CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected, or one that could not be written."""


# Parts that checkpoints written before they existed lack; restoring such a checkpoint fills them in
# (`_fill_missing`) instead of refusing it.
LATER_PARTS = ("step", "generator_ema", "augment")


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
    if gan.augment_p is not None:  # --augment=ada: p and the signs summed since its last adjustment
        parts["augment"] = tf.train.Checkpoint(p=gan.augment_p, signs=gan.ada_signs)
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
    if "augment" in missing:
        logging.info("%s was trained without --augment=ada: ADA's p starts at 0.", path)


def make_manager(gan: DCGAN, model_dir: str, keep: int) -> tf.train.CheckpointManager:
    """A manager keeping the last `keep` checkpoints under model_dir/checkpoints."""
    directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    try:
        return tf.train.CheckpointManager(make_checkpoint(gan), directory, max_to_keep=keep, checkpoint_name="ckpt")
    except ValueError as e:  # an index without a latest checkpoint ("Invalid checkpoint state loaded from ...")
        raise CheckpointError(f"the checkpoint index {index_path(directory)} is damaged ({e}). Re-run the "
                              "training command: it rebuilds the index from the readable ckpt-N files.") from e


def restore_latest(checkpoint: tf.train.Checkpoint, directory: str) -> str | None:
    """Restore the newest readable checkpoint of `directory` (skipping unreadable ones with a warning); its path
    or None. Reads what `recovered_paths` finds, so a damaged index does not hide intact checkpoints."""
    paths, _ = recovered_paths(directory)
    for path in reversed(paths):
        try:
            restore_checkpoint(checkpoint, path)
        # A truncated .data file raises IndexError ("Read less bytes than requested"), a corrupted one OpError.
        except (tf.errors.OpError, AssertionError, ValueError, IndexError) as e:
            logging.warning("Skipping unreadable checkpoint %s (%s: %s); trying the previous one.",
                            path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            continue
        logging.info("Restored %s.", path)
        return path
    if paths:
        raise CheckpointError(f"none of the checkpoints in {directory} could be read: {paths}. Move them away "
                              "to start over.")
    return None


# ---------------------------------------------------------------------------------------------------------
# Recovery of a checkpoint folder after a crash or a damaged disk.

INDEX_FILE = "checkpoint"  # tf.train.CheckpointManager's index of the folder (a text CheckpointState proto)
_CKPT_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-(\d{5})-of-(\d{5}))$")


def index_path(directory: str) -> str:
    """The checkpoint folder's index file."""
    return os.path.join(directory, INDEX_FILE)


def checkpoint_step(path: str) -> int:
    """N of a `.../ckpt-N` prefix."""
    return int(path.rsplit("-", 1)[1])


def read_index(directory: str) -> tuple[list[str] | None, str]:
    """The checkpoint prefixes the index lists (oldest first), or None with why: missing, unreadable or empty."""
    path = index_path(directory)
    if not os.path.exists(path):
        return None, f"the index {path} is missing"
    try:
        with open(path) as f:
            state = text_format.Parse(f.read(), checkpoint_management.CheckpointState())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        return None, f"the index {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    names = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path and state.model_checkpoint_path not in names:
        names.append(state.model_checkpoint_path)
    if not names:
        return None, f"the index {path} lists no checkpoint"
    return [name if os.path.isabs(name) else os.path.join(directory, name) for name in names], ""


def _files_by_step(directory: str) -> dict[int, list[str]]:
    """The ckpt-N.index / ckpt-N.data-* file names in `directory`, by N."""
    found: dict[int, list[str]] = {}
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        match = _CKPT_FILE.match(name)
        if match:
            found.setdefault(int(match.group(1)), []).append(name)
    return found


def _is_readable(prefix: str, names: list[str]) -> bool:
    """Whether checkpoint `prefix`, whose files are `names`, is complete on disk: an index TensorFlow can read
    and every data shard it names. A truncated data shard still passes (only restoring reads it);
    `restore_latest` skips such a checkpoint."""
    shards = [match for match in map(_CKPT_FILE.match, names) if match.group(3) is not None]
    if f"{os.path.basename(prefix)}.index" not in names or not shards:
        return False
    total = int(shards[0].group(4))
    if {int(m.group(3)) for m in shards if int(m.group(4)) == total} != set(range(total)):
        return False
    try:
        tf.train.list_variables(prefix)
    except (tf.errors.OpError, ValueError, IndexError):
        return False
    return True


def _readable_steps(directory: str) -> tuple[dict[int, list[str]], set[int]]:
    """The checkpoint files of `directory` by step, and the steps whose checkpoint is readable."""
    by_step = _files_by_step(directory)
    return by_step, {step for step, names in by_step.items()
                     if _is_readable(os.path.join(directory, f"ckpt-{step}"), names)}


def recovered_paths(directory: str) -> tuple[list[str], str]:
    """The checkpoints to restore from, oldest first, and what was recovered ('' when the index was right).

    The index's list, plus any readable checkpoint newer than its newest readable one (saved just before a
    crash, before the index was rewritten); every readable checkpoint when the index is missing, unreadable,
    or lists none that can be read.
    """
    listed, why = read_index(directory)
    readable = [os.path.join(directory, f"ckpt-{step}") for step in sorted(_readable_steps(directory)[1])]
    usable = [path for path in (listed or []) if path in readable]
    if not usable:
        if not readable:
            return listed or [], ""
        return readable, (why or f"the index {index_path(directory)} lists no readable checkpoint "
                                 f"({[os.path.basename(p) for p in listed or []]})")
    newest = max(checkpoint_step(path) for path in usable)
    newer = [path for path in readable if checkpoint_step(path) > newest and path not in listed]
    if not newer:
        return listed, ""
    return listed + newer, (f"the index {index_path(directory)} does not list {[os.path.basename(p) for p in newer]}"
                            ", written just before the previous run stopped")


def write_index(directory: str, paths: list[str]) -> None:
    """Rewrite the folder's index atomically to list `paths` (oldest first), the last one as the latest."""
    names = [os.path.relpath(path, directory) for path in paths]
    # CheckpointManager manages (and so keeps only the newest keep_checkpoints of) the paths whose timestamp is
    # after last_preserved_timestamp; those without one it keeps forever. The files' times are the save times.
    times = [os.path.getmtime(path + ".index") if os.path.exists(path + ".index") else time.time() for path in paths]
    lines = ([f"model_checkpoint_path: {json.dumps(names[-1])}"]
             + [f"all_model_checkpoint_paths: {json.dumps(name)}" for name in names]
             + [f"all_model_checkpoint_timestamps: {t!r}" for t in times]
             + [f"last_preserved_timestamp: {min(times) - 1.0!r}"])
    with atomic_write(index_path(directory)) as f:
        f.write("\n".join(lines) + "\n")


def recover(model_dir: str) -> None:
    """Before a run resumes: repair the checkpoint index, then delete what interrupted saves left (see the
    module docstring); one warning for each thing done. Only the chief calls it: it writes."""
    directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    paths, what = recovered_paths(directory)
    if what:
        write_index(directory, paths)
        logging.warning("Recovered the checkpoint index: %s. Rewrote it to list %s (newest %s); nothing was "
                        "deleted.", what, [os.path.basename(p) for p in paths], os.path.basename(paths[-1]))
    remove_interrupted_writes(directory)
    remove_stale_temp_files(model_dir)


def config_path(model_dir: str) -> str:
    """Where a run's resolved config lives."""
    return os.path.join(model_dir, CONFIG_FILE)


def read_run_config(model_dir: str) -> Config | None:
    """The config saved in model_dir, or None for a new run."""
    path = config_path(model_dir)
    return Config.from_json_file(path) if os.path.exists(path) else None


def load_run(model_dir: str, g_ema: bool | None = None, checkpoint_step: int = 0) -> tuple[Config, DCGAN]:
    """Rebuild a trained run's DCGAN from model_dir (config.json + latest checkpoint), outside any strategy.

    The networks are float32 whatever the run's precision, but the optimizers are those the run trained with
    (a LossScaleOptimizer under float16), so every value of the checkpoint finds its variable. `g_ema` picks
    the generator of the outputs (`gan.output_generator`): None = the run's own choice. `checkpoint_step` > 0
    restores the checkpoint of that step (ckpt-N) instead of the latest; a CheckpointError lists the steps kept.
    """
    from dcgan_tf.gan import build_gan

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
    # Float32 networks whatever the run trained in (build_gan's default precision); the optimizers still follow
    # the run's precision (loss scaling under float16), so every value of the checkpoint finds its variable.
    gan = build_gan(config)
    if checkpoint_step:
        path = restore_step(gan, model_dir, checkpoint_step)
    else:
        path = restore_latest(make_checkpoint(gan), os.path.join(model_dir, CHECKPOINT_SUBDIR))
    if path is None:
        raise CheckpointError(f"{model_dir} has no checkpoint yet under {CHECKPOINT_SUBDIR}/")
    if gan.use_ema and "generator_ema" not in saved_parts(path):
        logging.warning("%s has no EMA of G (trained before it existed): using its raw G.", model_dir)
        gan.use_ema = False
        config = config.replace(g_ema=False)
    logging.info("Loaded %s at step %d; outputs use its %s generator.", model_dir, int(gan.step.numpy()),
                 "EMA" if gan.use_ema else "raw")
    return config, gan


def restore_step(gan: DCGAN, model_dir: str, step: int) -> str:
    """Restore the run's checkpoint of `step` (ckpt-N) into `gan`; its path, or a CheckpointError listing the steps."""
    paths, _ = recovered_paths(os.path.join(model_dir, CHECKPOINT_SUBDIR))
    wanted = [path for path in paths if checkpoint_step(path) == step]
    if not wanted:
        raise CheckpointError(f"{model_dir} has no checkpoint of step {step}; it has steps "
                              f"{[checkpoint_step(path) for path in paths]}")
    restore_checkpoint(make_checkpoint(gan), wanted[0])
    return wanted[0]


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
        remove_interrupted_writes(manager.directory)
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


def is_interrupted_write(name: str) -> bool:
    """Whether a file name in the checkpoint folder is a temporary of a save that never completed."""
    # The index's own atomic-write temporaries (TensorFlow's and ours); ckpt-N_temp/ holds shards before the
    # merge; *.tempstateNNN are TensorFlow's temporaries of one file.
    return bool(re.match(r"^checkpoint\.tmp", name) or re.match(r"^ckpt-\d+_temp", name) or "tempstate" in name)


def remove_interrupted_writes(directory: str) -> list[str]:
    """Delete what interrupted saves provably left in the checkpoint folder; the paths removed.

    That is temporaries, and the files of a checkpoint that cannot be read and is newer than every readable one
    (a save killed during its merge). A readable checkpoint, or an unreadable one older than the newest
    readable, is never deleted (the latter may be disk damage to look at: it is named in a warning).
    """
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    removed = [os.path.join(directory, name) for name in names if is_interrupted_write(name)]
    listed = {checkpoint_step(path) for path in read_index(directory)[0] or []}
    by_step, readable = _readable_steps(directory)
    unreadable = sorted(set(by_step) - readable)
    partial = [step for step in unreadable if step > max(readable, default=-1)]
    removed += [os.path.join(directory, name) for step in partial for name in sorted(by_step[step])]
    for path in removed:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    if removed:
        logging.warning("Removed %d leftover(s) of an interrupted checkpoint write: %s", len(removed), removed)
    # A listed one is the manager's to delete (a sweep killed half-way leaves one): it sweeps it again.
    kept = [f"ckpt-{step}" for step in unreadable if step not in partial and step not in listed]
    if kept:
        logging.warning("Checkpoint(s) %s in %s cannot be read and are older than the newest readable one: left "
                        "in place (not restored from); move them away once you have looked at them.", kept,
                        directory)
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
