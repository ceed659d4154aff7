"""Evaluate a trained DCGAN; every command prints its results as one JSON object.

  python -m dcgan_tf.evaluate features --model_dir=runs/x [--dataset=fashion_mnist] [--labels_per_class=100]
      The paper's representation test: D's conv features max-pooled to 4x4, concatenated, L2-SVM; with the
      raw-pixel and random-D baselines.
  python -m dcgan_tf.evaluate train-classifier --dataset=fashion_mnist --image_size=32 \\
      --classifier_path=runs/fmnist_classifier.keras
      A small CNN whose features replace Inception's for small grayscale sets.
  python -m dcgan_tf.evaluate fid --model_dir=runs/x | --export_dir=exports/dcgan | --samples=peer.npy \
      [--extractor=classifier|resnet --classifier_path=...]
      FID and KID of generated vs real images, with the real-vs-real floor and an untrained generator; for a
      run, of G's EMA (or --g_ema=false: the raw G), and also of its best-FID checkpoint (model_dir/best);
      --samples scores images made elsewhere (e.g. another implementation's) in the same feature spaces.
"""

from __future__ import annotations

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

import dataclasses
import json
import os
import sys

from absl import app, flags, logging

from dcgan_tf import checkpointing, cli
from dcgan_tf.config import Config, ConfigError, validate_dataset_name
from dcgan_tf.evaluation import fid as fid_lib
from dcgan_tf.evaluation import data as data_lib
from dcgan_tf.evaluation import reports, svm
from dcgan_tf.export import DEFAULT_BN_SAMPLES
from dcgan_tf.gan import DCGAN
from dcgan_tf.input_pipeline import DatasetError

COMMANDS = ("features", "fid", "train-classifier")


@dataclasses.dataclass
class Options:
    """Every setting of an evaluate command; one --flag each, its help the comment."""

    model_dir: str | None = None  # Training run to evaluate (config.json + latest checkpoint).
    checkpoint_step: int = 0  # Evaluate the run's checkpoint of this step (ckpt-N); 0 = the latest.
    export_dir: str | None = None  # fid only: a serving export (version folder or base) instead of a run.
    samples: str | None = None  # fid only: a .npy of images [N,S,S,C] made elsewhere (float in [-1,1] or uint8)
                                # instead of a run; needs --dataset (and --image_size/--channels of the images).
    dataset: str | None = None  # Real data (default: the run's dataset); labelled for features.
    data_dir: str | None = None  # TFDS data_dir (default: the run's).
    image_size: int = 32  # train-classifier and fid --samples: image size (use the GAN's).
    channels: int = 0  # train-classifier and fid --samples: channels, 0 = the dataset's own (use the GAN's).
    seed: int = 0  # Seeds the SVM's validation/labelled splits and the generated z.
    baselines: list[str] | None = None  # features: pixels,random_d (default both); fid: real,untrained
                                        # (default both). Empty for none.
    output: str = ""  # Also write the JSON result to this file.
    # features
    labels_per_class: int = 0  # Class-balanced labelled examples per class; 0 = all labels.
    train_examples: int = 0  # With all labels: use a random subset this big (bounds SVM time).
    validation_examples: int = 10_000  # Held out of the train split to choose C (paper: 10,000).
    test_examples: int = 0  # Use the first N test images; 0 = the whole test split.
    c_grid: tuple[float, ...] = svm.DEFAULT_C_GRID  # SVM C values tried on validation.
    # fid
    num_samples: int = 10_000  # Generated and real images compared (the FID's sample size).
    split: str = "train"  # fid: the split of --dataset the real images come from (e.g. test).
    extractor: str = "inception"  # Feature space of FID/KID: inception, classifier (the project's CNN) or resnet
                                  # (an independent classifier: other architecture and recipe).
    inception_weights: str = "imagenet"  # 'imagenet' (downloaded by Keras) or the path of InceptionV3's notop
                                         # .h5 weights.
    classifier_path: str = ""  # The .keras classifier (train-classifier writes it, fid reads it).
    kid_subsets: int = fid_lib.KID_SUBSETS  # Random subsets averaged by KID.
    g_ema: bool | None = None  # --model_dir: evaluate G's EMA (true) or the raw G (false); default: the run's
                               # own --g_ema.
    best: bool = True  # --model_dir: also evaluate the best-FID checkpoint that --fid_every keeps in
                       # model_dir/best (reported as best_step), when there is one.
    bn_samples: int = DEFAULT_BN_SAMPLES  # --model_dir: re-estimate G's BatchNorm from this many z, as the
                                          # export does; 0 = off.
    # train-classifier
    architecture: str = "cnn"  # train-classifier: cnn (read by --extractor=classifier) or resnet
                               # (--extractor=resnet).
    epochs: int = 5  # train-classifier: epochs.
    batch_size: int = 128  # train-classifier: batch size.


