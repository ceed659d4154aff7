"""Evaluate a trained DCGAN; every command prints its results as one JSON object.

  python -m dcgan_tf.evaluate features --model_dir=runs/x [--dataset=fashion_mnist] [--labels_per_class=100]
      The paper's representation test: D's conv features max-pooled to 4x4, concatenated, L2-SVM; with the
      raw-pixel and random-D baselines.
  python -m dcgan_tf.evaluate train-classifier --dataset=fashion_mnist --image_size=32 \\
      --classifier_path=runs/fmnist_classifier.keras
      A small CNN whose features replace Inception's for small grayscale sets.
  python -m dcgan_tf.evaluate fid --model_dir=runs/x | --export_dir=exports/dcgan [--extractor=classifier ...]
      FID and KID of generated vs real images, with the real-vs-real floor and an untrained generator; for a
      run, of G's EMA (or --g_ema=false: the raw G), and also of its best-FID checkpoint (model_dir/best).
"""

from __future__ import annotations

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

import json
import os
import sys

from absl import app, flags, logging

from dcgan_tf import checkpointing
from dcgan_tf.config import Config, ConfigError, validate_dataset_name
from dcgan_tf.evaluation import fid as fid_lib
from dcgan_tf.evaluation import reports, svm
from dcgan_tf.export import DEFAULT_BN_SAMPLES
from dcgan_tf.gan import DCGAN
from dcgan_tf.input_pipeline import DatasetError

COMMANDS = ("features", "fid", "train-classifier")
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The evaluate CLI's flags."""
    flags.DEFINE_string("model_dir", None, "Training run to evaluate (config.json + latest checkpoint).")
    flags.DEFINE_integer("checkpoint_step", 0, "Evaluate the run's checkpoint of this step (ckpt-N); 0 = the latest.")
    flags.DEFINE_string("export_dir", None, "fid only: a serving export (version folder or base) instead of a run.")
    flags.DEFINE_string("dataset", None, "Real data (default: the run's dataset); labelled for features.")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the run's).")
    flags.DEFINE_integer("image_size", 32, "train-classifier: image size (use the GAN's).")
    flags.DEFINE_integer("channels", 0, "train-classifier: channels, 0 = the dataset's own (use the GAN's).")
    flags.DEFINE_integer("seed", 0, "Seeds the SVM's validation/labelled splits and the generated z.")
    flags.DEFINE_list("baselines", None, "features: pixels,random_d (default both); fid: real,untrained "
                                         "(default both). Empty for none.")
    flags.DEFINE_string("output", "", "Also write the JSON result to this file.")
    # features
    flags.DEFINE_integer("labels_per_class", 0, "Class-balanced labelled examples per class; 0 = all labels.")
    flags.DEFINE_integer("train_examples", 0, "With all labels: use a random subset this big (bounds SVM time).")
    flags.DEFINE_integer("validation_examples", 10_000, "Held out of the train split to choose C (paper: 10,000).")
    flags.DEFINE_integer("test_examples", 0, "Use the first N test images; 0 = the whole test split.")
    flags.DEFINE_list("c_grid", [f"{c:g}" for c in svm.DEFAULT_C_GRID], "SVM C values tried on validation.")
    # fid
    flags.DEFINE_integer("num_samples", 10_000, "Generated and real images compared (the FID's sample size).")
    flags.DEFINE_enum("extractor", "inception", ["inception", "classifier"], "Feature space of FID/KID.")
    flags.DEFINE_string("inception_weights", "imagenet",
                        "'imagenet' (downloaded by Keras) or the path of InceptionV3's notop .h5 weights.")
    flags.DEFINE_string("classifier_path", "", "The .keras classifier (train-classifier writes it, fid reads it).")
    flags.DEFINE_integer("kid_subsets", fid_lib.KID_SUBSETS, "Random subsets averaged by KID.")
    flags.DEFINE_bool("g_ema", None, "--model_dir: evaluate G's EMA (true) or the raw G (false); default: the "
                                     "run's own --g_ema.")
    flags.DEFINE_bool("best", True, "--model_dir: also evaluate the best-FID checkpoint that --fid_every keeps "
                                    "in model_dir/best (reported as best_step), when there is one.")
    flags.DEFINE_integer("bn_samples", DEFAULT_BN_SAMPLES,
                         "--model_dir: re-estimate G's BatchNorm from this many z, as the export does; 0 = off.")
    # train-classifier
    flags.DEFINE_integer("epochs", 5, "train-classifier: epochs.")
    flags.DEFINE_integer("batch_size", 128, "train-classifier: batch size.")


def _with_data_flags(config: Config) -> Config:
    """The run's config with --dataset/--data_dir applied."""
    changes = {k: getattr(FLAGS, k) for k in ("dataset", "data_dir") if getattr(FLAGS, k) is not None}
    config = config.replace(**changes)
    validate_dataset_name(config.dataset)
    return config


