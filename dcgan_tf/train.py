"""Train the paper's DCGAN: `python -m dcgan_tf.train --flagfile=configs/quickstart.cfg --model_dir=runs/q`.

Re-running the same command resumes from the latest checkpoint in --model_dir. SIGTERM/SIGINT stop it after
the current step with a checkpoint (exit status 0); `--strategy=multi_worker` trains on the machines named by
TF_CONFIG (docs/scale.md).
"""

from __future__ import annotations

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

import os
import sys

import keras
import tensorflow as tf
from absl import app, flags, logging

from dcgan_tf import callbacks as callbacks_lib
from dcgan_tf import checkpointing, cli, custom_loop, distribute, input_pipeline
from dcgan_tf import config as config_lib
from dcgan_tf import export, fast_path, finetune
from dcgan_tf.config import Config, ConfigError
from dcgan_tf.evaluation.fid import EvaluationError
from dcgan_tf.gan import DCGAN, build_gan


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


def prepare(config: Config, writes_outputs: bool = True, strategy: tf.distribute.Strategy | None = None
            ) -> tuple[Config, input_pipeline.Source, int]:
    """Open the data, resolve channels, precision, XLA and the run's length; refuse to resume another network.

    `config` is already validated (train() does it first, before making the strategy). `writes_outputs=False`
    (a non-chief worker, which writes to a temporary folder) skips the model_dir probe.
    """
    source = input_pipeline.make_source(config)
    warn_if_small(config, source)
    config = config.replace(channels=source.channels)
    end_step = total_steps(config, source)
    if writes_outputs:
        ensure_writable(config.model_dir)
    saved = checkpointing.read_run_config(config.model_dir)
    if saved is not None:
        config_lib.check_compatible(saved, config)
    config = fast_path.resolve(config, strategy, saved)  # `auto` precision/XLA; a resumed run keeps its own
    return config, source, end_step


def warn_if_small(config: Config, source: input_pipeline.Source) -> None:
    """Say so when a small finite dataset trains without augmentation: D memorises it (docs/training.md)."""
    from dcgan_tf.augment import SMALL_DATASET

    if config.augment == "none" and source.num_examples is not None and source.num_examples < SMALL_DATASET:
        logging.warning("%s has only %d images (< %d) and --augment=none: with this little data D memorises the "
                        "training set and G's samples degrade. Consider --augment=diffaugment (or --augment=ada) "
                        "and, where left and right do not matter, --mirror (docs/training.md, \"Small datasets\").",
                        config.dataset, source.num_examples, SMALL_DATASET)


def make_callbacks(config: Config, gan: DCGAN, manager: tf.train.CheckpointManager,
                   stop: callbacks_lib.StopSignal | None = None, end_step: int = 0) -> list[keras.callbacks.Callback]:
    """Divergence guard, TensorBoard scalars + sample grid, checkpoints, graceful stop and the closing line.

    The one list of callbacks for fit() and the multi-worker loop. `stop` adds the graceful stop on
    SIGTERM/SIGINT for fit(); the multi-worker loop leaves that to PreemptionCheckpointHandler, which makes
    every worker stop at the same step. Also: HParams + layer tables, the --profile_steps profiler, and plain
    progress lines up to `end_step` when stdout is not a terminal (or --verbose=2).
    """
    log_dir = os.path.join(config.model_dir, "train")
    writer = tf.summary.create_file_writer(log_dir)
    fixed_z = gan.sample_z(config.num_samples, seed=config.seed + 1)
    average_batchnorm_statistics = distribute.make_replica_averager(
        gan.distribute_strategy, gan.generator.non_trainable_variables + gan.discriminator.non_trainable_variables
        + (gan.generator_ema.non_trainable_variables if gan.generator_ema is not None else []))
    log_sinks = [callbacks_lib.ScalarLogger(writer)]
    if callbacks_lib.wants_progress_log(config.verbose, sys.stdout.isatty()):
        log_sinks.append(callbacks_lib.ProgressLog(end_step))
    callbacks = [
        callbacks_lib.DivergenceGuard(manager),  # first: nothing gets written for a step that diverged
        callbacks_lib.LogWindow(config.log_every, config.batch_size, log_sinks),
        callbacks_lib.SampleGrid(writer, config.sample_every, fixed_z, os.path.join(config.model_dir, "samples")),
        callbacks_lib.CheckpointSaver(manager, config.checkpoint_every, before_save=average_batchnorm_statistics),
    ]
    if config.fid_every:  # after the guard and the checkpoint, so "best" is never a diverged step
        from dcgan_tf.evaluation.callback import make_fid_callback

        callbacks.append(make_fid_callback(config, config.fid_every, config.fid_samples, config.fid_extractor,
                                           config.fid_classifier_path, config.inception_weights))
    if stop is not None:
        callbacks.append(callbacks_lib.GracefulStop(stop))
    run_name = os.path.basename(os.path.abspath(config.model_dir))
    callbacks.append(callbacks_lib.RunSummary(config.to_dict(), writer, trial_id=run_name))
    profile = config_lib.parse_profile_steps(config.profile_steps)
    if profile:
        callbacks.append(callbacks_lib.Profiler(log_dir, *profile))
    callbacks.append(callbacks_lib.Summary(config.batch_size))
    return callbacks


