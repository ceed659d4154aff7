"""Train the paper's DCGAN: `python -m dcgan_tf.train --flagfile=configs/quickstart.cfg --model_dir=runs/q`.

Re-running the same command resumes from the latest checkpoint in --model_dir.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import keras
import tensorflow as tf
from absl import app, flags, logging

from dcgan_tf import callbacks as callbacks_lib
from dcgan_tf import checkpointing, distribute, input_pipeline
from dcgan_tf import config as config_lib
from dcgan_tf.config import Config, ConfigError
from dcgan_tf.gan import DCGAN
from dcgan_tf.models import build_gan


def total_steps(config: Config, source: input_pipeline.Source) -> int:
    """The run's length in steps: train_steps, or epochs x steps per epoch."""
    if config.train_steps:
        return config.train_steps
    per_epoch = input_pipeline.steps_per_epoch(config, source)
    if per_epoch is None:
        raise ConfigError(f"--epochs needs a finite dataset; {config.dataset!r} is infinite: use --train_steps")
    return config.epochs * per_epoch


def ensure_writable(model_dir: str) -> None:
    """Create model_dir and prove it is writable, before any heavy work."""
    probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
    try:
        os.makedirs(model_dir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"model_dir {model_dir!r} is not writable ({e.strerror}); pass a --model_dir you can "
                          "write to") from None


def prepare(config: Config) -> tuple[Config, input_pipeline.Source, int]:
    """Validate, open the data, resolve channels and the run's length; refuse to resume another network."""
    config_lib.validate(config)
    source = input_pipeline.make_source(config)
    config = config.replace(channels=source.channels)
    end_step = total_steps(config, source)
    ensure_writable(config.model_dir)
    saved = checkpointing.read_run_config(config.model_dir)
    if saved is not None:
        config_lib.check_compatible(saved, config)
    return config, source, end_step


def make_callbacks(config: Config, gan: DCGAN, manager: tf.train.CheckpointManager) -> list[keras.callbacks.Callback]:
    """TensorBoard scalars + sample grid, checkpoints and the closing line."""
    writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
    fixed_z = gan.sample_z(config.num_samples, seed=config.seed + 1)
    return [
        callbacks_lib.ScalarLogger(writer, config.log_every, config.batch_size),
        callbacks_lib.SampleGrid(writer, config.sample_every, fixed_z, os.path.join(config.model_dir, "samples")),
        callbacks_lib.CheckpointSaver(manager, config.checkpoint_every),
        callbacks_lib.Summary(config.batch_size),
    ]


def set_precision(config: Config) -> None:
    """Keras's global dtype policy for the networks built next (variables stay float32)."""
    policy = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[config.mixed_precision]
    keras.mixed_precision.set_global_policy(policy)


def train(config: Config) -> DCGAN:
    """Train (or resume) the run described by `config`; returns the trained model."""
    config, source, end = prepare(config)
    strategy = distribute.make_strategy(config)
    distribute.check_batch_split(config, strategy)
    set_precision(config)
    try:
        with strategy.scope():
            gan = build_gan(config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    manager = checkpointing.make_manager(gan, config.model_dir, config.keep_checkpoints)
    checkpointing.restore_latest(manager)
    checkpointing.save_config(config)
    start = int(gan.step.numpy())
    if start >= end:
        logging.info("%s is already trained to step %d (>= %d): nothing to do.", config.model_dir, start, end)
    else:
        logging.info("Training %s from step %d to %d.", config.model_dir, start, end)
        dataset = input_pipeline.make_dataset(config, start_step=start, source=source)
        gan.fit(dataset, epochs=1, shuffle=False, steps_per_epoch=end - start, verbose=config.verbose,
                callbacks=make_callbacks(config, gan, manager))
    if config.export_dir:
        from dcgan_tf import export  # the serving export (issue 3)

        export.export_generator(gan, config, config.export_dir)
    return gan


# ---------------------------------------------------------------------------------------------------------
# Command line: one flag per Config field, its help text the field's comment in config.py.


def field_help() -> dict[str, str]:
    """Each Config field's trailing comment in config.py, used as its flag's help."""
    import inspect

    source = inspect.getsource(Config)
    return dict(re.findall(r"^\s+(\w+): [^=]+= .*?#\s*(.*)$", source, flags=re.MULTILINE))


def define_flags() -> None:
    """Define one absl flag per Config field, with the field's default."""
    helps = field_help()
    for field in dataclasses.fields(Config):
        default, text = field.default, helps.get(field.name, field.name)
        if isinstance(default, bool):
            flags.DEFINE_bool(field.name, default, text)
        elif isinstance(default, int):
            flags.DEFINE_integer(field.name, default, text)
        elif isinstance(default, float):
            flags.DEFINE_float(field.name, default, text)
        else:
            flags.DEFINE_string(field.name, default, text)


def config_from_flags() -> Config:
    """The Config given on the command line."""
    return Config(**{f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(Config)})


def main(argv: list[str]) -> None:
    """CLI entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: every setting is a --flag (see --helpfull)")
    try:
        train(config_from_flags())
    except (ConfigError, input_pipeline.DatasetError, checkpointing.CheckpointError) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
