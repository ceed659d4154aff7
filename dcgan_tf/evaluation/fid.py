"""FID and KID between real and generated images, and the feature extractors they are computed in.

FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to the two feature sets,
  |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)).
KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random
subsets; unbiased, so it is ~0 (and can be slightly negative) for two samples of one distribution.
Improved precision and recall (Kynkaanniemi et al. 2019, k = 3) in the same features: fidelity and coverage
apart, so mode dropping shows as low recall where FID only grows.

Extractors map float images [N, S, S, C] in [-1, 1] to features [N, D]:
  * InceptionExtractor: keras.applications InceptionV3 (ImageNet weights), 2048-d pool features at 299x299.
    Keras's port of the weights is not the 2015 TF graph that published FIDs used, so its values are close to
    but not comparable digit-for-digit with papers' FIDs.
  * ClassifierExtractor: the penultimate layer of a small CNN trained on the dataset itself
    (`train_classifier`), for small grayscale sets where ImageNet features say little.
"""

from __future__ import annotations

import os
from typing import Callable, Protocol

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dcgan_tf.config import Config
from dcgan_tf.evaluation import data as data_lib
from dcgan_tf.evaluation.features import predict_in_batches
from dcgan_tf.gan import sample_latent
from dcgan_tf.input_pipeline import scale_to_unit_range

INCEPTION_SIZE = 299
INCEPTION_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
                       "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")
CLASSIFIER_FEATURES_LAYER = "features"
PR_NEIGHBOURS = 3  # k of improved precision/recall's k-NN balls (Kynkaanniemi et al. 2019: k = 3)
PR_BATCH = 1000  # rows of the distance matrix computed at a time (memory: PR_BATCH x N float64)
# KID defaults of Binkowski et al.: 100 subsets of 1000 (fewer if fewer samples).
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000


class EvaluationError(RuntimeError):
    """A feature extractor or a generator to evaluate cannot be loaded; the message names the fix."""


class Extractor(Protocol):
    """Anything that maps float images [N,S,S,C] in [-1,1] to features [N, D]."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------------------
# The math.


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased) of features [N, D], in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features of shape [N >= 2, D], got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0 against round-off)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    # tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the right side is symmetric PSD, so an eigh is
    # exact and stable, with none of the complex round-off of a general sqrtm(S1 @ S2).
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples under k(a, b) = (a.b / d + 1)^3."""
    d, m = x.shape[1], len(x)
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, num_subsets: int = KID_SUBSETS,
                              subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float]:
    """KID: mean and std of the unbiased polynomial-kernel MMD^2 over random subsets of both feature sets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = [_polynomial_mmd2(real[rng.choice(len(real), size, replace=False)],
                               fake[rng.choice(len(fake), size, replace=False)]) for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a_i - b_j||^2 [len(a), len(b)] in float64, clipped at 0 (the expansion can round below it)."""
    return np.maximum(np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None] - 2.0 * a @ b.T, 0.0)


