"""Export the generator as a versioned SavedModel for TensorFlow Serving: `<export_base>/<version>/`.

`python -m dcgan_tf.export --model_dir=runs/x --export_dir=exports/dcgan [--version=N]`, or automatically at the
end of training when `--export_dir` is set.

Signatures (fixed names, documented in docs/serving.md):
  * `serving_default`: `z` float32 [batch, nz] -> `images` uint8 [batch, S, S, C], `images_float` float32 in [-1, 1];
  * `sample`: `num_images` int32 scalar, `seed` int64 scalar -> `images`, `images_float` and the `z` used
    (the same z as `DCGAN.sample_z(num_images, seed)`, so "16 images, seed 7" is the same every time);
  * `sample_seeds`: `seeds` int64 [batch] -> one image per seed (z of seed s = `DCGAN.sample_z(1, s)`), every
    input and output with a leading batch dimension, so TF Serving's `--enable_batching` can merge requests.
`sample` and `sample_seeds` refuse more than `max_images` images per request inside the graph (INVALID_ARGUMENT),
so the real TF Serving, which puts no bound on what a signature computes, enforces it too.

The SavedModel is written with `keras.export.ExportArchive`, which runs in TF Serving's session-based loader
(`saved_model_cli run`, `tf.compat.v1.saved_model.loader.load`); a `tf.Module` holding a Keras 3 model and saved
with `tf.saved_model.save` does not ("Could not find variable ...", tensorflow/serving#2250). The served graph is
float32 whatever precision the run trained in.

The generator runs in inference mode, so an image depends only on its own z. Its BatchNorm population statistics
are re-estimated from many z before export ("precise BatchNorm"): Keras's moving averages lag behind the weights
of a GAN, whose generator changes every step, and inference-mode samples from them look worse than the
training-mode samples seen during training. The re-estimation runs on a copy: the training run is untouched.

A version is written to a temporary sibling `<export_base>/.tmp-<version>-<pid>` and renamed into place, so TF
Serving (which ignores non-numeric folder names and loads a version folder as soon as it sees one) never loads a
half-written version. A version that already exists is never overwritten: the export fails with an ExportError.
"""

from __future__ import annotations

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

import json
import math
import os
import shutil
import sys
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from dcgan_tf import images as images_lib
from dcgan_tf.config import Config
from dcgan_tf.gan import sample_latent
from dcgan_tf.models import build_generator

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY  # "serving_default"
SAMPLE_SIGNATURE = "sample"
SEEDS_SIGNATURE = "sample_seeds"
SIGNATURES = (DEFAULT_SIGNATURE, SAMPLE_SIGNATURE, SEEDS_SIGNATURE)
# Signatures with a leading batch dimension on every input: TF Serving can batch them, so only they get
# warm-up records (with --enable_batching a `sample` warm-up would fail, and with it the whole load).
BATCHABLE_SIGNATURES = (DEFAULT_SIGNATURE, SEEDS_SIGNATURE)
CONFIG_ASSET = "dcgan_config.json"  # lands in <version>/assets/
# TF Serving replays these requests before serving a version (first requests are then fast).
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DEFAULT_BN_SAMPLES = 2048
DEFAULT_MAX_IMAGES = 1024  # per sample / sample_seeds request, enforced in the graph
# Second word of the stateless seed of the z used to re-estimate BatchNorm: apart from sample()'s seeds [s, 0].
_BN_SEED_WORD = 0x5EED


class ExportError(RuntimeError):
    """The export cannot be written; the message names the fix."""


