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
  * ClassifierExtractor: the 128-d "features" layer of a network trained on the dataset itself
    (`train_classifier`), for small grayscale sets where ImageNet features say little. Two architectures with
    two training recipes that share nothing but the data (ARCHITECTURES): "cnn", the project's plain CNN (Adam,
    no augmentation), and "resnet", a residual network with BatchNorm trained with another optimizer (SGD with
    Nesterov momentum, cosine decay), label smoothing and shift/flip augmentation, so that a verdict on sample
    quality need not rest on one feature space the project trained itself.
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
# Classifier architecture -> Keras model name (how a saved classifier says what it is; "cnn" was the only one).
ARCHITECTURES = {"cnn": "fid_classifier", "resnet": "fid_resnet"}
# --extractor names of the classifiers: "classifier" is the project's CNN, "resnet" the independent one.
CLASSIFIER_EXTRACTORS = {"classifier": "cnn", "resnet": "resnet"}
# KID defaults of Binkowski et al.: 100 subsets of 1000 (fewer if fewer samples).
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
# The resnet classifier starts from other random weights than the cnn trained with the same --seed.
RESNET_SEED_OFFSET = 104729


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


def _residual_block(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    """A pre-activation basic block (He et al. 2016): BN-ReLU-conv3x3 twice, a 1x1 projection when the shape changes."""
    h = keras.layers.ReLU(name=f"{name}_relu1")(keras.layers.BatchNormalization(name=f"{name}_bn1")(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(h)
    h = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(h)
    h = keras.layers.ReLU(name=f"{name}_relu2")(keras.layers.BatchNormalization(name=f"{name}_bn2")(h))
    h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(h)
    return keras.layers.Add(name=f"{name}_add")([shortcut, h])


def build_resnet_classifier(image_size: int, channels: int, num_classes: int, width: int = 32) -> keras.Model:
    """A small pre-activation ResNet [B,S,S,C] in [-1,1] -> logits; its 128-d pooled layer "features" feeds FID.

    Shares no layer type choice with build_classifier beyond convolutions: residual blocks, BatchNorm, no dense
    hidden layer (the features are the global average pool of the last stage, after its BN-ReLU).
    """
    x = images = keras.Input((image_size, image_size, channels), name="images")
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(x)
    for i, (filters, stride) in enumerate(((width, 2), (2 * width, 2), (4 * width, 2))):  # S -> S/2 -> S/4 -> S/8
        x = _residual_block(x, filters, stride, name=f"stage{i}")
    x = keras.layers.ReLU(name="final_relu")(keras.layers.BatchNormalization(name="final_bn")(x))
    x = keras.layers.GlobalAveragePooling2D(name=CLASSIFIER_FEATURES_LAYER)(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(images, logits, name=ARCHITECTURES["resnet"])


def shift_flip_augment(images: tf.Tensor, seed: tf.Tensor, max_shift: int = 3) -> tf.Tensor:
    """The resnet recipe's augmentation: random horizontal flip and a random shift of up to max_shift pixels.

    The shift pads with the border value -1 (the background of padded Fashion-MNIST/MNIST) and crops back.
    Stateless (from `seed`, [2] int), so a seed gives the same augmented epoch.
    """
    size, channels = images.shape[1], images.shape[-1]
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    flipped = tf.image.stateless_random_flip_left_right(images, flip_seed)
    padded = tf.pad(flipped, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]], constant_values=-1.0)
    # One shift per image (a crop of the whole batch would shift every image alike).
    seeds = tf.random.experimental.stateless_split(crop_seed, tf.shape(images)[0])
    return tf.map_fn(lambda args: tf.image.stateless_random_crop(args[0], [size, size, channels], args[1]),
                     (padded, seeds), fn_output_signature=padded.dtype)


def _check_keras_path(path: str) -> None:
    """Keras saves whole models only to a .keras file."""
    if not path.endswith(".keras"):
        raise EvaluationError(f"classifier path {path!r} must end in .keras (e.g. runs/classifier.keras)")


def train_classifier(config: Config, path: str, epochs: int = 5, batch_size: int = 128,
                     train_limit: int = 0, test_limit: int = 10_000, architecture: str = "cnn") -> dict:
    """Train a FID classifier on config.dataset's train split at config's size; save it atomically to `path`.

    `architecture` (ARCHITECTURES) picks the network and its recipe: "cnn", Adam 1e-3 on the plain images;
    "resnet", SGD (Nesterov momentum 0.9, lr 0.05 with cosine decay, weight decay 5e-4), label smoothing 0.1
    and shift_flip_augment, from another initialisation seed.
    """
    _check_keras_path(path)
    if architecture not in ARCHITECTURES:
        raise EvaluationError(f"unknown classifier architecture {architecture!r}: use one of {list(ARCHITECTURES)}")
    train_images, train_labels = data_lib.load_labeled(config, "train", train_limit)
    test_images, test_labels = data_lib.load_labeled(config, "test", test_limit)
    num_classes, channels = data_lib.num_classes(config), train_images.shape[-1]
    train_x = as_unit_range(train_images)
    if architecture == "cnn":
        keras.utils.set_random_seed(config.seed)
        model = build_classifier(config.image_size, channels, num_classes)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        model.fit(train_x, train_labels, batch_size=batch_size, epochs=epochs, shuffle=True,
                  verbose=config.verbose)
    else:
        keras.utils.set_random_seed(config.seed + RESNET_SEED_OFFSET)
        model = build_resnet_classifier(config.image_size, channels, num_classes)
        steps = epochs * max(1, len(train_x) // batch_size)
        schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=steps)
        model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=5e-4),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                      metrics=["accuracy"])
        one_hot = np.eye(num_classes, dtype=np.float32)[train_labels]
        batches = (tf.data.Dataset.from_tensor_slices((train_x, one_hot))
                   .shuffle(len(train_x), seed=config.seed, reshuffle_each_iteration=True)
                   .batch(batch_size, drop_remainder=True).enumerate()
                   .map(lambda i, xy: (shift_flip_augment(xy[0], tf.stack([tf.constant(config.seed, tf.int64), i])),
                                       xy[1]), num_parallel_calls=tf.data.AUTOTUNE)
                   .repeat(epochs).prefetch(tf.data.AUTOTUNE))
        model.fit(batches, epochs=epochs, steps_per_epoch=steps // epochs, shuffle=False,  # shuffled above
                  verbose=config.verbose)
        test_labels = np.eye(num_classes, dtype=np.float32)[test_labels]
    _, accuracy = model.evaluate(as_unit_range(test_images), test_labels, batch_size=512, verbose=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)
    logging.info("Saved the %s FID classifier to %s (test accuracy %.4f).", architecture, path, accuracy)
    return {"classifier_path": path, "architecture": architecture, "test_accuracy": float(accuracy),
            "train_examples": len(train_images), "test_examples": len(test_images), "epochs": epochs,
            "image_shape": list(train_images.shape[1:]),
            "feature_dims": int(model.get_layer(CLASSIFIER_FEATURES_LAYER).output.shape[-1])}