CHOICES = {"extractor": list(fid_lib.EXTRACTORS), "architecture": list(fid_lib.ARCHITECTURES)}


def with_data(config: Config, dataset: str | None, data_dir: str | None) -> Config:
    """The run's config with another dataset and/or data_dir (None keeps the run's)."""
    changes = {k: v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v is not None}
    config = config.replace(**changes)
    validate_dataset_name(config.dataset)
    return config


def load_model(model_dir: str | None, checkpoint_step: int = 0, g_ema: bool | None = None) -> tuple[Config, DCGAN]:
    """The run in `model_dir` at its latest checkpoint, or at `checkpoint_step`; G's EMA or raw G per `g_ema`."""
    if not model_dir:
        raise app.UsageError("pass --model_dir=DIR of a training run")
    config, gan = checkpointing.load_run(model_dir, g_ema=g_ema, checkpoint_step=checkpoint_step)
    return config, gan


def load_best_generator(config: Config, model_dir: str, bn_samples: int) -> tuple[dict, object] | None:
    """({"step", "in_training_fid", ...}, inference G) of the run's best-FID checkpoint, or None if it has none."""
    from dcgan_tf.evaluation.callback import BEST_SUBDIR, read_best

    best_dir = os.path.join(model_dir, BEST_SUBDIR)
    best = read_best(best_dir)
    if best is None:
        return None
    best_config, best_gan = checkpointing.load_run(best_dir, g_ema=config.g_ema)
    info = {"step": int(best_gan.step.numpy()), "in_training_fid": best["fid"],
            "in_training_samples": best["num_samples"], "generator": best_gan.output_generator_name}
    return info, fid_lib.inference_generator(best_gan.output_generator, best_config, bn_samples)


def run_features(opts: Options) -> dict:
    """`features`: the SVM protocol on the run's discriminator."""
    config, gan = load_model(opts.model_dir, opts.checkpoint_step, opts.g_ema)
    config = with_data(config, opts.dataset, opts.data_dir)
    baselines = reports.FEATURE_BASELINES if opts.baselines is None else opts.baselines
    report = reports.feature_svm_report(
        config, gan.discriminator, opts.labels_per_class, opts.train_examples, opts.validation_examples,
        opts.test_examples, baselines, list(opts.c_grid), opts.seed)
    return {"command": "features", "model_dir": opts.model_dir, "step": int(gan.step.numpy()),
            "dataset": config.dataset, **report}


