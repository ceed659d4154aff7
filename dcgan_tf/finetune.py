"""Fine-tuning: `--init_from=OTHER_MODEL_DIR[:STEP]` starts a new run from another run's networks.

The new run starts at step 0 with the other run's G, D and G's EMA (and, with `--init_optimizers`, both Adam
optimizers' state; by default fresh optimizers, the usual choice when the data changes). Checked before any data
is opened (`resolve_init_from`): the other run must exist, hold the step asked for and have the same network
(`config.ARCHITECTURE_FIELDS`); `--channels=0` takes the other run's channels, so a folder of RGB images
fine-tunes a grayscale run in gray. The checkpoint used is recorded in the new run's config.json
(`initialized_from`). A run that already has a checkpoint resumes from it: re-running the same command never
re-initialises.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from dcgan_tf import checkpointing
from dcgan_tf.config import ARCHITECTURE_FIELDS, Config, ConfigError
from dcgan_tf.gan import DCGAN, copy_weights


def parse_init_from(text: str) -> tuple[str, int]:
    """'DIR' -> (DIR, 0 = latest); 'DIR:STEP' -> (DIR, STEP)."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and head:
        return head, int(tail)
    if sep and not tail.isdigit() and not os.path.exists(text):
        raise ConfigError(f"--init_from={text}: the part after ':' must be a checkpoint step (DIR:STEP, e.g. "
                          f"{head}:5000), or leave it out for the latest checkpoint")
    return text, 0


def _has_checkpoint(model_dir: str) -> bool:
    """Whether model_dir already holds a readable checkpoint (the run then resumes)."""
    return bool(checkpointing.recovered_paths(os.path.join(model_dir, checkpointing.CHECKPOINT_SUBDIR))[0])


def _origin_checkpoint(origin_dir: str, step: int) -> str:
    """The checkpoint of `step` (0: the newest readable) in the other run; a CheckpointError naming what it has."""
    paths, _ = checkpointing.recovered_paths(os.path.join(origin_dir, checkpointing.CHECKPOINT_SUBDIR))
    if not paths:
        raise checkpointing.CheckpointError(f"--init_from={origin_dir}: that run has no checkpoint yet under "
                                            f"{checkpointing.CHECKPOINT_SUBDIR}/")
    if not step:
        return paths[-1]
    wanted = [path for path in paths if checkpointing.checkpoint_step(path) == step]
    if not wanted:
        raise checkpointing.CheckpointError(
            f"--init_from={origin_dir}:{step}: that run has no checkpoint of step {step}; it has steps "
            f"{[checkpointing.checkpoint_step(path) for path in paths]}")
    return wanted[0]


def architecture_mismatches(origin: Config, config: Config) -> list[str]:
    """'ngf: DIR has 64, this run asks for 32 (pass --ngf=64)' for each network field that differs."""
    return [f"{name}: {origin.model_dir} has {getattr(origin, name)!r}, this run asks for {getattr(config, name)!r} "
            f"(pass --{name}={getattr(origin, name)})"
            for name in ARCHITECTURE_FIELDS if getattr(origin, name) != getattr(config, name)]


def resolve_init_from(config: Config) -> Config:
    """`config` with `initialized_from` filled (and channels taken from the other run when 0); cheap, no data.

    Without --init_from, or for a run that already has a checkpoint (it resumes: `initialized_from` is kept
    from its config.json), nothing is read from the other run.
    """
    if not config.init_from:
        if config.init_optimizers:
            raise ConfigError("--init_optimizers needs --init_from=OTHER_MODEL_DIR[:STEP] (the run whose optimizer "
                              "state to take)")
        return config
    origin_dir, step = parse_init_from(config.init_from)
    if os.path.abspath(origin_dir) == os.path.abspath(config.model_dir):
        raise ConfigError(f"--init_from={config.init_from} is this run's own --model_dir: fine-tuning writes a new "
                          "run, so pass another --model_dir (or drop --init_from to resume the run)")
    if _has_checkpoint(config.model_dir):
        saved = checkpointing.read_run_config(config.model_dir)
        logging.info("%s already has checkpoints: resuming it (--init_from=%s is where it started).",
                     config.model_dir, config.init_from)
        if saved is None:
            return config
        # --channels=0 took the other run's channels when this run started: the same command must resume with them.
        channels = saved.channels if config.channels == 0 else config.channels
        return config.replace(initialized_from=saved.initialized_from, channels=channels)
    origin = checkpointing.read_run_config(origin_dir)
    if origin is None:
        raise checkpointing.CheckpointError(
            f"--init_from={config.init_from}: {origin_dir} has no {checkpointing.CONFIG_FILE}, so it is not a "
            "dcgan_tf training run; pass the --model_dir of a trained run")
    origin = origin.replace(model_dir=origin_dir)
    if config.channels == 0:  # the dataset's own channels would be found only by opening it
        config = config.replace(channels=origin.channels)
    mismatches = architecture_mismatches(origin, config)
    if mismatches:
        raise ConfigError(f"--init_from={config.init_from}: the networks differ, so its weights cannot start this "
                          f"run: {'; '.join(mismatches)}")
    path = _origin_checkpoint(origin_dir, step)
    record = {"model_dir": os.path.abspath(origin_dir), "step": checkpointing.checkpoint_step(path),
              "checkpoint": os.path.abspath(path), "optimizers": config.init_optimizers}
    return config.replace(initialized_from=record)


def initialize(gan: DCGAN, config: Config) -> None:
    """Load the other run's G, D, G's EMA (and optimizers with --init_optimizers) into a new run's `gan`.

    The step stays 0. An origin without an EMA of G starts the EMA from its G.
    """
    origin = config.initialized_from
    path = origin["checkpoint"]
    present = checkpointing.saved_parts(path)
    parts = {"generator": gan.generator, "discriminator": gan.discriminator}
    if gan.generator_ema is not None and "generator_ema" in present:
        parts["generator_ema"] = gan.generator_ema
    if origin.get("optimizers"):
        parts.update(d_optimizer=gan.d_optimizer, g_optimizer=gan.g_optimizer)
    try:
        tf.train.Checkpoint(**parts).restore(path).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        hint = (" The optimizers differ (e.g. another --mixed_precision): drop --init_optimizers."
                if origin.get("optimizers") else "")
        raise checkpointing.CheckpointError(f"could not load {path} into the new run ({type(e).__name__}: "
                                            f"{str(e).splitlines()[0] if str(e) else ''}).{hint}") from e
    if gan.generator_ema is not None and "generator_ema" not in present:
        copy_weights(gan.generator, gan.generator_ema)
    gan.step_counter.assign(0)
    logging.info("Initialised %s from %s (step %d of %s)%s; training starts at step 0.", config.model_dir, path,
                 origin["step"], origin["model_dir"], " with its optimizers" if origin.get("optimizers") else
                 " with fresh optimizers")