class ClassifierExtractor:
    """Features from the "features" layer of a classifier saved by `train_classifier`.

    `architecture`: the ARCHITECTURES name the saved model must have (None: any), so that --extractor=resnet
    cannot silently score in the cnn's feature space (or the other way round).
    """

    def __init__(self, path: str, batch_size: int = 512, architecture: str | None = None):
        _check_keras_path(path)
        if not os.path.exists(path):
            raise EvaluationError(f"no classifier at {path}: train one with python -m dcgan_tf.evaluate "
                                 f"train-classifier --dataset=... --classifier_path={path}")
        classifier = keras.models.load_model(path)
        found = {name: arch for arch, name in ARCHITECTURES.items()}.get(classifier.name, classifier.name)
        if architecture is not None and found != architecture:
            raise EvaluationError(f"{path} is a {found!r} classifier, not a {architecture!r} one: pass the "
                                 f"classifier trained with train-classifier --architecture={architecture}")
        self.architecture = found
        self.classifier = classifier
        self.model = keras.Model(classifier.input, classifier.get_layer(CLASSIFIER_FEATURES_LAYER).output)
        self.input_shape = tuple(classifier.input.shape[1:])
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features [N, D] of float images in [-1, 1] of the classifier's size and channels."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise EvaluationError(f"the classifier takes images of shape {self.input_shape}, got "
                                 f"{tuple(images.shape[1:])}: train one with the GAN's --image_size/--channels")
        return predict_in_batches(self.model, as_unit_range(images), self.batch_size)

    def class_fractions(self, images: np.ndarray) -> list[float]:
        """The fraction of images the classifier assigns to each class: a dropped class shows as ~0."""
        logits = predict_in_batches(self.classifier, as_unit_range(images), self.batch_size)
        counts = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1])
        return (counts / max(1, len(images))).round(4).tolist()


EXTRACTORS = ("inception", *CLASSIFIER_EXTRACTORS)


def make_extractor(kind: str, inception_weights: str = "imagenet", classifier_path: str = "") -> Extractor:
    """The extractor named by `kind` (EXTRACTORS): "inception", or a classifier ("classifier": the cnn; "resnet")."""
    if kind == "inception":
        return InceptionExtractor(inception_weights or "imagenet")
    if kind in CLASSIFIER_EXTRACTORS:
        architecture = CLASSIFIER_EXTRACTORS[kind]
        if not classifier_path:
            raise EvaluationError(f"--extractor={kind} needs --classifier_path=PATH.keras (train one with "
                                 f"python -m dcgan_tf.evaluate train-classifier --architecture={architecture})")
        return ClassifierExtractor(classifier_path, architecture=architecture)
    raise EvaluationError(f"unknown extractor {kind!r}: use one of {list(EXTRACTORS)}")


def load_samples(path: str, num: int, image_shape: tuple[int, ...]) -> np.ndarray:
    """The first `num` images of a .npy file of samples made elsewhere, as float32 in [-1, 1].

    Accepts [N, S, S, C] or [N, S, S] (grayscale), uint8 [0, 255] or float in [-1, 1] (what the PyTorch peer
    and tanh generators write); anything else is rejected with the expected layout.
    """
    if not os.path.exists(path):
        raise EvaluationError(f"--samples={path} does not exist (expected a .npy of images [N, S, S, C])")
    images = np.load(path, mmap_mode="r", allow_pickle=False)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise EvaluationError(f"--samples={path} holds an array of shape {images.shape}; expected [N, "
                             f"{', '.join(map(str, image_shape))}] (NHWC, the run's --image_size and channels)")
    if len(images) < num:
        raise EvaluationError(f"--samples={path} has {len(images)} images, fewer than --num_samples={num}")
    images = as_unit_range(np.asarray(images[:num]))
    low, high = float(images.min()), float(images.max())
    if low < -1.001 or high > 1.001:
        raise EvaluationError(f"--samples={path} has float values in [{low:.3f}, {high:.3f}], outside [-1, 1]: "
                             "save generator outputs in [-1, 1] (tanh) or uint8 images")
    return images
