"""Projecting real images into z: the z whose G(z) looks most like each image, found by optimisation.

Adam on z, from several random starts per image, all optimised together as one batch (each row's loss depends
only on its own z: G runs in inference mode). z stays in the support of its distribution: a uniform z is clipped
to [-1, 1] after every step, where the generator was trained. The loss is the pixel MSE plus `feature_weight`
times the feature loss: for each of D's conv blocks, the squared difference of the activations divided by the
target's mean squared activation (so every block counts about equally whatever its scale), averaged over blocks.
The start with the lowest final loss is kept for each image.

For comparison `random_search` draws K random z and keeps, per image, the one whose G(z) has the lowest pixel MSE:
what projection has to beat.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf

from dcgan_tf.gan import sample_latent
from dcgan_tf.input_pipeline import center_crop, convert_channels, list_images, resize, scale_to_unit_range
from dcgan_tf.models import discriminator_conv_outputs

STREAM_PROJECT = 6  # the random starts' stream (dcgan_tf.experiments.latent's streams are 0-5)
STREAM_RANDOM_SEARCH = 7


def image_paths(entries: list[str]) -> list[str]:
    """The image files named: files as given, folders expanded to their images (sorted, subfolders searched)."""
    paths = []
    for entry in entries:
        if os.path.isdir(entry):
            found, _ = list_images(entry)
            if not found:
                raise ValueError(f"--images={entry}: the folder holds no .jpg/.png/.bmp/.gif images")
            paths.extend(found)
        elif os.path.isfile(entry):
            paths.append(entry)
        else:
            raise ValueError(f"--images: {entry!r} is neither an image file nor a folder")
    return paths


def load_images(paths: list[str], image_size: int, channels: int) -> np.ndarray:
    """Images as float32 [-1, 1] [N, S, S, C], decoded like a folder dataset (channels, centre crop, resize)."""
    images = []
    for path in paths:
        try:
            image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        except tf.errors.OpError as e:
            raise ValueError(f"cannot decode {path} as an image ({type(e).__name__}); pass .jpg/.png/.bmp/.gif "
                             "files") from None
        image = resize(center_crop(convert_channels(image, channels)), image_size)
        images.append(scale_to_unit_range(image).numpy())
    return np.stack(images)


def feature_model(discriminator: keras.Model) -> keras.Model:
    """images -> the activations of each of D's conv blocks."""
    return keras.Model(discriminator.input, discriminator_conv_outputs(discriminator), name="d_blocks")


def random_search(generator: keras.Model, targets: np.ndarray, nz: int, z_dist: str, num: int, seed: int = 0,
                  batch_size: int = 250) -> dict[str, np.ndarray]:
    """Per target, the best pixel MSE of G(z) over `num` random z, and that z."""
    best = np.full(len(targets), np.inf, np.float32)
    best_z = np.zeros((len(targets), nz), np.float32)
    flat_targets = targets.reshape(len(targets), -1)
    for start in range(0, num, batch_size):
        count = min(batch_size, num - start)
        z = sample_latent(count, nz, tf.constant([seed, STREAM_RANDOM_SEARCH * 1_000_000 + start], tf.int64),
                          z_dist).numpy()
        images = generator(z, training=False).numpy().reshape(count, -1)
        # ||a - b||^2 / D for every (target, sample) pair.
        mse = (np.sum(flat_targets**2, 1)[:, None] + np.sum(images**2, 1)[None] - 2 * flat_targets @ images.T)
        mse /= flat_targets.shape[1]
        index = np.argmin(mse, axis=1)
        better = mse[np.arange(len(targets)), index] < best
        best[better] = mse[np.arange(len(targets)), index][better]
        best_z[better] = z[index[better]]
    return {"random_mse": np.maximum(best, 0.0), "random_z": best_z, "random_num": np.int64(num)}


def project(generator: keras.Model, discriminator: keras.Model | None, targets: np.ndarray, nz: int,
            z_dist: str = "uniform", starts: int = 4, steps: int = 500, learning_rate: float = 0.05,
            feature_weight: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    """z [N, nz] for targets [N, S, S, C] in [-1, 1]; the best of `starts` Adam runs of `steps` steps each.

    Returns z, reconstructions, the final loss, pixel MSE and feature loss of the kept start, every start's final
    loss [N, starts], the loss curve of the kept start [N, steps] and the seconds taken.
    """
    if starts < 1 or steps < 1:
        raise ValueError(f"projection needs starts >= 1 and steps >= 1 (got starts={starts}, steps={steps})")
    if feature_weight > 0 and discriminator is None:
        raise ValueError("the feature loss needs the discriminator: use --model_dir, or --feature_weight=0")
    n = len(targets)
    start_time = time.time()
    repeated = tf.constant(np.repeat(targets, starts, axis=0), tf.float32)  # row i*starts + k: image i, start k
    z = tf.Variable(sample_latent(n * starts, nz, tf.constant([seed, STREAM_PROJECT], tf.int64), z_dist))
    blocks = feature_model(discriminator) if feature_weight > 0 else None
    target_features = blocks(repeated, training=False) if blocks is not None else []
    scales = [tf.reduce_mean(tf.square(f), axis=[1, 2, 3]) + 1e-8 for f in target_features]
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    optimizer.build([z])

    def losses(values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        images = generator(values, training=False)
        pixel = tf.reduce_mean(tf.square(images - repeated), axis=[1, 2, 3])
        feature = tf.zeros_like(pixel)
        if blocks is not None:
            per_block = [tf.reduce_mean(tf.square(f - t), axis=[1, 2, 3]) / s
                         for f, t, s in zip(blocks(images, training=False), target_features, scales)]
            feature = tf.add_n(per_block) / len(per_block)
        return pixel + feature_weight * feature, pixel, feature

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            total, _, _ = losses(z)
            objective = tf.reduce_sum(total)  # rows are independent: each z gets its own gradient
        optimizer.apply_gradients([(tape.gradient(objective, z), z)])
        if z_dist == "uniform":  # keep z where G was trained
            z.assign(tf.clip_by_value(z, -1.0, 1.0))
        return total

    curve = np.stack([step().numpy() for _ in range(steps)], axis=1)  # [N*starts, steps] (loss before each step)
    total, pixel, feature = (t.numpy() for t in losses(z))
    per_start = total.reshape(n, starts)
    best = np.argmin(per_start, axis=1)
    rows = np.arange(n) * starts + best
    final_z = z.numpy()[rows]
    return {
        "z": final_z, "reconstructions": generator(final_z, training=False).numpy(), "targets": targets,
        "losses": total[rows], "pixel_mse": pixel[rows], "feature_losses": feature[rows], "start_losses": per_start,
        "best_start": best, "curve": curve[rows], "seconds": np.float32(time.time() - start_time),
    }
