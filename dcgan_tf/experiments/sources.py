"""Where samples and real images come from: a training run, a SavedModel export, or a TF Serving server.

Each source becomes a `Generator`: a `generate(z) -> images` callable (float32 z [B, nz] -> float32 images
[B, S, S, C] in [-1, 1], evaluated in batches) plus what is known about it. Only a training run carries the
networks themselves (`networks`), which filter ablation and discriminator visualisation need.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dcgan_tf import checkpointing
from dcgan_tf.config import Config
from dcgan_tf.gan import DCGAN

GenerateFn = Callable[[np.ndarray], np.ndarray]
SERVING_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY


class SourceError(RuntimeError):
    """The model to explore cannot be loaded or lacks what an experiment needs; the message names the fix."""


@dataclasses.dataclass
class Generator:
    """A generate(z) callable and what is known about the model behind it."""

    generate: GenerateFn
    nz: int
    z_dist: str
    description: str
    config: Config | None = None  # the training config (a run's, or the one an export carries)
    networks: tuple[keras.Model, keras.Model] | None = None  # (G, D) of a training run; G is what generate runs

    def require_networks(self, experiment: str) -> tuple[keras.Model, keras.Model]:
        """(generator, discriminator), or a SourceError saying that `experiment` needs --model_dir."""
        if self.networks is None:
            raise SourceError(f"{experiment} needs the trained networks themselves (feature maps / the "
                              f"discriminator), which {self.description} does not expose: pass --model_dir=RUN_DIR "
                              "of the training run instead")
        return self.networks


def in_batches(fn: GenerateFn, batch_size: int) -> GenerateFn:
    """Wrap `fn` so that it is called on at most `batch_size` rows at a time; returns float32 numpy."""

    def generate(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float32)
        if len(z) == 0:
            raise ValueError("generate() needs at least one z")
        parts = [np.asarray(fn(z[i:i + batch_size]), np.float32) for i in range(0, len(z), batch_size)]
        return np.concatenate(parts, axis=0)

    return generate


def from_gan(gan: DCGAN, config: Config, batch_size: int = 64, description: str = "an in-memory generator",
             bn_samples: int = 0) -> Generator:
    """A Generator over an in-memory DCGAN, in inference mode.

    G is the model's output generator (G's EMA unless the run, or load_run's g_ema, says raw G), as exports
    use. With bn_samples > 0 it runs a copy of G whose BatchNorm statistics are re-estimated from that many z,
    exactly as dcgan_tf.export does, so a run and its export draw the same images.
    """
    generator = gan.output_generator
    if bn_samples > 0:
        from dcgan_tf import export  # the serving export (issue 3) owns the precise-BatchNorm recipe

        generator = export.inference_copy(generator, config)
        export.reestimate_batchnorm(generator, config, bn_samples)

    def generate(z: np.ndarray) -> np.ndarray:
        return generator(tf.constant(z), training=False).numpy()

    return Generator(in_batches(generate, batch_size), gan.latent_dim, gan.z_dist, description, config,
                     (generator, gan.discriminator))


def from_model_dir(model_dir: str, batch_size: int = 64, bn_samples: int = 0, g_ema: bool | None = None) -> Generator:
    """A Generator over the latest checkpoint of the training run in `model_dir` (see from_gan for bn_samples).

    `g_ema`: G's EMA (True) or the raw G (False); None = the run's own choice (EMA by default).
    """
    config, gan = checkpointing.load_run(model_dir, g_ema=g_ema)
    step = int(gan.step.numpy())
    logging.info("Loaded run %s at step %d (%s generator).", model_dir, step, gan.output_generator_name)
    return from_gan(gan, config, batch_size,
                    f"the training run {model_dir} (step {step}, {gan.output_generator_name} generator)", bn_samples)


def latest_version_dir(export_dir: str) -> str:
    """export_dir itself if it holds saved_model.pb, else its highest-numbered version folder (TF Serving's)."""
    if tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    if not tf.io.gfile.isdir(export_dir):
        raise SourceError(f"export_dir {export_dir!r} does not exist; export a run first (python -m "
                          "dcgan_tf.train ... --export_dir=DIR) or pass the right --export_dir")
    versions = [int(name) for name in tf.io.gfile.listdir(export_dir) if name.strip("/").isdigit()]
    versions = [v for v in versions if tf.io.gfile.exists(os.path.join(export_dir, str(v), "saved_model.pb"))]
    if not versions:
        raise SourceError(f"no SavedModel version under {export_dir!r} (expected {export_dir}/<N>/saved_model.pb)")
    return os.path.join(export_dir, str(max(versions)))


def export_config(saved_model_dir: str) -> Config | None:
    """The training config an export carries as an asset (dcgan_tf.export), or None for other SavedModels."""
    from dcgan_tf import export  # the serving export (issue 3)

    try:
        return Config.from_dict(export.read_export_config(saved_model_dir)["config"])
    except (OSError, KeyError, ValueError) as e:
        logging.info("No dcgan_tf config asset in %s (%s).", saved_model_dir, e)
        return None


def from_export_dir(export_dir: str, z_dist: str | None = None, batch_size: int = 64) -> Generator:
    """A Generator over the latest SavedModel version in `export_dir` (its serving_default signature).

    z_dist defaults to the one recorded in the export's config asset, else the paper's uniform.
    """
    path = latest_version_dir(export_dir)
    loaded = tf.saved_model.load(path)
    if SERVING_SIGNATURE not in loaded.signatures:
        raise SourceError(f"{path} has no {SERVING_SIGNATURE!r} signature (it has {list(loaded.signatures)}); "
                          "export it with python -m dcgan_tf.export")
    signature = loaded.signatures[SERVING_SIGNATURE]
    inputs = signature.structured_input_signature[1]
    if "z" not in inputs or "images_float" not in signature.structured_outputs:
        raise SourceError(f"{path}'s {SERVING_SIGNATURE} maps {sorted(inputs)} to "
                          f"{sorted(signature.structured_outputs)}, not z to images_float; export it with "
                          "python -m dcgan_tf.export")
    nz = int(inputs["z"].shape[-1])
    config = export_config(path)
    z_dist = z_dist or (config.z_dist if config else "uniform")

    def generate(z: np.ndarray) -> np.ndarray:
        return signature(z=tf.constant(z, tf.float32))["images_float"].numpy()

    logging.info("Loaded SavedModel %s (nz=%d, z_dist=%s).", path, nz, z_dist)
    return Generator(in_batches(generate, batch_size), nz, z_dist, f"the export {path}", config, None)


def from_server(address: str, nz: int = 0, z_dist: str | None = None, model_name: str = "dcgan",
                batch_size: int = 64, timeout_s: float = 60.0) -> Generator:
    """A Generator asking a TF Serving server (or serving.local_server) at host:port over gRPC.

    nz defaults to the size of `z` in the served signature (GetModelMetadata); z_dist to the paper's uniform.
    """
    try:
        import grpc

        from serving import client  # the repository's client; needs tensorflow-serving-api and grpcio
    except ImportError as e:
        raise SourceError(f"--server needs tensorflow-serving-api, grpcio and the repository's serving/client.py "
                          f"(run from the repository root): {e}") from None
    stub = client.make_stub(address)
    if nz <= 0:
        try:
            nz = served_nz(client.get_metadata(stub, model_name, timeout=timeout_s))
        except grpc.RpcError as e:
            raise SourceError(f"cannot ask {address} for model {model_name!r}: {e.code().name} {e.details()}. "
                              "Is the server running and the --model_name right?") from None

    def generate(z: np.ndarray) -> np.ndarray:
        return client.generate(stub, z, model=model_name, output="images_float", timeout=timeout_s)

    return Generator(in_batches(generate, batch_size), nz, z_dist or "uniform",
                     f"the server {address} (model {model_name})")


def served_nz(metadata: dict) -> int:
    """The latent size from GetModelMetadata's serving_default input `z` ([batch, nz])."""
    try:
        dims = metadata["signature_def"][SERVING_SIGNATURE]["inputs"]["z"]["tensor_shape"]["dim"]
        return int(dims[-1]["size"])
    except (KeyError, IndexError, ValueError):
        raise SourceError(f"the served model's {SERVING_SIGNATURE} has no input z [batch, nz]; pass --nz") from None