class ServingFunctions:
    """The three signatures' functions over one (float32, inference) generator, traced by ExportArchive."""

    def __init__(self, generator: keras.Model, nz: int, z_dist: str, max_images: int):
        self.generator = generator
        self.nz = nz
        self.z_dist = z_dist
        self.max_images = max_images

    def endpoints(self) -> list[tuple[str, Any, list[tf.TensorSpec]]]:
        """(signature name, function, input signature) of every signature, serving_default first."""
        return [
            (DEFAULT_SIGNATURE, self.from_z, [tf.TensorSpec([None, self.nz], tf.float32, name="z")]),
            (SAMPLE_SIGNATURE, self.sample, [tf.TensorSpec([], tf.int32, name="num_images"),
                                             tf.TensorSpec([], tf.int64, name="seed")]),
            (SEEDS_SIGNATURE, self.sample_seeds, [tf.TensorSpec([None], tf.int64, name="seeds")]),
        ]

    def _images(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
        """Both image outputs for z, in inference mode."""
        images_float = tf.cast(self.generator(z, training=False), tf.float32)
        return {"images": images_lib.uint8_tensor(images_float), "images_float": images_float}

    def _check_count(self, count: tf.Tensor, what: str) -> tf.Operation:
        """An in-graph INVALID_ARGUMENT when a request asks for more than max_images images."""
        return tf.debugging.assert_less_equal(
            tf.cast(count, tf.int64), tf.constant(self.max_images, tf.int64),
            message=f"{what} must be <= {self.max_images}, the most images this export makes per request; "
                    "ask in several requests, or re-export with python -m dcgan_tf.export --max_images=N")

    def from_z(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
        """serving_default: images for the client's z (bounded by the request's size, which the client sends)."""
        # Checked in the graph so that TF Serving itself answers INVALID_ARGUMENT for NaN/Inf z.
        z = tf.debugging.check_numerics(z, "z must be finite (no NaN or Inf)")
        return self._images(z)

    def sample(self, num_images: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """sample: draw z from the seed on the server (same z as DCGAN.sample_z), then generate."""
        checks = [tf.debugging.assert_non_negative(num_images, message="num_images must be >= 0"),
                  self._check_count(num_images, "num_images")]
        with tf.control_dependencies(checks):
            z = sample_latent(num_images, self.nz, tf.stack([seed, tf.constant(0, tf.int64)]), self.z_dist)
        outputs = self._images(z)
        outputs["z"] = z
        return outputs

    def sample_seeds(self, seeds: tf.Tensor) -> dict[str, tf.Tensor]:
        """sample_seeds: one image per seed, z of seed s = DCGAN.sample_z(1, s), independent of the batch."""
        with tf.control_dependencies([self._check_count(tf.size(seeds), "the number of seeds")]):
            # One stateless draw per seed: an image depends only on its own seed, so merged batches are exact.
            z = tf.map_fn(
                lambda s: sample_latent(1, self.nz, tf.stack([s, tf.constant(0, tf.int64)]), self.z_dist)[0],
                seeds, fn_output_signature=tf.TensorSpec([self.nz], tf.float32))
        outputs = self._images(tf.ensure_shape(z, [None, self.nz]))
        outputs["z"] = z
        return outputs


def exported_generator(gan: Any) -> keras.Model:
    """The network a DCGAN run exports: the one place that chooses it (G's EMA unless the run says raw G)."""
    return gan.output_generator


def _generator_of(gan_or_generator: Any) -> tuple[keras.Model, int | None]:
    """(generator to export, training step or None) of a DCGAN or a bare generator."""
    if getattr(gan_or_generator, "generator", None) is not None:
        return exported_generator(gan_or_generator), int(gan_or_generator.step.numpy())
    if isinstance(gan_or_generator, keras.Model):
        return gan_or_generator, None
    raise ExportError(f"export_generator needs a DCGAN or a generator keras.Model, got {type(gan_or_generator)}")


def resolved_config(generator: keras.Model, config: Config) -> Config:
    """The config with nz/channels/image_size taken from the generator, which must agree with the config."""
    nz = int(generator.input_shape[-1])
    size, channels = int(generator.output_shape[1]), int(generator.output_shape[-1])
    if (config.nz, config.image_size) != (nz, size) or config.channels not in (0, channels):
        raise ExportError(
            f"the generator (nz={nz}, image_size={size}, channels={channels}) does not match the config "
            f"(nz={config.nz}, image_size={config.image_size}, channels={config.channels}); pass the run's own "
            "config (checkpointing.load_run returns both)")
    return config.replace(channels=channels)


def inference_copy(generator: keras.Model, config: Config) -> keras.Model:
    """A float32, non-distributed copy of the generator with the same weights (BatchNorm not synchronised)."""
    # float32 whatever the training computed in, so the served math is exact.
    copy = build_generator(config, name="generator", precision="none", sync_batchnorm=False)
    copy.set_weights(generator.get_weights())
    return copy


def reestimate_batchnorm(generator: keras.Model, config: Config, num_samples: int) -> int:
    """Set every BatchNorm's moving mean/variance to the average batch statistics over `num_samples` z.

    Precise BatchNorm: each layer's statistics are those the training-mode forward pass normalises with
    (batches of config.batch_size, earlier layers in training mode too), averaged over many batches. Modifies
    `generator` in place (call it on a copy); returns the number of z used.
    """
    bns = [layer for layer in generator.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns or num_samples <= 0:
        return 0
    probe = keras.Model(generator.inputs, [bn.input for bn in bns])
    batch = config.batch_size
    num_batches = max(1, math.ceil(num_samples / batch))

    @tf.function
    def batch_moments(seed: tf.Tensor) -> list[tuple[tf.Tensor, tf.Tensor]]:
        z = sample_latent(batch, config.nz, seed, config.z_dist)
        features = probe(z, training=True)
        return [tf.nn.moments(f, axes=list(range(len(f.shape) - 1))) for f in features]

    sums = [(np.zeros(bn.moving_mean.shape, np.float64), np.zeros(bn.moving_variance.shape, np.float64))
            for bn in bns]
    for i in range(num_batches):
        seed = tf.constant([config.seed, _BN_SEED_WORD + i], tf.int64)
        for (mean_sum, var_sum), (mean, var) in zip(sums, batch_moments(seed)):
            mean_sum += mean.numpy()
            var_sum += var.numpy()
    for bn, (mean_sum, var_sum) in zip(bns, sums):
        bn.moving_mean.assign((mean_sum / num_batches).astype(np.float32))
        bn.moving_variance.assign((var_sum / num_batches).astype(np.float32))
    logging.info("Re-estimated BatchNorm statistics of %d layers from %d z.", len(bns), num_batches * batch)
    return num_batches * batch


def existing_versions(export_base: str) -> list[int]:
    """Sorted integer version folders under export_base (what TF Serving would consider)."""
    if not os.path.isdir(export_base):
        return []
    return sorted(int(name) for name in os.listdir(export_base)
                  if name.isdigit() and os.path.isdir(os.path.join(export_base, name)))


def _choose_version(export_base: str, version: int | None, step: int | None) -> int:
    """The version to write: the given one, else the training step, else one above the newest."""
    existing = existing_versions(export_base)
    if version is None:
        version = step if step is not None else (existing[-1] + 1 if existing else 1)
    if version < 0:
        raise ExportError(f"version={version} must be a non-negative integer")
    if version in existing:
        raise ExportError(
            f"{os.path.join(export_base, str(version))} already exists and versions are never overwritten "
            f"(a server may be serving it). Train further (the version is the training step) or pass "
            f"--version={existing[-1] + 1}.")
    if existing and version < existing[-1]:
        logging.warning("Exporting version %d below the newest existing version %d: TF Serving keeps serving "
                        "version %d.", version, existing[-1], existing[-1])
    return version


def _config_payload(config: Config, version: int, step: int | None, bn_samples: int, max_images: int
                    ) -> dict[str, Any]:
    """What the config asset says: sizes, provenance and the signatures."""
    return {
        "nz": config.nz, "image_size": config.image_size, "channels": config.channels, "z_dist": config.z_dist,
        "step": step, "version": version, "batchnorm_samples": bn_samples, "max_images": max_images,
        "signatures": {
            DEFAULT_SIGNATURE: "z float32 [batch, nz] -> images uint8 [batch, S, S, C], images_float float32 "
                               "in [-1, 1]",
            SAMPLE_SIGNATURE: f"num_images int32 [] (<= {max_images}), seed int64 [] -> images, images_float, "
                              "z float32 [num_images, nz]",
            SEEDS_SIGNATURE: f"seeds int64 [batch] (<= {max_images}) -> images, images_float, z [batch, nz]; "
                             "z of seed s = DCGAN.sample_z(1, s)",
        },
        "config": config.to_dict(),
    }


def _write_config_asset(saved_model_dir: str, payload: dict[str, Any]) -> None:
    """<version>/assets/dcgan_config.json (a plain file in the assets folder TF Serving ships with the model)."""
    os.makedirs(os.path.join(saved_model_dir, "assets"), exist_ok=True)
    with open(os.path.join(saved_model_dir, "assets", CONFIG_ASSET), "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)


def warmup_requests(nz: int) -> list[Any]:
    """One PredictRequest per batchable signature (batch of one), as TF Serving replays them at load time."""
    from tensorflow_serving.apis import model_pb2, predict_pb2

    inputs = {DEFAULT_SIGNATURE: {"z": np.zeros([1, nz], np.float32)},
              SEEDS_SIGNATURE: {"seeds": np.zeros([1], np.int64)}}
    requests = []
    for name in BATCHABLE_SIGNATURES:
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=name))
        for key, value in inputs[name].items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        requests.append(request)
    return requests


def _write_warmup(saved_model_dir: str, nz: int) -> None:
    """assets.extra/tf_serving_warmup_requests (skipped without tensorflow-serving-api, only needed to serve)."""
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:  # tensorflow-serving-api is only needed for serving, not to train
        logging.info("tensorflow-serving-api not installed: no warmup requests written.")
        return
    os.makedirs(os.path.join(saved_model_dir, os.path.dirname(WARMUP_FILE)), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(saved_model_dir, WARMUP_FILE)) as writer:
        for request in warmup_requests(nz):
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def write_saved_model(generator: keras.Model, config: Config, max_images: int, path: str) -> None:
    """The SavedModel of the three signatures over `generator`, written with keras.export.ExportArchive."""
    archive = keras.export.ExportArchive()
    archive.track(generator)
    for name, function, input_signature in ServingFunctions(generator, config.nz, config.z_dist,
                                                            max_images).endpoints():
        archive.add_endpoint(name, function, input_signature=input_signature)
    archive.write_out(path, verbose=False)


def export_generator(
    gan_or_generator: Any,
    config: Config,
    export_base: str,
    version: int | None = None,
    bn_samples: int = DEFAULT_BN_SAMPLES,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> str:
    """Write `<export_base>/<version>/` for TF Serving atomically; returns that path.

    `version` defaults to the DCGAN's training step (for a bare generator: one above the newest existing
    version). An existing version raises ExportError. `bn_samples=0` keeps the trained moving averages.
    `max_images` bounds the images of one `sample`/`sample_seeds` request, inside the graph.
    """
    if max_images < 1:
        raise ExportError(f"max_images={max_images} must be >= 1 (the most images one sample request may ask for)")
    generator, step = _generator_of(gan_or_generator)
    config = resolved_config(generator, config)
    os.makedirs(export_base, exist_ok=True)
    version = _choose_version(export_base, version, step)
    final = os.path.join(export_base, str(version))
    tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
    copy = inference_copy(generator, config)
    used = reestimate_batchnorm(copy, config, bn_samples)
    try:
        write_saved_model(copy, config, max_images, tmp)
        _write_config_asset(tmp, _config_payload(config, version, step, used, max_images))
        _write_warmup(tmp, config.nz)
        # rename() of a directory onto an existing non-empty one fails, so a concurrent export cannot clobber it.
        os.rename(tmp, final)
    except OSError as e:
        raise ExportError(f"could not write {final}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logging.info("Exported the generator (step %s) to %s.", step, final)
    return final


def read_export_config(saved_model_dir: str) -> dict[str, Any]:
    """The config asset of an exported version (nz, image_size, channels, z_dist, step, full config)."""
    with open(os.path.join(saved_model_dir, "assets", CONFIG_ASSET)) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The export CLI's flags."""
    flags.DEFINE_string("model_dir", None, "Training run to export (its config.json + latest checkpoint).")
    flags.DEFINE_string("export_dir", None, "Export base path; the version goes to <export_dir>/<version>/.")
    flags.DEFINE_integer("version", None, "Version number (default: the training step). Never overwritten.")
    flags.DEFINE_integer("bn_samples", DEFAULT_BN_SAMPLES,
                         "z used to re-estimate BatchNorm statistics before export; 0 keeps the moving averages.")
    flags.DEFINE_integer("max_images", DEFAULT_MAX_IMAGES,
                         "Most images one `sample` or `sample_seeds` request may ask for (enforced in the graph).")
    flags.DEFINE_bool("g_ema", None, "Export G's EMA (true) or the raw G (false); default: the run's own choice.")
    flags.mark_flags_as_required(["model_dir", "export_dir"])


def main(argv: list[str]) -> None:
    """CLI entry point: load the run, export, print the result as JSON."""
    from dcgan_tf import startup

    startup.log_devices()
    from dcgan_tf import checkpointing

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        config, gan = checkpointing.load_run(FLAGS.model_dir, g_ema=FLAGS.g_ema)
        path = export_generator(gan, config, FLAGS.export_dir, FLAGS.version, FLAGS.bn_samples,
                                FLAGS.max_images)
    except (ExportError, checkpointing.CheckpointError) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")
    print(json.dumps({"export_path": path, "version": int(os.path.basename(path)),
                      "step": int(gan.step.numpy())}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
