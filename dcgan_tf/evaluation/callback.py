"""A Keras callback tracking FID during training, logging it to TensorBoard and keeping the best checkpoint.

DCGAN quality often peaks and then degrades (StudioGAN's DCGAN on CIFAR-10: FID 49 at its best step, 137 at the
end), so the last checkpoint is not necessarily the one to keep. `best_dir` is itself a run directory
(config.json + checkpoints/ + best.json), so `load_run(best_dir)` and `evaluate --model_dir=best_dir` work on it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from absl import logging

from dcgan_tf import callbacks as callbacks_lib
from dcgan_tf import checkpointing
from dcgan_tf.config import Config
from dcgan_tf.evaluation.fid import (Extractor, as_unit_range, fid_from_features, generate_images,
                                     inference_generator, precision_recall)
from dcgan_tf.evaluation.reports import write_json
from dcgan_tf.export import DEFAULT_BN_SAMPLES
from dcgan_tf.gan import DCGAN

BEST_FILE = "best.json"
BEST_SUBDIR = "best"  # model_dir/best: the best-FID checkpoint as a run directory of its own
# The fixed z of the FID samples comes from its own seed, apart from the training noise and the sample grids.
Z_SEED_OFFSET = 1_000_003


def read_best(best_dir: str) -> dict | None:
    """The {"step", "fid", ...} record of the best checkpoint in best_dir, or None."""
    path = os.path.join(best_dir, BEST_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def take_images(real, num: int) -> np.ndarray:
    """The first `num` images of an array or of a tf.data.Dataset of batches (or (images, ...) tuples)."""
    if isinstance(real, tf.data.Dataset):
        batches, count = [], 0
        for batch in real.as_numpy_iterator():
            batch = batch[0] if isinstance(batch, tuple) else batch
            batches.append(batch)
            count += len(batch)
            if count >= num:
                break
        real = np.concatenate(batches) if batches else np.zeros((0,))
    if len(real) < num:
        raise ValueError(f"FID needs {num} real images, got {len(real)}; lower num_samples or pass more images")
    return as_unit_range(real[:num])


class FIDCallback(callbacks_lib.StepCallback):
    """Every `every_steps` steps: FID of `num_samples` fixed-z samples vs real images -> TensorBoard, best ckpt.

    `real`: images [N,S,S,C] (uint8, or float in [-1, 1]) or a tf.data.Dataset of such batches; the first
    num_samples are used. `extractor`: images in [-1, 1] -> features (fid.make_extractor, or any callable).
    Samples come from a copy of G whose BatchNorm statistics are re-estimated from `bn_samples` z, exactly as
    the serving export does, so the tracked FID is that of the model users get (0 = G's moving averages).
    """

    def __init__(self, config: Config, real, extractor: Extractor, every_steps: int, num_samples: int,
                 log_dir: str, best_dir: str | None = None, z_seed: int | None = None,
                 bn_samples: int = DEFAULT_BN_SAMPLES):
        super().__init__(every_steps)
        if every_steps <= 0 or num_samples < 2:
            raise ValueError(f"every_steps={every_steps} must be positive and num_samples={num_samples} >= 2")
        self.config = config
        self.extractor = extractor
        self.num_samples = num_samples
        self.log_dir = log_dir
        self.best_dir = best_dir
        self.z_seed = config.seed + Z_SEED_OFFSET if z_seed is None else z_seed
        self.bn_samples = bn_samples
        self.best = read_best(best_dir) if best_dir else None  # survives a resumed run
        self.history: list[tuple[int, float]] = []
        self.coverage: dict[str, float] | None = None  # precision and recall of the last compute_fid()
        self._real = real
        self._real_features: np.ndarray | None = None
        self._writer = None
        self._best_manager = None
        self._last_eval_step = -1

    def on_train_begin(self, logs=None) -> None:
        """Open the writer (once) and take the starting step."""
        super().on_train_begin(logs)
        self._writer = self._writer or tf.summary.create_file_writer(self.log_dir)

    def on_step(self, step: int, logs: dict) -> None:
        """Periodic evaluation."""
        self.evaluate(step)

    def on_train_end(self, logs=None) -> None:
        """Evaluate the final weights too, unless that step was just evaluated."""
        if self.step != self._last_eval_step and self.step > self.start_step:
            self.evaluate(self.step)

    def compute_fid(self) -> float:
        """FID of num_samples images from the fixed z against the real images' features."""
        if self._real_features is None:  # once per callback: the real side never changes
            self._real_features = self.extractor(take_images(self._real, self.num_samples))
            self._real = None
        gan = self.model
        generator = inference_generator(gan.output_generator, self.config, self.bn_samples)
        fake = generate_images(generator, self.num_samples, gan.latent_dim, gan.z_dist, self.z_seed)
        fake_features = self.extractor(fake)
        self.coverage = precision_recall(self._real_features, fake_features)  # logged by evaluate() next to FID
        return fid_from_features(self._real_features, fake_features)

    def evaluate(self, step: int) -> float:
        """Compute FID at `step`, log it as the scalar "fid", keep the checkpoint if it is the best so far."""
        self.coverage = None
        fid = self.compute_fid()
        self._last_eval_step = step
        self.history.append((step, fid))
        with self._writer.as_default():
            tf.summary.scalar("fid", fid, step=step)
            for name, value in (self.coverage or {}).items():  # "precision", "recall"
                tf.summary.scalar(name, value, step=step)
        self._writer.flush()
        is_best = self.best is None or fid < self.best["fid"]
        coverage = (f", precision {self.coverage['precision']:.3f}, recall {self.coverage['recall']:.3f}"
                    if self.coverage else "")
        logging.info("step %d: FID %.3f%s of the %s generator on %d samples%s", step, fid, coverage,
                     self.model.output_generator_name, self.num_samples, " (best)" if is_best else "")
        if self.best_dir and is_best:
            self._save_best(step, fid)
        return fid

    def _save_best(self, step: int, fid: float) -> None:
        """Checkpoint into best_dir (the manager renames shards and index into place), then record best.json."""
        if self._best_manager is None:
            checkpointing.save_config(self.config.replace(model_dir=self.best_dir))
            self._best_manager = checkpointing.make_manager(self.model, self.best_dir, keep=1)
        path = self._best_manager.save(checkpoint_number=step)
        self.best = {"step": step, "fid": fid, "num_samples": self.num_samples, "checkpoint": path,
                     "generator": self.model.output_generator_name}
        write_json(os.path.join(self.best_dir, BEST_FILE), self.best)


def best_dir_of(config: Config) -> str:
    """Where a run's FID callback keeps its best checkpoint."""
    return os.path.join(config.model_dir, BEST_SUBDIR)


def load_best(config: Config, default: tuple[DCGAN, int] | None = None) -> tuple[DCGAN, int] | None:
    """(DCGAN, step) of the run's best-FID checkpoint (model_dir/best), or `default` when there is none yet."""
    best_dir = best_dir_of(config)
    best = read_best(best_dir)
    if best is None:
        logging.warning("No best-FID checkpoint in %s: using the last step.", best_dir)
        return default
    _, gan = checkpointing.load_run(best_dir, g_ema=config.g_ema)
    logging.info("Best-FID checkpoint: step %d (FID %.3f of the %s generator), the run's last step is %s.",
                 best["step"], best["fid"], best.get("generator", "raw"), default[1] if default else "?")
    return gan, int(gan.step.numpy())


def make_fid_callback(config: Config, every_steps: int, num_samples: int, extractor: str = "classifier",
                      classifier_path: str = "", inception_weights: str = "imagenet") -> FIDCallback:
    """The callback for a training run: the first num_samples train images as the real side, TensorBoard
    scalar "fid" in model_dir/train (next to the losses), best checkpoint in model_dir/best.

    Builds the extractor now, so a missing classifier or Inception weights fail before training starts.
    """
    from dcgan_tf.evaluation import data as data_lib
    from dcgan_tf.evaluation.fid import make_extractor

    features = make_extractor(extractor, inception_weights, classifier_path)
    real = data_lib.load_real_images(config, num_samples, "train")
    return FIDCallback(config, real, features, every_steps, num_samples,
                       log_dir=os.path.join(config.model_dir, "train"),
                       best_dir=best_dir_of(config))