def build_in_scope(config: Config, strategy: tf.distribute.Strategy) -> DCGAN:
    """The run's DCGAN built under `strategy`, in the config's resolved precision.

    BatchNorm is synchronised only where it is asked for and the strategy has several replicas: one replica
    already normalises over the whole batch, and the unsynchronised layer keeps the fused kernel.
    """
    with strategy.scope():
        return build_gan(config, precision=config.compute_precision,
                         sync_batchnorm=config.sync_batchnorm and strategy.num_replicas_in_sync > 1,
                         conv_forms=config.conv_forms)


def train(config: Config) -> DCGAN:
    """Train (or resume) the run described by `config`; returns the trained model.

    SIGTERM or SIGINT stops it after the current step with a checkpoint there (re-run the same command to
    resume); a NaN/inf loss or weights raises callbacks.DivergenceError and keeps the last good checkpoint.
    """
    config_lib.validate(config)
    # First TensorFlow work of the process: MultiWorkerMirroredStrategy must configure collective ops, and
    # --cpu_replicas must split the CPU, before any other op runs (creating a tf.data source is one).
    strategy = distribute.make_strategy(config)
    distribute.check_batch_split(config, strategy)  # settings the strategy rules out: before opening the data
    distribute.check_jit_compile(config, strategy)
    config = finetune.resolve_init_from(config)  # --init_from: a different network fails here, before the data
    chief = distribute.is_chief(strategy)
    config, source, end = prepare(config, writes_outputs=chief, strategy=strategy)
    gan = build_in_scope(config, strategy)
    if chief:  # before the manager reads the index: repair it, clear what a killed run left half-written
        checkpointing.recover(config.model_dir)
    run_manager = checkpointing.make_manager(gan, config.model_dir, config.keep_checkpoints)
    start = restore(config, gan, run_manager, chief)
    distribute.check_workers_agree(strategy, start)
    with distribute.worker_outputs(config, strategy) as out, callbacks_lib.StopSignal() as stop:
        # Saving is collective under multi-worker: the non-chief workers save too, into their scratch folder.
        manager = run_manager if chief else checkpointing.make_manager(gan, out.model_dir, out.keep_checkpoints)
        if start >= end:
            logging.info("%s is already trained to step %d (>= %d): nothing to do.", config.model_dir, start, end)
        else:
            logging.info("Training %s from step %d to %d.", config.model_dir, start, end)
            try:
                run_steps(out, gan, strategy, source, start, end, manager, stop)
            except (OSError, tf.errors.ResourceExhaustedError) as e:  # a full disk under a grid or events file
                if not checkpointing.is_disk_full(e):
                    raise
                raise checkpointing.disk_full_error(run_manager, e) from e
    step = int(gan.step.numpy())
    if step < end:
        logging.warning("Stopped at step %d of %d (%s); its checkpoint is in %s. Re-run the same command to "
                        "resume.", step, end, stop.received or "preempted on another worker", run_manager.directory)
    elif config.export_dir and chief:
        export_final(gan, config, step)
    distribute.wait_for_workers(strategy)  # no worker exits while the chief still exports
    return gan