def load_model() -> tuple[Config, DCGAN]:
    """The run in --model_dir at its latest checkpoint, or at --checkpoint_step."""
    if not FLAGS.model_dir:
        raise app.UsageError("pass --model_dir=DIR of a training run")
    config, gan = checkpointing.load_run(FLAGS.model_dir, g_ema=FLAGS.g_ema)
    if FLAGS.checkpoint_step:
        manager = checkpointing.make_manager(gan, FLAGS.model_dir, config.keep_checkpoints)
        wanted = [p for p in manager.checkpoints if p.endswith(f"ckpt-{FLAGS.checkpoint_step}")]
        if not wanted:
            steps = [p.rsplit("-", 1)[-1] for p in manager.checkpoints]
            raise checkpointing.CheckpointError(f"{FLAGS.model_dir} has no checkpoint of step "
                                                f"{FLAGS.checkpoint_step}; it has steps {steps}")
        checkpointing.restore_checkpoint(manager.checkpoint, wanted[0])
    return config, gan


def load_best_generator(config: Config) -> tuple[dict, object] | None:
    """({"step", "in_training_fid", ...}, inference G) of the run's best-FID checkpoint, or None if it has none."""
    from dcgan_tf.evaluation.callback import BEST_SUBDIR, read_best

    best_dir = os.path.join(FLAGS.model_dir, BEST_SUBDIR)
    best = read_best(best_dir)
    if best is None:
        return None
    best_config, best_gan = checkpointing.load_run(best_dir, g_ema=config.g_ema)
    info = {"step": int(best_gan.step.numpy()), "in_training_fid": best["fid"],
            "in_training_samples": best["num_samples"], "generator": best_gan.output_generator_name}
    return info, fid_lib.inference_generator(best_gan.output_generator, best_config, FLAGS.bn_samples)


def run_features() -> dict:
    """`features`: the SVM protocol on the run's discriminator."""
    config, gan = load_model()
    config = _with_data_flags(config)
    baselines = reports.FEATURE_BASELINES if FLAGS.baselines is None else FLAGS.baselines
    report = reports.feature_svm_report(
        config, gan.discriminator, FLAGS.labels_per_class, FLAGS.train_examples, FLAGS.validation_examples,
        FLAGS.test_examples, baselines, [float(c) for c in FLAGS.c_grid], FLAGS.seed)
    return {"command": "features", "model_dir": FLAGS.model_dir, "step": int(gan.step.numpy()),
            "dataset": config.dataset, **report}


def run_fid() -> dict:
    """`fid`: FID/KID of a run's or an export's generator."""
    if bool(FLAGS.model_dir) == bool(FLAGS.export_dir):
        raise app.UsageError("pass exactly one of --model_dir (a training run) or --export_dir (a serving export)")
    extractor = fid_lib.make_extractor(FLAGS.extractor, FLAGS.inception_weights, FLAGS.classifier_path)
    others, best = {}, None
    if FLAGS.model_dir:
        config, gan = load_model()
        generator = fid_lib.inference_generator(gan.output_generator, config, FLAGS.bn_samples)
        step = int(gan.step.numpy())
        source = {"model_dir": FLAGS.model_dir, "generator": gan.output_generator_name}
        best = load_best_generator(config) if FLAGS.best else None
        if best is not None:
            others["best_step"] = best[1]
    else:
        generator, config = fid_lib.load_exported_generator(FLAGS.export_dir)
        source, step = {"export_dir": FLAGS.export_dir, "generator": "ema" if config.g_ema else "raw"}, None
    config = _with_data_flags(config)
    baselines = reports.FID_BASELINES if FLAGS.baselines is None else FLAGS.baselines
    report = reports.fid_report(config, generator, extractor, FLAGS.num_samples, baselines, FLAGS.bn_samples,
                                FLAGS.kid_subsets, FLAGS.seed, others=others)
    if best is not None:
        report["best_step"] = {**best[0], **report["best_step"]}
    return {"command": "fid", **source, "step": step, "dataset": config.dataset, "extractor": FLAGS.extractor,
            **({"classifier_path": FLAGS.classifier_path} if FLAGS.extractor == "classifier" else {}),
            **report}


def run_train_classifier() -> dict:
    """`train-classifier`: the dataset's own FID feature network."""
    if not FLAGS.dataset or not FLAGS.classifier_path:
        raise app.UsageError("train-classifier needs --dataset and --classifier_path=PATH.keras")
    config = Config(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, image_size=FLAGS.image_size,
                    channels=FLAGS.channels, seed=FLAGS.seed, verbose=2)
    validate_dataset_name(config.dataset)
    result = fid_lib.train_classifier(config, FLAGS.classifier_path, FLAGS.epochs, FLAGS.batch_size)
    return {"command": "train-classifier", "dataset": config.dataset, **result}


def main(argv: list[str]) -> None:
    """CLI entry point: run the command, print its JSON result."""
    from dcgan_tf import startup

    startup.log_devices()
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m dcgan_tf.evaluate {{{'|'.join(COMMANDS)}}} --flags...; got "
                             f"{argv[1:]}")
    runners = {"features": run_features, "fid": run_fid, "train-classifier": run_train_classifier}
    try:
        result = runners[argv[1]]()
    except (ConfigError, DatasetError, checkpointing.CheckpointError, fid_lib.EvaluationError, ValueError) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")
    if FLAGS.output:
        reports.write_json(FLAGS.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
