"""Is the generator copying its training set? Nearest neighbours and semantic-hashing de-duplication.

`neighbors`: for generated samples, the closest training images in pixel space and in discriminator
feature space (each D conv block's output max-pooled to 4x4 and concatenated, the paper's section 5.1
feature extractor). `dedup`: the paper's section 4.1.1 semantic hashing, a 3072-128-3072 denoising,
dropout-regularised ReLU autoencoder on 32x32 downsampled centre crops whose code, binarised at 0, is a
128-bit hash; equal (or close) hashes flag near-duplicates between samples and training data. The inputs are
centred on the training set's mean image (our addition: it keeps the code units alive).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dcgan_tf import input_pipeline
from dcgan_tf.evaluation.features import discriminator_features, pixel_features  # the paper's section 5.1 features

HASH_IMAGE_SIZE = 32  # paper: 32x32 downsampled centre crops (3072 = 32*32*3 inputs for RGB)
HASH_BITS = 128


def nearest_neighbors(queries: np.ndarray, references: np.ndarray, k: int,
                      chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Indices [Q, k] and Euclidean distances [Q, k] of each query's k nearest references, nearest first.

    Candidates come from the fast |q|^2 + |r|^2 - 2 q.r expansion; their distances are then recomputed
    exactly from the differences, so an image found in the references is at distance exactly 0.
    """
    queries, references = np.asarray(queries, np.float32), np.asarray(references, np.float32)
    k = min(k, len(references))
    candidates = min(len(references), k + 8)  # a margin against the expansion's rounding
    ref_norms = np.sum(references**2, axis=1)
    shortlist = np.empty((len(queries), candidates), np.int64)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        approx = np.sum(q**2, axis=1)[:, None] + ref_norms[None, :] - 2.0 * q @ references.T
        shortlist[start:start + chunk] = np.argpartition(approx, candidates - 1, axis=1)[:, :candidates]
    exact = np.sqrt(np.sum((np.float64(references[shortlist]) - np.float64(queries)[:, None, :]) ** 2, axis=2))
    order = np.argsort(exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(shortlist, order, 1), np.take_along_axis(exact, order, 1).astype(np.float32)


def run_neighbors(samples: np.ndarray, train_images: np.ndarray, k: int = 3,
                  discriminator: keras.Model | None = None) -> dict[str, np.ndarray]:
    """Nearest training images of each sample in pixel space and (given D) in D-feature space."""
    result = {"samples": samples}
    spaces = [("pixel", pixel_features(samples), lambda: pixel_features(train_images))]
    if discriminator is not None:
        spaces.append(("dfeature", discriminator_features(discriminator, samples),
                       lambda: discriminator_features(discriminator, train_images)))
    for name, queries, references in spaces:
        indices, distances = nearest_neighbors(queries, references(), k)
        result.update({f"{name}_indices": indices, f"{name}_distances": distances,
                       f"{name}_neighbor_images": train_images[indices]})
    return result


# ---------------------------------------------------------------------------------------------------------
# Semantic hashing.


def hash_inputs(images: np.ndarray, size: int = HASH_IMAGE_SIZE) -> np.ndarray:
    """uint8 images [N, H, W, C] -> centre crops resized to size x size, in [-1, 1], flattened [N, size*size*C]."""
    images = tf.constant(np.asarray(images, np.uint8))
    side = min(images.shape[1], images.shape[2])
    top, left = (images.shape[1] - side) // 2, (images.shape[2] - side) // 2
    crops = images[:, top:top + side, left:left + side]  # input_pipeline.center_crop, batched
    small = input_pipeline.resize(crops, size)  # tf.image.resize takes batches too
    return input_pipeline.scale_to_unit_range(small).numpy().reshape(len(images), -1)


def build_hash_autoencoder(input_dim: int, bits: int = HASH_BITS, input_dropout: float = 0.2,
                           code_dropout: float = 0.2, seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """(autoencoder, encoder): input dropout (the denoising corruption) -> Dense(bits, ReLU) -> dropout -> Dense."""
    keras.utils.set_random_seed(seed)  # initial weights and dropout masks: the same hash for the same seed
    x = keras.Input(shape=(input_dim,), name="pixels")
    corrupted = keras.layers.Dropout(input_dropout, name="corrupt")(x)
    code = keras.layers.Dense(bits, activation="relu", name="code")(corrupted)
    dropped = keras.layers.Dropout(code_dropout, name="code_dropout")(code)
    reconstruction = keras.layers.Dense(input_dim, name="reconstruction")(dropped)
    return keras.Model(x, reconstruction, name="hash_autoencoder"), keras.Model(x, code, name="hash_encoder")


def train_hash_autoencoder(inputs: np.ndarray, bits: int = HASH_BITS, epochs: int = 20, batch_size: int = 128,
                           seed: int = 0) -> tuple[keras.Model, float]:
    """Train the denoising autoencoder to reconstruct clean `inputs`; returns (encoder, final loss)."""
    autoencoder, encoder = build_hash_autoencoder(inputs.shape[1], bits, seed=seed)
    autoencoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    history = autoencoder.fit(inputs, inputs, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return encoder, float(history.history["loss"][-1])


def hash_codes(encoder: keras.Model, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The binary codes bool [N, bits]: the encoder's ReLU activations thresholded at 0 (inference mode)."""
    parts = [encoder(tf.constant(inputs[i:i + batch_size]), training=False).numpy() > 0
             for i in range(0, len(inputs), batch_size)]
    return np.concatenate(parts, axis=0)


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances [len(a), len(b)] between bool codes."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    return np.rint(a @ (1.0 - b).T + (1.0 - a) @ b.T).astype(np.int32)


def duplicate_pairs(codes: np.ndarray, max_hamming: int = 0) -> np.ndarray:
    """Pairs (i, j), i < j, of codes within `max_hamming` bits of each other: int [P, 2]."""
    distances = hamming_distances(codes, codes)
    i, j = np.nonzero(np.triu(distances <= max_hamming, k=1))
    return np.stack([i, j], axis=1).astype(np.int64)


def run_dedup(samples_uint8: np.ndarray, train_uint8: np.ndarray, max_hamming: int = 0, epochs: int = 20,
              bits: int = HASH_BITS, seed: int = 0) -> dict[str, np.ndarray]:
    """Hash training images and samples with an autoencoder trained on the training images; count matches."""
    train_x, sample_x = hash_inputs(train_uint8), hash_inputs(samples_uint8)
    # Centre on the training set's mean image: on raw [-1, 1] pixels (mostly -1 background for MNIST-like
    # data) most code units die during training (fashion_mnist: 72 of 128 always 0) and the hash loses bits.
    mean = train_x.mean(axis=0)
    train_x, sample_x = train_x - mean, sample_x - mean
    encoder, loss = train_hash_autoencoder(train_x, bits, epochs, seed=seed)
    train_codes, sample_codes = hash_codes(encoder, train_x), hash_codes(encoder, sample_x)
    cross = hamming_distances(sample_codes, train_codes)
    nearest = np.argmin(cross, axis=1)
    nearest_distance = cross[np.arange(len(cross)), nearest]
    train_pairs = duplicate_pairs(train_codes, max_hamming)
    sample_pairs = duplicate_pairs(sample_codes, max_hamming)
    return {
        "train_codes": np.packbits(train_codes, axis=1), "sample_codes": np.packbits(sample_codes, axis=1),
        "nearest_train": nearest.astype(np.int64), "nearest_hamming": nearest_distance,
        "samples_matching_train": np.int64(np.sum(nearest_distance <= max_hamming)),
        "train_duplicate_pairs": train_pairs, "sample_duplicate_pairs": sample_pairs,
        "train_images_in_duplicates": np.int64(len(np.unique(train_pairs))),
        "distinct_train_codes": np.int64(len(np.unique(train_codes, axis=0))),
        "distinct_sample_codes": np.int64(len(np.unique(sample_codes, axis=0))),
        "dead_bits": np.int64(np.sum(~train_codes.any(axis=0))),
        "max_hamming": np.int64(max_hamming), "bits": np.int64(bits), "autoencoder_loss": np.float32(loss),
        "num_samples": np.int64(len(samples_uint8)), "num_train": np.int64(len(train_uint8)),
    }