def export_final(gan: DCGAN, config: Config, step: int) -> None:
    """Export the trained generator as version `step`, unless a re-run finds that version already there.

    With in-training FID (--fid_every) it exports the best-FID checkpoint (model_dir/best), not the last step.
    """
    if config.fid_every:
        from dcgan_tf.evaluation.callback import load_best

        gan, step = load_best(config, default=(gan, step))
    if step in export.existing_versions(config.export_dir):
        logging.info("%s/%d already exists: not exporting again.", config.export_dir, step)
        return
    export.export_generator(gan, config, config.export_dir)


def restore(config: Config, gan: DCGAN, manager: tf.train.CheckpointManager, chief: bool) -> int:
    """Restore the run's newest readable checkpoint (every worker reads model_dir), or for a new --init_from run
    the other run's networks; the step to start from.

    The chief then records the resolved config.
    """
    if checkpointing.restore_latest(manager.checkpoint, manager.directory) is None and config.initialized_from:
        finetune.initialize(gan, config)  # a new --init_from run; a run with checkpoints resumed above
    if chief:
        checkpointing.save_config(config)
    return int(gan.step.numpy())


def run_steps(config: Config, gan: DCGAN, strategy: tf.distribute.Strategy, source: input_pipeline.Source,
              start: int, end: int, manager: tf.train.CheckpointManager, stop: callbacks_lib.StopSignal) -> None:
    """Steps start..end with fit(), or with the custom loop under a multi-worker strategy, which Keras 3's fit()
    cannot drive (keras#20585)."""
    bar = callbacks_lib.progress_bar_verbose(config.verbose, sys.stdout.isatty())  # Keras's bar: terminals only
    if distribute.needs_custom_loop(strategy):
        custom_loop.train_loop(config.replace(verbose=bar), gan, strategy, source, start, end,
                               make_callbacks(config, gan, manager, end_step=end), stop)
        return
    dataset = input_pipeline.make_dataset(config, start_step=start, source=source)
    gan.fit(dataset, epochs=1, shuffle=False, steps_per_epoch=end - start, verbose=bar,
            callbacks=make_callbacks(config, gan, manager, stop, end_step=end))


# ---------------------------------------------------------------------------------------------------------
# Command line: one flag per Config field, its help text the field's comment in config.py (see dcgan_tf/cli.py).

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define one absl flag per Config field, with the field's default."""
    cli.define_config_flags()


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a message that says where a bad flag may come from (a flagfile) and the fix."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        flagfiles = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--flagfile=")]
        where = f"the command line or the flagfile {', '.join(flagfiles)}" if flagfiles else "the command line"
        sys.stderr.write(f"FATAL Flags parsing error: {e}\nFix the flag in {where}; "
                         f"python -m dcgan_tf.train --helpfull lists every flag.\n")
        sys.exit(1)


def config_from_command(flag_values: flags.FlagValues) -> Config:
    """The command's Config: its flags for a new run; resuming, the flags it gives over the run's own config.json.

    A resumed run keeps the settings it was started with unless the command sets them again, so a newer package
    whose defaults differ (e.g. --g_ema_decay) does not change a run half-way; the log names what was kept.
    """
    config = cli.config_from_flags(flag_values)
    saved = checkpointing.read_run_config(config.model_dir)
    if saved is None:
        return config
    # model_dir is where the saved config was read: the command's, even if the run was copied from elsewhere.
    given = [name for name in cli.CONFIG_FLAGS if name == "model_dir" or flag_values[cli.flag_name(name)].present]
    resumed = cli.config_from_flags(flag_values, fields=given, base=saved)
    kept = [f"--{cli.flag_name(name)}={getattr(saved, name)!r} (default {getattr(config, name)!r})"
            for name in cli.CONFIG_FLAGS if name not in given and getattr(saved, name) != getattr(config, name)]
    if kept:
        logging.info("Resuming %s with its own settings where the command sets none: %s. Pass a flag to change it.",
                     config.model_dir, ", ".join(kept))
    return resumed


def main(argv: list[str]) -> None:
    """CLI entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: every setting is a --flag (see --helpfull)")
    try:
        train(config_from_command(FLAGS))
    except (ConfigError, input_pipeline.DatasetError, checkpointing.CheckpointError,
            callbacks_lib.DivergenceError, export.ExportError, EvaluationError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