def run_fid(opts: Options) -> dict:
    """`fid`: FID/KID of a run's or an export's generator, or of a .npy of samples."""
    if sum(bool(x) for x in (opts.model_dir, opts.export_dir, opts.samples)) != 1:
        raise app.UsageError("pass exactly one of --model_dir (a training run), --export_dir (a serving export) "
                             "or --samples (a .npy of images)")
    if opts.samples and not opts.dataset:
        raise app.UsageError("--samples needs --dataset (the real images to compare with)")
    extractor = fid_lib.make_extractor(opts.extractor, opts.inception_weights, opts.classifier_path)
    others, best = {}, None
    baselines = reports.FID_BASELINES if opts.baselines is None else opts.baselines
    if opts.model_dir:
        config, gan = load_model(opts.model_dir, opts.checkpoint_step, opts.g_ema)
        generator = fid_lib.inference_generator(gan.output_generator, config, opts.bn_samples)
        step = int(gan.step.numpy())
        source = {"model_dir": opts.model_dir, "generator": gan.output_generator_name}
        best = load_best_generator(config, opts.model_dir, opts.bn_samples) if opts.best else None
        if best is not None:
            others["best_step"] = best[1]
    elif opts.export_dir:
        generator, config = fid_lib.load_exported_generator(opts.export_dir)
        source, step = {"export_dir": opts.export_dir, "generator": "ema" if config.g_ema else "raw"}, None
    else:
        if "untrained" in baselines and opts.baselines is not None:
            raise app.UsageError("--samples has no generator architecture for the 'untrained' baseline: pass "
                                 "--baselines=real or --baselines=")
        baselines = [b for b in baselines if b != "untrained"]
        config = Config(dataset=opts.dataset, data_dir=opts.data_dir, image_size=opts.image_size,
                        channels=opts.channels, seed=opts.seed)
        validate_dataset_name(config.dataset)
        real_shape = data_lib.load_real_images(config, 1).shape[1:]
        generator = fid_lib.load_samples(opts.samples, opts.num_samples, real_shape)
        source, step = {"samples": opts.samples, "generator": "samples"}, None
    config = with_data(config, opts.dataset, opts.data_dir)
    report = reports.fid_report(config, generator, extractor, opts.num_samples, baselines, opts.bn_samples,
                                opts.kid_subsets, opts.seed, split=opts.split, others=others)
    if best is not None:
        report["best_step"] = {**best[0], **report["best_step"]}
    return {"command": "fid", **source, "step": step, "dataset": config.dataset, "extractor": opts.extractor,
            **({"classifier_path": opts.classifier_path} if opts.extractor != "inception" else {}),
            **report}


def run_train_classifier(opts: Options) -> dict:
    """`train-classifier`: the dataset's own FID feature network."""
    if not opts.dataset or not opts.classifier_path:
        raise app.UsageError("train-classifier needs --dataset and --classifier_path=PATH.keras")
    config = Config(dataset=opts.dataset, data_dir=opts.data_dir, image_size=opts.image_size,
                    channels=opts.channels, seed=opts.seed, verbose=2)
    validate_dataset_name(config.dataset)
    result = fid_lib.train_classifier(config, opts.classifier_path, opts.epochs, opts.batch_size,
                                      architecture=opts.architecture)
    return {"command": "train-classifier", "dataset": config.dataset, **result}


RUNNERS = {"features": run_features, "fid": run_fid, "train-classifier": run_train_classifier}


# ---------------------------------------------------------------------------------------------------------
# Command line: one flag per Options field, its help text the field's comment above (see dcgan_tf/cli.py).

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The evaluate CLI's flags: one per Options field."""
    cli.define_flags(Options, choices=CHOICES)


def main(argv: list[str]) -> None:
    """CLI entry point: run the command, print its JSON result."""
    from dcgan_tf import startup

    startup.log_devices()
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m dcgan_tf.evaluate {{{'|'.join(COMMANDS)}}} --flags...; got "
                             f"{argv[1:]}")
    try:
        opts = cli.read_flags(Options, FLAGS)  # a list flag's values checked here (cli.FlagError is a ValueError)
        result = RUNNERS[argv[1]](opts)
    except (ConfigError, DatasetError, checkpointing.CheckpointError, fid_lib.EvaluationError, ValueError) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")
    if opts.output:
        reports.write_json(opts.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