def knn_radii(features: np.ndarray, k: int = PR_NEIGHBOURS, batch_size: int = PR_BATCH) -> np.ndarray:
    """Squared distance of each feature vector to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples in each set")
    radii = np.empty(len(features))
    for i in range(0, len(features), batch_size):
        d = _squared_distances(features[i:i + batch_size], features)
        radii[i:i + batch_size] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself (distance 0)
    return radii


def _inside_manifold(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray,
                     batch_size: int = PR_BATCH) -> np.ndarray:
    """Whether each point lies in the union of the balls around `manifold` with the given squared radii."""
    inside = np.empty(len(points), bool)
    for i in range(0, len(points), batch_size):
        inside[i:i + batch_size] = np.any(_squared_distances(points[i:i + batch_size], manifold) <= radii[None],
                                          axis=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of two feature sets [N, D], [M, D].

    Each set's manifold is the union of balls around its points, each reaching the point's k-th nearest
    neighbour. Precision: the fraction of generated samples inside the real manifold (fidelity). Recall: the
    fraction of real samples inside the generated manifold (coverage: a generator that drops modes has low recall).
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    precision = _inside_manifold(fake, real, knn_radii(real, k)).mean()
    recall = _inside_manifold(real, fake, knn_radii(fake, k)).mean()
    return {"precision": float(precision), "recall": float(recall)}


def compare_features(real: np.ndarray, fake: np.ndarray, kid_subsets: int = KID_SUBSETS, seed: int = 0) -> dict:
    """{"fid", "kid", "kid_std", "precision", "recall"} of two feature sets."""
    kid, kid_std = kernel_inception_distance(real, fake, num_subsets=kid_subsets, seed=seed)
    return {"fid": fid_from_features(real, fake), "kid": kid, "kid_std": kid_std, **precision_recall(real, fake)}


# ---------------------------------------------------------------------------------------------------------
# Generated images.


def generate_images(generator: Callable[[tf.Tensor], tf.Tensor], num: int, latent_dim: int, z_dist: str,
                    seed: int, batch_size: int = 256) -> np.ndarray:
    """`num` images in [-1, 1] from z drawn deterministically from `seed`, generated in batches."""
    z = sample_latent(num, latent_dim, tf.constant([seed, 0], tf.int64), z_dist)
    return predict_in_batches(lambda batch, training: generator(batch, training=training), z, batch_size)


def inference_generator(generator: keras.Model, config: Config, bn_samples: int) -> keras.Model:
    """G as the serving export runs it: a copy with BatchNorm re-estimated from bn_samples z (0: G itself)."""
    if bn_samples <= 0:
        return generator
    from dcgan_tf import export  # one implementation of "precise BatchNorm", shared with the export

    copy = export.inference_copy(generator, config)
    export.reestimate_batchnorm(copy, config, bn_samples)
    return copy


def load_exported_generator(export_dir: str) -> tuple[Callable[..., tf.Tensor], Config]:
    """(z -> images in [-1, 1], the run's config) of a serving export: a version folder or the newest under a base."""
    from dcgan_tf import export

    path = export_dir
    versions = export.existing_versions(export_dir)
    if versions and not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        path = os.path.join(export_dir, str(versions[-1]))  # a TF Serving base: the version it would serve
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise EvaluationError(f"{export_dir} is neither a SavedModel version folder nor an export base with "
                             "numbered versions; export one with python -m dcgan_tf.export")
    meta = export.read_export_config(path)
    serve = tf.saved_model.load(path).signatures[export.DEFAULT_SIGNATURE]

    def generator(z: tf.Tensor, training: bool = False) -> tf.Tensor:
        return serve(z=tf.convert_to_tensor(z, tf.float32))["images_float"]

    # An export written before G's EMA existed carries no g_ema: it is the raw G.
    return generator, Config.from_dict({"g_ema": False, **meta["config"]})


def as_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1]; float images pass through."""
    images = np.asarray(images)
    return scale_to_unit_range(images).numpy() if images.dtype == np.uint8 else images.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# InceptionV3.


def load_inception(weights: str = "imagenet") -> keras.Model:
    """InceptionV3 without its top, average-pooled to 2048-d; weights "imagenet" (downloaded) or a .h5 path."""
    if weights != "imagenet" and not os.path.exists(weights):
        raise EvaluationError(f"--inception_weights={weights} does not exist. Pass the path of "
                             f"{os.path.basename(INCEPTION_NOTOP_URL)} (downloaded from {INCEPTION_NOTOP_URL})")
    try:
        return keras.applications.InceptionV3(include_top=False, pooling="avg", weights=weights,
                                              input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3))
    except Exception as e:  # no network (URL fetch failure), a checksum mismatch, a wrong weights file
        raise EvaluationError(
            f"could not load InceptionV3 weights {weights!r} ({type(e).__name__}: {e}). Fixes: download "
            f"{INCEPTION_NOTOP_URL} on a machine with network and pass --inception_weights=PATH (or put it in "
            "~/.keras/models/); or use features the package trains itself: python -m dcgan_tf.evaluate "
            "train-classifier --dataset=... then --extractor=classifier"
        ) from e


class InceptionExtractor:
    """2048-d InceptionV3 pool features; grayscale is repeated to RGB, images resized to 299x299 (bilinear)."""

    def __init__(self, weights: str = "imagenet", batch_size: int = 64):
        self.model = load_inception(weights)
        self.batch_size = batch_size

    def _features(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[-1, 1] images of any size and 1 or 3 channels -> [B, 2048]."""
        if images.shape[-1] == 1:
            images = tf.repeat(images, 3, axis=-1)
        # InceptionV3's own preprocessing maps [0, 255] to [-1, 1]: our images are already there.
        images = tf.image.resize(images, [INCEPTION_SIZE, INCEPTION_SIZE], method="bilinear")
        return self.model(images, training=training)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features [N, 2048] of float images in [-1, 1]."""
        return predict_in_batches(self._features, as_unit_range(images), self.batch_size)


# ---------------------------------------------------------------------------------------------------------
# A classifier trained on the dataset itself.


def build_classifier(image_size: int, channels: int, num_classes: int, width: int = 32) -> keras.Model:
    """A small CNN [B,S,S,C] in [-1,1] -> class logits, whose 128-d layer named "features" feeds FID."""
    x = images = keras.Input((image_size, image_size, channels), name="images")
    for i, filters in enumerate((width, 2 * width, 4 * width)):  # S -> S/2 -> S/4 -> S/8
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}a")(x)
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"conv{i}b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(128, activation="relu", name=CLASSIFIER_FEATURES_LAYER)(x)
    logits = keras.layers.Dense(num_classes, name="logits")(keras.layers.Dropout(0.3)(x))
    return keras.Model(images, logits, name="fid_classifier")


def _check_keras_path(path: str) -> None:
    """Keras saves whole models only to a .keras file."""
    if not path.endswith(".keras"):
        raise EvaluationError(f"classifier path {path!r} must end in .keras (e.g. runs/classifier.keras)")


def train_classifier(config: Config, path: str, epochs: int = 5, batch_size: int = 128,
                     train_limit: int = 0, test_limit: int = 10_000) -> dict:
    """Train the FID classifier on config.dataset's train split at config's size; save it atomically to `path`."""
    _check_keras_path(path)
    keras.utils.set_random_seed(config.seed)
    train_images, train_labels = data_lib.load_labeled(config, "train", train_limit)
    test_images, test_labels = data_lib.load_labeled(config, "test", test_limit)
    model = build_classifier(config.image_size, train_images.shape[-1], data_lib.num_classes(config))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(as_unit_range(train_images), train_labels, batch_size=batch_size, epochs=epochs, shuffle=True,
              verbose=config.verbose)
    _, accuracy = model.evaluate(as_unit_range(test_images), test_labels, batch_size=512, verbose=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)
    logging.info("Saved the FID classifier to %s (test accuracy %.4f).", path, accuracy)
    return {"classifier_path": path, "test_accuracy": float(accuracy), "train_examples": len(train_images),
            "test_examples": len(test_images), "epochs": epochs,
            "image_shape": list(train_images.shape[1:]), "feature_dims": 128}


class ClassifierExtractor:
    """Features from the "features" layer of a classifier saved by `train_classifier`."""

    def __init__(self, path: str, batch_size: int = 512):
        _check_keras_path(path)
        if not os.path.exists(path):
            raise EvaluationError(f"no classifier at {path}: train one with python -m dcgan_tf.evaluate "
                                 f"train-classifier --dataset=... --classifier_path={path}")
        classifier = keras.models.load_model(path)
        self.model = keras.Model(classifier.input, classifier.get_layer(CLASSIFIER_FEATURES_LAYER).output)
        self.input_shape = tuple(classifier.input.shape[1:])
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features [N, 128] of float images in [-1, 1] of the classifier's size and channels."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise EvaluationError(f"the classifier takes images of shape {self.input_shape}, got "
                                 f"{tuple(images.shape[1:])}: train one with the GAN's --image_size/--channels")
        return predict_in_batches(self.model, as_unit_range(images), self.batch_size)


def make_extractor(kind: str, inception_weights: str = "imagenet", classifier_path: str = "") -> Extractor:
    """The extractor named by `kind`: "inception" or "classifier"."""
    if kind == "inception":
        return InceptionExtractor(inception_weights or "imagenet")
    if kind == "classifier":
        if not classifier_path:
            raise EvaluationError("--extractor=classifier needs --classifier_path=PATH.keras (train one with "
                                 "python -m dcgan_tf.evaluate train-classifier)")
        return ClassifierExtractor(classifier_path)
    raise EvaluationError(f"unknown extractor {kind!r}: use inception or classifier")
